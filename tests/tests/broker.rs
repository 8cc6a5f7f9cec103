//! The test broker itself (`WEIR_TEST_KAFKA=kafka`: Apache Kafka started by
//! `scripts/kafka.sh`): records and committed offsets survive a SIGKILL and a clean stop on
//! the same data dir and port, and transactions work on one node (the internal topics at
//! replication factor 1), as the later exactly-once work needs.

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use std::process::Command;
use std::time::Duration;
use weir_tests::kafka::{produce, producer, read_all, real_broker};

fn committed(bootstrap: &str, group: &str, topic: &str) -> Vec<i64> {
    weir_tests::kafka::committed(bootstrap, group, topic, 2)
}

#[test]
fn kafka_keeps_records_and_offsets_across_sigkill_and_stop_and_runs_transactions() {
    let Some(mut broker) = real_broker() else {
        return;
    };
    if broker.kafka().is_none() {
        eprintln!(
            "not Apache Kafka through scripts/kafka.sh ({}); nothing to check",
            broker.kind
        );
        return;
    }
    let topic = "broker-check";
    let group = "broker-check-group";
    broker.create_topic(topic, 2);
    let recs: Vec<_> = (0..100)
        .map(|i| {
            (
                i % 2,
                format!("k{i}").into_bytes(),
                format!("v{i}").into_bytes(),
            )
        })
        .collect();
    produce(&producer(&broker.bootstrap), topic, &recs);
    {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &broker.bootstrap)
            .set("group.id", group)
            .create()
            .expect("consumer");
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, 0, Offset::Offset(30))
            .expect("tpl");
        tpl.add_partition_offset(topic, 1, Offset::Offset(40))
            .expect("tpl");
        c.commit(&tpl, CommitMode::Sync).expect("commit");
    }
    assert_eq!(committed(&broker.bootstrap, group, topic), vec![30, 40]);

    // An outage: SIGKILL, then start on the same data dir (the port is kept).
    broker.stop();
    broker.start();
    assert_eq!(
        read_all(&broker.bootstrap, topic, &[]).len(),
        100,
        "records after SIGKILL"
    );
    assert_eq!(
        committed(&broker.bootstrap, group, topic),
        vec![30, 40],
        "offsets after SIGKILL"
    );

    // A clean stop through the script, and a start again.
    let dir = broker.kafka().expect("kafka").data_dir().to_path_buf();
    let script = weir_tests::repo().join("scripts/kafka.sh");
    let stop = Command::new(&script)
        .args(["stop", "--data-dir"])
        .arg(&dir)
        .output()
        .expect("stop");
    assert!(
        stop.status.success(),
        "{}",
        String::from_utf8_lossy(&stop.stderr)
    );
    let status = Command::new(&script)
        .args(["status", "--data-dir"])
        .arg(&dir)
        .output()
        .expect("status");
    assert_eq!(String::from_utf8_lossy(&status.stdout).trim(), "stopped");
    broker.start();
    assert_eq!(
        read_all(&broker.bootstrap, topic, &[]).len(),
        100,
        "records after a clean stop"
    );
    assert_eq!(
        committed(&broker.bootstrap, group, topic),
        vec![30, 40],
        "offsets after a clean stop"
    );

    // Transactions on one node: init, a committed and an aborted transaction; a
    // read_committed reader sees only the committed records.
    let tx: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .set("transactional.id", "broker-check-tx")
        .create()
        .expect("transactional producer");
    tx.init_transactions(Duration::from_secs(60))
        .expect("init_transactions");
    tx.begin_transaction().expect("begin");
    for i in 0..10 {
        tx.send(
            BaseRecord::to("broker-check-tx")
                .key("k")
                .payload(&format!("c{i}")),
        )
        .map_err(|(e, _)| e)
        .expect("send");
    }
    tx.commit_transaction(Duration::from_secs(30))
        .expect("commit");
    tx.begin_transaction().expect("begin");
    tx.send(
        BaseRecord::to("broker-check-tx")
            .key("k")
            .payload("aborted"),
    )
    .map_err(|(e, _)| e)
    .expect("send");
    tx.flush(Duration::from_secs(30)).expect("flush");
    tx.abort_transaction(Duration::from_secs(30))
        .expect("abort");
    // (read_all stops at the high watermark, which counts the transaction markers that a
    // read_committed consumer never sees, so poll here: all ten, then nothing more.)
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .set("group.id", "broker-check-tx-reader")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("reader");
    c.subscribe(&["broker-check-tx"]).expect("subscribe");
    let mut values = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut quiet_since = None;
    while std::time::Instant::now() < deadline {
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                values.push(String::from_utf8_lossy(m.payload().unwrap_or(&[])).into_owned());
                quiet_since = None;
            }
            _ if values.len() >= 10 => {
                let since = *quiet_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() > Duration::from_secs(2) {
                    break;
                }
            }
            _ => {}
        }
    }
    assert_eq!(values, (0..10).map(|i| format!("c{i}")).collect::<Vec<_>>());
}
