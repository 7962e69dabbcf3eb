//! Committing a processor's batches in the background, in order, while the loop
//! processes the next ones.
//!
//! Every batch goes through the commit steps of [`super::stream`] in their order; what
//! this module adds is that batch n+1 is processed while batch n waits for its
//! acknowledgements, so a record does not wait for the commit of the batch before it:
//! - As soon as the loop has processed a batch it sends the batch's outputs and dead
//!   letters and waits for their acknowledgement, then hands the batch to the committer.
//!   The next stage reads them without waiting for this stage's changelog or state.
//!   The next batch's outputs are sent only after these are acknowledged: when a
//!   delivery fails (a broker restart that loses the idempotent producer's state, say)
//!   the producer may drop those records yet deliver the ones after them, and the
//!   restart would then write the dropped ones after later ones, out of order.
//! - One committer task takes the sealed batches in order, together with every batch
//!   queued behind them (so commits keep pace with processing). For such a group it
//!   sends the changelog and awaits it, then
//!   writes local state, offsets and checkpoints in one `WriteBatch`, then commits
//!   consumer offsets; the changelog and the write carry each key's last value in the
//!   group. A batch's changelog is never sent before its outputs are acknowledged, and
//!   a group's local write comes before the next group's changelog.
//! - While batches are in flight, processing reads through their changes
//!   ([`Commits::in_flight`], newest first) before the store: it sees the state as if
//!   every earlier batch were committed, so the results are the ones a sequential loop
//!   would give.
//! - At most [`MAX_IN_FLIGHT`] batches queue for the committer; handing off one more
//!   waits for room.
//! - A failed step stops the committer: no later batch writes state or changelog, and
//!   the loop stops with that error at its next hand-off. Outputs of later batches may
//!   be in their topics already; the restart re-emits the same records (the processor
//!   contract makes them identical), as after any crash.
//! - Before partitions move (a restore, a rebalance, shutdown) every batch in flight is
//!   committed first ([`Commits::drain`], [`CommitProgress::wait_blocking`]), so a new
//!   owner never restores a changelog this instance is still appending to.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::try_join_all;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::changelog::{checkpoint_key, record_key};
use super::processor::{Overlay, LOCAL, PROGRESS};
use super::RuntimeError;
use crate::ops::metrics::Metrics;
use crate::state::{Batch, RocksStore, StateMemory, StateStore};

/// Batches queued for the committer, at most, besides the group it is committing.
pub(super) const MAX_IN_FLIGHT: usize = 4;

/// A processed batch whose outputs are acknowledged: what is left to commit.
pub(super) struct Sealed {
    pub overlay: Arc<Overlay>,
    /// (topic, partition) → next offset, for the consumer commit.
    pub consumed: HashMap<(String, i32), i64>,
}

/// An enqueued record: its topic (for errors) and its acknowledgement.
pub(super) struct Delivery {
    topic: String,
    acked: DeliveryFuture,
}

impl Delivery {
    /// (partition, offset) once the broker acknowledged the record.
    pub async fn acked(self) -> Result<(i32, i64), RuntimeError> {
        let failed = |source| RuntimeError::KafkaIo {
            what: format!("writing to {}", self.topic),
            source,
        };
        match self.acked.await {
            Ok(Ok(d)) => Ok((d.partition, d.offset)),
            Ok(Err((source, _))) => Err(failed(source)),
            Err(_) => Err(failed(KafkaError::Canceled)),
        }
    }
}

/// Enqueues one record in the producer, waiting while its queue is full. Records
/// enqueued one after another keep that order within a partition.
pub(super) async fn enqueue(
    producer: &FutureProducer,
    topic: &str,
    partition: i32,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: Option<OwnedHeaders>,
) -> Result<Delivery, RuntimeError> {
    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic);
    if partition >= 0 {
        record = record.partition(partition);
    }
    if let Some(k) = key {
        record = record.key(k);
    }
    if let Some(v) = value {
        record = record.payload(v);
    }
    if let Some(h) = headers {
        record = record.headers(h);
    }
    loop {
        match producer.send_result(record) {
            Ok(acked) => {
                return Ok(Delivery {
                    topic: topic.to_string(),
                    acked,
                })
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err((source, _)) => {
                return Err(RuntimeError::KafkaIo {
                    what: format!("writing to {topic}"),
                    source,
                })
            }
        }
    }
}

