//! The Kafka runtime: consume the source topics with a consumer group, drive the engine,
//! write to the sinks, checkpoint, commit.
//!
//! Checkpoints follow the [driver](super::driver)'s protocol; step 3 commits the
//! checkpoint's offsets to the consumer group: asynchronously for periodic checkpoints (a
//! synchronous commit blocks while the coordinator is away), synchronously when partitions
//! are revoked and on shutdown.
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

pub mod changelog;
mod redrive;
pub mod repartition;
pub mod transaction;

pub use redrive::{redrive, RedriveReport};

use super::driver::{drive, lock, Cadence, Driver, DriverOptions, Polled, Source};
use super::outputs::Connections;
use super::{RunError, Summary};
use crate::faults::{reached, Point};
use crate::monitor::telemetry::{Live, RunState, Telemetry};
use crate::pipeline::plan::Plan;
use crate::pipeline::Delivery;
use crate::sink::kafka::SharedProducer;
use crate::source::kafka::{consumer_config, record_of};
use crate::source::SourceRecord;
use crate::state::checkpoint::Checkpoint;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::ClientContext;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use transaction::{SharedGroup, Transaction};

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
    /// Time every 16th record and every checkpoint (the benchmark).
    pub sample_latency: bool,
}

/// Step 3: commit the checkpoint's offsets of the partitions this member owns. A failed
/// commit only delays lag reporting: the state's offsets are authoritative on restart.
fn commit(c: &BaseConsumer<Ctx>, cp: &Checkpoint, mode: CommitMode) {
    let owned = match c.assignment() {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the assignment; offsets not committed");
            return;
        }
    };
    let mut tpl = TopicPartitionList::new();
    for e in owned.elements() {
        if let Some((_, _, o)) = cp
            .offsets
            .iter()
            .find(|(t, p, _)| t == e.topic() && *p == e.partition())
        {
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

/// The consumer's callbacks: they share the driver with the poll loop, because a revoked
/// partition must be checkpointed before it goes.
struct Ctx {
    driver: Arc<Mutex<Driver<'static>>>,
    live: Arc<Live>,
    /// With a changelog: where to restore assigned partitions from (brokers, extra
    /// config), and the partitions restored in this session.
    restore: Option<Restore>,
    /// An error raised inside a rebalance callback, reported by the next poll.
    failed: Mutex<Option<RunError>>,
    /// Exactly-once: the group's metadata and owned partitions, for the transaction's
    /// offsets (which the checkpoint commits instead of the consumer).
    eos: Option<SharedGroup>,
}

impl Ctx {
    fn fail(&self, e: RunError) {
        *self.failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
    }
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
                let mut p = lock(&self.driver);
                if let Some(r) = &self.restore {
                    // Each partition's state first: its offsets come from the changelog.
                    let parts: Vec<u32> = tpl
                        .elements()
                        .iter()
                        .map(|e| e.partition() as u32)
                        .collect();
                    if let Err(e) = r.partitions(&mut p, &parts, &self.live) {
                        self.fail(e);
                        return;
                    }
                }
                let mut resumed = Vec::new();
                for e in tpl.elements() {
                    // An assigned partition holds the watermark until it shows records.
                    p.engine.watermarks.register(e.partition() as u32);
                    if let Some(o) = p.offset_of(e.topic(), e.partition()) {
                        resumed.push((e.topic().to_string(), e.partition(), o));
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
                    self.fail(RunError::kafka("assign")(e));
                }
                if let Some(g) = &self.eos {
                    let mut g = transaction::group(g);
                    g.metadata = c.group_metadata();
                    g.owned.extend(owned.iter().cloned());
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
                // A lost assignment cannot commit; the checkpoint still saves state.
                let lost = c.assignment_lost();
                if let Some(g) = &self.eos {
                    transaction::group(g).metadata = c.group_metadata();
                }
                let mut d = lock(&self.driver);
                let r = d.checkpoint(&mut |cp| {
                    // Exactly-once: the offsets were committed in the transaction.
                    if !lost && self.eos.is_none() {
                        commit(c, cp, CommitMode::Sync)
                    }
                });
                if let Some(g) = &self.eos {
                    let mut g = transaction::group(g);
                    for o in &owned {
                        g.owned.remove(o);
                    }
                }
                match r {
                    Err(e) => self.fail(e),
                    // With a changelog, a revoked partition's state leaves memory: its
                    // next owner restores it.
                    Ok(()) => {
                        if let Some(restore) = &self.restore {
                            for p in tpl.elements().iter().map(|e| e.partition() as u32) {
                                if let Err(e) = d.release(p) {
                                    self.fail(e);
                                }
                                if let Ok(mut done) = restore.done.lock() {
                                    done.remove(&p);
                                }
                            }
                        }
                    }
                }
                drop(d);
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
                if let Some(g) = &self.eos {
                    transaction::group(g).owned.clear();
                }
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
    if plan.repartition.is_some() {
        return repartition::run_rekeyed(plan, opts, stop);
    }
    // The plan lives as long as the process; the rebalance callback needs it 'static.
    let plan: &'static Plan = Box::leak(Box::new(plan));
    run_stage(plan, opts, &stop, None)
}

/// One stage (or the whole pipeline), with session retry and backoff. `hop`: upstream of
/// a repartition, its (partitions, source partitions).
pub(super) fn run_stage(
    plan: &'static Plan,
    opts: &KafkaOptions,
    stop: &AtomicBool,
    hop: Option<(u32, u32)>,
) -> Result<Summary, RunError> {
    let live = opts
        .live
        .clone()
        .unwrap_or_else(|| Arc::new(Live::new(&plan.name)));
    let mut backoff = Duration::from_millis(500);
    // `retrying` (with the error) stays until a session is running again.
    live.record(Telemetry::StateChanged(RunState::Starting));
    loop {
        let mut progressed = false;
        match run_session(plan, opts, &live, stop, &mut progressed, hop) {
            Ok(s) => return Ok(s),
            Err(e) if e.is_retryable() => {
                if progressed {
                    backoff = Duration::from_millis(500);
                }
                live.record(Telemetry::SessionFailed {
                    error: &e.to_string(),
                    retry_in: backoff,
                });
                if !wait(stop, backoff) {
                    return Err(e);
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Sleeps `d` unless `stop` is set first; false when it was.
pub(super) fn wait(stop: &AtomicBool, d: Duration) -> bool {
    let until = Instant::now() + d;
    while Instant::now() < until {
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// Opens the driver for a session against Kafka (or the re-feed).
fn open_driver(
    plan: &'static Plan,
    opts: &KafkaOptions,
    live: &Arc<Live>,
    discard: bool,
    producer: Option<SharedProducer>,
) -> Result<Driver<'static>, RunError> {
    Driver::open(
        plan,
        DriverOptions {
            state_dir: &opts.state_dir,
            conn: &opts.conn,
            output: opts.output.as_deref(),
            // Upstream of a repartition the results are the repartition records.
            discard,
            dead_letter: opts.dead_letter.as_deref(),
            default_dead_letter: opts
                .state_dir
                .join("dead-letter.jsonl")
                .display()
                .to_string(),
            input_name: "",
            container_schema: None,
            live: live.clone(),
            sample_latency: opts.sample_latency,
            producer,
        },
    )
}

/// The consumer group as a [`Source`]: assignment happens in the rebalance callback, which
/// positions each partition at the state's offset.
struct KafkaSource {
    /// The record lent to the driver.
    current: Option<SourceRecord>,
    consumer: BaseConsumer<Ctx>,
    last_warning: Option<(String, Instant)>,
    /// Exactly-once: the offsets go into each checkpoint's transaction instead.
    eos: bool,
}

impl Source for KafkaSource {
    fn positioned(&self) -> bool {
        true
    }

    fn calls_back(&self) -> bool {
        true
    }

    fn seek(&mut self, _driver: &mut Driver<'_>) -> Result<(), RunError> {
        Ok(()) // per partition, when it is assigned
    }

    fn next(&mut self, timeout: Duration) -> Result<Polled<'_>, RunError> {
        let polled = self.consumer.poll(timeout);
        let failed = self.consumer.context().failed.lock().map(|mut f| f.take());
        if let Ok(Some(e)) = failed {
            return Err(e);
        }
        match polled {
            None => Ok(Polled::Idle),
            Some(Ok(m)) => Ok(Polled::Record(self.current.insert(record_of(&m)))),
            Some(Err(e)) => {
                if let Some((code, reason)) = self.consumer.client().fatal_error() {
                    return Err(RunError::KafkaFatal { code, reason });
                }
                // Transient (broker down, topic not yet there): librdkafka retries; say so
                // at most every 10 s per distinct error.
                let msg = e.to_string();
                let repeat = matches!(&self.last_warning, Some((m, t)) if *m == msg && t.elapsed() < Duration::from_secs(10));
                if !repeat {
                    tracing::warn!(error = %msg, "consumer error; retrying");
                    self.last_warning = Some((msg, Instant::now()));
                }
                Ok(Polled::Idle)
            }
        }
    }

    fn after_checkpoint(&mut self, cp: &Checkpoint, last: bool) {
        if self.eos {
            return;
        }
        let mode = if last {
            CommitMode::Sync
        } else {
            CommitMode::Async
        };
        commit(&self.consumer, cp, mode);
    }
}

/// Restores assigned partitions from the changelog, once per session each.
#[derive(Clone)]
struct Restore {
    plan: &'static Plan,
    brokers: String,
    extra: Vec<(String, String)>,
    done: Arc<Mutex<std::collections::BTreeSet<u32>>>,
    /// No assignment yet in this session.
    first: Arc<AtomicBool>,
}

impl Restore {
    fn partitions(&self, d: &mut Driver<'_>, parts: &[u32], live: &Live) -> Result<(), RunError> {
        let new: Vec<u32> = {
            let mut done = self.done.lock().unwrap_or_else(|e| e.into_inner());
            parts.iter().copied().filter(|p| done.insert(*p)).collect()
        };
        if new.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        if self.first.swap(false, Ordering::SeqCst) {
            // The session's first assignment: partitions this instance held before (the
            // local checkpoint) but was not given are someone else's now.
            let held: std::collections::BTreeSet<u32> = d.held_partitions();
            for p in held.difference(&new.iter().copied().collect()) {
                d.release(*p)?;
            }
        }
        let read = changelog::restore(d, self.plan, &self.brokers, &self.extra, &new)?;
        let partitions: Vec<(u32, u64, u64)> =
            read.iter().map(|(p, r)| (*p, r.records, r.bytes)).collect();
        live.record(Telemetry::Restored {
            partitions: &partitions,
            took: started.elapsed(),
        });
        Ok(())
    }
}

fn run_session(
    plan: &'static Plan,
    opts: &KafkaOptions,
    live: &Arc<Live>,
    stop: &AtomicBool,
    progressed: &mut bool,
    hop: Option<(u32, u32)>,
) -> Result<Summary, RunError> {
    let brokers = opts.conn.brokers();
    let txn_id = transaction::transactional_id(
        &plan.source.group,
        opts.instance_id.as_deref(),
        &opts.state_dir,
    );
    let eos = plan.delivery == Delivery::ExactlyOnce;
    // Exactly-once: one transactional producer for every Kafka output, opened first (it
    // fences the previous incarnation before anything is read).
    let txn = if eos {
        changelog::ensure(plan, &brokers, &opts.kafka_config)?;
        Some(Transaction::open(
            &brokers,
            &txn_id,
            &opts.kafka_config,
            &changelog::topic(&plan.source.group),
        )?)
    } else {
        None
    };
    let shared = txn.as_ref().map(|t| t.producer().clone());
    let clock = txn.as_ref().map(|t| t.clock());
    let group: Option<SharedGroup> = eos.then(SharedGroup::default);
    let mut opened = open_driver(plan, opts, live, hop.is_some(), shared.clone())?;
    if let Some((partitions, upstream)) = hop {
        opened.route_to(Box::new(repartition::KafkaRouter::open(
            plan,
            &brokers,
            &opts.kafka_config,
            partitions,
            upstream,
            shared.as_ref(),
        )?));
    }
    let restore = if plan.state.changelog {
        let log = match (txn, &group) {
            (Some(txn), Some(g)) => changelog::KafkaChangelog::exactly_once(plan, txn, g.clone()),
            _ => {
                changelog::ensure(plan, &brokers, &opts.kafka_config)?;
                changelog::KafkaChangelog::open(plan, &brokers, &txn_id, &opts.kafka_config)?
            }
        };
        opened.log_to(Box::new(log));
        Some(Restore {
            plan,
            brokers: brokers.clone(),
            extra: opts.kafka_config.clone(),
            done: Arc::default(),
            first: Arc::new(AtomicBool::new(true)),
        })
    } else {
        None
    };
    let driver = Arc::new(Mutex::new(opened));
    let consumer: BaseConsumer<Ctx> = consumer_config(
        &opts.conn.brokers(),
        &plan.source.group,
        opts.instance_id.as_deref(),
        &opts.kafka_config,
    )
    .create_with_context(Ctx {
        driver: driver.clone(),
        live: live.clone(),
        restore: restore.clone(),
        failed: Mutex::new(None),
        eos: group.clone(),
    })
    .map_err(RunError::kafka("cannot create the consumer"))?;
    let topics: Vec<&str> = plan.source.topics.iter().map(|s| s.as_str()).collect();
    consumer
        .subscribe(&topics)
        .map_err(RunError::kafka(format!("cannot subscribe to {topics:?}")))?;
    tracing::info!(pipeline = %plan.name, group = %plan.source.group, ?topics, delivery = plan.delivery.name(), "consuming");
    live.record(Telemetry::StateChanged(RunState::Running));
    let mut source = KafkaSource {
        current: None,
        consumer,
        last_warning: None,
        eos,
    };
    let cadence = Cadence {
        every: opts.checkpoint_every,
        interval: Some(opts.checkpoint_interval),
        stop_after: opts.stop_after,
    };
    let summary = drive(&driver, &mut source, &cadence, stop, progressed).map_err(|e| {
        // A fenced producer fails whatever it was doing; say why, once.
        match (&shared, &clock) {
            (Some(p), Some(clock)) => transaction::fenced(p, &txn_id, clock).unwrap_or(e),
            _ => e,
        }
    })?;
    // Graceful stop: the last checkpoint is committed; leave the group.
    source.consumer.unsubscribe();
    Ok(summary)
}
