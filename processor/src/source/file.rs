//! Event logs on disk: JSON Lines or Avro Object Container Files.
//!
//! JSON Lines come in two shapes, detected from the first line (or forced with
//! `--input-format`):
//! - `values`: each line is one event, a JSON object validated against the reader schema;
//!   its partition is 0 and its offset the line index;
//! - `records`: each line is a Kafka record
//!   `{"partition":0,"offset":5,"timestamp":1700000000000,"key":"u1","value":{...}}`,
//!   where `value` is a JSON event, or `value_b64` holds the raw value bytes in the
//!   pipeline's format (`avro`, `avro-raw`, `json`). Every key but the value is optional;
//!   offsets default to a per-partition counter.
//!
//! A line that is not a record is still read: a line that is not UTF-8, a line of a
//! records file that is not a JSON object, and an envelope whose coordinates are not
//! Kafka's (`partition` an integer in 0..=2147483647, `offset` an integer >= 0,
//! `timestamp` an integer) go to the dead letter with reason `decode`, saying why, with
//! their original bytes and the file and line, and the run goes on. Such a line takes no
//! offset: the dead letter shows partition 0 and the offset the next record of partition 0
//! would get.

use super::{Payload, SourceError, SourceRecord};
use apache_avro::Schema;
use base64::Engine;
use serde_json::Value as Json;
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InputFormat {
    /// Decide from the file: `.avro` is a container file, otherwise JSON Lines whose shape
    /// is read off the first line.
    Auto,
    /// JSON Lines, one event per line.
    Values,
    /// JSON Lines, one Kafka record per line.
    Records,
    /// An Avro Object Container File.
    Avro,
}

const RECORD_KEYS: &[&str] = &[
    "topic",
    "partition",
    "offset",
    "timestamp",
    "key",
    "key_b64",
    "value",
    "value_b64",
    "headers",
];

fn is_record_line(line: &str) -> bool {
    match serde_json::from_str::<Json>(line) {
        Ok(Json::Object(m)) => {
            (m.contains_key("value") || m.contains_key("value_b64"))
                && m.keys().all(|k| RECORD_KEYS.contains(&k.as_str()))
        }
        _ => false,
    }
}

enum Inner {
    Lines {
        lines: std::io::Split<BufReader<File>>,
        records: bool,
    },
    Avro {
        reader: Box<apache_avro::Reader<'static, BufReader<File>>>,
        writer: Schema,
    },
}

pub struct FileSource {
    path: String,
    topic: String,
    inner: Inner,
    line: u64,
    next_offset: HashMap<u32, i64>,
}