/// How far the committer got: batches sealed and batches committed, counted from 1.
#[derive(Debug, Default)]
pub(super) struct CommitProgress {
    sealed: AtomicU64,
    committed: watch::Sender<Committed>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Committed {
    batches: u64,
    /// The committer stopped (failed, or its loop is gone): nothing more will commit.
    stopped: bool,
}

impl CommitProgress {
    /// Blocks the calling thread until every batch sealed so far is committed, the
    /// committer stops, or `timeout` passes; true when all were committed. For
    /// librdkafka's rebalance callback, which cannot await. On a single-threaded
    /// runtime the committer could not run meanwhile, so this returns false at once.
    pub fn wait_blocking(&self, timeout: Duration) -> bool {
        let target = self.sealed.load(Ordering::SeqCst);
        let mut committed = self.committed.subscribe();
        let now = *committed.borrow();
        if now.batches >= target || now.stopped {
            return now.batches >= target;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread {
            return false;
        }
        tokio::task::block_in_place(|| {
            handle.block_on(async {
                let done = committed.wait_for(|c| c.batches >= target || c.stopped);
                matches!(
                    tokio::time::timeout(timeout, done).await,
                    Ok(Ok(c)) if c.batches >= target
                )
            })
        })
    }
}

/// Commits consumer offsets.
pub(super) type OffsetCommit =
    dyn Fn(&TopicPartitionList) -> rdkafka::error::KafkaResult<()> + Send + Sync;

/// What the committer needs besides the batches.
pub(super) struct Committer {
    pub component: String,
    pub changelog: String,
    pub producer: FutureProducer,
    pub store: Arc<RocksStore>,
    /// Commits consumer offsets (asynchronously; a failure is retried by the next batch).
    pub commit_offsets: Box<OffsetCommit>,
    pub state_memory: StateMemory,
    pub metrics: Metrics,
}

/// The loop's side of the committer.
pub(super) struct Commits {
    queue: mpsc::Sender<(u64, Sealed)>,
    progress: Arc<CommitProgress>,
    task: Option<JoinHandle<Result<(), RuntimeError>>>,
    /// Sequence numbers and changes of batches handed off, oldest first.
    in_flight: VecDeque<(u64, Arc<Overlay>)>,
}

impl Commits {
    pub fn start(committer: Committer, progress: Arc<CommitProgress>) -> Self {
        let (queue, batches) = mpsc::channel(MAX_IN_FLIGHT);
        let task = tokio::spawn(committer.run(batches, progress.clone()));
        Self {
            queue,
            progress,
            task: Some(task),
            in_flight: VecDeque::new(),
        }
    }

    /// Changes of the batches handed off and not committed yet, newest first.
    pub fn in_flight(&mut self) -> Vec<Arc<Overlay>> {
        let committed = self.progress.committed.borrow().batches;
        self.in_flight.retain(|(seq, _)| *seq > committed);
        self.in_flight
            .iter()
            .rev()
            .map(|(_, o)| o.clone())
            .collect()
    }

    /// Hands `batch` to the committer; waits while [`MAX_IN_FLIGHT`] batches wait.
    pub async fn submit(&mut self, batch: Sealed) -> Result<(), RuntimeError> {
        let seq = self.progress.sealed.fetch_add(1, Ordering::SeqCst) + 1;
        self.in_flight.push_back((seq, batch.overlay.clone()));
        if self.queue.send((seq, batch)).await.is_err() {
            return Err(self.failure().await);
        }
        Ok(())
    }

    /// Waits until every batch handed off is committed.
    pub async fn drain(&mut self) -> Result<(), RuntimeError> {
        let target = self.progress.sealed.load(Ordering::SeqCst);
        let mut committed = self.progress.committed.subscribe();
        let last = *committed
            .wait_for(|c| c.batches >= target || c.stopped)
            .await
            .map_err(|_| RuntimeError::Join("the committer is gone".into()))?;
        if last.batches < target {
            return Err(self.failure().await);
        }
        self.in_flight.clear();
        Ok(())
    }

    /// Stops the committer without committing what is in flight, as a crash would, and
    /// waits until it is gone (so the state store is free to open again).
    pub async fn abort(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
        self.progress.committed.send_modify(|c| c.stopped = true);
    }

