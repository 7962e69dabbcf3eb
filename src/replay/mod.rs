//! `strata replay`: re-reads a topology's inputs over a window of history into fresh
//! state and writes the results to the live stores or to a named set of replay tables,
//! while the live deployment keeps running.
//!
//! Isolation from the live deployment (checked before anything is written):
//! - topics, consumer groups and changelogs are named under `<region>.replay-<name>`
//!   ([`strata_pipeline::topology::Topology::scope`]); a name already used is refused;
//! - the state directory is new and empty, never the live one or inside it;
//! - sources do not run: the replay reads what they already wrote to Kafka;
//! - with `--into tables`, every sink writes to its own replay tables
//!   (`<schema>_replay_<name>`, archives under `<path>/replay-<name>`).
//!
//! Because processors are deterministic and sinks idempotent, a replay over the same
//! events with the same settings gives the live results again.

pub mod plan;
pub mod progress;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use strata_pipeline::avro::Codec;
use strata_pipeline::ops::metrics::Metrics;
use strata_pipeline::ops::shutdown::{cancel_on_signal, CancellationToken};
use strata_pipeline::runtime::{self, Starter};
use strata_pipeline::state::StateMemory;
use strata_pipeline::topology::{ReplayScope, Role, Topology};

use crate::components::{self, Components};
use plan::{Broker, Point};
use progress::Progress;

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("replay name `{0}` is not lower-case letters, digits and `_` (at most 30); it names topics and tables")]
    BadName(String),
    #[error("{flag} `{text}`: {why}")]
    BadPoint {
        flag: String,
        text: String,
        why: String,
    },
    #[error("{flag} names {topic}/{partition} twice; give each partition one offset")]
    Overlapping {
        flag: String,
        topic: String,
        partition: i32,
    },
    #[error("`{topic}` is not an input of this topology; its inputs are {inputs:?}")]
    UnknownTopic { topic: String, inputs: Vec<String> },
    #[error("{topic} has no partition {partition} (it has {partitions})")]
    UnknownPartition {
        topic: String,
        partition: i32,
        partitions: i32,
    },
    #[error("{flag} offset {offset} of {topic}/{partition} is outside the records the broker holds ({low}..{high}); use an offset in that range")]
    OffsetOutOfRange {
        flag: String,
        topic: String,
        partition: i32,
        offset: i64,
        low: i64,
        high: i64,
    },
    #[error("on {topic}/{partition} the replay would end at offset {end}, before it starts at {start}; check --from and --to")]
    EndBeforeStart {
        topic: String,
        partition: i32,
        start: i64,
        end: i64,
    },
    #[error("{topic}/{partition} no longer holds records from {} (retention removed the first {low}; the oldest left is from {}); replay from a later time, or re-snapshot the source", ms_text(*from_ms), ms_text(*earliest_ms))]
    BeforeRetention {
        topic: String,
        partition: i32,
        from_ms: i64,
        earliest_ms: i64,
        low: i64,
    },
    #[error("input topic `{topic}` does not exist; has the live deployment run yet?")]
    MissingInput { topic: String },
    #[error("no record at or after offset {offset} of {topic}/{partition} within 10 s")]
    NoRecord {
        topic: String,
        partition: i32,
        offset: i64,
    },
    #[error("a replay named `{name}` already exists (topic {topic}); choose another --name")]
    NameTaken { name: String, topic: String },
    #[error("state directory {dir} is the live deployment's ({live}) or inside it; a replay needs its own (--state-dir)")]
    StateDirIsLive { dir: PathBuf, live: PathBuf },
    #[error("state directory {0} is already in use (not empty); give a new one with --state-dir")]
    StateDirInUse(PathBuf),
    #[error(
        "--stage `{stage}` is not a processor or sink of this topology; those are {processors:?}"
    )]
    UnknownStage {
        stage: String,
        processors: Vec<String>,
    },
    #[error("cannot use --into tables: {0}")]
    Redirect(String),
    #[error("Kafka failed while {what}: {source}; is the broker running?")]
    Kafka {
        what: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("the replay stopped: {0}")]
    Run(String),
}

