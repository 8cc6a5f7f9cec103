//! The runtime runs a pipeline: one event's path, source -> schema -> operators -> state ->
//! sinks, is driven by [`driver`], the one loop and checkpoint protocol every way of
//! running a pipeline shares. [`engine`] takes one record through the pipeline;
//! [`outputs`] opens the sinks and the dead letter; [`file`] and [`kafka`] are the two
//! sources (Kafka adds rebalances and session retry); [`replay`] rewinds a stopped
//! pipeline's state.

pub mod driver;
pub mod engine;
pub mod file;
pub mod kafka;
pub mod outputs;
pub mod replay;

pub use file::{run_file, RunOptions};

use crate::monitor::Counters;
use crate::pipeline::plan::Plan;
use crate::schema::registry::{Registry, RegistryError};
use crate::sink::SinkError;
use crate::source::SourceError;
use crate::state::{checkpoint, StateError};
use engine::Engine;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

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
    #[error("the session failed; not checkpointing")]
    SessionFailed,
    /// A call to the broker (through librdkafka) failed; `op` says which. The error keeps
    /// librdkafka's code, which says whether a new session can help ([`RunError::kind`]).
    #[error("kafka: {op}: {source}")]
    Kafka {
        op: String,
        #[source]
        source: KafkaError,
    },
    /// librdkafka put the consumer in a fatal state; a new session starts over.
    /// `after_session_timeout`: the consumer's own group session had just timed out.
    #[error("kafka: fatal consumer error {code:?}: {reason}{}", if *after_session_timeout { " (right after this consumer's own group session timed out: rejoining)" } else { "" })]
    KafkaFatal {
        code: RDKafkaErrorCode,
        reason: String,
        after_session_timeout: bool,
    },
    /// Exactly-once: another process started with this pipeline's identity (the same
    /// `transactional.id`, or the same `--instance-id`) and fenced this one. Not retried: a
    /// new session would fence the newcomer in turn.
    #[error("fenced: another instance of this pipeline took over transactional id {transactional_id} ({reason}); this one stops. Give each instance its own --instance-id and state directory")]
    Fenced {
        transactional_id: String,
        reason: String,
    },
    /// A bounded wait on the broker ran out.
    #[error("kafka: timed out {0}")]
    TimedOut(String),
    #[error("cannot {op}: {source}")]
    Io {
        op: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Registry(String),
    #[error("{0}")]
    Usage(String),
    /// `source.on_missing_offsets: fail`: the offset to resume from is no longer in the log.
    #[error("{topic} partition {partition}: the offset to resume from, {offset} (from {from}), is no longer in the log, which holds offsets {log_start} to {log_end} (retention deleted the records between); nothing was read. Fix: set source.on_missing_offsets: earliest (go on from {log_start}, skipping the deleted records) or latest (from {log_end}), or replay the pipeline from a time still in the log")]
    OffsetsMissing {
        topic: String,
        partition: i32,
        offset: i64,
        /// "the state" or "the group's committed offset".
        from: &'static str,
        log_start: i64,
        log_end: i64,
    },
}

impl RunError {
    /// Who must act: a user mistake, an outside failure, or a bug in Weir.
    pub fn kind(&self) -> ErrorKind {
        match self {
            RunError::Source(_)
            | RunError::Usage(_)
            | RunError::Fenced { .. }
            | RunError::OffsetsMissing { .. } => ErrorKind::User,
            // Static membership: another member took this --instance-id (unless the
            // consumer's own session had just timed out: see `KafkaSource::next`).
            RunError::KafkaFatal {
                code: RDKafkaErrorCode::FencedInstanceId,
                after_session_timeout: false,
                ..
            } => ErrorKind::User,
            RunError::Sink(SinkError::Truncated { .. }) => ErrorKind::User,
            RunError::State(StateError::OtherPipeline { .. } | StateError::BadCheckpoint(_)) => {
                ErrorKind::User
            }
            RunError::Kafka { source, .. } if !broker_may_recover(source) => ErrorKind::User,
            RunError::Sink(_)
            | RunError::TempDir(_)
            | RunError::Kafka { .. }
            | RunError::KafkaFatal { .. }
            | RunError::TimedOut(_)
            | RunError::Io { .. }
            | RunError::SessionFailed
            | RunError::Registry(_) => ErrorKind::External,
            RunError::State(StateError::Corrupt(_)) => ErrorKind::Internal,
            RunError::State(_) => ErrorKind::External,
        }
    }

    pub fn is_retryable(&self) -> bool {
        self.kind() == ErrorKind::External
    }
}

/// Whether a later attempt can succeed where this one failed: not for a client that cannot
/// be created (a bad `--kafka-config`), nor when the broker refuses who we are.
fn broker_may_recover(e: &KafkaError) -> bool {
    if matches!(e, KafkaError::ClientCreation(_)) {
        return false;
    }
    !matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::GroupAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed
                | RDKafkaErrorCode::SaslAuthenticationFailed
                | RDKafkaErrorCode::InvalidConfig
        )
    )
}

impl RunError {
    /// A failed call to the broker: `op` names the operation.
    pub fn kafka(op: impl Into<String>) -> impl FnOnce(KafkaError) -> RunError {
        let op = op.into();
        move |source| RunError::Kafka { op, source }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    User,
    External,
    Internal,
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
    /// A table's keys dropped by its ttl.
    pub expired: u64,
    /// Kafka runs: from the first record processed to the last.
    pub active: Option<std::time::Duration>,
    /// With `sample_latency`: the time to process every 16th record, ns.
    pub latencies_ns: Vec<u32>,
    /// With `sample_latency`: how long each checkpoint took.
    pub checkpoint_times: Vec<std::time::Duration>,
    /// Bytes of Avro the benchmark's discarding sink was given.
    pub discarded_bytes: u64,
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
    // Without a registry there is nothing to look up: skip the frame check.
    let Some(reg) = registry else {
        return Ok(());
    };
    let Some(id) = engine.decoder.unknown_writer_id(value) else {
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
    let opened = checkpoint::open(plan, state_dir, false)?;
    Ok(opened.checkpoint.map(|c| CheckpointView {
        offsets: c.offsets,
        counters: c.counters,
        watermark: c.watermarks.current(),
    }))
}
