//! One record through the pipeline: decode and validate, event time, row steps, key,
//! windows, watermark, emission. The engine is driven by a source loop (file replay,
//! the benchmark, and later the Kafka consumer) and never does I/O itself except RocksDB
//! reads on a cache miss.

use crate::monitor::{Counters, DeadLetterReason};
use crate::operators::expr::Evaluator;
use crate::operators::watermark::Watermarks;
use crate::operators::{apply_row_steps, decode_key, key_of, Row, Scalar};
use crate::pipeline::plan::{EventTime, Plan, TimeUnit};
use crate::schema::codec::{into_row, non_finite_field, DecodeError, Decoder};
use crate::schema::json::{fmt_ms, parse_rfc3339_millis};
use crate::sink::encode::{DeadLetter, Emitted};
use crate::source::{Payload, SourceRecord};
use crate::state::windows::{Added, Emission, WindowState};
use crate::state::{StateError, Store};
use apache_avro::types::Value;
use apache_avro::Schema;

pub struct Engine<'p> {
    plan: &'p Plan,
    pub decoder: Decoder,
    /// The writer schema of an Avro container input, when it differs from the reader's.
    container: Option<Schema>,
    eval: Evaluator,
    pub windows: WindowState,
    pub watermarks: Watermarks,
    pub counters: Counters,
    /// The offline clock: the largest event time read so far.
    pub clock: i64,
    key_buf: Vec<u8>,
    /// A replay in progress (records below its positions were counted before the rewind).
    pub replay: Option<crate::state::checkpoint::ReplayGuard>,
}

