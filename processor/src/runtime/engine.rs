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
        let before = self.watermarks.current();
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
                let msg = format!("event time {} is behind the watermark {} beyond the grace period; its windows have closed", fmt_ms(ts), fmt_ms(before));
                self.dead(rec, DeadLetterReason::Late, msg, dead);
            }
        }
        self.advance_time(store, rec.partition, ts, out)
    }

    /// A valid event's time reaches the clock and its partition's watermark; windows the
    /// pipeline watermark has passed close.
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
        self.emit(store, wm, out)
    }

    fn emit(
        &mut self,
        store: &Store,
        wm: i64,
        out: &mut dyn FnMut(Emitted),
    ) -> Result<(), StateError> {
        let mut n = 0u64;
        let mut each = |e: Emission| {
            n += 1;
            out(decode_emission(e));
        };
        self.windows.take_updates(wm, store, &mut each)?;
        self.windows.close_until(wm, store, &mut each)?;
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
        self.emit(store, wm, out)
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
mod tests {
    use super::*;
    use crate::pipeline::load_str;
    use crate::schema::SchemaResolver;
    use proptest::prelude::*;

    fn plan(gap_ms: i64, ooo_ms: i64) -> Plan {
        let yaml = format!(
            "apiVersion: weir/v1
name: prop-sessions
source:
  topics: [events]
  format: json
  schema: input.avsc
  event_time: {{field: ts}}
  watermark: {{max_out_of_orderness: {ooo_ms}ms}}
steps:
  - key_by: [user]
  - window: {{type: session, gap: {gap_ms}ms}}
  - aggregate:
      outputs:
        events: {{fn: count}}
        total: {{fn: sum, field: n}}
output:
  schema: output.avsc
"
        );
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/golden/session_merge");
        let loaded = load_str(&yaml, "prop.yaml", &SchemaResolver::in_dir(&dir));
        assert!(loaded.problems.is_empty(), "{:?}", loaded.problems);
        loaded.plan.expect("plan")
    }

    fn record(i: usize, user: u8, n: i64, ts: i64) -> SourceRecord {
        SourceRecord {
            topic: "events".into(),
            partition: 0,
            offset: i as i64,
            timestamp: None,
            key: None,
            value: Payload::Json(
                format!("{{\"user\":\"u{user}\",\"n\":{n},\"ts\":{ts}}}").into_bytes(),
            ),
            line: i as u64 + 1,
        }
    }

    /// (user, start, end, events, total) of every emitted session, in emission order.
    type Rows = Vec<(String, i64, i64, i64, i64)>;

    fn row(e: Emitted) -> (String, i64, i64, i64, i64) {
        let user = match &e.key[0] {
            Scalar::Str(s) => s.to_string(),
            other => format!("{other:?}"),
        };
        let int = |s: &Scalar| match s {
            Scalar::Int(i) => *i,
            _ => -1,
        };
        (user, e.start, e.end, int(&e.results[0]), int(&e.results[1]))
    }

    /// Runs `events` through a fresh engine; with `split`, checkpoints after that many
    /// records and continues in a new engine restored from the checkpoint (as a restart
    /// does), through a bincode round trip of everything the checkpoint record holds.
    fn run(plan: &Plan, events: &[(u8, i64, i64)], split: Option<usize>) -> (Rows, u64) {
        let dir = tempfile::tempdir().expect("tmp");
        let mut store = Store::open(dir.path(), &plan.state).expect("store");
        let mut rows = Rows::new();
        let mut engine = Engine::new(plan, None);
        for (i, &(user, n, ts)) in events.iter().enumerate() {
            if split == Some(i) {
                let mut batch = rocksdb::WriteBatch::default();
                engine
                    .windows
                    .checkpoint_into(&mut batch)
                    .expect("checkpoint");
                store.write(batch).expect("write");
                let bytes = bincode::serialize(&(
                    engine.windows.meta(),
                    &engine.watermarks,
                    &engine.counters,
                    engine.clock,
                ))
                .expect("serialize");
                let (meta, w, c, clock): (
                    crate::state::windows::WindowMeta,
                    Watermarks,
                    Counters,
                    i64,
                ) = bincode::deserialize(&bytes).expect("deserialize");
                engine = Engine::new(plan, None);
                engine.restore(w, c, clock);
                engine.windows.restore(meta, &store).expect("restore");
            }
            let mut dead = Vec::new();
            engine
                .process(
                    &store,
                    &record(i, user, n, ts),
                    &mut |e| rows.push(row(e)),
                    &mut dead,
                )
                .expect("process");
        }
        engine
            .finish(&store, &mut |e| rows.push(row(e)))
            .expect("finish");
        (rows, engine.counters.dead_late)
    }

    fn tumbling_plan(size_ms: i64, grace_ms: i64, ooo_ms: i64) -> Plan {
        let yaml = format!(
            "apiVersion: weir/v1
name: prop-tumbling
source:
  topics: [events]
  format: json
  schema: input.avsc
  event_time: {{field: ts}}
  watermark: {{max_out_of_orderness: {ooo_ms}ms}}
steps:
  - key_by: [user]
  - window: {{type: tumbling, size: {size_ms}ms, grace: {grace_ms}ms}}
  - aggregate:
      outputs:
        events: {{fn: count}}
        total: {{fn: sum, field: n}}
output:
  schema: output.avsc
"
        );
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/golden/session_merge");
        let loaded = load_str(&yaml, "prop.yaml", &SchemaResolver::in_dir(&dir));
        assert!(loaded.problems.is_empty(), "{:?}", loaded.problems);
        loaded.plan.expect("plan")
    }

    /// Every `w|` and `s|` entry of a store.
    fn entries(store: &Store) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut all = Vec::new();
        for prefix in [b"w".as_slice(), b"s".as_slice()] {
            for kv in store.scan(prefix).expect("scan") {
                all.push((kv.0.to_vec(), kv.1.to_vec()));
            }
        }
        all
    }

    /// Runs `events` checkpointing every `every` records into the store and, through the
    /// changelog's records, into a second store that only ever sees those records (as a
    /// store restored on another machine would). After each checkpoint the two hold the
    /// same entries. At `move_at` the run moves: a new engine restores from the rebuilt
    /// store and goes on. Returns the results.
    fn run_logged(plan: &Plan, events: &[(u8, i64, i64)], every: usize, move_at: usize) -> Rows {
        use crate::state::changelog::{apply, Change, Tee};
        let (local_dir, moved_dir) = (
            tempfile::tempdir().expect("tmp"),
            tempfile::tempdir().expect("tmp"),
        );
        let mut local = Store::open(local_dir.path(), &plan.state).expect("store");
        let mut rebuilt = Store::open(moved_dir.path(), &plan.state).expect("store");
        let mut on_rebuilt = false;
        let mut rows = Rows::new();
        let mut engine = Engine::new(plan, None);
        let checkpoint =
            |engine: &mut Engine, local: &mut Store, rebuilt: &mut Store, on_rebuilt: bool| {
                let mut batch = rocksdb::WriteBatch::default();
                let mut log: Vec<Change> = Vec::new();
                engine
                    .windows
                    .checkpoint_into(&mut Tee(&mut batch, &mut log))
                    .expect("checkpoint");
                let mut replayed = rocksdb::WriteBatch::default();
                for c in &log {
                    assert_eq!(c.partition, 0, "the one source partition");
                    apply(&mut replayed, &c.key, c.value.as_deref());
                }
                rebuilt.write(replayed).expect("write");
                if !on_rebuilt {
                    local.write(batch).expect("write");
                    assert_eq!(
                        entries(local),
                        entries(rebuilt),
                        "the changelog rebuilds the store"
                    );
                }
                engine.windows.after_checkpoint();
            };
        for (i, &(user, n, ts)) in events.iter().enumerate() {
            if i > 0 && i % every == 0 {
                checkpoint(&mut engine, &mut local, &mut rebuilt, on_rebuilt);
                if i >= move_at && !on_rebuilt {
                    let bytes = bincode::serialize(&(
                        engine.windows.meta(),
                        &engine.watermarks,
                        &engine.counters,
                        engine.clock,
                    ))
                    .expect("serialize");
                    let (meta, w, c, clock): (
                        crate::state::windows::WindowMeta,
                        Watermarks,
                        Counters,
                        i64,
                    ) = bincode::deserialize(&bytes).expect("deserialize");
                    engine = Engine::new(plan, None);
                    engine.restore(w, c, clock);
                    engine.windows.restore(meta, &rebuilt).expect("restore");
                    on_rebuilt = true;
                }
            }
            let store = if on_rebuilt { &rebuilt } else { &local };
            let mut dead = Vec::new();
            engine
                .process(
                    store,
                    &record(i, user, n, ts),
                    &mut |e| rows.push(row(e)),
                    &mut dead,
                )
                .expect("process");
        }
        let store = if on_rebuilt { &rebuilt } else { &local };
        engine
            .finish(store, &mut |e| rows.push(row(e)))
            .expect("finish");
        rows
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// With no event late, sessions are independent of arrival order: an event joins
        /// every session it overlaps or touches ([first, last + gap)). The expectation is a
        /// sort-and-sweep over the same events, written without the state store.
        #[test]
        fn sessions_merge_as_a_sort_and_sweep_says(
            events in proptest::collection::vec((0u8..3, 1i64..100, 0i64..100_000), 1..80),
            gap in 1i64..10_000,
        ) {
            let plan = plan(gap, 86_400_000);
            let (mut got, late) = run(&plan, &events, None);
            prop_assert_eq!(late, 0);
            let mut want = Rows::new();
            for user in 0u8..3 {
                let mut mine: Vec<(i64, i64)> =
                    events.iter().filter(|e| e.0 == user).map(|e| (e.2, e.1)).collect();
                mine.sort();
                let mut cur: Option<(i64, i64, i64, i64)> = None; // start, last, count, sum
                for (ts, n) in mine {
                    cur = match cur {
                        Some((s, last, c, t)) if ts <= last + gap => Some((s, ts, c + 1, t + n)),
                        Some((s, last, c, t)) => {
                            want.push((format!("u{user}"), s, last + gap, c, t));
                            Some((ts, ts, 1, n))
                        }
                        None => Some((ts, ts, 1, n)),
                    };
                }
                if let Some((s, last, c, t)) = cur {
                    want.push((format!("u{user}"), s, last + gap, c, t));
                }
            }
            got.sort();
            want.sort();
            prop_assert_eq!(got, want);
        }

        /// A checkpoint taken anywhere and restored into a new engine gives exactly the
        /// results and late counts of an uninterrupted run, late events included.
        #[test]
        fn a_restored_checkpoint_changes_nothing(
            events in proptest::collection::vec((0u8..3, 1i64..100, 0i64..100_000), 2..80),
            gap in 1i64..10_000,
            ooo in 0i64..20_000,
            at in 0usize..80,
        ) {
            let plan = plan(gap, ooo);
            let split = at % events.len();
            prop_assert_eq!(run(&plan, &events, None), run(&plan, &events, Some(split)));
        }

        /// The changelog's records rebuild the store entry for entry after every
        /// checkpoint, and a run that moves onto the rebuilt store at any checkpoint gives
        /// the results of a run that never moved: sessions, tumbling windows with grace,
        /// late events, a tiny cache that spills (so closed windows are deleted from RocksDB).
        #[test]
        fn the_changelog_rebuilds_the_state_anywhere(
            events in proptest::collection::vec((0u8..4, 1i64..100, 0i64..100_000), 2..120),
            gap in 1i64..10_000,
            ooo in 0i64..20_000,
            every in 1usize..20,
            move_at in 0usize..120,
            tumbling in proptest::bool::ANY,
        ) {
            let mut plan = if tumbling { tumbling_plan(gap, ooo / 2, ooo) } else { plan(gap, ooo) };
            plan.state.cache_entries = 2;
            let (want, _) = run(&plan, &events, None);
            prop_assert_eq!(run_logged(&plan, &events, every, move_at), want);
        }
    }
}
