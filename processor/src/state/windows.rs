//! Open windows and their accumulators: the write cache in front of RocksDB.
//!
//! Aligned windows (tumbling, hopping) live in slots, one per (partition, start, end); a
//! slot's entries are in the cache until a checkpoint that finds the cache over its bound
//! evicts them (they are clean then). A slot that evicted ("spilled") answers misses from
//! RocksDB and, when it closes, merges its RocksDB entries with the cached ones.
//! Sessions of a key are kept in memory (they are few per key) and checkpointed per key.
//! A table (`window: {type: none}`) is a session per key that every event of the key
//! joins, whatever its time, and that closes (the key is dropped) `ttl` after the key's
//! latest event time; without a ttl only the end of a bounded input closes it.
//! Results are emitted in a deterministic order: by close time, window, then group key.

mod checkpoint;
mod partition;

use super::meta::Session;
pub use super::meta::{discard_sessions, ReplayFilter, WindowMeta};
use super::{window_key, window_prefix, StateError, Store, WindowId};
use crate::operators::aggregate::WindowAcc;
use crate::operators::{window, Row, Scalar};
use crate::pipeline::plan::{EmitPlan, Plan, WindowAssigner};
use rustc_hash::{FxHashMap, FxHashSet};
use std::collections::{BTreeMap, BTreeSet};

/// (window, group key) pairs with an update not yet emitted.
pub type PendingWindows = Vec<(WindowId, Vec<u8>)>;

/// A derived result, ready for the sinks.
#[derive(Debug, Clone, PartialEq)]
pub struct Emission {
    pub partition: u32,
    pub start: i64,
    pub end: i64,
    pub key: Vec<u8>,
    pub results: Vec<Scalar>,
    /// 0 for the first emission of this window and key, then 1, 2, ...
    pub seq: u32,
}

struct Entry {
    acc: WindowAcc,
    dirty: bool,
}

/// A group key as stored in the cache: inline up to 24 bytes (most keys), so a lookup
/// touches one cache line less.
type CacheKey = smallvec::SmallVec<[u8; 24]>;

#[derive(Default)]
struct Slot {
    cache: FxHashMap<CacheKey, Entry>,
    /// Some entries were written to RocksDB.
    persisted: bool,
    /// Entries were evicted from the cache: misses must look in RocksDB.
    spilled: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    Ok,
    /// Every window of the event had closed.
    Late,
}

pub struct WindowState {
    assigner: WindowAssigner,
    grace: i64,
    emit: EmitPlan,
    capacity: usize,
    slots: BTreeMap<WindowId, Slot>,
    /// (partition, close time, window): each partition's windows close by its watermark.
    closing: BTreeSet<(u32, i64, WindowId)>,
    cached: usize,
    dirty: Vec<(WindowId, Vec<u8>)>,
    closed_persisted: Vec<WindowId>,
    pending: BTreeSet<(WindowId, Vec<u8>)>,
    sessions: FxHashMap<(u32, Vec<u8>), Vec<Session>>,
    /// (partition, close time, start, key): each partition's sessions close by its
    /// watermark, in the README's order.
    session_timers: BTreeSet<(u32, i64, i64, Vec<u8>)>,
    dirty_sessions: FxHashSet<(u32, Vec<u8>)>,
    pending_sessions: BTreeSet<(u32, Vec<u8>)>,
    last_update_wm: i64,
    assign_buf: Vec<(i64, i64)>,
    last_slot_len: usize,
    /// Set by the engine for each record while a replay is in progress.
    pub replay: Option<ReplayFilter>,
    /// Entries evicted from the cache so far (they live on in RocksDB).
    pub evicted: u64,
    /// A table's keys dropped by its `ttl` so far (not counting the end of an input).
    pub expired: u64,
}

fn decode_acc(v: &[u8]) -> Result<WindowAcc, StateError> {
    bincode::deserialize(v).map_err(|e| StateError::Corrupt(e.to_string()))
}

