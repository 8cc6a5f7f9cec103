//! What leaves the pipeline: a derived result ([`Emitted`]) and its encodings for the sinks
//! ([`ResultFormat`]: Avro values, Avro binary, JSON, key and event id), and an event that
//! left it ([`DeadLetter`], with its JSON envelope). The engine produces both; every sink
//! and the dead letter read them from here.

use crate::monitor::DeadLetterReason;
use crate::operators::Scalar;
use crate::pipeline::plan::{OutSource, Plan};
use crate::schema::codec::zigzag;
use crate::schema::json::avro_to_json;
use crate::schema::Kind;
use apache_avro::types::Value;
use apache_avro::Schema;
use base64::Engine as _;

/// A derived result with its key decoded: a window's aggregates, or (stateless) one event's
/// row with the record it came from.
pub struct Emitted {
    pub partition: u32,
    pub key: Vec<Scalar>,
    pub start: i64,
    pub end: i64,
    pub results: Vec<Scalar>,
    pub seq: u32,
    /// A stateless pipeline's result: the event's row (the output fields read it).
    pub row: Vec<Value>,
    /// A stateless pipeline's result: where its event was read.
    pub origin: Option<Origin>,
}

/// The source record a stateless result came from: its event id, and the key and timestamp
/// its Kafka record carries on.
pub struct Origin {
    pub topic: String,
    pub offset: i64,
    pub timestamp: Option<i64>,
    pub key: Option<Vec<u8>>,
}

/// An event that left the pipeline, with everything needed to find and replay it.
pub struct DeadLetter {
    pub pipeline: String,
    pub reason: DeadLetterReason,
    pub error: String,
    pub topic: String,
    pub partition: u32,
    pub offset: i64,
    pub line: u64,
    pub timestamp: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
}

impl DeadLetter {
    /// The dead-letter envelope as one JSON line. `file` is the input file, if any.
    pub fn to_json(&self, file: &str) -> String {
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let mut source = serde_json::json!({
            "topic": self.topic, "partition": self.partition, "offset": self.offset,
        });
        if !file.is_empty() {
            source["file"] = serde_json::json!(file);
            source["line"] = serde_json::json!(self.line);
        }
        serde_json::json!({
            "pipeline": self.pipeline,
            "reason": self.reason.as_str(),
            "error": self.error,
            "source": source,
            "timestamp": self.timestamp,
            "key_b64": self.key.as_deref().map(b64),
            "value_b64": b64(&self.value),
        })
        .to_string()
    }
}

/// Turns results into derived events of the output schema: Avro values, Avro binary, JSON.
/// Separate from the engine so a sink can encode while the engine is busy emitting.
#[derive(Clone, Copy)]
pub struct ResultFormat<'p> {
    plan: &'p Plan,
}

