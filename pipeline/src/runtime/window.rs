//! The slice of history a replay reads: per input partition, a range of offsets and
//! optionally of record times.
//!
//! Invariant: a component of a replay applies exactly the records of its *external*
//! inputs (source topics and `topic:` inputs) that the window admits, and every record
//! of the replay's own intermediate topics (which hold only what the replay wrote).
//! Records outside the window are consumed and committed but not applied — the live
//! sources keep appending while a replay runs, and those records belong to the live
//! deployment, not to the replay.

use std::collections::HashMap;

/// Bounds of one partition of an external input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionBounds {
    /// First offset to apply.
    pub start: i64,
    /// First offset *not* to apply.
    pub end: i64,
    /// Records with an earlier timestamp (ms) are skipped.
    pub from_ms: Option<i64>,
    /// Records with a later timestamp (ms) are skipped.
    pub to_ms: Option<i64>,
}

impl PartitionBounds {
    pub fn admits(&self, offset: i64, timestamp_ms: i64) -> bool {
        offset >= self.start
            && offset < self.end
            && self.from_ms.is_none_or(|from| timestamp_ms >= from)
            && self.to_ms.is_none_or(|to| timestamp_ms <= to)
    }

    /// Records of the partition the window applies, at most.
    pub fn len(&self) -> i64 {
        (self.end - self.start).max(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The window of one replay over all its external inputs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InputWindow {
    pub partitions: HashMap<(String, i32), PartitionBounds>,
}

impl InputWindow {
    /// Whether a record is applied. Records of topics the window does not bound (the
    /// replay's own intermediate topics) always are; a partition of a bounded topic that
    /// the window does not list (created after the replay was planned) never is.
    pub fn admits(&self, topic: &str, partition: i32, offset: i64, timestamp_ms: i64) -> bool {
        match self.partitions.get(&(topic.to_string(), partition)) {
            Some(bounds) => bounds.admits(offset, timestamp_ms),
            None => !self.bounds_topic(topic),
        }
    }

    pub fn bounds_topic(&self, topic: &str) -> bool {
        self.partitions.keys().any(|(t, _)| t == topic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window() -> InputWindow {
        let mut w = InputWindow::default();
        w.partitions.insert(
            ("src".into(), 0),
            PartitionBounds {
                start: 10,
                end: 20,
                from_ms: Some(1_000),
                to_ms: None,
            },
        );
        w
    }

    #[test]
    fn admits_offsets_in_range_and_times_after_from() {
        let w = window();
        assert!(w.admits("src", 0, 10, 1_000));
        assert!(w.admits("src", 0, 19, 5_000));
        assert!(!w.admits("src", 0, 9, 5_000), "before start");
        assert!(!w.admits("src", 0, 20, 5_000), "end is exclusive");
        assert!(!w.admits("src", 0, 15, 999), "earlier than from");
        assert!(!w.admits("src", 1, 15, 5_000), "unplanned partition");
        assert!(w.admits("replay.intermediate", 3, 0, 0), "own topics");
    }
}
