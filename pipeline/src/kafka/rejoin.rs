//! Rejoining a consumer group whose assignment stays short after a start.
//!
//! An instance killed without leaving the group (kill -9, power loss) stays a member until
//! its session times out. Kafka then rebalances; tansu 0.6.0 drops the dead member only when
//! another member joins, so a restarted instance can sit with a partial or empty
//! assignment for good. The watchdog makes a new instance rejoin, a bounded number of
//! times and only while it holds fewer than all input partitions, once the session timeout
//! has passed; with real peers sharing the work the rejoins are a few extra rebalances at
//! start-up, then it stops.

use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};

/// How long after a (re)join the assignment is checked: past the session timeout.
pub const CHECK_AFTER: Duration = Duration::from_secs(30);
const MAX_REJOINS: u32 = 4;

pub struct Watchdog {
    topics: Vec<String>,
    joined_at: Instant,
    rejoins: u32,
}

impl Watchdog {
    pub fn new(topics: &[String]) -> Self {
        Self {
            topics: topics.to_vec(),
            joined_at: Instant::now(),
            rejoins: 0,
        }
    }

    /// Rejoins when due and the assignment is short; call it regularly (also when idle).
    pub fn check<C: ConsumerContext>(&mut self, consumer: &StreamConsumer<C>, component: &str) {
        if self.rejoins >= MAX_REJOINS || self.joined_at.elapsed() < CHECK_AFTER {
            return;
        }
        let held = consumer.assignment().map(|a| a.count()).unwrap_or(0);
        let total: usize = self
            .topics
            .iter()
            .filter_map(|t| {
                consumer
                    .fetch_metadata(Some(t), Duration::from_secs(5))
                    .ok()
                    .map(|m| {
                        m.topics()
                            .iter()
                            .map(|t| t.partitions().len())
                            .sum::<usize>()
                    })
            })
            .sum();
        if total == 0 || held >= total {
            self.rejoins = MAX_REJOINS; // complete (or nothing to know): stop checking
            return;
        }
        self.rejoins += 1;
        self.joined_at = Instant::now();
        tracing::info!(%component, held, total, attempt = self.rejoins, "assignment short after the session timeout; rejoining the group so partitions of dead members move");
        let topics: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        consumer.unsubscribe();
        if let Err(e) = consumer.subscribe(&topics) {
            tracing::warn!(%component, error = %e, "rejoining the group failed; librdkafka retries");
        }
    }
}
