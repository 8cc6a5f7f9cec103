//! One end-to-end scenario shared by the Kafka tests: a 4-partition topic of Avro click
//! events (Confluent wire format) with out-of-order, late and invalid records; a pipeline
//! counting and summing per user per 10 s tumbling window into a Kafka topic and a
//! PostgreSQL table; and the expected aggregates computed here, independently of Weir.

use crate::kafka::{produce_at, producer, read_all, Broker, OutRecord, Record, Rng};
use apache_avro::types::Value;
use apache_avro::Schema;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub const PARTITIONS: i32 = 4;
/// The scenario pipeline's tumbling window.
pub const WINDOW_MS: i64 = 10_000;
const USERS: u64 = 40;
const T0: i64 = 1_700_000_000_000;
const WINDOW: i64 = 10_000;
const SCHEMA_ID: u32 = 1;
const OUT_SCHEMA_ID: u32 = 7;

/// The click events' schema (also what `tests/python/interop.py` writes).
pub const CLICK: &str = r#"{"type":"record","name":"Click","namespace":"weir.test","fields":[
  {"name":"user","type":"string"},
  {"name":"amount","type":"long"},
  {"name":"ts","type":{"type":"long","logicalType":"timestamp-millis"}}]}"#;

/// The per-user window totals' schema.
pub const TOTALS: &str = r#"{"type":"record","name":"ClickTotals","namespace":"weir.test","fields":[
  {"name":"user","type":"string"},
  {"name":"window_start","type":{"type":"long","logicalType":"timestamp-millis"}},
  {"name":"window_end","type":{"type":"long","logicalType":"timestamp-millis"}},
  {"name":"events","type":"long"},
  {"name":"total","type":"long"}]}"#;

/// The test database: `$WEIR_TEST_POSTGRES`, default the local server (trust auth).
pub fn pg_url() -> String {
    std::env::var("WEIR_TEST_POSTGRES")
        .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres dbname=test".into())
}

/// (user, window start) -> (events, total)
pub type Aggregates = BTreeMap<(String, i64), (i64, i64)>;

/// What a record is, for the dead-letter check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    Valid,
    Late,
    Invalid,
}

pub struct Scenario {
    pub name: String,
    /// The source topic's partitions ([`PARTITIONS`] unless [`Scenario::build_on`] says).
    pub partitions: i32,
    pub dir: tempfile::TempDir,
    pub source: String,
    pub out_topic: String,
    pub dlq: String,
    pub table: String,
    /// The source's consumer group.
    pub group: String,
    /// The PostgreSQL sink's connection string.
    pub pg: String,
    pub pipeline: PathBuf,
    /// Batches of (partition, key, value), in production order; the last holds the
    /// sentinels that move every partition's watermark past all windows.
    pub batches: Vec<Vec<OutRecord>>,
    pub expected: Aggregates,
    /// Dead-letter-worthy values: value bytes -> (partition, reason).
    pub dead: BTreeMap<Vec<u8>, (i32, &'static str)>,
    /// The broker the topics were created on (bootstrap, client settings): what a failed
    /// wait reads to explain itself.
    broker: std::sync::OnceLock<(String, Vec<(&'static str, &'static str)>)>,
    /// `delivery: exactly_once`: the outputs are transactional, read `read_committed`.
    pub exactly_once: bool,
}

fn user_partition(u: u64, partitions: i32) -> i32 {
    (u % partitions as u64) as i32
}

/// The event time of a click in the wire format; `None` for an invalid one.
pub fn event_time(v: &[u8]) -> Option<i64> {
    static SCHEMA: std::sync::OnceLock<Schema> = std::sync::OnceLock::new();
    let schema = SCHEMA.get_or_init(|| Schema::parse_str(CLICK).expect("click schema"));
    let body = v.get(5..)?;
    if v.first() != Some(&0) {
        return None;
    }
    match apache_avro::from_avro_datum(schema, &mut &body[..], None).ok()? {
        Value::Record(fields) => fields.into_iter().find_map(|(k, v)| match (k.as_str(), v) {
            ("ts", Value::TimestampMillis(t)) => Some(t),
            _ => None,
        }),
        _ => None,
    }
}

/// A click event in the Confluent wire format with any schema id.
pub fn click(user: &str, amount: i64, ts: i64, schema_id: u32) -> Vec<u8> {
    let schema = Schema::parse_str(CLICK).expect("click schema");
    let mut v = encode(&schema, user, amount, ts);
    v[1..5].copy_from_slice(&schema_id.to_be_bytes());
    v
}

fn encode(schema: &Schema, user: &str, amount: i64, ts: i64) -> Vec<u8> {
    let v = Value::Record(vec![
        ("user".into(), Value::String(user.into())),
        ("amount".into(), Value::Long(amount)),
        ("ts".into(), Value::TimestampMillis(ts)),
    ]);
    let mut out = vec![0u8];
    out.extend_from_slice(&SCHEMA_ID.to_be_bytes());
    out.extend(apache_avro::to_avro_datum(schema, v).expect("encode click"));
    out
}

impl Scenario {
    /// `events` records (1 in 1000 invalid, 1 in 2000 of the second half late), in batches
    /// of `batch`.
    pub fn new(name: &str, events: u64, batch: usize, seed: u64) -> Scenario {
        Scenario::with_step(name, events, batch, seed, 1)
    }

