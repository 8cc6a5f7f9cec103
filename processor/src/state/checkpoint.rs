//! The checkpoint record, beside the store it describes: what a checkpoint holds, and the
//! one place it is read and written. Every way of running a pipeline (file replay, Kafka,
//! `weir serve`, the dead-letter re-feed, the benchmark) and every offline operation on a
//! stopped one (`weir replay`) reads and writes it through here, so a state directory left
//! by one can be resumed by any other.
//!
//! Key layout of the store (see [`super`] for the window and session keys):
//! - `w|…` window accumulators, `s|…` the open sessions of a key;
//! - `m|checkpoint` ([`META_KEY`]): the [`Checkpoint`] record (bincode);
//! - `m|replay` ([`REPLAY_KEY`]): the [`ReplayGuard`] while a replay reprocesses records
//!   it had already counted; absent otherwise.
//! - `m|lengths` ([`LENGTHS_KEY`]): the file lengths of a checkpoint whose changelog
//!   transaction is being committed ([`put_lengths`]); the checkpoint record that follows
//!   deletes it. A crash between the commit and the local batch leaves it, and the restart
//!   rolls the state forward from the changelog; the files must then keep what that
//!   checkpoint flushed, not be cut back to the older record's lengths ([`Opened::lengths`]).
//!
//! [`save`] writes the window changes (staged into the batch by the driver, with the
//! changelog positions when there is a changelog), the record and the guard in **one** `WriteBatch`:
//! after a crash the store holds state exactly as of the positions stored with it.

use super::meta::{ReplayFilter, WindowMeta};
use super::windows::WindowState;
use super::{StateError, Store};
use crate::monitor::Counters;
use crate::operators::watermark::Watermarks;
use crate::pipeline::plan::Plan;
use crate::source::SourceRecord;
use rocksdb::WriteBatch;
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const META_KEY: &[u8] = b"m|checkpoint";
pub const REPLAY_KEY: &[u8] = b"m|replay";
pub const LENGTHS_KEY: &[u8] = b"m|lengths";

/// Where the file outputs resume: per sink, in the pipeline's order, and the dead letter.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Lengths {
    pub sinks: Vec<Option<u64>>,
    pub dead_letter: Option<u64>,
}

/// What a checkpoint holds besides the window entries.
#[derive(Clone, Serialize, Deserialize)]
pub struct Checkpoint {
    pub pipeline: String,
    /// Records consumed from the input file (file replay and the benchmark).
    pub position: u64,
    /// Kafka: the next offset to process per (topic, partition).
    pub offsets: Vec<(String, i32, i64)>,
    pub watermarks: Watermarks,
    pub windows: WindowMeta,
    pub counters: Counters,
    /// Per sink, in the pipeline's order: the file length to truncate to on restart.
    pub sinks: Vec<Option<u64>>,
    /// The dead-letter file's length, when it is a file.
    pub dead_letter: Option<u64>,
    /// The engine's clock (largest event time read).
    pub clock: i64,
}

impl Checkpoint {
    /// The checkpoint of a state that holds nothing yet and starts at `offsets`.
    pub fn start(plan: &Plan, offsets: Vec<(String, i32, i64)>) -> Checkpoint {
        Checkpoint {
            pipeline: plan.name.clone(),
            position: 0,
            offsets,
            watermarks: Watermarks::new(
                plan.source.max_out_of_orderness_ms,
                plan.source.idle_timeout_ms,
            ),
            windows: WindowMeta::default(),
            counters: Counters::default(),
            sinks: Vec::new(),
            dead_letter: None,
            clock: i64::MIN,
        }
    }
}

/// Kept in the state (`m|replay`) while records counted before a rewind are reprocessed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplayGuard {
    pub floor: i64,
    pub ceil: i64,
    /// The watermark before the rewind: windows starting before `floor` close by it.
    pub old_watermark: i64,
    /// (topic, partition, offset): records below were counted before the rewind.
    pub until: Vec<(String, u32, i64)>,
}

impl ReplayGuard {
    /// Whether `rec` was counted before the rewind; forgets partitions it has passed.
    pub fn replayed(&mut self, rec: &SourceRecord) -> bool {
        let Some(i) = self
            .until
            .iter()
            .position(|(t, p, _)| *p == rec.partition && *t == rec.topic)
        else {
            return false;
        };
        if rec.offset < self.until[i].2 {
            if rec.offset + 1 >= self.until[i].2 {
                self.until.remove(i);
            }
            true
        } else {
            self.until.remove(i);
            false
        }
    }

    pub fn filter(&self, replayed: bool) -> ReplayFilter {
        ReplayFilter {
            floor: self.floor,
            ceil: self.ceil,
            old_watermark: self.old_watermark,
            replayed,
        }
    }

    /// Every replayed record is past and the watermark is back where it was.
    pub fn done(&self, watermark: i64) -> bool {
        self.until.is_empty() && watermark >= self.old_watermark
    }
}

