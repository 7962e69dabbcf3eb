//! `strata`: run, check and inspect Strata pipelines.

/// Decoded events are trees of small allocations, which mimalloc serves faster than the
/// system allocator; benchmarks use the allocator the binary uses.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod run;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use strata::{bench, components, registry, replay};
use strata_pipeline::ops::logging::{self, LogFormat};
use strata_pipeline::topology;

#[derive(Parser)]
#[command(
    name = "strata",
    version,
    about = "CDC and stream processing for claims data"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "STRATA_LOG_FORMAT"
    )]
    log_format: LogFormatArg,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormatArg {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum GraphFormat {
    Mermaid,
    Dot,
}

#[derive(Subcommand)]
enum Command {
    /// Check topology files; prints every problem with its place in the file.
    Validate {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print a topology as a Mermaid flowchart (default) or Graphviz DOT.
    Graph {
        file: PathBuf,
        #[arg(long, value_enum, default_value = "mermaid")]
        format: GraphFormat,
        /// Shorthand for `--format dot`.
        #[arg(long)]
        dot: bool,
    },
    /// Run a topology until SIGTERM or Ctrl-C.
    Run {
        file: PathBuf,
        /// Address of /metrics, /health and /ready (overrides the topology's `observability.listen`).
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Reprocess history: re-read a topology's inputs over a window into fresh state, and
    /// write the results to replay tables (or the live stores) while the live deployment
    /// keeps running. Ends when the window is processed.
    Replay(ReplayArgs),
    /// List the component kinds topology files can use.
    Kinds,
    /// Write a synthetic claims workload into the source database.
    Generate(GenerateArgs),
    /// Work with a cold archive.
    #[command(subcommand)]
    Archive(ArchiveCommand),
    /// Sensitive values the tiering processor protects for the cloud tiers.
    #[command(subcommand)]
    Pii(PiiCommand),
    /// Run benchmark scenarios against the local services: a table on stdout and a JSON
    /// report (written only when every scenario finished).
    Bench(BenchArgs),
    /// Serve a Confluent-compatible schema registry.
    Registry {
        #[arg(long, default_value = "127.0.0.1:8081", env = "STRATA_REGISTRY_LISTEN")]
        listen: SocketAddr,
        /// Directory holding the registry's durable log.
        #[arg(
            long,
            default_value = "./.strata/registry",
            env = "STRATA_REGISTRY_DIR"
        )]
        data_dir: PathBuf,
        /// With `--write-password`: the one user allowed to register schemas, delete
        /// and change settings (HTTP basic auth); reads stay open.
        #[arg(long, env = "STRATA_REGISTRY_WRITE_USER", requires = "write_password")]
        write_user: Option<String>,
        #[arg(
            long,
            env = "STRATA_REGISTRY_WRITE_PASSWORD",
            hide_env_values = true,
            requires = "write_user"
        )]
        write_password: Option<String>,
    },
}

#[derive(Subcommand)]
enum ArchiveCommand {
    /// Recompute every manifest's hash chain and every file's SHA-256; report the first
    /// broken entry (exit 1) or the totals (exit 0). PATH is a directory or
    /// s3://bucket/prefix (settings from the AWS_* environment variables).
    Verify { path: String },
}

#[derive(Subcommand)]
enum PiiCommand {
    /// Decrypt `enc:<key id>:…` values with the keys (active and retired) that the
    /// topology's tiering processors name; run it on premise, where the keys are.
    Decrypt {
        file: PathBuf,
        #[arg(required = true)]
        values: Vec<String>,
    },
}