    /// Like [`Scenario::new`], with event `i` at `T0 + i * step_ms` (more windows per user).
    pub fn with_step(name: &str, events: u64, batch: usize, seed: u64, step_ms: i64) -> Scenario {
        Scenario::build(name, events, batch, seed, step_ms, pg_url())
    }

    /// Like [`Scenario::with_step`], writing the PostgreSQL sink to the database at `pg`.
    pub fn build(
        name: &str,
        events: u64,
        batch: usize,
        seed: u64,
        step_ms: i64,
        pg: String,
    ) -> Scenario {
        Scenario::build_on(name, events, batch, seed, step_ms, pg, PARTITIONS)
    }

    /// Like [`Scenario::build`], on a source topic of `partitions` partitions.
    pub fn build_on(
        name: &str,
        events: u64,
        batch: usize,
        seed: u64,
        step_ms: i64,
        pg: String,
        partitions: i32,
    ) -> Scenario {
        Scenario::build_keyed(name, events, batch, seed, step_ms, pg, partitions, false)
    }

    /// A scenario whose producer spreads each user's events over every partition at
    /// random (not keyed by user), with a pipeline that says so (`source.partitioned_by:
    /// []`): Weir must re-key by user through its repartition topic.
    pub fn rekeyed(name: &str, events: u64, batch: usize, seed: u64, partitions: i32) -> Scenario {
        Scenario::build_keyed(name, events, batch, seed, 5, pg_url(), partitions, true)
    }

