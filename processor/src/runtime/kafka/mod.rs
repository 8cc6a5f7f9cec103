//! The Kafka runtime: consume the source topics with a consumer group, drive the engine,
//! write to the sinks, checkpoint, commit.
//!
//! # Checkpoint protocol (the at-least-once argument)
//! Every `checkpoint_every` records or `checkpoint_interval` (whichever first), when a
//! partition is revoked, and on shutdown:
//! 1. **flush the sinks and wait for every acknowledgement**: the Kafka producer's delivery
//!    reports (a failed delivery fails the checkpoint), the PostgreSQL transaction's commit,
//!    file `fsync`s, the dead-letter topic's delivery reports;
//! 2. **write state and source offsets in one RocksDB batch**: dirty windows, deletions of
//!    closed windows, the next offset per partition, watermarks and counters, atomically;
//! 3. **commit the same offsets to the consumer group**, so `kcat` and
//!    `kafka-consumer-groups` show real lag: asynchronously for periodic checkpoints (a
//!    synchronous commit blocks while the coordinator is away), synchronously when partitions
//!    are revoked and on shutdown.
//!
//! A crash (or a broker outage that fails a step) between any two steps loses nothing:
//! - before 2, the previous checkpoint is in force; its state and offsets are restored, the
//!   records after it are reprocessed and their results re-emitted (same window, key and
//!   emission sequence: processing is deterministic). The Kafka sink's records carry the
//!   same `weir-event-id`, the PostgreSQL upsert rewrites the same row values;
//! - between 2 and 3, the group's committed offset is behind the state's; on assignment the
//!   consumer is positioned at the state's offset (and records below it are skipped), so
//!   nothing is counted twice in state.
//!
//! On assignment a partition resumes from the offset in RocksDB, or from the group's
//! committed offset when the state has none (then `auto.offset.reset=earliest`).
//!
//! # Threads
//! One consumer is polled by one thread that runs the engine for every assigned partition:
//! the watermark is the minimum over partitions, so windows of all partitions close at one
//! point. Backpressure is the poll loop itself: librdkafka prefetches at most
//! `queued.max.messages.kbytes` per partition and stops fetching while the engine is busy;
//! the producer's queue blocks `send` when the broker is slow. Errors from the broker
//! (down, unreachable) restart the session from the last checkpoint with backoff.

mod redrive;

pub use redrive::{redrive, RedriveReport};

use super::engine::Engine;
use super::outputs::{open_sinks, AnySink, Connections, DeadLetters, ResultWriter};
use super::replay::{load_guard, REPLAY_KEY};
use super::{kill_after, open_state, resolve_writer, Checkpoint, RunError, Summary};
use crate::faults::{reached, stall_after, Point};
use crate::monitor::telemetry::{Live, RunState, Telemetry};
use crate::pipeline::compile::Plan;
use crate::schema::registry::Registry;
use crate::sink::encode::DeadLetter;
use crate::source::kafka::{consumer_config, record_of};
use crate::source::SourceRecord;
use crate::state::{StateError, Store, META_KEY};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::ClientContext;
use rocksdb::WriteBatch;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub struct KafkaOptions {
    pub state_dir: PathBuf,
    pub conn: Connections,
    /// `group.instance.id`: static membership, so a restarted instance gets its
    /// partitions back without waiting for a rebalance.
    pub instance_id: Option<String>,
    pub checkpoint_every: u64,
    pub checkpoint_interval: Duration,
    /// Overrides the pipeline's sinks with one file (`-` for stdout).
    pub output: Option<String>,
    pub dead_letter: Option<String>,
    /// Extra librdkafka properties for the consumer and producers (`key=value`).
    pub kafka_config: Vec<(String, String)>,
    /// Stop (gracefully) after this many records (the benchmark).
    pub stop_after: Option<u64>,
    /// Where the running pipeline reports its telemetry (`weir serve` reads it).
    pub live: Option<Arc<Live>>,
    /// Time every 16th record from its poll to the end of its processing (the benchmark).
    pub sample_latency: bool,
}

