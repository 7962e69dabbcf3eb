//! The one registration point: every component kind a topology file can name, and
//! which of them this build can run.
//!
//! Adding a source, processor or sink means adding it here.

use std::sync::Arc;

use strata_connectors::sinks::{
    self, batching::Batching, cold::ColdSinkConfig, hot::HotSinkConfig, warm::WarmSinkConfig,
};
use strata_pipeline::avro::Codec;
use strata_pipeline::ops::metrics::Metrics;
use strata_pipeline::ops::shutdown::CancellationToken;
use strata_pipeline::processors;
use strata_pipeline::runtime::{
    processor_spec, run_processor, run_sink, sink_spec, ComponentError, ComponentTask, Processor,
    ProcessorEnv, Sink, Source, Starter,
};
use strata_pipeline::state::StateMemory;
use strata_pipeline::topology::{parse_settings, Catalog, Component, SettingsError, Topology};

/// A task that fails at once with a settings error (validation normally catches these).
fn settings_error(e: SettingsError) -> ComponentTask {
    let message = format!("{}: {}", e.path, e.message);
    Box::pin(async move { Err(ComponentError::definite(message)) })
}

pub fn catalog() -> Catalog {
    Catalog::new()
        .with(strata_connectors::postgres::kind())
        .with(strata_connectors::sqlserver::kind())
        .with(processors::conflict_resolution::kind())
        .with(processors::claim_analysis::kind())
        .with(processors::claim_assembly::kind())
        .with(processors::tiering::kind())
        .with(strata_connectors::sinks::hot::kind())
        .with(strata_connectors::sinks::warm::kind())
        .with(strata_connectors::sinks::cold::kind())
}

/// Points sink `component` at its replay tables: PostgreSQL stores write to schema
/// `<schema>_replay_<name>` (created by their migrations), archives under
/// `<path>/replay-<name>`, and archives evict from the replay schemas.
pub fn redirect_to_replay_tables(component: &mut Component, name: &str) -> Result<(), String> {
    let settings = component
        .settings
        .as_mapping_mut()
        .ok_or_else(|| format!("sink `{}` has no settings", component.name))?;
    let schema = |current: Option<&serde_yaml_ng::Value>, default: &str| {
        let base = current.and_then(|v| v.as_str()).unwrap_or(default);
        serde_yaml_ng::Value::from(format!("{base}_replay_{name}"))
    };
    match component.kind.as_str() {
        "hot_store" | "warm_store" => {
            let default = if component.kind == "hot_store" {
                HotSinkConfig::DEFAULT_SCHEMA
            } else {
                WarmSinkConfig::DEFAULT_SCHEMA
            };
            let replay = schema(settings.get("schema"), default);
            settings.insert("schema".into(), replay);
        }
        "cold_archive" => {
            let path = settings
                .get("path")
                .and_then(|v| v.as_str())
                .ok_or_else(|| format!("sink `{}` has no path", component.name))?;
            let replay = format!("{}/replay-{name}", path.trim_end_matches('/'));
            settings.insert("path".into(), replay.into());
            if let Some(targets) = settings
                .get_mut("evict_from")
                .and_then(|v| v.as_sequence_mut())
            {
                for target in targets.iter_mut().filter_map(|t| t.as_mapping_mut()) {
                    let replay = schema(target.get("schema"), "warm");
                    target.insert("schema".into(), replay);
                }
            }
        }
        other => {
            return Err(format!(
                "sink `{}` is a {other}, which has no replay tables; replay into the live stores (--into live)",
                component.name
            ))
        }
    }
    Ok(())
}

/// Starts runnable components; shares one schema cache and one RocksDB memory budget
/// between them.
pub struct Components {
    pub codec: Arc<Codec>,
    pub state_memory: StateMemory,
}

impl Starter for Components {
    fn start(
        &self,
        topology: &Topology,
        component: &Component,
        metrics: &Metrics,
        shutdown: CancellationToken,
    ) -> Option<ComponentTask> {
        let processor: Box<dyn Processor> = match component.kind.as_str() {
            "conflict_resolution" => match parse_settings(&component.settings) {
                Ok(c) => Box::new(processors::conflict_resolution::ConflictResolution::new(
                    c,
                    &topology.region,
                )),
                Err(e) => return Some(settings_error(e)),
            },
            "claim_analysis" => match parse_settings(&component.settings) {
                Ok(c) => Box::new(processors::claim_analysis::ClaimAnalysis::new(c)),
                Err(e) => return Some(settings_error(e)),
            },
            "claim_assembly" => match parse_settings(&component.settings) {
                Ok(c) => Box::new(processors::claim_assembly::ClaimAssembly::new(c)),
                Err(e) => return Some(settings_error(e)),
            },
            "tiering" => {
                match parse_settings(&component.settings).map(processors::tiering::Tiering::new) {
                    Ok(Ok(tiering)) => Box::new(tiering),
                    Ok(Err(key)) => {
                        let message = format!("component `{}`: {key}", component.name);
                        return Some(Box::pin(
                            async move { Err(ComponentError::definite(message)) },
                        ));
                    }
                    Err(e) => return Some(settings_error(e)),
                }
            }
            _ => return self.start_connector(topology, component, metrics, shutdown),
        };
        let spec = processor_spec(topology, component, self);
        let env = ProcessorEnv {
            kafka: topology.kafka.clone(),
            codec: self.codec.clone(),
            metrics: metrics.clone(),
            state_memory: self.state_memory.clone(),
        };
        Some(Box::pin(async move {
            run_processor(spec, env, processor, shutdown)
                .await
                .map_err(ComponentError::from)
        }))
    }

