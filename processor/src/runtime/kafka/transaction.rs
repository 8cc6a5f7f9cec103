//! Kafka transactions: the changelog's own (at least once), and the pipeline's one per
//! checkpoint under `delivery: exactly_once` (the protocol is in the
//! [driver](super::super::driver)'s module doc).
//!
//! **Identity.** The `transactional.id` is stable per pipeline (consumer group) and instance:
//! `weir-<group>-changelog-<instance>` at least once, `weir-<group>-eos-<instance>` exactly
//! once, the instance being `--instance-id` or a hash of the host name and the state
//! directory. A restart of the same instance fences its previous incarnation and aborts the
//! transaction it left open (`init_transactions`), before anything is read.
//!
//! **Fencing.** A second process that starts with the same identity fences the first: the
//! broker refuses the first one's producer from then on, librdkafka reports a fatal
//! `_FENCED`, and [`fenced`] turns it into [`RunError::Fenced`], which is not retried (a
//! retry would fence the newcomer in turn). The broker's own abort of a transaction open
//! past `transaction.timeout.ms` looks the same to librdkafka (the epoch is bumped); a
//! fencing of a transaction that old restarts the session instead (see [`fenced`]). The consumer offsets go into the
//! transaction with the group's metadata (KIP-447), so a zombie whose group generation is
//! over cannot commit them either.

use super::super::RunError;
use crate::sink::kafka::{producer_config, DeliveryCounter, SharedProducer};
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{Producer, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The pipeline's transactional id (its changelog's; exactly-once, also its results'):
/// stable per pipeline (`group`) and instance, so a restart fences its previous
/// incarnation. One id for both delivery modes: a pipeline moved from one to the other
/// fences what the other left open. The instance is `instance` (`--instance-id`), else a
/// hash of the host name and the state directory.
pub fn transactional_id(group: &str, instance: Option<&str>, state_dir: &Path) -> String {
    let instance = match instance {
        Some(id) => id.to_string(),
        None => {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            let dir = std::fs::canonicalize(state_dir).unwrap_or(state_dir.to_path_buf());
            // FNV-1a: stable across builds and platforms, unlike the std hasher.
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            for b in host.trim().bytes().chain(dir.to_string_lossy().bytes()) {
                h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
            }
            format!("{h:016x}")
        }
    };
    format!("weir-{group}-changelog-{instance}")
}

/// How long a transaction may stay open on the broker, at least (unless the user sets
/// `transaction.timeout.ms`).
pub const TXN_TIMEOUT: Duration = Duration::from_secs(60);

/// What the consumer's rebalance callbacks tell the transaction: the group's metadata
/// (member and generation) and the partitions this member owns.
#[derive(Default)]
pub struct Group {
    pub metadata: Option<ConsumerGroupMetadata>,
    pub owned: BTreeSet<(String, i32)>,
}

/// The [`Group`] the consumer's callbacks and the transaction share.
pub type SharedGroup = Arc<Mutex<Group>>;

/// Locks the shared group (a panic elsewhere leaves the data usable).
pub fn group(g: &SharedGroup) -> std::sync::MutexGuard<'_, Group> {
    g.lock().unwrap_or_else(|e| e.into_inner())
}

/// How long a record may wait for its delivery: the user's `message.timeout.ms` (or
/// `delivery.timeout.ms`) when given, as for the sink's producer, else [`TXN_TIMEOUT`].
/// A broker outage longer than this fails the checkpoint and the session restarts, as it
/// does when the sink's deliveries time out.
pub fn delivery_timeout(extra: &[(String, String)]) -> Duration {
    user_ms(extra, &["message.timeout.ms", "delivery.timeout.ms"]).unwrap_or(TXN_TIMEOUT)
}

/// The last of the user's settings named `keys`, in milliseconds, when it is one.
fn user_ms(extra: &[(String, String)], keys: &[&str]) -> Option<Duration> {
    extra
        .iter()
        .rev()
        .find(|(k, _)| keys.contains(&k.as_str()))
        .and_then(|(_, v)| v.trim().parse::<u64>().ok())
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis)
}

/// When the open transaction began, and how long the broker lets one stay open: a fatal
/// fencing of a transaction older than that may be the broker's timeout (which bumps the
/// producer's epoch, and librdkafka then reports `_FENCED` as for a newer instance).
pub struct Clock {
    begun: Mutex<Instant>,
    timeout: Duration,
}

impl Clock {
    /// Whether the open transaction has been open past the broker's timeout.
    fn expired(&self) -> bool {
        self.begun
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
            >= self.timeout
    }
}

/// A transactional producer with its transaction open.
pub struct Transaction {
    id: String,
    producer: SharedProducer,
    clock: Arc<Clock>,
    /// How long a send, commit or abort may wait: the delivery timeout and a margin.
    pub wait: Duration,
}

