//! The driver: the one place that runs a pipeline. Every way of running one goes through
//! it: file replay (`weir run --input`), Kafka (`weir run`, `weir serve`), the dead-letter
//! re-feed and the benchmark. [`Driver::open`] opens the state and restores the engine from
//! the last checkpoint; [`drive`] hands each record of a [`Source`] to the engine, its
//! results to the sinks and its dead letters out, decides when a checkpoint is due, and
//! writes it. A source plugs in through the small [`Source`] trait; what is Kafka's alone
//! (rebalance callbacks, session retry and backoff) stays in [`super::kafka`].
//!
//! # Checkpoint protocol (the at-least-once argument)
//! Every `checkpoint_every` records, every `checkpoint_interval` when one is set (Kafka),
//! whenever the write cache is over its bound, when Kafka partitions are revoked, and at the
//! end of a run:
//! 1. **flush every sink and wait for every acknowledgement**: the Kafka producer's delivery
//!    reports (a failed delivery fails the checkpoint), the PostgreSQL transaction's commit,
//!    file `fsync`s (noting each file's length), the dead letter's;
//! 2. with a changelog ([`Changelog`], `state.changelog`), **write the checkpoint's state
//!    changes to the changelog topic in one Kafka transaction** and wait for its commit:
//!    the same puts and deletions as the batch below, then each owned partition's record
//!    (its offsets, largest event time and pending updates). Just before the commit, the
//!    file lengths of step 1 are written on their own (`m|lengths`), so that a restart that
//!    rolls forward past this checkpoint does not cut its results off the files. The batch records how far
//!    into each changelog partition the local store is. A crash after this step and before
//!    the next leaves the changelog ahead of the local store; the restart's restore applies
//!    the difference, and the changelog's partition records then decide where each
//!    partition resumes, so the state still matches its offsets exactly;
//! 3. **write, in one RocksDB `WriteBatch`** ([`crate::state::checkpoint::save`]): the dirty
//!    window state, the deletions of closed windows, the source position (records consumed
//!    from a file, or the next offset per Kafka partition), the watermarks, the counters,
//!    the sink lengths from step 1 and the replay guard;
//! 4. **tell the source** ([`Source::after_checkpoint`]): Kafka commits the same offsets to
//!    the consumer group, so `kafka-consumer-groups` shows real lag.
//!
//! A crash (or a failure of any step) between two steps loses nothing and doubles nothing:
//! - before 3, the previous checkpoint (of the local store, or with a changelog ahead of
//!   it, of the changelog) is in force. The restart truncates file sinks to the
//!   lengths it records, positions the source after it and reprocesses; processing is
//!   deterministic, so the same results are emitted again (same window, key and emission
//!   sequence): a file gets the same bytes, the Kafka sink's records the same
//!   `weir-event-id`, the PostgreSQL upsert the same row values;
//! - between 3 and 4, the group's committed offset is behind the state's; the state's
//!   offsets decide where a partition resumes, and records below them are skipped, so
//!   nothing is counted twice in state.
//!
//! # Exactly-once (`delivery: exactly_once`, Kafka)
//! One Kafka transaction per checkpoint, on one transactional producer that every Kafka
//! output writes through ([`super::kafka::transaction`]): the sinks' results, the dead
//! letters, the repartition records and the changelog records are all sent into the open
//! transaction as they are produced. At a checkpoint, step 1 flushes them (a failed
//! delivery fails it, as above) and commits PostgreSQL; step 2 sends the changelog
//! records, then **the source offsets with the group's metadata** (KIP-447) into the same
//! transaction, and commits it; step 3 writes the RocksDB batch; step 4 commits nothing
//! (the offsets are in the transaction). The source reads `read_committed`.
//!
//! State and transaction always agree, and the state is never discarded to be rebuilt:
//! - a crash (or failure) **before the commit**: the transaction is aborted, by the next
//!   incarnation's `init_transactions` at the latest (same `transactional.id`). Nothing of
//!   it is visible to a `read_committed` reader: not its results, not its changelog
//!   records, not its offsets. The local store is still at the previous checkpoint, which
//!   is what the changelog and the group hold: the restart resumes from it and produces the
//!   same results again, in a new transaction (roll back);
//! - a crash **during the commit**: the coordinator either completed it or not, and the
//!   next `init_transactions` waits for the outcome; then one of the two other cases holds;
//! - a crash **after the commit, before the RocksDB batch**: the changelog holds the
//!   checkpoint's changes and partition records and the group its offsets; the local store
//!   is one checkpoint behind. The restart's restore reads the changelog from the local
//!   store's position (only what it lacks) and the partition records decide where each
//!   partition resumes: the store rolls forward to exactly the committed checkpoint, and
//!   nothing of it is produced again;
//! - a crash after the batch: the store, the changelog and the group agree.
//!
//! So exactly-once needs the changelog (`state.changelog`, on by default): validation says
//! so. The PostgreSQL sink commits in step 1, before the Kafka transaction: a crash before
//! the Kafka commit replays its upserts, which write the same row values again (an
//! idempotent effect, not an exactly-once write). A file sink is truncated to the length its
//! checkpoint records, as at least once; after a crash between the `m|lengths` write and
//! the local batch, to the later length (the restart rolls forward, or, when the commit did
//! not go through, writes that checkpoint's results a second time: never fewer).
//!
//! Once any step fails the driver is poisoned: no later checkpoint may be written past
//! results that were not delivered (the Kafka consumer's close would otherwise checkpoint
//! in its revoke callback). The session is restarted from the last checkpoint instead.

