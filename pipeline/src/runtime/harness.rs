//! Runs a [`Processor`] over events in memory, with the runtime's semantics (scratch
//! discarded on rejection, watermark and timers per partition) but no Kafka or RocksDB:
//! for processor tests and quality measurements.

use super::processor::{
    parse_timer_key, partition_key, timer_key, Context, Event, Output, Overlay, ProcessError,
    Processor, LOCAL, POSITIONS, PROGRESS, TIMERS,
};
use crate::state::{Batch, MemoryStore, StateStore};

pub struct Harness<P> {
    pub processor: P,
    store: Box<dyn StateStore>,
    watermarks: std::collections::HashMap<i32, i64>,
}

/// Every store a processor's state needs: its own and the runtime's.
pub fn store_names<P: Processor>(processor: &P) -> Vec<&'static str> {
    let mut stores = processor.stores();
    stores.extend([POSITIONS, TIMERS, PROGRESS, LOCAL]);
    stores
}

impl<P: Processor> Harness<P> {
    /// State in memory.
    pub fn new(processor: P) -> Self {
        let store = MemoryStore::new(&store_names(&processor));
        Self::with_store(processor, Box::new(store))
    }

    /// State in `store`, which must hold every store of [`store_names`].
    pub fn with_store(processor: P, store: Box<dyn StateStore>) -> Self {
        Self {
            store,
            processor,
            watermarks: Default::default(),
        }
    }

    fn commit(&self, overlay: Overlay) -> Result<(), ProcessError> {
        let batch = Batch {
            ops: overlay
                .into_changes()
                .map(|(s, k, v)| (s.to_string(), k, v))
                .collect(),
        };
        Ok(self.store.write(batch)?)
    }

    /// Processes one event and the timers it makes due; returns what they emitted.
    pub fn feed(&mut self, event: &Event<'_>) -> Result<Vec<Output>, ProcessError> {
        let p = event.partition;
        let watermark = *self.watermarks.get(&p).unwrap_or(&i64::MIN);
        let event_time = self.processor.event_time(event);
        let overlay = Overlay::new();
        let mut ctx = Context::new(p, self.store.as_ref(), &overlay, watermark);
        self.processor.process(event, &mut ctx)?;
        let (scratch, mut outputs) = ctx.into_parts();
        self.commit(scratch)?;
        if event_time > watermark {
            self.watermarks.insert(p, event_time);
            let end = timer_key(p, event_time.saturating_add(1), b"");
            loop {
                let due = self
                    .store
                    .scan_range(TIMERS, &timer_key(p, i64::MIN, b""), &end, 1)?;
                let Some((key, _)) = due.into_iter().next() else {
                    break;
                };
                let mut done = Batch::default();
                done.delete(TIMERS, key.clone());
                self.store.write(done)?;
                let Some(timer) = parse_timer_key(&key) else {
                    continue;
                };
                let overlay = Overlay::new();
                let mut ctx = Context::new(p, self.store.as_ref(), &overlay, event_time);
                self.processor.on_timer(&timer, &mut ctx)?;
                let (scratch, fired) = ctx.into_parts();
                self.commit(scratch)?;
                outputs.extend(fired);
            }
            let mut progress = Batch::default();
            progress.put(
                PROGRESS,
                partition_key(p, b"watermark"),
                event_time.to_be_bytes().to_vec(),
            );
            self.store.write(progress)?;
        }
        Ok(outputs)
    }

    /// Processes `events` as one batch, the way the runtime does between commits: reads
    /// see earlier events' changes, and one write commits them all. Timers are not fired.
    /// Returns the number of outputs.
    pub fn feed_batch(&mut self, events: &[Event<'_>]) -> Result<usize, ProcessError> {
        let mut batch = Overlay::new();
        let mut outputs = 0;
        for event in events {
            let watermark = *self.watermarks.get(&event.partition).unwrap_or(&i64::MIN);
            let mut ctx = Context::new(event.partition, self.store.as_ref(), &batch, watermark);
            self.processor.process(event, &mut ctx)?;
            let (scratch, out) = ctx.into_parts();
            outputs += out.len();
            batch.extend(scratch);
        }
        self.commit(batch)?;
        Ok(outputs)
    }
}