impl FileSource {
    pub fn open(path: &Path, format: InputFormat, topic: &str) -> Result<FileSource, SourceError> {
        let name = path.display().to_string();
        let open = || {
            File::open(path).map_err(|source| SourceError::Open {
                path: name.clone(),
                source,
            })
        };
        let format = match format {
            InputFormat::Auto if path.extension().is_some_and(|e| e == "avro") => InputFormat::Avro,
            InputFormat::Auto => {
                let mut first = String::new();
                for l in BufReader::new(open()?).split(b'\n') {
                    let l = l.map_err(|source| SourceError::Read {
                        path: name.clone(),
                        source,
                    })?;
                    let l = String::from_utf8_lossy(&l);
                    if !l.trim().is_empty() {
                        first = l.into_owned();
                        break;
                    }
                }
                if is_record_line(&first) {
                    InputFormat::Records
                } else {
                    InputFormat::Values
                }
            }
            f => f,
        };
        let inner = match format {
            InputFormat::Avro => {
                let reader = apache_avro::Reader::new(BufReader::new(open()?)).map_err(|e| {
                    SourceError::Container {
                        path: name.clone(),
                        message: e.to_string(),
                    }
                })?;
                let writer = reader.writer_schema().clone();
                Inner::Avro {
                    reader: Box::new(reader),
                    writer,
                }
            }
            f => Inner::Lines {
                lines: BufReader::new(open()?).split(b'\n'),
                records: f == InputFormat::Records,
            },
        };
        Ok(FileSource {
            path: name,
            topic: topic.to_string(),
            inner,
            line: 0,
            next_offset: HashMap::new(),
        })
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// The writer schema of an Avro container file.
    pub fn container_schema(&self) -> Option<&Schema> {
        match &self.inner {
            Inner::Avro { writer, .. } => Some(writer),
            Inner::Lines { .. } => None,
        }
    }

    /// Every partition the input has records of: `{0}` for a values or container file; a
    /// records file is read through once. The file replay registers them all before the
    /// first record, as the Kafka path registers its assigned partitions, so a partition
    /// that starts late in a dump holds the watermark back just as it would live.
    pub fn partitions(mut self) -> Result<std::collections::BTreeSet<u32>, SourceError> {
        let mut set = std::collections::BTreeSet::from([0]);
        if !matches!(self.inner, Inner::Lines { records: true, .. }) {
            return Ok(set);
        }
        set.clear();
        for r in &mut self {
            let r = r?;
            if !matches!(r.value, Payload::Invalid { .. }) {
                set.insert(r.partition);
            }
        }
        Ok(set)
    }

    fn offset(&mut self, partition: u32, explicit: Option<i64>) -> i64 {
        let next = self.next_offset.entry(partition).or_insert(0);
        let off = explicit.unwrap_or(*next);
        *next = off + 1;
        off
    }

    /// A record with no envelope: partition 0, the next offset, no key or timestamp.
    fn bare(&mut self, value: Payload) -> SourceRecord {
        let offset = self.offset(0, None);
        SourceRecord {
            topic: self.topic.clone(),
            partition: 0,
            offset,
            timestamp: None,
            key: None,
            value,
            line: self.line,
        }
    }

    /// A line that cannot be a record: dead-lettered by the engine with `reason`.
    fn invalid(&mut self, bytes: Vec<u8>, reason: String) -> SourceRecord {
        let offset = self.next_offset.get(&0).copied().unwrap_or(0);
        SourceRecord {
            topic: self.topic.clone(),
            partition: 0,
            offset,
            timestamp: None,
            key: None,
            value: Payload::Invalid { bytes, reason },
            line: self.line,
        }
    }

    fn record(&mut self, bytes: Vec<u8>, records: bool) -> SourceRecord {
        let line = self.line;
        let text = match String::from_utf8(bytes) {
            Ok(t) => t,
            Err(e) => {
                let why = format!("line {line} is not valid UTF-8: {}", e.utf8_error());
                return self.invalid(e.into_bytes(), why);
            }
        };
        if !records {
            return self.bare(Payload::Json(text.into_bytes()));
        }
        let m = match serde_json::from_str::<Json>(&text) {
            Ok(Json::Object(m)) => m,
            Ok(_) => {
                let why = format!("line {line} is not a record: not a JSON object");
                return self.invalid(text.into_bytes(), why);
            }
            Err(e) => {
                let why = format!("line {line} is not a record: not JSON ({e})");
                return self.invalid(text.into_bytes(), why);
            }
        };
        let (partition, explicit_offset, timestamp) = match envelope(&m) {
            Ok(c) => c,
            Err(why) => return self.invalid(text.into_bytes(), format!("line {line}: {why}")),
        };
        let b64 = |v: Option<&Json>| {
            v.and_then(Json::as_str)
                .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
        };
        let key = match m.get("key") {
            Some(Json::String(s)) => Some(s.clone().into_bytes()),
            _ => b64(m.get("key_b64")),
        };
        let value = match (m.get("value"), m.get("value_b64")) {
            (Some(v), _) => Payload::Json(v.to_string().into_bytes()),
            (None, Some(Json::String(s))) => {
                match base64::engine::general_purpose::STANDARD.decode(s) {
                    Ok(b) => Payload::Bytes(b),
                    Err(e) => {
                        let why = format!("line {line}: `value_b64` is not base64 ({e})");
                        return self.invalid(text.into_bytes(), why);
                    }
                }
            }
            _ => {
                let why = format!("line {line}: the record has no `value` or `value_b64` string");
                return self.invalid(text.into_bytes(), why);
            }
        };
        let offset = self.offset(partition, explicit_offset);
        SourceRecord {
            topic: m
                .get("topic")
                .and_then(Json::as_str)
                .unwrap_or(&self.topic)
                .to_string(),
            partition,
            offset,
            timestamp,
            key,
            value,
            line,
        }
    }
}

/// The coordinates of a record envelope: partition, explicit offset, timestamp. Values
/// Kafka cannot carry are refused, never remapped.
fn envelope(m: &serde_json::Map<String, Json>) -> Result<(u32, Option<i64>, Option<i64>), String> {
    // An absent or null key is None; a present one must be an integer that `ok` accepts.
    let int = |key: &str, ok: fn(i64) -> bool, what: &str| match m.get(key) {
        None | Some(Json::Null) => Ok(None),
        Some(v) => match v.as_i64() {
            Some(i) if ok(i) => Ok(Some(i)),
            _ => Err(format!("`{key}` {v} is not {what}")),
        },
    };
    let partition = int(
        "partition",
        |p| (0..=i32::MAX as i64).contains(&p),
        "a Kafka partition (an integer in 0..=2147483647)",
    )?
    .unwrap_or(0) as u32;
    let offset = int("offset", |o| o >= 0, "a Kafka offset (an integer >= 0)")?;
    let timestamp = int(
        "timestamp",
        |_| true,
        "a timestamp (integer epoch milliseconds)",
    )?;
    Ok((partition, offset, timestamp))
}

impl Iterator for FileSource {
    type Item = Result<SourceRecord, SourceError>;

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.inner {
            Inner::Lines { lines, records } => {
                let records = *records;
                loop {
                    let l = match lines.next()? {
                        Ok(l) => l,
                        Err(source) => {
                            return Some(Err(SourceError::Read {
                                path: self.path.clone(),
                                source,
                            }))
                        }
                    };
                    self.line += 1;
                    let mut l = l;
                    if l.last() == Some(&b'\r') {
                        l.pop();
                    }
                    if l.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    return Some(Ok(self.record(l, records)));
                }
            }
            Inner::Avro { reader, writer } => {
                let v = match reader.next()? {
                    Ok(v) => v,
                    Err(e) => {
                        return Some(Err(SourceError::Container {
                            path: self.path.clone(),
                            message: e.to_string(),
                        }))
                    }
                };
                self.line += 1;
                let bytes = apache_avro::to_avro_datum(writer, v.clone()).unwrap_or_default();
                let off = self.offset(0, None);
                Some(Ok(SourceRecord {
                    topic: self.topic.clone(),
                    partition: 0,
                    offset: off,
                    timestamp: None,
                    key: None,
                    value: Payload::Avro { value: v, bytes },
                    line: self.line,
                }))
            }
        }
    }
}