    /// Why the committer stopped.
    async fn failure(&mut self) -> RuntimeError {
        match self.task.take() {
            Some(task) => match task.await {
                Ok(Err(e)) => e,
                Ok(Ok(())) => RuntimeError::Join("the committer stopped".into()),
                Err(e) => RuntimeError::join(e),
            },
            None => RuntimeError::Join("the committer stopped earlier".into()),
        }
    }
}

impl Drop for Commits {
    /// A loop that stops without draining (an error) stops its committer too, as a crash
    /// would: batches not committed are redone by the next start.
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
        self.progress.committed.send_modify(|c| c.stopped = true);
    }
}

impl Committer {
    async fn run(
        self,
        mut batches: mpsc::Receiver<(u64, Sealed)>,
        progress: Arc<CommitProgress>,
    ) -> Result<(), RuntimeError> {
        let stop = |progress: &CommitProgress| progress.committed.send_modify(|c| c.stopped = true);
        while let Some((mut seq, first)) = batches.recv().await {
            // Batches that queued up meanwhile commit together: one round of
            // acknowledgements and one write for all, so commits keep pace with the loop.
            let started = Instant::now();
            let mut group = vec![first];
            while let Ok((next_seq, next)) = batches.try_recv() {
                seq = next_seq;
                group.push(next);
            }
            if let Err(e) = self.commit(group).await {
                stop(&progress);
                return Err(e);
            }
            progress.committed.send_modify(|c| c.batches = seq);
            self.metrics
                .commit_seconds
                .with_label_values(&[&self.component])
                .observe(started.elapsed().as_secs_f64());
        }
        stop(&progress);
        Ok(())
    }

    /// Commits `group`, consecutive batches in order, as one: the changelog and the local
    /// write carry each key's last value.
    async fn commit(&self, group: Vec<Sealed>) -> Result<(), RuntimeError> {
        let mut overlays = Vec::with_capacity(group.len());
        let mut consumed: HashMap<(String, i32), i64> = HashMap::new();
        for batch in group {
            overlays.push(batch.overlay);
            for (at, next) in batch.consumed {
                let offset = consumed.entry(at).or_insert(next);
                *offset = (*offset).max(next);
            }
        }
        let mut changes: BTreeMap<&(&'static str, Vec<u8>), &Option<Vec<u8>>> = BTreeMap::new();
        for overlay in &overlays {
            changes.extend(overlay.iter()); // later batches replace earlier ones
        }
        // 1. Outputs and dead letters: acknowledged before the loop handed the batch over.
        // 2. Changelog: the changes, and once they are all acknowledged the input offsets
        // (PROGRESS). A restore applies whatever records the changelog holds; if the
        // offsets went first and a failure lost some changes after them (the idempotent
        // producer may drop records around a broker restart), the restored state would
        // skip the inputs those changes came from, and lose them.
        let mut checkpoints: HashMap<i32, i64> = HashMap::new();
        for offsets_phase in [false, true] {
            let mut changelog = Vec::new();
            for ((store, key), value) in &changes {
                if *store == LOCAL || (*store == PROGRESS) != offsets_phase {
                    continue;
                }
                let p = i32::from_be_bytes([key[0], key[1], key[2], key[3]]);
                let record = record_key(store, &key[4..]);
                changelog.push(
                    enqueue(
                        &self.producer,
                        &self.changelog,
                        p,
                        Some(&record),
                        value.as_deref(),
                        None,
                    )
                    .await?,
                );
            }
            let acked = try_join_all(changelog.into_iter().map(Delivery::acked)).await?;
            for (p, offset) in acked {
                let next = checkpoints.entry(p).or_insert(0);
                *next = (*next).max(offset + 1);
            }
        }

        // 3. Local state, input offsets and checkpoints in one write.
        let mut local = Batch::default();
        local.ops.extend(
            changes
                .into_iter()
                .map(|((store, key), value)| (store.to_string(), key.clone(), value.clone())),
        );
        for (p, next) in checkpoints {
            local.put(LOCAL, checkpoint_key(p), next.to_be_bytes().to_vec());
        }
        if !local.is_empty() {
            let store = self.store.clone();
            tokio::task::spawn_blocking(move || store.write(local))
                .await
                .map_err(RuntimeError::join)??;
            let (memory, gauge) = (&self.state_memory, &self.metrics.state_memory_bytes);
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
            if let Err(e) = (self.commit_offsets)(&tpl) {
                // Not fatal: state already records the offsets, so a redelivery is skipped.
                tracing::warn!(component = %self.component, error = %e, "offset commit failed; will commit with the next batch");
            }
        }
        Ok(())
    }
}