mod idle;
mod partitions;
mod protocol;
mod route;

pub use route::Router;

use super::engine::Engine;
use super::outputs::{open_sinks, AnySink, Connections, DeadLetters, ResultWriter};
use super::{resolve_writer, RunError, Summary};
use crate::faults::{reached, stall_after, Point};
use crate::monitor::telemetry::{Live, Telemetry};
use crate::pipeline::plan::Plan;
use crate::schema::registry::Registry;
use crate::sink::discard::DiscardSink;
use crate::sink::encode::DeadLetter;
use crate::sink::kafka::SharedProducer;
use crate::source::SourceRecord;
use crate::state::changelog::{self, Change, Positions};
use crate::state::checkpoint::{self, Checkpoint};
use crate::state::Store;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// What one call of [`Source::next`] gave.
pub enum Polled<'a> {
    /// A record, lent by the source until its next call (no record is moved or copied on
    /// its way to the engine).
    Record(&'a SourceRecord),
    /// Nothing within the timeout (an unbounded source).
    Idle,
    /// The source has nothing more for this run; open windows stay open (the re-feed).
    Stop,
    /// The end of a bounded input: every window may close (file replay, the benchmark).
    End,
}

/// Where records come from.
pub trait Source {
    /// Whether a record's (topic, partition, offset) is its position in this source, so the
    /// driver tracks the next offset per partition and skips records below it (Kafka).
    /// File and re-fed records carry coordinates, but are not positioned by them.
    fn positioned(&self) -> bool;
    /// Whether [`Source::next`] runs callbacks that lock the driver themselves (Kafka's
    /// rebalance callbacks run inside its poll). Otherwise the loop holds the driver for
    /// the whole run instead of locking it for every record.
    fn calls_back(&self) -> bool {
        false
    }
    /// Before the first record: place the source where the restored checkpoint left off.
    fn seek(&mut self, driver: &mut Driver<'_>) -> Result<(), RunError>;
    /// The next record, waiting at most `timeout`.
    fn next(&mut self, timeout: Duration) -> Result<Polled<'_>, RunError>;
    /// Step 3, after the state is written. `last`: the run's final checkpoint.
    fn after_checkpoint(&mut self, cp: &Checkpoint, last: bool);
}

/// Where a checkpoint's state changes go besides the local store (Kafka: the changelog
/// topic, [`super::kafka`]), in a transaction: exactly-once, the pipeline's, which also
/// holds the results, the dead letters and the source offsets.
pub trait Changelog: Send {
    /// Sends one checkpoint's changes, each partition's record last, into the open
    /// transaction; exactly-once, the source `offsets` too.
    fn send(&mut self, changes: &[Change], offsets: &[(String, i32, i64)]) -> Result<(), RunError>;
    /// Commits the transaction; returns, per changelog partition written, the next offset
    /// after its records.
    fn commit(&mut self, changes: &[Change]) -> Result<Positions, RunError>;
    /// [`Changelog::send`] and [`Changelog::commit`] (no offsets: an offline rewind).
    fn write(&mut self, changes: Vec<Change>) -> Result<Positions, RunError> {
        self.send(&changes, &[])?;
        self.commit(&changes)
    }
}

/// When checkpoints are due, and when a run stops by itself.
#[derive(Clone, Copy)]
pub struct Cadence {
    pub every: u64,
    /// Also checkpoint this often while records arrive (Kafka).
    pub interval: Option<Duration>,
    /// Stop (with a final checkpoint) after this many records (the benchmark).
    pub stop_after: Option<u64>,
}

/// How to open the outputs and the state.
pub struct DriverOptions<'a> {
    pub state_dir: &'a Path,
    pub conn: &'a Connections,
    /// Overrides the pipeline's sinks with one file (`-` for stdout).
    pub output: Option<&'a str>,
    /// Replaces the sinks with one that keeps nothing (the benchmark).
    pub discard: bool,
    pub dead_letter: Option<&'a str>,
    /// Where dead letters go when neither the pipeline nor `dead_letter` say.
    pub default_dead_letter: String,
    /// The input file named in each dead-letter envelope (empty for Kafka).
    pub input_name: &'a str,
    /// The writer schema of an Avro container input.
    pub container_schema: Option<apache_avro::Schema>,
    pub live: Arc<Live>,
    /// Time every 16th record and every checkpoint (the benchmark).
    pub sample_latency: bool,
    /// Exactly-once: the transactional producer every Kafka output writes through.
    pub producer: Option<SharedProducer>,
}

