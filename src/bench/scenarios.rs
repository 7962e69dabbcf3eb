//! The scenarios of `strata bench`. Each starts a fresh claims database, fills it with the
//! workload generator, runs the topology (`strata run`, as its own process, the way it
//! runs in production) and reads its figures off `/metrics`, `/proc` and the stores.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::{Connection, Executor, PgConnection};
use strata_connectors::generator::{self, GeneratorConfig, Start};

use super::probe::{self, ProcessStats, Scrape};
use super::{wait_for, BenchOptions};

/// The first processor of the bench's topology (it reads every captured change), and the
/// source's publication.
const FIRST_PROCESSOR: &str = "conflicts";
const PUBLICATION: &str = "strata_claims";
const PROCESSORS: [&str; 4] = ["conflicts", "assembly", "analysis", "tiering"];
const SINKS: [&str; 3] = ["hot", "warm", "cold"];
/// Claims committed in the first seconds of the latency run are left out (start-up).
const LATENCY_WARM_UP: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Initial snapshot of the backfill: rows/s until the source read every row, then
    /// until the stores hold it; beside a bulk COPY into PostgreSQL.
    Snapshot,
    /// New claims committed as fast as the generator can: changes/s from WAL to the
    /// stores, each stage's capacity, beside pg_recvlogical on the same WAL.
    Streaming,
    /// New claims at a fixed rate: latency from commit in PostgreSQL to the analysis row
    /// in the hot store (p50/p95/p99).
    Latency,
    /// The broker's own limits: a raw rdkafka producer and consumer.
    Raw,
    /// `strata replay` of a deployment's whole history into fresh state and replay
    /// tables: input events/s, beside the live run's rate over the same events.
    Replay,
    /// New claims at `--rate` for `--seconds` (ten minutes, say): resident memory,
    /// consumer lag and the slot's retained WAL sampled every 10 s, judged bounded.
    Soak,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Self::Snapshot => "snapshot",
            Self::Streaming => "streaming",
            Self::Latency => "latency",
            Self::Raw => "raw",
            Self::Replay => "replay",
            Self::Soak => "soak",
        }
    }

    pub async fn run(self, options: &BenchOptions) -> Result<Outcome, String> {
        match self {
            Self::Snapshot => snapshot(options).await,
            Self::Streaming => streaming(options).await,
            Self::Latency => latency(options).await,
            Self::Raw => raw(options).await,
            Self::Replay => replay(options).await,
            Self::Soak => soak(options).await,
        }
    }
}

/// What one scenario measured.
#[derive(Debug, Serialize)]
pub struct Outcome {
    pub scenario: &'static str,
    /// Named figures (rates per second, milliseconds, MiB, ratios).
    pub figures: BTreeMap<&'static str, f64>,
    /// Per stage: events handled, time busy (processing and the commit cycle, which waits
    /// for the broker's acknowledgements), and events per busy second.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<Stage>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub goals: Vec<Goal>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bottleneck: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Stage {
    pub component: &'static str,
    pub events: f64,
    pub busy_seconds: f64,
    pub capacity_per_second: f64,
}

#[derive(Debug, Serialize)]
pub struct Goal {
    pub goal: &'static str,
    pub met: bool,
}

impl Outcome {
    fn new(scenario: &'static str) -> Self {
        Self {
            scenario,
            figures: BTreeMap::new(),
            stages: Vec::new(),
            goals: Vec::new(),
            bottleneck: None,
        }
    }

    fn goal(&mut self, goal: &'static str, met: bool) {
        self.goals.push(Goal { goal, met });
    }

    /// The short human table.
    pub fn print(&self) {
        println!("\n== {} ==", self.scenario);
        for (name, value) in &self.figures {
            println!("  {name:<42} {value:>14.2}");
        }
        if !self.stages.is_empty() {
            println!(
                "  {:<12} {:>12} {:>10} {:>14}",
                "stage", "events", "busy s", "events/busy s"
            );
            for s in &self.stages {
                println!(
                    "  {:<12} {:>12.0} {:>10.2} {:>14.0}",
                    s.component, s.events, s.busy_seconds, s.capacity_per_second
                );
            }
        }
        for g in &self.goals {
            println!(
                "  goal {:<50} {}",
                g.goal,
                if g.met { "met" } else { "MISSED" }
            );
        }
        if let Some(b) = &self.bottleneck {
            println!("  bottleneck: {b}");
        }
    }
}

