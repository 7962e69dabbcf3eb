//! Secrets never show: not in `strata validate` errors (also for a secret of the wrong
//! type), not in `strata graph`, not in the logs, errors or `/metrics` of a run — with a
//! password in every secret setting (PostgreSQL, the schema registry, SQL Server) and
//! one inside a connection URL.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

const STRATA: &str = env!("CARGO_BIN_EXE_strata");

const PG_PASSWORD: &str = "pg-secret-7Q2w";
const URL_PASSWORD: &str = "url-secret-8R3x";
const REGISTRY_PASSWORD: &str = "registry-secret-1T5y";
const MSSQL_PASSWORD: &str = "mssql-secret-2U6z";
const NUMERIC_PASSWORD: &str = "987654321";

fn leaked(text: &str) -> Vec<&'static str> {
    [
        PG_PASSWORD,
        URL_PASSWORD,
        REGISTRY_PASSWORD,
        MSSQL_PASSWORD,
        NUMERIC_PASSWORD,
    ]
    .into_iter()
    .filter(|s| text.contains(s))
    .collect()
}

/// A topology with a secret in every secret setting.
fn topology(pg_url: &str, registry: &str, mssql_port: u16, state: &str) -> String {
    format!(
        "region: secrets
kafka: {{ bootstrap_servers: '{brokers}' }}
schema_registry: {{ url: '{registry}', username: strata, password: '{REGISTRY_PASSWORD}' }}
state: {{ dir: '{state}' }}
sources:
  db:
    kind: postgres
    connection: {{ url: '{pg_url}', password: '{PG_PASSWORD}', ssl_mode: disable }}
    publication: secrets_pub
    slot: secrets_slot_{pid}
    tables: [public.claims]
    status_interval: 1s
  legacy:
    kind: sqlserver
    host: 127.0.0.1
    port: {mssql_port}
    database: claims
    username: strata
    password: '{MSSQL_PASSWORD}'
    tables: [dbo.claims]
    encrypt: false
    connect_timeout: 300ms
processors:
  analysis:
    kind: claim_analysis
    inputs: [db]
sinks:
  hot:
    kind: hot_store
    inputs: [analysis]
    connection: {{ url: '{pg_url}', password: '{PG_PASSWORD}', ssl_mode: disable }}
",
        brokers = support::kafka_brokers(),
        pid = std::process::id(),
    )
}

fn output(args: &[&str], file: &std::path::Path) -> String {
    let out = Command::new(STRATA).args(args).arg(file).output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn validate_and_graph_show_no_secret_even_of_the_wrong_type() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("t.yaml");
    let text = topology(
        "postgres://postgres@127.0.0.1:15432/claims",
        "http://127.0.0.1:18081",
        1433,
        "/tmp/unused",
    );
    std::fs::write(&file, &text).unwrap();
    for args in [
        &["validate"][..],
        &["graph"][..],
        &["graph", "--format", "dot"][..],
    ] {
        let out = output(args, &file);
        assert!(
            leaked(&out).is_empty(),
            "{args:?} shows {:?}:\n{out}",
            leaked(&out)
        );
    }
    // A numeric password is read as the secret it is; a list is refused without echo.
    let numeric = text.replace(
        &format!("password: '{MSSQL_PASSWORD}'"),
        &format!("password: {NUMERIC_PASSWORD}"),
    );
    std::fs::write(&file, numeric).unwrap();
    let out = output(&["validate"], &file);
    assert!(out.contains(": ok"), "{out}");
    let listed = text.replace(
        &format!("password: '{MSSQL_PASSWORD}'"),
        &format!("password: [{NUMERIC_PASSWORD}]"),
    );
    std::fs::write(&file, listed).unwrap();
    let out = output(&["validate"], &file);
    assert!(out.contains("sources.legacy.password"), "{out}");
    assert!(
        leaked(&out).is_empty(),
        "validate echoes {:?}:\n{out}",
        leaked(&out)
    );
}