impl WindowState {
    pub fn new(plan: &Plan) -> WindowState {
        WindowState {
            assigner: plan.window.assigner,
            grace: plan.window.grace,
            emit: plan.emit,
            capacity: plan.state.cache_entries,
            slots: BTreeMap::new(),
            closing: BTreeSet::new(),
            cached: 0,
            dirty: Vec::new(),
            closed_persisted: Vec::new(),
            pending: BTreeSet::new(),
            sessions: FxHashMap::default(),
            session_timers: BTreeSet::new(),
            dirty_sessions: FxHashSet::default(),
            pending_sessions: BTreeSet::new(),
            last_update_wm: i64::MIN,
            assign_buf: Vec::with_capacity(4),
            last_slot_len: 0,
            replay: None,
            evicted: 0,
            expired: 0,
        }
    }

    /// A window whose entries are in RocksDB (restored): open, spilled, read on demand.
    fn open_stored(&mut self, id: WindowId) {
        self.closing
            .insert((id.partition, id.end.saturating_add(self.grace), id));
        self.slots.insert(
            id,
            Slot {
                persisted: true,
                spilled: true,
                ..Slot::default()
            },
        );
    }

    /// A key's stored sessions (restored): open, each with its closing timer.
    fn open_stored_sessions(&mut self, p: u32, key: &[u8], value: &[u8]) -> Result<(), StateError> {
        let list: Vec<Session> =
            bincode::deserialize(value).map_err(|e| StateError::Corrupt(e.to_string()))?;
        for s in &list {
            self.session_timers.insert((
                p,
                s.end.saturating_add(self.grace),
                s.start,
                key.to_vec(),
            ));
        }
        self.sessions.insert((p, key.to_vec()), list);
        Ok(())
    }

    /// Restores the open windows recorded in a checkpoint; their entries stay in RocksDB
    /// and are read on demand. Sessions are loaded whole.
    pub fn restore(&mut self, meta: WindowMeta, store: &Store) -> Result<(), StateError> {
        for (id, _) in meta.open {
            self.open_stored(id);
        }
        self.pending = meta.pending.into_iter().collect();
        self.pending_sessions = meta.pending_sessions.into_iter().collect();
        self.last_update_wm = meta.last_update_wm;
        for (k, v) in store.scan(b"s")? {
            if k.len() < 5 {
                continue;
            }
            let partition = u32::from_be_bytes([k[1], k[2], k[3], k[4]]);
            self.open_stored_sessions(partition, &k[5..], &v)?;
        }
        Ok(())
    }

    pub fn meta(&self) -> WindowMeta {
        WindowMeta {
            open: self.slots.iter().map(|(id, s)| (*id, s.spilled)).collect(),
            pending: self.pending.iter().cloned().collect(),
            pending_sessions: self.pending_sessions.iter().cloned().collect(),
            last_update_wm: self.last_update_wm,
        }
    }

    /// Number of open windows (slots and sessions).
    pub fn open_windows(&self) -> usize {
        self.slots.len() + self.session_timers.len()
    }

    pub fn over_capacity(&self) -> bool {
        self.cached > self.capacity
    }