fn generator_config(claims: u32, stream_claims: u32, rate: Option<f64>) -> GeneratorConfig {
    let members = (claims / 10).clamp(500, 50_000);
    GeneratorConfig {
        members,
        providers: (members / 10).clamp(50, 2_000),
        claims,
        stream_claims,
        rate,
        anomaly_share: 0.05,
        seed: 42,
        years: 3,
        today: chrono::Utc::now().date_naive(),
    }
}

async fn connect(url: &str) -> Result<PgConnection, String> {
    PgConnection::connect(url)
        .await
        .map_err(|e| format!("connecting to {url}: {e}"))
}

/// A fresh database `name` on the server of `admin_url`, committing without waiting for
/// the WAL flush; its URL.
pub async fn fresh_db(admin_url: &str, name: &str) -> Result<String, String> {
    let mut admin = connect(admin_url).await?;
    for sql in [
        format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        format!("CREATE DATABASE {name}"),
        // The generator commits one transaction per claim: with a WAL flush per commit
        // this machine's disk, not the pipeline, would cap the rate.
        format!("ALTER DATABASE {name} SET synchronous_commit = off"),
    ] {
        admin
            .execute(sql.as_str())
            .await
            .map_err(|e| format!("{sql}: {e}"))?;
    }
    let base = admin_url.rsplit_once('/').map_or(admin_url, |(b, _)| b);
    Ok(format!("{base}/{name}"))
}

async fn generate(
    url: &str,
    config: &GeneratorConfig,
    start: Start,
) -> Result<generator::Report, String> {
    let mut conn = connect(url).await?;
    generator::generate(&mut conn, config, start)
        .await
        .map_err(|e| format!("generator: {e}"))
}

/// Rows of the captured tables.
async fn captured_rows(url: &str) -> Result<f64, String> {
    let mut conn = connect(url).await?;
    let n: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM members) + (SELECT count(*) FROM providers)
              + (SELECT count(*) FROM policies) + (SELECT count(*) FROM claims)
              + (SELECT count(*) FROM claim_lines)",
    )
    .fetch_one(&mut conn)
    .await
    .map_err(|e| e.to_string())?;
    Ok(n as f64)
}

/// `strata run` of the bench topology over one database, in a region of its own.
struct Deployment {
    name: String,
    url: String,
    listen: String,
    child: Child,
    log: PathBuf,
    _home: tempfile::TempDir,
}

