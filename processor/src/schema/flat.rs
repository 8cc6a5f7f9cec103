//! The fast decoder for flat records (primitive, logical, enum, fixed and union fields:
//! the common shape of events), straight from Avro binary into a row.

use super::binary::{bad, Cursor, DecodeError, Prim};
use apache_avro::schema::Schema;
use apache_avro::types::Value;

#[derive(Debug, Clone)]
pub(super) enum FlatField {
    One(Prim),
    Union(Vec<Prim>),
}

/// A record whose fields are primitives, logical types, enums, fixed or unions of those:
/// the common shape of events. Such a record is decoded straight into a row, skipping
/// (but still validating) the fields the pipeline does not read, with no per-field name
/// strings (in `weir bench`'s profile, apache-avro's generic decode spent most of its time
/// allocating field names and values the pipeline never reads).
#[derive(Debug, Clone)]
pub struct FlatRecord {
    fields: Vec<FlatField>,
}

pub(super) fn prim_of(s: &Schema) -> Option<Prim> {
    Some(match s {
        Schema::Null => Prim::Null,
        Schema::Boolean => Prim::Boolean,
        Schema::Int => Prim::Int,
        Schema::Long => Prim::Long,
        Schema::Float => Prim::Float,
        Schema::Double => Prim::Double,
        Schema::Bytes => Prim::Bytes,
        Schema::String => Prim::String,
        Schema::Enum(e) => Prim::Enum(e.symbols.clone()),
        Schema::Fixed(f) => Prim::Fixed(f.size),
        Schema::Date => Prim::Date,
        Schema::TimeMillis => Prim::TimeMillis,
        Schema::TimeMicros => Prim::TimeMicros,
        Schema::TimestampMillis => Prim::TsMillis,
        Schema::TimestampMicros => Prim::TsMicros,
        Schema::LocalTimestampMillis => Prim::LocalTsMillis,
        Schema::LocalTimestampMicros => Prim::LocalTsMicros,
        Schema::Uuid => Prim::Uuid,
        _ => return None,
    })
}

impl FlatRecord {
    pub fn of(schema: &Schema) -> Option<FlatRecord> {
        let Schema::Record(r) = schema else {
            return None;
        };
        let fields = r
            .fields
            .iter()
            .map(|f| match &f.schema {
                Schema::Union(u) => u
                    .variants()
                    .iter()
                    .map(prim_of)
                    .collect::<Option<Vec<_>>>()
                    .map(FlatField::Union),
                s => prim_of(s).map(FlatField::One),
            })
            .collect::<Option<Vec<_>>>()?;
        Some(FlatRecord { fields })
    }

    /// Decodes one datum into a row; fields with `keep[i] == false` become `Null`.
    pub fn decode(&self, bytes: &[u8], keep: &[bool]) -> Result<Vec<Value>, DecodeError> {
        let mut r = Cursor::new(bytes);
        let mut row = Vec::with_capacity(self.fields.len());
        for (i, f) in self.fields.iter().enumerate() {
            let k = keep.get(i).copied().unwrap_or(true);
            let v = match f {
                FlatField::One(p) => r.prim(p, k)?,
                FlatField::Union(ps) => {
                    let idx = r.long()?;
                    let p = usize::try_from(idx)
                        .ok()
                        .and_then(|i| ps.get(i))
                        .ok_or_else(|| bad(format!("union index {idx} out of range")))?;
                    let inner = r.prim(p, k)?;
                    if k {
                        Value::Union(idx as u32, Box::new(inner))
                    } else {
                        Value::Null
                    }
                }
            };
            row.push(v);
        }
        if r.pos != bytes.len() {
            return Err(bad(format!(
                "{} bytes left after the datum",
                bytes.len() - r.pos
            )));
        }
        Ok(row)
    }
}
