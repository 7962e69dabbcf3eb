//! `strata run`: runs a topology until SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::sync::Arc;

use strata::components::Components;
use strata_pipeline::avro::Codec;
use strata_pipeline::ops::shutdown::{cancel_on_signal, CancellationToken};
use strata_pipeline::runtime;
use strata_pipeline::state::StateMemory;
use strata_pipeline::topology::Topology;

pub async fn run(topology: Topology, listen: Option<SocketAddr>) -> Result<(), String> {
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    let listen = listen.unwrap_or(topology.observability.listen);
    let codec = Codec::new(&topology.schema_registry).map_err(|e| e.to_string())?;
    let components = Components {
        codec: Arc::new(codec),
        state_memory: StateMemory::from_settings(&topology.state),
    };
    let metrics = strata_pipeline::ops::metrics::Metrics::new();
    runtime::run(topology, listen, &components, metrics, shutdown)
        .await
        .map_err(|e| e.to_string())
}