/// Everything one consumer session owns; shared with the rebalance callback, which must
/// checkpoint before partitions go.
struct Processor {
    plan: &'static Plan,
    engine: Engine<'static>,
    store: Store,
    sinks: Vec<AnySink>,
    dead: DeadLetters,
    writer: ResultWriter<'static>,
    registry: Option<Registry>,
    /// Next offset to process per (topic, partition): what the state includes.
    positions: BTreeMap<(String, i32), i64>,
    dead_letters: Vec<DeadLetter>,
    since_checkpoint: u64,
    last_checkpoint: Instant,
    checkpoints: u64,
    processed_here: u64,
    kill: Option<u64>,
    /// `writer.written` at the last checkpoint: results in flight when it is behind.
    written_at_checkpoint: u64,
    /// With `sample_latency`: per sampled record, ns from poll to processed.
    latencies: Option<Vec<u32>>,
    live: Arc<Live>,
    first_record: Option<Instant>,
    last_record: Option<Instant>,
    /// An error raised inside a rebalance callback, reported by the poll loop.
    failed: Option<RunError>,
    /// Set by any failure: the session is over, and no checkpoint may be written any more
    /// (the consumer's close runs the revoke callback, which would otherwise checkpoint
    /// past records whose results were not delivered).
    poisoned: bool,
}

impl Processor {
    fn handle(&mut self, m: &BorrowedMessage<'_>) -> Result<(), RunError> {
        let topic = m.topic();
        let partition = m.partition();
        let offset = m.offset();
        if let Some(next) = self.positions.get(&(topic.to_string(), partition)) {
            if offset < *next {
                return Ok(()); // already in the state (committed offset was behind)
            }
        }
        let rec = record_of(m);
        self.process_record(&rec)?;
        self.positions.insert((rec.topic, partition), offset + 1);
        let now = Instant::now();
        self.first_record.get_or_insert(now);
        self.last_record = Some(now);
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

    /// One record through the engine; its results to the sinks, its dead letters out.
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
        Ok(())
    }

    fn due(&self, every: u64, interval: Duration) -> bool {
        self.since_checkpoint >= every
            || (self.since_checkpoint > 0 && self.last_checkpoint.elapsed() >= interval)
            || self.engine.windows.over_capacity()
    }

    /// Steps 1-3 of the protocol. `consumer` is given when offsets should be committed, with
    /// how: periodic checkpoints commit asynchronously (a synchronous commit blocks the
    /// pipeline for as long as the group coordinator is unreachable, which stalled a whole
    /// broker outage in the outage test); revocation and shutdown wait for the commit.
    fn checkpoint(
        &mut self,
        consumer: Option<(&BaseConsumer<Ctx>, CommitMode)>,
    ) -> Result<(), RunError> {
        if self.poisoned {
            return Err(RunError::Kafka(
                "the session failed; not checkpointing".into(),
            ));
        }
        let r = self.checkpoint_inner(consumer);
        self.poisoned |= r.is_err();
        r
    }

    fn checkpoint_inner(
        &mut self,
        consumer: Option<(&BaseConsumer<Ctx>, CommitMode)>,
    ) -> Result<(), RunError> {
        let started = Instant::now();
        // Crash points (tests): only checkpoints with results in flight count.
        let in_flight = self.writer.written > self.written_at_checkpoint;
        let point = |p: Point| {
            if in_flight {
                reached(p)
            }
        };
        point(Point::CheckpointBegin);
        // File sinks report their length: a restart truncates them to it, so a replay
        // rewrites the same bytes instead of appending them twice.
        let mut lengths = Vec::with_capacity(self.sinks.len());
        for s in self.sinks.iter_mut() {
            let t = Instant::now();
            lengths.push(s.as_sink().flush()?);
            let label = s.label();
            self.live.record(Telemetry::SinkFlushed {
                sink: &label,
                took: t.elapsed(),
            });
        }
        point(Point::SinksFlushed);
        let t = Instant::now();
        let dead_letter = self.dead.flush()?;
        self.live.record(Telemetry::SinkFlushed {
            sink: "dead_letter",
            took: t.elapsed(),
        });
        point(Point::DeadLettersFlushed);
        let offsets: Vec<(String, i32, i64)> = self
            .positions
            .iter()
            .map(|((t, p), o)| (t.clone(), *p, *o))
            .collect();
        let cp = Checkpoint {
            pipeline: self.plan.name.clone(),
            position: 0,
            offsets,
            watermarks: self.engine.watermarks.clone(),
            windows: self.engine.windows.meta(),
            counters: self.engine.counters.clone(),
            sinks: lengths,
            dead_letter,
            clock: self.engine.clock,
        };
        let meta = bincode::serialize(&cp).map_err(|e| StateError::Corrupt(e.to_string()))?;
        let mut batch = WriteBatch::default();
        self.engine.windows.checkpoint_into(&mut batch)?;
        batch.put(META_KEY, meta);
        match &self.engine.replay {
            Some(g) => batch.put(
                REPLAY_KEY,
                bincode::serialize(g).map_err(|e| StateError::Corrupt(e.to_string()))?,
            ),
            None => batch.delete(REPLAY_KEY),
        }
        self.store.write(batch)?;
        self.engine.windows.after_checkpoint();
        point(Point::StateWritten);
        if let Some((c, mode)) = consumer {
            self.commit(c, mode);
        }
        point(Point::OffsetsCommitted);
        self.written_at_checkpoint = self.writer.written;
        self.since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
        self.checkpoints += 1;
        self.live.record(Telemetry::CheckpointWritten {
            took: started.elapsed(),
            state_bytes: self.store.size_bytes(),
        });
        Ok(())
    }