    #[allow(clippy::too_many_arguments)]
    fn build_keyed(
        name: &str,
        events: u64,
        batch: usize,
        seed: u64,
        step_ms: i64,
        pg: String,
        partitions: i32,
        spread: bool,
    ) -> Scenario {
        // The sink needs the database: a missing server fails the test at once, not after
        // every kill has timed out behind Weir's session retries.
        if let Err(e) = postgres::Client::connect(&pg, postgres::NoTls) {
            panic!("PostgreSQL at {pg} is needed (scripts/postgres.sh start): {e}");
        }
        let suffix = format!("{}-{}", std::process::id(), seed);
        let dir = tempfile::tempdir().expect("tempdir");
        let source = format!("clicks-{name}-{suffix}");
        let out_topic = format!("totals-{name}-{suffix}");
        let dlq = format!("dlq-{name}-{suffix}");
        let table = format!("weir_{name}_{}", suffix.replace('-', "_"));
        let group = format!("weir-{name}-{suffix}");
        std::fs::write(dir.path().join("click.avsc"), CLICK).expect("schema");
        std::fs::write(dir.path().join("click_totals.avsc"), TOTALS).expect("schema");
        let pipeline = dir.path().join("pipeline.yaml");
        let partitioned_by = if spread { "\n  partitioned_by: []" } else { "" };
        std::fs::write(
            &pipeline,
            format!(
                r#"apiVersion: weir/v1
name: {name}
source:
  topics: [{source}]
  group: {group}
  format: avro
  schema: click.avsc
  writer_schemas: {{{SCHEMA_ID}: click.avsc}}
  event_time: {{field: ts}}
  watermark: {{max_out_of_orderness: 3s}}{partitioned_by}
steps:
  - key_by: [user]
  - window: {{type: tumbling, size: 10s, grace: 2s}}
  - aggregate:
      outputs:
        events: {{fn: count}}
        total: {{fn: sum, field: amount}}
output:
  schema: click_totals.avsc
sinks:
  - {{type: kafka, topic: {out_topic}, partitions: {partitions}, schema_id: {OUT_SCHEMA_ID}}}
  - {{type: postgres, url: "{pg}", table: {table}}}
dead_letter: {{type: kafka, topic: {dlq}}}
"#,
            ),
        )
        .expect("pipeline");

        let schema = Schema::parse_str(CLICK).expect("click schema");
        let mut rng = Rng(seed | 1);
        let mut spread_rng = Rng(seed.rotate_left(17) | 1);
        let mut expected = Aggregates::new();
        let mut dead = BTreeMap::new();
        let mut all = Vec::with_capacity(events as usize + 8);
        for i in 0..events {
            let u = rng.below(USERS);
            let user = format!("u{u:02}");
            let part = if spread {
                spread_rng.below(partitions as u64) as i32
            } else {
                user_partition(u, partitions)
            };
            let base = T0 + i as i64 * step_ms;
            let key = user.clone().into_bytes();
            if i % 1000 == 999 {
                // Invalid: a truncated body, a wrong magic byte, an unknown schema id.
                let mut v = encode(&schema, &user, i as i64, base);
                match (i / 1000) % 3 {
                    0 => v.truncate(v.len() - 3),
                    1 => v[0] = 1,
                    _ => v[4] = 99,
                }
                let reason = match (i / 1000) % 3 {
                    0 | 1 => "decode",
                    _ => "schema",
                };
                dead.insert(v.clone(), (part, reason));
                all.push((part, key, v));
            } else if i >= events / 2 && i % 2000 == 1001 {
                // Late: 150 s behind every partition's watermark.
                let v = encode(&schema, &user, 1_000_000 + i as i64, base - 150_000);
                dead.insert(v.clone(), (part, "late"));
                all.push((part, key, v));
            } else {
                // Out of order by up to 2 s, less than max_out_of_orderness (3 s): never late.
                let ts = base - rng.below(2000) as i64;
                let amount = 1 + rng.below(100) as i64;
                let e = expected
                    .entry((user.clone(), ts - ts.rem_euclid(WINDOW)))
                    .or_insert((0, 0));
                e.0 += 1;
                e.1 += amount;
                all.push((part, key, encode(&schema, &user, amount, ts)));
            }
        }
        let mut batches: Vec<Vec<_>> = all.chunks(batch).map(|c| c.to_vec()).collect();
        let end = T0 + events as i64 * step_ms + 60_000;
        batches.push(
            (0..partitions)
                .map(|p| {
                    let user = format!("zz-sentinel-{p}");
                    (p, user.clone().into_bytes(), encode(&schema, &user, 0, end))
                })
                .collect(),
        );
        Scenario {
            name: name.to_string(),
            partitions,
            dir,
            source,
            out_topic,
            dlq,
            table,
            group,
            pg,
            pipeline,
            batches,
            expected,
            dead,
            broker: std::sync::OnceLock::new(),
            exactly_once: false,
        }
    }

    /// Says `state.changelog: true` (the default) in the definition: every checkpoint also
    /// goes to `<group>-changelog`.
    pub fn with_changelog(self) -> Scenario {
        self.changelog(true)
    }

    /// Turns `state.changelog` off: the state is the local store's alone. The mock cluster
    /// needs it (its transactions write no markers, so `read_committed` sees aborted data).
    pub fn without_changelog(self) -> Scenario {
        self.changelog(false)
    }

    /// `delivery: exactly_once`: one Kafka transaction per checkpoint; the output and
    /// dead-letter topics are then read `read_committed`, and must hold every result and
    /// dead letter once.
    pub fn exactly_once(mut self) -> Scenario {
        let mut yaml = std::fs::read_to_string(&self.pipeline).expect("pipeline");
        yaml.push_str("delivery: exactly_once\n");
        std::fs::write(&self.pipeline, yaml).expect("pipeline");
        self.exactly_once = true;
        self
    }

