//! `strata run`: runs a topology until SIGTERM or Ctrl-C.

use std::net::SocketAddr;

use strata_pipeline::ops::shutdown::{cancel_on_signal, CancellationToken};
use strata_pipeline::runtime::{self, RunError};
use strata_pipeline::topology::Topology;

pub async fn run(topology: Topology, listen: Option<SocketAddr>) -> Result<(), RunError> {
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    let listen = listen.unwrap_or(topology.observability.listen);
    runtime::run(topology, listen, shutdown).await
}
