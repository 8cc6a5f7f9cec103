//! The runtime wires one event's path: source -> schema -> operators -> state -> sinks,
//! and runs the checkpoint loop.
//!
//! # Checkpoints and the at-least-once argument (offline)
//! Every `checkpoint_every` records, and whenever the write cache is over its bound:
//! 1. flush every sink and wait until it is durable (file sinks `fsync`), noting each
//!    sink's length;
//! 2. write, in **one** RocksDB `WriteBatch`, the dirty window state, the deletions of
//!    closed windows, the source position (records consumed), the watermarks, the counters
//!    and the sink lengths from step 1.
//!
//! A crash before step 2 leaves the previous checkpoint in force: the restart truncates the
//! sinks to the lengths it records, seeks the input to its position and reprocesses, which
//! emits the same bytes again (processing is deterministic). A crash after step 2 resumes
//! from the new one. Nothing is lost and nothing is doubled in a file sink. The Kafka path
//! ([`kafka`]) waits for broker and database acknowledgements in step 1, stores offsets
//! per partition in step 2, and adds step 3 (commit offsets to the consumer group).

pub mod engine;
pub mod kafka;
pub mod outputs;
pub mod replay;

use crate::monitor::Counters;
use crate::operators::watermark::Watermarks;
use crate::pipeline::compile::Plan;
use crate::schema::registry::{Registry, RegistryError};
use crate::sink::SinkError;
use crate::source::file::{FileSource, InputFormat};
use crate::source::SourceError;
use crate::state::windows::WindowMeta;
use crate::state::{StateError, Store, META_KEY};
use engine::Engine;
use outputs::{open_sinks, AnySink, Connections, DeadLetters, ResultWriter};
use rocksdb::WriteBatch;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("cannot create a temporary state directory: {0}")]
    TempDir(std::io::Error),
    #[error("the state directory {dir} belongs to pipeline `{found}`, not `{expected}`; use another --state-dir")]
    OtherPipeline {
        dir: String,
        found: String,
        expected: String,
    },
    #[error("the checkpoint in {0} does not decode; remove the state directory to start over")]
    BadCheckpoint(String),
    #[error("kafka: {0}")]
    Kafka(String),
    #[error("{0}")]
    Registry(String),
    #[error("{0}")]
    Usage(String),
}

impl RunError {
    /// Who must act: a user mistake, an outside failure, or a bug in Weir.
    pub fn kind(&self) -> ErrorKind {
        match self {
            RunError::Source(_) | RunError::OtherPipeline { .. } | RunError::Usage(_) => {
                ErrorKind::User
            }
            RunError::Sink(SinkError::Truncated { .. }) | RunError::BadCheckpoint(_) => {
                ErrorKind::User
            }
            RunError::Sink(_)
            | RunError::TempDir(_)
            | RunError::Kafka(_)
            | RunError::Registry(_) => ErrorKind::External,
            RunError::State(StateError::Corrupt(_)) => ErrorKind::Internal,
            RunError::State(_) => ErrorKind::External,
        }
    }

