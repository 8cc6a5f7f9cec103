//! Per-event operators: row steps (`filter`, `map`), keying, window assignment and the
//! aggregate accumulators. Operators are pure: they never touch RocksDB or a sink; the
//! [`crate::state`] store keeps what they produce.

pub mod aggregate;
pub mod expr;
pub mod repartition;
pub mod watermark;
pub mod window;

use crate::pipeline::plan::{KeyPlan, MapOut, Plan, RowStep};
use crate::schema::{FieldType, Kind};
use apache_avro::types::Value;
use serde::{Deserialize, Serialize};

/// An event between steps: field values in the order the plan names them.
pub type Row = Vec<Value>;

/// A scalar as keys and accumulators hold it: one representation per family of Avro types,
/// converted back to the declared output type when a result is emitted.
#[derive(Debug, Clone, PartialEq, PartialOrd, Serialize, Deserialize)]
pub enum Scalar {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
}

impl Scalar {
    pub fn of(v: &Value) -> Scalar {
        match v {
            Value::Null => Scalar::Null,
            Value::Boolean(b) => Scalar::Bool(*b),
            Value::Int(i) | Value::Date(i) | Value::TimeMillis(i) => Scalar::Int(i64::from(*i)),
            Value::Long(i)
            | Value::TimeMicros(i)
            | Value::TimestampMillis(i)
            | Value::TimestampMicros(i)
            | Value::TimestampNanos(i)
            | Value::LocalTimestampMillis(i)
            | Value::LocalTimestampMicros(i)
            | Value::LocalTimestampNanos(i) => Scalar::Int(*i),
            Value::Float(f) => Scalar::Float(f64::from(*f)),
            Value::Double(f) => Scalar::Float(*f),
            Value::String(s) | Value::Enum(_, s) => Scalar::Str(s.clone()),
            Value::Uuid(u) => Scalar::Str(u.to_string()),
            Value::Bytes(b) | Value::Fixed(_, b) => Scalar::Bytes(b.clone()),
            Value::Union(_, inner) => Scalar::of(inner),
            other => Scalar::Str(format!("{other:?}")),
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Scalar::Int(i) => Some(*i as f64),
            Scalar::Float(f) => Some(*f),
            _ => None,
        }
    }

    /// The Avro value of an output field of type `ty`.
    pub fn to_value(&self, ty: &FieldType) -> Value {
        match (self, &ty.kind) {
            (Scalar::Null, _) => Value::Null,
            (Scalar::Bool(b), _) => Value::Boolean(*b),
            (Scalar::Int(i), Kind::Int) => Value::Int(*i as i32),
            (Scalar::Int(i), Kind::Date) => Value::Date(*i as i32),
            (Scalar::Int(i), Kind::TimeMillis) => Value::TimeMillis(*i as i32),
            (Scalar::Int(i), Kind::TimeMicros) => Value::TimeMicros(*i),
            (Scalar::Int(i), Kind::TimestampMillis) => Value::TimestampMillis(*i),
            (Scalar::Int(i), Kind::TimestampMicros) => Value::TimestampMicros(*i),
            (Scalar::Int(i), Kind::Float) => Value::Float(*i as f32),
            (Scalar::Int(i), Kind::Double) => Value::Double(*i as f64),
            (Scalar::Int(i), _) => Value::Long(*i),
            (Scalar::Float(f), Kind::Float) => Value::Float(*f as f32),
            (Scalar::Float(f), _) => Value::Double(*f),
            (Scalar::Str(s), _) => Value::String(s.clone()),
            (Scalar::Bytes(b), _) => Value::Bytes(b.clone()),
        }
    }
}

/// Why an event left the pipeline before reaching a window.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ExprError(pub String);

/// Runs the row steps; `Ok(None)` when a filter drops the event.
pub fn apply_row_steps(
    plan: &Plan,
    ev: &expr::Evaluator,
    mut row: Row,
) -> Result<Option<Row>, ExprError> {
    for step in &plan.row_steps {
        match step {
            RowStep::Filter(e) => match ev.eval(e, &row)? {
                cel_interpreter::Value::Bool(true) => {}
                cel_interpreter::Value::Bool(false) => return Ok(None),
                other => {
                    return Err(ExprError(format!(
                        "filter `{}` returned {other:?}, not a boolean",
                        e.text
                    )))
                }
            },
            RowStep::Map(outs) => {
                let mut next = Vec::with_capacity(outs.len());
                for o in outs {
                    next.push(match o {
                        MapOut::Field(i) => row[*i].clone(),
                        MapOut::Expr(e, ty) => expr::to_avro(ev.eval(e, &row)?, ty, &e.text)?,
                    });
                }
                row = next;
            }
        }
    }
    Ok(Some(row))
}

/// Appends the group key of a row to `out` in the key encoding (see [`encode_key`]).
pub fn key_of(
    plan: &Plan,
    ev: &expr::Evaluator,
    row: &Row,
    out: &mut Vec<u8>,
) -> Result<(), ExprError> {
    out.clear();
    match &plan.key {
        KeyPlan::Fields(idx) => {
            for i in idx {
                encode_value_key(&row[*i], out);
            }
        }
        KeyPlan::Expr(e) => encode_key_part(&expr::to_scalar(ev.eval(e, row)?), out),
    }
    Ok(())
}

// Key encoding: order-preserving ("memcomparable"), so that sorting encoded keys as bytes
// sorts them as `Scalar`s: a tag per type (in `Scalar`'s variant order), integers
// big-endian with the sign bit flipped, floats in their total order, strings and bytes with
// 0x00 escaped as 0x00 0xFF and terminated by 0x00 0x00.
const T_NULL: u8 = 0;
const T_BOOL: u8 = 1;
const T_INT: u8 = 2;
const T_FLOAT: u8 = 3;
const T_STR: u8 = 4;
const T_BYTES: u8 = 5;

