//! The changelog topic (`state.changelog: true`): `<group>-changelog`, one partition per
//! source partition, `cleanup.policy=compact,delete` with a retention longer than a window
//! can stay open. The record format is [`crate::state::changelog`]'s.
//!
//! **Writing.** Each checkpoint's changes go in one Kafka transaction (step 2 of the
//! [driver](super::super::driver)'s protocol). The `transactional.id` is stable per
//! pipeline and instance (`weir-<group>-changelog-<instance>`, the instance being
//! `--instance-id` or a hash of the host and the state directory), so a restarted
//! instance fences its previous incarnation and aborts its open transaction at once.
//!
//! **Restoring.** When a partition is assigned, its changelog partition is read with
//! `isolation.level=read_committed` from the local store's position to its end: a
//! store that is current reads nothing; an empty state directory (a new machine) reads it
//! all. The records are applied in order into the local store, then the partition's last
//! record (offsets, largest event time, pending updates) puts it in the engine. A store
//! that is current still has the partition record its entries were written with; when
//! memory (the local checkpoint) is at other offsets than that record, the record wins:
//! a restore adopted newer entries and the process died before its next checkpoint.

use super::super::driver::{Changelog, Driver};
use super::super::RunError;
use crate::kafka_client::{self, Role};
use crate::pipeline::plan::{Plan, WindowAssigner};
use crate::sink::kafka::{ensure_topic_with, producer_config};
use crate::state::changelog::{
    apply, Change, PartitionMeta, Positions, PARTITION_META, REPLAY_GUARD,
};
use crate::state::Store;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The changelog topic of a consumer group.
pub fn topic(group: &str) -> String {
    format!("{group}-changelog")
}

/// How long a restore may take before the session gives up (and retries).
const RESTORE_TIMEOUT: Duration = Duration::from_secs(600);
const TXN_TIMEOUT: Duration = Duration::from_secs(60);

/// Creates the changelog topic when missing: as many partitions as the largest source
/// topic, compacted, and deleted after a window's lifetime plus a day.
pub fn ensure(plan: &Plan, brokers: &str, extra: &[(String, String)]) -> Result<(), RunError> {
    let meta: BaseConsumer = kafka_client::config(brokers, Role::Admin, extra)
        .create()
        .map_err(RunError::kafka("cannot create a metadata client"))?;
    let mut partitions = 1;
    for t in &plan.source.topics {
        let m = meta
            .fetch_metadata(Some(t), Duration::from_secs(10))
            .map_err(RunError::kafka(format!("cannot read the metadata of {t}")))?;
        for mt in m.topics() {
            partitions = partitions.max(mt.partitions().len() as i32);
        }
    }
    let lifetime = match plan.window.assigner {
        WindowAssigner::Tumbling { size } | WindowAssigner::Hopping { size, .. } => size,
        WindowAssigner::Session { gap } => gap,
    };
    let retention = lifetime
        .saturating_add(plan.window.grace)
        .saturating_add(plan.source.max_out_of_orderness_ms)
        .saturating_add(86_400_000);
    let name = topic(&plan.source.group);
    let configs = [
        ("cleanup.policy", "compact,delete".to_string()),
        ("retention.ms", retention.to_string()),
    ];
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| RunError::Io {
            op: "start a runtime for the admin client".into(),
            source,
        })?;
    rt.block_on(ensure_topic_with(
        brokers, &name, partitions, -1, &configs, extra,
    ))?;
    Ok(())
}

/// The highest offset delivered per partition, and the first failure.
#[derive(Default)]
struct Delivered {
    reached: Mutex<(BTreeMap<i32, i64>, u64, Option<String>)>,
}

impl ClientContext for Delivered {}

impl ProducerContext for Delivered {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        let mut g = self.reached.lock().unwrap_or_else(|e| e.into_inner());
        g.1 += 1;
        match r {
            Ok(m) => {
                let e = g.0.entry(m.partition()).or_insert(-1);
                *e = (*e).max(m.offset());
            }
            Err((e, _)) => {
                g.2.get_or_insert_with(|| e.to_string());
            }
        }
    }
}

