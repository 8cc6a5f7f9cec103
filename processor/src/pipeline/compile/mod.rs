//! Definition -> plan. Resolves every name to an index and every duration to milliseconds,
//! infers the type of each field through the steps, and checks the result against the
//! declared output schema. Every problem found is collected; a plan exists only when there
//! are none. One file per section: [`source`], the row steps here and in [`expr`],
//! [`steps`] (`key_by`, `window`, `aggregate`), [`output`] (output schema and sinks), with
//! the shared bounds in [`rules`].

mod expr;
mod output;
mod rules;
mod source;
mod steps;

pub use expr::{MAX_EXPR_BYTES, MAX_EXPR_DEPTH};
pub use rules::{MAX_DURATION_MS, MAX_WINDOWS_PER_EVENT};
pub use steps::fn_name;

use crate::pipeline::plan::{
    AggPlan, EmitPlan, EventTime, KeyField, KeyPlan, MapOut, Plan, RowStep, WindowPlan,
};
use crate::pipeline::problems::Problems;
use crate::pipeline::{Delivery, MapFieldDef, PipelineDef, SinkKind};
use crate::schema::{record_fields, FieldType, SchemaResolver};
use expr::{compile_expr, declared_type};
use output::{check_output, check_row_output, check_sink};
use source::compile_source;
use steps::{compile_aggregate, compile_key, compile_window};

/// The fields a row has at a step, with their types.
type Row = Vec<(String, FieldType)>;

/// Where the steps have got to: row steps (any number), then one `key_by`, one `window`,
/// one `aggregate`, in that order. Ending after the row steps or the `key_by` makes a
/// stateless pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    Rows,
    Keyed,
    Windowed,
    Aggregated,
}

impl Stage {
    /// The steps still missing after this one.
    fn missing(self) -> String {
        let all = ["key_by", "window", "aggregate"];
        all[(self as usize).min(2)..].join(", ")
    }

    fn of(kind: &str) -> Stage {
        match kind {
            "filter" | "map" => Stage::Rows,
            "key_by" => Stage::Keyed,
            "window" => Stage::Windowed,
            _ => Stage::Aggregated,
        }
    }

    /// Row steps repeat; every other step comes once, right after the one before it.
    fn may_go_to(self, next: Stage) -> bool {
        (next == self && next == Stage::Rows) || next as u8 == self as u8 + 1
    }

    fn expected_next(self) -> &'static str {
        match self {
            Stage::Rows => "filter, map or key_by",
            Stage::Keyed => "window",
            Stage::Windowed => "aggregate",
            Stage::Aggregated => "nothing",
        }
    }
}

