//! `strata replay` against a live quickstart deployment: a replay over all of the live
//! run's events writes replay tables identical to the live stores; a replay with another
//! analysis threshold gives the new routing; the live deployment keeps running (and
//! taking new changes) meanwhile, and nothing it owns is touched. Bad requests are
//! refused before anything is written.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use sqlx::PgConnection;
use support::stores::{archived_claims, claims, mismatch};
use support::KillOnDrop;

const STRATA: &str = env!("CARGO_BIN_EXE_strata");

/// The environment that points topologies/quickstart.yaml at this test's services.
struct Deployment {
    url: String,
    region: String,
    home: PathBuf,
    registry: String,
}

impl Deployment {
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(STRATA);
        c.args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("STRATA_PG_URL", &self.url)
            .env("STRATA_REGION", &self.region)
            .env("STRATA_SLOT", format!("strata_{}", self.region))
            .env("STRATA_HOME", &self.home)
            .env("STRATA_SCHEMA_REGISTRY_URL", &self.registry)
            .env("STRATA_KAFKA_BROKERS", support::kafka_brokers());
        c
    }

    fn log(&self, name: &str) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.home.join(name))
            .unwrap()
    }

    fn logs(&self, name: &str) -> String {
        std::fs::read_to_string(self.home.join(name)).unwrap_or_default()
    }

    fn start_replay(&self, topology: &Path, args: &[&str], log: &str) -> KillOnDrop {
        let mut all = vec!["replay", topology.to_str().unwrap()];
        all.extend_from_slice(args);
        self.command(&all)
            .stdout(self.log(log))
            .stderr(self.log(log))
            .spawn()
            .map(KillOnDrop)
            .expect("strata replay starts")
    }

    fn replay(&self, topology: &Path, args: &[&str]) -> Output {
        let mut all = vec!["replay", topology.to_str().unwrap()];
        all.extend_from_slice(args);
        self.command(&all).output().expect("strata replay runs")
    }
}

/// Rows of every table of `schema`, as JSON text without the write time, sorted.
async fn table_rows(db: &mut PgConnection, schema: &str, table: &str) -> Vec<String> {
    sqlx::query_scalar(&format!(
        "SELECT (to_jsonb(t) - '_written_at')::text AS row FROM {schema}.{table} t ORDER BY 1"
    ))
    .fetch_all(db)
    .await
    .unwrap_or_default()
}

async fn tables(db: &mut PgConnection, schema: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables
         WHERE table_schema = $1 AND table_type = 'BASE TABLE' AND table_name NOT LIKE '%\\_y____m__'
         ORDER BY 1",
    )
    .bind(schema)
    .fetch_all(db)
    .await
    .unwrap()
}

