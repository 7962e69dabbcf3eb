//! The [`Sink`] trait and the loop that feeds one: a consumer group over the sink's
//! inputs, batches by size and time, retries with backoff, offsets committed only after
//! the store has the batch.
//!
//! Contract of a sink:
//! - **At-least-once input, exactly-once contents.** A batch may be written again after a
//!   crash or a retry; writing it twice must leave the store as writing it once (upserts
//!   guarded by position, files named by their position range).
//! - **Order.** Records of one input partition arrive in offset order, and a batch is
//!   written (and its offsets committed) before the next one is written; the next one is
//!   read and held meanwhile, so at most two batches are in memory. A sink may reorder
//!   within a batch only where the position guard makes the order irrelevant.
//! - **Errors.** [`SinkError::Transient`] (store down, disk full) is retried with backoff
//!   for as long as it lasts, holding back the input (back-pressure, nothing dropped).
//!   A record the store can never take is returned as a [`Rejected`] and goes to the
//!   dead-letter topic; the rest of the batch is written.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use apache_avro::types::Value;
use futures::future::BoxFuture;
use futures::TryFutureExt;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};

use super::dead_letter::{Letter, Stage};
use super::RuntimeError;
use crate::avro::Codec;
use crate::kafka;
use crate::kafka::liveness::{assigned, Liveness};
use crate::ops::metrics::Metrics;
use crate::ops::shutdown::CancellationToken;
use crate::topology::KafkaSettings;

/// One decoded input record.
#[derive(Debug, Clone)]
pub struct SinkRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Value>,
    /// `None` for a tombstone.
    pub value: Option<Value>,
    /// Registry id of the value's writer schema.
    pub value_schema_id: Option<u32>,
}

/// A record the store refused for good.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    /// Index in the batch.
    pub index: usize,
    pub code: &'static str,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Worth retrying: the store is unreachable, busy or out of space.
    #[error("{0}")]
    Transient(String),
    /// The sink cannot go on (bad settings, a schema it cannot create).
    #[error("{0}")]
    Fatal(String),
}

pub trait Sink: Send {
    /// Prepares the store (migrations, directories); called once before the first batch
    /// and again after a transient failure of it.
    fn open(&mut self) -> BoxFuture<'_, Result<(), SinkError>>;

    /// Writes `records` idempotently; returns the records refused for good.
    fn write<'a>(
        &'a mut self,
        records: &'a [SinkRecord],
    ) -> BoxFuture<'a, Result<Vec<Rejected>, SinkError>>;
}

#[derive(Debug, Clone)]
pub struct SinkSpec {
    pub component: String,
    pub group_id: String,
    pub inputs: Vec<String>,
    pub dead_letter: String,
    /// The region's audit topic: a notice of each dead letter.
    pub audit: String,
    pub max_rows: usize,
    pub max_wait: Duration,
    /// A replay's slice of its external inputs; `None` writes every record.
    pub window: Option<std::sync::Arc<super::InputWindow>>,
}

/// Runs `sink` until `shutdown`; the batch in hand is finished first.
pub async fn run_sink(
    spec: SinkSpec,
    kafka_settings: KafkaSettings,
    codec: std::sync::Arc<Codec>,
    metrics: Metrics,
    mut sink: Box<dyn Sink>,
    shutdown: CancellationToken,
) -> Result<(), RuntimeError> {
    let mut config = kafka::consumer_config(&kafka_settings);
    config
        .set("group.id", &spec.group_id)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .set("topic.metadata.refresh.interval.ms", "5000");
    let kafka_error = |what: &str| {
        let what = what.to_string();
        move |source| RuntimeError::KafkaIo { what, source }
    };
    let consumer: StreamConsumer = config
        .create()
        .map_err(kafka_error("creating the consumer"))?;
    let inputs: Vec<&str> = spec.inputs.iter().map(String::as_str).collect();
    consumer
        .subscribe(&inputs)
        .map_err(kafka_error("subscribing"))?;
    let producer: FutureProducer = kafka::producer(&kafka_settings)?;
    let counters = Counters {
        write_seconds: metrics
            .sink_write_seconds
            .with_label_values(&[&spec.component]),
        batch_rows: metrics
            .sink_batch_rows
            .with_label_values(&[&spec.component]),
        events_in: metrics.events_in.with_label_values(&[&spec.component]),
        events_out: metrics.events_out.with_label_values(&[&spec.component]),
        dead: metrics.dead_letters.with_label_values(&[&spec.component]),
    };
    let mut backoff = Backoff::new(&shutdown, &spec.component);
    while let Err(e) = sink.open().await {
        backoff.after(e).await?;
    }
    metrics.ready.with_label_values(&[&spec.component]).set(1);
    tracing::info!(component = %spec.component, inputs = ?spec.inputs, "sink started");

    // One batch is written while the next is read: at most two batches in memory.
    let mut watchdog = crate::kafka::rejoin::Watchdog::new(&spec.inputs);
    let mut liveness = Liveness::start(
        &kafka_settings,
        &spec.group_id,
        &spec.component,
        &spec.inputs,
        &metrics,
        spec.window.is_some(),
    );
    let io = BatchIo {
        spec: &spec,
        consumer: &consumer,
        producer: &producer,
        codec: &codec,
        shutdown: &shutdown,
        counters: &counters,
        delivering: AtomicBool::new(false),
    };
    let mut batch = io.collect(&mut watchdog, &mut liveness).await?;
    while let Some(messages) = batch {
        let ((), next) = futures::future::try_join(
            async {
                io.delivering.store(true, Ordering::Relaxed);
                let delivered = io.deliver(&messages, sink.as_mut()).await;
                io.delivering.store(false, Ordering::Relaxed);
                delivered
            },
            io.collect(&mut watchdog, &mut liveness),
        )
        .await?;
        batch = next;
    }
    tracing::info!(component = %spec.component, "sink drained");
    Ok(())
}

