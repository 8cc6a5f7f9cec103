//! The fast Kafka suite, on librdkafka's mock cluster (in this process, always available):
//! Kafka in, Kafka and PostgreSQL out, dead letters to a topic, and injected broker errors.

use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use std::time::Duration;
use weir_tests::kafka::{mock_broker, WeirProcess};
use weir_tests::scenario::{Scenario, PARTITIONS};

#[test]
fn kafka_in_kafka_and_postgres_out_on_the_mock_cluster() {
    let broker = mock_broker();
    let s = Scenario::new("mock", 20_000, 2_000, 0x5eed_0003);
    s.create_topics(&broker);
    s.produce(&broker.bootstrap, 0..s.batches.len(), Duration::ZERO);
    let mut weir = WeirProcess::start(&s.args(&broker), s.log(), &[]);
    let rows = s.wait_for_table(Duration::from_secs(120), &mut || weir.exited().is_none());
    assert!(
        weir.stop(),
        "weir did not stop cleanly: {}",
        weir.log_text()
    );
    s.check_all(&broker, &rows);
    // A clean stop commits the state's offsets to the group: lag is zero.
    s.assert_no_lag(&broker);
    s.drop_table();
}

#[test]
fn produce_errors_are_retried_without_loss_or_duplicates() {
    let broker = mock_broker();
    let s = Scenario::new("mockfault", 10_000, 1_000, 0x5eed_0004);
    s.create_topics(&broker);
    s.produce(&broker.bootstrap, 0..s.batches.len(), Duration::ZERO);
    // The next 30 produce requests fail with a retriable error: the idempotent producer
    // retries them, and the checkpoint waits for their acknowledgements.
    let cluster = broker.mock().expect("mock");
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 30],
    );
    // One produce request in flight. The mock cluster checks idempotent sequence numbers
    // only for transactional producers (rdkafka_mock.c, rd_kafka_mock_validate_records), so
    // it accepts a batch that follows a failed one; with 5 requests in flight and injected
    // errors we saw records reported as delivered that were not in the log (2 of 13 dead
    // letters, no delivery error). A real broker rejects the out-of-order batch and
    // librdkafka retries both in order.
    let args = s.args_with(&broker, &[("max.in.flight.requests.per.connection", "1")]);
    let mut weir = WeirProcess::start(&args, s.log(), &[]);
    let rows = s.wait_for_table(Duration::from_secs(120), &mut || weir.exited().is_none());
    assert!(
        weir.stop(),
        "weir did not stop cleanly: {}",
        weir.log_text()
    );
    s.check_all(&broker, &rows);
    assert_errors_consumed(&broker.bootstrap, &s.source);
    s.drop_table();
}

/// The mock cluster pops an injected error per request: once Weir has sent enough produce
/// requests, a probe record produced without retries goes through. If it fails with an
/// injected error, the test injected errors Weir never met.
fn assert_errors_consumed(bootstrap: &str, topic: &str) {
    let p: BaseProducer<Delivery> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "false")
        .set("message.send.max.retries", "0")
        .set("message.timeout.ms", "10000")
        .create_with_context(Delivery::default())
        .expect("probe producer");
    p.send(
        BaseRecord::to(topic)
            .partition(0)
            .key("probe")
            .payload("probe"),
    )
    .map_err(|(e, _)| e)
    .expect("send the probe");
    p.flush(Duration::from_secs(15)).expect("flush the probe");
    let result = p.context().0.lock().expect("lock").clone();
    assert_eq!(
        result,
        Some(Ok(())),
        "a probe record after the run was refused: injected errors were left unconsumed"
    );
}

/// The delivery report of the probe record.
#[derive(Default)]
struct Delivery(std::sync::Mutex<Option<Result<(), String>>>);

impl rdkafka::ClientContext for Delivery {}

impl rdkafka::producer::ProducerContext for Delivery {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &rdkafka::message::DeliveryResult<'_>, _: ()) {
        *self.0.lock().expect("lock") =
            Some(r.as_ref().map(|_| ()).map_err(|(e, _)| e.to_string()));
    }
}

