//! The plan: an executable pipeline, every name resolved to an index and every duration
//! in milliseconds. [`super::compile`] makes it from a definition; the engine runs it.

use super::{AggFn, Delivery, SinkDef, StateDef, ValueFormat};
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
    pub delivery: Delivery,
    /// Re-keying through a repartition topic, when the group key is not the source's.
    pub repartition: Option<RepartitionPlan>,
    /// Which part of the pipeline this plan runs (see [`Stage`]).
    pub stage: Stage,
    /// No `window` and no `aggregate` step: each valid event that passes the row steps is
    /// one result, its output fields the row's ([`OutSource::Row`]), keyed by `key_by` when
    /// there is one (`key` is then set) and by the source record's key otherwise. `window`,
    /// `aggs` and `emit` are then unused; nothing is kept in state but the positions.
    pub stateless: bool,
}

/// A pipeline that re-keys runs in two stages joined by its repartition topic: `Upstream`
/// (decode, validate, event time, filter, map, key) writes each event to the partition of
/// its group key, `Downstream` (windows, aggregates, sinks) reads them. Offline (`Whole`),
/// one engine runs both with the same rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Stage {
    #[default]
    Whole,
    Upstream,
    Downstream,
}

#[derive(Debug, Clone)]
pub struct RepartitionPlan {
    /// `<group>-repartition`: the internal topic, keyed by the group key.
    pub topic: String,
    /// The downstream stage's consumer group (also `<group>-repartition`).
    pub group: String,
    /// Its partition count; `None`: the largest source topic's.
    pub partitions: Option<i32>,
    /// Why the pipeline re-keys (what `weir validate` says).
    pub why: String,
}

#[derive(Clone)]
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
    /// `watermark.idle_advance`: read by the Kafka path only.
    pub idle_advance_ms: Option<i64>,
    /// `on_missing_offsets`: read by the Kafka path only.
    pub on_missing_offsets: MissingOffsets,
}

/// What a Kafka source does when the offset it resumes from is no longer in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MissingOffsets {
    /// Stop with an error naming the partition, the offset and the log start.
    #[default]
    Fail,
    /// Go on from the log start (the records between are lost to the pipeline).
    Earliest,
    /// Go on from the log end.
    Latest,
}

impl MissingOffsets {
    pub fn name(self) -> &'static str {
        match self {
            MissingOffsets::Fail => "fail",
            MissingOffsets::Earliest => "earliest",
            MissingOffsets::Latest => "latest",
        }
    }
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

#[derive(Clone)]
pub struct KeyField {
    pub name: String,
    pub ty: FieldType,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowAssigner {
    Tumbling {
        size: i64,
    },
    Hopping {
        size: i64,
        advance: i64,
    },
    Session {
        gap: i64,
    },
    /// `window: {type: none}`: one running aggregate per key (a table), dropped `ttl`
    /// after the key's latest event time when there is a ttl.
    Table {
        ttl: Option<i64>,
    },
}

#[derive(Debug, Clone, Copy)]
pub struct WindowPlan {
    pub assigner: WindowAssigner,
    pub grace: i64,
}

#[derive(Clone)]
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

#[derive(Clone)]
pub struct OutputPlan {
    pub schema: Schema,
    pub key_fields: Vec<KeyField>,
    pub fields: Vec<OutField>,
}

#[derive(Clone)]
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
    /// A stateless pipeline's field: the row's field at this index.
    Row(usize),
}

impl Plan {
    /// A running table (`window: {type: none}`): one entry per key, results keyed by the
    /// group key alone.
    pub fn is_table(&self) -> bool {
        matches!(self.window.assigner, WindowAssigner::Table { .. }) && !self.stateless
    }

    /// The stage a re-keying pipeline runs upstream: this plan, marked so.
    pub fn upstream(mut self) -> Plan {
        self.stage = Stage::Upstream;
        self
    }

    /// The downstream stage of a re-keying pipeline: it reads `<group>-repartition` with
    /// its own consumer group and runs the windows, aggregates and sinks. A file dead letter
    /// gets its own file (`<path>.late`): the upstream stage writes the configured one.
    pub fn downstream(&self) -> Option<Plan> {
        let r = self.repartition.clone()?;
        let mut source = self.source.clone();
        source.topics = vec![r.topic.clone()];
        source.group = r.group.clone();
        // The hop's records are Weir's own; no registry lookup applies to them.
        source.format = ValueFormat::Json;
        let mut dead_letter = self.dead_letter.clone();
        if let Some(d) = dead_letter.as_mut() {
            if let Some(p) = d.path.as_mut() {
                p.push_str(".late");
            }
        }
        Some(Plan {
            name: self.name.clone(),
            source,
            row_steps: Vec::new(),
            key: KeyPlan::Fields(Vec::new()),
            window: self.window,
            aggs: self.aggs.clone(),
            emit: self.emit,
            output: self.output.clone(),
            sinks: self.sinks.clone(),
            dead_letter,
            state: self.state.clone(),
            delivery: self.delivery,
            repartition: Some(r),
            stage: Stage::Downstream,
            stateless: false,
        })
    }
}
