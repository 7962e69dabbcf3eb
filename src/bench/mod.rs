//! `strata bench`: named benchmark scenarios of the whole pipeline against the local
//! services, beside the raw limits measured on the same machine in the same run, written
//! as a JSON report and a short table.
//!
//! Every scenario works in a database and a region of its own (`strata_bench_<scenario>`),
//! so a run never touches the quickstart's or the tests' data. The report is written to a
//! temporary file and renamed into place only when every scenario finished: a failed or
//! interrupted run leaves no half-written report.

mod probe;
mod raw;
mod scenarios;

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

pub use probe::{recvlogical, Scrape};
pub use scenarios::{fresh_db, Scenario};

/// What a run measures and against which services.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub scenarios: Vec<Scenario>,
    /// Claims of the snapshot scenario, and of the backfill the others start from.
    pub claims: u32,
    /// Claims streamed by the `streaming` scenario (as fast as the generator can).
    pub stream_claims: u32,
    /// New claims per second in the `latency` scenario.
    pub rate: f64,
    /// How long the `latency` scenario streams.
    pub seconds: u64,
    pub report: PathBuf,
    /// The topology the scenarios run (its addresses come from the environment).
    pub topology: PathBuf,
    pub pg_admin_url: String,
    pub kafka_brokers: String,
    pub registry_url: String,
    /// Directory of PostgreSQL's client programs (`pg_recvlogical`).
    pub pg_bin: PathBuf,
    /// Fail when the streaming rate falls below this share of the raw producer's rate
    /// (CI's gross-regression check; needs the `streaming` and `raw` scenarios).
    pub fail_below: Option<f64>,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{service} is not reachable at {address}: {detail}; start the local services with `eval \"$(scripts/services.sh start)\"` or point {variable} at it")]
    ServiceDown {
        service: &'static str,
        address: String,
        variable: &'static str,
        detail: String,
    },
    #[error("{what} needs about {needed_mib} MiB, but only {available_mib} MiB are free on {place}; lower --claims / --stream-claims or free some space")]
    TooBig {
        what: String,
        needed_mib: u64,
        available_mib: u64,
        place: String,
    },
    #[error("scenario `{scenario}` failed: {message}")]
    Scenario { scenario: String, message: String },
    #[error("gross regression: streaming ran at {ratio:.3} of the raw producer's rate, below the floor of {floor}")]
    Regression { ratio: f64, floor: f64 },
    #[error("--fail-below needs both the `streaming` and the `raw` scenario in the run")]
    RegressionUnmeasured,
    #[error("cannot write the report {path}: {source}")]
    Report {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The JSON report: the machine, then one entry per scenario.
#[derive(Debug, Serialize)]
pub struct Report {
    pub machine: probe::Machine,
    pub started_at: String,
    pub options: ReportOptions,
    pub scenarios: Vec<scenarios::Outcome>,
}

#[derive(Debug, Serialize)]
pub struct ReportOptions {
    pub claims: u32,
    pub stream_claims: u32,
    pub rate: f64,
    pub seconds: u64,
    pub kafka_brokers: String,
}

/// Checks the services and the machine, runs the scenarios in order, prints the table and
/// writes the report.
pub async fn run(options: &BenchOptions) -> Result<Report, BenchError> {
    probe::check_services(options).await?;
    probe::check_capacity(options)?;
    let started_at = chrono::Utc::now().to_rfc3339();
    let mut outcomes = Vec::new();
    for scenario in &options.scenarios {
        eprintln!("[bench] {} …", scenario.name());
        let outcome = scenario
            .run(options)
            .await
            .map_err(|message| BenchError::Scenario {
                scenario: scenario.name().into(),
                message,
            })?;
        outcome.print();
        outcomes.push(outcome);
    }
    let report = Report {
        machine: probe::Machine::describe(),
        started_at,
        options: ReportOptions {
            claims: options.claims,
            stream_claims: options.stream_claims,
            rate: options.rate,
            seconds: options.seconds,
            kafka_brokers: options.kafka_brokers.clone(),
        },
        scenarios: outcomes,
    };
    write_report(&options.report, &report)?;
    if let Some(floor) = options.fail_below {
        let figure = |scenario: &str, name: &str| {
            report
                .scenarios
                .iter()
                .find(|o| o.scenario == scenario)
                .and_then(|o| o.figures.get(name).copied())
        };
        let (Some(streaming), Some(raw)) = (
            figure("streaming", "end_to_end_changes_per_s"),
            figure("raw", "raw_rdkafka_produce_per_s"),
        ) else {
            return Err(BenchError::RegressionUnmeasured);
        };
        let ratio = streaming / raw;
        println!("\nstreaming / raw producer: {ratio:.3} (floor {floor})");
        if ratio < floor {
            return Err(BenchError::Regression { ratio, floor });
        }
    }
    Ok(report)
}

fn write_report(path: &std::path::Path, report: &Report) -> Result<(), BenchError> {
    let error = |source| BenchError::Report {
        path: path.display().to_string(),
        source,
    };
    let text = serde_json::to_string_pretty(report).map_err(|e| error(e.into()))?;
    let partial = path.with_extension("json.partial");
    std::fs::write(&partial, text).map_err(error)?;
    std::fs::rename(&partial, path).map_err(error)
}

/// Polls `check` every 200 ms until it yields, or fails after `deadline` with `what`.
async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, String>>,
{
    let until = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        if tokio::time::Instant::now() > until {
            return Err(format!("{what}: not within {} s", deadline.as_secs()));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