/// Everything a running pipeline owns: the engine, the state, the sinks, the dead letter,
/// and what the next checkpoint will record.
pub struct Driver<'p> {
    plan: &'p Plan,
    pub engine: Engine<'p>,
    pub store: Store,
    sinks: Vec<AnySink>,
    dead: DeadLetters,
    writer: ResultWriter<'p>,
    registry: Option<Registry>,
    /// Records consumed from a file input (what a file resume skips).
    position: u64,
    /// The next offset to process per (topic, partition): what the state includes.
    offsets: BTreeMap<(String, i32), i64>,
    dead_letters: Vec<DeadLetter>,
    since_checkpoint: u64,
    last_checkpoint: Instant,
    checkpoints: u64,
    /// A table's ttl expiries already reported to the live status.
    expired_reported: u64,
    /// Records processed in this session.
    pub processed_here: u64,
    kill: Option<u64>,
    /// `writer.written` at the last checkpoint: results in flight when it is behind.
    written_at_checkpoint: u64,
    latencies: Option<Vec<u32>>,
    checkpoint_times: Vec<Duration>,
    live: Arc<Live>,
    first_record: Option<Instant>,
    last_record: Option<Instant>,
    /// When this session opened: the start of its quiet time before any record.
    opened: Instant,
    /// The last `watermark.idle_advance` step (at most one a second).
    last_advance: Option<Instant>,
    /// Set by any failure: the session is over, and no checkpoint may be written any more.
    poisoned: bool,
    dead_letter_path: String,
    resumed: Option<Checkpoint>,
    changelog: Option<Box<dyn Changelog>>,
    /// How far into each changelog partition the local store is.
    positions: Positions,
    /// Upstream of a repartition: where re-keyed events go.
    router: Option<Box<dyn Router>>,
    /// Partitions whose entries predate the changelog ([`Driver::log_in_full`]).
    unlogged: std::collections::BTreeSet<u32>,
}

