//! Every Kafka client Weir makes is configured here: the pipeline's consumer, the sinks'
//! producers, the admin client that creates topics, and the consumers of the offline tools
//! (`weir replay`, `weir replay-dlq`, `weir offsets`). Each starts from the broker address,
//! gets the settings of its [`Role`], then the user's `--kafka-config` on top, so a setting
//! such as `security.protocol` reaches every client alike. A leaf module: it imports only
//! rdkafka, and any layer may call it.

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::ToBytes;
use rdkafka::producer::{BaseRecord, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use std::time::{Duration, Instant};

/// What a client is for.
pub enum Role<'a> {
    /// The pipeline's consumer group member: cooperative-sticky assignment, no automatic
    /// commits or offset stores (Weir commits what its checkpoints hold), a bounded
    /// prefetch queue, and optional static membership.
    Pipeline {
        group: &'a str,
        instance_id: Option<&'a str>,
    },
    /// A sink's idempotent producer; `timeout` bounds how long a delivery is retried.
    Producer { timeout: Duration },
    /// The admin client that creates sink topics.
    Admin,
    /// A tool's consumer: reads or commits a group's offsets, never joins it by itself.
    Tool { group: &'a str },
}

/// The settings of a client of `role` on `brokers`; `extra` overrides any of them.
pub fn config(brokers: &str, role: Role<'_>, extra: &[(String, String)]) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("reconnect.backoff.max.ms", "2000");
    match role {
        Role::Pipeline { group, instance_id } => {
            c.set("group.id", group)
                .set("enable.auto.commit", "false")
                .set("enable.auto.offset.store", "false")
                .set("auto.offset.reset", "earliest")
                .set("partition.assignment.strategy", "cooperative-sticky")
                .set("enable.partition.eof", "false")
                .set("session.timeout.ms", "10000")
                // What a transaction aborted (a crash, a fenced zombie) is never read:
                // librdkafka's default, said here because exactly-once depends on it.
                .set("isolation.level", "read_committed")
                // Bounded prefetch: librdkafka stops fetching a partition past this much...
                .set("queued.max.messages.kbytes", "16384")
                // ...and fetches again this soon once the queue has room. librdkafka's
                // default (1000 ms) idled the fetcher for a second every time the queue
                // filled: one partition of 1 KB records ran at 33 K events/s on Apache
                // Kafka, 525 K/s with 5 ms (`weir bench --kafka`).
                .set("fetch.queue.backoff.ms", "10")
                // Statistics carry each partition's log end: the live lag without extra
                // requests.
                .set("statistics.interval.ms", "1000");
            if let Some(id) = instance_id {
                c.set("group.instance.id", id);
            }
        }
        Role::Producer { timeout } => {
            c.set("enable.idempotence", "true")
                .set("acks", "all")
                .set("linger.ms", "5")
                .set("compression.type", "lz4")
                // Retry for as long as a flush waits: an outage shorter than this loses
                // nothing.
                .set("message.timeout.ms", timeout.as_millis().to_string());
        }
        Role::Admin => {
            // A metadata lookup must not create a topic with the broker's defaults.
            c.set("allow.auto.create.topics", "false");
        }
        Role::Tool { group } => {
            c.set("group.id", group)
                .set("enable.auto.commit", "false")
                .set("enable.partition.eof", "false")
                .set("auto.offset.reset", "earliest")
                .set("reconnect.backoff.max.ms", "1000");
        }
    }
    for (k, v) in extra {
        c.set(k, v);
    }
    c
}

/// Sends `rec`, waiting while the producer's queue is full (backpressure: the broker is
/// slow or away) for at most `within`.
pub fn send_waiting<'a, K, P, C>(
    producer: &ThreadedProducer<C>,
    mut rec: BaseRecord<'a, K, P, C::DeliveryOpaque>,
    within: Duration,
) -> Result<(), KafkaError>
where
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
    C: ProducerContext,
{
    let deadline = Instant::now() + within;
    loop {
        match producer.send(rec) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                if Instant::now() < deadline =>
            {
                rec = back;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// Drops a group consumer (it leaves its group), waiting at most `within`. rdkafka's drop
/// waits for the close without a bound, serving callbacks meanwhile; a close that never
/// completes would hang whatever dropped the consumer (a `weir serve` halt, a re-feed). So
/// the drop runs on its own thread; past `within` it is left to finish there, with a
/// warning, and the caller goes on (the group session times out).
pub fn close<C: rdkafka::consumer::ConsumerContext + 'static>(
    c: rdkafka::consumer::BaseConsumer<C>,
    within: Duration,
    what: &str,
) {
    let (done, wait) = std::sync::mpsc::channel::<()>();
    let spawned = std::thread::Builder::new()
        .name("consumer-close".into())
        .spawn(move || {
            drop(c);
            let _ = done.send(());
        });
    if spawned.is_err() {
        tracing::warn!(
            consumer = what,
            "cannot start a thread to close the consumer"
        );
        return;
    }
    if wait.recv_timeout(within).is_err() {
        tracing::warn!(
            consumer = what,
            within_ms = within.as_millis() as u64,
            "the consumer did not close in time; it goes on closing in the background and its group session times out"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_users_settings_come_last() {
        let extra = vec![
            ("security.protocol".to_string(), "ssl".to_string()),
            ("linger.ms".to_string(), "50".to_string()),
        ];
        let p = config(
            "127.0.0.1:9092",
            Role::Producer {
                timeout: Duration::from_secs(60),
            },
            &extra,
        );
        assert_eq!(p.get("linger.ms"), Some("50"));
        assert_eq!(p.get("security.protocol"), Some("ssl"));
        assert_eq!(p.get("message.timeout.ms"), Some("60000"));
        let a = config("127.0.0.1:9092", Role::Admin, &extra);
        assert_eq!(a.get("security.protocol"), Some("ssl"));
        assert_eq!(a.get("allow.auto.create.topics"), Some("false"));
        let t = config("h:1", Role::Tool { group: "g" }, &[]);
        assert_eq!(t.get("group.id"), Some("g"));
        assert_eq!(t.get("enable.auto.commit"), Some("false"));
    }
}
