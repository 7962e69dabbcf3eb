//! Operating surface: logs, metrics, health endpoints and graceful shutdown.

pub mod backoff;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod shutdown;