/// Test hook: `WEIR_TEST_SIGKILL_AFTER=N` makes the process SIGKILL itself after it has
/// processed N records, so crash tests hit a precise point between checkpoints.
fn kill_after() -> Option<u64> {
    std::env::var("WEIR_TEST_SIGKILL_AFTER").ok()?.parse().ok()
}

impl<'p> Driver<'p> {
    /// Opens the state, the sinks and the dead letter, and restores the engine from the last
    /// checkpoint.
    pub fn open(plan: &'p Plan, o: DriverOptions<'_>) -> Result<Driver<'p>, RunError> {
        let opened = checkpoint::open(plan, o.state_dir, false)?;
        let lengths = opened.lengths();
        if let Some(pending) = &opened.pending {
            let bytes = |s: &[Option<u64>]| s.iter().flatten().sum::<u64>();
            let before = opened.checkpoint.as_ref().map_or(0, |c| bytes(&c.sinks));
            tracing::info!(
                pipeline = %plan.name,
                kept_bytes = bytes(&pending.sinks),
                checkpointed_bytes = before,
                "the last run stopped while a changelog commit was under way; the file outputs keep what that checkpoint flushed"
            );
        }
        let resume = opened.checkpoint;
        let mut registry = o.conn.registry();
        let mut sinks = if o.discard {
            vec![AnySink::Discard(DiscardSink::default())]
        } else {
            open_sinks(
                plan,
                o.output,
                o.conn,
                &mut registry,
                &lengths.sinks,
                o.producer.as_ref(),
            )?
        };
        let (dead, dead_letter_path) = DeadLetters::open(
            plan.dead_letter.as_ref(),
            o.dead_letter,
            &o.default_dead_letter,
            o.conn,
            lengths.dead_letter,
            o.input_name,
            o.producer.as_ref(),
        )?;
        let mut engine = Engine::new(plan, o.container_schema);
        let store = opened.store;
        let mut position = 0;
        let mut offsets = BTreeMap::new();
        if let Some(c) = &resume {
            engine.restore(c.watermarks.clone(), c.counters.clone(), c.clock);
            engine.windows.restore(c.windows.clone(), &store)?;
            engine.replay = opened.guard;
            position = c.position;
            for (t, p, o) in &c.offsets {
                offsets.insert((t.clone(), *p), *o);
            }
        }
        route::load_upstream(plan, &store, &mut engine)?;
        let writer = ResultWriter::new(plan, &mut sinks);
        let positions = changelog::positions(&store)?;
        Ok(Driver {
            plan,
            engine,
            store,
            sinks,
            dead,
            writer,
            registry,
            position,
            offsets,
            dead_letters: Vec::new(),
            since_checkpoint: 0,
            last_checkpoint: Instant::now(),
            checkpoints: 0,
            expired_reported: 0,
            processed_here: 0,
            kill: kill_after(),
            written_at_checkpoint: 0,
            latencies: o.sample_latency.then(Vec::new),
            checkpoint_times: Vec::new(),
            live: o.live,
            first_record: None,
            last_record: None,
            opened: Instant::now(),
            last_advance: None,
            poisoned: false,
            dead_letter_path,
            resumed: resume,
            changelog: None,
            positions,
            router: None,
            unlogged: Default::default(),
        })
    }

    /// The checkpoint this session resumed from.
    pub fn resumed(&self) -> Option<&Checkpoint> {
        self.resumed.as_ref()
    }

    /// Records of a file input consumed as of the restored checkpoint.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Where the state says partition `(topic, partition)` resumes.
    pub fn offset_of(&self, topic: &str, partition: i32) -> Option<i64> {
        self.offsets.get(&(topic.to_string(), partition)).copied()
    }

    /// The source resumes a partition at `offset` instead of the state's (`on_missing_offsets`
    /// moved it past records the log no longer has, or back to the log end).
    pub fn start_at(&mut self, topic: &str, partition: i32, offset: i64) {
        self.offsets.insert((topic.to_string(), partition), offset);
    }

    pub fn plan(&self) -> &Plan {
        self.plan
    }

    /// One record of the source: through the engine, its results to the sinks, its dead
    /// letters out; then its position is the state's. `positioned`: see [`Source`].
    pub fn handle(&mut self, rec: &SourceRecord, positioned: bool) -> Result<(), RunError> {
        if positioned {
            let at = (rec.topic.clone(), rec.partition as i32);
            if self.offsets.get(&at).is_some_and(|next| rec.offset < *next) {
                return Ok(()); // already in the state (the committed offset was behind)
            }
            self.process_record(rec)?;
            self.offsets.insert(at, rec.offset + 1);
            // Kafka: from the first record to the last (what the Kafka benchmark rates).
            let now = Instant::now();
            self.first_record.get_or_insert(now);
            self.last_record = Some(now);
        } else {
            self.process_record(rec)?;
            self.position += 1;
        }
        self.since_checkpoint += 1;
        self.processed_here += 1;
        stall_after(self.processed_here);
        if self.kill == Some(self.processed_here) {
            // SAFETY: plain libc calls on our own process id.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
        }
        Ok(())
    }

    fn process_record(&mut self, rec: &SourceRecord) -> Result<(), RunError> {
        resolve_writer(&mut self.engine, self.registry.as_mut(), rec.value.bytes())?;
        let (writer, sinks) = (&mut self.writer, &mut self.sinks);
        self.engine.process(
            &self.store,
            rec,
            &mut |e| writer.write(&e, sinks),
            &mut self.dead_letters,
        )?;
        self.writer.check()?;
        for d in self.dead_letters.drain(..) {
            self.dead.write(&d)?;
        }
        self.send_routed()
    }

    /// The end of a bounded input: every window closes and emits.
    pub fn finish(&mut self) -> Result<(), RunError> {
        let (writer, sinks) = (&mut self.writer, &mut self.sinks);
        self.engine
            .finish(&self.store, &mut |e| writer.write(&e, sinks))?;
        self.writer.check()?;
        Ok(())
    }

    fn due(&self, c: &Cadence) -> bool {
        self.since_checkpoint >= c.every
            || c.interval
                .is_some_and(|i| self.since_checkpoint > 0 && self.last_checkpoint.elapsed() >= i)
            || self.engine.windows.over_capacity()
    }

    fn positions(&self) -> Vec<(String, i32, i64)> {
        self.offsets
            .iter()
            .map(|((t, p), o)| (t.clone(), *p, *o))
            .collect()
    }

    /// The periodic snapshot for the live status.
    pub fn publish(&mut self) {
        let expired = self.engine.windows.expired;
        if expired > self.expired_reported {
            self.live
                .record(Telemetry::KeysExpired(expired - self.expired_reported));
            self.expired_reported = expired;
        }
        let positions = self.positions();
        let event_times: Vec<(u32, i64)> = self.engine.watermarks.partitions().collect();
        self.live.record(Telemetry::Progress {
            counters: &self.engine.counters,
            watermark: self.engine.watermarks.current(),
            positions: &positions,
            event_times: &event_times,
            max_out_of_orderness_ms: self.plan.source.max_out_of_orderness_ms,
        });
    }

    /// What the session did.
    pub fn summary(&mut self) -> Summary {
        Summary {
            counters: self.engine.counters.clone(),
            watermark: self.engine.watermarks.current(),
            dead_letter_path: self.dead_letter_path.clone(),
            resumed_from: self.resumed.as_ref().map(|c| {
                if c.offsets.is_empty() {
                    c.position
                } else {
                    c.offsets.len() as u64
                }
            }),
            checkpoints: self.checkpoints,
            state_writes: self.store.writes,
            evicted: self.engine.windows.evicted,
            expired: self.engine.windows.expired,
            active: self.first_record.zip(self.last_record).map(|(a, b)| b - a),
            latencies_ns: self.latencies.take().unwrap_or_default(),
            checkpoint_times: std::mem::take(&mut self.checkpoint_times),
            discarded_bytes: self
                .sinks
                .iter()
                .map(|s| match s {
                    AnySink::Discard(d) => d.bytes,
                    _ => 0,
                })
                .sum(),
        }
    }
}