    pub fn is_retryable(&self) -> bool {
        self.kind() == ErrorKind::External
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    User,
    External,
    Internal,
}

/// Where results and dead letters of an offline run go.
pub struct RunOptions {
    pub input: PathBuf,
    pub input_format: InputFormat,
    /// Overrides the pipeline's sinks with one file (`-` for stdout).
    pub output: Option<String>,
    pub dead_letter: Option<String>,
    /// Keep state here to resume after a crash; a temporary directory otherwise.
    pub state_dir: Option<PathBuf>,
    pub checkpoint_every: u64,
    pub conn: Connections,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct Summary {
    pub counters: Counters,
    pub watermark: i64,
    pub dead_letter_path: String,
    pub resumed_from: Option<u64>,
    pub checkpoints: u64,
    pub state_writes: u64,
    /// Window entries evicted from the write cache to RocksDB (read back on a miss).
    pub evicted: u64,
    /// Kafka runs: from the first record processed to the last.
    pub active: Option<std::time::Duration>,
    /// Kafka runs with `sample_latency`: the time to process every 16th record, ns.
    pub latencies_ns: Vec<u32>,
}

#[derive(Clone, Serialize, Deserialize)]
struct Checkpoint {
    pipeline: String,
    /// Records consumed from the input file.
    position: u64,
    /// Kafka: the next offset to process per (topic, partition).
    offsets: Vec<(String, i32, i64)>,
    watermarks: Watermarks,
    windows: WindowMeta,
    counters: Counters,
    sinks: Vec<Option<u64>>,
    dead_letter: Option<u64>,
    clock: i64,
}

fn default_dead_letter_path(opts: &RunOptions) -> String {
    match &opts.state_dir {
        Some(d) => d.join("dead-letter.jsonl").display().to_string(),
        None => "dead-letter.jsonl".to_string(),
    }
}

/// Test hook: `WEIR_TEST_SIGKILL_AFTER=N` makes the process SIGKILL itself after it has
/// processed N records, so crash tests hit a precise point between checkpoints.
fn kill_after() -> Option<u64> {
    std::env::var("WEIR_TEST_SIGKILL_AFTER").ok()?.parse().ok()
}

/// Before a record is decoded: when its Confluent schema id is unknown and a registry is
/// configured, fetch the writer schema. An id the registry does not have (404) or a schema
/// that cannot be read as the reader schema leaves the record to the dead letter; a registry
/// that cannot be reached is an outside failure (retried), not the record's fault.
fn resolve_writer(
    engine: &mut Engine,
    registry: Option<&mut Registry>,
    value: &[u8],
) -> Result<(), RunError> {
    let (Some(id), Some(reg)) = (engine.decoder.unknown_writer_id(value), registry) else {
        return Ok(());
    };
    if reg.is_missing(id) {
        return Ok(());
    }
    match reg.schema_by_id(id) {
        Ok(schema) => {
            if let Err(msg) = engine.decoder.add_writer(id, schema) {
                tracing::warn!(id, %msg, "writer schema from the registry is not readable as the reader schema; its records go to the dead letter");
            }
            Ok(())
        }
        Err(RegistryError::Status { status, body, .. }) if (400..500).contains(&status) => {
            tracing::warn!(id, status, %body, "the schema registry has no schema with this id; its records go to the dead letter");
            Ok(())
        }
        Err(e) => Err(RunError::Registry(e.to_string())),
    }
}

/// A stopped pipeline's checkpoint, as `weir serve` shows it.
pub struct CheckpointView {
    pub offsets: Vec<(String, i32, i64)>,
    pub counters: Counters,
    pub watermark: i64,
}

/// Reads the last checkpoint of a pipeline that is not running.
pub fn peek_checkpoint(
    plan: &Plan,
    state_dir: &std::path::Path,
) -> Result<Option<CheckpointView>, RunError> {
    let (_store, cp) = open_state(plan, state_dir)?;
    Ok(cp.map(|c| CheckpointView {
        offsets: c.offsets,
        counters: c.counters,
        watermark: c.watermarks.current(),
    }))
}

/// Opens the state directory and reads its last checkpoint, refusing another pipeline's.
fn open_state(
    plan: &Plan,
    state_dir: &std::path::Path,
) -> Result<(Store, Option<Checkpoint>), RunError> {
    open_state_with(plan, state_dir, false)
}

fn open_state_with(
    plan: &Plan,
    state_dir: &std::path::Path,
    read_only: bool,
) -> Result<(Store, Option<Checkpoint>), RunError> {
    let store = if read_only {
        Store::open_read_only(state_dir, &plan.state)?
    } else {
        Store::open(state_dir, &plan.state)?
    };
    let resume: Option<Checkpoint> = match store.get(META_KEY)? {
        None => None,
        Some(bytes) => Some(
            bincode::deserialize(&bytes)
                .map_err(|_| RunError::BadCheckpoint(state_dir.display().to_string()))?,
        ),
    };
    if let Some(c) = &resume {
        if c.pipeline != plan.name {
            return Err(RunError::OtherPipeline {
                dir: state_dir.display().to_string(),
                found: c.pipeline.clone(),
                expected: plan.name.clone(),
            });
        }
    }
    Ok((store, resume))
}

/// Replays an event log through the pipeline.
pub fn run_file(plan: &Plan, opts: &RunOptions) -> Result<Summary, RunError> {
    let _tmp;
    let state_dir: PathBuf = match &opts.state_dir {
        Some(d) => d.clone(),
        None => {
            let t = tempfile::Builder::new()
                .prefix("weir-state-")
                .tempdir()
                .map_err(RunError::TempDir)?;
            let p = t.path().to_path_buf();
            _tmp = t;
            p
        }
    };
    let (mut store, resume) = open_state(plan, &state_dir)?;
    let topic = plan.source.topics.first().cloned().unwrap_or_default();
    let mut source = FileSource::open(&opts.input, opts.input_format, &topic)?;
    let file_name = source.path().to_string();
    let mut registry = opts.conn.registry();
    let lengths = resume.as_ref().map(|c| c.sinks.clone()).unwrap_or_default();
    let mut sinks = open_sinks(
        plan,
        opts.output.as_deref(),
        &opts.conn,
        &mut registry,
        &lengths,
    )?;
    let (mut dead, dl_path) = DeadLetters::open(
        plan.dead_letter.as_ref(),
        opts.dead_letter.as_deref(),
        &default_dead_letter_path(opts),
        &opts.conn,
        resume.as_ref().and_then(|c| c.dead_letter),
        &file_name,
    )?;
    let mut engine = Engine::new(plan, source.container_schema().cloned());
    let mut position = 0u64;
    let resumed_from = resume.as_ref().map(|c| c.position);
    if let Some(c) = resume {
        engine.restore(c.watermarks, c.counters, c.clock);
        engine.windows.restore(c.windows, &store)?;
        position = c.position;
        for _ in 0..position {
            if source.next().transpose()?.is_none() {
                break;
            }
        }
    }
    for p in FileSource::open(&opts.input, opts.input_format, &topic)?.partitions()? {
        engine.watermarks.register(p);
    }
    let kill = kill_after();
    let mut processed_here = 0u64;
    let mut since_checkpoint = 0u64;
    let mut checkpoints = 0u64;
    let mut dead_letters = Vec::new();
    let mut writer = ResultWriter::new(plan, &mut sinks);

    while let Some(rec) = source.next().transpose()? {
        resolve_writer(&mut engine, registry.as_mut(), rec.value.bytes())?;
        engine.process(
            &store,
            &rec,
            &mut |e| writer.write(&e, &mut sinks),
            &mut dead_letters,
        )?;
        writer.check()?;
        for d in dead_letters.drain(..) {
            dead.write(&d)?;
        }
        position += 1;
        processed_here += 1;
        since_checkpoint += 1;
        if kill == Some(processed_here) {
            // SAFETY: plain libc calls on our own process id.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
        }
        if since_checkpoint >= opts.checkpoint_every || engine.windows.over_capacity() {
            checkpoint(
                plan,
                &mut engine,
                &mut store,
                &mut sinks,
                &mut dead,
                position,
                Vec::new(),
            )?;
            engine.windows.after_checkpoint();
            since_checkpoint = 0;
            checkpoints += 1;
        }
    }
    engine.finish(&store, &mut |e| writer.write(&e, &mut sinks))?;
    writer.check()?;
    checkpoint(
        plan,
        &mut engine,
        &mut store,
        &mut sinks,
        &mut dead,
        position,
        Vec::new(),
    )?;
    checkpoints += 1;
    Ok(Summary {
        counters: engine.counters.clone(),
        watermark: engine.watermarks.current(),
        dead_letter_path: dl_path,
        resumed_from,
        checkpoints,
        state_writes: store.writes,
        evicted: engine.windows.evicted,
        active: None,
        latencies_ns: Vec::new(),
    })
}

fn checkpoint(
    plan: &Plan,
    engine: &mut Engine,
    store: &mut Store,
    sinks: &mut [AnySink],
    dead: &mut DeadLetters,
    position: u64,
    offsets: Vec<(String, i32, i64)>,
) -> Result<(), RunError> {
    let mut lengths = Vec::with_capacity(sinks.len());
    for s in sinks.iter_mut() {
        lengths.push(s.as_sink().flush()?);
    }
    let dl = dead.flush()?;
    let mut batch = WriteBatch::default();
    let cp = Checkpoint {
        pipeline: plan.name.clone(),
        position,
        offsets,
        watermarks: engine.watermarks.clone(),
        windows: engine.windows.meta(),
        counters: engine.counters.clone(),
        sinks: lengths,
        dead_letter: dl,
        clock: engine.clock,
    };
    let meta = bincode::serialize(&cp).map_err(|e| StateError::Corrupt(e.to_string()))?;
    engine.windows.checkpoint_into(&mut batch)?;
    batch.put(META_KEY, meta);
    store.write(batch)?;
    Ok(())
}
