//! A stateless pipeline's step after the row steps: no window, no state; each valid event
//! is one result, carrying its source coordinates.

use super::Engine;
use crate::monitor::DeadLetterReason;
use crate::operators::{decode_key, key_of, Row};
use crate::sink::encode::{DeadLetter, Emitted, Origin};
use crate::source::SourceRecord;
use crate::state::{StateError, Store};

impl Engine<'_> {
    /// A stateless pipeline's event: keyed (when it has a `key_by`) and emitted as it is.
    /// Time still moves, for telemetry and for the watermark `weir status` shows.
    pub(super) fn pass(
        &mut self,
        store: &Store,
        rec: &SourceRecord,
        row: Row,
        ts: i64,
        out: &mut dyn FnMut(Emitted),
        dead: &mut Vec<DeadLetter>,
    ) -> Result<(), StateError> {
        let key = if self.plan.output.key_fields.is_empty() {
            Vec::new()
        } else {
            let mut key = std::mem::take(&mut self.key_buf);
            let k = key_of(self.plan, &self.eval, &row, &mut key).map(|()| decode_key(&key));
            self.key_buf = key;
            match k {
                Ok(k) => k.unwrap_or_default(),
                Err(e) => {
                    self.dead(rec, DeadLetterReason::Expression, e.0, dead);
                    return Ok(());
                }
            }
        };
        self.counters.results_out += 1;
        out(Emitted {
            partition: rec.partition,
            key,
            start: ts,
            end: ts,
            results: Vec::new(),
            seq: 0,
            row,
            origin: Some(Origin {
                topic: rec.topic.clone(),
                offset: rec.offset,
                timestamp: rec.timestamp,
                key: rec.key.clone(),
            }),
        });
        self.advance_time(store, rec.partition, ts, out)
    }
}
