//! Crash points for tests: the process SIGKILLs itself at one named point of the checkpoint
//! protocol, so a crash test can prove that a kill between any two steps loses nothing and
//! doubles nothing. A leaf module: it imports nothing of Weir, and any layer may call it.
//!
//! `WEIR_TEST_SIGKILL_AT=<point>:<n>` kills at the n-th time `<point>` is reached (n ≥ 1);
//! unset (always, outside tests), [`reached`] is one relaxed atomic load. Before the kill it
//! writes `weir: test hook: SIGKILL at <point> #<n>` to stderr, so the test knows which
//! phase its kill hit. `WEIR_TEST_SIGKILL_AFTER=N` (records processed) is the older hook,
//! kept by the runtimes.
//!
//! `WEIR_TEST_STALL_AT=<n>:<ms>` stalls the processing thread for `ms` milliseconds after the
//! n-th record of every session (like a long GC pause or a frozen VM), writing
//! `weir: test hook: stalling …` first. The Kafka client keeps fetching meanwhile, so an
//! outage test can take the broker away while records are in hand, and the results they
//! produce cannot be delivered.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The named points, in protocol order. The checkpoint points count only checkpoints that
/// have results in flight (emitted since the previous checkpoint), so a kill there always
/// interrupts results that were sent but are not yet covered by a checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Point {
    /// The state was restored from the last checkpoint; the source is not yet read.
    Restored,
    /// Partitions were assigned (Kafka); no record of them processed yet.
    Assigned,
    /// A result was handed to every sink (buffered or in flight, not acknowledged).
    Emitted,
    /// A checkpoint begins: nothing flushed yet.
    CheckpointBegin,
    /// Inside one sink's flush: its writes are sent (Kafka records produced, PostgreSQL
    /// upserts executed), their acknowledgement (delivery reports, COMMIT) not awaited.
    SinkWritten,
    /// Every sink acknowledged; the dead letters are not flushed yet.
    SinksFlushed,
    /// Dead letters acknowledged; the state batch is not written yet.
    DeadLettersFlushed,
    /// With `state.changelog`: the checkpoint's transaction holds everything (the changelog
    /// records; exactly-once, also the results, dead letters and source offsets) and is not
    /// committed yet: a kill here is a kill just before (or during) the commit.
    TransactionSent,
    /// With `state.changelog`: the changelog transaction is committed; the local state
    /// batch is not written yet (the changelog is ahead of the local store).
    ChangelogCommitted,
    /// State and offsets are in RocksDB; the group's offsets are not committed yet.
    StateWritten,
    /// The checkpoint is complete (offsets committed).
    OffsetsCommitted,
}

impl Point {
    /// Every point a pipeline without a changelog reaches ([`Point::TransactionSent`] and
    /// [`Point::ChangelogCommitted`] are reached only with one: see [`Point::WITH_CHANGELOG`]).
    pub const ALL: [Point; 9] = [
        Point::Restored,
        Point::Assigned,
        Point::Emitted,
        Point::CheckpointBegin,
        Point::SinkWritten,
        Point::SinksFlushed,
        Point::DeadLettersFlushed,
        Point::StateWritten,
        Point::OffsetsCommitted,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Point::Restored => "restored",
            Point::Assigned => "assigned",
            Point::Emitted => "emitted",
            Point::CheckpointBegin => "checkpoint.begin",
            Point::SinkWritten => "sink.written",
            Point::SinksFlushed => "sinks.flushed",
            Point::DeadLettersFlushed => "dead_letters.flushed",
            Point::TransactionSent => "transaction.sent",
            Point::ChangelogCommitted => "changelog.committed",
            Point::StateWritten => "state.written",
            Point::OffsetsCommitted => "offsets.committed",
        }
    }

    /// The points of a pipeline with `state.changelog`.
    pub const WITH_CHANGELOG: [Point; 11] = [
        Point::Restored,
        Point::Assigned,
        Point::Emitted,
        Point::CheckpointBegin,
        Point::SinkWritten,
        Point::SinksFlushed,
        Point::DeadLettersFlushed,
        Point::TransactionSent,
        Point::ChangelogCommitted,
        Point::StateWritten,
        Point::OffsetsCommitted,
    ];

    fn parse(s: &str) -> Option<Point> {
        Point::WITH_CHANGELOG.into_iter().find(|p| p.name() == s)
    }
}

struct Armed {
    point: Point,
    at: u64,
    seen: AtomicU64,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let v = std::env::var("WEIR_TEST_SIGKILL_AT").ok()?;
            let (name, n) = v.rsplit_once(':')?;
            let point = Point::parse(name)?;
            let at: u64 = n.parse().ok().filter(|n| *n >= 1)?;
            Some(Armed {
                point,
                at,
                seen: AtomicU64::new(0),
            })
        })
        .as_ref()
}

/// Marks that `point` was reached; SIGKILLs the process when it is the armed one's n-th time.
pub fn reached(point: Point) {
    let Some(a) = armed() else { return };
    if a.point != point {
        return;
    }
    let n = a.seen.fetch_add(1, Ordering::Relaxed) + 1;
    if n == a.at {
        eprintln!("weir: test hook: SIGKILL at {} #{n}", point.name());
        // SAFETY: plain libc calls on our own process id.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

/// Stalls the calling thread when `record` (counted from 1 in this session) is the armed one.
pub fn stall_after(record: u64) {
    static STALL: OnceLock<Option<(u64, u64)>> = OnceLock::new();
    let Some((at, ms)) = *STALL.get_or_init(|| {
        let v = std::env::var("WEIR_TEST_STALL_AT").ok()?;
        let (n, ms) = v.split_once(':')?;
        Some((n.parse().ok()?, ms.parse().ok()?))
    }) else {
        return;
    };
    if record == at {
        eprintln!("weir: test hook: stalling {ms} ms after record {record} of this session");
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}

#[cfg(test)]
mod tests {
    use super::Point;

    #[test]
    fn every_point_parses_back_from_its_name() {
        for p in Point::WITH_CHANGELOG {
            assert_eq!(Point::parse(p.name()), Some(p));
        }
        assert_eq!(Point::parse("state"), None);
    }
}