struct Counters {
    write_seconds: prometheus::Histogram,
    batch_rows: prometheus::Histogram,
    events_in: prometheus::IntCounter,
    events_out: prometheus::IntCounter,
    dead: prometheus::IntCounter,
}

/// What reading and delivering a batch borrow from [`run_sink`].
struct BatchIo<'a> {
    spec: &'a SinkSpec,
    consumer: &'a StreamConsumer,
    producer: &'a FutureProducer,
    codec: &'a Codec,
    shutdown: &'a CancellationToken,
    counters: &'a Counters,
    /// A batch is being written: waiting for the next one meanwhile is not idleness.
    delivering: AtomicBool,
}

impl BatchIo<'_> {
    /// The next batch: up to `max_rows` messages, waiting at most `max_wait` after the
    /// first; `None` once shutdown is requested.
    async fn collect(
        &self,
        watchdog: &mut crate::kafka::rejoin::Watchdog,
        liveness: &mut Liveness,
    ) -> Result<Option<Vec<OwnedMessage>>, RuntimeError> {
        let spec = self.spec;
        let first = loop {
            super::off_async(|| watchdog.check(self.consumer, &spec.component));
            if self.delivering.load(Ordering::Relaxed) {
                liveness.received();
            } else if let Err(stall) = liveness.check(&assigned(self.consumer)) {
                tracing::error!(component = %spec.component, %stall, "stalled");
                return Err(RuntimeError::Stalled {
                    component: spec.component.clone(),
                    stall,
                });
            }
            tokio::select! {
                m = self.consumer.recv() => match m {
                    Ok(m) => break m.detach(),
                    Err(e) => tracing::warn!(component = %spec.component, error = %e, "consumer error; librdkafka retries"),
                },
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                _ = self.shutdown.cancelled() => return Ok(None),
            }
        };
        liveness.received();
        let mut messages = vec![first];
        let deadline = tokio::time::Instant::now() + spec.max_wait;
        while messages.len() < spec.max_rows {
            match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                Ok(Ok(m)) => messages.push(m.detach()),
                Ok(Err(e)) => {
                    tracing::warn!(component = %spec.component, error = %e, "consumer error")
                }
                Err(_) => break,
            }
        }
        self.counters.events_in.inc_by(messages.len() as u64);
        Ok(Some(messages))
    }

    /// Decodes `messages`, writes them (retrying with backoff), dead-letters what the
    /// store refused or could not be decoded, then commits the batch's offsets.
    async fn deliver(
        &self,
        messages: &[OwnedMessage],
        sink: &mut dyn Sink,
    ) -> Result<(), RuntimeError> {
        let spec = self.spec;
        let mut records = Vec::with_capacity(messages.len());
        let mut undecodable = Vec::new();
        let admitted = messages.iter().filter(|m| {
            spec.window.as_ref().is_none_or(|w| {
                let ts = m.timestamp().to_millis().unwrap_or(0);
                w.admits(m.topic(), m.partition(), m.offset(), ts)
            })
        });
        for m in admitted {
            match (
                decode(self.codec, m.key()).await,
                decode(self.codec, m.payload()).await,
            ) {
                (Ok(key), Ok(value)) => records.push(SinkRecord {
                    topic: m.topic().to_string(),
                    partition: m.partition(),
                    offset: m.offset(),
                    key: key.map(|(_, k)| k),
                    value_schema_id: value.as_ref().map(|(id, _)| *id),
                    value: value.map(|(_, v)| v),
                }),
                (Err(e), _) | (_, Err(e)) if e.is_transient() => return Err(e.into()),
                (Err(e), _) | (_, Err(e)) => {
                    undecodable.push((m, Stage::Decode, e.code(), e.to_string()))
                }
            }
        }
        let started = Instant::now();
        let mut backoff = Backoff::new(self.shutdown, &spec.component);
        let rejected = loop {
            match sink.write(&records).await {
                Ok(rejected) => break rejected,
                Err(e) => backoff.after(e).await?,
            }
        };
        self.counters
            .write_seconds
            .observe(started.elapsed().as_secs_f64());
        self.counters.batch_rows.observe(records.len() as f64);
        self.counters
            .events_out
            .inc_by((records.len() - rejected.len()) as u64);

        let by_offset: HashMap<(&str, i32, i64), &OwnedMessage> = messages
            .iter()
            .map(|m| ((m.topic(), m.partition(), m.offset()), m))
            .collect();
        let mut letters = Vec::new();
        for r in &rejected {
            let rec = &records[r.index];
            if let Some(m) = by_offset.get(&(rec.topic.as_str(), rec.partition, rec.offset)) {
                letters.push((*m, Stage::Store, r.code, r.message.clone()));
            }
        }
        letters.extend(undecodable);
        for (m, stage, code, error) in letters {
            tracing::warn!(component = %spec.component, topic = m.topic(), partition = m.partition(), offset = m.offset(), code, %error, "dead-lettered");
            let letter = Letter {
                component: &spec.component,
                stage,
                code,
                error: &error,
                message: m,
            };
            let (notice_key, notice) = letter.notice(self.codec, &spec.audit).await?;
            let mut record: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(&spec.dead_letter).headers(letter.headers());
            if let Some(k) = m.key() {
                record = record.key(k);
            }
            if let Some(v) = m.payload() {
                record = record.payload(v);
            }
            let notice = FutureRecord::to(&spec.audit)
                .key(notice_key.as_slice())
                .payload(notice.as_slice());
            // The letter and its notice go out together; both are acknowledged before
            // the offsets that pass the message are committed.
            let send = |topic: &str, record| {
                let topic = topic.to_string();
                self.producer
                    .send(record, Duration::from_secs(60))
                    .map_err(move |(source, _)| RuntimeError::KafkaIo {
                        what: format!("writing to {topic}"),
                        source,
                    })
            };
            futures::try_join!(send(&spec.dead_letter, record), send(&spec.audit, notice))?;
            self.counters.dead.inc();
        }

        let mut next: HashMap<(&str, i32), i64> = HashMap::new();
        for m in messages {
            let e = next.entry((m.topic(), m.partition())).or_insert(0);
            *e = (*e).max(m.offset() + 1);
        }
        let mut tpl = TopicPartitionList::new();
        for ((topic, p), offset) in next {
            tpl.add_partition_offset(topic, p, Offset::Offset(offset))
                .map_err(|source| RuntimeError::KafkaIo {
                    what: "building the offset commit".into(),
                    source,
                })?;
        }
        if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
            tracing::warn!(component = %spec.component, error = %e, "offset commit failed; the batch may be written again, harmlessly");
        }
        Ok(())
    }
}

