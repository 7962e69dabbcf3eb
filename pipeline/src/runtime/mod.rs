//! Runs a checked topology: the ops endpoints, the topics it needs and its components,
//! until shutdown is requested; then drains and returns.
//!
//! Processors run on [`stream::run_processor`]; their contract is in [`processor`].

mod changelog;
mod dead_letter;
pub mod harness;
mod overlay;
pub mod processor;
pub mod sink;
pub mod source;
pub mod stream;
mod timers;
pub mod window;

pub use processor::{
    Context, Event, Output, OutputSchema, ProcessError, Processor, Rejection, Timer,
};
pub use sink::{run_sink, Rejected, Sink, SinkError, SinkRecord, SinkSpec};
pub use source::{Source, SourceFailure};
pub use stream::{run_processor, ProcessorEnv, ProcessorSpec};
pub use window::{InputWindow, PartitionBounds};

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::avro::CodecError;
use crate::kafka::{self, KafkaError, TopicSpec};
use crate::ops::backoff::Backoff;
use crate::ops::http::{self, HttpError, OpsState};
use crate::ops::metrics::Metrics;
use crate::ops::shutdown::CancellationToken;
use crate::state::StateError;
use crate::topology::{Component, Input, Role, Topology};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error("component `{component}` failed: {message}")]
    Component { component: String, message: String },
    #[error("Kafka failed while {what}: {source}")]
    KafkaIo {
        what: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("a blocking task failed: {0}")]
    Join(String),
    #[error("restoring {topic} partition {partition} stalled at offset {at} of {end}; is the broker up?")]
    RestoreStalled {
        topic: String,
        partition: i32,
        at: i64,
        end: i64,
    },
    #[error("component `{component}` stalled: {stall}")]
    Stalled {
        component: String,
        stall: crate::kafka::liveness::Stall,
    },
    #[error("components still busy {0:?} after SIGTERM; stopped without waiting longer (raise `shutdown.drain_timeout`); the next start redoes their unfinished batches")]
    DrainTimeout(std::time::Duration),
    #[error("processor `{component}` wrote to port `{port}`, which it does not declare")]
    UnknownPort { component: String, port: String },
}

impl RunError {
    pub(crate) fn join(e: tokio::task::JoinError) -> Self {
        RunError::Join(e.to_string())
    }

    /// Whether running the component again may succeed without anyone changing
    /// anything: the broker or the registry was away (a restart, a network cut).
    pub fn is_transient(&self) -> bool {
        use rdkafka::error::KafkaError as Rd;
        match self {
            RunError::Kafka(e) => e.is_transient(),
            RunError::KafkaIo { source, .. } => {
                !matches!(source, Rd::ClientConfig(..) | Rd::ClientCreation(_))
            }
            RunError::Codec(e) => e.is_transient(),
            RunError::RestoreStalled { .. } | RunError::Stalled { .. } => true,
            _ => false,
        }
    }
}

/// Why a component stopped, and whether the runtime should start it again.
#[derive(Debug, Clone)]
pub struct ComponentError {
    pub message: String,
    pub transient: bool,
}

impl ComponentError {
    /// A failure that needs a person: the run stops with it.
    pub fn definite(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            transient: false,
        }
    }
}

impl From<RunError> for ComponentError {
    fn from(e: RunError) -> Self {
        Self {
            transient: e.is_transient(),
            message: e.to_string(),
        }
    }
}

/// Runs blocking work (RocksDB, librdkafka metadata calls) without stalling the async
/// workers: in place on a multi-threaded runtime, directly on a current-thread one.
pub(crate) fn off_async<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::current().runtime_flavor() {
        tokio::runtime::RuntimeFlavor::CurrentThread => f(),
        _ => tokio::task::block_in_place(f),
    }
}

/// Errors of the processor runtime are run errors: the component stops with them.
pub type RuntimeError = RunError;

/// A running component: finishes when `shutdown` is cancelled (after draining) or fails.
/// A transient failure starts it again (from its last commit) after a backoff.
pub type ComponentTask =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), ComponentError>> + Send>>;

/// Starts the components this build can run; the rest are only checked.
pub trait Starter {
    /// The task of `component`, or `None` when this build cannot run its kind yet.
    fn start(
        &self,
        topology: &Topology,
        component: &Component,
        metrics: &Metrics,
        shutdown: CancellationToken,
    ) -> Option<ComponentTask>;

    /// The topics source `component` writes, for the processors that read it.
    fn source_topics(&self, topology: &Topology, component: &Component) -> Vec<String>;
}