    /// Adds one event. `watermark` is its partition's watermark before this event.
    #[allow(clippy::too_many_arguments)]
    pub fn add(
        &mut self,
        plan: &Plan,
        store: &Store,
        partition: u32,
        key: &[u8],
        row: &Row,
        ts: i64,
        offset: i64,
        watermark: i64,
    ) -> Result<Added, StateError> {
        let replay = self.replay;
        let keyed = match self.assigner {
            WindowAssigner::Session { gap } => Some((gap, false)),
            WindowAssigner::Table { ttl } => Some((ttl.unwrap_or(i64::MAX), true)),
            _ => None,
        };
        if let Some((gap, table)) = keyed {
            let mut watermark = watermark;
            if let Some(r) = replay {
                if r.replayed && !(ts >= r.floor && ts < r.ceil) {
                    return Ok(Added::Late);
                }
                if ts < r.floor {
                    watermark = watermark.max(r.old_watermark);
                }
            }
            return Ok(
                self.add_session(plan, partition, key, row, ts, offset, watermark, gap, table)
            );
        }
        let mut any = false;
        let mut windows = std::mem::take(&mut self.assign_buf);
        window::assign(self.assigner, ts, &mut windows);
        for &(start, end) in &windows {
            let mut watermark = watermark;
            if let Some(r) = replay {
                if r.replayed && !(start >= r.floor && start < r.ceil) {
                    continue; // counted before the rewind, in a window the replay kept
                }
                if start < r.floor {
                    watermark = watermark.max(r.old_watermark);
                }
            }
            if watermark >= end.saturating_add(self.grace) {
                continue; // this window has closed
            }
            any = true;
            let id = WindowId {
                partition,
                start,
                end,
            };
            let slot = match self.slots.entry(id) {
                std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::btree_map::Entry::Vacant(v) => {
                    self.closing
                        .insert((partition, end.saturating_add(self.grace), id));
                    // Size a new window's cache like the last one that closed: no rehashing.
                    let cap = self.last_slot_len.min(self.capacity);
                    v.insert(Slot {
                        cache: FxHashMap::with_capacity_and_hasher(cap, Default::default()),
                        ..Slot::default()
                    })
                }
            };
            // One hash lookup for the common case (the key is cached).
            if let Some(entry) = slot.cache.get_mut(key) {
                entry.acc.add(plan, row, ts, offset);
                if !entry.dirty {
                    entry.dirty = true;
                    self.dirty.push((id, key.to_vec()));
                }
            } else {
                let mut acc = match slot.spilled {
                    true => match store.get(&window_key(&id, key))? {
                        Some(v) => decode_acc(&v)?,
                        None => WindowAcc::new(plan),
                    },
                    false => WindowAcc::new(plan),
                };
                acc.add(plan, row, ts, offset);
                self.cached += 1;
                slot.cache
                    .insert(CacheKey::from_slice(key), Entry { acc, dirty: true });
                self.dirty.push((id, key.to_vec()));
            }
            if let EmitPlan::Update { .. } = self.emit {
                self.pending.insert((id, key.to_vec()));
            }
        }
        self.assign_buf = windows;
        Ok(if any { Added::Ok } else { Added::Late })
    }

    #[allow(clippy::too_many_arguments)]
    fn add_session(
        &mut self,
        plan: &Plan,
        partition: u32,
        key: &[u8],
        row: &Row,
        ts: i64,
        offset: i64,
        watermark: i64,
        gap: i64,
        table: bool,
    ) -> Added {
        let grace = self.grace;
        let k = (partition, key.to_vec());
        let list = self.sessions.entry(k.clone()).or_default();
        let (mut start, mut end) = (ts, ts.saturating_add(gap));
        let mut merged: Option<WindowAcc> = None;
        let mut keep = Vec::with_capacity(list.len());
        let mut absorbed = Vec::new();
        for s in list.drain(..) {
            // A table's key has one entry, whatever the event's time.
            if table || (s.start <= end && start <= s.end) {
                absorbed.push(s);
            } else {
                keep.push(s);
            }
        }
        for s in &absorbed {
            // A table entry keeps its first event's time as its start: the incarnation
            // its event ids name (a key dropped by the ttl and seen again starts later).
            start = if table { s.start } else { start.min(s.start) };
            end = end.max(s.end);
        }
        if absorbed.is_empty() && watermark >= end.saturating_add(grace) {
            *list = keep;
            if list.is_empty() {
                self.sessions.remove(&k);
            }
            return Added::Late;
        }
        for s in absorbed {
            self.session_timers.remove(&(
                partition,
                s.end.saturating_add(grace),
                s.start,
                key.to_vec(),
            ));
            match merged.as_mut() {
                None => merged = Some(s.acc),
                Some(m) => m.merge(s.acc),
            }
        }
        let mut acc = merged.unwrap_or_else(|| WindowAcc::new(plan));
        acc.add(plan, row, ts, offset);
        keep.push(Session { start, end, acc });
        keep.sort_by_key(|s| s.start);
        *list = keep;
        self.session_timers
            .insert((partition, end.saturating_add(grace), start, key.to_vec()));
        self.dirty_sessions.insert(k.clone());
        if let EmitPlan::Update { .. } = self.emit {
            self.pending_sessions.insert(k);
        }
        Added::Ok
    }

