//! The loop that runs one processor: a Kafka consumer group over its inputs, state in
//! RocksDB with a changelog, outputs and dead letters through an idempotent producer.
//!
//! The loop runs in cycles: take the input records already there (up to
//! `max_batch`), process them, then
//! 1. produce their outputs and dead letters, and wait until all are acknowledged.
//!
//! Their state changes stay in memory, read by the next cycles, until the commit, every
//! `commit_interval` (and after `max_batch` inputs, when idle, and before exit):
//! 2. state changes appended to the changelog, the input offsets last, and acknowledged;
//! 3. state changes, input offsets and the changelog checkpoint written locally in one
//!    RocksDB `WriteBatch`;
//! 4. consumer offsets committed.
//!
//! A crash between any two steps re-runs the inputs since the last commit from the
//! committed state: the processor contract makes the outputs the same records again, and
//! state converges on the same result. A commit never covers an input whose outputs are
//! not acknowledged. Committing every cycle (`commit_interval` 0) made each record wait
//! for the changelog round trip and the local write of the cycle before it; now a cycle
//! waits for its own outputs only, and a commit covers many cycles, each key once.
//!
//! The brief puts the local write before the changelog. Here it comes after, because the
//! local store also records which inputs were applied: written first, a crash before the
//! changelog append would leave changes that no other instance could ever restore while
//! this one skipped the inputs that made them. Written after, local state never runs
//! ahead of the changelog, and the checkpoint is exact.
//!
//! Ownership: tasks are input partitions. Before the first event of a newly assigned
//! partition, its state is caught up from the changelog and input offsets already
//! applied are skipped. Inputs must be co-partitioned (same partition count, same key →
//! same partition); outputs go to the input's partition number, so the next stage sees
//! each key in order. Kafka transactions are not used (the test broker has none): after
//! a rebalance, an instance that lost a partition may finish its last cycle while the new
//! owner starts; both compute the same records from the same inputs. Changes of a revoked
//! partition not committed yet are dropped: its next owner re-runs those inputs.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apache_avro::types::Value;
use futures::future::try_join_all;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::{OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};

use super::changelog::{self, checkpoint_key, record_key};
use super::dead_letter::{Letter, Stage};
use super::processor::{
    key_partition, parse_timer_key, partition_key, timer_key, Context, Event, Output, OutputSchema,
    Overlay, ProcessError, Processor, LOCAL, POSITIONS, PROGRESS, TIMERS,
};
use super::{timers, RuntimeError};
use crate::avro::{Codec, CodecError, Writer};
use crate::kafka::liveness::{assigned, Liveness, Stall};
use crate::kafka::{self, TopicSpec};
use crate::ops::metrics::Metrics;
use crate::ops::shutdown::CancellationToken;
use crate::state::{Batch, RocksStore, StateMemory, StateStore};
use crate::topology::KafkaSettings;

/// Where one processor reads, writes and keeps its state.
#[derive(Debug, Clone)]
pub struct ProcessorSpec {
    pub component: String,
    pub group_id: String,
    pub inputs: Vec<String>,
    /// Output topic of each port (`None` = default output).
    pub outputs: HashMap<Option<String>, String>,
    pub changelog: String,
    pub dead_letter: String,
    /// The region's audit topic: a notice of each dead letter.
    pub audit: String,
    pub state_dir: PathBuf,
    pub partitions: i32,
    pub changelog_replication_factor: i16,
    /// Most records handled in one commit cycle.
    pub max_batch: usize,
    /// Longest wait for a batch to fill once its first record is there.
    pub max_batch_wait: Duration,
    /// Longest time processed input stays uncommitted (see the module docs).
    pub commit_interval: Duration,
    /// A replay's slice of its external inputs; `None` applies every record.
    pub window: Option<Arc<super::InputWindow>>,
}

/// Shared services of the deployment.
#[derive(Clone)]
pub struct ProcessorEnv {
    pub kafka: KafkaSettings,
    pub codec: Arc<Codec>,
    pub metrics: Metrics,
    /// RocksDB cache and memtable budget of the process, shared by every processor.
    pub state_memory: StateMemory,
}