async fn decode(
    codec: &Codec,
    bytes: Option<&[u8]>,
) -> Result<Option<(u32, Value)>, crate::avro::CodecError> {
    match bytes {
        Some(b) => codec.decode(b).await.map(|d| Some((d.id, d.value))),
        None => Ok(None),
    }
}

/// Waits between tries of a store that is unavailable: 200 ms doubling up to 30 s.
struct Backoff<'a> {
    next: Duration,
    shutdown: &'a CancellationToken,
    component: &'a str,
}

impl<'a> Backoff<'a> {
    fn new(shutdown: &'a CancellationToken, component: &'a str) -> Self {
        Self {
            next: Duration::from_millis(200),
            shutdown,
            component,
        }
    }

    /// Ok(()) to try again; an error for a fatal failure or when shutdown interrupts.
    async fn after(&mut self, error: SinkError) -> Result<(), RuntimeError> {
        let message = match error {
            SinkError::Fatal(message) => {
                return Err(RuntimeError::Component {
                    component: self.component.into(),
                    message,
                })
            }
            SinkError::Transient(message) => message,
        };
        tracing::warn!(component = %self.component, error = %message, retry_in = ?self.next, "store unavailable; retrying");
        tokio::select! {
            _ = tokio::time::sleep(self.next) => {}
            _ = self.shutdown.cancelled() => return Err(RuntimeError::Component {
                component: self.component.into(),
                message: format!("stopped while the store was unavailable: {message}"),
            }),
        }
        self.next = (self.next * 2).min(Duration::from_secs(30));
        Ok(())
    }
}