/// Locks the driver a source's callbacks share with the loop.
pub fn lock<'a, 'p>(d: &'a Mutex<Driver<'p>>) -> MutexGuard<'a, Driver<'p>> {
    // A panic while holding the lock aborts the session anyway; keep going with the data.
    d.lock().unwrap_or_else(|e| e.into_inner())
}

/// How long one poll of the source waits.
const POLL: Duration = Duration::from_millis(100);

/// Runs `source` through the driver until it ends, `cadence.stop_after` records, or `stop`
/// is set; then writes a last checkpoint. Any failure poisons the driver first.
/// `progressed`: set once a checkpoint was written (the Kafka backoff starts over).
pub fn drive(
    driver: &Mutex<Driver<'_>>,
    source: &mut dyn Source,
    cadence: &Cadence,
    stop: &AtomicBool,
    progressed: &mut bool,
) -> Result<Summary, RunError> {
    let r = drive_inner(driver, source, cadence, stop, progressed);
    if r.is_err() {
        lock(driver).poison();
    }
    r
}

/// [`drive`] for a source that ends by itself (a file, the re-feed, the benchmark): no stop
/// flag, no backoff to reset.
pub fn drive_to_end(
    driver: &Mutex<Driver<'_>>,
    source: &mut dyn Source,
    cadence: &Cadence,
) -> Result<Summary, RunError> {
    drive(driver, source, cadence, &AtomicBool::new(false), &mut false)
}

