//! Sinks: where derived events and dead letters go.
//!
//! # The idempotency contract
//! Weir delivers at least once: after a crash, results emitted after the last checkpoint
//! are emitted again, with the same window, key and emission sequence. A sink must make
//! that second delivery have no further effect. The file sink does it by truncating its
//! file, on restart, to the length recorded in the checkpoint (so a replay rewrites the
//! same bytes); stdout cannot and may repeat lines after a crash; the Kafka sink writes
//! deterministic keys and a `weir-event-id` header ([`kafka`]); the PostgreSQL sink upserts
//! on (key, window start) ([`postgres`]).
//!
//! A sink's [`Sink::flush`] returns only when everything written so far is durable, and
//! returns the position to record in the checkpoint.

pub mod discard;
pub mod encode;
pub mod file;
pub mod kafka;
pub mod postgres;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot open sink file {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write to sink {name}: {source}")]
    Write {
        name: String,
        source: std::io::Error,
    },
    #[error("sink file {path} is shorter ({actual} bytes) than its checkpoint says ({expected}); it was changed outside Weir. Remove the state directory to start over")]
    Truncated {
        path: String,
        expected: u64,
        actual: u64,
    },
}

/// A derived event, encoded once for every sink.
pub struct Output<'a> {
    /// The event as one line of JSON (no newline).
    pub json: &'a str,
    /// The event in Avro binary (output schema); empty unless a sink asked for it.
    pub avro: &'a [u8],
    /// The group key as a JSON object of the key fields, e.g. `{"user_id":"u1"}`.
    pub key: &'a str,
    pub window_start: i64,
    /// `pipeline/key/window start/emission sequence` (stateless: `pipeline/topic/partition/
    /// offset` of the source record): the same for a re-emission.
    pub event_id: &'a str,
    /// The Kafka record key: `key` or, for a stateless pipeline without `key_by`, the source
    /// record's key.
    pub record_key: Option<&'a [u8]>,
    /// The Kafka record timestamp: a stateless result carries its source record's.
    pub timestamp: Option<i64>,
}

pub trait Sink {
    fn name(&self) -> &str;
    /// Whether [`Output::avro`] must be filled in.
    fn wants_avro(&self) -> bool {
        false
    }
    /// Whether [`Output::json`] must be filled in.
    fn wants_json(&self) -> bool {
        true
    }
    /// Whether [`Output::key`] and [`Output::event_id`] must be filled in.
    fn wants_key(&self) -> bool {
        true
    }
    fn write(&mut self, out: &Output<'_>) -> Result<(), SinkError>;
    /// Makes every write durable; returns the position to checkpoint, if the sink has one.
    fn flush(&mut self) -> Result<Option<u64>, SinkError>;
}
