//! Watermarks. **A window closes by its own partition's watermark**, as a Kafka Streams task
//! closes its windows by its own stream time: a partition's watermark is the largest event
//! time it has shown minus `max_out_of_orderness` ([`Watermarks::of`]). Windows are per
//! source partition (their ids carry it), so which windows close when, and which events are
//! late, depend only on that partition's records, never on which other partitions share the
//! instance: several instances give the results of one, and a partition that moves (a
//! rebalance, a restore from the changelog) keeps its watermark with its state.
//!
//! The **pipeline watermark** ([`Watermarks::current`]) is what the instance reports
//! (`weir status`, `/metrics`) and what paces `emit: update` and a replay's catch-up: the
//! minimum over partitions that are not idle, never going back. A partition is idle when the
//! clock has moved `idle_timeout` past its last record; with every partition idle, the
//! largest partition watermark counts. The clock is the largest event time read so far,
//! offline and against Kafka alike (so a replay is deterministic).
//!
//! A Kafka partition that is assigned but has shown no record yet is [`Watermarks::register`]ed:
//! it holds the pipeline watermark back (as in Flink and Kafka Streams) until it shows records
//! or, with `idle_timeout`, until the clock has moved that far past its registration. Its own
//! watermark is at the start of time: its first records are never late.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Watermarks {
    ooo: i64,
    idle: Option<i64>,
    /// (partition, (largest event time, clock at its last record)), sorted by partition: a
    /// few entries walked once per record, which a vector does faster than a `BTreeMap`
    /// (stored as a map, as it was one).
    #[serde(with = "as_map")]
    parts: Vec<(u32, Partition)>,
    current: i64,
}

/// A partition's (largest event time, clock at its last record).
type Partition = (i64, i64);

/// `parts` in the checkpoint record as the map it was stored as before.
mod as_map {
    use super::Partition;
    use serde::{Deserialize, Deserializer, Serializer};
    use std::collections::BTreeMap;

