//! Per-event operators: row steps (`filter`, `map`), keying, window assignment and the
//! aggregate accumulators. Operators are pure: they never touch RocksDB or a sink; the
//! [`crate::state`] store keeps what they produce.

pub mod aggregate;
pub mod expr;
pub mod watermark;
pub mod window;

use crate::pipeline::compile::{KeyPlan, MapOut, Plan, RowStep};
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

/// The group key of a row, as scalars (for output) and as bytes (for state).
pub fn key_of(plan: &Plan, ev: &expr::Evaluator, row: &Row) -> Result<Vec<Scalar>, ExprError> {
    Ok(match &plan.key {
        KeyPlan::Fields(idx) => idx.iter().map(|i| Scalar::of(&row[*i])).collect(),
        KeyPlan::Expr(e) => vec![expr::to_scalar(ev.eval(e, row)?)],
    })
}

pub fn encode_key(key: &[Scalar]) -> Vec<u8> {
    bincode::serialize(key).unwrap_or_default()
}

pub fn decode_key(bytes: &[u8]) -> Vec<Scalar> {
    bincode::deserialize(bytes).unwrap_or_default()
}
