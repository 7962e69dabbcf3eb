//! Sinks: project processor results into the hot, warm and cold stores, idempotently.

pub mod batching;
pub mod cold;
pub mod hot;
pub mod pg_store;
pub mod warm;