fn drive_inner(
    driver: &Mutex<Driver<'_>>,
    source: &mut dyn Source,
    cadence: &Cadence,
    stop: &AtomicBool,
    progressed: &mut bool,
) -> Result<Summary, RunError> {
    reached(Point::Restored);
    let positioned = source.positioned();
    {
        let mut d = lock(driver);
        source.seek(&mut d)?;
        d.publish();
    }
    let mut last_publish = Instant::now();
    let mut polls = 0u64;
    let mut ended = false;
    let mut held = (!source.calls_back()).then(|| lock(driver));
    while !stop.load(Ordering::SeqCst) {
        let polled = source.next(POLL)?;
        let idle = matches!(polled, Polled::Idle);
        let mut locked;
        let d: &mut Driver<'_> = match held.as_mut() {
            Some(g) => g,
            None => {
                locked = lock(driver);
                &mut locked
            }
        };
        match polled {
            Polled::Record(rec) => {
                let timed =
                    (d.latencies.is_some() && d.processed_here % 16 == 0).then(Instant::now);
                d.handle(rec, positioned)?;
                if let (Some(t), Some(l)) = (timed, d.latencies.as_mut()) {
                    l.push(t.elapsed().as_nanos().min(u32::MAX as u128) as u32);
                }
            }
            Polled::Idle => d.idle(positioned)?,
            Polled::Stop => break,
            Polled::End => {
                ended = true;
                break;
            }
        }
        if cadence.stop_after.is_some_and(|n| d.processed_here >= n) {
            break;
        }
        if d.due(cadence) {
            d.checkpoint(&mut |cp| source.after_checkpoint(cp, false))?;
            *progressed = true;
        }
        // The clock is read every 256 records (or when idle), not for each one.
        polls += 1;
        if (polls % 256 == 0 || idle) && last_publish.elapsed() >= Duration::from_millis(250) {
            d.publish();
            last_publish = Instant::now();
        }
    }
    drop(held);
    let mut d = lock(driver);
    if ended {
        d.finish()?;
    }
    d.checkpoint(&mut |cp| source.after_checkpoint(cp, true))?;
    d.publish();
    Ok(d.summary())
}
