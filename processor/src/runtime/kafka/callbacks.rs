//! The consumer's side of a Kafka session: the callbacks librdkafka calls on a rebalance
//! (checkpoint a revoked partition, restore an assigned one from the changelog), its log
//! and statistics, and the commit of a checkpoint's offsets to the group (step 3).

use super::transaction::{self, SharedGroup};
use super::{changelog, Checkpoint};
use crate::faults::{reached, Point};
use crate::monitor::telemetry::{Live, Telemetry};
use crate::pipeline::plan::Plan;
use crate::runtime::driver::{lock, Driver};
use crate::runtime::RunError;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::ClientContext;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Step 3: commit the checkpoint's offsets of the partitions this member owns. A failed
/// commit only delays lag reporting: the state's offsets are authoritative on restart.
pub(super) fn commit(c: &BaseConsumer<Ctx>, cp: &Checkpoint, mode: CommitMode) {
    let owned = match c.assignment() {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the assignment; offsets not committed");
            return;
        }
    };
    let mut tpl = TopicPartitionList::new();
    for e in owned.elements() {
        if let Some((_, _, o)) = cp
            .offsets
            .iter()
            .find(|(t, p, _)| t == e.topic() && *p == e.partition())
        {
            let _ = tpl.add_partition_offset(e.topic(), e.partition(), Offset::Offset(*o));
        }
    }
    if tpl.count() == 0 {
        return;
    }
    if let Err(e) = c.commit(&tpl, mode) {
        tracing::warn!(error = %e, "offset commit failed; the next checkpoint retries");
    }
}

/// This consumer's group member id (what `kafka-consumer-groups --describe` shows).
fn member_id<C: ConsumerContext>(c: &BaseConsumer<C>) -> Option<String> {
    // SAFETY: rd_kafka_memberid returns a string we own (or NULL), freed with
    // rd_kafka_mem_free on the same handle.
    unsafe {
        let rk = c.client().native_ptr();
        let p = rdkafka::bindings::rd_kafka_memberid(rk);
        if p.is_null() {
            return None;
        }
        let s = std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned();
        rdkafka::bindings::rd_kafka_mem_free(rk, p as *mut std::ffi::c_void);
        (!s.is_empty()).then_some(s)
    }
}

/// The consumer's callbacks: they share the driver with the poll loop, because a revoked
/// partition must be checkpointed before it goes.
pub(super) struct Ctx {
    pub(super) driver: Arc<Mutex<Driver<'static>>>,
    pub(super) live: Arc<Live>,
    /// With a changelog: where to restore assigned partitions from (brokers, extra
    /// config), and the partitions restored in this session.
    pub(super) restore: Option<Restore>,
    /// An error raised inside a rebalance callback, reported by the next poll.
    pub(super) failed: Mutex<Option<RunError>>,
    /// Exactly-once: the group's metadata and owned partitions, for the transaction's
    /// offsets (which the checkpoint commits instead of the consumer).
    pub(super) eos: Option<SharedGroup>,
    /// When librdkafka last said this consumer's group session timed out (`SESSTMOUT`).
    pub(super) session_timeout: Mutex<Option<Instant>>,
    /// When the last rebalance callback ran (see [`super::leave`]).
    pub(super) last_rebalance: Mutex<Option<Instant>>,
}

impl Ctx {
    pub(super) fn fail(&self, e: RunError) {
        *self.failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
    }
}

impl ClientContext for Ctx {
    /// librdkafka's log lines, as rdkafka logs them by default; a group session timeout is
    /// also noted (see the `FencedInstanceId` case in [`KafkaSource::next`]).
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, msg: &str) {
        use rdkafka::config::RDKafkaLogLevel as L;
        if fac == "SESSTMOUT" {
            *self
                .session_timeout
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        }
        match level {
            L::Emerg | L::Alert | L::Critical | L::Error => {
                tracing::error!(target: "librdkafka", "librdkafka: {fac} {msg}")
            }
            L::Warning => tracing::warn!(target: "librdkafka", "librdkafka: {fac} {msg}"),
            L::Notice | L::Info => tracing::info!(target: "librdkafka", "librdkafka: {fac} {msg}"),
            L::Debug => tracing::debug!(target: "librdkafka", "librdkafka: {fac} {msg}"),
        }
    }

    /// librdkafka's statistics (every `statistics.interval.ms`): the log end per partition.
    fn stats(&self, stats: Statistics) {
        for (name, t) in &stats.topics {
            for (p, s) in &t.partitions {
                if *p >= 0 && s.hi_offset >= 0 {
                    self.live.record(Telemetry::LogEnd {
                        topic: name,
                        partition: *p,
                        offset: s.hi_offset,
                    });
                }
            }
        }
    }
}

