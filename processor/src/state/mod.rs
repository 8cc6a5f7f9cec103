//! State: the RocksDB store and the window state in front of it.
//!
//! Owns: where window accumulators live between events. [`windows::WindowState`] keeps
//! them in an in-memory write cache (Kafka Streams' record cache, in spirit); RocksDB is
//! touched only on a cache miss for a window that has spilled, and at a checkpoint, when
//! every dirty entry, every closed window's deletion and the source/sink positions they
//! reflect are written in **one** `WriteBatch`. After a crash the store therefore holds a
//! consistent cut: state exactly as of the positions stored with it.
//!
//! Key layout (all integers big-endian; times offset by 2^63 so they sort):
//! - `w | partition u32 | start | end | group key` -> accumulators of an aligned window
//! - `s | partition u32 | group key` -> the open sessions of a key
//! - `m | checkpoint`, `m | replay` -> the checkpoint record and the replay guard
//!   ([`checkpoint`], which reads and writes them)
//! - with a changelog ([`changelog`]): `p | partition u32` -> the partition's record (its
//!   offsets, largest event time, pending updates) and `m | changelog` -> how far into each
//!   changelog partition the store is

pub mod changelog;
pub mod checkpoint;
pub mod meta;
pub mod windows;

use crate::pipeline::StateDef;
use rocksdb::{
    BlockBasedOptions, Cache, DBCompressionType, Direction, IteratorMode, Options, WriteBatch, DB,
};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot open the state store at {path}: {source}")]
    Open {
        path: String,
        source: rocksdb::Error,
    },
    #[error("state store read failed: {0}")]
    Read(rocksdb::Error),
    #[error("state store write failed: {0}")]
    Write(rocksdb::Error),
    #[error("state store holds an entry that does not decode ({0}); was it written by another pipeline?")]
    Corrupt(String),
    #[error("the checkpoint in {0} does not decode; remove the state directory to start over")]
    BadCheckpoint(String),
    #[error("the state directory {dir} belongs to pipeline `{found}`, not `{expected}`; use another --state-dir")]
    OtherPipeline {
        dir: String,
        found: String,
        expected: String,
    },
}

/// A key and its value, as stored.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// A key and its value, as a RocksDB iterator yields them.
pub type RawEntry = (Box<[u8]>, Box<[u8]>);

/// An aligned window of one source partition.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct WindowId {
    pub partition: u32,
    pub start: i64,
    pub end: i64,
}

fn time_bytes(t: i64) -> [u8; 8] {
    ((t as u64) ^ (1 << 63)).to_be_bytes()
}

pub fn window_prefix(id: &WindowId) -> Vec<u8> {
    let mut k = Vec::with_capacity(21 + 16);
    k.push(b'w');
    k.extend_from_slice(&id.partition.to_be_bytes());
    k.extend_from_slice(&time_bytes(id.start));
    k.extend_from_slice(&time_bytes(id.end));
    k
}

/// The window a `w|…` entry key belongs to (the inverse of [`window_prefix`]).
pub fn window_id_of(key: &[u8]) -> Option<WindowId> {
    if key.len() < 21 || key[0] != b'w' {
        return None;
    }
    let time = |b: &[u8]| {
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        (u64::from_be_bytes(a) ^ (1 << 63)) as i64
    };
    let mut p = [0u8; 4];
    p.copy_from_slice(&key[1..5]);
    Some(WindowId {
        partition: u32::from_be_bytes(p),
        start: time(&key[5..13]),
        end: time(&key[13..21]),
    })
}

pub fn window_key(id: &WindowId, key: &[u8]) -> Vec<u8> {
    let mut k = window_prefix(id);
    k.extend_from_slice(key);
    k
}

pub fn session_key(partition: u32, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(5 + key.len());
    k.push(b's');
    k.extend_from_slice(&partition.to_be_bytes());
    k.extend_from_slice(key);
    k
}

/// The smallest key greater than every key that starts with `prefix`.
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0xff; prefix.len() + 1]
}

/// A RocksDB database holding one pipeline's state.
pub struct Store {
    db: DB,
    /// Puts and deletes written so far (for the benchmark's writes-per-event figure).
    pub writes: u64,
}

impl Store {
    pub fn open(dir: &Path, cfg: &StateDef) -> Result<Store, StateError> {
        Store::open_with(dir, cfg, false)
    }

    /// Opens without taking the directory's lock, to read a running pipeline's state (as of
    /// its last write); writes fail.
    pub fn open_read_only(dir: &Path, cfg: &StateDef) -> Result<Store, StateError> {
        Store::open_with(dir, cfg, true)
    }

    fn open_with(dir: &Path, cfg: &StateDef, read_only: bool) -> Result<Store, StateError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        let mut table = BlockBasedOptions::default();
        let cache = Cache::new_lru_cache(cfg.block_cache_mb.max(1) << 20);
        table.set_block_cache(&cache);
        // Bloom filters (10 bits a key, ~1.2 bytes) and indexes stay in table-reader memory,
        // outside the block cache: with them in a small block cache, a spilled state's
        // point lookups thrashed it (measured: ~10 k lookups/s instead of hundreds of k).
        table.set_bloom_filter(10.0, false);
        table.set_cache_index_and_filter_blocks(false);
        opts.set_block_based_table_factory(&table);
        opts.set_write_buffer_size(cfg.write_buffer_mb.max(1) << 20);
        opts.set_max_write_buffer_number(2);
        opts.set_compression_type(DBCompressionType::Lz4);
        opts.set_max_open_files(256);
        let db = if read_only {
            DB::open_for_read_only(&opts, dir, false)
        } else {
            DB::open(&opts, dir)
        };
        let db = db.map_err(|source| StateError::Open {
            path: dir.display().to_string(),
            source,
        })?;
        Ok(Store { db, writes: 0 })
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        self.db.get(key).map_err(StateError::Read)
    }

    /// Every (key, value) whose key starts with `prefix`, in key order.
    pub fn scan(&self, prefix: &[u8]) -> Result<Vec<KeyValue>, StateError> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator(IteratorMode::From(prefix, Direction::Forward))
        {
            let (k, v) = item.map_err(StateError::Read)?;
            if !k.starts_with(prefix) {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    /// Streams every (key, value) whose key starts with `prefix`, in key order.
    pub fn iter_prefix<'a>(
        &'a self,
        prefix: &'a [u8],
    ) -> impl Iterator<Item = Result<RawEntry, StateError>> + 'a {
        self.db
            .iterator(IteratorMode::From(prefix, Direction::Forward))
            .map(|r| r.map_err(StateError::Read))
            .take_while(move |r| r.as_ref().map_or(true, |(k, _)| k.starts_with(prefix)))
    }

    pub fn write(&mut self, batch: WriteBatch) -> Result<(), StateError> {
        self.writes += batch.len() as u64;
        self.db.write(batch).map_err(StateError::Write)
    }

    /// Adds the deletion of every key with `prefix` to `batch`.
    pub fn delete_prefix(batch: &mut WriteBatch, prefix: &[u8]) {
        batch.delete_range(prefix, &prefix_end(prefix));
    }

    /// Approximate size of the state on disk and in memtables, in bytes.
    pub fn size_bytes(&self) -> u64 {
        let p = |name: &str| self.db.property_int_value(name).ok().flatten().unwrap_or(0);
        p("rocksdb.total-sst-files-size") + p("rocksdb.cur-size-all-mem-tables")
    }
}