#[derive(clap::Args)]
struct BenchArgs {
    /// Scenarios to run, in order (all but `soak` when none is named).
    #[arg(value_enum)]
    scenarios: Vec<bench::Scenario>,
    /// Claims of the snapshot scenario; the others start from a tenth of it.
    #[arg(long, default_value_t = 100_000)]
    claims: u32,
    /// New claims the streaming scenario commits as fast as it can.
    #[arg(long, default_value_t = 100_000)]
    stream_claims: u32,
    /// New claims per second in the latency and soak scenarios.
    #[arg(long, default_value_t = 5_000.0)]
    rate: f64,
    /// Seconds the latency and soak scenarios stream.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Where the JSON report goes.
    #[arg(long, default_value = "bench-report.json")]
    report: PathBuf,
    /// The topology each scenario runs (addresses from the environment, as in the quickstart).
    #[arg(long, default_value = "topologies/quickstart.yaml")]
    topology: PathBuf,
    #[arg(
        long,
        env = "STRATA_PG_ADMIN_URL",
        default_value = "postgres://postgres@127.0.0.1:15432/postgres"
    )]
    pg_admin_url: String,
    #[arg(long, env = "STRATA_KAFKA_BROKERS", default_value = "127.0.0.1:19092")]
    kafka_brokers: String,
    #[arg(
        long,
        env = "STRATA_SCHEMA_REGISTRY_URL",
        default_value = "http://127.0.0.1:18081"
    )]
    registry_url: String,
    /// Directory of PostgreSQL's client programs (pg_recvlogical).
    #[arg(long, env = "PG_BIN", default_value = "/usr/lib/postgresql/15/bin")]
    pg_bin: PathBuf,
    /// Exit 1 when streaming runs below this share of the raw producer's rate (a gross
    /// regression); needs the `streaming` and `raw` scenarios.
    #[arg(long)]
    fail_below: Option<f64>,
}

#[derive(clap::Args)]
struct ReplayArgs {
    file: PathBuf,
    /// Names the replay's topics (`<region>.replay-<name>.*`), groups, state and tables.
    #[arg(long)]
    name: String,
    /// Start at this processor (or sink): earlier stages are not run and their live output
    /// topics are read instead, in the order they hold (default: every stage, from the
    /// sources).
    #[arg(long)]
    stage: Option<String>,
    /// Run only the --stage component, not the ones after it (one stage in isolation).
    #[arg(long, requires = "stage")]
    only: bool,
    /// Where to start: an RFC 3339 time (record time), or `topic:partition:offset` for
    /// each partition to start elsewhere than its earliest record.
    #[arg(long, required = true, num_args = 1..)]
    from: Vec<String>,
    /// Where to stop (inclusive time, or exclusive offsets); default: the end of each
    /// input when the replay starts.
    #[arg(long, num_args = 1..)]
    to: Vec<String>,
    /// Where results go: replay tables beside the live ones, or the live stores.
    #[arg(long, value_enum, default_value = "tables")]
    into: replay::Destination,
    /// State directory of the replay (new or empty); default: the live one + `-replay-<name>`.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Address of the replay's /metrics, /health and /ready (default: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
}

async fn run_replay(topology: topology::Topology, args: ReplayArgs) -> Result<(), String> {
    let request = replay::ReplayRequest {
        name: args.name,
        stage: args.stage,
        only: args.only,
        from: args.from,
        to: args.to,
        into: args.into,
        state_dir: args.state_dir,
        listen: args.listen,
    };
    let summary = replay::replay(topology, request)
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "replayed {} input events in {:.1} s; processing {:.2} s at {:.0} events/s; its topics are {}.*",
        summary.events,
        summary.seconds,
        summary.processing_seconds,
        summary.events as f64 / summary.processing_seconds.max(1e-3),
        summary.topics_prefix
    );
    Ok(())
}

#[derive(clap::Args)]
struct GenerateArgs {
    /// Source database (the claims tables are created when missing).
    #[arg(
        long,
        env = "STRATA_PG_URL",
        default_value = "postgres://postgres@127.0.0.1:15432/claims"
    )]
    url: String,
    #[arg(long, default_value_t = 2_000)]
    members: u32,
    #[arg(long, default_value_t = 200)]
    providers: u32,
    /// Claims of the bulk backfill, spread over `--years`.
    #[arg(long, default_value_t = 20_000)]
    claims: u32,
    /// Claims arriving after the backfill, with their lifecycle (updates, corrections, voids).
    #[arg(long, default_value_t = 0)]
    stream_claims: u32,
    /// New claims per second while streaming; as fast as possible when left out.
    #[arg(long)]
    rate: Option<f64>,
    /// Share of planted anomalies, 0 to 1.
    #[arg(long, default_value_t = 0.05)]
    anomaly_share: f64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[arg(long, default_value_t = 3)]
    years: u32,
    /// The generator's "today" (YYYY-MM-DD); fix it to reproduce data exactly.
    #[arg(long)]
    today: Option<chrono::NaiveDate>,
    /// Empty the claims tables first.
    #[arg(long, conflicts_with = "resume")]
    reset: bool,
    /// Skip the backfill already written with the same options, and stream.
    #[arg(long)]
    resume: bool,
}