impl Transaction {
    /// Creates the producer, fences the previous incarnation (aborting what it left open)
    /// and begins the first transaction. `track`: the topic whose delivered offsets are
    /// kept (the changelog).
    pub fn open(
        brokers: &str,
        transactional_id: &str,
        extra: &[(String, String)],
        track: &str,
    ) -> Result<Transaction, RunError> {
        let mut cfg = producer_config(brokers, extra);
        let delivery = delivery_timeout(extra);
        // A transaction must outlive its records' delivery retries, unless the user says
        // otherwise (`--kafka-config transaction.timeout.ms=...`).
        let txn = user_ms(extra, &["transaction.timeout.ms"]).unwrap_or(TXN_TIMEOUT.max(delivery));
        // librdkafka refuses a delivery timeout longer than the transaction's.
        let delivery = delivery.min(txn);
        cfg.set("transactional.id", transactional_id)
            .set("transaction.timeout.ms", txn.as_millis().to_string())
            .set("message.timeout.ms", delivery.as_millis().to_string());
        let producer: ThreadedProducer<DeliveryCounter> = cfg
            .create_with_context(DeliveryCounter::tracking(track))
            .map_err(RunError::kafka("cannot create a transactional producer"))?;
        let t = Transaction {
            id: transactional_id.to_string(),
            producer: Arc::new(producer),
            clock: Arc::new(Clock {
                begun: Mutex::new(Instant::now()),
                timeout: txn,
            }),
            wait: delivery + Duration::from_secs(5),
        };
        t.producer
            .init_transactions(TXN_TIMEOUT)
            .map_err(|e| t.failed("init_transactions", e))?;
        t.begin()?;
        Ok(t)
    }

    /// The producer, for the writers that share this transaction.
    pub fn producer(&self) -> &SharedProducer {
        &self.producer
    }

    /// The open transaction's clock (for [`fenced`] after a failed session).
    pub fn clock(&self) -> Arc<Clock> {
        self.clock.clone()
    }

    fn begin(&self) -> Result<(), RunError> {
        *self.clock.begun.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        self.producer
            .begin_transaction()
            .map_err(|e| self.failed("begin_transaction", e))
    }

    /// Exactly-once: adds the source offsets of the partitions this member owns to the
    /// transaction, with the group's metadata.
    pub fn send_offsets(
        &self,
        offsets: &[(String, i32, i64)],
        group: &SharedGroup,
    ) -> Result<(), RunError> {
        let g = self::group(group);
        let mut tpl = TopicPartitionList::new();
        for (t, p, o) in offsets {
            if g.owned.contains(&(t.clone(), *p)) {
                let _ = tpl.add_partition_offset(t, *p, Offset::Offset(*o));
            }
        }
        if tpl.count() == 0 {
            return Ok(()); // nothing assigned yet, or nothing read
        }
        // Set with the assignment that made the partitions owned.
        let Some(metadata) = g.metadata.as_ref() else {
            return Err(RunError::SessionFailed);
        };
        self.producer
            .send_offsets_to_transaction(&tpl, metadata, self.wait)
            .map_err(|e| self.failed("send_offsets_to_transaction", e))
    }

    /// Commits the open transaction and begins the next one. A failed commit is aborted:
    /// nothing of it becomes visible to a `read_committed` reader.
    pub fn commit(&self) -> Result<(), RunError> {
        if let Err(e) = self.producer.commit_transaction(self.wait) {
            let err = self.failed("commit_transaction", e);
            let _ = self.producer.abort_transaction(self.wait);
            return Err(err);
        }
        self.begin()
    }

    /// Aborts the open transaction (a failed send) and begins the next one.
    pub fn abort(&self) {
        if self.producer.abort_transaction(self.wait).is_ok() {
            let _ = self.begin();
        }
    }

    /// `op` failed: fenced, or an ordinary broker error.
    fn failed(&self, op: &str, e: KafkaError) -> RunError {
        fenced(&self.producer, &self.id, &self.clock)
            .unwrap_or_else(|| RunError::kafka(op.to_string())(e))
    }

    /// Whether another incarnation fenced this one ([`fenced`]).
    pub fn fenced(&self) -> Option<RunError> {
        fenced(&self.producer, &self.id, &self.clock)
    }
}

/// [`RunError::Fenced`] when the producer is fenced by another process with the same
/// `transactional.id`. A transaction open for longer than the broker's timeout was more
/// likely aborted by the broker (it bumps the epoch, and librdkafka reports that as a
/// fencing too): then this is `None`, the error stays a broker error, and the session is
/// retried with a new producer, which rejoins as the next incarnation.
pub fn fenced(producer: &SharedProducer, id: &str, clock: &Clock) -> Option<RunError> {
    let (code, reason) = producer.client().fatal_error()?;
    let fencing = matches!(
        code,
        RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::Fenced
            | RDKafkaErrorCode::InvalidProducerEpoch
    );
    if fencing && clock.expired() {
        tracing::warn!(transactional_id = id, %reason, "the broker timed out the open transaction (transaction.timeout.ms); restarting the session");
        return None;
    }
    fencing.then(|| RunError::Fenced {
        transactional_id: id.to_string(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(k: &str, v: &str) -> (String, String) {
        (k.to_string(), v.to_string())
    }

    #[test]
    fn the_users_delivery_timeout_bounds_a_changelog_write() {
        assert_eq!(delivery_timeout(&[]), TXN_TIMEOUT);
        assert_eq!(
            delivery_timeout(&[kv("message.timeout.ms", "3000")]),
            Duration::from_secs(3)
        );
        // The last setting wins, as in the client's configuration.
        assert_eq!(
            delivery_timeout(&[
                kv("message.timeout.ms", "3000"),
                kv("delivery.timeout.ms", "9000")
            ]),
            Duration::from_secs(9)
        );
        assert_eq!(
            delivery_timeout(&[kv("message.timeout.ms", "soon")]),
            TXN_TIMEOUT
        );
    }
}
