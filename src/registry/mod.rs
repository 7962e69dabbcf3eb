//! `strata registry`: a Confluent-compatible schema registry for local runs and tests.
//!
//! Production deployments point Strata at Confluent Schema Registry, Karapace or
//! Apicurio; this one exists so the quickstart and the tests need no JVM. It serves the
//! subset of the REST API that serializers and the common tools use (see [`api`]).

pub mod api;
pub mod auth;
pub mod compat;
mod params;
pub mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use strata_pipeline::ops::shutdown::{cancel_on_signal, CancellationToken};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("cannot listen on {addr}: {source}; is another registry running there?")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the registry server failed: {0}")]
    Serve(#[source] std::io::Error),
}

/// Serves the registry on `listen` until SIGTERM or Ctrl-C.
pub async fn serve(
    listen: SocketAddr,
    data_dir: PathBuf,
    auth: Option<auth::WriteAuth>,
) -> Result<(), RegistryError> {
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| RegistryError::Bind {
            addr: listen,
            source,
        })?;
    serve_on(listener, data_dir, auth, shutdown).await
}

/// Serves the registry on an already bound listener until `shutdown` is cancelled.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    data_dir: PathBuf,
    auth: Option<auth::WriteAuth>,
    shutdown: CancellationToken,
) -> Result<(), RegistryError> {
    let store = store::Store::open(&data_dir)?;
    tracing::info!(
        dir = %data_dir.display(),
        subjects = store.subjects.len(),
        schemas = store.schemas.len(),
        "registry state loaded"
    );
    let listen = listener.local_addr().map_err(RegistryError::Serve)?;
    tracing::info!(%listen, write_auth = auth.is_some(), "schema registry listening");
    let router = api::router(Arc::new(Mutex::new(store))).layer(
        axum::middleware::from_fn_with_state(auth, auth::require_for_writes),
    );
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .map_err(RegistryError::Serve)
}
