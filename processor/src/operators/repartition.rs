//! The repartition hop: what a re-keying pipeline's upstream stage writes to
//! `<group>-repartition` and its downstream stage reads, and what a downstream partition
//! knows of the upstream partitions that feed it. Pure: no I/O.
//!
//! # Records
//! Each record value is one version byte and a bincode [`Hop`]:
//! - an [`Hop::Event`], keyed by the group key (the engine's key encoding) and written to
//!   partition [`partition_of`] of it: the event's upstream partition and offset, its event
//!   time, the upstream partition's watermark before it (its *stamp*), the aggregate inputs,
//!   and, when it might be late (sessions only), its original record for the dead letter;
//! - a [`Hop::Marker`], written by every upstream checkpoint to every downstream partition:
//!   upstream partition `sp` has shown event times up to `max`, of `total` upstream
//!   partitions.
//!
//! # Time across the hop
//! A downstream partition's watermark is the smallest `max` over **all** upstream
//! partitions' markers, minus `max_out_of_orderness`: no upstream partition that feeds it
//! can still send an event for a window it closes. An event is late when its windows have
//! closed by its stamp, that is by its own upstream partition's watermark, exactly as
//! without a repartition; a marker of `sp` is written after `sp`'s events before it, so the
//! downstream watermark never passes an event's stamp before the event arrives. Which
//! events are late therefore depends only on each source partition's records, never on
//! timing or on which instances run which stage.
//!
//! # Nothing counted twice
//! An upstream stage that crashes re-sends the events since its last checkpoint. Events of
//! one upstream partition reach a downstream partition in offset order (one idempotent
//! producer per upstream owner), so each downstream partition keeps, per upstream
//! partition, the next upstream offset it expects ([`Upstream`]), and skips anything below
//! it. That record is part of the downstream partition's state (local checkpoint and
//! changelog), so it moves with the partition.

use super::Scalar;
use crate::pipeline::plan::Plan;
use apache_avro::types::Value;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

const VERSION: u8 = 1;

/// One record of the repartition topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Hop {
    Event {
        /// Upstream (source) partition and offset.
        sp: u32,
        so: i64,
        ts: i64,
        /// The upstream partition's watermark before this event.
        stamp: i64,
        key: Vec<u8>,
        /// (row index, value) of the fields the aggregates read.
        fields: Vec<(u32, Scalar)>,
        /// The source record, when the event might be found late downstream.
        orig: Option<Orig>,
    },
    Marker {
        sp: u32,
        max: i64,
        total: u32,
    },
}

/// A source record's coordinates and bytes, for a dead letter written downstream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Orig {
    pub topic: String,
    pub partition: u32,
    pub offset: i64,
    pub timestamp: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
}

impl Hop {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![VERSION];
        // Serializing plain data into a Vec cannot fail.
        if let Ok(b) = bincode::serialize(self) {
            out.extend(b);
        }
        out
    }

    pub fn decode(b: &[u8]) -> Result<Hop, String> {
        match b.split_first() {
            Some((&VERSION, rest)) => {
                bincode::deserialize(rest).map_err(|e| format!("not a repartition record: {e}"))
            }
            Some((v, _)) => Err(format!(
                "repartition record version {v}, expected {VERSION}"
            )),
            None => Err("an empty repartition record".into()),
        }
    }
}

/// The downstream partition of an encoded group key (FNV-1a: stable across builds).
pub fn partition_of(key: &[u8], partitions: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    (h % u64::from(partitions.max(1))) as u32
}

/// The aggregate inputs of a row, as [`Hop::Event::fields`] carries them.
pub fn project(plan: &Plan, row: &[Value]) -> Vec<(u32, Scalar)> {
    let mut idx: Vec<usize> = plan.aggs.iter().filter_map(|a| a.field).collect();
    idx.sort_unstable();
    idx.dedup();
    idx.into_iter()
        .filter_map(|i| row.get(i).map(|v| (i as u32, Scalar::of(v))))
        .collect()
}

