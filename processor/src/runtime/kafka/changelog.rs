//! The changelog topic (`state.changelog: true`): `<group>-changelog`, one partition per
//! source partition, `cleanup.policy=compact,delete` with a retention longer than a window
//! can stay open (a table's: `compact` alone, kept for ever). The record format is [`crate::state::changelog`]'s.
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
use super::transaction::{SharedGroup, Transaction};
use crate::kafka_client::{self, Role};
use crate::pipeline::plan::{Plan, WindowAssigner};
use crate::sink::kafka::{ensure_topic_with, Sender};
use crate::state::changelog::{
    apply, Change, PartitionMeta, Positions, PARTITION_META, REPLAY_GUARD,
};
use crate::state::Store;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::Producer;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The changelog topic of a consumer group.
pub fn topic(group: &str) -> String {
    format!("{group}-changelog")
}

/// How long a restore may take before the session gives up (and retries).
const RESTORE_TIMEOUT: Duration = Duration::from_secs(600);

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
        WindowAssigner::Tumbling { size } | WindowAssigner::Hopping { size, .. } => Some(size),
        WindowAssigner::Session { gap } => Some(gap),
        // A table's key lives as long as it is touched (in event time): only compaction
        // (and the tombstone its ttl writes) may remove it.
        WindowAssigner::Table { .. } => None,
    };
    let name = topic(&plan.source.group);
    let configs = match lifetime {
        Some(lifetime) => {
            let retention = lifetime
                .saturating_add(plan.window.grace)
                .saturating_add(plan.source.max_out_of_orderness_ms)
                .saturating_add(86_400_000);
            vec![
                ("cleanup.policy", "compact,delete".to_string()),
                ("retention.ms", retention.to_string()),
            ]
        }
        None => vec![
            ("cleanup.policy", "compact".to_string()),
            ("retention.ms", "-1".to_string()),
        ],
    };
    ensure_topic_with(brokers, &name, partitions, -1, &configs, extra)?;
    Ok(())
}

/// Writes checkpoints' changes to the changelog: in a transaction of its own per
/// checkpoint (at least once), or in the pipeline's transaction, with the source offsets
/// (exactly-once: [`KafkaChangelog::exactly_once`]).
pub struct KafkaChangelog {
    topic: String,
    txn: Transaction,
    sender: Sender,
    /// Exactly-once: the consumer group whose offsets go into the transaction.
    group: Option<SharedGroup>,
}

impl KafkaChangelog {
    /// The changelog with a transactional producer of its own.
    pub fn open(
        plan: &Plan,
        brokers: &str,
        transactional_id: &str,
        extra: &[(String, String)],
    ) -> Result<KafkaChangelog, RunError> {
        let topic = topic(&plan.source.group);
        let txn = Transaction::open(brokers, transactional_id, extra, &topic)?;
        Ok(KafkaChangelog::on(topic, txn, None))
    }

    /// Exactly-once: the changelog in the pipeline's transaction `txn`, whose commit also
    /// holds the source offsets of `group`'s partitions.
    pub fn exactly_once(plan: &Plan, txn: Transaction, group: SharedGroup) -> KafkaChangelog {
        KafkaChangelog::on(topic(&plan.source.group), txn, Some(group))
    }

    fn on(topic: String, txn: Transaction, group: Option<SharedGroup>) -> KafkaChangelog {
        let sender = Sender::shared(&format!("changelog:{topic}"), txn.producer().clone());
        KafkaChangelog {
            topic,
            txn,
            sender,
            group,
        }
    }
}

impl Changelog for KafkaChangelog {
    fn send(&mut self, changes: &[Change], offsets: &[(String, i32, i64)]) -> Result<(), RunError> {
        for c in changes {
            let sent =
                self.sender
                    .send_to(&self.topic, c.partition as i32, &c.key, c.value.as_deref());
            if let Err(e) = sent {
                self.txn.abort();
                return Err(self.txn.fenced().unwrap_or(RunError::Sink(e)));
            }
        }
        if let Some(g) = &self.group {
            if let Err(e) = self.txn.send_offsets(offsets, g) {
                self.txn.abort();
                return Err(e);
            }
        }
        Ok(())
    }

    fn commit(&mut self, changes: &[Change]) -> Result<Positions, RunError> {
        if changes.is_empty() && self.group.is_none() {
            return Ok(Positions::new());
        }
        self.txn.commit()?;
        // The commit waited for every delivery; their reports may still be on their way.
        self.sender
            .wait_reported(Instant::now() + Duration::from_secs(30))
            .map_err(|e| self.txn.fenced().unwrap_or(RunError::Sink(e)))?;
        let written: std::collections::BTreeSet<u32> =
            changes.iter().map(|c| c.partition).collect();
        let ctx = self.txn.producer().context();
        Ok(written
            .into_iter()
            .filter_map(|p| ctx.reached(p as i32).map(|o| (p, o + 1)))
            .collect())
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
