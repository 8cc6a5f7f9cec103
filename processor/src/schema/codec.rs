//! Bytes in, validated Avro records out; derived records in, Avro binary out.
//!
//! The decoder knows its writer schemas up front (by Confluent id) and checks each against
//! the reader schema once, when the pipeline is compiled; per record it only decodes, and
//! resolves to the reader schema only where the writer schema differs.
//!
//! The encoder is hand-written for the flat records Weir derives: apache-avro's `encode`
//! and `to_avro_datum` rebuild a name table for every call and validate the value first,
//! which dominates the cost of small records (measured with `weir bench`).

use super::json::{json_to_avro, Names};
use crate::pipeline::ValueFormat;
use apache_avro::schema::Schema;
use apache_avro::types::Value;
use std::collections::HashMap;

/// Why a record could not become an event. The variant names are the dead-letter reasons.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes are not the declared encoding at all.
    #[error("{0}")]
    Decode(String),
    /// The bytes decode, but not to an event of the reader schema.
    #[error("{0}")]
    Schema(String),
}

struct Writer {
    schema: Schema,
    /// The schema has no named-type references, so decoding needs no name table.
    flat: bool,
    /// The writer schema equals the reader schema: no resolution step.
    same: bool,
}

/// Decodes record values of one source into records of its reader schema.
pub struct Decoder {
    format: ValueFormat,
    reader: Schema,
    names: Names,
    reader_flat: bool,
    writers: HashMap<u32, Writer>,
}

impl Decoder {
    /// `writers`: schema id -> writer schema, for the Confluent wire format.
    /// Each must be readable as `reader` (checked by the caller with [`check_readable`]).
    pub fn new(format: ValueFormat, reader: Schema, writers: Vec<(u32, Schema)>) -> Decoder {
        let canon = reader.canonical_form();
        let writers = writers
            .into_iter()
            .map(|(id, schema)| {
                let same = schema.canonical_form() == canon;
                let flat = !has_refs(&schema);
                (id, Writer { schema, flat, same })
            })
            .collect();
        Decoder {
            format,
            names: Names::of(&reader),
            reader_flat: !has_refs(&reader),
            reader,
            writers,
        }
    }

    pub fn reader_schema(&self) -> &Schema {
        &self.reader
    }

    /// Decodes a JSON event, whatever the source's value format.
    pub fn decode_json(&self, bytes: &[u8]) -> Result<Value, DecodeError> {
        let json: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| DecodeError::Decode(format!("invalid JSON: {e}")))?;
        if !json.is_object() {
            return Err(DecodeError::Decode(format!(
                "expected a JSON object, got {json}"
            )));
        }
        json_to_avro(&json, &self.reader, &self.names).map_err(DecodeError::Schema)
    }

    pub fn decode(&self, bytes: &[u8]) -> Result<Value, DecodeError> {
        match self.format {
            ValueFormat::Json => self.decode_json(bytes),
            ValueFormat::AvroRaw => decode_datum(&self.reader, self.reader_flat, None, bytes),
            ValueFormat::Avro => {
                if bytes.len() < 5 {
                    return Err(DecodeError::Decode(format!(
                        "Confluent wire format needs at least 5 bytes, got {}",
                        bytes.len()
                    )));
                }
                if bytes[0] != 0 {
                    return Err(DecodeError::Decode(format!(
                        "Confluent wire format starts with magic byte 0, got {}",
                        bytes[0]
                    )));
                }
                let id = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
                let w = self.writers.get(&id).ok_or_else(|| {
                    DecodeError::Schema(format!(
                        "unknown writer schema id {id}; known ids: {:?}",
                        sorted_ids(&self.writers)
                    ))
                })?;
                let reader = if w.same { None } else { Some(&self.reader) };
                decode_datum(&w.schema, w.flat, reader, &bytes[5..])
            }
        }
    }
}

