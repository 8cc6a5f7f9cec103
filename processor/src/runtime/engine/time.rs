//! Time moving: an event's time closing its partition's windows, the end of a bounded
//! input, and (`watermark.idle_advance`, Kafka) the wall clock when traffic stops.

use super::{decode_emission, Engine};
use crate::sink::encode::Emitted;
use crate::state::windows::Emission;
use crate::state::{StateError, Store};

impl Engine<'_> {
    /// A valid event's time reaches the clock and its partition's watermark; that
    /// partition's windows its watermark has passed close. `emit: update` is paced by the
    /// pipeline watermark.
    pub(super) fn advance_time(
        &mut self,
        store: &Store,
        partition: u32,
        ts: i64,
        out: &mut dyn FnMut(Emitted),
    ) -> Result<(), StateError> {
        self.clock = self.clock.max(ts);
        self.watermarks.observe(partition, ts, self.clock);
        let wm = self.watermarks.advance(self.clock);
        let own = self.watermarks.of(partition);
        self.emit(store, wm, Some((partition, own)), out)
    }

    /// Updates due at pipeline watermark `wm`, then the windows that close: `closing`'s
    /// partition at its watermark, or (`None`) every partition at `wm`.
    pub(super) fn emit(
        &mut self,
        store: &Store,
        wm: i64,
        closing: Option<(u32, i64)>,
        out: &mut dyn FnMut(Emitted),
    ) -> Result<(), StateError> {
        let mut n = 0u64;
        let mut each = |e: Emission| {
            n += 1;
            out(decode_emission(e));
        };
        self.windows.take_updates(wm, store, &mut each)?;
        match closing {
            Some((p, own)) => self.windows.close_until(Some(p), own, store, &mut each)?,
            None => self.windows.close_until(None, wm, store, &mut each)?,
        }
        self.counters.results_out += n;
        Ok(())
    }

    /// The end of a bounded input: the watermark jumps to the end of time and every open
    /// window emits.
    pub fn finish(
        &mut self,
        store: &Store,
        out: &mut dyn FnMut(Emitted),
    ) -> Result<(), StateError> {
        let wm = self.watermarks.finish();
        self.emit(store, wm, None, out)
    }

    /// `watermark.idle_advance`: the driver saw no record for that long. Every partition
    /// that has shown an event time moves to the wall clock `now` (when behind it), and
    /// closes the windows its watermark (`now - max_out_of_orderness`) has passed. Returns
    /// whether any partition moved.
    pub fn advance_idle(
        &mut self,
        store: &Store,
        now: i64,
        out: &mut dyn FnMut(Emitted),
    ) -> Result<bool, StateError> {
        if !self.watermarks.advance_to(now) {
            return Ok(false);
        }
        self.clock = self.clock.max(now);
        let wm = self.watermarks.advance(self.clock);
        let parts: Vec<u32> = self
            .watermarks
            .partitions()
            .filter(|(_, ts)| *ts != i64::MIN)
            .map(|(p, _)| p)
            .collect();
        for p in parts {
            let own = self.watermarks.of(p);
            self.emit(store, wm, Some((p, own)), out)?;
        }
        Ok(true)
    }
}
