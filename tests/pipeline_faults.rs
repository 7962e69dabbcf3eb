//! The whole pipeline under faults while claims keep changing: the quickstart topology
//! (PostgreSQL source → conflict resolution → assembly → analysis → tiering → hot, warm
//! and cold stores) run by `strata run`, against the real PostgreSQL and broker of
//! `scripts/services.sh`.
//!
//! Each seeded round lets a writer change claims (status updates, new claims with
//! lines, deletes), injects one fault or two at once — `kill -9` of `strata run` (then a
//! restart), a broker restart, a PostgreSQL restart, the hot store refusing connections
//! (a proxy in front of it), the cold archive's disk full (a small tmpfs, filled) —
//! heals it, stops the writer and waits until the stores equal the source exactly: each
//! claim in one tier with the source's status, deleted claims nowhere
//! (`support::stores::mismatch`). The process must survive every fault but the kill.
//! `STRATA_FAULT_SEED` and `STRATA_FAULT_ROUNDS` rerun a seed or run longer.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};
use support::{services, Lcg};

const STRATA: &str = env!("CARGO_BIN_EXE_strata");

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    Kill9,
    BrokerRestart,
    PostgresRestart,
    HotStoreRefuses,
    ArchiveDiskFull,
}

const FAULTS: [Fault; 5] = [
    Fault::Kill9,
    Fault::BrokerRestart,
    Fault::PostgresRestart,
    Fault::HotStoreRefuses,
    Fault::ArchiveDiskFull,
];