/// Compiles a structurally valid definition, adding every semantic problem to `p`.
pub fn compile(def: &PipelineDef, resolver: &SchemaResolver, p: &mut Problems) -> Option<Plan> {
    let (source, reader) = compile_source(def, resolver, p);
    let mut row: Vec<(String, FieldType)> =
        reader.as_ref().and_then(record_fields).unwrap_or_default();
    let schema_known = reader.is_some();

    let mut row_steps = Vec::new();
    let mut key: Option<(KeyPlan, Vec<KeyField>)> = None;
    let mut window: Option<WindowPlan> = None;
    let mut aggregate: Option<(Vec<AggPlan>, EmitPlan)> = None;
    let mut aggregate_path = String::new();
    let mut stage = Stage::Rows;

    for (i, step) in def.steps.iter().enumerate() {
        let path = format!("steps[{i}]");
        let kinds = step.kinds();
        if kinds.len() != 1 {
            p.add(
                &path,
                if kinds.is_empty() {
                    "empty step".to_string()
                } else {
                    format!("one step sets {} at once", kinds.join(" and "))
                },
                "give each step exactly one of: filter, map, key_by, window, aggregate",
            );
            continue;
        }
        let kind = kinds[0];
        let want = Stage::of(kind);
        if !stage.may_go_to(want) {
            p.add(
                &format!("{path}.{kind}"),
                format!(
                    "`{kind}` cannot come here; expected {}",
                    stage.expected_next()
                ),
                "order the steps as: filter/map (any number), key_by, window, aggregate",
            );
            continue;
        }
        stage = want;
        if let Some(f) = &step.filter {
            if schema_known {
                if let Some(e) = compile_expr(p, &format!("{path}.filter"), f, &row) {
                    row_steps.push(RowStep::Filter(e));
                }
            }
        }
        if let Some(m) = &step.map {
            if let Some((outs, next_row)) = compile_map(p, &path, m, &row, schema_known) {
                row = next_row;
                row_steps.push(RowStep::Map(outs));
            }
        }
        if let Some(k) = &step.key_by {
            key = compile_key(p, &format!("{path}.key_by"), k, &row, schema_known);
        }
        if let Some(w) = &step.window {
            window = compile_window(p, &format!("{path}.window"), w);
        }
        if let Some(a) = &step.aggregate {
            aggregate = compile_aggregate(p, &format!("{path}.aggregate"), a, &row, schema_known);
            aggregate_path = format!("{path}.aggregate");
        }
    }
    let table = matches!(
        window,
        Some(WindowPlan {
            assigner: crate::pipeline::plan::WindowAssigner::Table { .. },
            ..
        })
    );
    if table && matches!(aggregate, Some((_, EmitPlan::Final))) {
        p.add(
            &format!("{aggregate_path}.emit"),
            "a table (window type none) never closes, so it has no final result",
            "set emit: update (with an interval to rate-limit the updates per key, e.g. interval: 10s)",
        );
    }
    // Row steps only (and perhaps a `key_by`): a stateless pipeline, one result per event.
    // A window or aggregate step out of place means the steps were meant to aggregate.
    let stateless = stage <= Stage::Keyed
        && !def
            .steps
            .iter()
            .any(|s| s.window.is_some() || s.aggregate.is_some());
    if stage != Stage::Aggregated && !stateless {
        p.add(
            "steps",
            format!("the steps end before {}", stage.missing()),
            "a pipeline that aggregates needs key_by, window and aggregate steps, in that order; with filter and map steps only (and an optional key_by) each event is one result",
        );
    }

    let output_schema = match resolver.load(&def.output.schema) {
        Ok(s) => Some(s),
        Err(e) => {
            p.add(
                "output.schema",
                e.to_string(),
                "put the .avsc file in schemas/ or fix the name",
            );
            None
        }
    };
    let output = match (&output_schema, &key, &aggregate) {
        (Some(s), Some((_, kf)), Some((aggs, _))) => check_output(p, s, kf, aggs, table),
        (Some(s), key, None) if stateless && schema_known => {
            let kf = key.as_ref().map_or(&[][..], |k| k.1.as_slice());
            check_row_output(p, s, &row, kf)
        }
        _ => None,
    };

    for (i, s) in def.sinks.iter().enumerate() {
        check_sink(p, &format!("sinks[{i}]"), s);
        if stateless && s.kind == SinkKind::Postgres {
            p.add(
                &format!("sinks[{i}].type"),
                "the postgres sink upserts on (key, window start), and a pipeline without window and aggregate steps has neither",
                "write a stateless pipeline's events to kafka, file or stdout, or add key_by, window and aggregate steps",
            );
        }
    }
    if stateless && def.delivery == Delivery::ExactlyOnce {
        p.add(
            "delivery",
            "exactly_once is not available yet for a pipeline without window and aggregate steps",
            "use delivery: at_least_once (each result carries a deterministic weir-event-id: topic/partition/offset of its source record)",
        );
    }
    if let Some(d) = &def.dead_letter {
        check_sink(p, "dead_letter", d);
        if d.kind == SinkKind::Postgres {
            p.add(
                "dead_letter.type",
                "dead letters go to a file, a Kafka topic or stdout, not to PostgreSQL",
                "use type: kafka with a topic, or type: file with a path",
            );
        }
    }
    if def.delivery == Delivery::ExactlyOnce && !def.state.changelog {
        p.add(
            "delivery",
            "exactly_once needs the changelog: a crash after a transaction's commit is rolled forward from it",
            "remove `changelog: false` from the state section, or use delivery: at_least_once",
        );
    }
    if def.state.cache_entries == 0 {
        p.add(
            "state.cache_entries",
            "must be at least 1",
            "the default is 1000000",
        );
    }

    let source_fields: Vec<String> = reader
        .as_ref()
        .and_then(record_fields)
        .unwrap_or_default()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    if let Some(by) = &def.source.partitioned_by {
        for (i, f) in by.iter().enumerate() {
            if schema_known && !source_fields.contains(f) {
                p.add(
                    &format!("source.partitioned_by[{i}]"),
                    format!("`{f}` is not a field of the source schema"),
                    format!(
                        "name the source fields the record key is made of ({})",
                        source_fields.join(", ")
                    ),
                );
            }
        }
    }
    if let Some(n) = def.source.repartition.partitions {
        if !(1..=10_000).contains(&n) {
            p.add(
                "source.repartition.partitions",
                format!("{n} partitions"),
                "give 1 to 10000, or leave it out for as many as the source topic",
            );
        }
    }

    if !p.is_empty() {
        return None;
    }
    let repartition = match (&def.source.partitioned_by, &key) {
        // No state: an event's key does not have to meet the others of its key.
        _ if stateless => None,
        (Some(by), Some((k, kf))) => {
            repartition_for(by, k, kf, &row_steps, &source_fields, source.as_ref()?, def)
        }
        _ => None,
    };
    let key = match key {
        Some((k, _)) => k,
        None if stateless => KeyPlan::Fields(Vec::new()),
        None => return None,
    };
    let (aggs, emit, window) = match (aggregate, window) {
        (Some((aggs, emit)), Some(w)) => (aggs, emit, w),
        // Unused by a stateless plan (see `Plan::stateless`).
        _ if stateless => (
            Vec::new(),
            EmitPlan::Final,
            WindowPlan {
                assigner: crate::pipeline::plan::WindowAssigner::Tumbling { size: 1 },
                grace: 0,
            },
        ),
        _ => return None,
    };
    let mut source = source?;
    // A stateless pipeline's result is the whole row: every field is decoded.
    if row_steps.is_empty() && !stateless {
        // The row is the source record: only the fields read below need decoding.
        let mut needed = vec![false; source.needed.len()];
        let mut mark = |i: usize| {
            if let Some(n) = needed.get_mut(i) {
                *n = true;
            }
        };
        if let EventTime::Field { index, .. } = &source.event_time {
            mark(*index);
        }
        match &key {
            KeyPlan::Fields(idx) => idx.iter().for_each(|i| mark(*i)),
            KeyPlan::Expr(e) => e.vars.iter().for_each(|(_, i)| mark(*i)),
        }
        aggs.iter().filter_map(|a| a.field).for_each(&mut mark);
        source.needed = needed;
    }
    Some(Plan {
        name: def.name.clone(),
        source,
        row_steps,
        key,
        window,
        aggs,
        emit,
        output: output?,
        sinks: def.sinks.clone(),
        dead_letter: def.dead_letter.clone(),
        state: crate::pipeline::StateDef {
            // No window state to log: a stateless pipeline keeps only its positions.
            changelog: def.state.changelog && !stateless,
            ..def.state.clone()
        },
        delivery: def.delivery,
        repartition,
        stage: crate::pipeline::plan::Stage::Whole,
        stateless,
    })
}