/// Writes checkpoints' changes to the changelog, one transaction each.
pub struct KafkaChangelog {
    topic: String,
    producer: ThreadedProducer<Delivered>,
    sent: u64,
    /// How long a send, commit or abort may wait: the delivery timeout and a margin.
    wait: Duration,
}

/// How long a changelog record may wait for its delivery: the user's `message.timeout.ms`
/// (or `delivery.timeout.ms`) when given, as for the sink's producer, else [`TXN_TIMEOUT`].
/// A broker outage longer than this fails the checkpoint and the session restarts, as it
/// does when the sink's deliveries time out.
fn delivery_timeout(extra: &[(String, String)]) -> Duration {
    extra
        .iter()
        .rev()
        .find(|(k, _)| k == "message.timeout.ms" || k == "delivery.timeout.ms")
        .and_then(|(_, v)| v.trim().parse::<u64>().ok())
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis)
        .unwrap_or(TXN_TIMEOUT)
}

impl KafkaChangelog {
    pub fn open(
        plan: &Plan,
        brokers: &str,
        transactional_id: &str,
        extra: &[(String, String)],
    ) -> Result<KafkaChangelog, RunError> {
        let mut cfg = producer_config(brokers, extra);
        let delivery = delivery_timeout(extra);
        // A transaction must outlive its records' delivery retries.
        let txn = TXN_TIMEOUT.max(delivery);
        cfg.set("transactional.id", transactional_id)
            .set("transaction.timeout.ms", txn.as_millis().to_string())
            .set("message.timeout.ms", delivery.as_millis().to_string());
        let producer: ThreadedProducer<Delivered> =
            cfg.create_with_context(Delivered::default())
                .map_err(RunError::kafka("cannot create the changelog producer"))?;
        producer
            .init_transactions(TXN_TIMEOUT)
            .map_err(RunError::kafka("init_transactions (changelog)"))?;
        Ok(KafkaChangelog {
            topic: topic(&plan.source.group),
            producer,
            sent: 0,
            wait: delivery + Duration::from_secs(5),
        })
    }
}

