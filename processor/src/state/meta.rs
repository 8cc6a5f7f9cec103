//! What the window state keeps beside its RocksDB entries ([`WindowMeta`], stored in the
//! checkpoint record), a session as stored, and what a replay discards of both.

use super::{StateError, Store, WindowId};
use crate::operators::aggregate::WindowAcc;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
/// A key's open session, as kept in memory and stored under its session key.
pub struct Session {
    pub start: i64,
    pub end: i64,
    pub acc: WindowAcc,
}

/// What the state must remember beyond RocksDB entries; stored in the checkpoint record.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WindowMeta {
    /// Open windows, and whether each has spilled to RocksDB.
    pub(super) open: Vec<(WindowId, bool)>,
    /// (window, key) with an update not yet emitted (`emit: update`).
    pub(super) pending: Vec<(WindowId, Vec<u8>)>,
    pub(super) pending_sessions: Vec<(u32, Vec<u8>)>,
    pub(super) last_update_wm: i64,
}

/// While a replay is reprocessing records the state already counted
/// ([`crate::runtime::replay`]): such a record only counts in windows starting in
/// `[floor, ceil)` (those the replay discarded), and windows starting before `floor` are
/// closed as they were before the rewind (`old_watermark`).
#[derive(Debug, Clone, Copy)]
pub struct ReplayFilter {
    pub floor: i64,
    pub ceil: i64,
    pub old_watermark: i64,
    /// The current record was processed before the rewind.
    pub replayed: bool,
}

impl WindowMeta {
    /// Forgets the open windows starting in `[floor, ceil)`; returns them, so that their
    /// entries can be deleted from RocksDB.
    pub fn discard(&mut self, floor: i64, ceil: i64) -> Vec<WindowId> {
        let hit = |id: &WindowId| id.start >= floor && id.start < ceil;
        let gone: Vec<WindowId> = self
            .open
            .iter()
            .filter(|(id, _)| hit(id))
            .map(|(id, _)| *id)
            .collect();
        self.open.retain(|(id, _)| !hit(id));
        self.pending.retain(|(id, _)| !hit(id));
        gone
    }
}

/// Removes the sessions starting in `[floor, ceil)` from the store (into `changes`); returns
/// how many, and the keys left with no session.
pub fn discard_sessions(
    store: &Store,
    changes: &mut impl super::changelog::StateChanges,
    floor: i64,
    ceil: i64,
) -> Result<(usize, Vec<Vec<u8>>), StateError> {
    let mut n = 0;
    let mut emptied = Vec::new();
    for (k, v) in store.scan(b"s")? {
        let list: Vec<Session> =
            bincode::deserialize(&v).map_err(|e| StateError::Corrupt(e.to_string()))?;
        let before = list.len();
        let kept: Vec<Session> = list
            .into_iter()
            .filter(|s| !(s.start >= floor && s.start < ceil))
            .collect();
        n += before - kept.len();
        if kept.is_empty() {
            changes.delete(&k);
            emptied.push(k);
        } else if kept.len() != before {
            let bytes =
                bincode::serialize(&kept).map_err(|e| StateError::Corrupt(e.to_string()))?;
            changes.put(&k, &bytes);
        }
    }
    Ok((n, emptied))
}
