//! Liveness of a consuming component: its group's lag per input partition, and whether
//! the component has stalled.
//!
//! **Lag** = high watermark − the group's committed offset (the low watermark before the
//! group's first commit), read from the broker every [`CHECK_EVERY`] by a monitor with a
//! client of its own. It does not come from the consuming client's statistics, which go
//! quiet exactly when that client is stuck (after broker crashes they read 0 while
//! records waited). It is exported as `strata_consumer_lag{component,topic,partition}`
//! for every input partition, whoever holds it: the series are the group's, the same on
//! every instance of a deployment (aggregate them with `max`, not `sum`).
//!
//! **Stall**: a partition stalls when records wait on it and the group's committed offset
//! has not moved for [`STALL_AFTER`]. A component whose loop has waited for records that
//! long without receiving any, while a partition it holds stalls (or, holding none, while
//! one has stalled for twice as long), fails with a transient error: the runtime starts
//! it again after its backoff (a new client, a new group membership, state restored as at
//! any start), and `/ready` reads not ready meanwhile. A fault that healed therefore
//! resumes within [`STALL_AFTER`] + [`CHECK_EVERY`] + the restart backoff (under 60 s
//! with the default backoff), without a process restart. A loop that is busy (writing a
//! batch, restoring) is never idle, so slow work is not mistaken for a stall. Components
//! reading bounded windows (a replay) stop at their window's end on purpose and are
//! never judged stalled.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::IntGaugeVec;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::ops::metrics::Metrics;
use crate::topology::KafkaSettings;

/// How often the monitor reads the group's offsets and the partitions' ends.
pub const CHECK_EVERY: Duration = Duration::from_secs(5);
/// How long records may wait, unconsumed by an idle component, before it restarts.
pub const STALL_AFTER: Duration = Duration::from_secs(30);
/// A reading older than this says nothing about now (the broker is away).
const FRESH_FOR: Duration = Duration::from_secs(20);
const TIMEOUT: Duration = Duration::from_secs(5);

/// An input partition on which records wait while nothing consumes them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{topic} partition {partition}: {waiting} records wait and nothing was consumed for {idle:?} (the group's committed offset stands at {committed}); starting the component again")]
pub struct Stall {
    pub topic: String,
    pub partition: i32,
    pub waiting: i64,
    pub committed: i64,
    pub idle: Duration,
}

/// What the monitor last read of one input partition.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Reading {
    waiting: i64,
    committed: i64,
    /// Since when `committed` has stood where it is while records waited.
    unchanged_since: Instant,
}

#[derive(Debug, Default)]
struct Readings {
    taken_at: Option<Instant>,
    partitions: BTreeMap<(String, i32), Reading>,
}

impl Readings {
    /// Records one complete reading: (topic, partition) → (committed, high watermark).
    fn update(&mut self, now: Instant, offsets: &[((String, i32), i64, i64)]) {
        let mut next = BTreeMap::new();
        for (tp, committed, high) in offsets {
            let waiting = (high - committed).max(0);
            let unchanged_since = match self.partitions.get(tp) {
                Some(r) if r.committed == *committed && r.waiting > 0 => r.unchanged_since,
                _ => now,
            };
            next.insert(
                tp.clone(),
                Reading {
                    waiting,
                    committed: *committed,
                    unchanged_since,
                },
            );
        }
        self.partitions = next;
        self.taken_at = Some(now);
    }

    /// The stall to act on, for a component idle for `idle` holding `assigned`.
    fn verdict(&self, now: Instant, idle: Duration, assigned: &[(String, i32)]) -> Option<Stall> {
        if idle < STALL_AFTER || self.taken_at.is_none_or(|t| now - t > FRESH_FOR) {
            return None;
        }
        let bound = if assigned.is_empty() {
            2 * STALL_AFTER
        } else {
            STALL_AFTER
        };
        self.partitions
            .iter()
            .filter(|(tp, _)| assigned.is_empty() || assigned.contains(tp))
            .find(|(_, r)| r.waiting > 0 && now - r.unchanged_since >= bound)
            .map(|((topic, partition), r)| Stall {
                topic: topic.clone(),
                partition: *partition,
                waiting: r.waiting,
                committed: r.committed,
                idle,
            })
    }
}

