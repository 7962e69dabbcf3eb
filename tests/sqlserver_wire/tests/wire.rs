//! The SQL Server reader over real TDS: tiberius logs in to mssql-mock-tds, the reader
//! sends its CDC queries and decodes the rows the stand-in answers, and the change
//! stream orders them.
//!
//! What the stand-in covers: login (encryption off), parameterised queries (matched by
//! each statement's tag comment), result sets with integer, nvarchar and varbinary(max)
//! columns and NULLs — the TDS decoding of the CDC catalog, LSNs and change rows.
//! Also the captured-column catalog, the snapshot's statements and rows, and server
//! errors (permission denied, snapshot isolation off) as the reader classifies them.
//! What it cannot: real SQL (the answers are canned, so window bounds are not applied
//! by the server and isolation is not real), binary(10) (LSNs come as varbinary(max)),
//! decimal, bit and date types, TLS. docker/sqlserver/run-tests.sh runs the
//! integration against a real SQL Server for those.

use futures::TryStreamExt;
use mssql_mock_tds::{
    ColumnDefinition, ColumnValue, MockTdsServer, QueryResponse, Row, SqlDataType, TerminalError,
};
use strata_sqlserver_wire_tests::lsn::{Lsn, Operation};
use strata_sqlserver_wire_tests::reader::{sql, TdsClient, TdsReader};
use strata_sqlserver_wire_tests::stream::{poll, CapturedColumn, CdcError, CdcReader, ChangeKind};
use tiberius::{AuthMethod, Client, ColumnData, Config, EncryptionLevel};
use tokio::net::TcpStream;
use tokio_util::compat::TokioAsyncWriteCompatExt;

fn lsn(n: u8) -> Vec<u8> {
    let mut bytes = vec![0u8; 10];
    bytes[9] = n;
    bytes
}

fn binary(bytes: Vec<u8>) -> ColumnValue {
    ColumnValue::VarBinaryMax(vec![bytes])
}

fn one(column: &str, ty: SqlDataType, value: ColumnValue) -> QueryResponse {
    QueryResponse::new(
        vec![ColumnDefinition::new(column, ty)],
        vec![Row::new(vec![value])],
    )
}

/// A stand-in with CDC on (or off) and one capture instance, dbo.claims, holding an
/// insert, an update (before and after image) and a delete in two transactions.
async fn server(cdc_enabled: bool) -> std::net::SocketAddr {
    let server = MockTdsServer::new("127.0.0.1:0").await.expect("mock binds");
    let addr = server.local_addr();
    {
        let registry = server.query_registry();
        let mut r = registry.lock().await;
        r.register(
            "/* STRATA CDC_ENABLED */",
            one(
                "e",
                SqlDataType::Int,
                ColumnValue::Int(i32::from(cdc_enabled)),
            ),
        );
        r.register(
            "/* STRATA CDC_INSTANCES */",
            QueryResponse::new(
                vec![
                    ColumnDefinition::new("t", SqlDataType::NVarChar),
                    ColumnDefinition::new("capture_instance", SqlDataType::NVarChar),
                    ColumnDefinition::new("start_lsn", SqlDataType::VarBinaryMax),
                ],
                vec![Row::new(vec![
                    ColumnValue::NVarChar("dbo.claims".into()),
                    ColumnValue::NVarChar("dbo_claims".into()),
                    binary(lsn(1)),
                ])],
            ),
        );
        r.register(
            "/* STRATA CDC_MAX_LSN */",
            one("m", SqlDataType::VarBinaryMax, binary(lsn(30))),
        );
        r.register(
            "/* STRATA CDC_MIN_LSN */",
            one("m", SqlDataType::VarBinaryMax, binary(lsn(1))),
        );
        let change = |commit: u8, seq: u8, op: i32, id: i64, status: Option<&str>| {
            Row::new(vec![
                binary(lsn(commit)),
                binary(lsn(seq)),
                ColumnValue::Int(op),
                binary(vec![0x03]),
                ColumnValue::BigInt(id),
                match status {
                    Some(s) => ColumnValue::NVarCharMax(vec![s.encode_utf16().collect()]),
                    None => ColumnValue::NVarCharMaxNull,
                },
            ])
        };
        r.register(
            &sql::changes_tag("dbo_claims"),
            QueryResponse::new(
                vec![
                    ColumnDefinition::new("__$start_lsn", SqlDataType::VarBinaryMax),
                    ColumnDefinition::new("__$seqval", SqlDataType::VarBinaryMax),
                    ColumnDefinition::new("__$operation", SqlDataType::Int),
                    ColumnDefinition::new("__$update_mask", SqlDataType::VarBinaryMax),
                    ColumnDefinition::new("claim_id", SqlDataType::BigInt),
                    ColumnDefinition::new("status", SqlDataType::NVarCharMax),
                ],
                vec![
                    change(10, 1, 2, 7, Some("SUBMITTED")),
                    change(20, 1, 3, 7, Some("SUBMITTED")),
                    change(20, 1, 4, 7, Some("PAID")),
                    change(20, 2, 1, 8, None),
                ],
            ),
        );
        r.register(
            "/* STRATA CDC_COLUMNS */",
            QueryResponse::new(
                vec![
                    ColumnDefinition::new("name", SqlDataType::NVarChar),
                    ColumnDefinition::new("type", SqlDataType::NVarChar),
                    ColumnDefinition::new("precision", SqlDataType::Int),
                    ColumnDefinition::new("scale", SqlDataType::Int),
                    ColumnDefinition::new("key", SqlDataType::Int),
                ],
                vec![
                    column_row("claim_id", "bigint", 19, 0, 1),
                    column_row("billed_amount", "decimal", 12, 2, 0),
                    column_row("status", "nvarchar", 0, 0, 0),
                ],
            ),
        );
        r.register(
            &sql::snapshot_tag("dbo.claims"),
            QueryResponse::new(
                vec![
                    ColumnDefinition::new("claim_id", SqlDataType::BigInt),
                    ColumnDefinition::new("status", SqlDataType::NVarCharMax),
                ],
                (1..=3)
                    .map(|id| {
                        Row::new(vec![
                            ColumnValue::BigInt(id),
                            ColumnValue::NVarCharMax(vec!["PAID".encode_utf16().collect()]),
                        ])
                    })
                    .collect(),
            ),
        );
    }
    tokio::spawn(server.run());
    addr
}

