//! The quickstart topology end to end, in a bounded mode: a generated claims database is
//! snapshotted and streamed through conflict resolution, analysis and tiering into the
//! hot, warm and cold stores, which must then hold exactly the source's claims — each in
//! one tier, with the source's values — also after updates and deletes at the source.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use sqlx::{Connection, PgConnection};
use support::stores::{claims, mismatch};

const STRATA: &str = env!("CARGO_BIN_EXE_strata");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_stores_match_the_source() {
    let (url, mut db) = support::fresh_db("quickstart").await;
    let dir = tempfile::tempdir().unwrap();
    let registry = support::start_registry(&dir.path().join("registry")).await;
    support::generate(&url, 300, 40, 3000, 7);

    let region = format!("qs{}", std::process::id());
    let slot = format!("strata_{region}");
    let listen = format!("127.0.0.1:{}", support::free_port());
    let log_path = dir.path().join("strata.log");
    let start = || {
        Command::new(STRATA)
            .args(["run", "topologies/quickstart.yaml", "--listen", &listen])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("STRATA_PG_URL", &url)
            .env("STRATA_REGION", &region)
            .env("STRATA_SLOT", &slot)
            .env("STRATA_HOME", dir.path())
            .env("STRATA_SCHEMA_REGISTRY_URL", &registry.url)
            .env("STRATA_KAFKA_BROKERS", support::kafka_brokers())
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log_path)
                    .unwrap(),
            )
            .spawn()
            .expect("strata starts")
    };
    let mut child = start();
    let archive = dir.path().join("archive").join(&region);
    let logs = || std::fs::read_to_string(&log_path).unwrap_or_default();

    let wait_until_consistent = |what: &'static str| {
        let (url, archive, log_path) = (url.clone(), archive.clone(), log_path.clone());
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
            loop {
                let Some(last) = mismatch(&url, &archive).await else {
                    return;
                };
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{what}: stores never matched the source; last: {last}\n{}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    wait_until_consistent("after the snapshot").await;

    // kill -9, changes made while it is down, a restart: nothing lost, nothing doubled.
    child.kill().unwrap();
    child.wait().unwrap();
    sqlx::query("UPDATE public.claims SET status = 'ADJUDICATED' WHERE claim_id % 97 = 0")
        .execute(&mut db)
        .await
        .unwrap();
    child = start();
    wait_until_consistent("after kill -9 and a restart").await;

    // Changes at the source flow through: a status update, a delete.
    let hot = claims(&url, "hot").await;
    let (updated, deleted) = {
        let mut ids = hot.keys();
        (
            *ids.next().expect("some hot claims"),
            *ids.next().expect("two hot claims"),
        )
    };
    sqlx::query(
        "UPDATE public.claims SET status = 'DENIED', updated_at = now() WHERE claim_id = $1",
    )
    .bind(updated)
    .execute(&mut db)
    .await
    .unwrap();
    sqlx::query("DELETE FROM public.claims WHERE claim_id = $1")
        .bind(deleted)
        .execute(&mut db)
        .await
        .unwrap();
    wait_until_consistent("after an update and a delete").await;
    let hot = claims(&url, "hot").await;
    assert_eq!(hot.get(&updated).map(String::as_str), Some("DENIED"));
    assert!(!hot.contains_key(&deleted));

    // Every claim gets an analysis in the store of its tier. Analyses travel a longer
    // path than the claims (conflicts, assembly, analysis, tiering), so they may land
    // after the stores matched the source.
    let mut c = PgConnection::connect(&url).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let unanalysed: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM hot.claims c WHERE NOT EXISTS (SELECT 1 FROM hot.claim_analysis a WHERE a.claim_id = c.claim_id)",
        )
        .fetch_one(&mut c)
        .await
        .unwrap();
        if unanalysed == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{unanalysed} hot claims without their analysis after 120 s\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // No value of a sensitive column (schemas/claims_domain.yaml) reaches a cloud tier:
    // no row of any hot or warm table holds one as a value, and no record of the cloud
    // tiers' topics or of the audit topic contains the distinctive ones.
    let secrets = sensitive_values(&mut c).await;
    assert!(
        secrets.len() > 300,
        "sensitive values to look for: {}",
        secrets.len()
    );
    // Values no other column could hold by chance, looked for inside any text or bytes:
    // SSNs, street addresses and dotted diagnosis codes (names and postal codes also
    // occur inside provider names and numbers).
    let distinctive: Vec<&String> = secrets
        .iter()
        .filter(|v| {
            let ssn = v.len() == 11 && v.as_bytes()[3] == b'-';
            let address = v.contains(' ') && v.starts_with(|c: char| c.is_ascii_digit());
            let code = v.contains('.') && v.starts_with(|c: char| c.is_ascii_uppercase());
            ssn || address || code
        })
        .collect();
    assert!(
        distinctive.len() > 200,
        "distinctive values: {}",
        distinctive.len()
    );
    for store in ["hot", "warm"] {
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition",
        )
        .bind(store)
        .fetch_all(&mut c)
        .await
        .unwrap();
        assert!(tables.len() >= 6, "{store}: {tables:?}");
        for table in tables {
            let rows: Vec<serde_json::Value> =
                sqlx::query_scalar(&format!("SELECT to_jsonb(t) FROM {store}.{table} t"))
                    .fetch_all(&mut c)
                    .await
                    .unwrap();
            for row in &rows {
                let text = row.to_string();
                let leak = strings(row)
                    .into_iter()
                    .find(|v| secrets.contains(v))
                    .or_else(|| {
                        distinctive
                            .iter()
                            .find(|v| text.contains(v.as_str()))
                            .map(|v| v.to_string())
                    });
                assert!(
                    leak.is_none(),
                    "{store}.{table} holds the sensitive {leak:?}: {text}"
                );
            }
        }
    }
    for topic in ["tiering.hot", "tiering.warm", "audit"] {
        let topic = format!("{region}.{topic}");
        let name = topic.clone();
        let records = tokio::task::spawn_blocking(move || support::read_topic(&name))
            .await
            .unwrap();
        assert!(
            !records.is_empty() || topic.ends_with("audit"),
            "{topic} has records"
        );
        for (_, payload) in &records {
            let leak = distinctive
                .iter()
                .find(|v| payload.windows(v.len()).any(|w| w == v.as_bytes()));
            assert!(
                leak.is_none(),
                "a record of {topic} holds the sensitive {leak:?}"
            );
        }
    }
    let members: i64 = sqlx::query_scalar("SELECT count(*) FROM hot.members")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert!(
        members > 0,
        "members reach the hot store (without their PII)"
    );

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "exit {exit:?}\n{}", logs());
    let verify = Command::new(STRATA)
        .args(["archive", "verify"])
        .arg(&archive)
        .output()
        .unwrap();
    assert!(verify.status.success(), "{verify:?}");
    sqlx::query("SELECT pg_drop_replication_slot($1)")
        .bind(&slot)
        .execute(&mut db)
        .await
        .unwrap();
    registry.shutdown().await;
}

/// Every text value of a sensitive column of the source (array elements one by one).
async fn sensitive_values(c: &mut PgConnection) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    for column in [
        "first_name",
        "last_name",
        "ssn",
        "address_line",
        "city",
        "postal_code",
    ] {
        let values: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT DISTINCT {column}::text FROM public.members"
        ))
        .fetch_all(&mut *c)
        .await
        .unwrap();
        out.extend(values);
    }
    let codes: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT unnest(diagnosis_codes) FROM public.claims")
            .fetch_all(&mut *c)
            .await
            .unwrap();
    out.extend(codes);
    out
}

/// The text values in a JSON row, array elements included.
fn strings(v: &serde_json::Value) -> Vec<String> {
    match v {
        serde_json::Value::String(s) => vec![s.clone()],
        serde_json::Value::Array(items) => items.iter().flat_map(strings).collect(),
        serde_json::Value::Object(map) => map.values().flat_map(strings).collect(),
        _ => Vec::new(),
    }
}
