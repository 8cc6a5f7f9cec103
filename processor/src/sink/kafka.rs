//! The Kafka sink: derived events as Avro in the Confluent wire format, and dead letters as
//! the original record plus headers.
//!
//! Idempotency: the producer is idempotent (`enable.idempotence=true`, `acks=all`), so its
//! own retries never duplicate a record. A crash re-emits the results since the last
//! checkpoint; each carries the header `weir-event-id` = `pipeline/key/window start/sequence`
//! and the record key is the group key, so a consumer deduplicates by id and a compacted
//! topic keeps the latest value per key.
//!
//! [`KafkaSink::flush`] waits for every delivery report; a failed delivery fails the flush,
//! so a checkpoint is never written past a record the broker did not acknowledge.

use super::encode::DeadLetter;
use super::{Output, Sink, SinkError};
use crate::kafka_client::{self, Role};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a flush waits for delivery reports before the checkpoint is abandoned (the
/// runtime then restarts from the previous checkpoint).
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(120);

/// Counts records sent and their delivery reports, and failed ones; the first error is kept
/// for the message. `flush` waits until every sent record has its report counted: the
/// producer's own flush can return while the background thread is still inside a delivery
/// callback. For one topic (`track`, the changelog's) it keeps the highest offset delivered
/// per partition: how far into it a checkpoint reached.
#[derive(Default)]
pub struct DeliveryCounter {
    sent: AtomicU64,
    reported: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
    track: Option<String>,
    reached: Mutex<BTreeMap<i32, i64>>,
}

impl DeliveryCounter {
    /// A counter that keeps the highest delivered offset per partition of `topic`.
    pub fn tracking(topic: &str) -> DeliveryCounter {
        DeliveryCounter {
            track: Some(topic.to_string()),
            ..DeliveryCounter::default()
        }
    }

    /// The highest offset delivered to partition `p` of the tracked topic.
    pub fn reached(&self, p: i32) -> Option<i64> {
        self.reached
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&p)
            .copied()
    }
}

impl ClientContext for DeliveryCounter {}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        match r {
            Err((e, _)) => {
                if let Ok(mut first) = self.first_error.lock() {
                    first.get_or_insert_with(|| e.to_string());
                }
                self.failed.fetch_add(1, Ordering::SeqCst);
            }
            Ok(m) => {
                if self.track.as_deref() == Some(m.topic()) {
                    let mut g = self.reached.lock().unwrap_or_else(|e| e.into_inner());
                    let e = g.entry(m.partition()).or_insert(-1);
                    *e = (*e).max(m.offset());
                }
            }
        }
        self.reported.fetch_add(1, Ordering::SeqCst);
    }
}

/// A producer several writers share (exactly-once: the pipeline's transactional producer,
/// which the sinks, the dead letter, the changelog and the repartition topic all write
/// through, so one transaction holds them all).
pub type SharedProducer = Arc<ThreadedProducer<DeliveryCounter>>;

/// Producer settings shared by result and dead-letter sinks ([`Role::Producer`]).
/// `extra` (from `--kafka-config`) overrides any of them.
pub fn producer_config(brokers: &str, extra: &[(String, String)]) -> ClientConfig {
    kafka_client::config(
        brokers,
        Role::Producer {
            timeout: FLUSH_TIMEOUT,
        },
        extra,
    )
}

fn kafka_err(name: &str, e: impl std::fmt::Display) -> SinkError {
    SinkError::Write {
        name: name.to_string(),
        source: std::io::Error::other(e.to_string()),
    }
}

/// Runs one admin operation on `topic` to its end from synchronous code, on a
/// current-thread runtime of its own (every caller is a pipeline thread or a CLI verb; none
/// runs inside a runtime).
fn admin_blocking<F: std::future::Future<Output = Result<(), SinkError>>>(
    topic: &str,
    op: impl FnOnce() -> F,
) -> Result<(), SinkError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            kafka_err(
                topic,
                format!("cannot start a runtime for the admin client: {e}"),
            )
        })?
        .block_on(op())
}

