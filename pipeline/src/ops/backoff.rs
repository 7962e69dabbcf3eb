//! Exponential backoff between retries, shared by the sources and the runtime: the
//! first wait, doubling after each failure up to a cap; callers say when it starts over
//! (a success, or a long enough run since the last failure).

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        let max = max.max(first);
        Self {
            first,
            max,
            next: first,
        }
    }

    /// The wait before the next try; the one after it doubles (up to the cap).
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        wait
    }

    /// The next wait is the first again.
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_starts_over_on_reset() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(500), ms(3000));
        let waits: Vec<_> = (0..5).map(|_| b.next_wait()).collect();
        assert_eq!(waits, [500, 1000, 2000, 3000, 3000].map(ms).to_vec());
        b.reset();
        assert_eq!(b.next_wait(), ms(500));
    }
}