/// The liveness of one component: its monitor runs until this is dropped.
pub struct Liveness {
    readings: Arc<Mutex<Readings>>,
    /// Since when the component's loop has waited without receiving a record.
    idle_since: Option<Instant>,
    judged: bool,
    monitor: tokio::task::JoinHandle<()>,
}

impl Drop for Liveness {
    fn drop(&mut self) {
        self.monitor.abort();
    }
}

impl Liveness {
    /// Starts the monitor of `group`'s offsets on `inputs`. `bounded` (a replay window)
    /// exports lag but never judges a stall.
    pub fn start(
        kafka: &KafkaSettings,
        group: &str,
        component: &str,
        inputs: &[String],
        metrics: &Metrics,
        bounded: bool,
    ) -> Self {
        let readings = Arc::new(Mutex::new(Readings::default()));
        let monitor = Monitor {
            client: monitor_client(kafka, group),
            component: component.to_string(),
            inputs: inputs.to_vec(),
            gauge: metrics.consumer_lag.clone(),
            readings: readings.clone(),
        };
        Self {
            readings,
            idle_since: None,
            judged: !bounded,
            monitor: tokio::spawn(monitor.run()),
        }
    }

    /// A record arrived: the loop is not idle.
    pub fn received(&mut self) {
        self.idle_since = None;
    }

    /// Called while the loop waits for records (also when it times out waiting); fails
    /// with the stall to act on. `assigned` = the partitions the component holds.
    pub fn check(&mut self, assigned: &[(String, i32)]) -> Result<(), Stall> {
        let now = Instant::now();
        let idle = now - *self.idle_since.get_or_insert(now);
        if !self.judged {
            return Ok(());
        }
        let readings = self.readings.lock().unwrap_or_else(|p| p.into_inner());
        match readings.verdict(now, idle, assigned) {
            Some(stall) => Err(stall),
            None => Ok(()),
        }
    }
}

/// The partitions `consumer` holds, as [`Liveness::check`] takes them.
pub fn assigned<C: Consumer<X>, X: rdkafka::consumer::ConsumerContext>(
    consumer: &C,
) -> Vec<(String, i32)> {
    consumer
        .assignment()
        .map(|list| {
            list.elements()
                .iter()
                .map(|e| (e.topic().to_string(), e.partition()))
                .collect()
        })
        .unwrap_or_default()
}

fn monitor_client(kafka: &KafkaSettings, group: &str) -> Option<BaseConsumer> {
    let mut config = super::consumer_config(kafka);
    // Reads the group's committed offsets; never joins the group.
    config
        .set("group.id", group)
        .set("enable.auto.commit", "false");
    match config.create() {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(%group, error = %e, "cannot create the lag monitor's client; lag is not exported");
            None
        }
    }
}

struct Monitor {
    client: Option<BaseConsumer>,
    component: String,
    inputs: Vec<String>,
    gauge: IntGaugeVec,
    readings: Arc<Mutex<Readings>>,
}

impl Monitor {
    async fn run(self) {
        let Some(client) = self.client else { return };
        let client = Arc::new(client);
        let mut tick = tokio::time::interval(CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let (c, inputs) = (client.clone(), self.inputs.clone());
            let read = tokio::task::spawn_blocking(move || read_offsets(&c, &inputs)).await;
            match read {
                Ok(Ok(offsets)) => {
                    for ((topic, partition), committed, high) in &offsets {
                        let labels = [self.component.as_str(), topic, &partition.to_string()];
                        self.gauge
                            .with_label_values(&labels)
                            .set((high - committed).max(0));
                    }
                    self.readings
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .update(Instant::now(), &offsets);
                }
                // The broker is away: the last reading ages out and judges nothing.
                Ok(Err(e)) => {
                    tracing::debug!(component = %self.component, error = %e, "lag not read")
                }
                Err(_) => return,
            }
        }
    }
}