    pub fn serialize<S: Serializer>(parts: &[(u32, Partition)], s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(parts.iter().map(|(p, v)| (p, v)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(u32, Partition)>, D::Error> {
        Ok(BTreeMap::<u32, Partition>::deserialize(d)?
            .into_iter()
            .collect())
    }
}

impl Watermarks {
    pub fn new(max_out_of_orderness_ms: i64, idle_timeout_ms: Option<i64>) -> Watermarks {
        Watermarks {
            ooo: max_out_of_orderness_ms,
            idle: idle_timeout_ms,
            parts: Vec::new(),
            current: i64::MIN,
        }
    }

    /// The entry of `partition`, inserted as `new` if missing.
    fn entry(&mut self, partition: u32, new: Partition) -> &mut Partition {
        let i = match self.parts.binary_search_by_key(&partition, |(p, _)| *p) {
            Ok(i) => i,
            Err(i) => {
                self.parts.insert(i, (partition, new));
                i
            }
        };
        &mut self.parts[i].1
    }

    /// An assigned partition with no record yet: it holds the watermark at its start.
    pub fn register(&mut self, partition: u32) {
        self.entry(partition, (i64::MIN, i64::MIN));
    }

    /// A partition restored from elsewhere (the changelog): its largest event time so far.
    pub fn adopt(&mut self, partition: u32, max_event_time: i64) {
        *self.entry(partition, (i64::MIN, i64::MIN)) = (max_event_time, i64::MIN);
    }

    /// A partition that moved to another instance no longer holds this one's watermark.
    pub fn forget(&mut self, partition: u32) {
        self.parts.retain(|(p, _)| *p != partition);
    }

    /// The largest event time `partition` has shown.
    pub fn max_event_time(&self, partition: u32) -> i64 {
        match self.parts.binary_search_by_key(&partition, |(p, _)| *p) {
            Ok(i) => self.parts[i].1 .0,
            Err(_) => i64::MIN,
        }
    }

    pub fn observe(&mut self, partition: u32, ts: i64, clock: i64) {
        let e = self.entry(partition, (i64::MIN, clock));
        e.0 = e.0.max(ts);
        e.1 = clock;
    }

    /// Partition `partition`'s watermark: what closes its windows and makes its events late.
    /// At the end of a bounded input ([`Watermarks::finish`]) every partition's is the end
    /// of time.
    pub fn of(&self, partition: u32) -> i64 {
        if self.current == i64::MAX {
            return i64::MAX;
        }
        self.max_event_time(partition).saturating_sub(self.ooo)
    }

    /// Recomputes and returns the pipeline watermark at `clock`: the minimum over active
    /// partitions, else the maximum over all (one pass).
    pub fn advance(&mut self, clock: i64) -> i64 {
        let mut min_active: Option<i64> = None;
        let mut max_all = i64::MIN;
        for (_, (ts, seen)) in self.parts.iter_mut() {
            // Registered partitions start their idle time at the first clock reading.
            if *seen == i64::MIN {
                *seen = clock;
            }
            max_all = max_all.max(*ts);
            if self.idle.is_none_or(|t| clock.saturating_sub(*seen) < t) {
                min_active = Some(min_active.map_or(*ts, |m| m.min(*ts)));
            }
        }
        let wm = min_active.unwrap_or(max_all).saturating_sub(self.ooo);
        self.current = self.current.max(wm);
        self.current
    }

    /// At the end of a bounded input every window may close.
    pub fn finish(&mut self) -> i64 {
        self.current = i64::MAX;
        self.current
    }

    pub fn current(&self) -> i64 {
        self.current
    }

    /// A replay rewinds the watermark to `to`, so the windows it rebuilds are open again.
    pub fn rewind(&mut self, to: i64) {
        self.current = self.current.min(to);
        let cap = to.saturating_add(self.ooo);
        for (_, (ts, _)) in self.parts.iter_mut() {
            *ts = (*ts).min(cap);
        }
    }

    /// `watermark.idle_advance`: every partition that has shown an event time moves to `now`
    /// (the wall clock) if it is behind, so its watermark is `now - max_out_of_orderness`.
    /// Partitions with no event time yet stay where they are: their first records are not
    /// late. Returns whether any moved.
    pub fn advance_to(&mut self, now: i64) -> bool {
        let mut moved = false;
        for (_, (ts, _)) in self.parts.iter_mut() {
            if *ts != i64::MIN && *ts < now {
                *ts = now;
                moved = true;
            }
        }
        moved
    }

    /// Per partition: (largest event time, watermark).
    pub fn partitions(&self) -> impl Iterator<Item = (u32, i64)> + '_ {
        self.parts.iter().map(|(p, (ts, _))| (*p, *ts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn min_over_active_partitions() {
        let mut w = Watermarks::new(10, Some(100));
        w.observe(0, 1000, 1000);
        w.observe(1, 500, 1000);
        assert_eq!(w.advance(1000), 490);
        // partition 1 goes quiet while time moves on
        w.observe(0, 1200, 1200);
        assert_eq!(w.advance(1200), 1190);
        // and never goes back
        w.observe(1, 600, 1200);
        assert_eq!(w.advance(1200), 1190);
    }

    #[test]
    fn idle_advance_moves_partitions_with_records_to_the_wall_clock() {
        let mut w = Watermarks::new(5_000, None);
        w.register(2);
        w.observe(0, 1_000_000, 1_000_000);
        w.observe(1, 900_000, 1_000_000);
        assert!(w.advance_to(2_000_000));
        assert_eq!(w.of(0), 1_995_000);
        assert_eq!(w.of(1), 1_995_000);
        assert_eq!(
            w.max_event_time(2),
            i64::MIN,
            "no record yet: its first ones are not late"
        );
        assert!(!w.advance_to(1_500_000), "never back");
        assert_eq!(w.of(0), 1_995_000);
    }

    #[test]
    fn a_registered_partition_holds_the_watermark_until_idle() {
        let mut w = Watermarks::new(0, Some(100));
        w.register(1);
        w.observe(0, 1000, 1000);
        assert_eq!(
            w.advance(1000),
            i64::MIN,
            "partition 1 has shown nothing yet"
        );
        w.observe(0, 1050, 1050);
        assert_eq!(w.advance(1050), i64::MIN);
        w.observe(0, 1100, 1100);
        assert_eq!(w.advance(1100), 1100, "idle for 100 ms of clock");
        let mut strict = Watermarks::new(0, None);
        strict.register(1);
        strict.observe(0, 5000, 5000);
        assert_eq!(
            strict.advance(5000),
            i64::MIN,
            "without idle_timeout it waits"
        );
        strict.observe(1, 4000, 5000);
        assert_eq!(strict.advance(5000), 4000);
    }

    #[test]
    fn each_partition_has_its_own_watermark() {
        let mut w = Watermarks::new(10, None);
        w.register(1);
        w.observe(0, 1000, 1000);
        assert_eq!(
            w.advance(1000),
            i64::MIN,
            "partition 1 holds the pipeline's"
        );
        assert_eq!(w.of(0), 990, "but not partition 0's");
        assert_eq!(w.of(1), i64::MIN);
        w.observe(1, 200, 1000);
        w.advance(1000);
        assert_eq!((w.of(0), w.of(1), w.current()), (990, 190, 190));
        w.finish();
        assert_eq!((w.of(0), w.of(1)), (i64::MAX, i64::MAX));
    }

    proptest::proptest! {
        /// Whatever the partitions show, in any order: the watermark never goes back, and
        /// without idleness it is the smallest partition maximum minus the out-of-orderness
        /// (an independent fold over the same events).
        #[test]
        fn the_watermark_is_monotonic_and_the_min_of_partition_maxima(
            events in proptest::collection::vec((0u32..4, -1_000_000i64..1_000_000), 1..200),
            ooo in 0i64..10_000,
            idle in proptest::option::of(1i64..50_000),
        ) {
            let mut w = Watermarks::new(ooo, idle);
            let mut strict = Watermarks::new(ooo, None);
            let (mut clock, mut last, mut max) = (i64::MIN, i64::MIN, BTreeMap::new());
            let mut strict_last = i64::MIN;
            for (p, ts) in events {
                clock = clock.max(ts);
                w.observe(p, ts, clock);
                strict.observe(p, ts, clock);
                let wm = w.advance(clock);
                proptest::prop_assert!(wm >= last, "went back from {} to {}", last, wm);
                proptest::prop_assert!(wm <= clock - ooo, "ahead of the clock");
                last = wm;
                let m = max.entry(p).or_insert(i64::MIN);
                *m = (*m).max(ts);
                let want = max.values().min().copied().unwrap_or(i64::MIN) - ooo;
                // Without idleness the watermark is the fold, or an earlier (higher) value
                // it must not give back (a partition seen late can lower the fold).
                let s = strict.advance(clock);
                proptest::prop_assert_eq!(s, want.max(strict_last));
                strict_last = s;
            }
        }
    }
}