/// Creates `topic` when it does not exist (an existing topic is taken as it is). Brokers
/// without auto-creation work; a broker whose admin API refuses (librdkafka's mock cluster)
/// is accepted when the topic exists. Blocks (at most about 15 s).
pub fn ensure_topic(
    brokers: &str,
    topic: &str,
    partitions: i32,
    replication: i32,
    extra: &[(String, String)],
) -> Result<(), SinkError> {
    ensure_topic_with(brokers, topic, partitions, replication, &[], extra)
}

/// [`ensure_topic`] with topic configs (`cleanup.policy`, `retention.ms`) for a new topic.
pub fn ensure_topic_with(
    brokers: &str,
    topic: &str,
    partitions: i32,
    replication: i32,
    configs: &[(&str, String)],
    extra: &[(String, String)],
) -> Result<(), SinkError> {
    admin_blocking(topic, || {
        create_topic(brokers, topic, partitions, replication, configs, extra)
    })
}

async fn create_topic(
    brokers: &str,
    topic: &str,
    partitions: i32,
    replication: i32,
    configs: &[(&str, String)],
    extra: &[(String, String)],
) -> Result<(), SinkError> {
    let admin: AdminClient<DefaultClientContext> =
        kafka_client::config(brokers, Role::Admin, extra)
            .create()
            .map_err(|e| kafka_err(topic, e))?;
    // Looked up first: a broker whose admin API does not answer (the mock cluster) would
    // otherwise hold every session start for the 10 s operation timeout.
    if topic_exists(&admin, topic) {
        return Ok(());
    }
    let mut new = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication));
    for (k, v) in configs {
        new = new.set(k, v);
    }
    let opts = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(10)));
    let res =
        match tokio::time::timeout(Duration::from_secs(15), admin.create_topics([&new], &opts))
            .await
        {
            Ok(r) => r,
            Err(_) => Err(KafkaError::AdminOp(RDKafkaErrorCode::RequestTimedOut)),
        };
    match res {
        Ok(results) => {
            for r in results {
                match r {
                    Ok(_) => tracing::info!(topic, partitions, replication, "created topic"),
                    Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((_, code)) => {
                        if !topic_exists(&admin, topic) {
                            return Err(kafka_err(
                                topic,
                                format!("cannot create topic {topic}: {code}"),
                            ));
                        }
                    }
                }
            }
            Ok(())
        }
        Err(e) if topic_exists(&admin, topic) => {
            tracing::debug!(topic, error = %e, "create_topics refused; the topic exists");
            Ok(())
        }
        Err(e) => Err(kafka_err(
            topic,
            format!("cannot create topic {topic}: {e}"),
        )),
    }
}

/// Deletes `topic` (a no-op when it does not exist) and waits, bounded, until the broker no
/// longer lists it, so that it can be created again at once. Blocks (at most about 30 s).
pub fn delete_topic(
    brokers: &str,
    topic: &str,
    extra: &[(String, String)],
) -> Result<(), SinkError> {
    admin_blocking(topic, || remove_topic(brokers, topic, extra))
}