    /// Closes the windows (and sessions) whose `end + grace` the watermark has reached,
    /// handing each result to `emit` (every closed window in `final` mode; changed ones in
    /// `update`). `only`: the partition whose watermark `watermark` is (a record's); `None`:
    /// every partition at once (the end of a bounded input), in the README's order: by close
    /// time, partition, window, key.
    /// A spilled window streams its RocksDB entries merged with its cached ones, in key
    /// order, so closing a window of millions of keys needs no more memory than its cache.
    pub fn close_until(
        &mut self,
        only: Option<u32>,
        watermark: i64,
        store: &Store,
        emit: &mut dyn FnMut(Emission),
    ) -> Result<(), StateError> {
        let mut due: Vec<(i64, WindowId)> = match only {
            Some(p) => {
                let from = WindowId {
                    partition: p,
                    start: i64::MIN,
                    end: i64::MIN,
                };
                self.closing
                    .range((p, i64::MIN, from)..)
                    .take_while(|(q, close, _)| *q == p && *close <= watermark)
                    .map(|(_, close, id)| (*close, *id))
                    .collect()
            }
            None => self
                .closing
                .iter()
                .filter(|(_, close, _)| *close <= watermark)
                .map(|(_, close, id)| (*close, *id))
                .collect(),
        };
        due.sort_unstable();
        for (close, id) in due {
            self.closing.remove(&(id.partition, close, id));
            self.close_window(id, store, emit)?;
        }
        let mut due: Vec<(i64, u32, i64, Vec<u8>)> = match only {
            Some(p) => self
                .session_timers
                .range((p, i64::MIN, i64::MIN, Vec::new())..)
                .take_while(|(q, close, _, _)| *q == p && *close <= watermark)
                .map(|(q, close, start, key)| (*close, *q, *start, key.clone()))
                .collect(),
            None => self
                .session_timers
                .iter()
                .filter(|(_, close, _, _)| *close <= watermark)
                .map(|(q, close, start, key)| (*close, *q, *start, key.clone()))
                .collect(),
        };
        due.sort_unstable();
        let final_mode = self.emit == EmitPlan::Final;
        for (close, partition, start, key) in due {
            self.session_timers
                .remove(&(partition, close, start, key.clone()));
            let k = (partition, key.clone());
            let Some(list) = self.sessions.get_mut(&k) else {
                continue;
            };
            let Some(pos) = list.iter().position(|s| s.start == start) else {
                continue;
            };
            let s = list.remove(pos);
            if list.is_empty() {
                self.sessions.remove(&k);
                self.pending_sessions.remove(&k);
            }
            if matches!(self.assigner, WindowAssigner::Table { .. }) && watermark < i64::MAX {
                self.expired += 1;
            }
            self.dirty_sessions.insert(k);
            if final_mode || s.acc.changed {
                emit(Emission {
                    partition,
                    start: s.start,
                    end: s.end,
                    key,
                    results: s.acc.results(),
                    seq: s.acc.emitted,
                });
            }
        }
        Ok(())
    }

