//! Prometheus metrics shared by every component of one process.
//!
//! One [`Metrics`] is created per process and handed to components; all series carry a
//! `component` label so dashboards can follow a stage across sources, processors and sinks.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub events_in: IntCounterVec,
    pub events_out: IntCounterVec,
    pub dead_letters: IntCounterVec,
    pub source_restarts: IntCounterVec,
    pub component_restarts: IntCounterVec,
    pub processing_seconds: HistogramVec,
    pub consumer_lag: IntGaugeVec,
    pub replication_lag_bytes: IntGaugeVec,
    pub slot_retained_wal_bytes: IntGaugeVec,
    pub restore_progress: IntGaugeVec,
    pub snapshot_rows: IntGaugeVec,
    pub snapshot_rows_estimated: IntGaugeVec,
    pub sink_write_seconds: HistogramVec,
    pub sink_batch_rows: HistogramVec,
    pub up: IntGaugeVec,
    pub ready: IntGaugeVec,
    pub circuit_open: IntGaugeVec,
    pub replay_events: IntGaugeVec,
    pub state_memory_bytes: IntGaugeVec,
    /// Every series name defined here (with the `strata_` prefix), for checking
    /// dashboards and alert rules against.
    names: Vec<(String, Kind)>,
}

/// The Prometheus type of a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("strata".into()), None)
            .expect("static prefix is a valid metric name");
        let names = std::cell::RefCell::new(Vec::new());
        let define =
            |name: &str, kind: Kind| names.borrow_mut().push((format!("strata_{name}"), kind));
        let counter = |name: &str, help: &str| {
            define(name, Kind::Counter);
            let c = IntCounterVec::new(Opts::new(name, help), &["component"])
                .expect("static metric definition");
            registry
                .register(Box::new(c.clone()))
                .expect("metric registered once");
            c
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            define(name, Kind::Gauge);
            let g =
                IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric definition");
            registry
                .register(Box::new(g.clone()))
                .expect("metric registered once");
            g
        };
        let histogram = |name: &str, help: &str| {
            define(name, Kind::Histogram);
            let buckets = prometheus::exponential_buckets(0.0001, 2.0, 18).expect("static buckets");
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets),
                &["component"],
            )
            .expect("static metric definition");
            registry
                .register(Box::new(h.clone()))
                .expect("metric registered once");
            h
        };
        Self {
            events_in: counter("events_in_total", "Events read by a component"),
            events_out: counter("events_out_total", "Events written by a component"),
            dead_letters: counter("dead_letters_total", "Events sent to the dead-letter topic"),
            source_restarts: counter(
                "source_restarts_total",
                "Times a source restarted from its confirmed position after a transient failure",
            ),
            component_restarts: counter(
                "component_restarts_total",
                "Times the runtime started a processor or sink again after a transient failure",
            ),
            processing_seconds: histogram(
                "processing_seconds",
                "Time of one cycle: process a batch of events, send its outputs and, when one is due, commit (changelog, state and offsets)",
            ),
            consumer_lag: gauge(
                "consumer_lag",
                "Records behind the end of each input partition",
                &["component", "topic", "partition"],
            ),
            replication_lag_bytes: gauge(
                "replication_lag_bytes",
                "WAL bytes written since a replication slot's confirmed flush position",
                &["component", "slot"],
            ),
            slot_retained_wal_bytes: gauge(
                "slot_retained_wal_bytes",
                "WAL bytes the server retains for a replication slot (from its restart position)",
                &["component", "slot"],
            ),
            restore_progress: gauge(
                "restore_records",
                "Changelog records restored into a state store",
                &["component", "store"],
            ),
            snapshot_rows: gauge(
                "snapshot_rows",
                "Rows of a table read by a source's initial snapshot so far",
                &["slot", "table"],
            ),
            snapshot_rows_estimated: gauge(
                "snapshot_rows_estimated",
                "Rows a source's initial snapshot expects in a table (the planner's estimate, raised to the rows read)",
                &["slot", "table"],
            ),
            sink_write_seconds: histogram(
                "sink_write_seconds",
                "Time to write one batch into a store",
            ),
            sink_batch_rows: {
                define("sink_batch_rows", Kind::Histogram);
                let buckets = prometheus::exponential_buckets(1.0, 4.0, 9).expect("static buckets");
                let h = HistogramVec::new(
                    HistogramOpts::new(
                        "sink_batch_rows",
                        "Records in one batch written to a store",
                    )
                    .buckets(buckets),
                    &["component"],
                )
                .expect("static metric definition");
                registry
                    .register(Box::new(h.clone()))
                    .expect("metric registered once");
                h
            },
            up: gauge(
                "component_up",
                "1 when a component is running",
                &["component"],
            ),
            ready: gauge(
                "component_ready",
                "1 once a component is ready: connected, and a processor's assigned partitions restored",
                &["component"],
            ),
            circuit_open: gauge(
                "source_circuit_open",
                "1 while a source's circuit breaker is open: its server failed repeatedly and is left alone for a while",
                &["component"],
            ),
            state_memory_bytes: gauge(
                "state_memory_bytes",
                "RocksDB memory of the process: `memtables` (bounded by state.memtable_size), `block_cache` (by state.cache_size) and `record_cache` (by state.record_cache_size)",
                &["kind"],
            ),
            replay_events: gauge(
                "replay_events",
                "Input events of a replay: done, or remaining (including those between stages)",
                &["replay", "state"],
            ),
            registry,
            names: names.into_inner(),
        }
    }

    /// Names of the series this process can export: counters and gauges by their name,
    /// histograms also as `_bucket`, `_sum` and `_count`.
    pub fn series_names(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (name, kind) in &self.names {
            out.push(name.clone());
            if *kind == Kind::Histogram {
                for suffix in ["_bucket", "_sum", "_count"] {
                    out.push(format!("{name}{suffix}"));
                }
            }
        }
        out
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        // Encoding into a Vec only fails on invalid metric families, which are static here.
        let _ = encoder.encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_text_format() {
        let m = super::Metrics::new();
        m.events_in.with_label_values(&["pg"]).inc_by(3);
        let text = m.render();
        assert!(
            text.contains("strata_events_in_total{component=\"pg\"} 3"),
            "{text}"
        );
    }
}
