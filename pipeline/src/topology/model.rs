//! The typed topology: global settings plus the components and how they connect.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::catalog::Role;
use super::units::{Duration, Size};
use crate::secret::Secret;

/// The current topology file format.
pub const FORMAT_VERSION: u32 = 1;

/// A checked topology, ready to run.
#[derive(Debug, Clone)]
pub struct Topology {
    pub region: String,
    pub kafka: KafkaSettings,
    pub schema_registry: RegistrySettings,
    pub state: StateSettings,
    pub topics: TopicSettings,
    pub observability: ObservabilitySettings,
    pub shutdown: ShutdownSettings,
    /// Components in file order: sources, then processors, then sinks.
    pub components: Vec<Component>,
    /// Set when this topology runs as a replay (`strata replay`), never from the file.
    pub replay: Option<ReplayScope>,
}

/// What makes a replay's run separate from the live deployment of the same file: its
/// topics, consumer groups and changelogs are named under `<region>.replay-<name>`, its
/// sources (and any stages before the one it starts at) do not run, and its external
/// inputs — what those wrote in the live deployment — are read through `window`.
#[derive(Debug, Clone)]
pub struct ReplayScope {
    pub name: String,
    pub window: std::sync::Arc<crate::runtime::InputWindow>,
    /// Components the replay does not run: their live output topics are its inputs.
    pub skipped: std::collections::BTreeSet<String>,
}

impl Topology {
    pub fn component(&self, name: &str) -> Option<&Component> {
        self.components.iter().find(|c| c.name == name)
    }

    /// The prefix of every topic, consumer group and changelog this run owns: the
    /// region, or `<region>.replay-<name>` for a replay.
    pub fn scope(&self) -> String {
        match &self.replay {
            Some(replay) => format!("{}.replay-{}", self.region, replay.name),
            None => self.region.clone(),
        }
    }

    /// The dead-letter topic of this region (a replay always has its own).
    pub fn dead_letter_topic(&self) -> String {
        match (&self.topics.dead_letter, &self.replay) {
            (Some(topic), None) => topic.clone(),
            _ => format!("{}.dead-letter", self.scope()),
        }
    }

    /// The audit topic of this region: every conflict resolved (the `audit` port of the
    /// conflict processors) and a notice of every dead letter, in one place. A replay
    /// always has its own.
    pub fn audit_topic(&self) -> String {
        match (&self.topics.audit, &self.replay) {
            (Some(topic), None) => topic.clone(),
            _ => format!("{}.audit", self.scope()),
        }
    }

    /// Whether this run starts `component` (a replay skips its sources and the stages
    /// before the one it starts at).
    pub fn runs(&self, component: &str) -> bool {
        self.replay
            .as_ref()
            .is_none_or(|r| !r.skipped.contains(component))
    }

    /// The topic a component's output (default or named port) is written to; for a
    /// component this run skips, the live deployment's topic. A port named `audit`
    /// writes to the region's [audit topic](Self::audit_topic).
    pub fn output_topic(&self, component: &str, port: Option<&str>) -> String {
        let scope = match self.runs(component) {
            true => self.scope(),
            false => self.region.clone(),
        };
        match port {
            Some(AUDIT_PORT) if self.runs(component) => self.audit_topic(),
            Some(AUDIT_PORT) => {
                (self.topics.audit.clone()).unwrap_or_else(|| format!("{}.audit", self.region))
            }
            Some(port) => format!("{scope}.{component}.{port}"),
            None => format!("{scope}.{component}"),
        }
    }
}

/// The output port whose records go to the region's audit topic.
pub const AUDIT_PORT: &str = "audit";

#[derive(Debug, Clone)]
pub struct Component {
    pub name: String,
    pub role: Role,
    pub kind: String,
    pub inputs: Vec<Input>,
    pub ports: Vec<String>,
    /// The component's own settings, checked by its kind.
    pub settings: serde_yaml_ng::Value,
}

/// What a component reads.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Input {
    /// Another component's default output, or one of its named ports.
    Component { name: String, port: Option<String> },
    /// A Kafka topic written outside this topology (for example mirrored from another region).
    Topic(String),
}

impl Input {
    pub fn parse(text: &str) -> Input {
        if let Some(topic) = text.strip_prefix("topic:") {
            return Input::Topic(topic.to_string());
        }
        match text.split_once('.') {
            Some((name, port)) => Input::Component {
                name: name.to_string(),
                port: Some(port.to_string()),
            },
            None => Input::Component {
                name: text.to_string(),
                port: None,
            },
        }
    }
}