    /// Closes one aligned window: its results in key order, from the cache and RocksDB.
    fn close_window(
        &mut self,
        id: WindowId,
        store: &Store,
        emit: &mut dyn FnMut(Emission),
    ) -> Result<(), StateError> {
        let final_mode = self.emit == EmitPlan::Final;
        let Some(slot) = self.slots.remove(&id) else {
            return Ok(());
        };
        self.cached -= slot.cache.len();
        self.last_slot_len = slot.cache.len();
        if slot.persisted {
            self.closed_persisted.push(id);
        }
        let mut cached: Vec<(CacheKey, WindowAcc)> =
            slot.cache.into_iter().map(|(k, e)| (k, e.acc)).collect();
        // Keys are memcomparable: byte order is key order.
        cached.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let prefix = window_prefix(&id);
        let mut disk = slot.spilled.then(|| store.iter_prefix(&prefix).peekable());
        let mut cached = cached.into_iter().peekable();
        let updates = !final_mode && !self.pending.is_empty();
        loop {
            // The next key in order: from the cache, from RocksDB, or both (the cache is newer).
            let from_disk = match (cached.peek(), disk.as_mut().and_then(|d| d.peek())) {
                (None, None) => break,
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some((ck, _)), Some(Ok((dk, _)))) => match dk[prefix.len()..].cmp(ck.as_slice()) {
                    std::cmp::Ordering::Less => true,
                    std::cmp::Ordering::Equal => {
                        if let Some(d) = disk.as_mut() {
                            d.next();
                        }
                        false
                    }
                    std::cmp::Ordering::Greater => false,
                },
                (_, Some(Err(_))) => true,
            };
            let (key, acc) = if from_disk {
                let Some(Some(item)) = disk.as_mut().map(|d| d.next()) else {
                    break;
                };
                let (k, v) = item?;
                (k[prefix.len()..].to_vec(), decode_acc(&v)?)
            } else {
                let Some((k, a)) = cached.next() else { break };
                (k.into_vec(), a)
            };
            if updates {
                self.pending.remove(&(id, key.clone()));
            }
            if final_mode || acc.changed {
                emit(Emission {
                    partition: id.partition,
                    start: id.start,
                    end: id.end,
                    key,
                    results: acc.results(),
                    seq: acc.emitted,
                });
            }
        }
        Ok(())
    }

    /// In `update` mode: the changed windows, once the watermark has moved `interval`
    /// since the last update round (every event when the interval is 0).
    pub fn take_updates(
        &mut self,
        watermark: i64,
        store: &Store,
        emit: &mut dyn FnMut(Emission),
    ) -> Result<(), StateError> {
        let EmitPlan::Update { interval_ms } = self.emit else {
            return Ok(());
        };
        // Paced by the pipeline watermark: none yet (a partition has shown no event), no
        // update round; otherwise every event would send one.
        if interval_ms > 0
            && (watermark == i64::MIN
                || (self.last_update_wm != i64::MIN
                    && watermark < self.last_update_wm.saturating_add(interval_ms)))
        {
            return Ok(());
        }
        if self.pending.is_empty() && self.pending_sessions.is_empty() {
            return Ok(());
        }
        self.last_update_wm = watermark;
        let mut items: Vec<(WindowId, Vec<u8>)> =
            std::mem::take(&mut self.pending).into_iter().collect();
        items.sort_by(|a, b| (a.0.end, a.0, &a.1).cmp(&(b.0.end, b.0, &b.1)));
        for (id, key) in items {
            let Some(slot) = self.slots.get_mut(&id) else {
                continue;
            };
            if !slot.cache.contains_key(key.as_slice()) {
                let acc = match store.get(&window_key(&id, &key))? {
                    Some(v) => decode_acc(&v)?,
                    None => continue,
                };
                self.cached += 1;
                slot.cache
                    .insert(CacheKey::from_slice(&key), Entry { acc, dirty: false });
            }
            let Some(e) = slot.cache.get_mut(key.as_slice()) else {
                continue;
            };
            if !e.acc.changed {
                continue;
            }
            emit(Emission {
                partition: id.partition,
                start: id.start,
                end: id.end,
                key: key.clone(),
                results: e.acc.results(),
                seq: e.acc.emitted,
            });
            e.acc.emitted += 1;
            e.acc.changed = false;
            if !e.dirty {
                e.dirty = true;
                self.dirty.push((id, key));
            }
        }
        // BTreeSet order: partition, then key bytes (memcomparable: key order).
        let keys = std::mem::take(&mut self.pending_sessions);
        for (p, key) in keys {
            let k = (p, key);
            let Some(list) = self.sessions.get_mut(&k) else {
                continue;
            };
            for s in list.iter_mut().filter(|s| s.acc.changed) {
                emit(Emission {
                    partition: p,
                    start: s.start,
                    end: s.end,
                    key: k.1.clone(),
                    results: s.acc.results(),
                    seq: s.acc.emitted,
                });
                s.acc.emitted += 1;
                s.acc.changed = false;
            }
            self.dirty_sessions.insert(k);
        }
        Ok(())
    }
}
