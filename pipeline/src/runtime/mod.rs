//! Runs a checked topology: the ops endpoints, the topics it needs and its components,
//! until shutdown is requested; then drains and returns.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::kafka::{self, KafkaError, TopicSpec};
use crate::ops::http::{self, HttpError, OpsState};
use crate::ops::metrics::Metrics;
use crate::ops::shutdown::CancellationToken;
use crate::topology::{Role, Topology};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error("component `{component}` failed: {message}")]
    Component { component: String, message: String },
}

/// A running component: finishes when `shutdown` is cancelled (after draining) or fails.
pub type ComponentTask =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>;

/// Starts the components this build can run; the rest are only checked.
pub trait Starter {
    /// The task of `component`, or `None` when this build cannot run its kind yet.
    fn start(
        &self,
        topology: &Topology,
        component: &crate::topology::Component,
        shutdown: CancellationToken,
    ) -> Option<ComponentTask>;
}

/// The topics a topology writes besides its sources' own: processor outputs and dead letters.
pub fn output_topics(topology: &Topology) -> Vec<TopicSpec> {
    let spec = |name: String| TopicSpec {
        name,
        partitions: topology.topics.partitions,
        replication_factor: topology.topics.replication_factor,
        compacted: false,
    };
    let mut topics = vec![spec(topology.dead_letter_topic())];
    for c in topology
        .components
        .iter()
        .filter(|c| c.role == Role::Processor)
    {
        topics.push(spec(topology.output_topic(&c.name, None)));
        for port in &c.ports {
            topics.push(spec(topology.output_topic(&c.name, Some(port))));
        }
    }
    topics
}

pub async fn run(
    topology: Topology,
    listen: SocketAddr,
    starter: &dyn Starter,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let metrics = Metrics::new();
    let ready = Arc::new(AtomicBool::new(false));
    let state = OpsState {
        metrics: metrics.clone(),
        ready: ready.clone(),
    };
    let (bound, server) = http::serve(listen, state, shutdown.clone()).await?;
    tracing::info!(region = %topology.region, %bound, "serving /metrics, /health and /ready");

    let kafka_config = kafka::client_config(&topology.kafka);
    let topics = output_topics(&topology);
    tokio::select! {
        result = kafka::ensure_topics(&kafka_config, &topics) => result?,
        _ = shutdown.cancelled() => {}
    }
    let mut tasks = tokio::task::JoinSet::new();
    for c in &topology.components {
        match starter.start(&topology, c, shutdown.clone()) {
            Some(task) => {
                metrics.up.with_label_values(&[c.name.as_str()]).set(1);
                let name = c.name.clone();
                tasks.spawn(async move { (name, task.await) });
            }
            None => {
                metrics.up.with_label_values(&[c.name.as_str()]).set(0);
                tracing::warn!(component = %c.name, kind = %c.kind, "this build checks the component's settings but cannot run it yet");
            }
        }
    }
    ready.store(true, Ordering::Release);
    tracing::info!(region = %topology.region, "running; SIGTERM or Ctrl-C drains and stops");

    // A component that fails stops the whole deployment: its inputs are no longer read,
    // and a restart (by the supervisor) resumes every component from its last commit.
    let mut failure = None;
    let mut record = |joined: Result<(String, Result<(), String>), tokio::task::JoinError>| {
        let (component, message) = match joined {
            Ok((_, Ok(()))) => return,
            Ok((name, Err(message))) => (name, message),
            Err(e) => ("?".to_string(), e.to_string()),
        };
        tracing::error!(%component, %message, "component failed; stopping");
        metrics.up.with_label_values(&[component.as_str()]).set(0);
        failure.get_or_insert(RunError::Component { component, message });
        shutdown.cancel();
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(joined) = tasks.join_next() => record(joined),
        }
    }
    while let Some(joined) = tasks.join_next().await {
        record(joined);
    }
    tracing::info!("drained; stopping");
    match server.await {
        Ok(result) => result?,
        Err(e) => tracing::warn!(error = %e, "metrics server task ended abnormally"),
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