/// Where processor `component` reads, writes and keeps its state, by the naming rules
/// of the topology: group `strata.<scope>.<name>`, changelog `<scope>.<name>.changelog`,
/// state under `<state.dir>/<name>` (the scope is the region, see [`Topology::scope`]).
pub fn processor_spec(
    topology: &Topology,
    component: &Component,
    starter: &dyn Starter,
) -> ProcessorSpec {
    let inputs = input_topics(topology, component, starter);
    let mut outputs = std::collections::HashMap::new();
    outputs.insert(None, topology.output_topic(&component.name, None));
    for port in &component.ports {
        outputs.insert(
            Some(port.clone()),
            topology.output_topic(&component.name, Some(port)),
        );
    }
    ProcessorSpec {
        component: component.name.clone(),
        group_id: group_id(topology, component),
        inputs,
        outputs,
        changelog: format!("{}.{}.changelog", topology.scope(), component.name),
        dead_letter: topology.dead_letter_topic(),
        audit: topology.audit_topic(),
        state_dir: topology.state.dir.join(&component.name),
        partitions: topology.topics.partitions,
        changelog_replication_factor: topology.state.changelog_replication_factor,
        max_batch: topology.state.batch_max_records.max(1),
        max_batch_wait: topology.state.batch_max_wait.0,
        commit_interval: topology.state.commit_interval.0,
        window: topology.replay.as_ref().map(|r| r.window.clone()),
    }
}

/// Where sink `component` reads: group `strata.<scope>.<name>`, batches of at most
/// `max_rows` records gathered for at most `max_wait`.
pub fn sink_spec(
    topology: &Topology,
    component: &Component,
    starter: &dyn Starter,
    max_rows: usize,
    max_wait: std::time::Duration,
) -> SinkSpec {
    SinkSpec {
        component: component.name.clone(),
        group_id: group_id(topology, component),
        inputs: input_topics(topology, component, starter),
        dead_letter: topology.dead_letter_topic(),
        audit: topology.audit_topic(),
        max_rows,
        max_wait,
        window: topology.replay.as_ref().map(|r| r.window.clone()),
    }
}

/// The consumer group of a processor or sink.
pub fn group_id(topology: &Topology, component: &Component) -> String {
    format!("strata.{}.{}", topology.scope(), component.name)
}

/// The Kafka topics behind a component's inputs.
pub fn input_topics(
    topology: &Topology,
    component: &Component,
    starter: &dyn Starter,
) -> Vec<String> {
    let mut inputs = Vec::new();
    for input in &component.inputs {
        match input {
            Input::Topic(t) => inputs.push(t.clone()),
            Input::Component { name, port } => match topology.component(name) {
                Some(c) if c.role == Role::Source => {
                    inputs.extend(starter.source_topics(topology, c))
                }
                _ => inputs.push(topology.output_topic(name, port.as_deref())),
            },
        }
    }
    inputs.sort();
    inputs.dedup();
    inputs
}

/// The topics a topology writes besides its sources' own: processor outputs, dead letters
/// and the audit topic.
pub fn output_topics(topology: &Topology) -> Vec<TopicSpec> {
    let spec = |name: String| TopicSpec {
        name,
        partitions: topology.topics.partitions,
        replication_factor: topology.topics.replication_factor,
        compacted: false,
    };
    let mut topics = vec![
        spec(topology.dead_letter_topic()),
        spec(topology.audit_topic()),
    ];
    for c in topology
        .components
        .iter()
        .filter(|c| c.role == Role::Processor && topology.runs(&c.name))
    {
        topics.push(spec(topology.output_topic(&c.name, None)));
        for port in &c.ports {
            topics.push(spec(topology.output_topic(&c.name, Some(port))));
        }
    }
    topics.sort_by(|a, b| a.name.cmp(&b.name));
    topics.dedup_by(|a, b| a.name == b.name);
    topics
}

/// Waits before a component's next start: 1 s, doubling to 30 s for failures in a row,
/// from 1 s again once it ran for a minute.
#[derive(Default)]
struct RestartBackoff {
    components: std::collections::HashMap<String, (Backoff, std::time::Instant)>,
}

impl RestartBackoff {
    fn failed(&mut self, component: &str) -> std::time::Duration {
        use std::time::{Duration, Instant};
        let (backoff, started) =
            self.components
                .entry(component.to_string())
                .or_insert_with(|| {
                    let backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
                    (backoff, Instant::now())
                });
        if started.elapsed() > Duration::from_secs(60) {
            backoff.reset();
        }
        backoff.next_wait()
    }

    fn started(&mut self, component: &str) {
        if let Some((_, started)) = self.components.get_mut(component) {
            *started = std::time::Instant::now();
        }
    }
}

/// Sets `ready` (what `/ready` answers) once every started component reports itself
/// ready in `strata_component_ready`.
async fn mark_ready_when_all_are(
    components: Vec<String>,
    metrics: Metrics,
    ready: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    let all_ready = || {
        components
            .iter()
            .all(|c| metrics.ready.with_label_values(&[c.as_str()]).get() == 1)
    };
    while !all_ready() {
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
            _ = shutdown.cancelled() => return,
        }
    }
    ready.store(true, Ordering::Release);
    tracing::info!("ready: every component is connected and restored");
}