    fn source_topics(&self, topology: &Topology, component: &Component) -> Vec<String> {
        match component.kind.as_str() {
            "postgres" => parse_settings(&component.settings)
                .map(|c| strata_connectors::postgres::source::topics(&c, &topology.region))
                .unwrap_or_default(),
            "sqlserver" => parse_settings(&component.settings)
                .map(|c| strata_connectors::sqlserver::source::topics(&c, &topology.region))
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }
}

impl Components {
    /// Sources and sinks: each connector kind this build can run.
    fn start_connector(
        &self,
        topology: &Topology,
        component: &Component,
        metrics: &Metrics,
        shutdown: CancellationToken,
    ) -> Option<ComponentTask> {
        let (sink, batching): (Box<dyn Sink>, Batching) = match component.kind.as_str() {
            "hot_store" => match parse_settings::<HotSinkConfig>(&component.settings) {
                Ok(c) => (
                    Box::new(sinks::hot::store(&c, self.codec.clone())),
                    c.batching,
                ),
                Err(e) => return Some(settings_error(e)),
            },
            "warm_store" => match parse_settings::<WarmSinkConfig>(&component.settings) {
                Ok(c) => (
                    Box::new(sinks::warm::store(&c, self.codec.clone())),
                    c.batching,
                ),
                Err(e) => return Some(settings_error(e)),
            },
            "cold_archive" => match parse_settings::<ColdSinkConfig>(&component.settings) {
                Ok(c) => {
                    let batching = Batching {
                        max_rows: 50_000,
                        max_wait: c.roll_interval,
                        ..Batching::default()
                    };
                    (
                        Box::new(sinks::cold::ColdSink::new(&c, self.codec.clone())),
                        batching,
                    )
                }
                Err(e) => return Some(settings_error(e)),
            },
            _ => return self.start_source(topology, component, metrics, shutdown),
        };
        let spec = sink_spec(
            topology,
            component,
            self,
            batching.max_rows as usize,
            batching.max_wait.0,
        );
        let (kafka, codec, metrics) = (topology.kafka.clone(), self.codec.clone(), metrics.clone());
        Some(Box::pin(async move {
            run_sink(spec, kafka, codec, metrics, sink, shutdown)
                .await
                .map_err(ComponentError::from)
        }))
    }

    fn start_source(
        &self,
        topology: &Topology,
        component: &Component,
        metrics: &Metrics,
        shutdown: CancellationToken,
    ) -> Option<ComponentTask> {
        match component.kind.as_str() {
            "postgres" => {
                let config: strata_connectors::postgres::PostgresSourceConfig =
                    match parse_settings(&component.settings) {
                        Ok(c) => c,
                        Err(e) => return Some(settings_error(e)),
                    };
                let source: Box<dyn Source> =
                    Box::new(strata_connectors::postgres::source::PostgresSource {
                        config,
                        context: source_context(topology, component, &self.codec, metrics),
                    });
                Some(Box::pin(async move {
                    source
                        .run(shutdown)
                        .await
                        .map_err(|e| ComponentError::definite(e.to_string()))
                }))
            }
            "sqlserver" => {
                use strata_connectors::sqlserver::{pool::TdsPool, source::SqlServerSource};
                let config: strata_connectors::sqlserver::SqlServerSourceConfig =
                    match parse_settings(&component.settings) {
                        Ok(c) => c,
                        Err(e) => return Some(settings_error(e)),
                    };
                let pool = match TdsPool::new(
                    config.client_config(),
                    &config.database,
                    config.pool_size,
                    config.connect_timeout.0,
                ) {
                    Ok(pool) => pool,
                    Err(e) => {
                        let error = ComponentError::definite(e.to_string());
                        return Some(Box::pin(async move { Err(error) }));
                    }
                };
                let source: Box<dyn Source> = Box::new(SqlServerSource {
                    config,
                    context: source_context(topology, component, &self.codec, metrics),
                    connect: Box::new(pool),
                });
                Some(Box::pin(async move {
                    source
                        .run(shutdown)
                        .await
                        .map_err(|e| ComponentError::definite(e.to_string()))
                }))
            }
            _ => None,
        }
    }
}

/// What every source gets from the deployment.
fn source_context(
    topology: &Topology,
    component: &Component,
    codec: &Arc<Codec>,
    metrics: &Metrics,
) -> strata_connectors::emitter::SourceContext {
    strata_connectors::emitter::SourceContext {
        component: component.name.clone(),
        region: topology.region.clone(),
        kafka: topology.kafka.clone(),
        partitions: topology.topics.partitions,
        replication_factor: topology.topics.replication_factor,
        codec: codec.clone(),
        metrics: metrics.clone(),
    }
}
