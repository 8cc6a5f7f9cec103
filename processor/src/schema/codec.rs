//! Bytes in, validated Avro records out; derived records in, Avro binary out.
//!
//! The decoder knows its writer schemas up front (by Confluent id) and checks each against
//! the reader schema once, when the pipeline is compiled; per record it only decodes, and
//! resolves to the reader schema only where the writer schema differs.
//!
//! Flat records (primitive, logical, enum, fixed and union fields: the common shape of
//! events) are decoded by [`FlatRecord`] straight into a row; everything else goes through
//! apache-avro. Derived events are encoded by `runtime::engine::ResultFormat::encode_avro`
//! with [`zigzag`]: apache-avro's `to_avro_datum` rebuilds a name table and validates the
//! value on every call.

pub use super::binary::{zigzag, DecodeError};
use super::bounds::check_lengths;
use super::flat::FlatRecord;
use super::json::{json_to_avro, Names};
use super::ValueFormat;
use apache_avro::schema::Schema;
use apache_avro::types::Value;
use std::collections::HashMap;

struct Writer {
    schema: Schema,
    /// The schema has no named-type references, so decoding needs no name table.
    flat: bool,
    /// The writer schema equals the reader schema: no resolution step.
    same: bool,
    /// Set when `same` and the record is flat: the fast path.
    rec: Option<FlatRecord>,
}

impl Writer {
    fn of(schema: Schema, reader_canon: &str) -> Writer {
        let same = schema.canonical_form() == reader_canon;
        let flat = !has_refs(&schema);
        let rec = if same { FlatRecord::of(&schema) } else { None };
        Writer {
            schema,
            flat,
            same,
            rec,
        }
    }
}

/// Decodes record values of one source into records of its reader schema.
pub struct Decoder {
    format: ValueFormat,
    reader: Schema,
    names: Names,
    reader_flat: bool,
    reader_rec: Option<FlatRecord>,
    writers: HashMap<u32, Writer>,
}

impl Decoder {
    /// `writers`: schema id -> writer schema, for the Confluent wire format.
    /// Each must be readable as `reader` (checked by the caller with [`check_readable`]).
    pub fn new(format: ValueFormat, reader: Schema, writers: Vec<(u32, Schema)>) -> Decoder {
        let canon = reader.canonical_form();
        let writers = writers
            .into_iter()
            .map(|(id, schema)| (id, Writer::of(schema, &canon)))
            .collect();
        Decoder {
            format,
            names: Names::of(&reader),
            reader_flat: !has_refs(&reader),
            reader_rec: FlatRecord::of(&reader),
            reader,
            writers,
        }
    }

    /// The Confluent schema id of a framed value, if this decoder does not know it yet
    /// (the runtime then asks the schema registry).
    pub fn unknown_writer_id(&self, bytes: &[u8]) -> Option<u32> {
        if self.format != ValueFormat::Avro || bytes.len() < 5 || bytes[0] != 0 {
            return None;
        }
        let id = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
        (!self.writers.contains_key(&id)).then_some(id)
    }

    /// Adds a writer schema fetched from a registry, after checking it is readable as the
    /// reader schema.
    pub fn add_writer(&mut self, id: u32, schema: Schema) -> Result<(), String> {
        check_readable(&schema, &self.reader)?;
        let canon = self.reader.canonical_form();
        self.writers.insert(id, Writer::of(schema, &canon));
        Ok(())
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
                let (w, body) = self.framed(bytes)?;
                let reader = if w.same { None } else { Some(&self.reader) };
                decode_datum(&w.schema, w.flat, reader, body)
            }
        }
    }

    /// Splits a Confluent-framed value into its writer schema and the Avro body.
    fn framed<'b>(&self, bytes: &'b [u8]) -> Result<(&Writer, &'b [u8]), DecodeError> {
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
        Ok((w, &bytes[5..]))
    }

    /// Decodes bytes in the source format into the field values of the reader schema, in
    /// order. Fields whose `keep` flag is false may be left `Null` (the pipeline does not
    /// read them); they are validated all the same.
    pub fn decode_row(&self, bytes: &[u8], keep: &[bool]) -> Result<Vec<Value>, DecodeError> {
        match self.format {
            ValueFormat::AvroRaw => {
                if let Some(rec) = &self.reader_rec {
                    return rec.decode(bytes, keep);
                }
            }
            ValueFormat::Avro => {
                let (w, body) = self.framed(bytes)?;
                if let Some(rec) = &w.rec {
                    return rec.decode(body, keep);
                }
            }
            ValueFormat::Json => {}
        }
        into_row(self.decode(bytes)?)
    }

    /// [`Decoder::decode_json`], as a row.
    pub fn decode_json_row(&self, bytes: &[u8]) -> Result<Vec<Value>, DecodeError> {
        into_row(self.decode_json(bytes)?)
    }
}