impl<'p> Engine<'p> {
    pub fn new(plan: &'p Plan, container_schema: Option<Schema>) -> Engine<'p> {
        let src = &plan.source;
        let reader_canon = src.reader_schema.canonical_form();
        Engine {
            plan,
            decoder: Decoder::new(
                src.format,
                src.reader_schema.clone(),
                src.writer_schemas.clone(),
            ),
            container: container_schema.filter(|s| s.canonical_form() != reader_canon),
            eval: Evaluator::default(),
            windows: WindowState::new(plan),
            watermarks: Watermarks::new(src.max_out_of_orderness_ms, src.idle_timeout_ms),
            counters: Counters::default(),
            clock: i64::MIN,
            key_buf: Vec::with_capacity(64),
            replay: None,
        }
    }

    pub fn restore(&mut self, w: Watermarks, c: Counters, clock: i64) {
        self.watermarks = w;
        self.counters = c;
        self.clock = clock;
    }

    fn decode(&self, rec: &SourceRecord) -> Result<Row, (DeadLetterReason, String)> {
        let row = self.decode_any(rec)?;
        match non_finite_field(&row) {
            None => Ok(row),
            Some(i) => {
                let name = match self.decoder.reader_schema() {
                    Schema::Record(r) => r.fields.get(i).map(|f| f.name.as_str()),
                    _ => None,
                };
                Err((
                    DeadLetterReason::Schema,
                    format!(
                        "field `{}` holds NaN or an infinity; events carry finite numbers only (send null in a nullable field for a missing value)",
                        name.unwrap_or("?")
                    ),
                ))
            }
        }
    }

    fn decode_any(&self, rec: &SourceRecord) -> Result<Row, (DeadLetterReason, String)> {
        let map = |e: DecodeError| match e {
            DecodeError::Decode(m) => (DeadLetterReason::Decode, m),
            DecodeError::Schema(m) => (DeadLetterReason::Schema, m),
        };
        match &rec.value {
            Payload::Bytes(b) => self
                .decoder
                .decode_row(b, &self.plan.source.needed)
                .map_err(map),
            Payload::Json(b) => self.decoder.decode_json_row(b).map_err(map),
            Payload::Invalid { reason, .. } => Err((DeadLetterReason::Decode, reason.clone())),
            Payload::Avro { value, .. } => {
                let v = match &self.container {
                    None => value.clone(),
                    Some(_) => value
                        .clone()
                        .resolve(self.decoder.reader_schema())
                        .map_err(|e| {
                            (
                                DeadLetterReason::Schema,
                                format!("cannot resolve to the reader schema: {e}"),
                            )
                        })?,
                };
                into_row(v).map_err(map)
            }
        }
    }

    fn event_time(&self, rec: &SourceRecord, row: &Row) -> Result<i64, String> {
        match &self.plan.source.event_time {
            EventTime::RecordTimestamp => rec
                .timestamp
                .ok_or_else(|| "the record has no timestamp".to_string()),
            EventTime::Field { index, name, unit } => {
                let mut v = &row[*index];
                if let Value::Union(_, inner) = v {
                    v = inner;
                }
                match (v, unit) {
                    (
                        Value::Long(t) | Value::TimestampMillis(t) | Value::LocalTimestampMillis(t),
                        TimeUnit::Millis,
                    ) => Ok(*t),
                    (
                        Value::TimestampMicros(t) | Value::LocalTimestampMicros(t),
                        TimeUnit::Micros,
                    ) => Ok(t.div_euclid(1000)),
                    (Value::String(s), TimeUnit::Rfc3339) => {
                        parse_rfc3339_millis(s).ok_or_else(|| {
                            format!("event time field `{name}` is not an RFC 3339 timestamp: {s:?}")
                        })
                    }
                    (Value::Null, _) => Err(format!("event time field `{name}` is null")),
                    (other, _) => Err(format!(
                        "event time field `{name}` has an unexpected value {other:?}"
                    )),
                }
            }
        }
    }

    fn dead(
        &mut self,
        rec: &SourceRecord,
        reason: DeadLetterReason,
        error: String,
        out: &mut Vec<DeadLetter>,
    ) {
        self.counters.dead_letter(reason);
        out.push(DeadLetter {
            pipeline: self.plan.name.clone(),
            reason,
            error,
            topic: rec.topic.clone(),
            partition: rec.partition,
            offset: rec.offset,
            line: rec.line,
            timestamp: rec.timestamp,
            key: rec.key.clone(),
            value: rec.value.bytes().to_vec(),
        });
    }

    /// Processes one record; results and dead letters are appended to the two vectors.
    pub fn process(
        &mut self,
        store: &Store,
        rec: &SourceRecord,
        out: &mut dyn FnMut(Emitted),
        dead: &mut Vec<DeadLetter>,
    ) -> Result<(), StateError> {
        self.counters.events_in += 1;
        // A record the replay reprocesses was dead-lettered (if it had to be) the first
        // time: it does not go there again.
        let replayed = self.replay.as_mut().map(|g| g.replayed(rec));
        self.windows.replay = self.replay.as_ref().zip(replayed).map(|(g, r)| g.filter(r));
        let mut dead_here = Vec::new();
        let dead_out = if replayed == Some(true) {
            &mut dead_here
        } else {
            dead
        };
        self.process_inner(store, rec, out, dead_out)?;
        for d in dead_here {
            // Not dead-lettered again, so not counted again.
            match d.reason {
                DeadLetterReason::Decode => self.counters.dead_decode -= 1,
                DeadLetterReason::Schema => self.counters.dead_schema -= 1,
                DeadLetterReason::Expression => self.counters.dead_expression -= 1,
                DeadLetterReason::Late => self.counters.dead_late -= 1,
            }
        }
        if let Some(g) = &self.replay {
            if g.done(self.watermarks.current()) {
                tracing::info!(pipeline = %self.plan.name, "replay caught up");
                self.replay = None;
                self.windows.replay = None;
            }
        }
        Ok(())
    }

    fn process_inner(
        &mut self,
        store: &Store,
        rec: &SourceRecord,
        out: &mut dyn FnMut(Emitted),
        dead: &mut Vec<DeadLetter>,
    ) -> Result<(), StateError> {
        let row = match self.decode(rec) {
            Ok(v) => v,
            Err((reason, msg)) => {
                self.dead(rec, reason, msg, dead);
                return Ok(());
            }
        };
        let ts = match self
            .event_time(rec, &row)
            .and_then(crate::operators::window::check_event_time)
        {
            Ok(t) => t,
            Err(msg) => {
                self.dead(rec, DeadLetterReason::Schema, msg, dead);
                return Ok(());
            }
        };
        let row = match apply_row_steps(self.plan, &self.eval, row) {
            Ok(Some(r)) => r,
            Ok(None) => {
                // A filtered event still moves time, as a Flink source watermark or Kafka
                // Streams' stream time would see it: the watermark does not depend on
                // what the filter keeps.
                self.counters.filtered += 1;
                return self.advance_time(store, rec.partition, ts, out);
            }
            Err(e) => {
                self.dead(rec, DeadLetterReason::Expression, e.0, dead);
                return Ok(());
            }
        };
        let mut key = std::mem::take(&mut self.key_buf);
        if let Err(e) = key_of(self.plan, &self.eval, &row, &mut key) {
            self.key_buf = key;
            self.dead(rec, DeadLetterReason::Expression, e.0, dead);
            return Ok(());
        }
        // The partition's own watermark decides lateness (see `operators::watermark`).
        let before = self.watermarks.of(rec.partition);
        match self.windows.add(
            self.plan,
            store,
            rec.partition,
            &key,
            &row,
            ts,
            rec.offset,
            before,
        )? {
            Added::Ok => {}
            Added::Late => {
                let msg = format!("event time {} is behind the watermark of partition {} ({}) beyond the grace period; its windows have closed", fmt_ms(ts), rec.partition, fmt_ms(before));
                self.dead(rec, DeadLetterReason::Late, msg, dead);
            }
        }
        self.advance_time(store, rec.partition, ts, out)
    }

    /// A valid event's time reaches the clock and its partition's watermark; that
    /// partition's windows its watermark has passed close. `emit: update` is paced by the
    /// pipeline watermark.
    fn advance_time(
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
    fn emit(
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
}

fn decode_emission(e: Emission) -> Emitted {
    Emitted {
        partition: e.partition,
        // Keys in state were written by `key_of`; an undecodable one is a bug, shown as null.
        key: decode_key(&e.key).unwrap_or_else(|| vec![Scalar::Null]),
        start: e.start,
        end: e.end,
        results: e.results,
        seq: e.seq,
    }
}

#[cfg(test)]
mod tests;
