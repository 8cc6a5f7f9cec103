//! The driver's side of scale-out: the changelog it writes to, and a partition's state
//! arriving (restored from the changelog, or kept in the store from an earlier stay) and
//! leaving (revoked).

use super::{Changelog, Driver, RunError};
use crate::operators::repartition::upstream_key;
use crate::state::changelog::{self, PartitionMeta};
use crate::state::checkpoint::ReplayGuard;

impl Driver<'_> {
    /// From now on every checkpoint also writes its changes to `log`.
    pub fn log_to(&mut self, log: Box<dyn Changelog>) {
        self.changelog = Some(log);
    }

    /// How far into changelog partition `p` the local store is.
    pub fn changelog_position(&self, p: u32) -> Option<i64> {
        self.positions.get(&p).copied()
    }

    /// How far into each changelog partition the local store is.
    pub fn changelog_positions(&self) -> &changelog::Positions {
        &self.positions
    }

    /// Partition `p`'s entries predate the changelog: the next checkpoint writes them all.
    pub fn log_in_full(&mut self, p: u32) {
        self.unlogged.insert(p);
    }

    /// The changelog records of every entry of the unlogged partitions this instance owns
    /// ([`Driver::log_in_full`]), as of the store before this checkpoint's batch (whose
    /// changes follow them).
    pub(super) fn full_entries(&mut self) -> Result<Vec<changelog::Change>, RunError> {
        let owned: std::collections::BTreeSet<u32> =
            self.offsets.keys().map(|(_, p)| *p as u32).collect();
        let mut out = Vec::new();
        for p in std::mem::take(&mut self.unlogged) {
            if !owned.contains(&p) {
                continue;
            }
            let before = out.len();
            for tag in [b'w', b's', b'u'] {
                let mut prefix = vec![tag];
                prefix.extend_from_slice(&p.to_be_bytes());
                for item in self.store.iter_prefix(&prefix) {
                    let (k, v) = item?;
                    out.push(changelog::Change {
                        partition: p,
                        key: k.to_vec(),
                        value: Some(v.to_vec()),
                    });
                }
            }
            if out.len() > before {
                tracing::info!(
                    partition = p,
                    entries = out.len() - before,
                    "writing a partition's entries that predate the changelog to it"
                );
            }
        }
        Ok(out)
    }

    /// The changelog partition `p` was reset: the local store has none of it.
    pub fn forget_position(&mut self, p: u32) {
        self.positions.remove(&p);
    }

    /// Partition `p`'s entries in the store are its state (restored from the changelog up
    /// to `next`, or kept from an earlier stay): its windows, sessions, watermark part and
    /// offsets replace what was in memory for it, and the local store records the position.
    ///
    /// When memory held `p` from this store's own checkpoint and the adopted record is
    /// further on, the records between were processed by this instance's previous run
    /// (killed after the changelog commit, before its checkpoint): they join `events_in`,
    /// which that checkpoint's counters miss. Counted by offsets, so a source's transaction
    /// markers count as records too.
    pub fn adopt(&mut self, p: u32, meta: PartitionMeta, next: i64) -> Result<(), RunError> {
        let skipped: i64 = meta
            .offsets
            .iter()
            .filter_map(|(t, o)| Some(o - self.offsets.get(&(t.clone(), p as i32))?))
            .filter(|d| *d > 0)
            .sum();
        if skipped > 0 {
            tracing::info!(
                partition = p,
                records = skipped,
                "the changelog is ahead of this store's checkpoint: its records count as read"
            );
            self.engine.counters.events_in += skipped as u64;
        }
        self.offsets.retain(|(_, q), _| *q as u32 != p);
        self.engine
            .windows
            .adopt_partition(p, &self.store, meta.pending, meta.pending_sessions)?;
        self.engine.watermarks.adopt(p, meta.max_event_time);
        if self.plan.stage == crate::pipeline::plan::Stage::Downstream {
            match self.store.get(&upstream_key(p))? {
                Some(b) => {
                    let u = bincode::deserialize(&b).map_err(|e| {
                        crate::state::StateError::Corrupt(format!("an upstream record: {e}"))
                    })?;
                    self.engine.upstream.insert(p, u);
                }
                None => {
                    self.engine.upstream.remove(&p);
                }
            }
        }
        for (t, o) in meta.offsets {
            self.offsets.insert((t, p as i32), o);
        }
        self.adopt_guard(p)?;
        self.positions.insert(p, next);
        let mut batch = rocksdb::WriteBatch::default();
        changelog::put_positions(&mut batch, &self.positions)?;
        self.store.write(batch)?;
        Ok(())
    }

    /// The partitions whose state is in memory.
    pub fn held_partitions(&self) -> std::collections::BTreeSet<u32> {
        let mut held: std::collections::BTreeSet<u32> =
            self.offsets.keys().map(|(_, p)| *p as u32).collect();
        held.extend(self.engine.windows.partitions());
        held.extend(self.engine.upstream.keys());
        held
    }

    /// The offsets memory holds for partition `p`, per source topic.
    pub fn offsets_of(&self, p: u32) -> Vec<(&str, i64)> {
        self.offsets
            .iter()
            .filter(|((_, q), _)| *q as u32 == p)
            .map(|((t, _), o)| (t.as_str(), *o))
            .collect()
    }

    /// Whether memory holds partition `p` at exactly these offsets (per source topic): then
    /// it holds the state those offsets describe, and there is nothing to adopt.
    pub fn holds_at(&self, p: u32, offsets: &[(String, i64)]) -> bool {
        let mut here: Vec<(&str, i64)> = self
            .offsets
            .iter()
            .filter(|((_, q), _)| *q as u32 == p)
            .map(|((t, _), o)| (t.as_str(), *o))
            .collect();
        let mut there: Vec<(&str, i64)> = offsets.iter().map(|(t, o)| (t.as_str(), *o)).collect();
        here.sort_unstable();
        there.sort_unstable();
        here == there
    }

    /// Partition `p` left this instance (revoked, after its checkpoint): its windows,
    /// sessions, watermark part and offsets leave memory. Its entries stay in the local
    /// store for a later return, which restores only what the changelog has beyond them.
    pub fn release(&mut self, p: u32) -> Result<(), RunError> {
        self.unlogged.remove(&p);
        if let Some(g) = self.engine.replay.as_mut() {
            g.until.retain(|(_, q, _)| *q != p);
        }
        self.engine.windows.forget_partition(p)?;
        self.engine.watermarks.forget(p);
        self.engine.upstream.remove(&p);
        self.offsets.retain(|(_, q), _| *q as u32 != p);
        Ok(())
    }

    /// The partition record the local store keeps of `p` (written with every checkpoint).
    pub fn local_partition_meta(&self, p: u32) -> Result<Option<PartitionMeta>, RunError> {
        match self.store.get(&changelog::partition_meta_key(p))? {
            Some(b) => Ok(Some(PartitionMeta::decode(&b)?)),
            None => Ok(None),
        }
    }

    /// The changelog record of partition `p`, as of now.
    pub(super) fn partition_meta(&self, p: u32) -> PartitionMeta {
        let (pending, pending_sessions) = self.engine.windows.partition_pending(p);
        PartitionMeta {
            offsets: self
                .offsets
                .iter()
                .filter(|((_, q), _)| *q as u32 == p)
                .map(|((t, _), o)| (t.clone(), *o))
                .collect(),
            max_event_time: self.engine.watermarks.max_event_time(p),
            pending,
            pending_sessions,
        }
    }

    /// A replay's guard of partition `p` (`g|p`, from the changelog) joins the one in
    /// memory: its records below the guard's offsets count only in the windows the replay
    /// discarded, on whichever instance reprocesses them.
    fn adopt_guard(&mut self, p: u32) -> Result<(), RunError> {
        let Some(b) = self.store.get(&changelog::replay_guard_key(p))? else {
            return Ok(());
        };
        let g: ReplayGuard = bincode::deserialize(&b)
            .map_err(|e| crate::state::StateError::Corrupt(format!("a replay guard: {e}")))?;
        match self.engine.replay.as_mut() {
            None => self.engine.replay = Some(g),
            Some(cur) => {
                cur.until.retain(|(_, q, _)| *q != p);
                cur.until.extend(g.until);
                cur.floor = cur.floor.min(g.floor);
                cur.ceil = cur.ceil.max(g.ceil);
                cur.old_watermark = cur.old_watermark.min(g.old_watermark);
            }
        }
        Ok(())
    }

    /// The replay guards of owned partitions that have caught up: deleted locally and in
    /// the changelog (tombstones), so that a later restore does not bring them back.
    pub(super) fn finished_guards(&self) -> Result<Vec<changelog::Change>, RunError> {
        let owned: std::collections::BTreeSet<u32> =
            self.offsets.keys().map(|(_, p)| *p as u32).collect();
        let mut out = Vec::new();
        for p in owned {
            let guarded = self
                .engine
                .replay
                .as_ref()
                .is_some_and(|g| g.until.iter().any(|(_, q, _)| *q == p));
            let key = changelog::replay_guard_key(p);
            if !guarded && self.store.get(&key)?.is_some() {
                out.push(changelog::Change {
                    partition: p,
                    key,
                    value: None,
                });
            }
        }
        Ok(out)
    }
}