fn sorted_ids(w: &HashMap<u32, Writer>) -> Vec<u32> {
    let mut ids: Vec<u32> = w.keys().copied().collect();
    ids.sort_unstable();
    ids
}

/// Does the schema refer to a named type by name (which needs a name table to decode)?
fn has_refs(s: &Schema) -> bool {
    match s {
        Schema::Ref { .. } => true,
        Schema::Record(r) => r.fields.iter().any(|f| has_refs(&f.schema)),
        Schema::Array(a) => has_refs(&a.items),
        Schema::Map(m) => has_refs(&m.types),
        Schema::Union(u) => u.variants().iter().any(has_refs),
        _ => false,
    }
}

fn decode_datum(
    writer: &Schema,
    flat: bool,
    reader: Option<&Schema>,
    bytes: &[u8],
) -> Result<Value, DecodeError> {
    let mut cursor = bytes;
    // `from_avro_datum` rebuilds the writer's name table on every call; a schema without
    // references needs none, so pass an empty one (measured: the larger part of decode time).
    let decoded = if flat {
        apache_avro::from_avro_datum_schemata(writer, Vec::new(), &mut cursor, None)
    } else {
        apache_avro::from_avro_datum(writer, &mut cursor, None)
    };
    let v = decoded.map_err(|e| DecodeError::Decode(format!("invalid Avro binary: {e}")))?;
    if !cursor.is_empty() {
        return Err(DecodeError::Decode(format!(
            "invalid Avro binary: {} bytes left after the datum",
            cursor.len()
        )));
    }
    match reader {
        None => Ok(v),
        Some(r) => v
            .resolve(r)
            .map_err(|e| DecodeError::Schema(format!("cannot resolve to the reader schema: {e}"))),
    }
}

/// Says why data written with `writer` cannot be read as `reader`, if it cannot.
pub fn check_readable(writer: &Schema, reader: &Schema) -> Result<(), String> {
    apache_avro::schema_compatibility::SchemaCompatibility::can_read(writer, reader)
        .map_err(|e| e.to_string())
}

/// Encodes values of one schema to Avro binary without per-call schema walks.
pub struct RecordEncoder {
    schema: Schema,
}

impl RecordEncoder {
    pub fn new(schema: Schema) -> RecordEncoder {
        RecordEncoder { schema }
    }

    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// Appends the datum to `out`.
    pub fn encode(&self, value: &Value, out: &mut Vec<u8>) -> Result<(), String> {
        encode_value(value, &self.schema, out)
    }
}

