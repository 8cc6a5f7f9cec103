//! The plan: an executable pipeline, every name resolved to an index and every duration
//! in milliseconds. [`super::compile`] makes it from a definition; the engine runs it.

use super::{AggFn, SinkDef, StateDef, ValueFormat};
use crate::schema::FieldType;
use apache_avro::Schema;
use cel_interpreter::Program;

/// An executable pipeline: every name resolved, every duration in milliseconds.
pub struct Plan {
    pub name: String,
    pub source: SourcePlan,
    pub row_steps: Vec<RowStep>,
    pub key: KeyPlan,
    pub window: WindowPlan,
    pub aggs: Vec<AggPlan>,
    pub emit: EmitPlan,
    pub output: OutputPlan,
    pub sinks: Vec<SinkDef>,
    pub dead_letter: Option<SinkDef>,
    pub state: StateDef,
}

pub struct SourcePlan {
    pub topics: Vec<String>,
    pub group: String,
    pub format: ValueFormat,
    pub reader_schema: Schema,
    pub writer_schemas: Vec<(u32, Schema)>,
    pub event_time: EventTime,
    /// Which reader-schema fields the pipeline reads (the decoder may skip the others).
    pub needed: Vec<bool>,
    pub max_out_of_orderness_ms: i64,
    pub idle_timeout_ms: Option<i64>,
}

#[derive(Debug, Clone)]
pub enum EventTime {
    RecordTimestamp,
    Field {
        index: usize,
        name: String,
        unit: TimeUnit,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeUnit {
    Millis,
    Micros,
    Rfc3339,
}

/// A compiled CEL expression and the row fields it reads.
pub struct Expr {
    pub text: String,
    pub program: Program,
    pub vars: Vec<(String, usize)>,
}

pub enum RowStep {
    Filter(Expr),
    Map(Vec<MapOut>),
}

pub enum MapOut {
    Field(usize),
    Expr(Expr, FieldType),
}

pub enum KeyPlan {
    Fields(Vec<usize>),
    Expr(Expr),
}

pub struct KeyField {
    pub name: String,
    pub ty: FieldType,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowAssigner {
    Tumbling { size: i64 },
    Hopping { size: i64, advance: i64 },
    Session { gap: i64 },
}

#[derive(Debug, Clone, Copy)]
pub struct WindowPlan {
    pub assigner: WindowAssigner,
    pub grace: i64,
}

pub struct AggPlan {
    pub name: String,
    pub func: AggFn,
    /// Row index of the input field (`None` for `count` of rows).
    pub field: Option<usize>,
    pub input: Option<FieldType>,
    pub out: FieldType,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmitPlan {
    Final,
    Update { interval_ms: i64 },
}

pub struct OutputPlan {
    pub schema: Schema,
    pub key_fields: Vec<KeyField>,
    pub fields: Vec<OutField>,
}

pub struct OutField {
    pub name: String,
    pub source: OutSource,
    pub schema: Schema,
    pub ty: FieldType,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutSource {
    Key(usize),
    WindowStart,
    WindowEnd,
    Agg(usize),
}
