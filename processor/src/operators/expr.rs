//! CEL expressions over rows (the `cel-interpreter` crate). Only the fields an expression
//! references are converted into its context, and the function registry is built once.

use super::{ExprError, Row, Scalar};
use crate::pipeline::plan::Expr;
use crate::schema::{FieldType, Kind};
use apache_avro::types::Value;
use cel_interpreter::objects::{Key, Map};
use cel_interpreter::{Context, Value as Cel};
use std::collections::HashMap;
use std::sync::Arc;

/// Holds the CEL function registry, built once.
#[derive(Default)]
pub struct Evaluator {
    root: Context<'static>,
}

impl Evaluator {
    pub fn eval(&self, e: &Expr, row: &Row) -> Result<Cel, ExprError> {
        let mut ctx = self.root.new_inner_scope();
        for (name, idx) in &e.vars {
            ctx.add_variable_from_value(name.as_str(), to_cel(&row[*idx]));
        }
        e.program
            .execute(&ctx)
            .map_err(|err| ExprError(format!("`{}` failed: {err}", e.text)))
    }
}

pub fn to_cel(v: &Value) -> Cel {
    match v {
        Value::Null => Cel::Null,
        Value::Boolean(b) => Cel::Bool(*b),
        Value::Union(_, inner) => to_cel(inner),
        Value::Float(f) => Cel::Float(f64::from(*f)),
        Value::Double(f) => Cel::Float(*f),
        Value::String(s) | Value::Enum(_, s) => Cel::String(Arc::new(s.clone())),
        Value::Bytes(b) | Value::Fixed(_, b) => Cel::Bytes(Arc::new(b.clone())),
        Value::Array(items) => Cel::List(Arc::new(items.iter().map(to_cel).collect())),
        Value::Map(m) => {
            let map: HashMap<Key, Cel> = m
                .iter()
                .map(|(k, v)| (Key::String(Arc::new(k.clone())), to_cel(v)))
                .collect();
            Cel::Map(Map { map: Arc::new(map) })
        }
        Value::Record(fields) => {
            let map: HashMap<Key, Cel> = fields
                .iter()
                .map(|(k, v)| (Key::String(Arc::new(k.clone())), to_cel(v)))
                .collect();
            Cel::Map(Map { map: Arc::new(map) })
        }
        other => match Scalar::of(other) {
            Scalar::Int(i) => Cel::Int(i),
            Scalar::Float(f) => Cel::Float(f),
            Scalar::Str(s) => Cel::String(Arc::new(s)),
            Scalar::Bytes(b) => Cel::Bytes(Arc::new(b)),
            Scalar::Bool(b) => Cel::Bool(b),
            Scalar::Null => Cel::Null,
        },
    }
}

pub fn to_scalar(v: Cel) -> Scalar {
    match v {
        Cel::Null => Scalar::Null,
        Cel::Bool(b) => Scalar::Bool(b),
        Cel::Int(i) => Scalar::Int(i),
        Cel::UInt(u) => Scalar::Int(u as i64),
        Cel::Float(f) => Scalar::Float(f),
        Cel::String(s) => Scalar::Str(s.to_string()),
        Cel::Bytes(b) => Scalar::Bytes(b.to_vec()),
        Cel::Timestamp(t) => Scalar::Int(t.timestamp_millis()),
        Cel::Duration(d) => Scalar::Int(d.num_milliseconds()),
        other => Scalar::Str(format!("{other:?}")),
    }
}

/// Converts an expression result to the declared type of a computed field.
pub fn to_avro(v: Cel, ty: &FieldType, text: &str) -> Result<Value, ExprError> {
    let wrong = |v: &Cel| {
        ExprError(format!(
            "`{text}` returned {v:?}, which is not {}{}",
            ty.kind.name(),
            if ty.nullable { " or null" } else { "" }
        ))
    };
    Ok(match (&v, &ty.kind) {
        (Cel::Null, _) if ty.nullable => Value::Null,
        (Cel::Bool(b), Kind::Boolean) => Value::Boolean(*b),
        (Cel::Int(i), Kind::Int) => Value::Int(i32::try_from(*i).map_err(|_| wrong(&v))?),
        (Cel::UInt(i), Kind::Int) => Value::Int(i32::try_from(*i).map_err(|_| wrong(&v))?),
        (Cel::Int(i), Kind::Long) => Value::Long(*i),
        (Cel::UInt(i), Kind::Long) => Value::Long(i64::try_from(*i).map_err(|_| wrong(&v))?),
        (Cel::Int(i), Kind::TimestampMillis) => Value::TimestampMillis(*i),
        (Cel::Timestamp(t), Kind::TimestampMillis) => Value::TimestampMillis(t.timestamp_millis()),
        (Cel::Int(i), Kind::Double) => Value::Double(*i as f64),
        (Cel::Float(f), Kind::Double | Kind::Float) if !f.is_finite() => {
            return Err(ExprError(format!(
                "`{text}` returned {f}, and events carry finite numbers only"
            )))
        }
        (Cel::Float(f), Kind::Double) => Value::Double(*f),
        (Cel::Int(i), Kind::Float) => Value::Float(*i as f32),
        (Cel::Float(f), Kind::Float) => Value::Float(*f as f32),
        (Cel::String(s), Kind::String) => Value::String(s.to_string()),
        (Cel::Bytes(b), Kind::Bytes) => Value::Bytes(b.to_vec()),
        _ => return Err(wrong(&v)),
    })
}
