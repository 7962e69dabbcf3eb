//! The [`Source`] trait: the seam between a change-data capture reader and Kafka.
//!
//! Contract of a source:
//! - **Delivery: at least once, effectively once.** Every committed change of a captured
//!   table becomes one event in its table's topic. After a crash, the changes after the
//!   last position acknowledged upstream are sent again, each with its original position,
//!   so a consumer can tell a re-sent event from a new one.
//! - **Order.** Events are keyed by primary key and sent in commit order, a transaction's
//!   changes together and in their order within it; so one row's events sit in one
//!   partition in the order they were committed.
//! - **Acknowledgement upstream** (PostgreSQL's confirmed flush LSN, SQL Server's stored
//!   LSN) moves to a position only after Kafka acknowledged every event up to it.
//! - **Errors.** Transient failures (the database or the broker away for a while) are
//!   retried inside [`Source::run`] with backoff, from the acknowledged position; `run`
//!   returns `Ok` on shutdown and an error only for something that needs a person
//!   (settings, prerequisites, a lost slot, data it cannot map).

use futures::future::BoxFuture;

use crate::ops::shutdown::CancellationToken;

/// A definite failure of a source, kept with its cause.
pub type SourceFailure = Box<dyn std::error::Error + Send + Sync>;

pub trait Source: Send {
    /// Runs until `shutdown` (then returns `Ok` once in-flight events are settled) or a
    /// definite failure.
    fn run(
        self: Box<Self>,
        shutdown: CancellationToken,
    ) -> BoxFuture<'static, Result<(), SourceFailure>>;
}
