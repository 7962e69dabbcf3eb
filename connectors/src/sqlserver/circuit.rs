//! How long the SQL Server source waits after a failure: exponential backoff, then a
//! circuit breaker.
//!
//! A legacy server that is down or overloaded should not be hammered. After each
//! failure in a row the wait doubles (from 0.5 s up to `max_backoff`); once `open_after`
//! failures came in a row the circuit is open: nothing is tried for `open_for`, then a
//! single trial runs (half-open). Its success closes the circuit; its failure opens it
//! again for another `open_for`. The source runs in its own task, so an open circuit
//! delays only this source, never the others.

use std::time::Duration;

use strata_pipeline::ops::backoff::Backoff;

#[derive(Debug, Clone)]
pub struct Circuit {
    failures: u32,
    backoff: Backoff,
    open_after: u32,
    open_for: Duration,
}

impl Circuit {
    pub fn new(max_backoff: Duration, open_after: u32, open_for: Duration) -> Self {
        Self {
            failures: 0,
            backoff: Backoff::new(Duration::from_millis(500), max_backoff),
            open_after: open_after.max(1),
            open_for,
        }
    }

    /// Records a failure; returns how long to wait before the next try.
    pub fn failed(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        if self.is_open() {
            return self.open_for;
        }
        self.backoff.next_wait()
    }

    /// Records a success: the circuit closes and the backoff starts over.
    pub fn succeeded(&mut self) {
        self.failures = 0;
        self.backoff.reset();
    }

    /// Whether enough failures came in a row to stop trying for a while.
    pub fn is_open(&self) -> bool {
        self.failures >= self.open_after
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backs_off_then_opens_then_closes_on_success() {
        let mut c = Circuit::new(Duration::from_secs(3), 4, Duration::from_secs(60));
        let waits: Vec<_> = (0..3).map(|_| c.failed()).collect();
        assert_eq!(waits, [500, 1000, 2000].map(Duration::from_millis).to_vec());
        assert!(!c.is_open());
        assert_eq!(c.failed(), Duration::from_secs(60), "fourth failure opens");
        assert!(c.is_open());
        assert_eq!(
            c.failed(),
            Duration::from_secs(60),
            "a failed trial reopens"
        );
        c.succeeded();
        assert!(!c.is_open());
        assert_eq!(c.failed(), Duration::from_millis(500));
    }

    #[test]
    fn backoff_is_capped() {
        let mut c = Circuit::new(Duration::from_secs(3), 100, Duration::from_secs(60));
        let last = (0..50).map(|_| c.failed()).last();
        assert_eq!(last, Some(Duration::from_secs(3)));
    }
}
