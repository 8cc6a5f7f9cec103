//! The Kafka source: consumer settings and the conversion of a fetched message into a
//! [`SourceRecord`]. The poll loop, rebalance handling and offset commits live in
//! [`crate::runtime::kafka`], because they are tied to checkpoints.

use super::{Payload, SourceRecord};
use crate::kafka_client::{self, Role};
use rdkafka::config::ClientConfig;
use rdkafka::message::{BorrowedMessage, Message};

/// The pipeline consumer's settings ([`Role::Pipeline`]); `extra` overrides any of them.
pub fn consumer_config(
    brokers: &str,
    group: &str,
    instance_id: Option<&str>,
    extra: &[(String, String)],
) -> ClientConfig {
    kafka_client::config(brokers, Role::Pipeline { group, instance_id }, extra)
}

/// The record as read: coordinates, timestamp, key and value bytes. A tombstone (no value)
/// becomes an empty value, which the decoder dead-letters.
pub fn record_of(m: &BorrowedMessage<'_>) -> SourceRecord {
    SourceRecord {
        topic: m.topic().to_string(),
        partition: m.partition() as u32,
        offset: m.offset(),
        timestamp: m.timestamp().to_millis(),
        key: m.key().map(|k| k.to_vec()),
        value: Payload::Bytes(m.payload().unwrap_or(&[]).to_vec()),
        line: 0,
    }
}