async fn wait_for_exit(mut child: KillOnDrop, what: &str, logs: impl Fn() -> String) {
    let status = support::wait_for(what, Duration::from_secs(300), || {
        let status = child.try_wait();
        async move { status }
    })
    .await;
    assert!(status.success(), "{what}: exit {status:?}\n{}", logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_reproduces_live_results_and_applies_new_settings() {
    let (url, mut db) = support::fresh_db("replay").await;
    let dir = tempfile::tempdir().unwrap();
    let registry = support::start_registry(&dir.path().join("registry")).await;
    let deployment = Deployment {
        url: url.clone(),
        region: format!("rp{}", std::process::id()),
        home: dir.path().to_path_buf(),
        registry: registry.url.clone(),
    };
    let before_any_event = chrono::Utc::now() - chrono::Duration::minutes(1);
    let generated = deployment
        .command(&["generate", "--url", &url, "--members", "200"])
        .args(["--providers", "30", "--claims", "1500", "--seed", "5"])
        .output()
        .unwrap();
    assert!(generated.status.success(), "{generated:?}");

    // The live deployment, caught up with the source.
    let listen = format!("127.0.0.1:{}", support::free_port());
    let mut live = deployment
        .command(&["run", "topologies/quickstart.yaml", "--listen", &listen])
        .stdout(Stdio::null())
        .stderr(deployment.log("live.log"))
        .spawn()
        .map(KillOnDrop)
        .unwrap();
    let archive = dir.path().join("archive").join(&deployment.region);
    support::wait_for(
        "the live stores match the source",
        Duration::from_secs(240),
        || {
            let (url, archive) = (url.clone(), archive.clone());
            async move { mismatch(&url, &archive).await.is_none().then_some(()) }
        },
    )
    .await;
    // Settled: the live analyses stop changing (every line's revision written).
    let mut previous = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = table_rows(&mut db, "hot", "claim_analysis").await;
        if !now.is_empty() && now == previous {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "live analyses never settled"
        );
        previous = now;
    }

    // The live deployment's /metrics covers lag, slots, restores and store writes.
    let metrics = reqwest::get(format!("http://{listen}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for series in [
        "strata_events_in_total{component=\"analysis\"}",
        "strata_consumer_lag{component=\"analysis\"",
        "strata_replication_lag_bytes{component=\"claims_db\"",
        "strata_slot_retained_wal_bytes{component=\"claims_db\"",
        "strata_restore_records{component=\"analysis\"",
        "strata_sink_write_seconds_bucket{component=\"hot\"",
        "strata_processing_seconds_bucket{component=\"tiering\"",
        "strata_component_ready{component=\"cold\"} 1",
    ] {
        assert!(
            metrics.contains(series),
            "/metrics lacks {series}:\n{metrics}"
        );
    }

    let quickstart = Path::new(env!("CARGO_MANIFEST_DIR")).join("topologies/quickstart.yaml");
    let from = before_any_event.to_rfc3339();

    // 1. The same events, the same settings: the same rows. The replay starts at the
    //    analysis stage and reads the live assembly topic, in the order it holds.
    let same = deployment.replay(
        &quickstart,
        &["--name", "same", "--stage", "analysis", "--from", &from],
    );
    assert!(
        same.status.success(),
        "replay failed: {}\n{}",
        String::from_utf8_lossy(&same.stderr),
        String::from_utf8_lossy(&same.stdout)
    );
    let stderr = String::from_utf8_lossy(&same.stderr);
    assert!(
        stderr.contains("input events ("),
        "progress shown: {stderr}"
    );
    for (live_schema, replay_schema) in [("hot", "hot_replay_same"), ("warm", "warm_replay_same")] {
        let live_tables = tables(&mut db, live_schema).await;
        assert_eq!(live_tables, tables(&mut db, replay_schema).await);
        for table in live_tables {
            let (a, b) = (
                table_rows(&mut db, live_schema, &table).await,
                table_rows(&mut db, replay_schema, &table).await,
            );
            let differing: Vec<_> = a.iter().filter(|r| !b.contains(r)).take(3).collect();
            assert!(
                a.len() == b.len() && differing.is_empty(),
                "{live_schema}.{table}: {} live rows, {} replayed; live rows not replayed: {differing:?}",
                a.len(),
                b.len()
            );
        }
    }
    assert_eq!(
        archived_claims(&archive).await,
        archived_claims(&archive.join("replay-same")).await,
        "cold archive"
    );

    // 2. Another review threshold, every stage replayed from the source topics: the
    //    replay routes by the new thresholds; the live deployment keeps running and takes
    //    a change made meanwhile, which the replay's window excludes.
    let changed = dir.path().join("changed.yaml");
    let text = std::fs::read_to_string(&quickstart).unwrap();
    assert!(text.contains("thresholds: { review: 0.3, investigate: 0.7 }"));
    std::fs::write(
        &changed,
        text.replace(
            "thresholds: { review: 0.3, investigate: 0.7 }",
            "thresholds: { review: 0.05, investigate: 0.2 }",
        ),
    )
    .unwrap();
    let replay = deployment.start_replay(
        &changed,
        &["--name", "lower", "--from", &from],
        "replay-lower.log",
    );
    // The window is fixed once the replay reports its plan.
    support::wait_for(
        "the replay plans its window",
        Duration::from_secs(60),
        || {
            let planned = deployment
                .logs("replay-lower.log")
                .contains("input events over");
            async move { planned.then_some(()) }
        },
    )
    .await;
    let hot = claims(&url, "hot").await;
    let updated = *hot.keys().next().expect("hot claims");
    sqlx::query(
        "UPDATE public.claims SET status = 'DENIED', updated_at = now() WHERE claim_id = $1",
    )
    .bind(updated)
    .execute(&mut db)
    .await
    .unwrap();
    support::wait_for(
        "the live store takes a change during the replay",
        Duration::from_secs(120),
        || {
            let url = url.clone();
            async move {
                (claims(&url, "hot").await.get(&updated).map(String::as_str) == Some("DENIED"))
                    .then_some(())
            }
        },
    )
    .await;
    wait_for_exit(replay, "the replay with new thresholds", || {
        deployment.logs("replay-lower.log")
    })
    .await;
    assert!(
        live.try_wait().is_none(),
        "the live deployment still runs:\n{}",
        deployment.logs("live.log")
    );
    let replayed = claims(&url, "hot_replay_lower").await;
    assert_ne!(
        replayed.get(&updated).map(String::as_str),
        Some("DENIED"),
        "the change came after the replay's window"
    );
    let (wrong, changed_routing): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE r.routing <> CASE WHEN r.score >= 0.2 THEN 'INVESTIGATE'
                                   WHEN r.score >= 0.05 THEN 'REVIEW' ELSE 'AUTO_APPROVE' END),
                count(*) FILTER (WHERE r.routing <> l.routing)
         FROM hot.claim_analysis l JOIN hot_replay_lower.claim_analysis r USING (claim_id)",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(wrong, 0, "replayed analyses routed by the new thresholds");
    assert!(
        changed_routing > 0,
        "the new thresholds changed some routing"
    );
    // The rows themselves, replayed through every stage, are the live ones (but for the
    // claim changed after the replay's window).
    for table in ["claims", "claim_lines", "members", "policies", "providers"] {
        let differing: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM (
               (SELECT to_jsonb(t) - '_written_at' AS j FROM hot.{table} t
                EXCEPT SELECT to_jsonb(t) - '_written_at' FROM hot_replay_lower.{table} t)
               UNION ALL
               (SELECT to_jsonb(t) - '_written_at' FROM hot_replay_lower.{table} t
                EXCEPT SELECT to_jsonb(t) - '_written_at' FROM hot.{table} t)
             ) d WHERE coalesce((j ->> 'claim_id')::bigint, -1) <> $1"
        ))
        .bind(updated)
        .fetch_one(&mut db)
        .await
        .unwrap();
        assert_eq!(
            differing, 0,
            "hot.{table} rows differ between live and replay"
        );
    }

    // 3. Refused before anything is written.
    let db_name = url.rsplit('/').next().unwrap();
    let fresh_dir = dir.path().join("fresh-state").display().to_string();
    let refusals: [(&[&str], &str); 7] = [
        (&["--name", "same", "--from", &from], "already in use"),
        (
            &["--name", "same", "--from", &from, "--state-dir", &fresh_dir],
            "already exists",
        ),
        (
            &["--name", "x0", "--from", &from, "--stage", "nosuch"],
            "not a processor",
        ),
        (&["--name", "x1", "--from", "yesterday"], "RFC 3339"),
        (
            &["--name", "x2", "--from", "nosuch.topic:0:0"],
            "not an input",
        ),
        (
            &[
                "--name",
                "x3",
                "--from",
                &format!(
                    "{}.cdc.{db_name}.public.claims:0:999999999",
                    deployment.region
                ),
            ],
            "outside the records",
        ),
        (
            &[
                "--name",
                "x4",
                "--from",
                &from,
                "--state-dir",
                &dir.path()
                    .join("state")
                    .join(&deployment.region)
                    .display()
                    .to_string(),
            ],
            "live deployment",
        ),
    ];
    for (args, expected) in refusals {
        let out = deployment.replay(&quickstart, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(expected),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let leftover: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.schemata WHERE schema_name LIKE '%replay_x%'",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(leftover, 0, "refused replays wrote nothing");

    drop(live);
    let slot = format!("strata_{}", deployment.region);
    assert_eq!(
        support::drop_slot_when_released(&mut db, &url, &slot).await,
        1,
        "the live deployment's slot {slot} existed"
    );
    registry.shutdown().await;
}