fn ms_text(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339())
        .unwrap_or_else(|| format!("{ms} ms"))
}

/// Where a replay writes its results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Destination {
    /// The live stores (position-guarded upserts: same events, same rows).
    Live,
    /// Replay tables named after the replay, beside the live ones.
    Tables,
}

pub struct ReplayRequest {
    pub name: String,
    /// The processor (or sink) to start at: stages before it are not run, and their live
    /// output topics are read instead (default: every stage, from the sources' topics).
    pub stage: Option<String>,
    /// Run only `stage`, not the stages after it (to measure one stage alone).
    pub only: bool,
    pub from: Vec<String>,
    pub to: Vec<String>,
    pub into: Destination,
    pub state_dir: Option<PathBuf>,
    pub listen: SocketAddr,
}

/// What a finished replay did.
pub struct Summary {
    pub events: i64,
    /// From start to finish, planning and start-up included.
    pub seconds: f64,
    /// From the first events done to the last (the rate's denominator).
    pub processing_seconds: f64,
    pub topics_prefix: String,
}

/// Checks the request against the live topology and the broker, then runs the replay to
/// the end of its window.
pub async fn replay(live: Topology, request: ReplayRequest) -> Result<Summary, ReplayError> {
    let name = &request.name;
    if name.is_empty()
        || name.len() > 30
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Err(ReplayError::BadName(name.clone()));
    }
    let from = Point::parse(&request.from, "--from")?;
    let to = match request.to.is_empty() {
        true => None,
        false => Some(Point::parse(&request.to, "--to")?),
    };
    let state_dir = request.state_dir.clone().unwrap_or_else(|| {
        let mut dir = live.state.dir.clone().into_os_string();
        dir.push(format!("-replay-{name}"));
        PathBuf::from(dir)
    });
    check_state_dir(&state_dir, &live.state.dir)?;

    let codec =
        Arc::new(Codec::new(&live.schema_registry).map_err(|e| ReplayError::Run(e.to_string()))?);
    let starter = Components {
        codec,
        state_memory: StateMemory::from_settings(&live.state),
    };
    let mut topology = live.clone();
    topology.state.dir = state_dir;
    if request.into == Destination::Tables {
        for c in topology
            .components
            .iter_mut()
            .filter(|c| c.role == Role::Sink)
        {
            components::redirect_to_replay_tables(c, name).map_err(ReplayError::Redirect)?;
        }
    }
    topology.replay = Some(ReplayScope {
        name: name.clone(),
        window: Arc::default(),
        skipped: skipped_components(&topology, request.stage.as_deref(), request.only)?,
    });
    let external = external_inputs(&topology, &starter);
    let kafka_config = strata_pipeline::kafka::consumer_config(&live.kafka);
    let broker = Broker::connect(&kafka_config)?;
    let window = {
        let (broker, external) = (&broker, external.clone());
        tokio::task::block_in_place(|| plan::window(broker, &external, &from, to.as_ref()))?
    };
    let window = Arc::new(window);
    if let Some(scope) = topology.replay.as_mut() {
        scope.window = window.clone();
    }
    let dead_letter = topology.dead_letter_topic();
    if tokio::task::block_in_place(|| broker.partitions(&dead_letter))?.is_some() {
        return Err(ReplayError::NameTaken {
            name: name.clone(),
            topic: dead_letter,
        });
    }

    let groups: Vec<(String, Vec<String>)> = topology
        .components
        .iter()
        .filter(|c| topology.runs(&c.name))
        .map(|c| {
            (
                runtime::group_id(&topology, c),
                runtime::input_topics(&topology, c, &starter),
            )
        })
        .collect();
    let progress = Progress::new(
        &kafka_config,
        groups,
        window.clone(),
        topology.topics.partitions,
    )?;
    tokio::task::block_in_place(|| progress.seek_groups_to_window());
    let total: i64 = window.partitions.values().map(|b| b.len()).sum();
    eprintln!(
        "replay {name}: {total} input events over {} partitions of {} topics → topics {}.*, results into {}",
        window.partitions.len(),
        external.len(),
        topology.scope(),
        match request.into {
            Destination::Live => "the live stores".to_string(),
            Destination::Tables => format!("replay tables (*_replay_{name})"),
        }
    );

    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    let metrics = Metrics::new();
    let started = Instant::now();
    let scope = topology.scope();
    let monitor = watch(progress, metrics.clone(), name.clone(), shutdown.clone());
    let run = runtime::run(
        topology,
        request.listen,
        &starter,
        metrics,
        shutdown.clone(),
    );
    let (run, finished) = tokio::join!(run, monitor);
    run.map_err(|e| ReplayError::Run(e.to_string()))?;
    let (reading, processing) = finished?;
    if !reading.finished() {
        return Err(ReplayError::Run(format!(
            "interrupted after {} of {} input events; run a new replay (another --name) to start over",
            reading.done, reading.total
        )));
    }
    Ok(Summary {
        events: reading.total,
        seconds: started.elapsed().as_secs_f64(),
        processing_seconds: processing.as_secs_f64(),
        topics_prefix: scope,
    })
}