/// Three produce requests fail with an error no retry can fix: their records' deliveries
/// fail, the checkpoint that waits for them fails, the session fails (no checkpoint may be
/// written past a failed delivery) and restarts from the last good checkpoint.
///
/// Which record is late depends on the order partitions are read in, so the errors come
/// only once a checkpoint holds every partition's watermark: the first half (no late
/// records) is produced and checkpointed, the second half is produced while Weir stalls on
/// its first record, and the errors are injected then (the mock cluster's error stack is
/// cluster-wide: the test's own producer must be done by then). The restart re-reads the
/// second half from the checkpoint, where every late record is late in any order.
#[test]
fn a_failed_delivery_fails_the_session_which_restarts_without_loss() {
    let broker = mock_broker();
    let s = Scenario::new("mockfatal", 10_000, 1_000, 0x5eed_0005);
    s.create_topics(&broker);
    let half = s.batches.len() / 2;
    let first: usize = s.batches[..half].iter().map(Vec::len).sum();
    s.produce(&broker.bootstrap, 0..half, Duration::ZERO);
    let args = s.args_with(&broker, &[("max.in.flight.requests.per.connection", "1")]);
    let stall = format!("{}:4000", first + 1);
    let mut weir = WeirProcess::start(&args, s.log(), &[("WEIR_TEST_STALL_AT", &stall)]);
    let ends = weir_tests::kafka::log_ends(&broker.bootstrap, &s.source, PARTITIONS);
    assert!(
        ends.iter().all(|e| *e > 0),
        "a partition without records: {ends:?}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let committed =
            weir_tests::kafka::committed(&broker.bootstrap, &s.group, &s.source, PARTITIONS);
        if committed == ends {
            break;
        }
        assert!(weir.exited().is_none(), "{}", weir.log_text());
        assert!(
            std::time::Instant::now() < deadline,
            "the first half was never checkpointed: committed {committed:?}, ends {ends:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    s.produce(&broker.bootstrap, half..s.batches.len(), Duration::ZERO);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !weir.log_text().contains("test hook: stalling") {
        assert!(weir.exited().is_none(), "{}", weir.log_text());
        assert!(
            std::time::Instant::now() < deadline,
            "no stall: {}",
            weir.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let cluster = broker.mock().expect("mock");
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE; 3],
    );
    let rows = s.wait_for_table(Duration::from_secs(180), &mut || weir.exited().is_none());
    assert!(
        weir.stop(),
        "weir did not stop cleanly: {}",
        weir.log_text()
    );
    let log = weir.log_text();
    assert!(
        log.contains("session failed") && log.contains("too large"),
        "the injected errors never failed a session:\n{log}"
    );
    s.check_all(&broker, &rows);
    s.assert_no_lag(&broker);
    assert_errors_consumed(&broker.bootstrap, &s.source);
    s.drop_table();
}

/// The Kafka path's file sink (`--output`): SIGKILLed mid-stream and restarted, it resumes
/// at its checkpointed length (a sink that emptied the file, as this path once did, loses
/// the windows the checkpoint covers; one that appended past it repeats them): every window
/// exactly once, with its final value. Truncation itself: `sink::file`'s unit tests and the
/// golden restart with more than 64 KiB after the checkpoint.
#[test]
fn a_kafka_run_into_a_file_resumes_at_its_checkpointed_length() {
    let broker = mock_broker();
    // 10 ms apart: 100 s of event time, so windows close (and reach the file) all along.
    let s = Scenario::with_step("mockfile", 10_000, 1_000, 0x5eed_0006, 10);
    s.create_topics(&broker);
    s.produce(&broker.bootstrap, 0..s.batches.len(), Duration::ZERO);
    let out = s.dir.path().join("out.jsonl");
    let mut args = s.args(&broker);
    args.push("--output".into());
    args.push(out.display().to_string());
    // Checkpoints every 5,000 records (and 200 ms); the kill falls between two.
    let mut weir = WeirProcess::start(&args, s.log(), &[("WEIR_TEST_SIGKILL_AFTER", "7500")]);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while weir.exited().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "no kill: {}",
            weir.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let before = std::fs::read_to_string(&out)
        .unwrap_or_default()
        .lines()
        .count();
    let mut weir = WeirProcess::start(&args, s.log(), &[]);
    let want = s.expected.len();
    let rows = |text: &str| -> Vec<serde_json::Value> {
        text.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a JSON line"))
            .filter(|v| !v["user"].as_str().unwrap_or("").starts_with("zz-"))
            .collect()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        if rows(&text).len() >= want {
            break;
        }
        assert!(weir.exited().is_none(), "{}", weir.log_text());
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {want} windows in {}",
            rows(&text).len(),
            out.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(weir.stop(), "{}", weir.log_text());
    let got = rows(&std::fs::read_to_string(&out).unwrap());
    let mut seen = weir_tests::scenario::Aggregates::new();
    for r in &got {
        let key = (
            r["user"].as_str().unwrap().to_string(),
            r["window_start"].as_i64().unwrap(),
        );
        let v = (r["events"].as_i64().unwrap(), r["total"].as_i64().unwrap());
        assert!(
            seen.insert(key.clone(), v).is_none(),
            "{key:?} twice in the file"
        );
    }
    weir_tests::scenario::assert_same("the file", &seen, &s.expected);
    assert!(
        before > 0,
        "the kill came before any result reached the file"
    );
}
