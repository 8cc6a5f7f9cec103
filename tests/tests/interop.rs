//! Clients nobody here wrote, on both sides of Weir (`tests/python/interop.py`): Python's
//! `confluent-kafka` produces Confluent-framed Avro click events (framed with `fastavro`, or
//! by the registry's `AvroSerializer` where a registry runs) and computes the expected
//! aggregates itself; Weir consumes, validates and aggregates them into a Kafka topic; a
//! `confluent-kafka` consumer reads that topic back and `fastavro` decodes it. The decoded
//! last value per key and window must equal the Python side's expectation.
//!
//! The interpreter is `$WEIR_PYTHON` (`scripts/test.sh` makes a virtualenv with
//! `tests/python/requirements.txt`); without it the test is skipped, and fails under CI=true.

use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};
use weir_tests::kafka::{real_broker, WeirProcess};
use weir_tests::repo;
use weir_tests::scenario::{CLICK, TOTALS};

fn python() -> Option<String> {
    let py = std::env::var("WEIR_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&py)
        .args(["-c", "import confluent_kafka, fastavro"])
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return Some(py);
    }
    let why = format!("{py} cannot import confluent_kafka and fastavro (scripts/test.sh installs them into a virtualenv and sets WEIR_PYTHON)");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true and {why}");
    }
    eprintln!("SKIPPED: {why}");
    None
}

fn interop(py: &str, args: &[&str]) -> Value {
    let out = Command::new(py)
        .arg(repo().join("tests/python/interop.py"))
        .args(args)
        .output()
        .expect("run interop.py");
    assert!(
        out.status.success(),
        "interop.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or("null");
    serde_json::from_str(line).unwrap_or_else(|e| panic!("interop.py printed {text}: {e}"))
}

#[test]
fn python_confluent_kafka_in_and_out() {
    let Some(py) = python() else { return };
    let Some(broker) = real_broker() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let suffix = std::process::id();
    let source = format!("interop-clicks-{suffix}");
    let out_topic = format!("interop-totals-{suffix}");
    let dlq = format!("interop-dlq-{suffix}");
    broker.create_topic(&source, 4);
    if broker.mock().is_some() {
        broker.create_topic(&out_topic, 4);
        broker.create_topic(&dlq, 1);
    }
    std::fs::write(dir.path().join("click.avsc"), CLICK).expect("schema");
    std::fs::write(dir.path().join("totals.avsc"), TOTALS).expect("schema");
    let pipeline = dir.path().join("pipeline.yaml");
    std::fs::write(
        &pipeline,
        format!(
            r#"apiVersion: weir/v1
name: interop
source:
  topics: [{source}]
  group: weir-interop-{suffix}
  format: avro
  schema: click.avsc
  writer_schemas: {{1: click.avsc}}
  event_time: {{field: ts}}
  watermark: {{max_out_of_orderness: 3s}}
steps:
  - key_by: [user]
  - window: {{type: tumbling, size: 10s}}
  - aggregate:
      outputs:
        events: {{fn: count}}
        total: {{fn: sum, field: amount}}
output:
  schema: totals.avsc
sinks:
  - {{type: kafka, topic: {out_topic}, partitions: 4, schema_id: 7}}
dead_letter: {{type: kafka, topic: {dlq}}}
"#
        ),
    )
    .expect("pipeline");

    let produced = interop(&py, &["produce", &broker.bootstrap, &source, "20000", "42"]);
    let expected = produced["expected"].clone();
    assert!(
        expected.as_object().is_some_and(|m| m.len() > 100),
        "the Python side computed {expected}"
    );
    let log = dir.path().join("weir.log");
    let mut weir = WeirProcess::start(
        &[
            "run".into(),
            pipeline.display().to_string(),
            "--brokers".into(),
            broker.bootstrap.clone(),
            "--state-dir".into(),
            dir.path().join("state").display().to_string(),
            "--checkpoint-interval".into(),
            "200ms".into(),
        ],
        log,
        &[],
    );
    let schema = dir.path().join("totals.avsc").display().to_string();
    let deadline = Instant::now() + Duration::from_secs(180);
    let got = loop {
        std::thread::sleep(Duration::from_secs(2));
        assert!(weir.exited().is_none(), "weir exited: {}", weir.log_text());
        let read = interop(&py, &["consume", &broker.bootstrap, &out_topic, &schema]);
        if read["results"] == expected || Instant::now() > deadline {
            break read;
        }
    };
    assert!(
        weir.stop(),
        "weir did not stop cleanly: {}",
        weir.log_text()
    );
    let results = &got["results"];
    if *results != expected {
        let (want, have) = (expected.as_object().unwrap(), results.as_object().unwrap());
        let missing: Vec<_> = want
            .keys()
            .filter(|k| !have.contains_key(*k))
            .take(5)
            .collect();
        let wrong: Vec<_> = want
            .iter()
            .filter(|(k, v)| have.get(*k).is_some_and(|h| h != *v))
            .take(5)
            .collect();
        panic!(
            "Python decoded {} windows, expected {}; missing {missing:?}; wrong {wrong:?}",
            have.len(),
            want.len()
        );
    }
    eprintln!(
        "interop on {}: {} windows decoded by fastavro from {} records equal the Python side's aggregates",
        broker.kind,
        expected.as_object().map(|m| m.len()).unwrap_or(0),
        got["records"]
    );
}