    /// The periodic snapshot for the live status.
    fn publish(&self) {
        let positions: Vec<(String, i32, i64)> = self
            .positions
            .iter()
            .map(|((t, p), o)| (t.clone(), *p, *o))
            .collect();
        let event_times: Vec<(u32, i64)> = self.engine.watermarks.partitions().collect();
        self.live.record(Telemetry::Progress {
            counters: &self.engine.counters,
            watermark: self.engine.watermarks.current(),
            positions: &positions,
            event_times: &event_times,
            max_out_of_orderness_ms: self.plan.source.max_out_of_orderness_ms,
        });
    }

    /// Step 3: commit the state's offsets of the partitions this member owns. A failed
    /// commit only delays lag reporting: the state's offsets are authoritative on restart.
    fn commit(&self, c: &BaseConsumer<Ctx>, mode: CommitMode) {
        let owned = match c.assignment() {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the assignment; offsets not committed");
                return;
            }
        };
        let mut tpl = TopicPartitionList::new();
        for e in owned.elements() {
            if let Some(o) = self.positions.get(&(e.topic().to_string(), e.partition())) {
                let _ = tpl.add_partition_offset(e.topic(), e.partition(), Offset::Offset(*o));
            }
        }
        if tpl.count() == 0 {
            return;
        }
        if let Err(e) = c.commit(&tpl, mode) {
            tracing::warn!(error = %e, "offset commit failed; the next checkpoint retries");
        }
    }
}

/// This consumer's group member id (what `kafka-consumer-groups --describe` shows).
fn member_id<C: ConsumerContext>(c: &BaseConsumer<C>) -> Option<String> {
    // SAFETY: rd_kafka_memberid returns a string we own (or NULL), freed with
    // rd_kafka_mem_free on the same handle.
    unsafe {
        let rk = c.client().native_ptr();
        let p = rdkafka::bindings::rd_kafka_memberid(rk);
        if p.is_null() {
            return None;
        }
        let s = std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned();
        rdkafka::bindings::rd_kafka_mem_free(rk, p as *mut std::ffi::c_void);
        (!s.is_empty()).then_some(s)
    }
}

struct Ctx {
    proc: Arc<Mutex<Processor>>,
    live: Arc<Live>,
}

fn lock(p: &Mutex<Processor>) -> MutexGuard<'_, Processor> {
    // A panic while holding the lock aborts the session anyway; keep going with the data.
    p.lock().unwrap_or_else(|e| e.into_inner())
}

impl ClientContext for Ctx {
    /// librdkafka's statistics (every `statistics.interval.ms`): the log end per partition.
    fn stats(&self, stats: Statistics) {
        for (name, t) in &stats.topics {
            for (p, s) in &t.partitions {
                if *p >= 0 && s.hi_offset >= 0 {
                    self.live.record(Telemetry::LogEnd {
                        topic: name,
                        partition: *p,
                        offset: s.hi_offset,
                    });
                }
            }
        }
    }
}

