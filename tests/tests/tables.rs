//! Running tables (`window: {type: none}`): the ttl's drops counted offline, and on a real
//! broker (`WEIR_TEST_KAFKA`, default Apache Kafka) the latest value per key in a compacted
//! topic Weir creates and one PostgreSQL row per key, against totals computed here.

use apache_avro::types::Value;
use apache_avro::Schema;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use weir_tests::kafka::{producer, read_all, real_broker, Rng, WeirProcess};
use weir_tests::scenario::pg_url;
use weir_tests::{repo, text, weir};

#[test]
fn a_tables_ttl_drops_are_counted() {
    // tests/golden/table_ttl: a is dropped twice (at watermarks 12000 and 30000), by hand.
    let dir = repo().join("tests/golden/table_ttl");
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("out.jsonl");
    let dead = work.path().join("dead.jsonl");
    let o = weir(&[
        "run",
        dir.join("pipeline.yaml").to_str().unwrap(),
        "--input",
        dir.join("input.jsonl").to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--dead-letter",
        dead.to_str().unwrap(),
    ]);
    let err = text(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("6 results out") && err.contains(", 2 table keys expired (ttl);"),
        "{err}"
    );
}

const EVENT: &str = r#"{"type":"record","name":"Event","fields":[
  {"name":"user","type":"string"},
  {"name":"n","type":"long"},
  {"name":"ts","type":{"type":"long","logicalType":"timestamp-millis"}}]}"#;
const TOTALS: &str = r#"{"type":"record","name":"Totals","fields":[
  {"name":"user","type":"string"},
  {"name":"events","type":"long"},
  {"name":"total","type":"long"}]}"#;

/// (events, total) of one user.
type Totals = (i64, i64);

const USERS: u64 = 40;
const EVENTS: u64 = 4_000;
const T0: i64 = 1_767_225_600_000;

