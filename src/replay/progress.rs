//! How far a replay is, read from the broker: the committed offsets of the replay's
//! consumer groups against its window (external inputs) and against the end of its own
//! intermediate topics.
//!
//! A replay is finished when every group has committed past the window on every
//! external partition and up to the end of every intermediate partition, in two
//! consecutive readings with the same intermediate ends. Components commit only after
//! their outputs are acknowledged, so while anything is still in flight some group is
//! behind some end.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use strata_pipeline::runtime::InputWindow;

use super::plan::Broker;
use super::ReplayError;

/// One consumer group of the replay and the topics it reads.
pub struct Group {
    pub id: String,
    pub topics: Vec<String>,
    consumer: BaseConsumer,
}

/// One reading of the replay's progress.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Reading {
    /// Window records the first stages have applied (or skipped past).
    pub done: i64,
    /// Window records in all.
    pub total: i64,
    /// Records written to intermediate topics and not yet consumed.
    pub in_flight: i64,
    /// End offsets of the intermediate partitions at this reading.
    pub intermediate_ends: Vec<(String, i32, i64)>,
}

impl Reading {
    pub fn finished(&self) -> bool {
        self.done >= self.total && self.in_flight == 0
    }
}

pub struct Progress {
    groups: Vec<Group>,
    window: std::sync::Arc<InputWindow>,
    broker: Broker,
    partitions: HashMap<String, i32>,
}

impl Progress {
    pub fn new(
        config: &ClientConfig,
        groups: Vec<(String, Vec<String>)>,
        window: std::sync::Arc<InputWindow>,
        partitions: i32,
    ) -> Result<Self, ReplayError> {
        let mut built = Vec::new();
        let mut layout = HashMap::new();
        for (id, topics) in groups {
            let mut c = config.clone();
            c.set("group.id", &id).set("enable.auto.commit", "false");
            let consumer: BaseConsumer = c.create().map_err(|source| ReplayError::Kafka {
                what: format!("creating a client for group {id}"),
                source,
            })?;
            for t in &topics {
                let n = window
                    .partitions
                    .keys()
                    .filter(|(topic, _)| topic == t)
                    .count() as i32;
                layout.insert(t.clone(), if n > 0 { n } else { partitions });
            }
            built.push(Group {
                id,
                topics,
                consumer,
            });
        }
        Ok(Self {
            groups: built,
            window,
            broker: Broker::connect(config)?,
            partitions: layout,
        })
    }

    /// Stores each group's start offsets on its external partitions, so that the
    /// replay's consumers begin at the window instead of at the start of each topic.
    /// Only a shortcut: records before the window are skipped anyway.
    pub fn seek_groups_to_window(&self) {
        for group in &self.groups {
            let mut tpl = TopicPartitionList::new();
            for ((topic, p), bounds) in &self.window.partitions {
                if group.topics.contains(topic) {
                    let _ = tpl.add_partition_offset(topic, *p, Offset::Offset(bounds.start));
                }
            }
            if tpl.count() == 0 {
                continue;
            }
            if let Err(e) = group
                .consumer
                .commit(&tpl, rdkafka::consumer::CommitMode::Sync)
            {
                tracing::warn!(group = %group.id, error = %e, "could not store the replay's start offsets; its consumers read the inputs from their beginning and skip to the window");
            }
        }
    }

    pub fn read(&self) -> Result<Reading, ReplayError> {
        let mut reading = Reading::default();
        for group in &self.groups {
            let mut tpl = TopicPartitionList::new();
            for topic in &group.topics {
                for p in 0..self.partitions.get(topic).copied().unwrap_or(0) {
                    let _ = tpl.add_partition(topic, p);
                }
            }
            let committed = group
                .consumer
                .committed_offsets(tpl, Duration::from_secs(10))
                .map_err(|source| ReplayError::Kafka {
                    what: format!("reading the offsets of group {}", group.id),
                    source,
                })?;
            for e in committed.elements() {
                let at = match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                };
                let key = (e.topic().to_string(), e.partition());
                match self.window.partitions.get(&key) {
                    Some(bounds) => {
                        let at = at.unwrap_or(bounds.start).clamp(bounds.start, bounds.end);
                        reading.done += at - bounds.start;
                        reading.total += bounds.len();
                    }
                    None => {
                        let end = self.broker.watermarks(&key.0, key.1)?.high;
                        reading.in_flight += (end - at.unwrap_or(0)).max(0);
                        reading.intermediate_ends.push((key.0, key.1, end));
                    }
                }
            }
        }
        reading.intermediate_ends.sort();
        Ok(reading)
    }
}

#[cfg(test)]
mod tests {
    use super::Reading;

    #[test]
    fn finished_needs_the_window_done_and_nothing_in_flight() {
        let mut r = Reading {
            done: 10,
            total: 10,
            in_flight: 1,
            intermediate_ends: vec![],
        };
        assert!(!r.finished());
        r.in_flight = 0;
        assert!(r.finished());
        r.done = 9;
        assert!(!r.finished());
    }
}