/// Partitions revoked since the loop last looked; their state must be caught up again
/// before they are processed (another instance may have advanced it meanwhile).
struct RebalanceTracker {
    revoked: Mutex<Vec<i32>>,
}

impl ClientContext for RebalanceTracker {}

impl ConsumerContext for RebalanceTracker {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let mut revoked = self.revoked.lock().unwrap_or_else(|p| p.into_inner());
            revoked.extend(list.elements().iter().map(|e| e.partition()));
            tracing::info!(partitions = ?*revoked, "partitions revoked");
        }
    }
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            let parts: Vec<_> = list
                .elements()
                .iter()
                .map(|e| format!("{}/{}", e.topic(), e.partition()))
                .collect();
            tracing::info!(assigned = ?parts, "partitions assigned");
        }
    }
}

/// What the loop knows about a partition it owns.
struct Task {
    watermark_ms: i64,
    /// Every timer of the partition in the store that has not fired has a key at or
    /// after this one; timers of the pending batch are read from its overlay instead.
    /// Fired timers are deleted, and their tombstones stay in RocksDB until compaction:
    /// a read of due timers from the first possible key would step over all of them on
    /// every watermark advance.
    timers_from: Vec<u8>,
    /// Next offset to apply, per input topic.
    next_offsets: HashMap<String, i64>,
}

fn offset_key(topic: &str) -> Vec<u8> {
    let mut k = b"offset/".to_vec();
    k.extend_from_slice(topic.as_bytes());
    k
}

const WATERMARK_KEY: &[u8] = b"watermark";

/// A record's decoded key and value, each with its schema id.
type DecodedPair = Result<(Option<(u32, Value)>, Option<(u32, Value)>), CodecError>;

struct Loop {
    spec: ProcessorSpec,
    env: ProcessorEnv,
    processor: Box<dyn Processor>,
    store: Arc<RocksStore>,
    consumer: StreamConsumer<RebalanceTracker>,
    producer: FutureProducer,
    restore_config: rdkafka::ClientConfig,
    tasks: HashMap<i32, Task>,
    writers: HashMap<(String, OutputSchema), Writer>,
}

/// Input processed since the last commit.
#[derive(Default)]
struct Pending {
    /// State changes, read by later cycles until committed.
    overlay: Overlay,
    /// Outputs and dead letters of the current cycle, sent at its end.
    outputs: Vec<(i32, Output)>,
    dead_letters: Vec<DeadLetter>,
    /// (topic, partition) → next offset, for the consumer commit.
    consumed: HashMap<(String, i32), i64>,
    /// Input records taken since the last commit.
    inputs: usize,
    /// When the first of them was taken; `None`: nothing to commit.
    since: Option<Instant>,
}

impl Pending {
    /// Whether to commit now: `interval` passed since the first input not committed, or
    /// `max_inputs` records wait.
    fn due(&self, interval: Duration, max_inputs: usize) -> bool {
        self.since
            .is_some_and(|since| since.elapsed() >= interval || self.inputs >= max_inputs)
    }

    /// Drops the changes and consumed offsets of `partitions`.
    fn forget(&mut self, partitions: &[i32]) {
        self.overlay
            .retain_keys(|key| key_partition(key).is_some_and(|p| !partitions.contains(&p)));
        self.consumed.retain(|(_, p), _| !partitions.contains(p));
    }

    /// Takes in the changes and outputs of a successful call on partition `p`.
    fn absorb(&mut self, p: i32, (scratch, outputs): (Overlay, Vec<Output>)) {
        self.overlay.extend(scratch);
        self.outputs.extend(outputs.into_iter().map(|o| (p, o)));
    }
}

struct DeadLetter {
    message: OwnedMessage,
    stage: Stage,
    code: String,
    error: String,
}

