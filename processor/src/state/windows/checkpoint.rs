//! A checkpoint of the windows: the dirty entries and closed windows into the batch (and,
//! through [`StateChanges`], the changelog), then a clean cache.

use super::WindowState;
use crate::state::changelog::StateChanges;
use crate::state::{session_key, window_key, window_prefix, StateError};
use rustc_hash::FxHashMap;

impl WindowState {
    /// Adds every dirty entry and every closed window's deletion to `batch`. After the
    /// batch is written the caller calls [`WindowState::after_checkpoint`].
    pub fn checkpoint_into(&mut self, batch: &mut impl StateChanges) -> Result<(), StateError> {
        for id in self.closed_persisted.drain(..) {
            batch.delete_window(&window_prefix(&id));
        }
        // In key order: RocksDB's memtable inserts sorted keys much faster.
        self.dirty.sort_unstable();
        for (id, key) in self.dirty.drain(..) {
            let Some(slot) = self.slots.get_mut(&id) else {
                continue;
            };
            let Some(e) = slot.cache.get_mut(key.as_slice()) else {
                continue;
            };
            let bytes =
                bincode::serialize(&e.acc).map_err(|e| StateError::Corrupt(e.to_string()))?;
            batch.put(&window_key(&id, &key), &bytes);
            e.dirty = false;
            slot.persisted = true;
        }
        for k in self.dirty_sessions.drain() {
            let sk = session_key(k.0, &k.1);
            match self.sessions.get(&k) {
                Some(list) if !list.is_empty() => {
                    let bytes =
                        bincode::serialize(list).map_err(|e| StateError::Corrupt(e.to_string()))?;
                    batch.put(&sk, &bytes);
                }
                _ => batch.delete(&sk),
            }
        }
        Ok(())
    }

    /// Once a checkpoint is durable every cached entry is clean; if the cache is over its
    /// bound, evict it all (misses then read RocksDB).
    pub fn after_checkpoint(&mut self) {
        if self.cached > self.capacity {
            for slot in self.slots.values_mut() {
                if !slot.cache.is_empty() {
                    self.evicted += slot.cache.len() as u64;
                    // A new map: `clear` would keep the memory.
                    slot.cache = FxHashMap::default();
                    slot.spilled = true;
                }
            }
            self.cached = 0;
        }
    }
}
