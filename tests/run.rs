//! `strata run` serves /metrics, /health and /ready, and drains and exits 0 on SIGTERM.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn serves_ops_endpoints_and_exits_zero_on_sigterm() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let topology = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/topologies/minimal.yaml");
    let text = std::fs::read_to_string(topology)
        .unwrap()
        .replace("127.0.0.1:19092", &support::kafka_brokers());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("topology.yaml");
    std::fs::write(&file, text).unwrap();

    let child = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["--log-format", "json", "run"])
        .arg(&file)
        .args(["--listen", &listen])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("strata starts");

    let base = format!("http://{listen}");
    support::wait_for("/ready to answer 200", Duration::from_secs(60), || {
        let url = format!("{base}/ready");
        async move {
            reqwest::get(&url)
                .await
                .ok()
                .filter(|r| r.status() == 200)
                .map(|_| ())
        }
    })
    .await;
    let health = reqwest::get(format!("{base}/health")).await.unwrap();
    assert_eq!(health.status(), 200);
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("strata_component_up"), "{metrics}");

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let logs = String::from_utf8_lossy(&exit.stderr);
    assert!(
        exit.status.success(),
        "exit {:?}, logs:\n{logs}",
        exit.status
    );
    assert!(
        logs.lines()
            .any(|l| l.starts_with('{') && l.contains("SIGTERM received")),
        "JSON logs: {logs}"
    );
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