impl ConsumerContext for Ctx {
    fn rebalance(&self, c: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let cooperative = matches!(c.rebalance_protocol(), RebalanceProtocol::Cooperative);
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let mut p = lock(&self.proc);
                let mut resumed = Vec::new();
                for e in tpl.elements() {
                    // An assigned partition holds the watermark until it shows records.
                    p.engine.watermarks.register(e.partition() as u32);
                    if let Some(o) = p.positions.get(&(e.topic().to_string(), e.partition())) {
                        resumed.push((e.topic().to_string(), e.partition(), *o));
                    }
                }
                drop(p);
                for (t, part, o) in &resumed {
                    let _ = tpl.set_partition_offset(t, *part, Offset::Offset(*o));
                }
                let parts: Vec<String> = tpl
                    .elements()
                    .iter()
                    .map(|e| format!("{}-{}", e.topic(), e.partition()))
                    .collect();
                let owned: Vec<(String, i32)> = tpl
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_string(), e.partition()))
                    .collect();
                tracing::info!(partitions = ?parts, from_state = resumed.len(), "partitions assigned");
                self.live.record(Telemetry::Assigned {
                    member_id: member_id(c),
                    partitions: &owned,
                });
                let r = if cooperative {
                    c.incremental_assign(tpl)
                } else {
                    c.assign(tpl)
                };
                if let Err(e) = r {
                    lock(&self.proc).failed = Some(RunError::Kafka(format!("assign: {e}")));
                }
                reached(Point::Assigned);
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let parts: Vec<String> = tpl
                    .elements()
                    .iter()
                    .map(|e| format!("{}-{}", e.topic(), e.partition()))
                    .collect();
                tracing::info!(partitions = ?parts, "partitions revoked: checkpointing them");
                let owned: Vec<(String, i32)> = tpl
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_string(), e.partition()))
                    .collect();
                self.live.record(Telemetry::Revoked { partitions: &owned });
                let mut p = lock(&self.proc);
                // A lost assignment cannot commit; the checkpoint still saves state.
                let commit = (!c.assignment_lost()).then_some((c, CommitMode::Sync));
                if let Err(e) = p.checkpoint(commit) {
                    p.failed = Some(e);
                }
                drop(p);
                let r = if cooperative {
                    c.incremental_unassign(tpl)
                } else {
                    c.unassign()
                };
                if let Err(e) = r {
                    tracing::warn!(error = %e, "unassign failed");
                }
            }
            other => {
                tracing::warn!(error = ?other, "rebalance error");
                let _ = c.unassign();
            }
        }
    }
}