fn put_escaped(tag: u8, b: &[u8], out: &mut Vec<u8>) {
    out.push(tag);
    for &c in b {
        out.push(c);
        if c == 0 {
            out.push(0xff);
        }
    }
    out.extend_from_slice(&[0, 0]);
}

fn put_int(i: i64, out: &mut Vec<u8>) {
    out.push(T_INT);
    out.extend_from_slice(&((i as u64) ^ (1 << 63)).to_be_bytes());
}

fn put_float(f: f64, out: &mut Vec<u8>) {
    let bits = f.to_bits();
    let ordered = if bits >> 63 == 1 {
        !bits
    } else {
        bits ^ (1 << 63)
    };
    out.push(T_FLOAT);
    out.extend_from_slice(&ordered.to_be_bytes());
}

/// Encodes one key part straight from an Avro value (no intermediate `Scalar`).
fn encode_value_key(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Null => out.push(T_NULL),
        Value::Boolean(b) => out.extend_from_slice(&[T_BOOL, u8::from(*b)]),
        Value::Int(i) | Value::Date(i) | Value::TimeMillis(i) => put_int(i64::from(*i), out),
        Value::Long(i)
        | Value::TimeMicros(i)
        | Value::TimestampMillis(i)
        | Value::TimestampMicros(i)
        | Value::LocalTimestampMillis(i)
        | Value::LocalTimestampMicros(i) => put_int(*i, out),
        Value::Float(f) => put_float(f64::from(*f), out),
        Value::Double(f) => put_float(*f, out),
        Value::String(s) | Value::Enum(_, s) => put_escaped(T_STR, s.as_bytes(), out),
        Value::Bytes(b) | Value::Fixed(_, b) => put_escaped(T_BYTES, b, out),
        Value::Union(_, inner) => encode_value_key(inner, out),
        other => encode_key_part(&Scalar::of(other), out),
    }
}

fn encode_key_part(s: &Scalar, out: &mut Vec<u8>) {
    match s {
        Scalar::Null => out.push(T_NULL),
        Scalar::Bool(b) => out.extend_from_slice(&[T_BOOL, u8::from(*b)]),
        Scalar::Int(i) => put_int(*i, out),
        Scalar::Float(f) => put_float(*f, out),
        Scalar::Str(s) => put_escaped(T_STR, s.as_bytes(), out),
        Scalar::Bytes(b) => put_escaped(T_BYTES, b, out),
    }
}

/// Encodes a whole key.
pub fn encode_key(key: &[Scalar]) -> Vec<u8> {
    let mut out = Vec::new();
    for s in key {
        encode_key_part(s, &mut out);
    }
    out
}

fn take_escaped(b: &[u8], mut i: usize) -> Option<(Vec<u8>, usize)> {
    let mut v = Vec::new();
    loop {
        let c = *b.get(i)?;
        if c == 0 {
            match *b.get(i + 1)? {
                0 => return Some((v, i + 2)),
                0xff => {
                    v.push(0);
                    i += 2;
                }
                _ => return None,
            }
        } else {
            v.push(c);
            i += 1;
        }
    }
}

fn take8(b: &[u8], i: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(i..i + 8)?.try_into().ok()?))
}

/// Decodes a key written by [`encode_key`] or [`key_of`]; `None` if the bytes are not one.
pub fn decode_key(b: &[u8]) -> Option<Vec<Scalar>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let tag = b[i];
        i += 1;
        out.push(match tag {
            T_NULL => Scalar::Null,
            T_BOOL => {
                i += 1;
                Scalar::Bool(*b.get(i - 1)? != 0)
            }
            T_INT => {
                i += 8;
                Scalar::Int((take8(b, i - 8)? ^ (1 << 63)) as i64)
            }
            T_FLOAT => {
                let o = take8(b, i)?;
                i += 8;
                let bits = if o >> 63 == 1 { o ^ (1 << 63) } else { !o };
                Scalar::Float(f64::from_bits(bits))
            }
            T_STR => {
                let (v, next) = take_escaped(b, i)?;
                i = next;
                Scalar::Str(String::from_utf8(v).ok()?)
            }
            T_BYTES => {
                let (v, next) = take_escaped(b, i)?;
                i = next;
                Scalar::Bytes(v)
            }
            _ => return None,
        });
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_encoding_round_trips_and_sorts_like_scalars() {
        let keys = vec![
            vec![Scalar::Null],
            vec![Scalar::Bool(false)],
            vec![Scalar::Int(-5), Scalar::Str("a".into())],
            vec![Scalar::Int(-5), Scalar::Str("a\0".into())],
            vec![Scalar::Int(3), Scalar::Str("".into())],
            vec![Scalar::Float(-1.5)],
            vec![Scalar::Float(0.0)],
            vec![Scalar::Float(2.25)],
            vec![Scalar::Str("a".into())],
            vec![Scalar::Str("a\u{0}b".into())],
            vec![Scalar::Str("ab".into())],
            vec![Scalar::Bytes(vec![0, 0, 1])],
        ];
        let enc: Vec<Vec<u8>> = keys.iter().map(|k| encode_key(k)).collect();
        for (k, e) in keys.iter().zip(&enc) {
            assert_eq!(decode_key(e).as_ref(), Some(k));
        }
        for w in enc.windows(2) {
            assert!(w[0] < w[1], "{w:?}");
        }
        assert_eq!(decode_key(&[9]), None);
    }
}
