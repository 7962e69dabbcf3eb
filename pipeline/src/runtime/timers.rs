//! Finding the timers a watermark advance makes due.
//!
//! Timers live in the `_timers` store, keyed by partition, then due time (sign bit
//! flipped, so keys sort in due order), then name. Those of the batch being processed
//! are in its overlay until the commit: set (`Some`), or fired or cancelled (`None`).
//!
//! Invariants:
//! - Timers fire in key order, each once: the next one is the first live key across the
//!   store and the overlay.
//! - Fired and cancelled timers are deleted, and RocksDB keeps the tombstones until
//!   compaction; a read of stored timers steps over every tombstone it meets. So reads
//!   start at a cursor (where the stored timers not fired yet begin) rather than at the
//!   partition's first key, and go a page at a time.
//! - Past a full page the store may hold timers not read yet: overlay keys beyond the
//!   page's last key wait for the next page, so none fires before a stored one that is
//!   due first.

use std::collections::BTreeMap;

use super::processor::{key_partition, Overlay, TIMERS};
use crate::state::{StateError, StateStore};

/// Stored timers read at a time.
const PAGE: usize = 256;

/// The first live timer key in `[cursor, end)` of the store, or `[start, end)` of the
/// overlay (the batch's timers may be due before the cursor); `None` when none is left.
/// Stored timers before `cursor` must all have fired.
pub(crate) fn next_due(
    store: &dyn StateStore,
    overlay: &Overlay,
    start: &[u8],
    cursor: &[u8],
    end: &[u8],
) -> Result<Option<Vec<u8>>, StateError> {
    let mut cursor = cursor.to_vec();
    loop {
        let page = store.scan_range(TIMERS, &cursor, end, PAGE)?;
        let page_end = (page.len() == PAGE)
            .then(|| page.last().map(|(k, _)| k.clone()))
            .flatten();
        let mut keys: BTreeMap<Vec<u8>, bool> = page.into_iter().map(|(k, _)| (k, true)).collect();
        for (key, value) in overlay.range_from(TIMERS, start) {
            if key.as_slice() >= end || page_end.as_ref().is_some_and(|e| key > e) {
                break;
            }
            keys.insert(key.clone(), value.is_some());
        }
        if let Some((key, _)) = keys.into_iter().find(|(_, live)| *live) {
            return Ok(Some(key));
        }
        match page_end {
            // A page of timers the batch fired or cancelled: read on after it.
            Some(page_end) => cursor = page_end,
            None => return Ok(None),
        }
    }
}

/// The least timer key the batch set (and did not fire) in each partition.
pub(crate) fn first_set(overlay: &Overlay) -> BTreeMap<i32, &[u8]> {
    let mut first: BTreeMap<i32, &[u8]> = BTreeMap::new();
    for (key, _) in overlay
        .range_from(TIMERS, &[])
        .filter(|(_, value)| value.is_some())
    {
        let Some(p) = key_partition(key) else {
            continue;
        };
        // Keys sort by partition first: the first key seen of a partition is its least.
        first.entry(p).or_insert(key);
    }
    first
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::processor::timer_key;
    use crate::state::{Batch, MemoryStore};

    fn stored(due: impl IntoIterator<Item = i64>) -> MemoryStore {
        let store = MemoryStore::new(&[TIMERS]);
        let mut batch = Batch::default();
        for due in due {
            batch.put(TIMERS, timer_key(0, due, b"t"), Vec::new());
        }
        store.write(batch).unwrap();
        store
    }

    fn due_of(key: Option<Vec<u8>>) -> Option<i64> {
        key.and_then(|k| crate::runtime::processor::parse_timer_key(&k))
            .map(|t| t.due_ms)
    }

    #[test]
    fn pages_of_timers_the_batch_cancelled_do_not_hide_the_next_due_one() {
        let store = stored(0..300);
        let mut overlay = Overlay::new();
        for due in 0..290 {
            overlay.insert(TIMERS, timer_key(0, due, b"t"), None);
        }
        let (start, end) = (timer_key(0, i64::MIN, b""), timer_key(0, 1_000, b""));
        let next = next_due(&store, &overlay, &start, &start, &end).unwrap();
        assert_eq!(due_of(next), Some(290));
    }

    #[test]
    fn a_stored_timer_past_a_full_page_fires_before_a_later_one_of_the_batch() {
        let store = stored(0..300);
        let mut overlay = Overlay::new();
        for due in 0..PAGE as i64 {
            overlay.insert(TIMERS, timer_key(0, due, b"t"), None);
        }
        overlay.insert(TIMERS, timer_key(0, 500, b"new"), Some(Vec::new()));
        let (start, end) = (timer_key(0, i64::MIN, b""), timer_key(0, 1_000, b""));
        let next = next_due(&store, &overlay, &start, &start, &end).unwrap();
        assert_eq!(due_of(next), Some(PAGE as i64));
    }

    #[test]
    fn timers_of_the_batch_before_the_cursor_are_due_and_none_past_the_end() {
        let store = stored([5, 2_000]);
        let mut overlay = Overlay::new();
        overlay.insert(TIMERS, timer_key(0, 1, b"late"), Some(Vec::new()));
        let (start, end) = (timer_key(0, i64::MIN, b""), timer_key(0, 1_000, b""));
        let cursor = timer_key(0, 10, b"");
        let next = next_due(&store, &overlay, &start, &cursor, &end).unwrap();
        assert_eq!(due_of(next), Some(1));
        let next = next_due(&store, &Overlay::new(), &start, &cursor, &end).unwrap();
        assert_eq!(
            due_of(next),
            None,
            "the timer due at 5 is before the cursor: fired"
        );
    }

    #[test]
    fn the_first_timer_set_is_found_per_partition() {
        let mut overlay = Overlay::new();
        overlay.insert(TIMERS, timer_key(1, 7, b"a"), Some(Vec::new()));
        overlay.insert(TIMERS, timer_key(1, 3, b"b"), None);
        overlay.insert(TIMERS, timer_key(1, 9, b"c"), Some(Vec::new()));
        overlay.insert(TIMERS, timer_key(2, -4, b"d"), Some(Vec::new()));
        overlay.insert("_other", timer_key(0, 0, b"e"), Some(Vec::new()));
        let first: Vec<(i32, Option<i64>)> = first_set(&overlay)
            .into_iter()
            .map(|(p, k)| (p, due_of(Some(k.to_vec()))))
            .collect();
        assert_eq!(first, vec![(1, Some(7)), (2, Some(-4))]);
    }
}