/// How often progress is read.
const READ_EVERY: Duration = Duration::from_millis(500);

/// Reads progress twice a second, prints it every few, exports it as metrics, and cancels
/// `shutdown` once the replay is finished. Returns the last reading and the time from
/// the last reading with nothing done to the first with everything done.
async fn watch(
    progress: Progress,
    metrics: Metrics,
    name: String,
    shutdown: CancellationToken,
) -> Result<(progress::Reading, Duration), ReplayError> {
    let done_gauge = metrics.replay_events.with_label_values(&[&name, "done"]);
    let left_gauge = metrics
        .replay_events
        .with_label_values(&[&name, "remaining"]);
    let started = Instant::now();
    let mut last_print = Instant::now();
    let mut previous: Option<progress::Reading> = None;
    let (mut idle_until, mut done_at) = (Instant::now(), None);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(READ_EVERY) => {}
            _ = shutdown.cancelled() => {
                return Ok((previous.unwrap_or_default(), idle_until.elapsed()));
            }
        }
        let reading = match tokio::task::block_in_place(|| progress.read()) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the replay's progress; trying again");
                continue;
            }
        };
        if reading.done == 0 {
            idle_until = Instant::now();
        }
        if reading.finished() {
            done_at.get_or_insert_with(Instant::now);
        } else {
            done_at = None;
        }
        done_gauge.set(reading.done);
        left_gauge.set(reading.total - reading.done + reading.in_flight);
        if last_print.elapsed() >= Duration::from_secs(2) || reading.finished() {
            let rate = reading.done as f64 / started.elapsed().as_secs_f64().max(1e-3);
            eprintln!(
                "replay {name}: {} of {} input events ({:.1}%), {} in flight between stages, {:.0} events/s",
                reading.done,
                reading.total,
                100.0 * reading.done as f64 / reading.total.max(1) as f64,
                reading.in_flight,
                rate
            );
            last_print = Instant::now();
        }
        let settled = reading.finished()
            && previous
                .as_ref()
                .is_some_and(|p| p.finished() && p.intermediate_ends == reading.intermediate_ends);
        if settled {
            shutdown.cancel();
            let finished = done_at.unwrap_or_else(Instant::now);
            return Ok((reading, finished.saturating_duration_since(idle_until)));
        }
        previous = Some(reading);
    }
}