async fn generate(args: GenerateArgs) -> Result<(), String> {
    use strata_connectors::generator::{self, GeneratorConfig};
    let config = GeneratorConfig {
        members: args.members,
        providers: args.providers,
        claims: args.claims,
        stream_claims: args.stream_claims,
        rate: args.rate,
        anomaly_share: args.anomaly_share,
        seed: args.seed,
        years: args.years,
        today: args
            .today
            .unwrap_or_else(|| chrono::Utc::now().date_naive()),
    };
    config.check().map_err(|e| e.to_string())?;
    let connection = strata_connectors::pg_connection::PgConnection {
        url: args.url,
        password: std::env::var("PGPASSWORD")
            .ok()
            .map(strata_pipeline::secret::Secret::new),
        ssl_mode: "prefer".into(),
        ssl_root_cert: None,
    };
    let options = connection.options().map_err(|e| e.to_string())?;
    let mut conn = generator::connect(&options)
        .await
        .map_err(|e| e.to_string())?;
    let report = generator::generate(
        &mut conn,
        &config,
        match (args.reset, args.resume) {
            (true, _) => generator::Start::Reset,
            (_, true) => generator::Start::Resume,
            _ => generator::Start::Fresh,
        },
    )
    .await
    .map_err(|e| e.to_string())?;
    println!(
        "wrote {} members, {} providers, {} policies, {} claims ({} lines, {} anomaly labels)",
        report.members,
        report.providers,
        report.policies,
        report.claims,
        report.lines,
        report.labels
    );
    println!(
        "bulk load: {} rows in {:.2}s = {:.0} rows/s",
        report.bulk_rows,
        report.bulk_seconds,
        report.bulk_rows_per_second()
    );
    if config.stream_claims > 0 {
        println!(
            "stream: {} updates, {} deletes in {:.2}s",
            report.updates, report.deletes, report.stream_seconds
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(match cli.log_format {
        LogFormatArg::Text => LogFormat::Text,
        LogFormatArg::Json => LogFormat::Json,
    });
    let catalog = components::catalog();
    match cli.command {
        Command::Validate { files } => {
            let mut ok = true;
            for file in files {
                match topology::load_file(&file, &catalog) {
                    Ok(t) => println!(
                        "{}: ok (region {}, {} components)",
                        file.display(),
                        t.region,
                        t.components.len()
                    ),
                    Err(diagnostics) => {
                        ok = false;
                        eprint!("{diagnostics}");
                    }
                }
            }
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Graph { file, format, dot } => match topology::load_file(&file, &catalog) {
            Ok(t) => {
                match (format, dot) {
                    (_, true) | (GraphFormat::Dot, _) => print!("{}", topology::graph::dot(&t)),
                    (GraphFormat::Mermaid, false) => print!("{}", topology::graph::mermaid(&t)),
                }
                ExitCode::SUCCESS
            }
            Err(diagnostics) => {
                eprint!("{diagnostics}");
                ExitCode::FAILURE
            }
        },
        Command::Kinds => {
            for kind in catalog.kinds() {
                println!(
                    "{:<10} {:<20} {}",
                    kind.role().section(),
                    kind.name(),
                    kind.summary()
                );
            }
            ExitCode::SUCCESS
        }
        Command::Run { file, listen } => {
            let topology = match topology::load_file(&file, &catalog) {
                Ok(t) => t,
                Err(diagnostics) => {
                    eprint!("{diagnostics}");
                    return ExitCode::FAILURE;
                }
            };
            block_on(run::run(topology, listen))
        }
        Command::Replay(args) => match topology::load_file(&args.file, &catalog) {
            Ok(t) => block_on(run_replay(t, args)),
            Err(diagnostics) => {
                eprint!("{diagnostics}");
                ExitCode::FAILURE
            }
        },
        Command::Generate(args) => block_on(generate(args)),
        Command::Bench(args) => block_on(run_bench(args)),
        Command::Registry {
            listen,
            data_dir,
            write_user,
            write_password,
        } => {
            let auth =
                write_user
                    .zip(write_password)
                    .map(|(user, password)| registry::auth::WriteAuth {
                        user,
                        password: strata_pipeline::secret::Secret::new(password),
                    });
            block_on(registry::serve(listen, data_dir, auth))
        }
        Command::Archive(ArchiveCommand::Verify { path }) => block_on(verify_archive(path)),
        Command::Pii(PiiCommand::Decrypt { file, values }) => {
            match topology::load_file(&file, &catalog) {
                Ok(t) => block_on(async move { decrypt_pii(&t, &values) }),
                Err(diagnostics) => {
                    eprint!("{diagnostics}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Prints the clear text of each value, with the keys of the topology's tiering
/// processors.
fn decrypt_pii(topology: &topology::Topology, values: &[String]) -> Result<(), String> {
    use strata_pipeline::processors::tiering::{pii::Keyring, TieringConfig};
    let mut keyrings = Vec::new();
    for c in topology.components.iter().filter(|c| c.kind == "tiering") {
        let config: TieringConfig = topology::parse_settings(&c.settings)
            .map_err(|e| format!("component `{}`: {}: {}", c.name, e.path, e.message))?;
        keyrings.push(
            Keyring::from_policy(&config.pii)
                .map_err(|e| format!("component `{}`: {e}", c.name))?,
        );
    }
    if keyrings.is_empty() {
        return Err("the topology has no tiering processor, so no pii keys".into());
    }
    for (i, value) in values.iter().enumerate() {
        let mut last = None;
        let clear = keyrings.iter().find_map(|k| match k.decrypt(value) {
            Ok(text) => Some(text),
            Err(e) => {
                last = Some(e);
                None
            }
        });
        match clear {
            Some(text) => println!("{text}"),
            None => {
                let why = last.map(|e| e.to_string()).unwrap_or_default();
                return Err(format!("value {} does not decrypt: {why}", i + 1));
            }
        }
    }
    Ok(())
}

/// Verifies the archive at `location`; a broken chain is an error naming the entry.
async fn verify_archive(location: String) -> Result<(), String> {
    use strata_connectors::sinks::cold::archive::Archive;
    let archive = Archive::open(&location, &Default::default()).map_err(|e| e.to_string())?;
    let report = archive.verify().await.map_err(|e| e.to_string())?;
    match report.broken {
        Some((partition, seq, problem)) => Err(format!(
            "broken: manifest of partition {partition}, entry {seq}: {problem} ({} files and {} records before it verified)",
            report.files, report.records
        )),
        None => {
            println!(
                "ok: {} manifests, {} files, {} records; every hash chain and file checks out",
                report.manifests, report.files, report.records
            );
            Ok(())
        }
    }
}

async fn run_bench(args: BenchArgs) -> Result<(), String> {
    if !args.topology.is_file() {
        return Err(format!(
            "no topology file at {}; run from the repository root or pass --topology",
            args.topology.display()
        ));
    }
    if !(args.rate.is_finite() && args.rate > 0.0) || args.seconds == 0 || args.claims == 0 {
        return Err("--rate, --seconds and --claims must be positive".into());
    }
    let options = bench::BenchOptions {
        scenarios: if args.scenarios.is_empty() {
            // A soak runs for minutes: only when named.
            <bench::Scenario as clap::ValueEnum>::value_variants()
                .iter()
                .copied()
                .filter(|s| *s != bench::Scenario::Soak)
                .collect()
        } else {
            args.scenarios
        },
        claims: args.claims,
        stream_claims: args.stream_claims.max(1),
        rate: args.rate,
        seconds: args.seconds,
        report: args.report,
        topology: args.topology,
        pg_admin_url: args.pg_admin_url,
        kafka_brokers: args.kafka_brokers,
        registry_url: args.registry_url,
        pg_bin: args.pg_bin,
        fail_below: args.fail_below,
    };
    bench::run(&options).await.map_err(|e| e.to_string())?;
    println!("\nreport: {}", options.report.display());
    Ok(())
}

fn block_on<E: std::fmt::Display>(f: impl std::future::Future<Output = Result<(), E>>) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(f) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
