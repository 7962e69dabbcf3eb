//! Turns `--from` / `--to` into an [`InputWindow`]: per partition of every external
//! input, the offsets the replay applies. Everything is checked against the broker
//! before anything is written.
//!
//! Times are Kafka record timestamps (Strata's sources stamp each record when they
//! produce it, in commit order, so they do not decrease within a partition). A time is
//! turned into an offset by ListOffsets, *verified* by reading the records on either side
//! of it, and found by binary search over record timestamps when the broker's answer is
//! wrong (tansu answers offset 0 for some times); records outside the time range are
//! skipped again when read, so a misplaced bound can only cost reading, never a record.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use strata_pipeline::runtime::{InputWindow, PartitionBounds};

use super::ReplayError;

const TIMEOUT: Duration = Duration::from_secs(10);

/// One end of the replay, as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Point {
    /// A record time, ms since the epoch.
    Time(i64),
    /// Exact offsets of some partitions: (topic, partition) → offset.
    Offsets(BTreeMap<(String, i32), i64>),
}

impl Point {
    /// Parses one RFC 3339 time or a list of `topic:partition:offset`.
    pub fn parse(values: &[String], flag: &str) -> Result<Point, ReplayError> {
        let bad = |text: &str, why: &str| ReplayError::BadPoint {
            flag: flag.to_string(),
            text: text.to_string(),
            why: why.to_string(),
        };
        if let [single] = values {
            if let Ok(time) = chrono::DateTime::parse_from_rfc3339(single) {
                return Ok(Point::Time(time.timestamp_millis()));
            }
        }
        let mut offsets = BTreeMap::new();
        for text in values {
            let mut parts = text.rsplitn(3, ':');
            let (Some(offset), Some(partition), Some(topic)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return Err(bad(
                    text,
                    "expected an RFC 3339 time (2026-11-25T00:00:00Z) or topic:partition:offset",
                ));
            };
            let partition: i32 = partition
                .parse()
                .map_err(|_| bad(text, "the partition is not a number"))?;
            let offset: i64 = offset
                .parse()
                .map_err(|_| bad(text, "the offset is not a number"))?;
            if topic.is_empty() || partition < 0 || offset < 0 {
                return Err(bad(
                    text,
                    "topic must be named, partition and offset not negative",
                ));
            }
            if offsets
                .insert((topic.to_string(), partition), offset)
                .is_some()
            {
                return Err(ReplayError::Overlapping {
                    flag: flag.to_string(),
                    topic: topic.to_string(),
                    partition,
                });
            }
        }
        Ok(Point::Offsets(offsets))
    }
}

/// What the broker says about one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionState {
    pub low: i64,
    pub high: i64,
}

/// Reads partition layouts, watermarks and record timestamps.
pub struct Broker {
    consumer: BaseConsumer,
}

impl Broker {
    /// `config` should be a consumer configuration (`kafka::consumer_config`): each probe
    /// of a record time is a fetch, and brokers may hold a fetch for its whole wait.
    pub fn connect(config: &ClientConfig) -> Result<Self, ReplayError> {
        let mut config = config.clone();
        config
            .set("group.id", "strata.replay.planner")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false");
        let consumer = config.create().map_err(|source| ReplayError::Kafka {
            what: "creating a client".into(),
            source,
        })?;
        Ok(Self { consumer })
    }

    /// Partitions of `topic`, or `None` when the topic does not exist.
    pub fn partitions(&self, topic: &str) -> Result<Option<i32>, ReplayError> {
        let metadata = self
            .consumer
            .fetch_metadata(Some(topic), TIMEOUT)
            .map_err(|source| ReplayError::Kafka {
                what: format!("reading the metadata of {topic}"),
                source,
            })?;
        Ok(metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map(|t| t.partitions().len() as i32)
            .filter(|n| *n > 0))
    }

    pub fn watermarks(&self, topic: &str, partition: i32) -> Result<PartitionState, ReplayError> {
        let (low, high) = self
            .consumer
            .fetch_watermarks(topic, partition, TIMEOUT)
            .map_err(|source| ReplayError::Kafka {
                what: format!("reading the offsets of {topic}/{partition}"),
                source,
            })?;
        Ok(PartitionState { low, high })
    }

