//! Sources: where records come from. Offline, an event log file ([`file::FileSource`]);
//! online, a Kafka consumer group ([`kafka`]). A source yields raw records with their
//! coordinates; decoding and validation happen in [`crate::schema`], never here, so that an
//! invalid record reaches the dead letter with its original bytes.

pub mod file;
pub mod kafka;

use apache_avro::types::Value;

/// A record as read, before decoding.
#[derive(Debug, Clone)]
pub struct SourceRecord {
    pub topic: String,
    pub partition: u32,
    pub offset: i64,
    pub timestamp: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub value: Payload,
    /// Where in the input this record is: the line of a JSON Lines file (1-based), or the
    /// datum number of an Avro container file.
    pub line: u64,
}

#[derive(Debug, Clone)]
pub enum Payload {
    /// Bytes in the pipeline's value format.
    Bytes(Vec<u8>),
    /// A JSON event (validated against the reader schema whatever the value format).
    Json(Vec<u8>),
    /// A datum of an Avro container file, decoded with the file's writer schema;
    /// `bytes` is its Avro binary encoding.
    Avro { value: Value, bytes: Vec<u8> },
    /// A line of an event log that cannot be a record (not UTF-8, not JSON in a records
    /// file, an envelope with impossible coordinates): `bytes` is the whole line, and the
    /// engine dead-letters it with reason `decode` and `reason` as the error.
    Invalid { bytes: Vec<u8>, reason: String },
}

impl Payload {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Payload::Bytes(b) | Payload::Json(b) => b,
            Payload::Avro { bytes, .. } | Payload::Invalid { bytes, .. } => bytes,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot open the input {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot read the input {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the input {path} is not an Avro container file: {message}")]
    Container { path: String, message: String },
}