/// The row the aggregates read back from [`project`]ed fields: every other field null.
pub fn unproject(plan: &Plan, fields: &[(u32, Scalar)]) -> Vec<Value> {
    let width = plan
        .aggs
        .iter()
        .filter_map(|a| a.field)
        .max()
        .map_or(0, |m| m + 1);
    let mut row = vec![Value::Null; width];
    for (i, s) in fields {
        let ty = plan
            .aggs
            .iter()
            .find(|a| a.field == Some(*i as usize))
            .and_then(|a| a.input.as_ref());
        if let (Some(slot), Some(ty)) = (row.get_mut(*i as usize), ty) {
            *slot = s.to_value(ty);
        }
    }
    row
}

/// What one downstream partition knows of the upstream partitions feeding it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Upstream {
    /// How many upstream partitions there are (the largest count a marker gave).
    pub total: u32,
    /// Upstream partition -> (largest event time a marker gave, next offset expected).
    pub parts: BTreeMap<u32, (i64, i64)>,
}

impl Upstream {
    /// Whether this event of upstream partition `sp` at offset `so` was applied already.
    pub fn seen(&self, sp: u32, so: i64) -> bool {
        self.parts.get(&sp).is_some_and(|(_, next)| so < *next)
    }

    pub fn applied(&mut self, sp: u32, so: i64) {
        let e = self.parts.entry(sp).or_insert((i64::MIN, 0));
        e.1 = e.1.max(so + 1);
    }

    pub fn mark(&mut self, sp: u32, max: i64, total: u32) {
        let e = self.parts.entry(sp).or_insert((i64::MIN, 0));
        e.0 = e.0.max(max);
        self.total = self.total.max(total);
    }

    /// The largest event time every upstream partition has passed: `i64::MIN` until a
    /// marker of each of `total` partitions has arrived. `total` 0 (offline: one engine
    /// sees every partition) counts the partitions seen so far.
    pub fn low(&self) -> i64 {
        let marked: Vec<i64> = self
            .parts
            .values()
            .map(|(m, _)| *m)
            .filter(|m| *m > i64::MIN)
            .collect();
        if marked.is_empty() || (marked.len() as u32) < self.total {
            return i64::MIN;
        }
        marked.into_iter().min().unwrap_or(i64::MIN)
    }

    /// The largest event time upstream partition `sp` has shown.
    pub fn max_of(&self, sp: u32) -> i64 {
        self.parts.get(&sp).map_or(i64::MIN, |(m, _)| *m)
    }
}

/// The store key of a downstream partition's [`Upstream`] record (`u | partition`).
pub fn upstream_key(partition: u32) -> Vec<u8> {
    let mut k = vec![b'u'];
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_bad_bytes_are_errors() {
        let h = Hop::Event {
            sp: 3,
            so: 42,
            ts: 1_700_000_000_000,
            stamp: i64::MIN,
            key: vec![4, b'a', 0, 0],
            fields: vec![(1, Scalar::Int(7)), (2, Scalar::Str("x".into()))],
            orig: None,
        };
        assert_eq!(Hop::decode(&h.encode()), Ok(h));
        let m = Hop::Marker {
            sp: 1,
            max: 5,
            total: 6,
        };
        assert_eq!(Hop::decode(&m.encode()), Ok(m));
        assert!(Hop::decode(&[]).is_err());
        assert!(Hop::decode(&[9, 1, 2]).is_err());
        assert!(Hop::decode(&[VERSION, 200]).is_err());
    }

    #[test]
    fn the_low_mark_waits_for_every_upstream_partition_and_offsets_deduplicate() {
        let mut u = Upstream::default();
        u.mark(0, 100, 3);
        u.mark(1, 50, 3);
        assert_eq!(u.low(), i64::MIN, "partition 2 has said nothing yet");
        u.mark(2, 70, 3);
        assert_eq!(u.low(), 50);
        u.mark(1, 40, 3); // an older marker (a new owner restored behind) never lowers it
        assert_eq!(u.low(), 50);
        assert!(!u.seen(0, 0));
        u.applied(0, 0);
        u.applied(0, 1);
        assert!(u.seen(0, 1) && u.seen(0, 0) && !u.seen(0, 2) && !u.seen(1, 0));
    }

    #[test]
    fn keys_spread_over_partitions_deterministically() {
        let mut hits = [0u32; 4];
        for i in 0..400u32 {
            let k = format!("page-{i}");
            let p = partition_of(k.as_bytes(), 4);
            assert_eq!(p, partition_of(k.as_bytes(), 4));
            hits[p as usize] += 1;
        }
        assert!(hits.iter().all(|h| *h > 50), "{hits:?}");
    }
}