/// Runs the pipeline against Kafka until `stop` is set (SIGTERM/SIGINT), restarting from the
/// last checkpoint after broker or sink failures.
pub fn run_kafka(
    plan: Plan,
    opts: &KafkaOptions,
    stop: Arc<AtomicBool>,
) -> Result<Summary, RunError> {
    // The plan lives as long as the process; the rebalance callback needs it 'static.
    let plan: &'static Plan = Box::leak(Box::new(plan));
    let live = opts
        .live
        .clone()
        .unwrap_or_else(|| Arc::new(Live::new(&plan.name)));
    let mut backoff = Duration::from_millis(500);
    // `retrying` (with the error) stays until a session is running again.
    live.record(Telemetry::StateChanged(RunState::Starting));
    loop {
        let mut progressed = false;
        match run_session(plan, opts, &live, &stop, &mut progressed) {
            Ok(s) => return Ok(s),
            Err(e) if e.is_retryable() => {
                if progressed {
                    backoff = Duration::from_millis(500);
                }
                live.record(Telemetry::SessionFailed {
                    error: &e.to_string(),
                    retry_in: backoff,
                });
                let until = Instant::now() + backoff;
                while Instant::now() < until {
                    if stop.load(Ordering::SeqCst) {
                        return Err(e);
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Opens the state, the sinks and the dead letter, and restores the engine from the last
/// checkpoint.
fn open_processor(
    plan: &'static Plan,
    opts: &KafkaOptions,
    live: &Arc<Live>,
) -> Result<(Processor, String, Option<u64>), RunError> {
    let (store, resume) = open_state(plan, &opts.state_dir)?;
    let mut registry = opts.conn.registry();
    let lengths = resume.as_ref().map(|c| c.sinks.clone()).unwrap_or_default();
    let mut sinks = open_sinks(
        plan,
        opts.output.as_deref(),
        &opts.conn,
        &mut registry,
        &lengths,
    )?;
    let default_dl = opts
        .state_dir
        .join("dead-letter.jsonl")
        .display()
        .to_string();
    let (dead, dl_path) = DeadLetters::open(
        plan.dead_letter.as_ref(),
        opts.dead_letter.as_deref(),
        &default_dl,
        &opts.conn,
        resume.as_ref().and_then(|c| c.dead_letter),
        "",
    )?;
    let mut engine = Engine::new(plan, None);
    let mut positions = BTreeMap::new();
    let resumed_from = resume.as_ref().map(|c| c.offsets.len() as u64);
    if let Some(c) = resume {
        engine.restore(c.watermarks, c.counters, c.clock);
        engine.windows.restore(c.windows, &store)?;
        engine.replay = load_guard(&store)?;
        for (t, p, o) in c.offsets {
            positions.insert((t, p), o);
        }
    }
    let writer = ResultWriter::new(plan, &mut sinks);
    let p = Processor {
        plan,
        engine,
        store,
        sinks,
        dead,
        writer,
        registry,
        positions,
        dead_letters: Vec::new(),
        since_checkpoint: 0,
        last_checkpoint: Instant::now(),
        checkpoints: 0,
        processed_here: 0,
        kill: kill_after(),
        written_at_checkpoint: 0,
        latencies: opts.sample_latency.then(Vec::new),
        live: live.clone(),
        first_record: None,
        last_record: None,
        failed: None,
        poisoned: false,
    };
    Ok((p, dl_path, resumed_from))
}

fn run_session(
    plan: &'static Plan,
    opts: &KafkaOptions,
    live: &Arc<Live>,
    stop: &AtomicBool,
    progressed: &mut bool,
) -> Result<Summary, RunError> {
    let (processor, dl_path, resumed_from) = open_processor(plan, opts, live)?;
    reached(Point::Restored);
    let proc = Arc::new(Mutex::new(processor));
    let consumer: BaseConsumer<Ctx> = consumer_config(
        &opts.conn.brokers(),
        &plan.source.group,
        opts.instance_id.as_deref(),
        &opts.kafka_config,
    )
    .create_with_context(Ctx {
        proc: proc.clone(),
        live: live.clone(),
    })
    .map_err(|e| RunError::Kafka(format!("cannot create the consumer: {e}")))?;
    let topics: Vec<&str> = plan.source.topics.iter().map(|s| s.as_str()).collect();
    consumer
        .subscribe(&topics)
        .map_err(|e| RunError::Kafka(format!("cannot subscribe to {topics:?}: {e}")))?;
    tracing::info!(pipeline = %plan.name, group = %plan.source.group, ?topics, "consuming");
    live.record(Telemetry::StateChanged(RunState::Running));
    lock(&proc).publish();
    let mut last_warning: Option<(String, Instant)> = None;
    let mut last_publish = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        let polled = consumer.poll(Duration::from_millis(100));
        let mut p = lock(&proc);
        if let Some(e) = p.failed.take() {
            p.poisoned = true;
            return Err(e);
        }
        match polled {
            None => {}
            Some(Ok(m)) => {
                let timed =
                    (p.latencies.is_some() && p.processed_here % 16 == 0).then(Instant::now);
                if let Err(e) = p.handle(&m) {
                    p.poisoned = true;
                    return Err(e);
                }
                if let Some(t) = timed {
                    let ns = t.elapsed().as_nanos().min(u32::MAX as u128) as u32;
                    if let Some(l) = p.latencies.as_mut() {
                        l.push(ns);
                    }
                }
            }
            Some(Err(e)) => {
                if let Some((code, reason)) = consumer.client().fatal_error() {
                    p.poisoned = true;
                    return Err(RunError::Kafka(format!(
                        "fatal consumer error {code:?}: {reason}"
                    )));
                }
                // Transient (broker down, topic not yet there): librdkafka retries; say so
                // at most every 10 s per distinct error.
                let msg = e.to_string();
                let repeat = matches!(&last_warning, Some((m, t)) if *m == msg && t.elapsed() < Duration::from_secs(10));
                if !repeat {
                    tracing::warn!(error = %msg, "consumer error; retrying");
                    last_warning = Some((msg, Instant::now()));
                }
            }
        }
        if opts.stop_after.is_some_and(|n| p.processed_here >= n) {
            break;
        }
        if p.due(opts.checkpoint_every, opts.checkpoint_interval) {
            p.checkpoint(Some((&consumer, CommitMode::Async)))?;
            *progressed = true;
        }
        if last_publish.elapsed() >= Duration::from_millis(250) {
            p.publish();
            last_publish = Instant::now();
        }
    }
    // Graceful stop: a last checkpoint and commit, then leave the group.
    let summary = {
        let mut p = lock(&proc);
        p.checkpoint(Some((&consumer, CommitMode::Sync)))?;
        p.publish();
        Summary {
            counters: p.engine.counters.clone(),
            watermark: p.engine.watermarks.current(),
            dead_letter_path: dl_path,
            resumed_from,
            checkpoints: p.checkpoints,
            state_writes: p.store.writes,
            evicted: p.engine.windows.evicted,
            active: p.first_record.zip(p.last_record).map(|(a, b)| b - a),
            latencies_ns: p.latencies.take().unwrap_or_default(),
        }
    };
    consumer.unsubscribe();
    Ok(summary)
}