/// The first field of a decoded row holding a NaN or an infinity (at any depth), if any.
/// Avro can carry them, but Weir refuses them in events: one NaN makes every sum and
/// average of its window NaN, and JSON has no number for either.
pub fn non_finite_field(row: &[Value]) -> Option<usize> {
    fn non_finite(v: &Value) -> bool {
        match v {
            Value::Double(f) => !f.is_finite(),
            Value::Float(f) => !f.is_finite(),
            Value::Union(_, inner) => non_finite(inner),
            Value::Array(items) => items.iter().any(non_finite),
            Value::Map(m) => m.values().any(non_finite),
            Value::Record(fields) => fields.iter().any(|(_, v)| non_finite(v)),
            _ => false,
        }
    }
    row.iter().position(non_finite)
}

/// The field values of a decoded record.
pub fn into_row(v: Value) -> Result<Vec<Value>, DecodeError> {
    match v {
        Value::Record(fields) => Ok(fields.into_iter().map(|(_, v)| v).collect()),
        other => Err(DecodeError::Schema(format!(
            "expected a record, got {other:?}"
        ))),
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
    check_lengths(writer, bytes)?;
    let mut cursor = bytes;
    // `from_avro_datum` rebuilds the writer's name table on every call; a schema without
    // references needs none, so pass an empty one.
    let decoded = if flat {
        apache_avro::from_avro_datum_schemata(writer, Vec::new(), &mut cursor, None)
    } else {
        apache_avro::from_avro_datum(writer, &mut cursor, None)
    };
    let v = decoded.map_err(|e| DecodeError::Decode(format!("invalid Avro binary: {e}")))?;
    // apache-avro 0.20 reads a boolean, string or union index cut off by the end of the
    // input as null (decode.rs), so a truncated datum can "decode" with nulls in fields
    // that cannot hold one. Found by fuzzing (fuzz/fuzz_targets/avro_decode.rs).
    if !v.validate(writer) {
        return Err(DecodeError::Decode(
            "invalid Avro binary: the datum ends before its last field".into(),
        ));
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    const V2: &str = r#"{"type":"record","name":"click","fields":[
        {"name":"user","type":"string"},{"name":"n","type":"long"},
        {"name":"ref","type":["null","string"],"default":null}]}"#;
    const V1: &str = r#"{"type":"record","name":"click","fields":[
        {"name":"user","type":"string"},{"name":"n","type":"int"},{"name":"gone","type":"string"}]}"#;

    /// Found by fuzzing: a datum cut off inside a string decoded through apache-avro as a
    /// null in a non-nullable field, while the fast decoder refused it. Both refuse it now.
    /// Found by fuzzing: this 60-byte datum of golden/complex_types' schema claims a map
    /// block of hundreds of millions of entries; apache-avro reserved them (21 GB) and the
    /// process died. It is refused before apache-avro reads it.
    #[test]
    fn a_block_count_larger_than_the_datum_is_refused_before_allocating() {
        let schema = Schema::parse_str(include_str!(
            "../../../tests/golden/complex_types/input.avsc"
        ))
        .unwrap();
        let dec = Decoder::new(ValueFormat::AvroRaw, schema, vec![]);
        let bytes = [
            0xa0, 0x00, 0x00, 0x05, 0x00, 0x69, 0x74, 0x65, 0x00, 0x00, 0x00, 0x00, 0x6d, 0x00,
            0x00, 0x00, 0x00, 0xa7, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0x71, 0x65, 0x64, 0x00,
            0x00, 0x00, 0x05, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x5a, 0x5a, 0x5a, 0x5a,
            0x5a, 0x5a, 0xff, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xf9, 0xff, 0xff, 0xdf,
            0xff, 0x00, 0xff,
        ];
        let err = dec.decode(&bytes).unwrap_err();
        assert!(matches!(err, DecodeError::Decode(_)), "{err:?}");
    }

    /// Found by fuzzing: a 10-byte varint whose last byte carries bits past the 64th.
    /// apache-avro (and Java) drop them; the fast decoder refused the record. They agree now.
    #[test]
    fn an_overlong_varint_reads_the_same_on_both_paths() {
        let schema = Schema::parse_str(
            r#"{"type":"record","name":"E","fields":[{"name":"n","type":"long"}]}"#,
        )
        .unwrap();
        let dec = Decoder::new(ValueFormat::AvroRaw, schema, vec![]);
        let bytes = [0xff, 0xff, 0xff, 0xff, 0xa7, 0xff, 0xff, 0xff, 0xff, 0x70];
        let slow = into_row(dec.decode(&bytes).unwrap()).unwrap();
        assert_eq!(dec.decode_row(&bytes, &[true]).unwrap(), slow);
        // One more continuation byte is an overflow for both.
        let mut longer = bytes;
        longer[9] = 0xf0;
        assert!(dec.decode(&longer).is_err());
        assert!(dec.decode_row(&longer, &[true]).is_err());
    }

    #[test]
    fn a_truncated_datum_is_refused_on_both_paths() {
        let schema = Schema::parse_str(
            r#"{"type":"record","name":"E","fields":[{"name":"user","type":"string"},
            {"name":"n","type":"long"},{"name":"channel","type":"string","default":"web"}]}"#,
        )
        .unwrap();
        let dec = Decoder::new(ValueFormat::AvroRaw, schema, vec![]);
        // "b", -1, then a string of 49 bytes that never come.
        let bytes = [0x02, 0x62, 0x01, 0x62];
        assert!(matches!(dec.decode(&bytes), Err(DecodeError::Decode(_))));
        assert!(matches!(
            dec.decode_row(&bytes, &[true; 3]),
            Err(DecodeError::Decode(_))
        ));
    }

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
    fn flat_decoder_matches_apache_avro() {
        let s = Schema::parse_str(
            r#"{"type":"record","name":"r","fields":[
            {"name":"a","type":"long"},{"name":"b","type":["null","string"]},
            {"name":"c","type":{"type":"enum","name":"E","symbols":["X","Y"]}},
            {"name":"d","type":{"type":"long","logicalType":"timestamp-millis"}},
            {"name":"e","type":"double"},{"name":"f","type":"boolean"},
            {"name":"g","type":{"type":"fixed","name":"F","size":2}},{"name":"h","type":"int"}]}"#,
        )
        .unwrap();
        let v = Value::Record(vec![
            ("a".into(), Value::Long(-1234567890123)),
            (
                "b".into(),
                Value::Union(1, Box::new(Value::String("hé".into()))),
            ),
            ("c".into(), Value::Enum(1, "Y".into())),
            ("d".into(), Value::TimestampMillis(1_700_000_000_000)),
            ("e".into(), Value::Double(2.5)),
            ("f".into(), Value::Boolean(true)),
            ("g".into(), Value::Fixed(2, vec![1, 2])),
            ("h".into(), Value::Int(-7)),
        ]);
        let bytes = apache_avro::to_avro_datum(&s, v.clone()).unwrap();
        let rec = FlatRecord::of(&s).unwrap();
        let row = rec.decode(&bytes, &[true; 8]).unwrap();
        assert_eq!(into_row(v).unwrap(), row);
        // Skipped fields are still validated.
        let skip = [true, false, false, true, true, true, false, true];
        assert_eq!(rec.decode(&bytes, &skip).unwrap()[1], Value::Null);
        for cut in 0..bytes.len() {
            assert!(
                rec.decode(&bytes[..cut], &skip).is_err(),
                "truncated at {cut}"
            );
        }
        let mut bad_enum = bytes.clone();
        let enum_pos = 1 + 6 + 4; // a (6-byte varint), union index, "hé" (1 + 3 bytes)
        bad_enum[enum_pos] = 9;
        assert!(rec.decode(&bad_enum, &skip).is_err());
    }
}