impl<'p> ResultFormat<'p> {
    pub fn new(plan: &'p Plan) -> ResultFormat<'p> {
        ResultFormat { plan }
    }

    /// The derived event as an Avro record of the output schema (nullable fields as
    /// explicit `Value::Union`s, as apache-avro's encoder needs them).
    pub fn output_value(&self, e: &Emitted) -> Value {
        let fields = self
            .plan
            .output
            .fields
            .iter()
            .map(|f| {
                let v = match f.source {
                    OutSource::Key(i) => e
                        .key
                        .get(i)
                        .cloned()
                        .unwrap_or(Scalar::Null)
                        .to_value(&f.ty),
                    OutSource::WindowStart => bound(e.start, &f.ty.kind),
                    OutSource::WindowEnd => bound(e.end, &f.ty.kind),
                    OutSource::Agg(i) => e
                        .results
                        .get(i)
                        .cloned()
                        .unwrap_or(Scalar::Null)
                        .to_value(&f.ty),
                    OutSource::Row(i) => e.row.get(i).cloned().unwrap_or(Value::Null),
                };
                let v = conform(v, &f.schema);
                (f.name.clone(), v)
            })
            .collect();
        Value::Record(fields)
    }

    /// The derived event in Avro binary (output schema), written straight from the result
    /// without building a `Value` record. Output fields are scalars or nullable scalars
    /// (validation guarantees it).
    pub fn encode_avro(&self, e: &Emitted, out: &mut Vec<u8>) {
        if self.plan.stateless {
            // Scalar fields are written here; a record with any other value (a nested
            // record, an array, an enum...) is written by apache-avro, which resolves the
            // schema on every call (3 times slower per event).
            let start = out.len();
            if self.plan.output.fields.iter().all(|f| match f.source {
                OutSource::Row(i) => e.row.get(i).is_some_and(|v| write_plain(v, &f.schema, out)),
                _ => false,
            }) {
                return;
            }
            out.truncate(start);
            match apache_avro::to_avro_datum(&self.plan.output.schema, self.output_value(e)) {
                Ok(b) => out.extend_from_slice(&b),
                // Validation checked the row's types against the output schema.
                Err(err) => tracing::error!(error = %err, "cannot encode a stateless result"),
            }
            return;
        }
        for f in &self.plan.output.fields {
            let s = match f.source {
                OutSource::Key(i) => e.key.get(i),
                OutSource::Agg(i) => e.results.get(i),
                OutSource::WindowStart | OutSource::WindowEnd | OutSource::Row(_) => None,
            };
            if let Schema::Union(u) = &f.schema {
                let is_null = matches!(s, None | Some(Scalar::Null))
                    && !matches!(f.source, OutSource::WindowStart | OutSource::WindowEnd);
                let branch = u
                    .variants()
                    .iter()
                    .position(|b| (*b == Schema::Null) == is_null)
                    .unwrap_or(0);
                zigzag(branch as i64, out);
                if is_null {
                    continue;
                }
            }
            match (f.source, s) {
                (OutSource::WindowStart, _) => zigzag(e.start, out),
                (OutSource::WindowEnd, _) => zigzag(e.end, out),
                (_, Some(Scalar::Int(i))) => match f.ty.kind {
                    Kind::Float => out.extend_from_slice(&(*i as f32).to_le_bytes()),
                    Kind::Double => out.extend_from_slice(&(*i as f64).to_le_bytes()),
                    _ => zigzag(*i, out),
                },
                (_, Some(Scalar::Float(x))) => match f.ty.kind {
                    Kind::Float => out.extend_from_slice(&(*x as f32).to_le_bytes()),
                    _ => out.extend_from_slice(&x.to_le_bytes()),
                },
                (_, Some(Scalar::Bool(b))) => out.push(u8::from(*b)),
                (_, Some(Scalar::Str(x))) => {
                    zigzag(x.len() as i64, out);
                    out.extend_from_slice(x.as_bytes());
                }
                (_, Some(Scalar::Bytes(x))) => {
                    zigzag(x.len() as i64, out);
                    out.extend_from_slice(x);
                }
                (_, Some(Scalar::Null) | None) => {}
            }
        }
    }

    /// The group key as a JSON object of the key fields (the Kafka record key and the
    /// key half of a PostgreSQL row's identity).
    pub fn key_json(&self, e: &Emitted, buf: &mut String) {
        let mut obj = serde_json::Map::new();
        for (i, k) in self.plan.output.key_fields.iter().enumerate() {
            let v = e
                .key
                .get(i)
                .cloned()
                .unwrap_or(Scalar::Null)
                .to_value(&k.ty);
            obj.insert(k.name.clone(), avro_to_json(&v));
        }
        buf.push_str(&serde_json::Value::Object(obj).to_string());
    }

    /// `pipeline/key/window start/sequence`: what identifies one emission, so a consumer
    /// can drop a re-emission after a crash. A stateless result is identified by its source
    /// record: `pipeline/topic/partition/offset`.
    pub fn event_id(&self, key_json: &str, e: &Emitted, buf: &mut String) {
        use std::fmt::Write;
        let _ = match &e.origin {
            Some(o) => write!(
                buf,
                "{}/{}/{}/{}",
                self.plan.name, o.topic, e.partition, o.offset
            ),
            None => write!(buf, "{}/{}/{}/{}", self.plan.name, key_json, e.start, e.seq),
        };
    }

    /// The Kafka record key: the group key's JSON, or a stateless pipeline's source key
    /// when it has no `key_by`.
    pub fn record_key<'a>(&self, key_json: &'a str, e: &'a Emitted) -> Option<&'a [u8]> {
        match &e.origin {
            Some(o) if self.plan.output.key_fields.is_empty() => o.key.as_deref(),
            _ => Some(key_json.as_bytes()),
        }
    }

    /// The derived event as one line of JSON, fields in output-schema order.
    pub fn output_json(&self, e: &Emitted, buf: &mut String) {
        buf.push_str(&avro_to_json(&self.output_value(e)).to_string());
    }
}

/// A value as the output field's schema wants it: a nullable field's value in its union
/// branch, the null branch for null (a value already in a union, as a decoded source row
/// may hold, is taken out of it first).
fn conform(v: Value, schema: &Schema) -> Value {
    let plain = match v {
        Value::Union(_, inner) => *inner,
        v => v,
    };
    match schema {
        Schema::Union(u) => {
            let null = plain == Value::Null;
            let branch = u
                .variants()
                .iter()
                .position(|b| (*b == Schema::Null) == null)
                .unwrap_or(0);
            Value::Union(branch as u32, Box::new(plain))
        }
        _ => plain,
    }
}

/// Writes a scalar `v` as `schema` (a nullable field: its union branch first) in Avro
/// binary; false, with `out` partly written, for anything else.
fn write_plain(v: &Value, schema: &Schema, out: &mut Vec<u8>) -> bool {
    let plain = match v {
        Value::Union(_, inner) => inner.as_ref(),
        v => v,
    };
    let schema = match schema {
        Schema::Union(u) => {
            let null = *plain == Value::Null;
            let Some(branch) = u
                .variants()
                .iter()
                .position(|b| (*b == Schema::Null) == null)
            else {
                return false;
            };
            zigzag(branch as i64, out);
            if null {
                return true;
            }
            &u.variants()[branch]
        }
        s => s,
    };
    match (plain, schema) {
        (Value::Null, Schema::Null) => {}
        (Value::Boolean(b), Schema::Boolean) => out.push(u8::from(*b)),
        (Value::Int(i), Schema::Int | Schema::Date | Schema::TimeMillis) => {
            zigzag(i64::from(*i), out)
        }
        (
            Value::Date(i) | Value::TimeMillis(i),
            Schema::Int | Schema::Date | Schema::TimeMillis,
        ) => zigzag(i64::from(*i), out),
        (
            Value::Long(i)
            | Value::TimestampMillis(i)
            | Value::TimestampMicros(i)
            | Value::LocalTimestampMillis(i)
            | Value::LocalTimestampMicros(i)
            | Value::TimeMicros(i),
            Schema::Long
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::TimeMicros,
        ) => zigzag(*i, out),
        (Value::Float(x), Schema::Float) => out.extend_from_slice(&x.to_le_bytes()),
        (Value::Double(x), Schema::Double) => out.extend_from_slice(&x.to_le_bytes()),
        (Value::String(x), Schema::String) => {
            zigzag(x.len() as i64, out);
            out.extend_from_slice(x.as_bytes());
        }
        (Value::Bytes(x), Schema::Bytes) => {
            zigzag(x.len() as i64, out);
            out.extend_from_slice(x);
        }
        _ => return false,
    }
    true
}

fn bound(t: i64, k: &Kind) -> Value {
    match k {
        Kind::TimestampMillis => Value::TimestampMillis(t),
        _ => Value::Long(t),
    }
}

#[cfg(test)]
mod tests {
    use super::write_plain;
    use apache_avro::types::Value;
    use apache_avro::Schema;