pub async fn run_processor(
    spec: ProcessorSpec,
    env: ProcessorEnv,
    processor: Box<dyn Processor>,
    shutdown: CancellationToken,
) -> Result<(), RuntimeError> {
    let kafka_config = kafka::client_config(&env.kafka);
    kafka::ensure_topics(
        &kafka_config,
        &[TopicSpec {
            name: spec.changelog.clone(),
            partitions: spec.partitions,
            replication_factor: spec.changelog_replication_factor,
            compacted: true,
        }],
    )
    .await?;
    let mut stores: Vec<&str> = processor.stores();
    stores.sort_unstable();
    stores.dedup();
    stores.extend([POSITIONS, TIMERS, PROGRESS, LOCAL]);
    let (dir, memory) = (spec.state_dir.clone(), env.state_memory.clone());
    let store = tokio::task::spawn_blocking(move || RocksStore::open(&dir, &stores, &memory))
        .await
        .map_err(RuntimeError::join)??;

    let mut consumer_config = kafka::consumer_config(&env.kafka);
    consumer_config
        .set("group.id", &spec.group_id)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "range")
        // A killed instance's partitions move after this long without heartbeats.
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .set("topic.metadata.refresh.interval.ms", "5000");
    let consumer: StreamConsumer<RebalanceTracker> = consumer_config
        .create_with_context(RebalanceTracker {
            revoked: Mutex::default(),
        })
        .map_err(|source| RuntimeError::KafkaIo {
            what: "creating the consumer".into(),
            source,
        })?;
    let inputs: Vec<&str> = spec.inputs.iter().map(String::as_str).collect();
    consumer
        .subscribe(&inputs)
        .map_err(|source| RuntimeError::KafkaIo {
            what: format!("subscribing to {inputs:?}"),
            source,
        })?;
    let mut restore_config = kafka::consumer_config(&env.kafka);
    restore_config
        .set("group.id", format!("{}.restore", spec.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false");
    tracing::info!(component = %spec.component, inputs = ?spec.inputs, group = %spec.group_id, "processor started");
    let mut this = Loop {
        producer: kafka::producer(&env.kafka)?,
        spec,
        env,
        processor,
        store: Arc::new(store),
        consumer,
        restore_config,
        tasks: HashMap::new(),
        writers: HashMap::new(),
    };
    this.run(shutdown).await
}

impl Loop {
    async fn run(&mut self, shutdown: CancellationToken) -> Result<(), RuntimeError> {
        let mut watchdog = crate::kafka::rejoin::Watchdog::new(&self.spec.inputs);
        let mut liveness = Liveness::start(
            &self.env.kafka,
            &self.spec.group_id,
            &self.spec.component,
            &self.spec.inputs,
            &self.env.metrics,
            self.spec.window.is_some(),
        );
        let ready = self
            .env
            .metrics
            .ready
            .with_label_values(&[&self.spec.component]);
        // Processed, not committed yet: the changes cycles since the last commit made.
        let mut pending = Pending::default();
        loop {
            super::off_async(|| watchdog.check(&self.consumer, &self.spec.component));
            self.forget_revoked(&mut pending);
            let tasks = self.tasks.len();
            if self.restore_assigned().await? {
                ready.set(1);
            }
            if self.tasks.len() > tasks {
                liveness.received(); // restoring is work: the idle clock starts after it
            }
            // Idle with changes not committed: wait only until they are due.
            let idle = match pending.since {
                Some(since) => self.spec.commit_interval.saturating_sub(since.elapsed()),
                None => Duration::from_secs(1),
            };
            liveness
                .check(&assigned(&self.consumer))
                .map_err(|stall| self.stalled(stall))?;
            let first = tokio::select! {
                m = self.consumer.recv() => m,
                _ = tokio::time::sleep(idle) => {
                    self.commit(std::mem::take(&mut pending)).await?;
                    continue;
                }
                _ = shutdown.cancelled() => break,
            };
            liveness.received();
            let Some(first) = self.detach(first) else {
                continue;
            };
            let mut messages = vec![first];
            let deadline = tokio::time::Instant::now() + self.spec.max_batch_wait;
            while messages.len() < self.spec.max_batch {
                match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                    Ok(m) => messages.extend(self.detach(m)),
                    Err(_) => break,
                }
            }
            let started = Instant::now();
            self.forget_revoked(&mut pending);
            self.process(messages, &mut pending).await?;
            self.send_outputs(&mut pending).await?;
            if pending.due(self.spec.commit_interval, self.spec.max_batch) {
                self.commit(std::mem::take(&mut pending)).await?;
            }
            self.env
                .metrics
                .processing_seconds
                .with_label_values(&[&self.spec.component])
                .observe(started.elapsed().as_secs_f64());
        }
        self.commit(pending).await?;
        tracing::info!(component = %self.spec.component, "processor drained");
        Ok(())
    }

    /// The error a stall ends the loop with, logged: the runtime starts it again.
    fn stalled(&self, stall: Stall) -> RuntimeError {
        tracing::error!(component = %self.spec.component, %stall, "stalled");
        RuntimeError::Stalled {
            component: self.spec.component.clone(),
            stall,
        }
    }

    /// The message, or `None` after logging a consumer error: those are reported by
    /// librdkafka while it retries on its own (broker down, topic not created yet).
    fn detach(
        &self,
        received: Result<rdkafka::message::BorrowedMessage<'_>, rdkafka::error::KafkaError>,
    ) -> Option<OwnedMessage> {
        match received {
            Ok(m) => Some(m.detach()),
            Err(e) => {
                tracing::warn!(component = %self.spec.component, error = %e, "consumer error; librdkafka retries");
                None
            }
        }
    }

    /// Forgets the partitions revoked since the last call, with their changes not
    /// committed yet: their next owner (maybe this instance again, after a restore)
    /// re-runs those inputs from the last committed offsets.
    fn forget_revoked(&mut self, pending: &mut Pending) {
        let revoked = std::mem::take(
            &mut *self
                .consumer
                .context()
                .revoked
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        if revoked.is_empty() {
            return;
        }
        for p in &revoked {
            self.tasks.remove(p);
        }
        pending.forget(&revoked);
    }

    /// Restores every assigned partition not restored yet, before its first record
    /// arrives; true once the consumer has an assignment and all of it is restored.
    async fn restore_assigned(&mut self) -> Result<bool, RuntimeError> {
        let assigned: std::collections::BTreeSet<i32> = match self.consumer.assignment() {
            Ok(list) => list.elements().iter().map(|e| e.partition()).collect(),
            Err(_) => return Ok(false),
        };
        for p in &assigned {
            self.ensure_task(*p).await?;
        }
        Ok(!assigned.is_empty())
    }

    /// Catches partition `p` up from its changelog (once per assignment) and loads its progress.
    async fn ensure_task(&mut self, p: i32) -> Result<(), RuntimeError> {
        if self.tasks.contains_key(&p) {
            return Ok(());
        }
        let (store, config, topic) = (
            self.store.clone(),
            self.restore_config.clone(),
            self.spec.changelog.clone(),
        );
        let gauge = self
            .env
            .metrics
            .restore_progress
            .with_label_values(&[&self.spec.component, &format!("partition-{p}")]);
        let started = Instant::now();
        let restored = tokio::task::spawn_blocking(move || {
            changelog::restore(&config, &topic, p, store.as_ref(), &|n| gauge.set(n as i64))
        })
        .await
        .map_err(RuntimeError::join)??;
        if restored > 0 {
            tracing::info!(component = %self.spec.component, partition = p, records = restored, seconds = started.elapsed().as_secs_f64(), "state restored from the changelog");
        }
        let store = self.store.clone();
        let (watermark, offsets) = tokio::task::spawn_blocking(move || {
            let wm = store
                .get(PROGRESS, &partition_key(p, WATERMARK_KEY))?
                .and_then(|v| v.try_into().ok().map(i64::from_be_bytes))
                .unwrap_or(i64::MIN);
            let offsets = store.scan_prefix(PROGRESS, &partition_key(p, b"offset/"))?;
            Ok::<_, crate::state::StateError>((wm, offsets))
        })
        .await
        .map_err(RuntimeError::join)??;
        let next_offsets = offsets
            .into_iter()
            .filter_map(|(k, v)| {
                let topic = String::from_utf8(k.get(4 + 7..)?.to_vec()).ok()?;
                Some((topic, i64::from_be_bytes(v.try_into().ok()?)))
            })
            .collect();
        self.tasks.insert(
            p,
            Task {
                watermark_ms: watermark,
                timers_from: timer_key(p, i64::MIN, b""),
                next_offsets,
            },
        );
        Ok(())
    }

    async fn decode(&self, bytes: Option<&[u8]>) -> Result<Option<(u32, Value)>, CodecError> {
        let Some(bytes) = bytes else { return Ok(None) };
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.env.codec.decode(bytes).await {
                Ok(d) => return Ok(Some((d.id, d.value))),
                Err(e) if e.is_transient() && backoff < Duration::from_secs(30) => {
                    tracing::warn!(error = %e, "schema registry unavailable; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Restores the partitions `messages` need and decodes them (async: may call the
    /// registry), then applies them with state reads off the async workers.
    async fn process(
        &mut self,
        messages: Vec<OwnedMessage>,
        pending: &mut Pending,
    ) -> Result<(), RuntimeError> {
        let mut decoded = Vec::with_capacity(messages.len());
        for message in messages {
            self.ensure_task(message.partition()).await?;
            let kv = match self.decode(message.key()).await {
                Ok(k) => self.decode(message.payload()).await.map(|v| (k, v)),
                Err(e) => Err(e),
            };
            let kv = match kv {
                Err(e) if e.is_transient() => return Err(e.into()),
                other => other,
            };
            decoded.push((message, kv));
        }
        super::off_async(|| self.apply(decoded, pending))
    }

    /// Applies `decoded` on top of `pending`, the changes not committed yet.
    fn apply(
        &mut self,
        decoded: Vec<(OwnedMessage, DecodedPair)>,
        pending: &mut Pending,
    ) -> Result<(), RuntimeError> {
        pending.since.get_or_insert_with(Instant::now);
        let in_counter = self
            .env
            .metrics
            .events_in
            .with_label_values(&[&self.spec.component]);
        for (message, kv) in decoded {
            let (topic, p, offset) = (
                message.topic().to_string(),
                message.partition(),
                message.offset(),
            );
            let applied = self
                .tasks
                .get(&p)
                .and_then(|t| t.next_offsets.get(&topic))
                .copied()
                .unwrap_or(0);
            pending.consumed.insert((topic.clone(), p), offset + 1);
            pending.inputs += 1;
            if offset < applied {
                continue; // applied before a restart; its effects are already in state
            }
            let timestamp_ms = message.timestamp().to_millis().unwrap_or(0);
            if let Some(window) = &self.spec.window {
                if !window.admits(&topic, p, offset, timestamp_ms) {
                    continue; // outside the replay's slice of history
                }
            }
            in_counter.inc();
            pending.overlay.insert(
                PROGRESS,
                partition_key(p, &offset_key(&topic)),
                Some((offset + 1).to_be_bytes().to_vec()),
            );
            if let Some(task) = self.tasks.get_mut(&p) {
                task.next_offsets.insert(topic.clone(), offset + 1);
            }
            let (key, value) = match kv {
                Ok(kv) => kv,
                Err(e) => {
                    pending.dead_letters.push(DeadLetter {
                        stage: Stage::Decode,
                        code: e.code().into(),
                        error: e.to_string(),
                        message,
                    });
                    continue;
                }
            };
            let event = Event {
                topic: &topic,
                partition: p,
                offset,
                timestamp_ms,
                key: key.as_ref().map(|(_, v)| v),
                key_schema_id: key.as_ref().map(|(id, _)| *id),
                value: value.as_ref().map(|(_, v)| v),
                value_schema_id: value.as_ref().map(|(id, _)| *id),
            };
            let event_time = self.processor.event_time(&event);
            let watermark = self.tasks.get(&p).map_or(i64::MIN, |t| t.watermark_ms);
            let mut ctx = Context::new(p, self.store.as_ref(), &pending.overlay, watermark);
            match self.processor.process(&event, &mut ctx) {
                Ok(()) => {
                    pending.absorb(p, ctx.into_parts());
                }
                Err(ProcessError::Rejected(r)) => {
                    drop(ctx);
                    pending.dead_letters.push(DeadLetter {
                        stage: Stage::Process,
                        code: r.code.into(),
                        error: r.message,
                        message,
                    });
                }
                Err(ProcessError::State(e)) => return Err(e.into()),
            }
            if event_time > watermark {
                self.advance_watermark(p, event_time, pending)?;
            }
        }
        self.lower_timer_floors(&pending.overlay);
        Ok(())
    }

    /// A timer the batch set below its partition's `timers_from` (due at or before the
    /// watermark, after the last advance) fires at the next advance: read from there.
    fn lower_timer_floors(&mut self, overlay: &Overlay) {
        for (p, first) in timers::first_set(overlay) {
            if let Some(task) = self.tasks.get_mut(&p) {
                if first < task.timers_from.as_slice() {
                    task.timers_from = first.to_vec();
                }
            }
        }
    }

    /// Moves partition `p`'s watermark to `to` and fires the timers it passed, in due order.
    fn advance_watermark(
        &mut self,
        p: i32,
        to: i64,
        pending: &mut Pending,
    ) -> Result<(), RuntimeError> {
        let (start, end) = (
            timer_key(p, i64::MIN, b""),
            timer_key(p, to.saturating_add(1), b""),
        );
        let mut cursor = match self.tasks.get_mut(&p) {
            Some(task) => {
                task.watermark_ms = to;
                task.timers_from.clone()
            }
            None => start.clone(),
        };
        pending.overlay.insert(
            PROGRESS,
            partition_key(p, WATERMARK_KEY),
            Some(to.to_be_bytes().to_vec()),
        );
        while let Some(key) =
            timers::next_due(self.store.as_ref(), &pending.overlay, &start, &cursor, &end)?
        {
            if key > cursor {
                cursor = key.clone();
            }
            pending.overlay.insert(TIMERS, key.clone(), None);
            let Some(timer) = parse_timer_key(&key) else {
                continue;
            };
            let mut ctx = Context::new(p, self.store.as_ref(), &pending.overlay, to);
            match self.processor.on_timer(&timer, &mut ctx) {
                Ok(()) => {
                    pending.absorb(p, ctx.into_parts());
                }
                Err(ProcessError::Rejected(r)) => {
                    tracing::warn!(component = %self.spec.component, partition = p, due_ms = timer.due_ms, error = %r, "timer rejected; dropped");
                }
                Err(ProcessError::State(e)) => return Err(e.into()),
            }
        }
        // Every stored timer before `end` has fired.
        if let Some(task) = self.tasks.get_mut(&p) {
            task.timers_from = end;
        }
        Ok(())
    }

    async fn writer(&mut self, topic: &str, schema: &OutputSchema) -> Result<Writer, RuntimeError> {
        let cache_key = (topic.to_string(), schema.clone());
        if let Some(w) = self.writers.get(&cache_key) {
            return Ok(w.clone());
        }
        let text: String = match schema {
            OutputSchema::Text(t) => t.to_string(),
            OutputSchema::Id(id) => self
                .env
                .codec
                .registry()
                .fetch(*id)
                .await
                .map_err(CodecError::from)?,
        };
        let writer = self.env.codec.register_on_topic(topic, &text).await?;
        self.writers.insert(cache_key, writer.clone());
        Ok(writer)
    }

    /// Step 1: sends the cycle's outputs and dead letters, and waits until all are
    /// acknowledged. The next cycle's are sent only after these: were a delivery to fail
    /// (a broker restart losing the idempotent producer's state, say), later records
    /// could land while the failed ones are lost, and the re-run after the restart would
    /// write those after the later ones.
    async fn send_outputs(&mut self, pending: &mut Pending) -> Result<(), RuntimeError> {
        let outputs = std::mem::take(&mut pending.outputs);
        let dead_letters = std::mem::take(&mut pending.dead_letters);
        let mut sends = Vec::with_capacity(outputs.len() + dead_letters.len());
        let out_counter = self
            .env
            .metrics
            .events_out
            .with_label_values(&[&self.spec.component]);
        for (p, output) in outputs {
            let p = match &output.partition_by {
                Some(bytes) => super::processor::partition_for(bytes, self.spec.partitions),
                None => p,
            };
            let topic = self
                .spec
                .outputs
                .get(&output.port)
                .cloned()
                .ok_or_else(|| RuntimeError::UnknownPort {
                    component: self.spec.component.clone(),
                    port: output.port.clone().unwrap_or_default(),
                })?;
            let key = match &output.key {
                Some(k) => Some(self.writer(&topic, &output.key_schema).await?.encode(k)?),
                None => None,
            };
            let value = match &output.value {
                Some(v) => Some(self.writer(&topic, &output.value_schema).await?.encode(v)?),
                None => None,
            };
            sends.push(self.send(topic, p, key, value, None));
            out_counter.inc();
        }
        let dl_counter = self
            .env
            .metrics
            .dead_letters
            .with_label_values(&[&self.spec.component]);
        for dl in dead_letters {
            tracing::warn!(component = %self.spec.component, topic = dl.message.topic(), partition = dl.message.partition(), offset = dl.message.offset(), code = %dl.code, error = %dl.error, "dead-lettered");
            let letter = Letter {
                component: &self.spec.component,
                stage: dl.stage,
                code: &dl.code,
                error: &dl.error,
                message: &dl.message,
            };
            let (notice_key, notice) = letter.notice(&self.env.codec, &self.spec.audit).await?;
            let headers = letter.headers();
            sends.push(self.send(
                self.spec.dead_letter.clone(),
                -1,
                dl.message.key().map(<[u8]>::to_vec),
                dl.message.payload().map(<[u8]>::to_vec),
                Some(headers),
            ));
            sends.push(self.send(
                self.spec.audit.clone(),
                -1,
                Some(notice_key),
                Some(notice),
                None,
            ));
            dl_counter.inc();
        }
        try_join_all(sends).await?;
        Ok(())
    }

    /// Steps 2–4 for every cycle since the last commit; their outputs are acknowledged.
    /// Partitions revoked meanwhile (they move while the consumer is polled, which may
    /// have been since the cycle) are left out, so this never appends to a changelog
    /// their new owner may be restoring.
    async fn commit(&mut self, mut pending: Pending) -> Result<(), RuntimeError> {
        debug_assert!(pending.outputs.is_empty() && pending.dead_letters.is_empty());
        self.forget_revoked(&mut pending);
        if pending.since.is_none() {
            return Ok(()); // nothing taken since the last commit
        }
        let Pending {
            overlay, consumed, ..
        } = pending;
        // 2. Changelog, the input offsets (PROGRESS) last: a restore applies every record
        // the changelog holds, and records of one partition land in the order sent, so a
        // changelog cut short (a crash mid-send) holds no offsets without the changes
        // they cover. A failed send that the idempotent producer follows with later
        // records can still leave a gap. (The offsets' store name sorts first, so the
        // overlay's own order would send them first.)
        let mut changelog_sends = Vec::new();
        let progress_last = overlay
            .iter()
            .filter(|(store, _, _)| *store != PROGRESS)
            .chain(overlay.iter().filter(|(store, _, _)| *store == PROGRESS));
        for (store, key, value) in progress_last {
            if store == LOCAL {
                continue;
            }
            let p = key_partition(key).expect("overlay keys start with their partition");
            changelog_sends.push(self.send(
                self.spec.changelog.clone(),
                p,
                Some(record_key(store, &key[4..])),
                value.clone(),
                None,
            ));
        }
        let acked = try_join_all(changelog_sends).await?;
        let mut checkpoints: HashMap<i32, i64> = HashMap::new();
        for (p, offset) in acked {
            let next = checkpoints.entry(p).or_insert(0);
            *next = (*next).max(offset + 1);
        }

        // 3. Local state, input offsets and checkpoints in one write.
        let mut batch = Batch::default();
        batch.ops.extend(
            overlay
                .into_changes()
                .map(|(store, key, value)| (store.to_string(), key, value)),
        );
        for (p, next) in checkpoints {
            batch.put(LOCAL, checkpoint_key(p), next.to_be_bytes().to_vec());
        }
        if !batch.is_empty() {
            let store = self.store.clone();
            tokio::task::spawn_blocking(move || store.write(batch))
                .await
                .map_err(RuntimeError::join)??;
            let (memory, gauge) = (&self.env.state_memory, &self.env.metrics.state_memory_bytes);
            for (kind, bytes) in [
                ("memtables", memory.memtable_usage()),
                ("block_cache", memory.cache_usage()),
                ("record_cache", memory.record_cache_usage()),
            ] {
                gauge.with_label_values(&[kind]).set(bytes as i64);
            }
        }

        // 4. Consumer offsets.
        if !consumed.is_empty() {
            let mut tpl = TopicPartitionList::new();
            for ((topic, p), next) in consumed {
                tpl.add_partition_offset(&topic, p, Offset::Offset(next))
                    .map_err(|source| RuntimeError::KafkaIo {
                        what: "building the offset commit".into(),
                        source,
                    })?;
            }
            if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
                // Not fatal: state already records the offsets, so a redelivery is skipped.
                tracing::warn!(component = %self.spec.component, error = %e, "offset commit failed; will commit with the next batch");
            }
        }
        Ok(())
    }

    /// Produces one record; resolves to (partition, offset) once acknowledged.
    fn send(
        &self,
        topic: String,
        partition: i32,
        key: Option<Vec<u8>>,
        value: Option<Vec<u8>>,
        headers: Option<OwnedHeaders>,
    ) -> impl std::future::Future<Output = Result<(i32, i64), RuntimeError>> + Send + 'static {
        let producer = self.producer.clone();
        async move {
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&topic);
            if partition >= 0 {
                record = record.partition(partition);
            }
            if let Some(k) = &key {
                record = record.key(k.as_slice());
            }
            if let Some(v) = &value {
                record = record.payload(v.as_slice());
            }
            if let Some(h) = headers {
                record = record.headers(h);
            }
            producer
                .send(record, Duration::from_secs(60))
                .await
                .map(|delivery| (delivery.partition, delivery.offset))
                .map_err(|(source, _)| RuntimeError::KafkaIo {
                    what: format!("writing to {topic}"),
                    source,
                })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revoked_partition_loses_its_uncommitted_changes_and_offsets_only() {
        let mut pending = Pending::default();
        for p in [1, 2] {
            pending
                .overlay
                .insert("s", partition_key(p, b"k"), Some(vec![p as u8]));
            pending
                .overlay
                .insert(TIMERS, timer_key(p, 5, b"t"), Some(Vec::new()));
            pending.consumed.insert(("in".into(), p), 10);
        }
        pending.forget(&[2]);
        let partitions: Vec<_> = pending
            .overlay
            .iter()
            .map(|(_, k, _)| key_partition(k))
            .collect();
        assert_eq!(partitions, [Some(1), Some(1)]);
        assert_eq!(
            pending.consumed.keys().collect::<Vec<_>>(),
            [&("in".into(), 1)]
        );
    }

    #[test]
    fn a_commit_is_due_after_the_interval_or_enough_inputs() {
        let mut pending = Pending::default();
        assert!(!pending.due(Duration::ZERO, 1), "nothing to commit");
        pending.since = Some(Instant::now());
        assert!(pending.due(Duration::ZERO, 10), "interval 0: every cycle");
        assert!(!pending.due(Duration::from_secs(60), 10));
        pending.inputs = 10;
        assert!(pending.due(Duration::from_secs(60), 10));
    }
}