impl Deployment {
    async fn start(options: &BenchOptions, name: &str, url: &str) -> Result<Self, String> {
        let home = tempfile::tempdir().map_err(|e| e.to_string())?;
        let log = home.path().join("strata.log");
        let listen = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .to_string();
        let log_file = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let child = Command::new(exe)
            .arg("run")
            .arg(&options.topology)
            .args(["--listen", &listen])
            .env("STRATA_PG_URL", url)
            // Regions take `-`, slots and databases `_`.
            .env("STRATA_REGION", name.replace('_', "-"))
            .env("STRATA_SLOT", name)
            .env("STRATA_HOME", home.path())
            .env("STRATA_KAFKA_BROKERS", &options.kafka_brokers)
            .env("STRATA_SCHEMA_REGISTRY_URL", &options.registry_url)
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("starting strata run: {e}"))?;
        let mut deployment = Self {
            name: name.into(),
            url: url.into(),
            listen,
            child,
            log,
            _home: home,
        };
        let ready = format!("http://{}/ready", deployment.listen);
        wait_for(
            "the deployment becoming ready",
            Duration::from_secs(120),
            || {
                let alive = deployment.alive();
                let ready = ready.clone();
                async move {
                    alive?;
                    Ok(reqwest::get(&ready)
                        .await
                        .is_ok_and(|r| r.status().is_success())
                        .then_some(()))
                }
            },
        )
        .await?;
        Ok(deployment)
    }

    fn url(&self) -> &str {
        &self.url
    }

    fn alive(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            _ => Err(format!(
                "strata run stopped; its log ({}) ends with:\n{}",
                self.log.display(),
                tail(&self.log)
            )),
        }
    }

    async fn scrape(&mut self) -> Result<Scrape, String> {
        self.alive()?;
        Scrape::fetch(&self.listen).await
    }

    /// Waits until no component's counters moved for 3 s; returns the last scrape and
    /// when the counters last moved.
    async fn wait_idle(&mut self, deadline: Duration) -> Result<(Scrape, Instant), String> {
        let until = Instant::now() + deadline;
        let mut last = self.scrape().await?;
        let mut moved = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let now = self.scrape().await?;
            let series = |s: &Scrape| {
                let mut v = s.counters("strata_events_in_total");
                v.extend(s.counters("strata_events_out_total"));
                v
            };
            if series(&now) != series(&last) {
                moved = Instant::now();
            } else if moved.elapsed() >= Duration::from_secs(3) {
                return Ok((now, moved));
            }
            last = now;
            if Instant::now() > until {
                return Err(format!(
                    "the deployment never went idle within {} s",
                    deadline.as_secs()
                ));
            }
        }
    }

    fn stats(&self) -> ProcessStats {
        probe::process_stats(self.child.id())
    }

    /// `strata replay` of everything this deployment's inputs hold, into fresh state and
    /// replay tables — every stage, or with `stage` that stage alone, reading the live
    /// topic before it; (input events, seconds) from its summary line.
    async fn replay(
        &self,
        options: &BenchOptions,
        stage: Option<&str>,
    ) -> Result<(f64, f64), String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut command = Command::new(exe);
        command
            .arg("replay")
            .arg(&options.topology)
            .args(["--name", &format!("bench_{}", stage.unwrap_or("all"))])
            .args(["--from", "1970-01-01T00:00:00Z"]);
        if let Some(stage) = stage {
            command.args(["--stage", stage, "--only"]);
        }
        command
            .env("STRATA_PG_URL", self.url())
            .env("STRATA_REGION", self.name.replace('_', "-"))
            .env("STRATA_SLOT", &self.name)
            .env("STRATA_HOME", self._home.path())
            .env("STRATA_KAFKA_BROKERS", &options.kafka_brokers)
            .env("STRATA_SCHEMA_REGISTRY_URL", &options.registry_url);
        let output = tokio::task::spawn_blocking(move || command.output())
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("starting strata replay: {e}"))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            return Err(format!(
                "strata replay failed: {}",
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        // "replayed N input events in S s; processing P s at …"
        let words: Vec<&str> = stdout.split_whitespace().collect();
        let number = |after: &str| {
            words
                .iter()
                .position(|w| *w == after)
                .and_then(|i| words.get(i + 1))
                .and_then(|w| w.parse::<f64>().ok())
        };
        match (number("replayed"), number("processing")) {
            (Some(events), Some(seconds)) => Ok((events, seconds)),
            _ => Err(format!("unexpected strata replay output: {stdout}")),
        }
    }

    /// SIGTERM (it drains and commits), then drops the slot and the database.
    async fn stop(self, options: &BenchOptions) -> ProcessStats {
        self.stop_checked(options).await.0
    }

    /// Stops the deployment with SIGTERM, and with SIGKILL if it has not exited within
    /// [`STOP_DEADLINE`]; whether it exited by itself.
    async fn stop_checked(mut self, options: &BenchOptions) -> (ProcessStats, bool) {
        let stats = self.stats();
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let started = Instant::now();
        let exited = loop {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break true;
            }
            if started.elapsed() > STOP_DEADLINE {
                println!(
                    "[bench] the deployment did not exit within {} s of SIGTERM; killing it",
                    STOP_DEADLINE.as_secs()
                );
                let _ = self.child.kill();
                let _ = tokio::task::spawn_blocking(move || self.child.wait()).await;
                break false;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        if let Ok(mut admin) = connect(&options.pg_admin_url).await {
            let _ = sqlx::query(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = $1",
            )
            .bind(&self.name)
            .execute(&mut admin)
            .await;
            let _ = admin
                .execute(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name).as_str())
                .await;
        }
        (stats, exited)
    }
}