/// `strata run` of the quickstart topology, its hot store behind the proxy.
struct Pipeline {
    topology: PathBuf,
    home: PathBuf,
    log: PathBuf,
    env: Vec<(&'static str, String)>,
    child: Option<Child>,
}

impl Pipeline {
    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut command = Command::new(STRATA);
        command
            .arg("run")
            .arg(&self.topology)
            .env("STRATA_HOME", &self.home)
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in &self.env {
            command.env(k, v);
        }
        self.child = Some(command.spawn().expect("strata starts"));
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    fn logs(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(60).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    fn assert_running(&mut self, when: &str) {
        if let Some(status) = self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
        {
            panic!("strata exited ({status}) {when}:\n{}", self.logs());
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Changes claims until told to pause: one change per transaction, retried across
/// outages. Counts the changes committed.
struct Writer {
    paused: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    committed: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

fn writer(url: String, seed: u64) -> Writer {
    let paused = Arc::new(AtomicBool::new(true));
    let stop = Arc::new(AtomicBool::new(false));
    let committed = Arc::new(AtomicU64::new(0));
    let (p, s, c) = (paused.clone(), stop.clone(), committed.clone());
    let task = tokio::spawn(async move {
        let mut rng = Lcg(seed);
        let mut next_id = 9_000_000_000i64;
        let mut conn: Option<PgConnection> = None;
        while !s.load(Ordering::SeqCst) {
            if p.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            if conn.is_none() {
                conn = PgConnection::connect(&url).await.ok();
            }
            let Some(db) = conn.as_mut() else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            let roll = rng.below(100);
            let status = ["SUBMITTED", "ADJUDICATED", "PAID", "DENIED"][rng.below(4) as usize];
            let sql = if roll < 60 {
                format!("UPDATE public.claims SET status = '{status}', updated_at = now() WHERE claim_id = (SELECT claim_id FROM public.claims ORDER BY random() LIMIT 1)")
            } else if roll < 85 {
                next_id += 1;
                // A copy of a random claim (and its lines) under a new id.
                format!(
                    "WITH src AS (SELECT * FROM public.claims ORDER BY random() LIMIT 1), \
                     c AS (INSERT INTO public.claims SELECT (jsonb_populate_record(NULL::public.claims, to_jsonb(src) || jsonb_build_object('claim_id', {next_id}, 'status', '{status}'))).* FROM src RETURNING claim_id) \
                     INSERT INTO public.claim_lines SELECT (jsonb_populate_record(NULL::public.claim_lines, to_jsonb(l) || jsonb_build_object('claim_id', {next_id}))).* \
                     FROM public.claim_lines l JOIN src ON l.claim_id = src.claim_id WHERE EXISTS (SELECT 1 FROM c)"
                )
            } else {
                "DELETE FROM public.claims WHERE claim_id = (SELECT claim_id FROM public.claims ORDER BY random() LIMIT 1)".to_string()
            };
            match sqlx::query(&sql).execute(&mut *db).await {
                Ok(_) => {
                    c.fetch_add(1, Ordering::SeqCst);
                }
                Err(_) => conn = None,
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    });
    Writer {
        paused,
        stop,
        committed,
        task,
    }
}

impl Writer {
    /// Lets the writer commit `n` more changes (waiting out outages).
    async fn write(&self, n: u64, deadline: Duration) {
        let target = self.committed.load(Ordering::SeqCst) + n;
        self.paused.store(false, Ordering::SeqCst);
        let committed = self.committed.clone();
        support::wait_for("the writer's changes", deadline, || {
            let done = committed.load(Ordering::SeqCst) >= target;
            async move { done.then_some(()) }
        })
        .await;
    }

    fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
    }
}

/// A small tmpfs for the archive, so its disk can be filled; unmounted when dropped.
struct Tmpfs(PathBuf);

/// `None` where mounting is not allowed (the disk-full fault is then left out, and the
/// report says so).
fn mount_tmpfs(dir: &Path) -> Option<Tmpfs> {
    std::fs::create_dir_all(dir).unwrap();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=48m", "tmpfs"])
        .arg(dir)
        .stderr(Stdio::null())
        .status()
        .ok()?
        .success();
    ok.then(|| Tmpfs(dir.to_path_buf()))
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Fills the file system of `dir` with a ballast file until it is full.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let ballast = dir.join("ballast");
    let mut file = std::fs::File::create(&ballast).unwrap();
    let chunk = vec![0u8; 1 << 20];
    while file.write_all(&chunk).is_ok() {}
    let _ = file.sync_all();
    ballast
}

/// Waits until the stores equal the source, the process running throughout.
async fn consistent(pipeline: &mut Pipeline, url: &str, archive: &Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        pipeline.assert_running(what);
        let Some(last) = support::stores::mismatch(url, archive).await else {
            return;
        };
        assert!(
            Instant::now() < deadline,
            "{what}: the stores never matched the source; last: {last}\n{}",
            pipeline.logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stores_equal_the_source_after_every_round_of_faults() {
    let seed: u64 = std::env::var("STRATA_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2026);
    let rounds: usize = std::env::var("STRATA_FAULT_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let (url, db) = support::fresh_db("faults").await;
    drop(db);
    let generated = Command::new(STRATA)
        .args([
            "generate",
            "--url",
            &url,
            "--members",
            "120",
            "--providers",
            "20",
        ])
        .args(["--claims", "400", "--seed", "11"])
        .output()
        .unwrap();
    assert!(generated.status.success(), "{generated:?}");

    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().to_path_buf();
    let region = format!("faults{}", std::process::id());
    let archive_root = home.join("archive");
    let mounted = mount_tmpfs(&archive_root);
    let tmpfs = mounted.is_some();
    let archive = archive_root.join(&region);
    let registry = support::start_registry(&home.join("registry")).await;

    let db_name = url.rsplit('/').next().unwrap().to_string();
    let pg_addr = url
        .trim_start_matches("postgres://")
        .split('/')
        .next()
        .unwrap()
        .rsplit('@')
        .next()
        .unwrap()
        .to_string();
    let proxy = support::proxy::proxy(pg_addr).await;
    let hot_url = format!("postgres://postgres@127.0.0.1:{}/{db_name}", proxy.port);
    let quickstart = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/topologies/quickstart.yaml"
    ))
    .unwrap();
    let hot_block = "kind: hot_store\n    inputs: [tiering.hot]\n    connection:\n      url: ${STRATA_PG_URL:-postgres://postgres@127.0.0.1:15432/claims}";
    assert!(
        quickstart.contains(hot_block),
        "the quickstart's hot sink moved"
    );
    let topology = home.join("topology.yaml");
    std::fs::write(
        &topology,
        quickstart.replace(
            hot_block,
            "kind: hot_store\n    inputs: [tiering.hot]\n    connection:\n      url: ${STRATA_HOT_URL}",
        ),
    )
    .unwrap();
    let slot = format!("strata_{region}");
    let mut pipeline = Pipeline {
        topology,
        home: home.clone(),
        log: home.join("strata.log"),
        env: vec![
            ("STRATA_PG_URL", url.clone()),
            ("STRATA_HOT_URL", hot_url),
            ("STRATA_REGION", region.clone()),
            ("STRATA_SLOT", slot.clone()),
            ("STRATA_SCHEMA_REGISTRY_URL", registry.url.clone()),
            ("STRATA_KAFKA_BROKERS", support::kafka_brokers()),
            (
                "STRATA_METRICS_LISTEN",
                format!("127.0.0.1:{}", support::free_port()),
            ),
        ],
        child: None,
    };
    pipeline.start();
    let writer = writer(url.clone(), seed);

    consistent(&mut pipeline, &url, &archive, "after the snapshot").await;

    let mut rng = Lcg(seed);
    let mut injected: BTreeMap<Fault, usize> = BTreeMap::new();
    let available: Vec<Fault> = FAULTS
        .into_iter()
        .filter(|f| tmpfs || *f != Fault::ArchiveDiskFull)
        .collect();
    let mut checked = 0usize;
    let started = Instant::now();
    for round in 1..=rounds {
        let first = available[rng.below(available.len() as u64) as usize];
        let mut faults = vec![first];
        if rng.below(10) < 3 {
            let second = available[rng.below(available.len() as u64) as usize];
            if second != first {
                faults.push(second);
            }
        }
        writer.write(20, Duration::from_secs(60)).await;
        let mut ballast = None;
        for fault in &faults {
            *injected.entry(*fault).or_default() += 1;
            match fault {
                Fault::Kill9 => pipeline.kill9(),
                Fault::BrokerRestart => services("restart-broker"),
                Fault::PostgresRestart => services("restart-postgres"),
                Fault::HotStoreRefuses => proxy.down.store(true, Ordering::SeqCst),
                Fault::ArchiveDiskFull => ballast = Some(fill(&archive_root)),
            }
        }
        // Changes keep coming while the faults last.
        writer.write(20, Duration::from_secs(120)).await;
        proxy.down.store(false, Ordering::SeqCst);
        if let Some(ballast) = ballast {
            std::fs::remove_file(ballast).unwrap();
        }
        if faults.contains(&Fault::Kill9) {
            pipeline.start();
        }
        writer.pause();
        let what = format!("round {round} (seed {seed}, faults {faults:?})");
        consistent(&mut pipeline, &url, &archive, &what).await;
        checked += support::stores::claims(&url, "public").await.len();
    }
    writer.stop.store(true, Ordering::SeqCst);
    writer.task.await.unwrap();
    let faults: usize = injected.values().sum();
    let report = format!(
        "{rounds} rounds (seed {seed}): {faults} faults {injected:?}{}; {} changes written; {checked} claims checked against the stores; {:.0} s",
        if tmpfs { "" } else { " (disk-full left out: tmpfs cannot be mounted here)" },
        writer.committed.load(Ordering::SeqCst),
        started.elapsed().as_secs_f64()
    );
    println!("{report}");
    // CI prints it after the tests (a passing test's output is not shown).
    if let Ok(home) = std::env::var("STRATA_HOME") {
        let _ = std::fs::write(Path::new(&home).join("pipeline-faults.txt"), &report);
    }

    pipeline.kill9();
    let verify = Command::new(STRATA)
        .args(["archive", "verify"])
        .arg(&archive)
        .output()
        .unwrap();
    assert!(verify.status.success(), "{verify:?}");
    drop(pipeline);
    support::wait_for("the slot released", Duration::from_secs(30), || {
        support::slot_active(url.clone(), slot.clone(), false)
    })
    .await;
    let mut db = PgConnection::connect(&url).await.unwrap();
    sqlx::query("SELECT pg_drop_replication_slot($1)")
        .bind(&slot)
        .execute(&mut db)
        .await
        .unwrap();
    drop(mounted);
    registry.shutdown().await;
}
