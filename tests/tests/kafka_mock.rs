//! The fast Kafka suite, on librdkafka's mock cluster (in this process, always available):
//! Kafka in, Kafka and PostgreSQL out, dead letters to a topic, and injected broker errors.

use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use std::time::Duration;
use weir_tests::kafka::{mock_broker, WeirProcess};
use weir_tests::scenario::{assert_same, Scenario};

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
    assert_same("postgres table", &rows, &s.expected);
    let (topic, _) = s.topic_results(&broker);
    assert_same("kafka topic", &topic, &s.expected);
    s.check_dead_letters(&broker);
    // A clean stop commits the state's offsets to the group: lag is zero.
    let log = weir.log_text();
    assert!(log.contains("stopped;"), "{log}");
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
    let mut weir = WeirProcess::start(&s.args(&broker), s.log(), &[]);
    let rows = s.wait_for_table(Duration::from_secs(120), &mut || weir.exited().is_none());
    assert!(
        weir.stop(),
        "weir did not stop cleanly: {}",
        weir.log_text()
    );
    assert_same("postgres table", &rows, &s.expected);
    let (topic, _) = s.topic_results(&broker);
    assert_same("kafka topic", &topic, &s.expected);
    s.check_dead_letters(&broker);
    s.drop_table();
}
