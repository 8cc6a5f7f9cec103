//! One record through the pipeline: decode and validate, event time, row steps, key,
//! windows, watermark, emission. A stateless pipeline (no window, no aggregate) emits the
//! row right after the row steps and the key (`Engine::pass`). The engine is driven by the
//! driver's loop (file replay, Kafka, the re-feed, the benchmark) and never does I/O itself
//! except RocksDB reads on a cache miss.

use crate::monitor::{Counters, DeadLetterReason};
use crate::operators::expr::Evaluator;
use crate::operators::repartition::{partition_of, project, unproject, Hop, Orig, Upstream};
use crate::operators::watermark::Watermarks;
use crate::operators::{apply_row_steps, decode_key, key_of, Row, Scalar};
use crate::pipeline::plan::{EventTime, Plan, Stage, TimeUnit};
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
    /// Re-keying: what each downstream partition knows of its upstream partitions
    /// (downstream, and offline in partition 0).
    pub upstream: std::collections::BTreeMap<u32, Upstream>,
    /// Upstream: (downstream partition, key, value) of the repartition records to send.
    pub routed: Vec<(u32, Vec<u8>, Vec<u8>)>,
    /// Upstream: the repartition topic's partition count.
    pub hop_partitions: u32,
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
            upstream: Default::default(),
            routed: Vec::new(),
            hop_partitions: 1,
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
        if self.plan.stage == Stage::Downstream {
            return self.process_hop(store, rec, out, dead);
        }
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
                return self.moved(store, rec.partition, ts, out);
            }
            Err(e) => {
                self.dead(rec, DeadLetterReason::Expression, e.0, dead);
                return Ok(());
            }
        };
        if self.plan.stateless {
            return self.pass(store, rec, row, ts, out, dead);
        }
        let mut key = std::mem::take(&mut self.key_buf);
        if let Err(e) = key_of(self.plan, &self.eval, &row, &mut key) {
            self.key_buf = key;
            self.dead(rec, DeadLetterReason::Expression, e.0, dead);
            return Ok(());
        }
        let r = if self.plan.repartition.is_some() {
            self.rekeyed(store, rec, &key, &row, ts, out, dead)
        } else {
            // The partition's own watermark decides lateness (see `operators::watermark`).
            let before = self.watermarks.of(rec.partition);
            self.add(
                store,
                rec.partition,
                &key,
                &row,
                ts,
                rec.offset,
                before,
                rec,
                None,
                dead,
            )
            .and_then(|()| self.advance_time(store, rec.partition, ts, out))
        };
        self.key_buf = key;
        r
    }

    /// Adds an event to its windows at `watermark`; a late one goes to the dead letter as
    /// `rec` (or, downstream of a repartition, as its original record `orig`).
    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        store: &Store,
        partition: u32,
        key: &[u8],
        row: &Row,
        ts: i64,
        offset: i64,
        watermark: i64,
        rec: &SourceRecord,
        orig: Option<&Orig>,
        dead: &mut Vec<DeadLetter>,
    ) -> Result<(), StateError> {
        let added = self
            .windows
            .add(self.plan, store, partition, key, row, ts, offset, watermark)?;
        if added == Added::Late {
            let src = orig.map_or(rec.partition, |o| o.partition);
            let msg = late(ts, src, watermark);
            match orig {
                None => self.dead(rec, DeadLetterReason::Late, msg, dead),
                Some(o) => {
                    let r = SourceRecord {
                        topic: o.topic.clone(),
                        partition: o.partition,
                        offset: o.offset,
                        line: 0,
                        timestamp: o.timestamp,
                        key: o.key.clone(),
                        value: Payload::Bytes(o.value.clone()),
                    };
                    self.dead(&r, DeadLetterReason::Late, msg, dead);
                }
            }
        }
        Ok(())
    }

    /// Time moved on partition `partition` (a valid event, kept or filtered).
    fn moved(
        &mut self,
        store: &Store,
        partition: u32,
        ts: i64,
        out: &mut dyn FnMut(Emitted),
    ) -> Result<(), StateError> {
        match self.plan.stage {
            _ if self.plan.repartition.is_none() => self.advance_time(store, partition, ts, out),
            Stage::Upstream => {
                self.clock = self.clock.max(ts);
                self.watermarks.observe(partition, ts, self.clock);
                self.watermarks.advance(self.clock);
                Ok(())
            }
            _ => {
                // Offline, one engine is both stages: the upstream partition's time is a
                // marker the moment it moves.
                self.upstream.entry(0).or_default().mark(partition, ts, 0);
                self.downstream_time(store, 0, ts, out)
            }
        }
    }

    /// A valid, keyed event of a pipeline that re-keys: upstream, it goes to the
    /// repartition topic; offline, straight to the windows of the one downstream
    /// partition. Either way it is late exactly when its own partition's watermark (its
    /// stamp) has closed its windows (see [`crate::operators::repartition`]).
    #[allow(clippy::too_many_arguments)]
    fn rekeyed(
        &mut self,
        store: &Store,
        rec: &SourceRecord,
        key: &[u8],
        row: &Row,
        ts: i64,
        out: &mut dyn FnMut(Emitted),
        dead: &mut Vec<DeadLetter>,
    ) -> Result<(), StateError> {
        let ooo = self.plan.source.max_out_of_orderness_ms;
        let (stamp, session) = match self.plan.stage {
            Stage::Upstream => (self.watermarks.of(rec.partition), self.is_session()),
            _ => {
                let max = self
                    .upstream
                    .get(&0)
                    .map_or(i64::MIN, |u| u.max_of(rec.partition));
                (max.saturating_sub(ooo), self.is_session())
            }
        };
        if self.plan.stage == Stage::Upstream {
            if !session && self.closed_by(ts, stamp) {
                let msg = late(ts, rec.partition, stamp);
                self.dead(rec, DeadLetterReason::Late, msg, dead);
            } else {
                // A session event may be found late downstream: it carries its record.
                let maybe_late = session && self.closed_by(ts, stamp);
                let hop = Hop::Event {
                    sp: rec.partition,
                    so: rec.offset,
                    ts,
                    stamp,
                    key: key.to_vec(),
                    fields: project(self.plan, row),
                    orig: maybe_late.then(|| Orig {
                        topic: rec.topic.clone(),
                        partition: rec.partition,
                        offset: rec.offset,
                        timestamp: rec.timestamp,
                        key: rec.key.clone(),
                        value: rec.value.bytes().to_vec(),
                    }),
                };
                let dp = partition_of(key, self.hop_partitions);
                self.routed.push((dp, key.to_vec(), hop.encode()));
            }
            return self.moved(store, rec.partition, ts, out);
        }
        let wm = stamp.max(self.watermarks.of(0));
        self.add(store, 0, key, row, ts, rec.offset, wm, rec, None, dead)?;
        self.moved(store, rec.partition, ts, out)
    }

    fn is_session(&self) -> bool {
        matches!(
            self.plan.window.assigner,
            crate::pipeline::plan::WindowAssigner::Session { .. }
                | crate::pipeline::plan::WindowAssigner::Table { .. }
        )
    }

    /// Whether every window of an event at `ts` has closed at `watermark` (a session: the
    /// event's own session would have).
    fn closed_by(&self, ts: i64, watermark: i64) -> bool {
        let grace = self.plan.window.grace;
        let mut w = Vec::new();
        match self.plan.window.assigner {
            crate::pipeline::plan::WindowAssigner::Session { gap } => {
                w.push((ts, ts.saturating_add(gap)))
            }
            crate::pipeline::plan::WindowAssigner::Table { ttl } => {
                w.push((ts, ts.saturating_add(ttl.unwrap_or(i64::MAX))))
            }
            a => crate::operators::window::assign(a, ts, &mut w),
        }
        w.iter()
            .all(|(_, end)| watermark >= end.saturating_add(grace))
    }

    /// A record of the repartition topic, downstream: an event for the windows of this
    /// partition, or an upstream partition's marker that may close them.
    fn process_hop(
        &mut self,
        store: &Store,
        rec: &SourceRecord,
        out: &mut dyn FnMut(Emitted),
        dead: &mut Vec<DeadLetter>,
    ) -> Result<(), StateError> {
        let hop = match Hop::decode(rec.value.bytes()) {
            Ok(h) => h,
            Err(msg) => {
                self.dead(rec, DeadLetterReason::Decode, msg, dead);
                return Ok(());
            }
        };
        let dp = rec.partition;
        match hop {
            Hop::Marker { sp, max, total } => {
                self.counters.events_in -= 1; // not an event
                self.upstream.entry(dp).or_default().mark(sp, max, total);
                self.downstream_time(store, dp, i64::MIN, out)
            }
            Hop::Event {
                sp,
                so,
                ts,
                stamp,
                key,
                fields,
                orig,
            } => {
                let up = self.upstream.entry(dp).or_default();
                if up.seen(sp, so) {
                    // Sent again by an upstream that restarted: applied already.
                    self.counters.events_in -= 1;
                    return Ok(());
                }
                up.applied(sp, so);
                let row = unproject(self.plan, &fields);
                let wm = stamp.max(self.watermarks.of(dp));
                self.add(store, dp, &key, &row, ts, so, wm, rec, orig.as_ref(), dead)?;
                self.downstream_time(store, dp, ts, out)
            }
        }
    }

    /// A downstream partition's time: its watermark part is the low mark of its upstream
    /// partitions; the windows it passed close.
    fn downstream_time(
        &mut self,
        store: &Store,
        dp: u32,
        ts: i64,
        out: &mut dyn FnMut(Emitted),
    ) -> Result<(), StateError> {
        self.clock = self.clock.max(ts);
        let low = self.upstream.get(&dp).map_or(i64::MIN, |u| u.low());
        self.watermarks.observe(dp, low, self.clock);
        let wm = self.watermarks.advance(self.clock);
        let own = self.watermarks.of(dp);
        self.emit(store, wm, Some((dp, own)), out)
    }
}

/// Why a late event went to the dead letter.
fn late(ts: i64, partition: u32, watermark: i64) -> String {
    format!("event time {} is behind the watermark of partition {partition} ({}) beyond the grace period; its windows have closed", fmt_ms(ts), fmt_ms(watermark))
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
        row: Vec::new(),
        origin: None,
    }
}

mod stateless;
#[cfg(test)]
mod tests;
mod time;