    /// The records of one of the pipeline's output topics, as a consumer should read
    /// them (`read_committed`; exactly-once topics end in commit markers).
    fn read_output(&self, bootstrap: &str, topic: &str, settings: &[(&str, &str)]) -> Vec<Record> {
        if self.exactly_once {
            crate::kafka::read_isolated(bootstrap, topic, settings, true)
        } else {
            read_all(bootstrap, topic, settings)
        }
    }

    fn changelog(self, on: bool) -> Scenario {
        let mut yaml = std::fs::read_to_string(&self.pipeline).expect("pipeline");
        yaml.push_str(&format!("state: {{changelog: {on}}}\n"));
        std::fs::write(&self.pipeline, yaml).expect("pipeline");
        self
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn log(&self) -> PathBuf {
        self.dir.path().join("weir.log")
    }

    /// `weir run` arguments against `broker`.
    pub fn args(&self, broker: &Broker) -> Vec<String> {
        self.args_with(broker, &[])
    }

    /// `weir run` arguments with extra librdkafka settings.
    pub fn args_with(&self, broker: &Broker, extra: &[(&str, &str)]) -> Vec<String> {
        let mut a = vec![
            "run".to_string(),
            self.pipeline.display().to_string(),
            "--brokers".into(),
            broker.bootstrap.clone(),
            "--state-dir".into(),
            self.state_dir().display().to_string(),
            "--instance-id".into(),
            format!("{}-instance", self.name),
            "--checkpoint-interval".into(),
            "200ms".into(),
            "--checkpoint-every".into(),
            "5000".into(),
        ];
        for (k, v) in broker
            .client_settings()
            .into_iter()
            .chain(extra.iter().copied())
        {
            a.push("--kafka-config".into());
            a.push(format!("{k}={v}"));
        }
        a
    }

    /// The group's committed offset of every source partition equals its log end: a
    /// clean stop committed everything the pipeline processed, so lag is zero.
    pub fn assert_no_lag(&self, broker: &Broker) {
        let committed = crate::kafka::committed(
            &broker.bootstrap,
            &self.group,
            &self.source,
            self.partitions,
        );
        let ends = crate::kafka::log_ends(&broker.bootstrap, &self.source, self.partitions);
        assert_eq!(
            committed, ends,
            "committed offsets of group {} (left) against the log ends of {} (right)",
            self.group, self.source
        );
    }

    pub fn create_topics(&self, broker: &Broker) {
        let _ = self
            .broker
            .set((broker.bootstrap.clone(), broker.client_settings()));
        broker.create_topic(&self.source, self.partitions);
        let yaml = std::fs::read_to_string(&self.pipeline).expect("pipeline");
        if matches!(broker.kind, "mock" | "tansu") && !yaml.contains("changelog:") {
            // The changelog (on by default) needs transaction markers, which neither writes
            // (BROKERS.md).
            std::fs::write(&self.pipeline, yaml + "state: {changelog: false}\n").expect("pipeline");
        }
        if broker.mock().is_some() {
            // The mock cluster has no CreateTopics; Weir accepts a topic that exists.
            broker.create_topic(&self.out_topic, self.partitions);
            broker.create_topic(&self.dlq, 1);
        }
    }

    /// Produces batches `range` with `pause` between them (steady traffic).
    pub fn produce(&self, bootstrap: &str, range: std::ops::Range<usize>, pause: Duration) {
        let p = producer(bootstrap);
        for b in &self.batches[range] {
            // Record timestamps are the events' times, as a producer stamping CreateTime
            // at the event would (replay by time looks records up by timestamp).
            produce_at(&p, &self.source, b, &event_time);
            std::thread::sleep(pause);
        }
    }

    /// Events in the table so far (0 when it does not exist yet).
    pub fn table_events(&self) -> i64 {
        self.table_rows()
            .map(|r| r.values().map(|v| v.0).sum())
            .unwrap_or(0)
    }

    pub fn total_events(&self) -> i64 {
        self.expected.values().map(|v| v.0).sum()
    }

    /// The table's (user, window start) -> (events, total), sentinels excluded.
    pub fn table_rows(&self) -> Result<Aggregates, String> {
        rows_in_db(&self.pg, &self.table)
    }

    /// Waits (bounded) until the table holds every expected event; returns the rows.
    pub fn wait_for_table(&self, within: Duration, alive: &mut dyn FnMut() -> bool) -> Aggregates {
        let want = self.total_events();
        let deadline = Instant::now() + within;
        let mut last = Aggregates::new();
        while Instant::now() < deadline {
            if let Ok(rows) = self.table_rows() {
                let have: i64 = rows.values().map(|v| v.0).sum();
                if have >= want && rows.len() >= self.expected.len() {
                    return rows;
                }
                last = rows;
            }
            assert!(
                alive(),
                "weir exited early: {}",
                std::fs::read_to_string(self.log()).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        let have: i64 = last.values().map(|v| v.0).sum();
        let log = std::fs::read_to_string(self.log()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let missing: Vec<_> = self
            .expected
            .keys()
            .filter(|k| !last.contains_key(*k))
            .take(12)
            .collect();
        panic!(
            "table {} has {have} of {want} events in {} of {} windows after {within:?}; missing e.g. {missing:?}; {}weir log:\n{}",
            self.table,
            last.len(),
            self.expected.len(),
            self.explain_shortfall(&last),
            lines[lines.len().saturating_sub(30)..].join("\n")
        );
    }

    /// Why the table differs from the expectation: the windows that differ, every output
    /// record of the first few of them, and the dead letters by reason (an event counted
    /// late that should not be is there).
    fn explain_shortfall(&self, table: &Aggregates) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let differ: Vec<_> = self
            .expected
            .iter()
            .filter(|(k, v)| table.get(*k) != Some(*v))
            .collect();
        let _ = writeln!(s, "{} windows differ:", differ.len());
        for (k, v) in differ.iter().take(12) {
            let _ = writeln!(s, "  {k:?}: table {:?}, expected {v:?}", table.get(*k));
        }
        let Some((bootstrap, settings)) = self.broker.get() else {
            return s;
        };
        let schema = Schema::parse_str(TOTALS).expect("totals schema");
        let records = self.read_output(bootstrap, &self.out_topic, settings);
        for (k, _) in differ.iter().take(4) {
            let _ = writeln!(s, "  output records of {k:?}:");
            for r in &records {
                let Ok(Value::Record(f)) =
                    apache_avro::from_avro_datum(&schema, &mut &r.value[5..], None)
                else {
                    continue;
                };
                let get = |n: &str| f.iter().find(|(x, _)| x == n).map(|(_, v)| v.clone());
                if get("user") == Some(Value::String(k.0.clone()))
                    && get("window_start") == Some(Value::TimestampMillis(k.1))
                {
                    let _ = writeln!(
                        s,
                        "    {}@{} events={:?} total={:?} id={:?}",
                        r.partition,
                        r.offset,
                        get("events"),
                        get("total"),
                        r.header("weir-event-id")
                    );
                }
            }
        }
        let mut reasons: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        for r in self.read_output(bootstrap, &self.dlq, settings) {
            let e = reasons
                .entry(r.header("weir-reason").unwrap_or_default())
                .or_default();
            e.0 += 1;
            if !self.dead.contains_key(&r.value) {
                e.1 += 1;
                if e.1 <= 3 {
                    let _ = writeln!(s, "  unexpected dead letter: {:?}", r.header("weir-error"));
                }
            }
        }
        let _ = writeln!(
            s,
            "dead letters by reason (records, unexpected): {reasons:?}"
        );
        s
    }

    /// The value per (user, window) in the output topic, checking the frame, that every
    /// `weir-event-id` always carries the same value, that `window_end` is the window's
    /// end, and (the pipeline emits `final`) that every record of a window carries one
    /// value and one event id: a repeat is an at-least-once redelivery, nothing else.
    pub fn topic_results(&self, broker: &Broker) -> (Aggregates, TopicCounts) {
        let schema = Schema::parse_str(TOTALS).expect("totals schema");
        let records = self.read_output(
            &broker.bootstrap,
            &self.out_topic,
            &broker.client_settings(),
        );
        let mut by_id: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut repeated = 0;
        // (user, window) -> (partition, offset, (events, total)) of the latest record.
        type Latest = (i32, i64, (i64, i64));
        let mut ids_of_window: BTreeMap<(String, i64), BTreeSet<String>> = BTreeMap::new();
        let mut last: BTreeMap<(String, i64), Latest> = BTreeMap::new();
        for r in &records {
            assert_eq!(r.value[0], 0, "magic byte");
            assert_eq!(
                u32::from_be_bytes([r.value[1], r.value[2], r.value[3], r.value[4]]),
                OUT_SCHEMA_ID
            );
            let id = r.header("weir-event-id").expect("weir-event-id header");
            if let Some(prev) = by_id.insert(id.clone(), r.value.clone()) {
                assert_eq!(prev, r.value, "event id {id} carried two different values");
                repeated += 1;
            }
            let v = apache_avro::from_avro_datum(&schema, &mut &r.value[5..], None)
                .expect("output decodes with the output schema");
            let Value::Record(f) = v else {
                panic!("not a record")
            };
            let get = |n: &str| f.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
            let (
                Some(Value::String(user)),
                Some(Value::TimestampMillis(start)),
                Some(Value::TimestampMillis(end)),
                Some(Value::Long(events)),
                Some(Value::Long(total)),
            ) = (
                get("user"),
                get("window_start"),
                get("window_end"),
                get("events"),
                get("total"),
            )
            else {
                panic!("unexpected output record {f:?}")
            };
            assert_eq!(
                end,
                start + WINDOW_MS,
                "window_end of {user}'s window at {start}"
            );
            let key: serde_json::Value =
                serde_json::from_slice(r.key.as_deref().unwrap_or(b"null")).expect("key is JSON");
            assert_eq!(
                key,
                serde_json::json!({"user": user}),
                "record key = group key"
            );
            if user.starts_with("zz-") {
                continue;
            }
            ids_of_window
                .entry((user.clone(), start))
                .or_default()
                .insert(id.clone());
            let slot = last
                .entry((user.clone(), start))
                .or_insert((r.partition, -1, (0, 0)));
            assert_eq!(slot.0, r.partition, "one key, one partition");
            assert!(
                slot.1 < 0 || slot.2 == (events, total),
                "emit final: {user}'s window at {start} carried {:?} and then {:?}",
                slot.2,
                (events, total)
            );
            if r.offset > slot.1 {
                *slot = (r.partition, r.offset, (events, total));
            }
        }
        for (w, ids) in &ids_of_window {
            assert_eq!(
                ids.len(),
                1,
                "emit final: window {w:?} has event ids {ids:?}"
            );
        }
        let agg = last.into_iter().map(|(k, (_, _, v))| (k, v)).collect();
        let counts = TopicCounts {
            records: records.len(),
            distinct_ids: by_id.len(),
            repeated,
        };
        (agg, counts)
    }

    /// Checks that every invalid and late record is in the dead-letter topic with its
    /// original bytes, source coordinates and reason (duplicates allowed: at least once).
    pub fn check_dead_letters(&self, broker: &Broker) -> usize {
        // Read again (bounded) when something is missing, in case the high watermark read
        // lagged the log end; a record that is really missing stays missing.
        let mut records: Vec<Record> = Vec::new();
        for attempt in 0..3 {
            records = self.read_output(&broker.bootstrap, &self.dlq, &broker.client_settings());
            let values: BTreeSet<&Vec<u8>> = records.iter().map(|r| &r.value).collect();
            if self.dead.keys().all(|v| values.contains(v)) {
                break;
            }
            eprintln!(
                "dead letters incomplete after read {attempt}: {} records",
                records.len()
            );
            std::thread::sleep(Duration::from_secs(2));
        }
        // Where each value is in the source topic: a dead letter's coordinates must point
        // at its own record.
        let mut at: BTreeMap<Vec<u8>, BTreeSet<(i32, i64)>> = BTreeMap::new();
        for r in read_all(&broker.bootstrap, &self.source, &broker.client_settings()) {
            if self.dead.contains_key(&r.value) {
                at.entry(r.value)
                    .or_default()
                    .insert((r.partition, r.offset));
            }
        }
        let mut seen = BTreeSet::new();
        for r in &records {
            let Some((part, reason)) = self.dead.get(&r.value) else {
                panic!(
                    "unexpected dead letter {:?} ({:?})",
                    r.value,
                    r.header("weir-error")
                );
            };
            assert_eq!(
                r.header("weir-reason").as_deref(),
                Some(*reason),
                "{:?}",
                r.header("weir-error")
            );
            assert_eq!(
                r.header("weir-source-topic").as_deref(),
                Some(self.source.as_str())
            );
            assert_eq!(r.header("weir-source-partition"), Some(part.to_string()));
            let offset: Option<i64> = r.header("weir-source-offset").and_then(|o| o.parse().ok());
            assert!(
                offset.is_some_and(|o| at.get(&r.value).is_some_and(|c| c.contains(&(*part, o)))),
                "dead letter at {part}:{offset:?} is not where its bytes are in {}: {:?}",
                self.source,
                at.get(&r.value)
            );
            assert!(r.header("weir-error").is_some_and(|e| !e.is_empty()));
            assert_eq!(
                r.header("weir-pipeline").as_deref(),
                Some(self.name.as_str())
            );
            seen.insert(r.value.clone());
        }
        let missing: Vec<_> = self
            .dead
            .iter()
            .filter(|(v, _)| !seen.contains(*v))
            .collect();
        assert!(
            missing.is_empty(),
            "{} of {} dead letters missing ({} records read), e.g. {:?}; weir log:\n{}",
            missing.len(),
            self.dead.len(),
            records.len(),
            missing.first(),
            std::fs::read_to_string(self.log()).unwrap_or_default()
        );
        records.len()
    }

    /// The three end checks: table, topic (last value per key and window) and dead
    /// letters. Returns the output topic's counts and the dead letters read.
    pub fn check_all(&self, broker: &Broker, table: &Aggregates) -> (TopicCounts, usize) {
        assert_same("postgres table", table, &self.expected);
        let (topic, counts) = self.topic_results(broker);
        assert_same(
            "kafka topic (last value per key and window)",
            &topic,
            &self.expected,
        );
        (counts, self.check_dead_letters(broker))
    }

    pub fn drop_table(&self) {
        if let Ok(mut c) = postgres::Client::connect(&self.pg, postgres::NoTls) {
            let _ = c.batch_execute(&format!("DROP TABLE IF EXISTS {}", self.table));
        }
    }
}

/// What the output topic holds: records, distinct `weir-event-id`s, and records whose id was
/// already seen (re-emissions after a crash, each with the same value).
#[derive(Debug, Clone, Copy)]
pub struct TopicCounts {
    pub records: usize,
    pub distinct_ids: usize,
    pub repeated: usize,
}

/// A results table's (user, window start) -> (events, total), sentinels excluded.
pub fn rows_in(table: &str) -> Result<Aggregates, String> {
    rows_in_db(&pg_url(), table)
}

/// [`rows_in`] for the database at `pg`.
pub fn rows_in_db(pg: &str, table: &str) -> Result<Aggregates, String> {
    let mut c = postgres::Client::connect(pg, postgres::NoTls).map_err(|e| e.to_string())?;
    let rows = c
        .query(
            &format!(
                "SELECT \"user\", (extract(epoch from window_start) * 1000)::bigint, events, total, (extract(epoch from window_end - window_start) * 1000)::bigint FROM {table} WHERE \"user\" NOT LIKE 'zz-%'"
            ),
            &[],
        )
        .map_err(|e| e.to_string())?;
    let mut out = Aggregates::new();
    for r in &rows {
        let (user, start): (String, i64) = (r.get(0), r.get(1));
        let length: i64 = r.get(4);
        assert_eq!(
            length, WINDOW_MS,
            "{table}: {user}'s window at {start}: window_end - window_start"
        );
        out.insert((user, start), (r.get(2), r.get(3)));
    }
    Ok(out)
}

/// Compares two aggregate maps and says where they differ.
pub fn assert_same(what: &str, got: &Aggregates, want: &Aggregates) {
    if got == want {
        return;
    }
    let missing: Vec<_> = want
        .keys()
        .filter(|k| !got.contains_key(*k))
        .take(5)
        .collect();
    let extra: Vec<_> = got
        .keys()
        .filter(|k| !want.contains_key(*k))
        .take(5)
        .collect();
    let wrong: Vec<_> = want
        .iter()
        .filter_map(|(k, v)| got.get(k).filter(|g| *g != v).map(|g| (k, v, g)))
        .take(5)
        .collect();
    panic!(
        "{what}: {} windows, expected {}; missing {missing:?}; extra {extra:?}; wrong (want, got) {wrong:?}",
        got.len(),
        want.len()
    );
}