/// The components a replay starting at `stage` does not run: the sources, and with a
/// stage, every component that is not the stage or (unless `only`) downstream of it.
fn skipped_components(
    topology: &Topology,
    stage: Option<&str>,
    only: bool,
) -> Result<std::collections::BTreeSet<String>, ReplayError> {
    use strata_pipeline::topology::Input;
    let mut runs: std::collections::BTreeSet<String> = match stage {
        None => topology
            .components
            .iter()
            .filter(|c| c.role != Role::Source)
            .map(|c| c.name.clone())
            .collect(),
        Some(stage) => {
            if topology
                .component(stage)
                .is_none_or(|c| c.role == Role::Source)
            {
                return Err(ReplayError::UnknownStage {
                    stage: stage.into(),
                    processors: topology
                        .components
                        .iter()
                        .filter(|c| c.role != Role::Source)
                        .map(|c| c.name.clone())
                        .collect(),
                });
            }
            [stage.to_string()].into()
        }
    };
    loop {
        if only {
            break;
        }
        let downstream: Vec<String> = topology
            .components
            .iter()
            .filter(|c| !runs.contains(&c.name))
            .filter(|c| {
                c.inputs
                    .iter()
                    .any(|i| matches!(i, Input::Component { name, .. } if runs.contains(name)))
            })
            .map(|c| c.name.clone())
            .collect();
        if downstream.is_empty() {
            break;
        }
        runs.extend(downstream);
    }
    Ok(topology
        .components
        .iter()
        .filter(|c| !runs.contains(&c.name))
        .map(|c| c.name.clone())
        .collect())
}

/// Topics the replay reads but does not write: its sources' topics, `topic:` inputs and
/// the live outputs of stages it skips.
fn external_inputs(topology: &Topology, starter: &dyn Starter) -> Vec<String> {
    let owned: std::collections::HashSet<String> = runtime::output_topics(topology)
        .into_iter()
        .map(|t| t.name)
        .collect();
    let mut topics: Vec<String> = topology
        .components
        .iter()
        .filter(|c| topology.runs(&c.name))
        .flat_map(|c| runtime::input_topics(topology, c, starter))
        .filter(|t| !owned.contains(t))
        .collect();
    topics.sort();
    topics.dedup();
    topics
}

/// A replay's state directory must be new (or empty) and apart from the live one.
fn check_state_dir(dir: &Path, live: &Path) -> Result<(), ReplayError> {
    let absolute = |p: &Path| {
        std::path::absolute(p)
            .map(|a| a.components().collect::<PathBuf>())
            .unwrap_or_else(|_| p.to_path_buf())
    };
    let (abs_dir, abs_live) = (absolute(dir), absolute(live));
    if abs_dir.starts_with(&abs_live) || abs_live.starts_with(&abs_dir) {
        return Err(ReplayError::StateDirIsLive {
            dir: dir.to_path_buf(),
            live: live.to_path_buf(),
        });
    }
    if std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some()) {
        return Err(ReplayError::StateDirInUse(dir.to_path_buf()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_dir_must_be_apart_from_the_live_one_and_unused() {
        let tmp = tempfile::tempdir().unwrap();
        let live = tmp.path().join("state/us-east");
        std::fs::create_dir_all(live.join("conflicts")).unwrap();
        for bad in [live.clone(), live.join("replay"), tmp.path().join("state")] {
            assert!(
                matches!(
                    check_state_dir(&bad, &live),
                    Err(ReplayError::StateDirIsLive { .. })
                ),
                "{bad:?}"
            );
        }
        let used = tmp.path().join("used");
        std::fs::create_dir_all(used.join("x")).unwrap();
        assert!(matches!(
            check_state_dir(&used, &live),
            Err(ReplayError::StateDirInUse(_))
        ));
        assert!(check_state_dir(&tmp.path().join("fresh"), &live).is_ok());
        std::fs::create_dir_all(tmp.path().join("empty")).unwrap();
        assert!(check_state_dir(&tmp.path().join("empty"), &live).is_ok());
    }
}
