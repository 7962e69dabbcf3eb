//! Consumer lag per input partition, from librdkafka's statistics (every
//! [`STATISTICS_INTERVAL_MS`]): records between a component's position and the end of the
//! partition, exported as `strata_consumer_lag{component,topic,partition}`. Partitions the
//! consumer does not hold (revoked, or never assigned) are removed from the gauge.

use prometheus::IntGaugeVec;
use rdkafka::consumer::ConsumerContext;
use rdkafka::statistics::Statistics;
use rdkafka::ClientContext;

use crate::ops::metrics::Metrics;

/// How often librdkafka reports statistics, ms; set as `statistics.interval.ms`.
pub const STATISTICS_INTERVAL_MS: &str = "5000";

pub struct LagReporter {
    component: String,
    gauge: IntGaugeVec,
}

impl LagReporter {
    pub fn new(component: &str, metrics: &Metrics) -> Self {
        Self {
            component: component.to_string(),
            gauge: metrics.consumer_lag.clone(),
        }
    }

    pub fn record(&self, stats: &Statistics) {
        for (topic, t) in &stats.topics {
            for (partition, p) in &t.partitions {
                if *partition < 0 {
                    continue; // librdkafka's internal "UA" partition
                }
                let labels = [self.component.as_str(), topic, &partition.to_string()];
                if p.consumer_lag >= 0 {
                    self.gauge.with_label_values(&labels).set(p.consumer_lag);
                } else {
                    let _ = self.gauge.remove_label_values(&labels);
                }
            }
        }
    }
}

/// A consumer context that only reports lag.
pub struct LagContext(pub LagReporter);

impl ClientContext for LagContext {
    fn stats(&self, statistics: Statistics) {
        self.0.record(&statistics);
    }
}

impl ConsumerContext for LagContext {}