fn column_row(name: &str, ty: &str, precision: i32, scale: i32, key: i32) -> Row {
    Row::new(vec![
        ColumnValue::NVarChar(name.into()),
        ColumnValue::NVarChar(ty.into()),
        ColumnValue::Int(precision),
        ColumnValue::Int(scale),
        ColumnValue::Int(key),
    ])
}

/// A stand-in whose every CDC statement fails with SQL Server error `number`.
async fn failing_server(number: u32, message: &str) -> std::net::SocketAddr {
    let server = MockTdsServer::new("127.0.0.1:0").await.expect("mock binds");
    let addr = server.local_addr();
    {
        let registry = server.query_registry();
        let mut r = registry.lock().await;
        for tag in [
            "/* STRATA CDC_ENABLED */",
            "/* STRATA CDC_MAX_LSN */",
            "/* STRATA CDC_COLUMNS */",
        ] {
            r.register(
                tag,
                QueryResponse::error_only(TerminalError::new(number, 16, message)),
            );
        }
    }
    tokio::spawn(server.run());
    addr
}

async fn reader(addr: std::net::SocketAddr) -> TdsReader<Box<TdsClient>> {
    let mut config = Config::new();
    config.host(addr.ip().to_string());
    config.port(addr.port());
    config.database("claims");
    config.authentication(AuthMethod::sql_server("strata", "secret"));
    // The stand-in speaks TDS without TLS; production settings require encryption.
    config.encryption(EncryptionLevel::NotSupported);
    let tcp = TcpStream::connect(addr).await.expect("tcp");
    tcp.set_nodelay(true).unwrap();
    let client = Client::connect(config, tcp.compat_write())
        .await
        .expect("tiberius logs in to the stand-in");
    TdsReader::new(Box::new(client), "claims")
}