/// How long a deployment may take to drain and exit after SIGTERM.
const STOP_DEADLINE: Duration = Duration::from_secs(60);

fn tail(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

fn run_name(scenario: &str) -> String {
    format!("strata_bench_{scenario}_{}", std::process::id())
}

async fn snapshot(options: &BenchOptions) -> Result<Outcome, String> {
    let mut outcome = Outcome::new("snapshot");
    let name = run_name("snapshot");
    let url = fresh_db(&options.pg_admin_url, &name).await?;
    let config = generator_config(options.claims, 0, None);
    let backfill = generate(&url, &config, Start::Fresh).await?;
    let rows = captured_rows(&url).await?;
    outcome.figures.insert("claims", f64::from(options.claims));
    outcome.figures.insert("rows_captured", rows);
    outcome
        .figures
        .insert("raw_copy_rows_per_s", backfill.bulk_rows_per_second());

    let started = Instant::now();
    let mut deployment = Deployment::start(options, &name, &url).await?;
    let read = async {
        while deployment.scrape().await?.sum("strata_snapshot_rows", None) < rows {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok::<_, String>(())
    }
    .await;
    let read_seconds = started.elapsed().as_secs_f64();
    let idle = match read {
        Ok(()) => deployment.wait_idle(Duration::from_secs(3600)).await,
        Err(e) => Err(e),
    };
    let stats = deployment.stats();
    deployment.stop(options).await;
    let (_, stored_at) = idle?;
    let stored_seconds = stored_at.duration_since(started).as_secs_f64();
    let source_rate = rows / read_seconds;
    outcome
        .figures
        .insert("snapshot_read_rows_per_s", source_rate);
    outcome
        .figures
        .insert("snapshot_to_stores_rows_per_s", rows / stored_seconds);
    outcome.figures.insert(
        "ratio_snapshot_read_to_copy",
        source_rate / backfill.bulk_rows_per_second(),
    );
    outcome.figures.insert("peak_rss_mib", stats.peak_rss_mib);
    outcome.figures.insert(
        "cpu_seconds_per_million_rows",
        stats.cpu_seconds / rows * 1e6,
    );
    Ok(outcome)
}

/// Events and busy seconds of each stage between two scrapes.
fn stages(before: &Scrape, after: &Scrape) -> Vec<Stage> {
    let delta = |name: &str, c: &str| after.sum(name, Some(c)) - before.sum(name, Some(c));
    let mut out = Vec::new();
    for (component, busy_metric) in PROCESSORS
        .iter()
        .map(|c| (*c, "strata_processing_seconds_sum"))
        .chain(SINKS.iter().map(|c| (*c, "strata_sink_write_seconds_sum")))
    {
        let events = delta("strata_events_in_total", component);
        let busy = delta(busy_metric, component);
        out.push(Stage {
            component,
            events,
            busy_seconds: busy,
            capacity_per_second: if busy > 0.0 { events / busy } else { 0.0 },
        });
    }
    out
}

async fn streaming(options: &BenchOptions) -> Result<Outcome, String> {
    let mut outcome = Outcome::new("streaming");
    let name = run_name("streaming");
    let url = fresh_db(&options.pg_admin_url, &name).await?;
    let backfill_claims = (options.claims / 10).max(1_000);
    let config = generator_config(backfill_claims, 0, None);
    generate(&url, &config, Start::Fresh).await?;
    let mut deployment = Deployment::start(options, &name, &url).await?;
    let result = async {
        let (before, _) = deployment.wait_idle(Duration::from_secs(3600)).await?;
        // A second slot, made before the stream, lets pg_recvlogical decode the same WAL.
        let recv_slot = format!("{name}_recv");
        let mut conn = connect(&url).await?;
        sqlx::query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')")
            .bind(&recv_slot)
            .execute(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        let before_stats = deployment.stats();
        let started = Instant::now();
        let stream = generator_config(backfill_claims, options.stream_claims, None);
        let report = generate(&url, &stream, Start::Resume).await?;
        let end: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
            .fetch_one(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        conn.execute("SELECT pg_logical_emit_message(false, 'strata-bench', 'end')")
            .await
            .map_err(|e| e.to_string())?;
        let (after, moved) = deployment.wait_idle(Duration::from_secs(3600)).await?;
        let seconds = moved.duration_since(started).as_secs_f64();
        let after_stats = deployment.stats();
        // Every captured change is read once by the first processor.
        let changes = after.sum("strata_events_in_total", Some(FIRST_PROCESSOR))
            - before.sum("strata_events_in_total", Some(FIRST_PROCESSOR));
        let recv_seconds =
            probe::recvlogical(&options.pg_bin, &url, &recv_slot, PUBLICATION, &end)?;
        let _ = sqlx::query("SELECT pg_drop_replication_slot($1)")
            .bind(&recv_slot)
            .execute(&mut conn)
            .await;
        Ok::<_, String>((
            before,
            after,
            changes,
            seconds,
            recv_seconds,
            report,
            before_stats,
            after_stats,
        ))
    }
    .await;
    let peak = deployment.stats().peak_rss_mib;
    deployment.stop(options).await;
    let (before, after, changes, seconds, recv_seconds, report, s0, s1) = result?;
    let rate = changes / seconds;
    let recv_rate = changes / recv_seconds;
    outcome
        .figures
        .insert("claims_streamed", report.claims as f64);
    outcome.figures.insert("changes", changes);
    outcome
        .figures
        .insert("generator_commit_seconds", report.stream_seconds);
    outcome.figures.insert("end_to_end_changes_per_s", rate);
    outcome
        .figures
        .insert("raw_pg_recvlogical_changes_per_s", recv_rate);
    outcome
        .figures
        .insert("ratio_to_pg_recvlogical", rate / recv_rate);
    outcome.figures.insert("peak_rss_mib", peak);
    outcome.figures.insert(
        "cpu_seconds_per_million_changes",
        (s1.cpu_seconds - s0.cpu_seconds) / changes.max(1.0) * 1e6,
    );
    outcome.stages = stages(&before, &after);
    outcome.goal(
        "≥ 50k changes/s from WAL to the hot store",
        rate >= 50_000.0,
    );
    outcome.goal(
        "≥ 0.7 of pg_recvlogical's decoding rate",
        rate / recv_rate >= 0.7,
    );
    outcome.goal("peak RSS < 512 MiB", peak < 512.0);
    // The stage with the least capacity per busy second limits the rest; when the
    // generator's commit rate is below every stage's capacity, the source side is.
    let slowest = outcome
        .stages
        .iter()
        // Stages that saw only a trickle (the warm tier of new claims) limit nothing.
        .filter(|s| s.busy_seconds > 0.0 && s.events >= changes * 0.05)
        .min_by(|a, b| a.capacity_per_second.total_cmp(&b.capacity_per_second));
    outcome.bottleneck = Some(match slowest {
        Some(s) if s.capacity_per_second < rate * 1.5 => format!(
            "{} ({:.0} events per busy second)",
            s.component, s.capacity_per_second
        ),
        _ => format!(
            "the source or the generator: every stage had capacity to spare (generator committed for {:.1} s of {seconds:.1} s)",
            report.stream_seconds
        ),
    });
    Ok(outcome)
}

async fn latency(options: &BenchOptions) -> Result<Outcome, String> {
    let mut outcome = Outcome::new("latency");
    let name = run_name("latency");
    let url = fresh_db(&options.pg_admin_url, &name).await?;
    let backfill_claims = (options.claims / 10).max(1_000);
    generate(
        &url,
        &generator_config(backfill_claims, 0, None),
        Start::Fresh,
    )
    .await?;
    let mut deployment = Deployment::start(options, &name, &url).await?;
    let result = async {
        deployment.wait_idle(Duration::from_secs(3600)).await?;
        let measured_from = chrono::Utc::now() + LATENCY_WARM_UP;
        let total = (options.rate * options.seconds as f64) as u32;
        let stream = generator_config(backfill_claims, total, Some(options.rate));
        let report = generate(&url, &stream, Start::Resume).await?;
        deployment.wait_idle(Duration::from_secs(600)).await?;
        let mut conn = connect(&url).await?;
        let row: (i64, Option<f64>, Option<f64>, Option<f64>, Option<f64>) = sqlx::query_as(
            "SELECT count(*),
                    percentile_disc(0.5) WITHIN GROUP (ORDER BY ms),
                    percentile_disc(0.95) WITHIN GROUP (ORDER BY ms),
                    percentile_disc(0.99) WITHIN GROUP (ORDER BY ms),
                    max(ms)
               FROM (SELECT extract(epoch FROM _written_at - event_time)::float8 * 1000 AS ms
                       FROM hot.claim_analysis WHERE event_time >= $1) latencies",
        )
        .bind(measured_from)
        .fetch_one(&mut conn)
        .await
        .map_err(|e| format!("reading latencies from hot.claim_analysis: {e}"))?;
        Ok::<_, String>((report, row))
    }
    .await;
    let peak = deployment.stats().peak_rss_mib;
    deployment.stop(options).await;
    let (report, (count, p50, p95, p99, max)) = result?;
    if count == 0 {
        return Err("no claim analysis reached the hot store after the warm-up".into());
    }
    let achieved = report.claims as f64 / report.stream_seconds.max(1e-9);
    outcome.figures.insert("target_claims_per_s", options.rate);
    outcome.figures.insert("achieved_claims_per_s", achieved);
    outcome.figures.insert("analyses_measured", count as f64);
    for (label, v) in [
        ("commit_to_hot_store_p50_ms", p50),
        ("commit_to_hot_store_p95_ms", p95),
        ("commit_to_hot_store_p99_ms", p99),
        ("commit_to_hot_store_max_ms", max),
    ] {
        outcome.figures.insert(label, v.unwrap_or(0.0));
    }
    outcome.figures.insert("peak_rss_mib", peak);
    outcome.goal(
        "p99 commit-to-hot-store < 100 ms at 5k changes/s",
        p99.unwrap_or(f64::MAX) < 100.0,
    );
    Ok(outcome)
}

/// How often the soak samples the deployment.
const SOAK_SAMPLE_EVERY: Duration = Duration::from_secs(10);

/// One reading of a soak: resident memory (and RocksDB's part of it), the processors'
/// lag, the slot's retained WAL.
struct SoakSample {
    seconds: f64,
    rss_mib: f64,
    rocksdb_mib: f64,
    lag: f64,
    retained_wal_mib: f64,
}

fn max_of(samples: &[SoakSample], f: impl Fn(&SoakSample) -> f64) -> f64 {
    samples.iter().map(f).fold(0.0, f64::max)
}

/// How much `f` grew from the first sample to the last along the least-squares line
/// through all samples: the trend, which single spikes barely move.
fn trend_growth(samples: &[SoakSample], f: impl Fn(&SoakSample) -> f64) -> f64 {
    let n = samples.len() as f64;
    if samples.len() < 2 {
        return 0.0;
    }
    let mean_t = samples.iter().map(|s| s.seconds).sum::<f64>() / n;
    let mean_y = samples.iter().map(&f).sum::<f64>() / n;
    let (mut covariance, mut variance) = (0.0, 0.0);
    for s in samples {
        covariance += (s.seconds - mean_t) * (f(s) - mean_y);
        variance += (s.seconds - mean_t).powi(2);
    }
    let span = samples[samples.len() - 1].seconds - samples[0].seconds;
    if variance == 0.0 {
        0.0
    } else {
        covariance / variance * span
    }
}

async fn soak(options: &BenchOptions) -> Result<Outcome, String> {
    let mut outcome = Outcome::new("soak");
    let name = run_name("soak");
    let url = fresh_db(&options.pg_admin_url, &name).await?;
    let backfill_claims = (options.claims / 10).max(1_000);
    let backfill = generator_config(backfill_claims, 0, None);
    generate(&url, &backfill, Start::Fresh).await?;
    let mut deployment = Deployment::start(options, &name, &url).await?;
    let result = async {
        deployment.wait_idle(Duration::from_secs(3600)).await?;
        let total = (options.rate * options.seconds as f64) as u32;
        let stream = generator_config(backfill_claims, total, Some(options.rate));
        let stream_url = url.clone();
        let writer =
            tokio::spawn(async move { generate(&stream_url, &stream, Start::Resume).await });
        let started = Instant::now();
        let mut samples = Vec::new();
        while !writer.is_finished() {
            tokio::time::sleep(SOAK_SAMPLE_EVERY).await;
            let scrape = deployment.scrape().await?;
            let sample = SoakSample {
                seconds: started.elapsed().as_secs_f64(),
                rss_mib: deployment.stats().rss_mib,
                rocksdb_mib: scrape.sum("strata_state_memory_bytes", None) / 1048576.0,
                lag: scrape.sum("strata_consumer_lag", None),
                retained_wal_mib: scrape.sum("strata_slot_retained_wal_bytes", None) / 1048576.0,
            };
            println!(
                "soak {:>5.0} s: rss {:>7.1} MiB (RocksDB {:>6.1}), consumer lag {:>8.0}, retained WAL {:>7.1} MiB",
                sample.seconds, sample.rss_mib, sample.rocksdb_mib, sample.lag, sample.retained_wal_mib
            );
            samples.push(sample);
        }
        let report = writer
            .await
            .map_err(|e| format!("the generator task failed: {e}"))??;
        deployment.wait_idle(Duration::from_secs(600)).await?;
        Ok::<_, String>((report, samples))
    }
    .await;
    let peak = deployment.stats().peak_rss_mib;
    let (_, exited) = deployment.stop_checked(options).await;
    let (report, samples) = result?;
    if samples.len() < 6 {
        return Err(format!(
            "a soak needs a minute of samples at least; --seconds {} gave {}",
            options.seconds,
            samples.len()
        ));
    }
    let third = samples.len() / 3;
    let (first, last) = (&samples[..third], &samples[samples.len() - third..]);
    let achieved = report.claims as f64 / report.stream_seconds.max(1e-9);
    let figures = [
        ("target_claims_per_s", options.rate),
        ("achieved_claims_per_s", achieved),
        ("seconds", samples.last().map_or(0.0, |s| s.seconds)),
        ("samples", samples.len() as f64),
        ("rss_first_third_max_mib", max_of(first, |s| s.rss_mib)),
        ("rss_last_third_max_mib", max_of(last, |s| s.rss_mib)),
        ("peak_rss_mib", peak),
        (
            "rocksdb_last_third_max_mib",
            max_of(last, |s| s.rocksdb_mib),
        ),
        ("lag_first_third_max", max_of(first, |s| s.lag)),
        ("lag_last_third_max", max_of(last, |s| s.lag)),
        (
            "retained_wal_first_third_max_mib",
            max_of(first, |s| s.retained_wal_mib),
        ),
        (
            "retained_wal_last_third_max_mib",
            max_of(last, |s| s.retained_wal_mib),
        ),
        (
            "retained_wal_trend_growth_mib",
            trend_growth(&samples, |s| s.retained_wal_mib),
        ),
    ];
    for (label, value) in figures {
        outcome.figures.insert(label, value);
    }
    let grew = |f: &dyn Fn(&SoakSample) -> f64, slack: f64| {
        max_of(last, f) > max_of(first, f) * 1.25 + slack
    };
    outcome.goal(
        "resident memory bounded: last third ≤ 1.25 × first third + 32 MiB",
        !grew(&|s| s.rss_mib, 32.0),
    );
    outcome.goal(
        "no growth in lag: last third ≤ 1.25 × first third + 1000 records",
        !grew(&|s| s.lag, 1000.0),
    );
    // The slot's restart position moves in steps (PostgreSQL logs the running
    // transactions every 15 s and at checkpoints), so single samples spike to a few
    // times the usual level and fall back: bounded means no upward trend.
    outcome.goal(
        "retained WAL bounded: its trend over the run (least squares) grows ≤ 16 MiB",
        trend_growth(&samples, |s| s.retained_wal_mib) <= 16.0,
    );
    outcome.goal(
        "the target rate sustained (≥ 95 %)",
        achieved >= options.rate * 0.95,
    );
    outcome.goal("the deployment exits on SIGTERM (within 60 s)", exited);
    Ok(outcome)
}

async fn replay(options: &BenchOptions) -> Result<Outcome, String> {
    let mut outcome = Outcome::new("replay");
    let name = run_name("replay");
    let url = fresh_db(&options.pg_admin_url, &name).await?;
    let config = generator_config(options.claims, 0, None);
    generate(&url, &config, Start::Fresh).await?;
    let started = Instant::now();
    let mut deployment = Deployment::start(options, &name, &url).await?;
    let result = async {
        let (scrape, moved) = deployment.wait_idle(Duration::from_secs(3600)).await?;
        let live_seconds = moved.duration_since(started).as_secs_f64();
        let live_events = scrape.sum("strata_events_in_total", Some(FIRST_PROCESSOR));
        let (events, seconds) = deployment.replay(options, None).await?;
        // Each stage alone, reading the live topic before it: its own capacity.
        let mut alone = Vec::new();
        for stage in PROCESSORS.iter().chain(SINKS.iter()) {
            let (n, secs) = deployment.replay(options, Some(stage)).await?;
            alone.push(Stage {
                component: stage,
                events: n,
                busy_seconds: secs,
                capacity_per_second: n / secs.max(1e-3),
            });
        }
        Ok::<_, String>((live_events, live_seconds, events, seconds, alone))
    }
    .await;
    deployment.stop(options).await;
    let (live_events, live_seconds, events, seconds, alone) = result?;
    let rate = events / seconds.max(1e-3);
    outcome.figures.insert("replayed_input_events", events);
    outcome.figures.insert("replay_input_events_per_s", rate);
    outcome.figures.insert(
        "live_input_events_per_s",
        live_events / live_seconds.max(1e-3),
    );
    outcome.goal("replay >= 200k events/s", rate >= 200_000.0);
    outcome.bottleneck = alone
        .iter()
        .filter(|s| s.events > 0.0)
        .min_by(|a, b| a.capacity_per_second.total_cmp(&b.capacity_per_second))
        .map(|s| {
            format!(
                "{} (alone: {:.0} events/s, replayed from the live topic before it)",
                s.component, s.capacity_per_second
            )
        });
    outcome.stages = alone;
    Ok(outcome)
}

async fn raw(options: &BenchOptions) -> Result<Outcome, String> {
    let mut outcome = Outcome::new("raw");
    let records: u64 = u64::from(options.stream_claims.max(10_000)) * 3;
    let (produced, consumed) = super::raw::producer_and_consumer(options, records, 330).await?;
    outcome.figures.insert("records", records as f64);
    outcome
        .figures
        .insert("raw_rdkafka_produce_per_s", produced);
    outcome
        .figures
        .insert("raw_rdkafka_consume_per_s", consumed);
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(wal: impl Fn(usize) -> f64) -> Vec<SoakSample> {
        (0..60)
            .map(|i| SoakSample {
                seconds: i as f64 * 10.0,
                rss_mib: 0.0,
                rocksdb_mib: 0.0,
                lag: 0.0,
                retained_wal_mib: wal(i),
            })
            .collect()
    }

    #[test]
    fn the_trend_ignores_spikes_and_sees_steady_growth() {
        // Level around 6 MiB with two late spikes to 40: no trend to speak of.
        let spiky = samples(|i| match i {
            41 | 42 => 40.0,
            _ => 4.0 + (i % 3) as f64 * 2.0,
        });
        assert!(trend_growth(&spiky, |s| s.retained_wal_mib).abs() < 16.0);
        // A slot that never advances: +0.5 MiB per sample, 29.5 MiB over the run.
        let stuck = samples(|i| i as f64 * 0.5);
        let growth = trend_growth(&stuck, |s| s.retained_wal_mib);
        assert!((growth - 29.5).abs() < 1e-9, "{growth}");
    }
}