/// A pipeline's state directory, opened.
pub struct Opened {
    pub store: Store,
    /// The last checkpoint; none in a new state.
    pub checkpoint: Option<Checkpoint>,
    /// The replay guard, while a replay is being reprocessed.
    pub guard: Option<ReplayGuard>,
    /// The lengths of a checkpoint whose changelog commit was under way at a crash.
    pub pending: Option<Lengths>,
}

impl Opened {
    /// Where the file outputs resume. After a crash during a changelog commit, the later
    /// lengths: if the commit went through, the restore rolls forward to that checkpoint and
    /// nothing before it is produced again, so cutting the files back would lose its
    /// results; if it did not, the records since the older checkpoint are processed again
    /// and their results are written twice (at least once, never lost).
    pub fn lengths(&self) -> Lengths {
        if let Some(p) = &self.pending {
            return p.clone();
        }
        self.checkpoint
            .as_ref()
            .map(|c| Lengths {
                sinks: c.sinks.clone(),
                dead_letter: c.dead_letter,
            })
            .unwrap_or_default()
    }
}

/// Opens the state directory (read-only: without its lock, as of the owner's last write)
/// and reads its checkpoint and replay guard, refusing another pipeline's state.
pub fn open(plan: &Plan, dir: &Path, read_only: bool) -> Result<Opened, StateError> {
    let store = if read_only {
        Store::open_read_only(dir, &plan.state)?
    } else {
        Store::open(dir, &plan.state)?
    };
    let checkpoint: Option<Checkpoint> = match store.get(META_KEY)? {
        None => None,
        Some(bytes) => Some(
            bincode::deserialize(&bytes)
                .map_err(|_| StateError::BadCheckpoint(dir.display().to_string()))?,
        ),
    };
    if let Some(c) = &checkpoint {
        if c.pipeline != plan.name {
            return Err(StateError::OtherPipeline {
                dir: dir.display().to_string(),
                found: c.pipeline.clone(),
                expected: plan.name.clone(),
            });
        }
    }
    let guard = match store.get(REPLAY_KEY)? {
        None => None,
        Some(b) => Some(bincode::deserialize(&b).map_err(|e| StateError::Corrupt(e.to_string()))?),
    };
    let pending = match store.get(LENGTHS_KEY)? {
        None => None,
        Some(b) => Some(bincode::deserialize(&b).map_err(|e| StateError::Corrupt(e.to_string()))?),
    };
    Ok(Opened {
        store,
        checkpoint,
        guard,
        pending,
    })
}

/// Records `lengths` on their own, just before a changelog transaction commits (see
/// [`LENGTHS_KEY`]).
pub fn put_lengths(store: &mut Store, lengths: &Lengths) -> Result<(), StateError> {
    let mut batch = WriteBatch::default();
    batch.put(
        LENGTHS_KEY,
        bincode::serialize(lengths).map_err(|e| StateError::Corrupt(e.to_string()))?,
    );
    store.write(batch)
}

/// Adds the record and the guard (or the guard's deletion) to `batch`.
pub fn put(
    batch: &mut WriteBatch,
    cp: &Checkpoint,
    guard: Option<&ReplayGuard>,
) -> Result<(), StateError> {
    let corrupt = |e: bincode::Error| StateError::Corrupt(e.to_string());
    batch.put(META_KEY, bincode::serialize(cp).map_err(corrupt)?);
    batch.delete(LENGTHS_KEY);
    match guard {
        Some(g) => batch.put(REPLAY_KEY, bincode::serialize(g).map_err(corrupt)?),
        None => batch.delete(REPLAY_KEY),
    }
    Ok(())
}

/// Step 2 of every checkpoint: the dirty window entries, the deletions of closed windows,
/// the record and the guard, in one `WriteBatch`; then the write cache may spill.
pub fn save(
    store: &mut Store,
    windows: &mut WindowState,
    mut batch: WriteBatch,
    cp: &Checkpoint,
    guard: Option<&ReplayGuard>,
) -> Result<(), StateError> {
    put(&mut batch, cp, guard)?;
    store.write(batch)?;
    windows.after_checkpoint();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guard_forgets_partitions_it_has_passed() {
        let mut g = ReplayGuard {
            floor: 0,
            ceil: i64::MAX,
            old_watermark: 100,
            until: vec![("t".into(), 0, 10)],
        };
        let rec = |offset| SourceRecord {
            topic: "t".into(),
            partition: 0,
            offset,
            timestamp: None,
            key: None,
            value: crate::source::Payload::Bytes(Vec::new()),
            line: 0,
        };
        assert!(g.replayed(&rec(5)));
        assert!(!g.done(100));
        assert!(g.replayed(&rec(9)));
        assert!(!g.replayed(&rec(10)));
        assert!(g.done(100));
        assert!(!g.done(99));
    }
}
