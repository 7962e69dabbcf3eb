//! `strata run` runs its components, serves /metrics, /health and /ready, drains and
//! exits 0 on SIGTERM, and exits 1 with the reason when a component fails.

mod support;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A database with a claims table, a registry, and the minimal topology over them.
struct Deployment {
    db_url: String,
    db: sqlx::PgConnection,
    slot: String,
    file: PathBuf,
    registry: support::Registry,
    dir: tempfile::TempDir,
}

async fn deployment(name: &str) -> Deployment {
    let (db_url, mut db) = support::fresh_db(name).await;
    sqlx::Executor::execute(
        &mut db,
        "CREATE TABLE claims (claim_id bigint PRIMARY KEY, status text)",
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let registry = support::start_registry(&dir.path().join("registry")).await;
    let slot = format!("{name}_slot_{}", std::process::id());
    let file = support::minimal_topology(dir.path(), &registry.url, &db_url, &slot);
    Deployment {
        db_url,
        db,
        slot,
        file,
        registry,
        dir,
    }
}

impl Deployment {
    /// Adds a source beside `db` (the YAML of its entry under `sources:`).
    fn add_source(&self, yaml: &str) {
        let text = std::fs::read_to_string(&self.file).unwrap();
        let text = text.replacen("processors:", &format!("{yaml}processors:"), 1);
        std::fs::write(&self.file, text).unwrap();
    }

    fn append(&self, yaml: &str) {
        let mut text = std::fs::read_to_string(&self.file).unwrap();
        text.push_str(yaml);
        std::fs::write(&self.file, text).unwrap();
    }

    async fn wait_slot(&self, active: bool) {
        support::wait_for("the replication slot", Duration::from_secs(60), || {
            support::slot_active(self.db_url.clone(), self.slot.clone(), active)
        })
        .await;
    }

    async fn finish(mut self) {
        support::drop_slot_when_released(&mut self.db, &self.db_url, &self.slot).await;
        self.registry.shutdown().await;
    }
}

#[tokio::test]
async fn serves_ops_endpoints_and_exits_zero_on_sigterm() {
    let d = deployment("run").await;
    let (dir, file) = (&d.dir, &d.file);

    let listen = format!("127.0.0.1:{}", support::free_port());
    let log_path = dir.path().join("strata.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["--log-format", "json", "run"])
        .arg(file)
        .args(["--listen", &listen])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .expect("strata starts");
    let logs = || std::fs::read_to_string(&log_path).unwrap_or_default();

    let base = format!("http://{listen}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("strata exited early with {status}:\n{}", logs());
        }
        if reqwest::get(format!("{base}/ready"))
            .await
            .ok()
            .is_some_and(|r| r.status() == 200)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not ready within 60 s:\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let health = reqwest::get(format!("{base}/health")).await.unwrap();
    assert_eq!(health.status(), 200);
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("strata_component_up{component=\"db\"} 1"),
        "{metrics}"
    );

    // The source is streaming once its slot exists; then ask it to stop.
    d.wait_slot(true).await;
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    let logs = logs();
    assert!(exit.success(), "exit {exit:?}, logs:\n{logs}");
    assert!(
        logs.lines()
            .any(|l| l.starts_with('{') && l.contains("SIGTERM received")),
        "JSON logs: {logs}"
    );
    assert!(
        logs.contains("created replication slot"),
        "the postgres source ran: {logs}"
    );
    d.finish().await;
}

#[tokio::test]
async fn a_drain_past_its_deadline_exits_one_naming_it() {
    let d = deployment("drain").await;
    // The source's own drain waits for its last status update (status_interval, 1 s),
    // longer than this deadline.
    d.append("shutdown: { drain_timeout: 100ms }\n");
    let listen = format!("127.0.0.1:{}", support::free_port());
    // Logs go to a file: a pipe nobody reads until the end would block the process once
    // it filled.
    let log_path = d.dir.path().join("strata.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_strata"))
        .arg("run")
        .arg(&d.file)
        .args(["--listen", &listen])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .expect("strata starts");
    let started = Instant::now();
    while support::slot_active(d.db_url.clone(), d.slot.clone(), true)
        .await
        .is_none()
    {
        assert!(
            started.elapsed() < Duration::from_secs(60) && child.try_wait().unwrap().is_none(),
            "the slot never became active:\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    let err = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("drain_timeout"), "{err}");
    d.finish().await;
}

/// A SQL Server that accepts connections and never answers (hung, or a firewall that
/// drops packets): its source times out, backs off and opens its circuit, while the
/// PostgreSQL source beside it streams on, and SIGTERM still stops the run cleanly.
#[tokio::test]
async fn a_hung_sql_server_holds_up_no_other_source() {
    let mut d = deployment("hung").await;
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = hung.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = hung.accept().await {
            held.push(socket);
        }
    });
    d.add_source(&format!(
        "  legacy:\n    kind: sqlserver\n    host: 127.0.0.1\n    port: {port}\n    database: claims\n    \
         username: strata\n    password: s3cret-never-logged\n    tables: [dbo.claims]\n    encrypt: false\n    \
         connect_timeout: 500ms\n    max_backoff: 500ms\n    circuit_failures: 2\n    circuit_open_for: 1s\n"
    ));
    let listen = format!("127.0.0.1:{}", support::free_port());
    let log_path = d.dir.path().join("strata.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_strata"))
        .arg("run")
        .arg(&d.file)
        .args(["--listen", &listen])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .expect("strata starts");
    let logs = || std::fs::read_to_string(&log_path).unwrap_or_default();
    d.wait_slot(true).await;
    sqlx::Executor::execute(&mut d.db, "INSERT INTO claims VALUES (1, 'SUBMITTED')")
        .await
        .unwrap();
    let metrics = format!("http://{listen}/metrics");
    let scrape = || async { reqwest::get(&metrics).await.ok()?.text().await.ok() };
    support::wait_for(
        "the PostgreSQL change in Kafka, and the circuit open",
        Duration::from_secs(60),
        || async {
            let text = scrape().await?;
            let streamed = text.contains("strata_events_out_total{component=\"db\"} 1");
            let open = text.contains("strata_source_circuit_open{component=\"legacy\"} 1");
            (streamed && open).then_some(())
        },
    )
    .await;
    if let Ok(Some(status)) = child.try_wait() {
        panic!("strata exited with {status}:\n{}", logs());
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    let logs = logs();
    assert!(exit.success(), "exit {exit:?}:\n{logs}");
    assert!(logs.contains("SQL Server source interrupted"), "{logs}");
    assert!(
        !logs.contains("s3cret-never-logged"),
        "the password leaked into the logs"
    );
    d.finish().await;
}

#[tokio::test]
async fn a_failing_component_stops_the_run_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let registry = support::start_registry(&dir.path().join("registry")).await;
    let file = support::minimal_topology(
        dir.path(),
        &registry.url,
        "postgres://postgres@127.0.0.1:9/claims",
        "unused",
    );
    let listen = format!("127.0.0.1:{}", support::free_port());
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_strata"))
            .arg("run")
            .arg(&file)
            .args(["--listen", &listen])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("component `db` failed"), "{err}");
    registry.shutdown().await;
}

#[test]
fn validate_exits_one_on_a_broken_file() {
    let broken = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/topologies/invalid/cycle.yaml"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["validate", broken])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cycle.yaml:") && err.contains("hint:"),
        "{err}"
    );
}