/// (topic, partition) → (the group's committed offset, high watermark) of every input
/// partition; before the group's first commit, the low watermark stands for it.
type Offsets = Vec<((String, i32), i64, i64)>;

fn read_offsets(
    client: &BaseConsumer,
    inputs: &[String],
) -> Result<Offsets, rdkafka::error::KafkaError> {
    let mut tpl = TopicPartitionList::new();
    for topic in inputs {
        let metadata = client.fetch_metadata(Some(topic), TIMEOUT)?;
        for t in metadata.topics() {
            for p in t.partitions() {
                tpl.add_partition(t.name(), p.id());
            }
        }
    }
    let committed = client.committed_offsets(tpl, TIMEOUT)?;
    let mut out = Vec::new();
    for e in committed.elements() {
        let (low, high) = client.fetch_watermarks(e.topic(), e.partition(), TIMEOUT)?;
        let at = match e.offset() {
            Offset::Offset(o) => o.clamp(low, high),
            _ => low,
        };
        out.push(((e.topic().to_string(), e.partition()), at, high));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(p: i32) -> (String, i32) {
        ("in".to_string(), p)
    }

    #[test]
    fn records_waiting_on_a_held_partition_whose_offset_stands_still_are_a_stall() {
        let t0 = Instant::now();
        let mut r = Readings::default();
        r.update(t0, &[(tp(0), 10, 50), (tp(1), 5, 5)]);
        let later = t0 + STALL_AFTER;
        r.update(later, &[(tp(0), 10, 60), (tp(1), 5, 5)]);
        let held = [tp(0), tp(1)];
        assert_eq!(
            r.verdict(later, STALL_AFTER, &held)
                .map(|s| (s.partition, s.waiting)),
            Some((0, 50))
        );
        // Not idle long enough, or holding only the caught-up partition: no stall.
        assert_eq!(r.verdict(later, STALL_AFTER / 2, &held), None);
        assert_eq!(r.verdict(later, STALL_AFTER, &[tp(1)]), None);
        // A reading gone stale (the broker away) judges nothing.
        assert_eq!(r.verdict(later + 2 * FRESH_FOR, STALL_AFTER, &held), None);
    }

    #[test]
    fn a_moving_offset_or_nothing_waiting_is_no_stall() {
        let t0 = Instant::now();
        let mut r = Readings::default();
        r.update(t0, &[(tp(0), 10, 50)]);
        let later = t0 + STALL_AFTER;
        r.update(later, &[(tp(0), 11, 50)]);
        assert_eq!(r.verdict(later, STALL_AFTER, &[tp(0)]), None, "it moved");
        let caught_up = later + STALL_AFTER;
        r.update(caught_up, &[(tp(0), 50, 50)]);
        r.update(caught_up + STALL_AFTER, &[(tp(0), 50, 50)]);
        assert_eq!(
            r.verdict(caught_up + STALL_AFTER, STALL_AFTER, &[tp(0)]),
            None
        );
    }

    #[test]
    fn holding_nothing_while_a_partition_stalls_twice_as_long_is_a_stall() {
        let t0 = Instant::now();
        let mut r = Readings::default();
        r.update(t0, &[(tp(0), 0, 7)]);
        r.update(t0 + STALL_AFTER, &[(tp(0), 0, 7)]);
        assert_eq!(r.verdict(t0 + STALL_AFTER, STALL_AFTER, &[]), None);
        r.update(t0 + 2 * STALL_AFTER, &[(tp(0), 0, 7)]);
        assert!(r
            .verdict(t0 + 2 * STALL_AFTER, 2 * STALL_AFTER, &[])
            .is_some());
    }
}
