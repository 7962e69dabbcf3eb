//! `strata`: run, check and inspect Strata pipelines.

mod run;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use strata::{components, registry};
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
    /// List the component kinds topology files can use.
    Kinds,
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
    },
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
        Command::Registry { listen, data_dir } => block_on(registry::serve(listen, data_dir)),
    }
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