#[tokio::test]
async fn a_run_logs_and_exports_no_secret() {
    let (db_url, mut db) = support::fresh_db("secrets").await;
    sqlx::Executor::execute(
        &mut db,
        "CREATE TABLE claims (claim_id bigint PRIMARY KEY, status text)",
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let registry = support::start_registry(&dir.path().join("registry")).await;
    // A SQL Server that never answers: its source retries with its password in hand.
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mssql_port = hung.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = hung.accept().await {
            held.push(socket);
        }
    });
    let file = dir.path().join("t.yaml");
    let state = dir.path().join("state");
    std::fs::write(
        &file,
        topology(
            &db_url,
            &registry.url,
            mssql_port,
            &state.display().to_string(),
        ),
    )
    .unwrap();
    let listen = format!("127.0.0.1:{}", support::free_port());
    let log_path = dir.path().join("strata.log");
    let mut child = support::KillOnDrop(
        Command::new(STRATA)
            .args(["--log-format", "json", "run"])
            .arg(&file)
            .args(["--listen", &listen])
            .env("RUST_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .unwrap(),
    );
    let slot = format!("secrets_slot_{}", std::process::id());
    support::wait_for("the slot", Duration::from_secs(60), || {
        support::slot_active(db_url.clone(), slot.clone(), true)
    })
    .await;
    sqlx::Executor::execute(&mut db, "INSERT INTO claims VALUES (1, 'PAID')")
        .await
        .unwrap();
    let metrics = format!("http://{listen}/metrics");
    let scraped = support::wait_for(
        "the change through, the SQL Server retried",
        Duration::from_secs(60),
        || {
            let metrics = metrics.clone();
            async move {
                let text = reqwest::get(&metrics).await.ok()?.text().await.ok()?;
                let through = text.contains("strata_events_out_total{component=\"db\"} 1");
                let retried = text.contains("strata_source_restarts_total{component=\"legacy\"}");
                (through && retried).then_some(text)
            }
        },
    )
    .await;
    assert!(
        leaked(&scraped).is_empty(),
        "/metrics shows {:?}",
        leaked(&scraped)
    );
    assert!(child.try_wait().is_none(), "still running");
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    support::wait_for("the run to stop", Duration::from_secs(60), || {
        let exited = child.try_wait();
        async move { exited.map(|_| ()) }
    })
    .await;
    let logs = std::fs::read_to_string(&log_path).unwrap();
    assert!(logs.contains("SQL Server source interrupted"), "{logs}");
    assert!(
        leaked(&logs).is_empty(),
        "the debug logs show {:?}",
        leaked(&logs)
    );
    support::wait_for("the slot released", Duration::from_secs(30), || {
        support::slot_active(db_url.clone(), slot.clone(), false)
    })
    .await;
    sqlx::query("SELECT pg_drop_replication_slot($1)")
        .bind(&slot)
        .execute(&mut db)
        .await
        .unwrap();
    registry.shutdown().await;
}

#[test]
fn a_failed_connection_names_no_password_from_the_url() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("t.yaml");
    let url = format!("postgres://postgres:{URL_PASSWORD}@127.0.0.1:9/claims");
    std::fs::write(
        &file,
        topology(
            &url,
            &support::registry_url(),
            9,
            &dir.path().join("s").display().to_string(),
        ),
    )
    .unwrap();
    let out = Command::new(STRATA)
        .arg("run")
        .arg(&file)
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("component `db` failed"), "{text}");
    assert!(
        leaked(&text).is_empty(),
        "the error shows {:?}:\n{text}",
        leaked(&text)
    );
}

#[test]
fn pii_encrypted_under_a_retired_key_still_decrypts_with_strata_pii_decrypt() {
    use strata_pipeline::processors::tiering::pii::Protection;
    use strata_pipeline::processors::tiering::PiiPolicy;
    let dir = tempfile::tempdir().unwrap();
    let old_key = dir.path().join("k1.key");
    std::fs::write(&old_key, hex_key(3)).unwrap();
    let policy = |yaml: &str| serde_yaml_ng::from_str::<PiiPolicy>(yaml).unwrap();
    let seal = |p: &PiiPolicy, text: &str| {
        let protection = Protection::from_policy(p).unwrap();
        let value = apache_avro::types::Value::String(text.into());
        match protection.protect(&value, "0/1", "ssn") {
            apache_avro::types::Value::String(s) => s,
            other => panic!("{other:?}"),
        }
    };
    let old = seal(
        &policy(&format!(
            "{{mode: encrypt, key_id: k1, key_file: '{}'}}",
            old_key.display()
        )),
        "111-22-3333",
    );
    // Rotated: k2 from the environment encrypts, k1 is retired.
    let rotated = format!(
        "{{mode: encrypt, key_id: k2, key_env: STRATA_TEST_PII_KEY_K2, retired_keys: [{{id: k1, key_file: '{}'}}]}}",
        old_key.display()
    );
    std::env::set_var("STRATA_TEST_PII_KEY_K2", hex_key(4));
    let new = seal(&policy(&rotated), "444-55-6666");
    let file = dir.path().join("t.yaml");
    std::fs::write(
        &file,
        format!(
            "region: pii\nkafka: {{ bootstrap_servers: '127.0.0.1:1' }}\nschema_registry: {{ url: 'http://127.0.0.1:1' }}\n\
             state: {{ dir: '{}' }}\nprocessors:\n  tiering:\n    kind: tiering\n    inputs: ['topic:claims']\n    pii: {rotated}\n",
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let out = Command::new(STRATA)
        .args(["pii", "decrypt"])
        .arg(&file)
        .args([&old, &new])
        .env("STRATA_TEST_PII_KEY_K2", hex_key(4))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "111-22-3333\n444-55-6666\n"
    );
    let tampered = old.replacen("enc:k1:", "enc:k9:", 1);
    let out = Command::new(STRATA)
        .args(["pii", "decrypt"])
        .arg(&file)
        .arg(&tampered)
        .env("STRATA_TEST_PII_KEY_K2", hex_key(4))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no key with id `k9`"),
        "{out:?}"
    );
}

fn hex_key(byte: u8) -> String {
    format!("{byte:02x}").repeat(32)
}
