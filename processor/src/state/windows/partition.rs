//! A partition's windows as a unit: what its changelog record needs, leaving memory when
//! the partition moves to another instance, and coming back from the store after a
//! restore (scale-out: state follows its partitions).

use super::{PendingWindows, WindowState};
use crate::state::{StateError, Store, WindowId};

impl WindowState {
    /// What partition `p` needs beyond its entries, for its changelog record.
    pub fn partition_pending(&self, p: u32) -> (PendingWindows, Vec<Vec<u8>>) {
        let windows = self
            .pending
            .iter()
            .filter(|(id, _)| id.partition == p)
            .cloned()
            .collect();
        let sessions = self
            .pending_sessions
            .iter()
            .filter(|(q, _)| *q == p)
            .map(|(_, k)| k.clone())
            .collect();
        (windows, sessions)
    }

    /// The partitions with open windows or sessions in memory.
    pub fn partitions(&self) -> std::collections::BTreeSet<u32> {
        let mut ps: std::collections::BTreeSet<u32> =
            self.slots.keys().map(|id| id.partition).collect();
        ps.extend(self.sessions.keys().map(|(p, _)| *p));
        ps
    }

    /// Drops partition `p`'s windows and sessions from memory (its entries stay in
    /// RocksDB): the partition moved to another instance, or is about to be restored.
    /// Refused while it has changes not yet checkpointed.
    pub fn forget_partition(&mut self, p: u32) -> Result<(), StateError> {
        let dirty_here = self.dirty.iter().any(|(id, _)| id.partition == p)
            || self.dirty_sessions.iter().any(|(q, _)| *q == p);
        if dirty_here {
            return Err(StateError::Corrupt(format!(
                "partition {p} has changes not yet checkpointed; it cannot leave memory"
            )));
        }
        let gone: Vec<WindowId> = self
            .slots
            .keys()
            .filter(|id| id.partition == p)
            .copied()
            .collect();
        for id in gone {
            if let Some(slot) = self.slots.remove(&id) {
                self.cached -= slot.cache.len();
            }
        }
        self.closing.retain(|(q, _, _)| *q != p);
        self.closed_persisted.retain(|id| id.partition != p);
        self.pending.retain(|(id, _)| id.partition != p);
        self.pending_sessions.retain(|(q, _)| *q != p);
        self.sessions.retain(|(q, _), _| *q != p);
        self.session_timers.retain(|(q, _, _, _)| *q != p);
        Ok(())
    }

    /// Takes partition `p`'s windows and sessions from `store` (just restored from the
    /// changelog), replacing whatever was in memory for it: every window with entries is
    /// open (spilled: its entries are read from RocksDB), every stored session is open.
    pub fn adopt_partition(
        &mut self,
        p: u32,
        store: &Store,
        pending: Vec<(WindowId, Vec<u8>)>,
        pending_sessions: Vec<Vec<u8>>,
    ) -> Result<(), StateError> {
        self.forget_partition(p)?;
        let mut prefix = vec![b'w'];
        prefix.extend_from_slice(&p.to_be_bytes());
        let mut last: Option<WindowId> = None;
        for item in store.iter_prefix(&prefix) {
            let (k, _) = item?;
            let Some(id) = crate::state::window_id_of(&k) else {
                continue;
            };
            if last != Some(id) {
                last = Some(id);
                self.open_stored(id);
            }
        }
        let mut prefix = vec![b's'];
        prefix.extend_from_slice(&p.to_be_bytes());
        for item in store.iter_prefix(&prefix) {
            let (k, v) = item?;
            self.open_stored_sessions(p, &k[5..], &v)?;
        }
        self.pending.extend(pending);
        self.pending_sessions
            .extend(pending_sessions.into_iter().map(|k| (p, k)));
        Ok(())
    }
}
