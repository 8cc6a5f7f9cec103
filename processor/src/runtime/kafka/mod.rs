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
//! One consumer is polled by one thread that runs the engine for every assigned partition;
//! each partition's windows close by its own watermark (`operators/watermark.rs`). The
//! consumer's callbacks (rebalance, commit, log) are in `callbacks.rs`. Backpressure is the poll loop itself: librdkafka prefetches at most
//! `queued.max.messages.kbytes` per partition and stops fetching while the engine is busy;
//! the producer's queue blocks `send` when the broker is slow. Errors from the broker
//! (down, unreachable) restart the session from the last checkpoint with backoff.

mod callbacks;
pub mod changelog;
mod missing;
mod redrive;
pub mod repartition;
pub mod transaction;

pub use redrive::{redrive, RedriveReport};

use super::driver::{drive, Cadence, Driver, DriverOptions, Polled, Source};
use super::outputs::Connections;
use super::{RunError, Summary};
use crate::monitor::telemetry::{Live, RunState, Telemetry};
use crate::pipeline::plan::Plan;
use crate::pipeline::Delivery;
use crate::sink::kafka::SharedProducer;
use crate::source::kafka::{consumer_config, record_of};
use crate::source::SourceRecord;
use crate::state::checkpoint::Checkpoint;
use callbacks::{commit, Ctx, Restore};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::RDKafkaErrorCode;
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
    /// Encode the results (Avro) and drop them instead of the sinks (the benchmark).
    pub discard: bool,
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
                if e.rdkafka_error_code() == Some(RDKafkaErrorCode::AutoOffsetReset) {
                    // `on_missing_offsets: fail`, and retention overtook the position while
                    // the pipeline ran (on assignment, `missing::place` names the offsets).
                    return Err(RunError::Usage(format!(
                        "{e}: an offset the pipeline was reading is no longer in the log (retention deleted it while the pipeline ran), and source.on_missing_offsets is fail. Fix: set it to earliest or latest, or replay from a time still in the log"
                    )));
                }
                if let Some((code, reason)) = self.consumer.client().fatal_error() {
                    // A static member whose session timed out (a broker outage) rejoins;
                    // a heartbeat still in flight with its old member id is then refused
                    // as fenced (librdkafka#3437). That is not another instance: a new
                    // session rejoins. Fenced without a timeout first is another instance.
                    let timed_out = self
                        .consumer
                        .context()
                        .session_timeout
                        .lock()
                        .map(|t| t.is_some_and(|t| t.elapsed() < Duration::from_secs(60)))
                        .unwrap_or(false);
                    return Err(RunError::KafkaFatal {
                        code,
                        reason,
                        after_session_timeout: timed_out,
                    });
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
    let discard = hop.is_some() || opts.discard;
    let mut opened = open_driver(plan, opts, live, discard, shared.clone())?;
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
    let policy = plan.source.on_missing_offsets;
    live.record(Telemetry::MissingOffsetsPolicy(policy.name()));
    let mut config = consumer_config(
        &opts.conn.brokers(),
        &plan.source.group,
        opts.instance_id.as_deref(),
        &opts.kafka_config,
    );
    // A user's --kafka-config auto.offset.reset still comes last.
    if !opts
        .kafka_config
        .iter()
        .any(|(k, _)| k == "auto.offset.reset")
    {
        config.set("auto.offset.reset", missing::auto_offset_reset(policy));
    }
    let consumer: BaseConsumer<Ctx> = config
        .create_with_context(Ctx {
            driver: driver.clone(),
            live: live.clone(),
            restore: restore.clone(),
            failed: Mutex::new(None),
            eos: group.clone(),
            session_timeout: Mutex::new(None),
            last_rebalance: Mutex::new(None),
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
    // Graceful stop: the last checkpoint is committed; leave the group (bounded).
    leave(&source.consumer);
    crate::kafka_client::close(source.consumer, Duration::from_secs(30), &plan.source.group);
    Ok(summary)
}

/// Unsubscribes and serves the rebalance callbacks until the consumer holds no partitions
/// and no rebalance is under way, so that the close that follows has none to answer.
/// librdkafka can hang a close that meets an assignment (confluentinc/librdkafka#4527,
/// #4884): a pipeline halted while its group was still assigning (a `weir serve` deploy
/// followed at once by a replay) waited for its close until the bound ran out.
/// librdkafka postpones the unsubscribe until a rebalance under way has ended, then revokes;
/// both callbacks run here. Records polled meanwhile are not processed: the driver's last
/// checkpoint is behind them, and the revoke checkpoints nothing new.
///
/// Bounded: at most 10 s; "settled" is no partition held and no callback for 1 s (or, for a
/// consumer never assigned, 3 s: time for the join under way to end).
fn leave(consumer: &BaseConsumer<Ctx>) {
    let started = Instant::now();
    let last = || {
        *consumer
            .context()
            .last_rebalance
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    };
    consumer.unsubscribe();
    while started.elapsed() < Duration::from_secs(10) {
        let _ = consumer.poll(Duration::from_millis(100));
        let held = consumer.assignment().map(|a| a.count()).unwrap_or(0);
        let settled = match last() {
            Some(t) => t.elapsed() >= Duration::from_secs(1),
            None => started.elapsed() >= Duration::from_secs(3),
        };
        if held == 0 && settled {
            return;
        }
    }
    tracing::warn!(
        "the consumer still held partitions or was rebalancing 10 s after unsubscribing; closing it anyway"
    );
}