fn text(columns: &[(String, ColumnData<'static>)], name: &str) -> Option<String> {
    columns
        .iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| match v {
            ColumnData::String(s) => s.as_ref().map(|s| s.to_string()),
            _ => None,
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_capture_instances_lsns_and_change_rows_over_tds() {
    let mut reader = reader(server(true).await).await;
    let tables = vec!["dbo.claims".to_string()];
    let events = poll(&mut reader, &tables, None, Lsn::ZERO, 100)
        .await
        .expect("poll over TDS");
    assert_eq!(events.len(), 3, "{events:?}");
    assert!(events.windows(2).all(|w| w[0].position < w[1].position));
    assert_eq!(events[0].table, "dbo.claims");
    assert_eq!(events[0].instance, "dbo_claims");
    assert_eq!(
        events[0].position.commit_lsn,
        Lsn::from_bytes(&lsn(10)).unwrap()
    );
    match &events[0].kind {
        ChangeKind::Insert { after } => {
            assert_eq!(text(after, "status").as_deref(), Some("SUBMITTED"));
            assert!(
                after.iter().all(|(n, _)| !n.starts_with("__$")),
                "CDC columns are not row columns: {after:?}"
            );
        }
        other => panic!("an insert first: {other:?}"),
    }
    match &events[1].kind {
        ChangeKind::Update { before, after } => {
            assert_eq!(text(before, "status").as_deref(), Some("SUBMITTED"));
            assert_eq!(text(after, "status").as_deref(), Some("PAID"));
            assert_eq!(events[1].position.operation, Operation::UpdateAfter);
        }
        other => panic!("then the update, both images in one event: {other:?}"),
    }
    match &events[2].kind {
        ChangeKind::Delete { before } => {
            assert!(before.contains(&("claim_id".to_string(), ColumnData::I64(Some(8)))));
            assert_eq!(text(before, "status"), None, "a NULL column");
        }
        other => panic!("then the delete: {other:?}"),
    }
    // Resuming after the update: only the delete is left.
    let offset = strata_sqlserver_wire_tests::lsn::Offset {
        position: events[1].position,
    };
    let rest = poll(&mut reader, &tables, Some(offset), Lsn::ZERO, 100)
        .await
        .unwrap();
    assert_eq!(rest, events[2..].to_vec());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdc_disabled_on_the_database_is_its_own_error() {
    let mut reader = reader(server(false).await).await;
    let err = poll(&mut reader, &["dbo.claims".into()], None, Lsn::ZERO, 100)
        .await
        .unwrap_err();
    assert!(
        matches!(err, CdcError::DatabaseNotEnabled { .. })
            && err.to_string().contains("sp_cdc_enable_db"),
        "{err}"
    );
    // And a table without an instance names itself.
    let mut reader = self::reader(server(true).await).await;
    let err = poll(&mut reader, &["dbo.members".into()], None, Lsn::ZERO, 100)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("dbo.members"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_the_captured_columns_and_a_snapshot_over_tds() {
    let mut reader = reader(server(true).await).await;
    let columns = reader.columns("dbo_claims").await.expect("columns");
    assert_eq!(
        columns,
        vec![
            CapturedColumn {
                name: "claim_id".into(),
                type_name: "bigint".into(),
                key: true
            },
            CapturedColumn {
                name: "billed_amount".into(),
                type_name: "decimal(12,2)".into(),
                key: false
            },
            CapturedColumn {
                name: "status".into(),
                type_name: "nvarchar".into(),
                key: false
            },
        ]
    );
    let at = reader.begin_snapshot().await.expect("snapshot begins");
    assert_eq!(
        at,
        Lsn::from_bytes(&lsn(30)).unwrap(),
        "the max LSN the snapshot sees"
    );
    let names = vec!["claim_id".to_string(), "status".to_string()];
    let rows: Vec<_> = reader
        .snapshot_rows("dbo.claims", &names)
        .try_collect()
        .await
        .expect("snapshot rows");
    assert_eq!(rows.len(), 3);
    assert_eq!(
        rows[2][0],
        ("claim_id".to_string(), ColumnData::I64(Some(3)))
    );
    assert_eq!(text(&rows[0], "status").as_deref(), Some("PAID"));
    reader.end_snapshot().await.expect("snapshot commits");
    // The connection is usable after the snapshot.
    assert!(reader.max_lsn().await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_classified() {
    let mut denied = reader(
        failing_server(
            229,
            "The SELECT permission was denied on the object 'change_tables'",
        )
        .await,
    )
    .await;
    let err = denied.capture_instances().await.unwrap_err();
    assert!(
        matches!(err, CdcError::Permission(_)) && !err.is_transient(),
        "{err:?}"
    );
    assert!(err.to_string().contains("permission was denied"), "{err}");

    let mut no_snapshot = reader(failing_server(3952, "Snapshot isolation transaction failed accessing database 'claims' because snapshot isolation is not allowed in this database.").await).await;
    let err = no_snapshot.begin_snapshot().await.unwrap_err();
    assert!(
        matches!(&err, CdcError::SnapshotIsolationOff { database } if database == "claims"),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("ALLOW_SNAPSHOT_ISOLATION ON"),
        "{err}"
    );

    let mut deadlocked = reader(failing_server(1205, "Transaction was deadlocked").await).await;
    let err = deadlocked.columns("dbo_claims").await.unwrap_err();
    assert!(err.is_transient(), "a deadlock is worth a retry: {err:?}");
}