    /// Timestamp of the first record at or after `offset`.
    fn timestamp_at(&self, topic: &str, partition: i32, offset: i64) -> Result<i64, ReplayError> {
        let mut tpl = TopicPartitionList::new();
        let kafka = |what: String| move |source| ReplayError::Kafka { what, source };
        tpl.add_partition_offset(topic, partition, Offset::Offset(offset))
            .map_err(kafka(format!("seeking {topic}/{partition}")))?;
        self.consumer
            .assign(&tpl)
            .map_err(kafka(format!("reading {topic}/{partition}")))?;
        let deadline = std::time::Instant::now() + TIMEOUT;
        while std::time::Instant::now() < deadline {
            match self.consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) if m.topic() == topic && m.partition() == partition => {
                    return Ok(m.timestamp().to_millis().unwrap_or(0));
                }
                Some(Err(source)) => {
                    return Err(ReplayError::Kafka {
                        what: format!("reading {topic}/{partition} at offset {offset}"),
                        source,
                    })
                }
                _ => {}
            }
        }
        Err(ReplayError::NoRecord {
            topic: topic.into(),
            partition,
            offset,
        })
    }

    /// The first offset in `[state.low, state.high)` whose record time is `>= time_ms`,
    /// or `state.high` when there is none.
    pub fn offset_for_time(
        &self,
        topic: &str,
        partition: i32,
        state: PartitionState,
        time_ms: i64,
    ) -> Result<i64, ReplayError> {
        let ts = |o: i64| self.timestamp_at(topic, partition, o);
        let mut tpl = TopicPartitionList::new();
        let _ = tpl.add_partition_offset(topic, partition, Offset::Offset(time_ms));
        let candidate = self
            .consumer
            .offsets_for_times(tpl, TIMEOUT)
            .ok()
            .and_then(
                |list| match list.find_partition(topic, partition)?.offset() {
                    Offset::Offset(o) if (state.low..=state.high).contains(&o) => Some(o),
                    Offset::End => Some(state.high),
                    _ => None,
                },
            );
        if let Some(o) = candidate {
            let after_ok = o == state.high || ts(o)? >= time_ms;
            let before_ok = o == state.low || ts(o - 1)? < time_ms;
            if after_ok && before_ok {
                return Ok(o);
            }
        }
        let (mut lo, mut hi) = (state.low, state.high);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if ts(mid)? >= time_ms {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        Ok(lo)
    }

    /// Time of the oldest record still in the partition.
    pub fn earliest_time(
        &self,
        topic: &str,
        partition: i32,
        state: PartitionState,
    ) -> Result<Option<i64>, ReplayError> {
        if state.low >= state.high {
            return Ok(None);
        }
        self.timestamp_at(topic, partition, state.low).map(Some)
    }
}

/// Plans the window over `topics` (the replay's external inputs).
pub fn window(
    broker: &Broker,
    topics: &[String],
    from: &Point,
    to: Option<&Point>,
) -> Result<InputWindow, ReplayError> {
    let mut layouts: HashMap<String, i32> = HashMap::new();
    for topic in topics {
        let partitions = broker
            .partitions(topic)?
            .ok_or_else(|| ReplayError::MissingInput {
                topic: topic.clone(),
            })?;
        layouts.insert(topic.clone(), partitions);
    }
    for point in [Some(from), to].into_iter().flatten() {
        if let Point::Offsets(offsets) = point {
            for (topic, partition) in offsets.keys() {
                match layouts.get(topic) {
                    None => {
                        return Err(ReplayError::UnknownTopic {
                            topic: topic.clone(),
                            inputs: topics.to_vec(),
                        })
                    }
                    Some(n) if partition >= n => {
                        return Err(ReplayError::UnknownPartition {
                            topic: topic.clone(),
                            partition: *partition,
                            partitions: *n,
                        })
                    }
                    _ => {}
                }
            }
        }
    }
    let mut window = InputWindow::default();
    for (topic, partitions) in &layouts {
        for p in 0..*partitions {
            let state = broker.watermarks(topic, p)?;
            let key = (topic.clone(), p);
            let (start, from_ms) = match from {
                Point::Time(ms) => match broker.earliest_time(topic, p, state)? {
                    None => (state.low, Some(*ms)),
                    Some(earliest) => {
                        check_retention(topic, p, state, *ms, earliest)?;
                        let start = match earliest >= *ms {
                            true => state.low, // the whole partition is in the window
                            false => broker.offset_for_time(topic, p, state, *ms)?,
                        };
                        (start, Some(*ms))
                    }
                },
                Point::Offsets(offsets) => {
                    let start = offsets.get(&key).copied().unwrap_or(state.low);
                    check_in_range(topic, p, state, start, "--from")?;
                    (start, None)
                }
            };
            let (end, to_ms) = match to {
                None => (state.high, None),
                Some(Point::Time(ms)) => (
                    broker.offset_for_time(topic, p, state, ms.saturating_add(1))?,
                    Some(*ms),
                ),
                Some(Point::Offsets(offsets)) => {
                    let end = offsets.get(&key).copied().unwrap_or(state.high);
                    check_in_range(topic, p, state, end, "--to")?;
                    (end, None)
                }
            };
            if end < start {
                return Err(ReplayError::EndBeforeStart {
                    topic: topic.clone(),
                    partition: p,
                    start,
                    end,
                });
            }
            window.partitions.insert(
                key,
                PartitionBounds {
                    start,
                    end,
                    from_ms,
                    to_ms,
                },
            );
        }
    }
    Ok(window)
}