impl std::fmt::Display for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Input::Component { name, port: None } => write!(f, "{name}"),
            Input::Component {
                name,
                port: Some(p),
            } => write!(f, "{name}.{p}"),
            Input::Topic(t) => write!(f, "topic:{t}"),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSettings {
    /// Comma-separated `host:port` list.
    pub bootstrap_servers: String,
    /// Producer acknowledgements; Strata needs `all` for its no-loss guarantee.
    #[serde(default = "default_acks")]
    pub acks: String,
    /// SASL mechanism (`PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`), if the cluster needs it.
    #[serde(default)]
    pub sasl_mechanism: Option<String>,
    #[serde(default)]
    pub sasl_username: Option<String>,
    #[serde(default)]
    pub sasl_password: Option<Secret>,
    /// Use TLS to the brokers.
    #[serde(default)]
    pub tls: bool,
    /// CA bundle for TLS, if not the system one.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// Extra librdkafka properties, passed through as they are.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

fn default_acks() -> String {
    "all".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrySettings {
    /// Base URL of a Confluent-compatible schema registry.
    pub url: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<Secret>,
    /// PEM CA bundle for an `https` registry, if not the system one.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Let a table's stream go on when a schema change fails the registry's compatibility check.
    #[serde(default)]
    pub allow_incompatible: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateSettings {
    /// Directory of the RocksDB state of this deployment.
    pub dir: PathBuf,
    /// RocksDB block cache shared by every store of the process.
    #[serde(default = "default_cache")]
    pub cache_size: Size,
    /// Memory the memtables of every store of the process hold together; past it, the
    /// store being written flushes.
    #[serde(default = "default_cache")]
    pub memtable_size: Size,
    /// Records processors read and wrote lately, kept in memory in front of RocksDB and
    /// shared by every store of the process (0 turns it off).
    #[serde(default = "default_record_cache")]
    pub record_cache_size: Size,
    /// Replication factor of changelog topics.
    #[serde(default = "default_replication")]
    pub changelog_replication_factor: i16,
    /// Most input records a processor handles in one commit cycle (outputs, changelog,
    /// state and offsets are written once per cycle).
    #[serde(default = "default_batch_records")]
    pub batch_max_records: usize,
    /// How long a processor waits for more input once a cycle's first record is there.
    /// Zero takes only what the consumer already holds: the lowest latency, and under
    /// load cycles still fill up while the previous one commits.
    #[serde(default = "default_batch_wait")]
    pub batch_max_wait: Duration,
    /// How often a processor commits: appends its state changes to the changelog,
    /// writes them locally with its input offsets, and commits its consumer offsets.
    /// Each cycle's outputs are sent (and acknowledged) at once; between commits, cycles
    /// read the changes not committed yet. A crash re-runs the inputs since the last
    /// commit and re-sends the same outputs. Zero commits after every cycle.
    #[serde(default = "default_commit_interval")]
    pub commit_interval: Duration,
}

fn default_commit_interval() -> Duration {
    Duration(std::time::Duration::from_millis(DEFAULT_COMMIT_INTERVAL_MS))
}

/// See [`StateSettings::commit_interval`].
pub const DEFAULT_COMMIT_INTERVAL_MS: u64 = 100;

fn default_batch_records() -> usize {
    5000
}

fn default_batch_wait() -> Duration {
    Duration(std::time::Duration::from_millis(DEFAULT_BATCH_WAIT_MS))
}

/// See [`StateSettings::batch_max_wait`].
pub const DEFAULT_BATCH_WAIT_MS: u64 = 5;

fn default_cache() -> Size {
    Size(64 << 20)
}

fn default_record_cache() -> Size {
    Size(32 << 20)
}

fn default_replication() -> i16 {
    1
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSettings {
    /// Partitions of topics Strata creates.
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    #[serde(default = "default_replication")]
    pub replication_factor: i16,
    /// Dead-letter topic; defaults to `<region>.dead-letter`.
    #[serde(default)]
    pub dead_letter: Option<String>,
    /// Audit topic (conflicts resolved, dead letters); defaults to `<region>.audit`.
    #[serde(default)]
    pub audit: Option<String>,
}

fn default_partitions() -> i32 {
    4
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownSettings {
    /// How long SIGTERM may take: components stop reading, finish and commit their batch
    /// in hand, and the process exits 0. Past this it exits 1 without waiting further;
    /// the next start resumes from the last commit, so only the unfinished batch is redone.
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout: Duration,
}

impl Default for ShutdownSettings {
    fn default() -> Self {
        Self {
            drain_timeout: default_drain_timeout(),
        }
    }
}

fn default_drain_timeout() -> Duration {
    Duration(std::time::Duration::from_secs(30))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObservabilitySettings {
    /// Address of the `/metrics`, `/health` and `/ready` endpoints.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
}

impl Default for ObservabilitySettings {
    fn default() -> Self {
        Self {
            listen: default_listen(),
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9898))
}