async fn remove_topic(
    brokers: &str,
    topic: &str,
    extra: &[(String, String)],
) -> Result<(), SinkError> {
    let admin: AdminClient<DefaultClientContext> =
        kafka_client::config(brokers, Role::Admin, extra)
            .create()
            .map_err(|e| kafka_err(topic, e))?;
    if !topic_exists(&admin, topic) {
        return Ok(());
    }
    let opts = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(10)));
    let res = match tokio::time::timeout(
        Duration::from_secs(15),
        admin.delete_topics(&[topic], &opts),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(KafkaError::AdminOp(RDKafkaErrorCode::RequestTimedOut)),
    };
    match res {
        Ok(results) => {
            for r in results {
                match r {
                    Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
                    Err((_, code)) => {
                        return Err(kafka_err(
                            topic,
                            format!("cannot delete topic {topic}: {code}"),
                        ))
                    }
                }
            }
        }
        Err(e) => {
            return Err(kafka_err(
                topic,
                format!("cannot delete topic {topic}: {e}"),
            ));
        }
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while topic_exists(&admin, topic) {
        if std::time::Instant::now() > deadline {
            return Err(kafka_err(
                topic,
                format!("topic {topic} is still listed 30 s after its deletion"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tracing::info!(topic, "deleted topic");
    Ok(())
}

fn topic_exists(admin: &AdminClient<DefaultClientContext>, topic: &str) -> bool {
    admin
        .inner()
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .map(|m| {
            m.topics()
                .iter()
                .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
        })
        .unwrap_or(false)
}

/// A producer whose sends wait (bounded) when its queue is full and whose flush reports
/// every failed delivery. Its producer is its own, or [`SharedProducer`] (then a flush
/// waits for every writer's records, and one failure fails them all).
pub struct Sender {
    name: String,
    producer: SharedProducer,
}

impl Sender {
    pub fn new(brokers: &str, name: &str, extra: &[(String, String)]) -> Result<Sender, SinkError> {
        let producer = producer_config(brokers, extra)
            .create_with_context(DeliveryCounter::default())
            .map_err(|e| kafka_err(name, e))?;
        Ok(Sender::shared(name, Arc::new(producer)))
    }

    /// A sender on `producer`, which others may write through too.
    pub fn shared(name: &str, producer: SharedProducer) -> Sender {
        Sender {
            name: name.to_string(),
            producer,
        }
    }

    /// The producer (for its transactions).
    pub fn producer(&self) -> &SharedProducer {
        &self.producer
    }

    pub fn send(
        &mut self,
        topic: &str,
        key: Option<&[u8]>,
        value: &[u8],
        headers: OwnedHeaders,
        timestamp: Option<i64>,
    ) -> Result<(), SinkError> {
        let mut rec = BaseRecord::to(topic).payload(value).headers(headers);
        if let Some(k) = key {
            rec = rec.key(k);
        }
        if let Some(t) = timestamp {
            rec = rec.timestamp(t);
        }
        self.send_record(rec)
    }

    /// Sends `value` (none: a tombstone) with `key` to one partition of `topic`.
    pub fn send_to(
        &mut self,
        topic: &str,
        partition: i32,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<(), SinkError> {
        let mut rec: BaseRecord<'_, [u8], [u8]> =
            BaseRecord::to(topic).key(key).partition(partition);
        if let Some(v) = value {
            rec = rec.payload(v);
        }
        self.send_record(rec)
    }

    fn send_record<K, P>(&mut self, rec: BaseRecord<'_, K, P>) -> Result<(), SinkError>
    where
        K: rdkafka::message::ToBytes + ?Sized,
        P: rdkafka::message::ToBytes + ?Sized,
    {
        // Backpressure: a full queue waits for deliveries (the broker is slow or away).
        kafka_client::send_waiting(&*self.producer, rec, FLUSH_TIMEOUT)
            .map_err(|e| kafka_err(&self.name, e))?;
        self.producer.context().sent.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// Records sent whose delivery report has not been counted yet.
    pub fn unacknowledged(&self) -> u64 {
        let ctx = self.producer.context();
        ctx.sent
            .load(Ordering::SeqCst)
            .saturating_sub(ctx.reported.load(Ordering::SeqCst))
    }

    /// Waits for every outstanding delivery report; fails if any delivery failed.
    pub fn flush(&mut self) -> Result<(), SinkError> {
        self.flush_within(FLUSH_TIMEOUT)
    }

    /// [`Sender::flush`], waiting at most `within`.
    pub fn flush_within(&mut self, within: Duration) -> Result<(), SinkError> {
        let deadline = Instant::now() + within;
        self.producer
            .flush(within)
            .map_err(|e| kafka_err(&self.name, format!("flush: {e}")))?;
        self.wait_reported(deadline)
    }

    /// Waits until every record sent has its delivery report counted (a transaction's
    /// commit flushes, but the last reports may still be on their way); fails if any
    /// delivery failed.
    pub fn wait_reported(&self, deadline: Instant) -> Result<(), SinkError> {
        let ctx = self.producer.context();
        while ctx.reported.load(Ordering::SeqCst) < ctx.sent.load(Ordering::SeqCst) {
            if Instant::now() > deadline {
                return Err(kafka_err(&self.name, "flush: delivery reports missing"));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        // Sticky: once a delivery failed, every later flush fails too, so no checkpoint can
        // be written past the lost record (the session restarts with a new producer).
        let failed = ctx.failed.load(Ordering::SeqCst);
        if failed > 0 {
            let first = ctx
                .first_error
                .lock()
                .ok()
                .and_then(|f| f.clone())
                .unwrap_or_default();
            return Err(kafka_err(
                &self.name,
                format!("{failed} deliveries failed; first: {first}"),
            ));
        }
        Ok(())
    }
}

/// A sender of its own, or on the shared producer.
fn sender(
    brokers: &str,
    name: &str,
    extra: &[(String, String)],
    shared: Option<&SharedProducer>,
) -> Result<Sender, SinkError> {
    match shared {
        Some(p) => Ok(Sender::shared(name, p.clone())),
        None => Sender::new(brokers, name, extra),
    }
}

/// Derived events to a topic.
pub struct KafkaSink {
    topic: String,
    sender: Sender,
    /// The Confluent frame: magic byte and schema id.
    frame: [u8; 5],
    buf: Vec<u8>,
}

impl KafkaSink {
    pub fn new(
        brokers: &str,
        topic: &str,
        schema_id: u32,
        extra: &[(String, String)],
        shared: Option<&SharedProducer>,
    ) -> Result<KafkaSink, SinkError> {
        let mut frame = [0u8; 5];
        frame[1..].copy_from_slice(&schema_id.to_be_bytes());
        Ok(KafkaSink {
            topic: topic.to_string(),
            sender: sender(brokers, &format!("kafka:{topic}"), extra, shared)?,
            frame,
            buf: Vec::with_capacity(256),
        })
    }
}

impl Sink for KafkaSink {
    fn name(&self) -> &str {
        &self.topic
    }

    fn wants_avro(&self) -> bool {
        true
    }

    /// The record is Avro; the JSON line is not needed.
    fn wants_json(&self) -> bool {
        false
    }

    fn write(&mut self, out: &Output<'_>) -> Result<(), SinkError> {
        self.buf.clear();
        self.buf.extend_from_slice(&self.frame);
        self.buf.extend_from_slice(out.avro);
        let headers = OwnedHeaders::new().insert(Header {
            key: "weir-event-id",
            value: Some(out.event_id),
        });
        self.sender.send(
            &self.topic,
            out.record_key,
            &self.buf,
            headers,
            out.timestamp,
        )
    }

    fn flush(&mut self) -> Result<Option<u64>, SinkError> {
        if self.sender.unacknowledged() > 0 {
            crate::faults::reached(crate::faults::Point::SinkWritten);
        }
        self.sender.flush()?;
        Ok(None)
    }
}

/// Dead letters to a topic: the original key and value, the envelope in headers.
pub struct KafkaDeadLetter {
    topic: String,
    sender: Sender,
}

impl KafkaDeadLetter {
    pub fn new(
        brokers: &str,
        topic: &str,
        extra: &[(String, String)],
        shared: Option<&SharedProducer>,
    ) -> Result<KafkaDeadLetter, SinkError> {
        Ok(KafkaDeadLetter {
            topic: topic.to_string(),
            sender: sender(brokers, &format!("dead-letter:{topic}"), extra, shared)?,
        })
    }

    pub fn write(&mut self, d: &DeadLetter) -> Result<(), SinkError> {
        let partition = d.partition.to_string();
        let offset = d.offset.to_string();
        let mut headers = OwnedHeaders::new()
            .insert(Header {
                key: "weir-reason",
                value: Some(d.reason.as_str()),
            })
            .insert(Header {
                key: "weir-pipeline",
                value: Some(d.pipeline.as_str()),
            })
            .insert(Header {
                key: "weir-source-topic",
                value: Some(d.topic.as_str()),
            })
            .insert(Header {
                key: "weir-source-partition",
                value: Some(partition.as_str()),
            })
            .insert(Header {
                key: "weir-source-offset",
                value: Some(offset.as_str()),
            })
            .insert(Header {
                key: "weir-error",
                value: Some(d.error.as_str()),
            });
        if let Some(ts) = d.timestamp {
            let ts = ts.to_string();
            headers = headers.insert(Header {
                key: "weir-source-timestamp",
                value: Some(ts.as_str()),
            });
        }
        self.sender.send(
            &self.topic,
            d.key.as_deref(),
            &d.value,
            headers,
            d.timestamp,
        )
    }

    pub fn flush(&mut self) -> Result<(), SinkError> {
        self.sender.flush()
    }
}