impl Changelog for KafkaChangelog {
    fn write(&mut self, changes: Vec<Change>) -> Result<Positions, RunError> {
        if changes.is_empty() {
            return Ok(Positions::new());
        }
        self.producer
            .begin_transaction()
            .map_err(RunError::kafka("begin_transaction (changelog)"))?;
        for c in &changes {
            let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&self.topic)
                .key(&c.key[..])
                .partition(c.partition as i32);
            if let Some(v) = &c.value {
                rec = rec.payload(&v[..]);
            }
            if let Err(e) = kafka_client::send_waiting(&self.producer, rec, self.wait) {
                let _ = self.producer.abort_transaction(self.wait);
                return Err(RunError::kafka("changelog send")(e));
            }
            self.sent += 1;
        }
        if let Err(e) = self.producer.commit_transaction(self.wait) {
            let _ = self.producer.abort_transaction(self.wait);
            return Err(RunError::kafka("commit_transaction (changelog)")(e));
        }
        // The commit waited for every delivery; their reports may still be on their way.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let g = self
                .producer
                .context()
                .reached
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(e) = &g.2 {
                return Err(RunError::Sink(crate::sink::SinkError::Write {
                    name: self.topic.clone(),
                    source: std::io::Error::other(format!("a changelog delivery failed: {e}")),
                }));
            }
            if g.1 >= self.sent {
                let written: std::collections::BTreeSet<u32> =
                    changes.iter().map(|c| c.partition).collect();
                return Ok(written
                    .into_iter()
                    .filter_map(|p| g.0.get(&(p as i32)).map(|o| (p, o + 1)))
                    .collect());
            }
            drop(g);
            if Instant::now() > deadline {
                return Err(RunError::TimedOut(
                    "changelog delivery reports after the commit".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// What a restore of one partition read.
#[derive(Debug, Default)]
pub struct Restored {
    pub records: u64,
    pub bytes: u64,
}

/// The restore reader's callbacks: the end of a partition is how a restore knows it is
/// done, not an error to log.
struct Quiet;

impl ClientContext for Quiet {
    fn error(&self, error: KafkaError, reason: &str) {
        // The end of a partition comes as its own error and, from the error callback, as a
        // global one.
        let eof = matches!(
            error,
            KafkaError::PartitionEOF(_)
                | KafkaError::Global(rdkafka::types::RDKafkaErrorCode::PartitionEOF)
        );
        if !eof {
            tracing::warn!(error = %error, reason, "changelog reader");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for Quiet {}

/// What [`read`] did.
#[derive(Default)]
pub struct Read {
    /// What each partition read.
    pub restored: BTreeMap<u32, Restored>,
    /// Per partition that read anything: its last partition record and the next offset.
    pub reached: BTreeMap<u32, (Option<PartitionMeta>, i64)>,
    /// Partitions whose local entries were discarded: the changelog was reset.
    pub reset: Vec<u32>,
    /// Partitions that have never been written to the changelog from this store (no
    /// position) and whose changelog partition is empty: a store that predates the
    /// changelog (`state.changelog` turned on later), whose entries the next checkpoint
    /// writes in full.
    pub unlogged: Vec<u32>,
}

/// Applies changelog partitions `parts` to `store`, each from `positions` (the local
/// store's) to its end, in one reader. A position beyond the partition's end means the
/// changelog was reset (deleted and created again, as a replay from `earliest` does): the
/// local entries of that partition are stale, so they are deleted and it is read from its
/// start (`reset` lists those partitions).
pub fn read(
    store: &mut Store,
    positions: &Positions,
    group: &str,
    brokers: &str,
    extra: &[(String, String)],
    parts: &[u32],
) -> Result<Read, RunError> {
    let topic = topic(group);
    let reader = format!("{group}-restore");
    let consumer: BaseConsumer<Quiet> =
        kafka_client::config(brokers, Role::Tool { group: &reader }, extra)
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "true")
            // librdkafka's default (1000 ms) idles the fetcher for a second whenever the
            // queue fills: measured, 1.8 M changelog records restored at 153 K/s with it.
            .set("fetch.queue.backoff.ms", "10")
            .create_with_context(Quiet)
            .map_err(RunError::kafka("cannot create the changelog reader"))?;
    let mut out = BTreeMap::new();
    let mut reset = Vec::new();
    let mut unlogged = Vec::new();
    let mut tpl = TopicPartitionList::new();
    // Per partition being read: the records' batch, its last partition record, the next offset.
    let mut reading: BTreeMap<i32, (rocksdb::WriteBatch, Option<PartitionMeta>, i64)> =
        BTreeMap::new();
    for &p in parts {
        out.insert(p, Restored::default());
        let (low, high) = consumer
            .fetch_watermarks(&topic, p as i32, Duration::from_secs(10))
            .map_err(RunError::kafka(format!("changelog {topic}-{p}: offsets")))?;
        let mut start = positions.get(&p).copied().unwrap_or(low).max(low);
        if start > high {
            tracing::warn!(partition = p, position = start, end = high,
                "the local store is ahead of the changelog (it was reset): discarding its entries of this partition");
            let mut batch = rocksdb::WriteBatch::default();
            discard_partition(&mut batch, p);
            store.write(batch)?;
            reset.push(p);
            start = low;
        } else if !positions.contains_key(&p) && high <= low {
            unlogged.push(p);
        }
        // At the end, or only a transaction marker after it: current.
        if start + 1 >= high {
            continue;
        }
        tpl.add_partition_offset(&topic, p as i32, Offset::Offset(start))
            .map_err(RunError::kafka("changelog assign"))?;
        reading.insert(p as i32, (rocksdb::WriteBatch::default(), None, start));
    }
    if !reading.is_empty() {
        consumer
            .assign(&tpl)
            .map_err(RunError::kafka("changelog assign"))?;
    }
    let mut open: std::collections::BTreeSet<i32> = reading.keys().copied().collect();
    let deadline = Instant::now() + RESTORE_TIMEOUT;
    while !open.is_empty() {
        if Instant::now() > deadline {
            return Err(RunError::TimedOut(format!(
                "restoring {topic} partitions {open:?}"
            )));
        }
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                open.remove(&p);
            }
            Some(Err(e)) => tracing::warn!(error = %e, "changelog read error; retrying"),
            Some(Ok(m)) => {
                let Some((batch, meta, next)) = reading.get_mut(&m.partition()) else {
                    continue;
                };
                let key = m.key().unwrap_or_default();
                let value = m.payload();
                if let Some(r) = out.get_mut(&(m.partition() as u32)) {
                    r.records += 1;
                    r.bytes += (key.len() + value.map_or(0, |v| v.len())) as u64;
                }
                *next = m.offset() + 1;
                if key.first() == Some(&PARTITION_META) {
                    if let Some(v) = value {
                        *meta = Some(PartitionMeta::decode(v)?);
                    }
                }
                apply(batch, key, value);
                if batch.len() >= 10_000 {
                    store.write(std::mem::take(batch))?;
                }
            }
        }
    }
    let mut read = BTreeMap::new();
    for (p, (batch, meta, next)) in reading {
        store.write(batch)?;
        read.insert(p as u32, (meta, next));
    }
    Ok(Read {
        restored: out,
        reached: read,
        reset,
        unlogged,
    })
}

/// Deletes every local entry of source partition `p`: its windows, sessions, partition
/// record, upstream record and replay guard.
pub fn discard_partition(batch: &mut rocksdb::WriteBatch, p: u32) {
    for tag in [b'w', b's', PARTITION_META, b'u', REPLAY_GUARD] {
        let mut prefix = vec![tag];
        prefix.extend_from_slice(&p.to_be_bytes());
        Store::delete_prefix(batch, &prefix);
    }
}

/// Restores source partitions `parts` from their changelog partitions into the driver's
/// store ([`read`]); then the driver adopts each partition that read anything. Returns what
/// each read (nothing when the local store is current).
pub fn restore(
    driver: &mut Driver<'_>,
    plan: &Plan,
    brokers: &str,
    extra: &[(String, String)],
    parts: &[u32],
) -> Result<BTreeMap<u32, Restored>, RunError> {
    let positions = driver.changelog_positions().clone();
    let Read {
        restored: out,
        reached: mut read,
        reset,
        unlogged,
    } = read(
        &mut driver.store,
        &positions,
        &plan.source.group,
        brokers,
        extra,
        parts,
    )?;
    // A reset partition's state in memory is as stale as its local entries.
    for &p in &reset {
        driver.release(p)?;
        driver.forget_position(p);
    }
    for &p in &unlogged {
        driver.log_in_full(p);
    }
    for &p in parts {
        let got = out.get(&p).is_some_and(|r| r.records > 0);
        match read.remove(&p) {
            // Read from the changelog: its last partition record is the truth.
            Some((meta, next)) if got => {
                let meta = match meta {
                    Some(m) => Some(m),
                    None => driver.local_partition_meta(p)?,
                };
                driver.adopt(p, meta.unwrap_or_default(), next)?;
            }
            // Current: the local store's partition record is the truth. It is written with
            // the partition's entries (in the checkpoint's batch, or by a restore), while
            // memory holds the local checkpoint, which may be older: a partition that left
            // and came back, or a restore that adopted the changelog's newer entries and
            // was killed before the next checkpoint. Memory at other offsets than the
            // record would count the records between them twice.
            _ => {
                let local = driver.local_partition_meta(p)?;
                tracing::debug!(partition = p, local = ?local.as_ref().map(|m| &m.offsets), in_memory = ?driver.offsets_of(p), "changelog current");
                if let Some(meta) = local {
                    if !driver.holds_at(p, &meta.offsets) {
                        let at = driver.changelog_position(p).unwrap_or(0);
                        driver.adopt(p, meta, at)?;
                    }
                }
            }
        }
    }
    Ok(out)
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