fn zigzag(n: i64, out: &mut Vec<u8>) {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

fn encode_value(value: &Value, schema: &Schema, out: &mut Vec<u8>) -> Result<(), String> {
    match (value, schema) {
        (Value::Null, Schema::Null) => {}
        (Value::Boolean(b), Schema::Boolean) => out.push(u8::from(*b)),
        (Value::Int(i), Schema::Int)
        | (Value::Date(i), Schema::Date)
        | (Value::TimeMillis(i), Schema::TimeMillis) => zigzag(i64::from(*i), out),
        (Value::Long(i), Schema::Long)
        | (Value::Long(i), Schema::TimestampMillis)
        | (Value::TimestampMillis(i), Schema::TimestampMillis)
        | (Value::TimestampMillis(i), Schema::Long)
        | (Value::TimestampMicros(i), Schema::TimestampMicros)
        | (Value::TimeMicros(i), Schema::TimeMicros) => zigzag(*i, out),
        (Value::Float(f), Schema::Float) => out.extend_from_slice(&f.to_le_bytes()),
        (Value::Double(f), Schema::Double) => out.extend_from_slice(&f.to_le_bytes()),
        (Value::String(s), Schema::String) | (Value::Enum(_, s), Schema::String) => {
            zigzag(s.len() as i64, out);
            out.extend_from_slice(s.as_bytes());
        }
        (Value::Bytes(b), Schema::Bytes) => {
            zigzag(b.len() as i64, out);
            out.extend_from_slice(b);
        }
        (Value::Enum(i, _), Schema::Enum(_)) => zigzag(i64::from(*i), out),
        (Value::Union(i, inner), Schema::Union(u)) => {
            let s = u
                .variants()
                .get(*i as usize)
                .ok_or_else(|| format!("union index {i} out of range"))?;
            zigzag(i64::from(*i), out);
            encode_value(inner, s, out)?;
        }
        (v, Schema::Union(u)) => {
            // A plain value for a union: pick the branch it fits.
            let idx = if matches!(v, Value::Null) {
                u.variants().iter().position(|s| *s == Schema::Null)
            } else {
                u.variants().iter().position(|s| *s != Schema::Null)
            }
            .ok_or_else(|| "no union branch fits".to_string())?;
            zigzag(idx as i64, out);
            encode_value(v, &u.variants()[idx], out)?;
        }
        (Value::Record(fields), Schema::Record(r)) => {
            if fields.len() != r.fields.len() {
                return Err(format!(
                    "record {} has {} fields, the value {}",
                    r.name.fullname(None),
                    r.fields.len(),
                    fields.len()
                ));
            }
            for ((_, v), f) in fields.iter().zip(&r.fields) {
                encode_value(v, &f.schema, out)?;
            }
        }
        (v, s) => {
            let bytes = apache_avro::to_avro_datum(s, v.clone()).map_err(|e| e.to_string())?;
            out.extend_from_slice(&bytes);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const V2: &str = r#"{"type":"record","name":"click","fields":[
        {"name":"user","type":"string"},{"name":"n","type":"long"},
        {"name":"ref","type":["null","string"],"default":null}]}"#;
    const V1: &str = r#"{"type":"record","name":"click","fields":[
        {"name":"user","type":"string"},{"name":"n","type":"int"},{"name":"gone","type":"string"}]}"#;

    #[test]
    fn resolves_old_writer_and_rejects_garbage() {
        let v1 = Schema::parse_str(V1).unwrap();
        let v2 = Schema::parse_str(V2).unwrap();
        check_readable(&v1, &v2).unwrap();
        let dec = Decoder::new(
            ValueFormat::Avro,
            v2.clone(),
            vec![(1, v1.clone()), (2, v2)],
        );
        let old = Value::Record(vec![
            ("user".into(), Value::String("u".into())),
            ("n".into(), Value::Int(7)),
            ("gone".into(), Value::String("x".into())),
        ]);
        let mut bytes = vec![0, 0, 0, 0, 1];
        bytes.extend(apache_avro::to_avro_datum(&v1, old).unwrap());
        let v = dec.decode(&bytes).unwrap();
        assert_eq!(
            v,
            Value::Record(vec![
                ("user".into(), Value::String("u".into())),
                ("n".into(), Value::Long(7)),
                ("ref".into(), Value::Union(0, Box::new(Value::Null))),
            ])
        );
        assert!(matches!(dec.decode(&[1, 2]), Err(DecodeError::Decode(_))));
        assert!(matches!(
            dec.decode(&[0, 0, 0, 0, 9, 1]),
            Err(DecodeError::Schema(_))
        ));
        assert!(matches!(
            dec.decode(&[0, 0, 0, 0, 2, 0xff]),
            Err(DecodeError::Decode(_))
        ));
    }

    #[test]
    fn encoder_matches_apache_avro() {
        let s = Schema::parse_str(V2).unwrap();
        let v = Value::Record(vec![
            ("user".into(), Value::String("ü".into())),
            ("n".into(), Value::Long(-300)),
            (
                "ref".into(),
                Value::Union(1, Box::new(Value::String("r".into()))),
            ),
        ]);
        let mut out = Vec::new();
        RecordEncoder::new(s.clone()).encode(&v, &mut out).unwrap();
        assert_eq!(out, apache_avro::to_avro_datum(&s, v).unwrap());
    }
}
