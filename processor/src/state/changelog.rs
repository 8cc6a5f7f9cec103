//! The changelog: every change a checkpoint makes to the window and session entries, as
//! the records of a compacted topic, so that a store can be rebuilt somewhere else by
//! applying them in order (scale-out, issue 12: state follows its partitions).
//!
//! A checkpoint's changes reach two places through one [`StateChanges`]: the local
//! `WriteBatch`, and with [`Tee`] a list of [`Change`]s for the changelog. A change is the
//! store's own key and value, so the changelog needs no format of its own:
//! - `w|…` / `s|…` with a value: put that entry;
//! - the same key with no value (a tombstone): delete it;
//! - `x | partition | start | end` (the window prefix, tagged `x`) with an empty value:
//!   the window closed, every entry under its prefix is gone. Its entries are not
//!   tombstoned one by one (a closed window can hold a million keys); the topic's
//!   `compact,delete` policy with a retention longer than size + grace ages them out,
//!   as Kafka Streams' window-store changelogs do.
//!
//! The partition of a change is the source partition its key holds (bytes 1..5), so the
//! changelog has one partition per source partition and a partition's state can move on
//! its own.

use super::{prefix_end, Store};
use rocksdb::WriteBatch;

/// What a checkpoint does to the window and session entries.
pub trait StateChanges {
    fn put(&mut self, key: &[u8], value: &[u8]);
    fn delete(&mut self, key: &[u8]);
    /// Every entry under a window's prefix (`w | partition | start | end`).
    fn delete_window(&mut self, prefix: &[u8]);
}

impl StateChanges for WriteBatch {
    fn put(&mut self, key: &[u8], value: &[u8]) {
        WriteBatch::put(self, key, value);
    }

    fn delete(&mut self, key: &[u8]) {
        WriteBatch::delete(self, key);
    }

    fn delete_window(&mut self, prefix: &[u8]) {
        Store::delete_prefix(self, prefix);
    }
}

/// One changelog record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The source partition (and changelog partition) the entry belongs to.
    pub partition: u32,
    pub key: Vec<u8>,
    /// `None`: a tombstone.
    pub value: Option<Vec<u8>>,
}

/// The tag of a closed-window record.
pub const CLOSED: u8 = b'x';

fn partition_of(key: &[u8]) -> u32 {
    key.get(1..5)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_be_bytes)
        .unwrap_or(0)
}

impl StateChanges for Vec<Change> {
    fn put(&mut self, key: &[u8], value: &[u8]) {
        self.push(Change {
            partition: partition_of(key),
            key: key.to_vec(),
            value: Some(value.to_vec()),
        });
    }

    fn delete(&mut self, key: &[u8]) {
        self.push(Change {
            partition: partition_of(key),
            key: key.to_vec(),
            value: None,
        });
    }

    fn delete_window(&mut self, prefix: &[u8]) {
        let mut key = prefix.to_vec();
        if let Some(tag) = key.first_mut() {
            *tag = CLOSED;
        }
        self.push(Change {
            partition: partition_of(prefix),
            key,
            value: Some(Vec::new()),
        });
    }
}

/// Both at once: the local batch and the changelog's records.
pub struct Tee<'a, A: StateChanges, B: StateChanges>(pub &'a mut A, pub &'a mut B);

impl<A: StateChanges, B: StateChanges> StateChanges for Tee<'_, A, B> {
    fn put(&mut self, key: &[u8], value: &[u8]) {
        self.0.put(key, value);
        self.1.put(key, value);
    }

    fn delete(&mut self, key: &[u8]) {
        self.0.delete(key);
        self.1.delete(key);
    }

    fn delete_window(&mut self, prefix: &[u8]) {
        self.0.delete_window(prefix);
        self.1.delete_window(prefix);
    }
}

/// Restore: applies one changelog record to a batch of the rebuilt store.
pub fn apply(batch: &mut WriteBatch, key: &[u8], value: Option<&[u8]>) {
    match (key.first(), value) {
        (Some(&CLOSED), Some(_)) => {
            let mut prefix = key.to_vec();
            prefix[0] = b'w';
            batch.delete_range(&prefix, &prefix_end(&prefix));
        }
        (Some(&CLOSED), None) => {} // a closed-window record's own tombstone
        (_, Some(v)) => batch.put(key, v),
        (_, None) => batch.delete(key),
    }
}

/// The tag of a partition's checkpoint record (`p | partition`), written after the
/// partition's changes in every checkpoint's transaction: where its source offsets were,
/// and what else its windows need beyond their entries.
pub const PARTITION_META: u8 = b'p';

/// The tag of a partition's replay guard (`g | partition`): written by a replay of a
/// pipeline with a changelog, so that whichever instance gets the partition next counts its
/// reprocessed records only in the windows the replay discarded; deleted (a tombstone) by
/// the first checkpoint after the partition has caught up.
pub const REPLAY_GUARD: u8 = b'g';

pub fn replay_guard_key(partition: u32) -> Vec<u8> {
    let mut k = vec![REPLAY_GUARD];
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

/// Where the local store is in each changelog partition (the next offset to apply); kept in
/// the checkpoint's batch.
pub const POSITIONS_KEY: &[u8] = b"m|changelog";

pub type Positions = std::collections::BTreeMap<u32, i64>;

/// A partition's checkpoint, as the changelog carries it.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct PartitionMeta {
    /// The next offset to process, per source topic.
    pub offsets: Vec<(String, i64)>,
    /// The largest event time the partition has shown (its part of the watermark).
    pub max_event_time: i64,
    /// Windows and sessions with an update not yet emitted (`emit: update`).
    pub pending: Vec<(super::WindowId, Vec<u8>)>,
    pub pending_sessions: Vec<Vec<u8>>,
}

pub fn partition_meta_key(partition: u32) -> Vec<u8> {
    let mut k = vec![PARTITION_META];
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

impl PartitionMeta {
    pub fn change(&self, partition: u32) -> Result<Change, super::StateError> {
        Ok(Change {
            partition,
            key: partition_meta_key(partition),
            value: Some(
                bincode::serialize(self).map_err(|e| super::StateError::Corrupt(e.to_string()))?,
            ),
        })
    }

    pub fn decode(bytes: &[u8]) -> Result<PartitionMeta, super::StateError> {
        bincode::deserialize(bytes)
            .map_err(|e| super::StateError::Corrupt(format!("a changelog partition record: {e}")))
    }
}

/// The local store's changelog positions (none before the first logged checkpoint).
pub fn positions(store: &Store) -> Result<Positions, super::StateError> {
    match store.get(POSITIONS_KEY)? {
        Some(b) => bincode::deserialize(&b)
            .map_err(|e| super::StateError::Corrupt(format!("the changelog positions: {e}"))),
        None => Ok(Positions::new()),
    }
}

pub fn put_positions(batch: &mut WriteBatch, p: &Positions) -> Result<(), super::StateError> {
    let bytes = bincode::serialize(p).map_err(|e| super::StateError::Corrupt(e.to_string()))?;
    batch.put(POSITIONS_KEY, bytes);
    Ok(())
}