/// Whether the group key keeps every event of a key in one source partition: it does when
/// it includes each `partitioned_by` field, copied unchanged through the maps. Otherwise
/// the pipeline re-keys through `<group>-repartition`.
fn repartition_for(
    by: &[String],
    key: &KeyPlan,
    key_fields: &[KeyField],
    row_steps: &[RowStep],
    source_fields: &[String],
    source: &crate::pipeline::plan::SourcePlan,
    def: &PipelineDef,
) -> Option<crate::pipeline::plan::RepartitionPlan> {
    // Which source field each row field is an unchanged copy of.
    let mut origin: Vec<Option<String>> = source_fields.iter().cloned().map(Some).collect();
    for s in row_steps {
        if let RowStep::Map(outs) = s {
            origin = outs
                .iter()
                .map(|o| match o {
                    MapOut::Field(i) => origin.get(*i).cloned().flatten(),
                    MapOut::Expr(..) => None,
                })
                .collect();
        }
    }
    let keyed: Vec<String> = match key {
        KeyPlan::Fields(idx) => idx
            .iter()
            .filter_map(|i| origin.get(*i).cloned().flatten())
            .collect(),
        KeyPlan::Expr(_) => Vec::new(),
    };
    let missing: Vec<&String> = by.iter().filter(|f| !keyed.contains(f)).collect();
    if !by.is_empty() && missing.is_empty() {
        return None;
    }
    let names: Vec<&str> = key_fields.iter().map(|k| k.name.as_str()).collect();
    let why = if by.is_empty() {
        format!(
            "the source is partitioned by no field (source.partitioned_by: []), so the events of one key ({}) are spread over its partitions",
            names.join(", ")
        )
    } else {
        format!(
            "the group key ({}) does not include {} that the source is partitioned by (source.partitioned_by), so the events of one key are spread over its partitions",
            names.join(", "),
            missing.iter().map(|m| format!("`{m}`")).collect::<Vec<_>>().join(", ")
        )
    };
    let group = format!("{}-repartition", source.group);
    Some(crate::pipeline::plan::RepartitionPlan {
        topic: group.clone(),
        group,
        partitions: def.source.repartition.partitions,
        why,
    })
}

/// A `map` step: each output field a copied field or a typed expression over the row.
/// Returns the step and the row after it (none while the source schema is unknown).
fn compile_map(
    p: &mut Problems,
    path: &str,
    m: &indexmap::IndexMap<String, MapFieldDef>,
    row: &Row,
    schema_known: bool,
) -> Option<(Vec<MapOut>, Row)> {
    if m.is_empty() {
        p.add(
            &format!("{path}.map"),
            "a map step needs at least one field",
            "list the fields to keep or compute",
        );
    }
    if !schema_known {
        return None;
    }
    let mut outs = Vec::new();
    let mut next_row = Vec::new();
    for (name, fd) in m {
        let fpath = format!("{path}.map.{name}");
        let (text, ty, nullable) = match fd {
            MapFieldDef::Expr(t) => (t.as_str(), None, false),
            MapFieldDef::Typed(t) => (t.expr.as_str(), t.ty.as_deref(), t.nullable),
        };
        // A bare field name copies (or renames) a field and keeps its type.
        if let Some(idx) = row.iter().position(|(n, _)| n == text.trim()) {
            if ty.is_none() {
                outs.push(MapOut::Field(idx));
                next_row.push((name.clone(), row[idx].1.clone()));
                continue;
            }
        }
        let e = compile_expr(p, &fpath, text, row);
        let t = declared_type(p, &fpath, ty, nullable);
        if let (Some(e), Some(t)) = (e, t) {
            next_row.push((name.clone(), t.clone()));
            outs.push(MapOut::Expr(e, t));
        }
    }
    Some((outs, next_row))
}