    /// The hand-written scalar encoding of a stateless result is apache-avro's, byte for
    /// byte, nullable fields (null and not) included; anything else is refused.
    #[test]
    fn plain_fields_encode_as_apache_avro_does() {
        let schema = Schema::parse_str(
            r#"{"type":"record","name":"R","fields":[
              {"name":"b","type":"boolean"},{"name":"i","type":"int"},{"name":"l","type":"long"},
              {"name":"f","type":"float"},{"name":"d","type":"double"},{"name":"s","type":"string"},
              {"name":"y","type":"bytes"},
              {"name":"t","type":{"type":"long","logicalType":"timestamp-millis"}},
              {"name":"n1","type":["null","long"]},{"name":"n2","type":["null","string"]},
              {"name":"n3","type":["string","null"]}]}"#,
        )
        .unwrap();
        let values = vec![
            Value::Boolean(true),
            Value::Int(-7),
            Value::Long(1 << 40),
            Value::Float(1.5),
            Value::Double(-2.25),
            Value::String("héllo".into()),
            Value::Bytes(vec![0, 255, 3]),
            Value::TimestampMillis(1_767_225_600_000),
            Value::Union(1, Box::new(Value::Long(42))),
            Value::Null,
            Value::String("x".into()),
        ];
        let Schema::Record(r) = &schema else { panic!() };
        let mut mine = Vec::new();
        for (f, v) in r.fields.iter().zip(&values) {
            assert!(write_plain(v, &f.schema, &mut mine), "{}", f.name);
        }
        let conformed: Vec<(String, Value)> = r
            .fields
            .iter()
            .zip(values)
            .map(|(f, v)| (f.name.clone(), super::conform(v, &f.schema)))
            .collect();
        let theirs = apache_avro::to_avro_datum(&schema, Value::Record(conformed)).unwrap();
        assert_eq!(mine, theirs);
        let arr = Schema::parse_str(r#"{"type":"array","items":"long"}"#).unwrap();
        assert!(!write_plain(&Value::Array(vec![]), &arr, &mut Vec::new()));
    }
}