/// Runs `topology` until `shutdown`, with its series in `metrics`. A replay's topology
/// runs without its sources (and stages it skips): their topics are its inputs.
pub async fn run(
    topology: Topology,
    listen: SocketAddr,
    starter: &dyn Starter,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let ready = Arc::new(AtomicBool::new(false));
    let state = OpsState {
        metrics: metrics.clone(),
        ready: ready.clone(),
    };
    let (bound, server) = http::serve(listen, state, shutdown.clone()).await?;
    tracing::info!(region = %topology.region, %bound, "serving /metrics, /health and /ready");

    let kafka_config = kafka::client_config(&topology.kafka);
    let mut topics = output_topics(&topology);
    for c in topology
        .components
        .iter()
        .filter(|c| c.role == Role::Source && topology.runs(&c.name))
    {
        topics.extend(
            starter
                .source_topics(&topology, c)
                .into_iter()
                .map(|name| TopicSpec {
                    name,
                    partitions: topology.topics.partitions,
                    replication_factor: topology.topics.replication_factor,
                    compacted: false,
                }),
        );
    }
    tokio::select! {
        result = kafka::ensure_topics(&kafka_config, &topics) => result?,
        _ = shutdown.cancelled() => {}
    }
    let mut tasks = tokio::task::JoinSet::new();
    let mut started = Vec::new();
    for c in topology
        .components
        .iter()
        .filter(|c| topology.runs(&c.name))
    {
        match starter.start(&topology, c, &metrics, shutdown.clone()) {
            Some(task) => {
                metrics.up.with_label_values(&[c.name.as_str()]).set(1);
                metrics.ready.with_label_values(&[c.name.as_str()]).set(0);
                started.push(c.name.clone());
                let name = c.name.clone();
                tasks.spawn(async move { (name, task.await) });
            }
            None => {
                metrics.up.with_label_values(&[c.name.as_str()]).set(0);
                tracing::warn!(component = %c.name, kind = %c.kind, "this build checks the component's settings but cannot run it yet");
            }
        }
    }
    tokio::spawn(mark_ready_when_all_are(
        started,
        metrics.clone(),
        ready,
        shutdown.clone(),
    ));
    tracing::info!(region = %topology.region, "running; SIGTERM or Ctrl-C drains and stops");

    // A component that fails definitely stops the whole deployment: its inputs are no
    // longer read, and a restart (by the supervisor) resumes every component from its
    // last commit.
    let mut failure = None;
    let mut record =
        |joined: Result<(String, Result<(), ComponentError>), tokio::task::JoinError>| {
            let (component, message) = match joined {
                Ok((_, Ok(()))) => return,
                Ok((name, Err(e))) => (name, e.message),
                Err(e) => ("?".to_string(), e.to_string()),
            };
            tracing::error!(%component, %message, "component failed; stopping");
            metrics.up.with_label_values(&[component.as_str()]).set(0);
            failure.get_or_insert(RunError::Component { component, message });
            shutdown.cancel();
        };
    // A transient failure (the broker restarted, say) starts the component again after
    // a backoff, from its last commit, as a process restart would; the others go on.
    let mut restarts = tokio::task::JoinSet::new();
    let mut backoff = RestartBackoff::default();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(joined) = tasks.join_next() => match joined {
                Ok((name, Err(e))) if e.transient && !shutdown.is_cancelled() => {
                    let wait = backoff.failed(&name);
                    tracing::warn!(component = %name, error = %e.message, retry_in = ?wait, "component failed transiently; starting it again");
                    metrics.component_restarts.with_label_values(&[name.as_str()]).inc();
                    metrics.ready.with_label_values(&[name.as_str()]).set(0);
                    restarts.spawn(async move {
                        tokio::time::sleep(wait).await;
                        name
                    });
                }
                other => record(other),
            },
            Some(Ok(name)) = restarts.join_next() => {
                let Some(c) = topology.components.iter().find(|c| c.name == name) else { continue };
                if let Some(task) = starter.start(&topology, c, &metrics, shutdown.clone()) {
                    backoff.started(&name);
                    tasks.spawn(async move { (name, task.await) });
                }
            }
        }
    }
    let drain_timeout = topology.shutdown.drain_timeout.0;
    let drained = tokio::time::timeout(drain_timeout, async {
        while let Some(joined) = tasks.join_next().await {
            record(joined);
        }
    })
    .await;
    if drained.is_err() {
        tasks.abort_all();
        tracing::error!(?drain_timeout, "drain deadline passed; stopping anyway");
        failure.get_or_insert(RunError::DrainTimeout(drain_timeout));
    } else {
        tracing::info!("drained; stopping");
    }
    match server.await {
        Ok(result) => result?,
        Err(e) => tracing::warn!(error = %e, "metrics server task ended abnormally"),
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