#[test]
fn a_table_on_kafka_keeps_the_latest_value_per_key() {
    let Some(broker) = real_broker() else { return };
    let suffix = format!("{}", std::process::id());
    let (source, out) = (format!("table-in-{suffix}"), format!("table-out-{suffix}"));
    let table = format!("weir_table_{suffix}");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("event.avsc"), EVENT).unwrap();
    std::fs::write(dir.path().join("totals.avsc"), TOTALS).unwrap();
    let pipeline = dir.path().join("pipeline.yaml");
    std::fs::write(
        &pipeline,
        format!(
            r#"apiVersion: weir/v1
name: table
source:
  topics: [{source}]
  group: weir-table-{suffix}
  format: json
  schema: event.avsc
  event_time: {{field: ts}}
  watermark: {{max_out_of_orderness: 1s}}
steps:
  - key_by: [user]
  - window: {{type: none, ttl: 1d}}
  - aggregate:
      outputs:
        events: {{fn: count}}
        total: {{fn: sum, field: n}}
      emit: update
      interval: 1s
output:
  schema: totals.avsc
sinks:
  - {{type: kafka, topic: {out}, partitions: 2, schema_id: 7}}
  - {{type: postgres, url: "{pg}", table: {table}}}
"#,
            pg = pg_url()
        ),
    )
    .unwrap();
    broker.create_topic(&source, 2);

    // 4,000 events of 40 users over 40 s of event time, up to 0.5 s out of order (under
    // max_out_of_orderness: none is late), each user's on one partition. Then one event an
    // hour later per partition (users zz-0, zz-1, left out of the checks): the watermark
    // moves on, and the updates still due go out.
    let mut rng = Rng(0x7ab1e | 1);
    let mut want: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    let mut records = Vec::new();
    for i in 0..EVENTS {
        let u = rng.below(USERS);
        let user = format!("u{u:02}");
        let n = rng.below(1000) as i64 - 100;
        let ts = T0 + i as i64 * 10 - rng.below(500) as i64;
        let e = want.entry(user.clone()).or_default();
        e.0 += 1;
        e.1 += n;
        let v = format!(r#"{{"user":"{user}","n":{n},"ts":{ts}}}"#);
        records.push(((u % 2) as i32, user.into_bytes(), v.into_bytes()));
    }
    for p in 0..2 {
        let v = format!(r#"{{"user":"zz-{p}","n":0,"ts":{}}}"#, T0 + 3_600_000);
        records.push((p, format!("zz-{p}").into_bytes(), v.into_bytes()));
    }
    weir_tests::kafka::produce(&producer(&broker.bootstrap), &source, &records);

    let state = dir.path().join("state");
    let args: Vec<String> = [
        "run",
        pipeline.to_str().unwrap(),
        "--brokers",
        &broker.bootstrap,
        "--state-dir",
        state.to_str().unwrap(),
        "--checkpoint-interval",
        "200ms",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut w = WeirProcess::start(&args, dir.path().join("weir.log"), &[]);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut rows = BTreeMap::new();
    while rows != want && Instant::now() < deadline && w.exited().is_none() {
        std::thread::sleep(Duration::from_millis(250));
        rows = db_rows(&table).unwrap_or_default();
    }
    let log = w.log_text();
    assert!(w.stop(), "weir did not stop cleanly: {log}");
    assert_eq!(rows, want, "the PostgreSQL table, one row per user: {log}");
    let mut c = postgres::Client::connect(&pg_url(), postgres::NoTls).unwrap();
    let pk: Vec<String> = c
        .query(
            &format!(
                "SELECT a.attname::text FROM pg_index i JOIN pg_attribute a \
                 ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                 WHERE i.indrelid = '{table}'::regclass AND i.indisprimary"
            ),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(pk, ["user"], "a table's primary key is the group key alone");

    assert_eq!(
        broker.topic_config(&out, "cleanup.policy").as_deref(),
        Some("compact"),
        "the output topic of a table is compacted"
    );
    let schema = Schema::parse_str(TOTALS).unwrap();
    // The records of each key in order: one partition per key, so offsets order them.
    let mut per_key: BTreeMap<String, Vec<(i32, Totals)>> = BTreeMap::new();
    let mut ids = std::collections::HashSet::new();
    let all = read_all(&broker.bootstrap, &out, &[]);
    for r in &all {
        let key = String::from_utf8(r.key.clone().unwrap_or_default()).unwrap();
        let body = r.value.get(5..).expect("a Confluent wire-format value");
        let v = apache_avro::from_avro_datum(&schema, &mut &body[..], None).unwrap();
        let Value::Record(f) = v else { panic!("{v:?}") };
        let (Value::String(user), Value::Long(events), Value::Long(total)) =
            (&f[0].1, &f[1].1, &f[2].1)
        else {
            panic!("{f:?}")
        };
        assert_eq!(key, format!(r#"{{"user":"{user}"}}"#), "the record key");
        assert!(ids.insert(r.header("weir-event-id").expect("weir-event-id")));
        if !user.starts_with("zz-") {
            per_key
                .entry(user.clone())
                .or_default()
                .push((r.partition, (*events, *total)));
        }
    }
    let mut updates = 0;
    for (user, (events, total)) in &want {
        let recs = per_key
            .get(user)
            .unwrap_or_else(|| panic!("no record of {user}"));
        assert!(
            recs.iter().all(|(p, _)| *p == recs[0].0),
            "{user}: records on several partitions"
        );
        assert_eq!(recs.last().map(|r| r.1), Some((*events, *total)), "{user}");
        // Rate-limited: fewer updates than events, counts rising.
        assert!(
            (recs.len() as i64) < *events,
            "{user}: {} updates",
            recs.len()
        );
        assert!(recs.windows(2).all(|w| w[0].1 .0 < w[1].1 .0), "{user}");
        updates += recs.len();
    }
    eprintln!(
        "{} events, {} users, {updates} updates in {out} ({} records in all)",
        EVENTS,
        want.len(),
        all.len()
    );
}

/// user -> (events, total) in the sink's table, sentinel users left out.
fn db_rows(table: &str) -> Result<BTreeMap<String, (i64, i64)>, String> {
    let mut c = postgres::Client::connect(&pg_url(), postgres::NoTls).map_err(|e| e.to_string())?;
    let rows = c
        .query(
            &format!("SELECT \"user\", events, total FROM {table} WHERE \"user\" NOT LIKE 'zz-%'"),
            &[],
        )
        .map_err(|e| e.to_string())?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect())
}