impl ConsumerContext for Ctx {
    fn rebalance(&self, c: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        *self
            .last_rebalance
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        let cooperative = matches!(c.rebalance_protocol(), RebalanceProtocol::Cooperative);
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let mut p = lock(&self.driver);
                if let Some(r) = &self.restore {
                    // Each partition's state first: its offsets come from the changelog.
                    let parts: Vec<u32> = tpl
                        .elements()
                        .iter()
                        .map(|e| e.partition() as u32)
                        .collect();
                    if let Err(e) = r.partitions(&mut p, &parts, &self.live) {
                        self.fail(e);
                        return;
                    }
                }
                let mut resumed = Vec::new();
                for e in tpl.elements() {
                    // An assigned partition holds the watermark until it shows records.
                    p.engine.watermarks.register(e.partition() as u32);
                    if let Some(o) = p.offset_of(e.topic(), e.partition()) {
                        resumed.push((e.topic().to_string(), e.partition(), o));
                    }
                }
                // Every partition starts explicitly: from its state, the group's offset or
                // the log start, with `on_missing_offsets` for an offset the log lost.
                let policy = p.plan().source.on_missing_offsets;
                match super::missing::place(c, policy, tpl, &resumed, &self.live) {
                    Ok(moved) => {
                        for (t, part, o) in moved {
                            p.start_at(&t, part, o);
                        }
                    }
                    Err(e) => {
                        self.fail(e);
                        return;
                    }
                }
                drop(p);
                let parts: Vec<String> = tpl
                    .elements()
                    .iter()
                    .map(|e| format!("{}-{}", e.topic(), e.partition()))
                    .collect();
                let owned: Vec<(String, i32)> = tpl
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_string(), e.partition()))
                    .collect();
                tracing::info!(partitions = ?parts, from_state = resumed.len(), "partitions assigned");
                self.live.record(Telemetry::Assigned {
                    member_id: member_id(c),
                    partitions: &owned,
                });
                let r = if cooperative {
                    c.incremental_assign(tpl)
                } else {
                    c.assign(tpl)
                };
                if let Err(e) = r {
                    self.fail(RunError::kafka("assign")(e));
                }
                if let Some(g) = &self.eos {
                    let mut g = transaction::group(g);
                    g.metadata = c.group_metadata();
                    g.owned.extend(owned.iter().cloned());
                }
                reached(Point::Assigned);
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let parts: Vec<String> = tpl
                    .elements()
                    .iter()
                    .map(|e| format!("{}-{}", e.topic(), e.partition()))
                    .collect();
                tracing::info!(partitions = ?parts, "partitions revoked: checkpointing them");
                let owned: Vec<(String, i32)> = tpl
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_string(), e.partition()))
                    .collect();
                self.live.record(Telemetry::Revoked { partitions: &owned });
                // A lost assignment cannot commit; the checkpoint still saves state.
                let lost = c.assignment_lost();
                if let Some(g) = &self.eos {
                    transaction::group(g).metadata = c.group_metadata();
                }
                let mut d = lock(&self.driver);
                let r = d.checkpoint(&mut |cp| {
                    // Exactly-once: the offsets were committed in the transaction.
                    if !lost && self.eos.is_none() {
                        commit(c, cp, CommitMode::Sync)
                    }
                });
                if let Some(g) = &self.eos {
                    let mut g = transaction::group(g);
                    for o in &owned {
                        g.owned.remove(o);
                    }
                }
                match r {
                    Err(e) => self.fail(e),
                    // With a changelog, a revoked partition's state leaves memory: its
                    // next owner restores it.
                    Ok(()) => {
                        if let Some(restore) = &self.restore {
                            for p in tpl.elements().iter().map(|e| e.partition() as u32) {
                                if let Err(e) = d.release(p) {
                                    self.fail(e);
                                }
                                if let Ok(mut done) = restore.done.lock() {
                                    done.remove(&p);
                                }
                            }
                        }
                    }
                }
                drop(d);
                let r = if cooperative {
                    c.incremental_unassign(tpl)
                } else {
                    c.unassign()
                };
                if let Err(e) = r {
                    tracing::warn!(error = %e, "unassign failed");
                }
            }
            other => {
                tracing::warn!(error = ?other, "rebalance error");
                let _ = c.unassign();
                if let Some(g) = &self.eos {
                    transaction::group(g).owned.clear();
                }
            }
        }
    }
}

/// Restores assigned partitions from the changelog, once per session each.
#[derive(Clone)]
pub(super) struct Restore {
    pub(super) plan: &'static Plan,
    pub(super) brokers: String,
    pub(super) extra: Vec<(String, String)>,
    pub(super) done: Arc<Mutex<std::collections::BTreeSet<u32>>>,
    /// No assignment yet in this session.
    pub(super) first: Arc<AtomicBool>,
}

impl Restore {
    pub(super) fn partitions(
        &self,
        d: &mut Driver<'_>,
        parts: &[u32],
        live: &Live,
    ) -> Result<(), RunError> {
        let new: Vec<u32> = {
            let mut done = self.done.lock().unwrap_or_else(|e| e.into_inner());
            parts.iter().copied().filter(|p| done.insert(*p)).collect()
        };
        if new.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        if self.first.swap(false, Ordering::SeqCst) {
            // The session's first assignment: partitions this instance held before (the
            // local checkpoint) but was not given are someone else's now.
            let held: std::collections::BTreeSet<u32> = d.held_partitions();
            for p in held.difference(&new.iter().copied().collect()) {
                d.release(*p)?;
            }
        }
        let read = changelog::restore(d, self.plan, &self.brokers, &self.extra, &new)?;
        let partitions: Vec<(u32, u64, u64)> =
            read.iter().map(|(p, r)| (*p, r.records, r.bytes)).collect();
        live.record(Telemetry::Restored {
            partitions: &partitions,
            took: started.elapsed(),
        });
        Ok(())
    }
}