/// A replay from `from_ms` needs every record since then: the partition must not have
/// lost records (low watermark above 0) that are newer than `from_ms`.
pub fn check_retention(
    topic: &str,
    partition: i32,
    state: PartitionState,
    from_ms: i64,
    earliest_ms: i64,
) -> Result<(), ReplayError> {
    if state.low > 0 && earliest_ms > from_ms {
        return Err(ReplayError::BeforeRetention {
            topic: topic.into(),
            partition,
            from_ms,
            earliest_ms,
            low: state.low,
        });
    }
    Ok(())
}

fn check_in_range(
    topic: &str,
    partition: i32,
    state: PartitionState,
    offset: i64,
    flag: &str,
) -> Result<(), ReplayError> {
    if offset < state.low || offset > state.high {
        return Err(ReplayError::OffsetOutOfRange {
            flag: flag.into(),
            topic: topic.into(),
            partition,
            offset,
            low: state.low,
            high: state.high,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_a_time_or_offsets() {
        assert_eq!(
            Point::parse(&strings(&["2026-11-25T00:00:00Z"]), "--from").unwrap(),
            Point::Time(1_795_564_800_000)
        );
        let Point::Offsets(o) = Point::parse(
            &strings(&["us-east.cdc.claims.public.claims:3:120", "x:0:0"]),
            "--from",
        )
        .unwrap() else {
            panic!("offsets expected")
        };
        assert_eq!(o[&("us-east.cdc.claims.public.claims".into(), 3)], 120);
        assert_eq!(o[&("x".into(), 0)], 0);
    }

    #[test]
    fn rejects_garbage_and_overlaps() {
        for bad in ["yesterday", "t:1", "t:a:1", "t:1:-4", ":1:1"] {
            let e = Point::parse(&strings(&[bad]), "--from").unwrap_err();
            assert!(matches!(e, ReplayError::BadPoint { .. }), "{bad}: {e}");
        }
        let e = Point::parse(&strings(&["t:1:5", "t:1:9"]), "--from").unwrap_err();
        assert!(
            matches!(e, ReplayError::Overlapping { partition: 1, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("t/1"), "{e}");
    }

    #[test]
    fn retention_is_checked_only_when_records_were_removed() {
        let kept = PartitionState { low: 0, high: 10 };
        let trimmed = PartitionState { low: 5, high: 10 };
        assert!(check_retention("t", 0, kept, 1_000, 5_000).is_ok());
        assert!(check_retention("t", 0, trimmed, 6_000, 5_000).is_ok());
        let e = check_retention("t", 0, trimmed, 1_000, 5_000).unwrap_err();
        assert!(e.to_string().contains("retention"), "{e}");
    }

    #[test]
    fn offsets_outside_the_partition_are_refused() {
        let state = PartitionState { low: 5, high: 10 };
        assert!(check_in_range("t", 0, state, 5, "--from").is_ok());
        assert!(check_in_range("t", 0, state, 10, "--to").is_ok());
        assert!(check_in_range("t", 0, state, 4, "--from").is_err());
        assert!(check_in_range("t", 0, state, 11, "--from").is_err());
    }
}
