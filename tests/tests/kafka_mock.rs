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

/// A stateless pipeline (`pipelines/clickstream-clean.yaml`) on Kafka: each valid event is
/// one output record with the source record's timestamp, keyed by `key_by` (or, without it,
/// by the source record's key), with `weir-event-id` = pipeline/topic/partition/offset; bad
/// events go to the dead-letter topic. Expectations come from what this test produced.
#[test]
fn a_stateless_pipeline_routes_each_valid_event_with_its_coordinates() {
    use weir_tests::kafka::{produce_at, producer, read_all};
    let broker = mock_broker();
    let dir = tempfile::tempdir().unwrap();
    let shipped =
        std::fs::read_to_string(weir_tests::repo().join("pipelines/clickstream-clean.yaml"))
            .unwrap();
    let t0 = 1_767_225_600_000i64;
    // (partition, key, value, timestamp); users u0..u4, every 5th a health check.
    let mut sent: Vec<(i32, String, serde_json::Value, i64)> = Vec::new();
    for i in 0..40i64 {
        let user = format!("u{}", i % 5);
        let page = if i % 5 == 4 {
            "/health".to_string()
        } else {
            format!("/p{}", i % 3)
        };
        let referrer = if i % 2 == 0 {
            serde_json::Value::Null
        } else {
            "https://ref.example/".into()
        };
        let v = serde_json::json!({
            "user_id": user, "page": page, "referrer": referrer,
            "duration_ms": if i % 3 == 0 { serde_json::Value::Null } else { (i * 10).into() },
            "ts": t0 + i * 1000,
        });
        sent.push(((i % 2) as i32, user, v, t0 + 500_000 + i));
    }
    for (variant, keyed) in [("keyed", true), ("source-key", false)] {
        let (src, out, dead) = (
            format!("sl-in-{variant}"),
            format!("sl-out-{variant}"),
            format!("sl-dead-{variant}"),
        );
        broker.create_topic(&src, 2);
        broker.create_topic(&out, 4);
        broker.create_topic(&dead, 1);
        let mut yaml = shipped
            .replace("name: clickstream-clean", &format!("name: clean-{variant}"))
            .replace("topics: [clickstream]", &format!("topics: [{src}]"))
            .replace(
                "topic: clickstream-clean-dead-letter",
                &format!("topic: {dead}"),
            )
            .replace("topic: clickstream-clean\n", &format!("topic: {out}\n"));
        if !keyed {
            yaml = yaml.replace("  - key_by: [user_id]", "");
        }
        assert!(yaml.contains(&out) && yaml.contains(&dead) && yaml.contains(&src));
        let pipeline = dir.path().join(format!("{variant}.yaml"));
        std::fs::write(&pipeline, yaml).unwrap();

        let p = producer(&broker.bootstrap);
        let mut records: Vec<(i32, Vec<u8>, Vec<u8>)> = sent
            .iter()
            .map(|(part, k, v, _)| (*part, k.clone().into_bytes(), v.to_string().into_bytes()))
            .collect();
        // Not JSON (decode) and no page (schema), both on partition 1.
        records.push((1, b"bad".to_vec(), b"{\"user_id\":".to_vec()));
        records.push((1, b"bad".to_vec(), br#"{"user_id":"x","ts":1}"#.to_vec()));
        let stamps: std::collections::HashMap<Vec<u8>, i64> = records
            .iter()
            .enumerate()
            .map(|(i, r)| (r.2.clone(), sent.get(i).map_or(t0, |s| s.3)))
            .collect();
        produce_at(&p, &src, &records, &|v| stamps.get(v).copied());
        // The source coordinates of each produced record, as the broker gave them.
        let consumed = read_all(&broker.bootstrap, &src, &[]);
        assert_eq!(consumed.len(), records.len());

        let state = dir.path().join(format!("state-{variant}"));
        let mut args = vec![
            "run".to_string(),
            pipeline.display().to_string(),
            "--brokers".into(),
            broker.bootstrap.clone(),
            "--state-dir".into(),
            state.display().to_string(),
            "--checkpoint-interval".into(),
            "200ms".into(),
        ];
        for (k, v) in broker.client_settings() {
            args.push("--kafka-config".into());
            args.push(format!("{k}={v}"));
        }
        let log = dir.path().join(format!("{variant}.log"));
        let mut weir = WeirProcess::start(&args, log, &[]);
        let valid: Vec<&weir_tests::kafka::Record> = consumed
            .iter()
            .filter(|r| {
                serde_json::from_slice::<serde_json::Value>(&r.value)
                    .is_ok_and(|v| v.get("page").is_some_and(|p| p != "/health"))
            })
            .collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        let (got, dead_got) = loop {
            let got = read_all(&broker.bootstrap, &out, &[]);
            let d = read_all(&broker.bootstrap, &dead, &[]);
            if got.len() >= valid.len() && d.len() >= 2 {
                break (got, d);
            }
            assert!(weir.exited().is_none(), "{}", weir.log_text());
            assert!(
                std::time::Instant::now() < deadline,
                "{} of {} results, {} dead letters: {}",
                got.len(),
                valid.len(),
                d.len(),
                weir.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        assert!(
            weir.stop(),
            "weir did not stop cleanly: {}",
            weir.log_text()
        );
        assert_eq!(got.len(), valid.len(), "one result per valid event");
        assert_eq!(dead_got.len(), 2, "two dead letters");

        let schema = apache_avro::Schema::parse_str(
            &std::fs::read_to_string(weir_tests::repo().join("schemas/clickstream_clean.avsc"))
                .unwrap(),
        )
        .unwrap();
        let mut ids = std::collections::HashSet::new();
        for r in &got {
            let id = r.header("weir-event-id").expect("weir-event-id");
            assert!(ids.insert(id.clone()), "{id} twice");
            let src_rec = valid
                .iter()
                .find(|s| id == format!("clean-{variant}/{src}/{}/{}", s.partition, s.offset))
                .unwrap_or_else(|| panic!("{id} names no valid source record"));
            let input: serde_json::Value = serde_json::from_slice(&src_rec.value).unwrap();
            assert_eq!(r.timestamp, src_rec.timestamp, "{id}: the source timestamp");
            let want_key = if keyed {
                serde_json::json!({"user_id": input["user_id"]})
                    .to_string()
                    .into_bytes()
            } else {
                src_rec.key.clone().unwrap()
            };
            assert_eq!(
                r.key.as_deref(),
                Some(&want_key[..]),
                "{id}: the record key"
            );
            // Confluent framing: magic 0, schema id 1, then the Avro body.
            assert_eq!(&r.value[..5], &[0, 0, 0, 0, 1], "{id}: the frame");
            let v = apache_avro::from_avro_datum(&schema, &mut &r.value[5..], None).unwrap();
            let apache_avro::types::Value::Record(fields) = v else {
                panic!("{id}: not a record")
            };
            let f = |n: &str| {
                fields
                    .iter()
                    .find(|(k, _)| k == n)
                    .map(|x| x.1.clone())
                    .unwrap()
            };
            use apache_avro::types::Value as V;
            assert_eq!(
                f("user_id"),
                V::String(input["user_id"].as_str().unwrap().into())
            );
            assert_eq!(f("page"), V::String(input["page"].as_str().unwrap().into()));
            let want_ref = input["referrer"].as_str().unwrap_or("direct");
            assert_eq!(f("referrer"), V::String(want_ref.into()), "{id}");
            let want_dur = match input["duration_ms"].as_i64() {
                Some(d) => V::Union(1, Box::new(V::Long(d))),
                None => V::Union(0, Box::new(V::Null)),
            };
            assert_eq!(f("duration_ms"), want_dur, "{id}");
            assert_eq!(f("ts"), V::TimestampMillis(input["ts"].as_i64().unwrap()));
        }
        let reasons: Vec<String> = dead_got
            .iter()
            .map(|d| d.header("weir-reason").unwrap_or_default())
            .collect();
        for d in &dead_got {
            // The original bytes, and where they were read.
            let at = (
                d.header("weir-source-partition").unwrap_or_default(),
                d.header("weir-source-offset").unwrap_or_default(),
            );
            let orig = consumed
                .iter()
                .find(|c| (c.partition.to_string(), c.offset.to_string()) == at)
                .unwrap_or_else(|| panic!("a dead letter names no source record: {at:?}"));
            assert_eq!(d.value, orig.value);
        }
        let mut sorted = reasons.clone();
        sorted.sort();
        assert_eq!(sorted, ["decode", "schema"], "{reasons:?}");
    }
}
