//! Definition -> plan. Resolves every name to an index and every duration to milliseconds,
//! infers the type of each field through the steps, and checks the result against the
//! declared output schema. Every problem found is collected; a plan exists only when there
//! are none.

use super::problems::Problems;
use super::{
    AggFn, EmitMode, EventTimeDef, KeyByDef, MapFieldDef, PipelineDef, SinkDef, StateDef,
    ValueFormat, WindowKind,
};
use crate::schema::codec::check_readable;
use crate::schema::{record_fields, FieldType, Kind, SchemaResolver};
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

/// The type a key or aggregate carries into the output for an input kind.
fn out_kind(k: &Kind) -> Kind {
    match k {
        Kind::Enum | Kind::Uuid => Kind::String,
        other => other.clone(),
    }
}

fn groupable(k: &Kind) -> bool {
    matches!(
        k,
        Kind::Boolean
            | Kind::Int
            | Kind::Long
            | Kind::Float
            | Kind::Double
            | Kind::String
            | Kind::Bytes
            | Kind::Enum
            | Kind::Uuid
            | Kind::Date
            | Kind::TimeMillis
            | Kind::TimeMicros
            | Kind::TimestampMillis
            | Kind::TimestampMicros
    )
}

fn field_names(row: &[(String, FieldType)]) -> String {
    row.iter()
        .map(|(n, _)| n.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The longest duration a definition may give (100 years, 3,153,600,000,000 ms): window
/// ends, close times (`end + grace`) and watermarks are event times plus durations, and
/// longer durations overflow that arithmetic (a grace of `i64::MAX` ms closed every window
/// at once).
pub const MAX_DURATION_MS: i64 = 100 * 365 * 24 * 3_600_000;

/// The most hopping windows one event may belong to (`size / advance`): each one is state
/// and, at close, a result. A 1 h window advancing every 1 ms asked for 3.6 million per
/// event and passed 4 GiB of memory in seconds.
pub const MAX_WINDOWS_PER_EVENT: i64 = 1_000;

fn duration(
    p: &mut Problems,
    path: &str,
    d: &Option<super::DurationSpec>,
    positive: bool,
) -> Option<i64> {
    let d = d.as_ref()?;
    match d.millis() {
        Err(_) => {
            p.add(
                path,
                format!("`{}` is not a duration", d.0),
                "write a duration such as 30s, 5m, 1h or 250ms",
            );
            None
        }
        Ok(ms) if positive && ms <= 0 => {
            p.add(
                path,
                format!("must be greater than 0, got {}", d.0),
                "set a positive duration such as 1m",
            );
            None
        }
        Ok(ms) if ms < 0 => {
            p.add(
                path,
                format!("must be >= 0s, got {}", d.0),
                "use 0s for no allowance, or a positive duration",
            );
            None
        }
        Ok(ms) if ms > MAX_DURATION_MS => {
            p.add(
                path,
                format!("must be at most 100 years (3153600000000ms), got {}", d.0),
                "use a shorter duration: event times plus durations longer than that overflow",
            );
            None
        }
        Ok(ms) => Some(ms),
    }
}

/// The longest CEL expression, and its deepest bracket nesting: the parser recurses per
/// level, so a deep expression could exhaust the stack.
pub const MAX_EXPR_BYTES: usize = 4096;
pub const MAX_EXPR_DEPTH: usize = 32;

fn expr_too_big(text: &str) -> Option<String> {
    if text.len() > MAX_EXPR_BYTES {
        return Some(format!("{} bytes long", text.len()));
    }
    let (mut depth, mut quote, mut escaped) = (0usize, None::<char>, false);
    for c in text.chars() {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                }
            }
            None => match c {
                '"' | '\'' => quote = Some(c),
                '(' | '[' | '{' => {
                    depth += 1;
                    if depth > MAX_EXPR_DEPTH {
                        return Some(format!("nested more than {MAX_EXPR_DEPTH} brackets deep"));
                    }
                }
                ')' | ']' | '}' => depth = depth.saturating_sub(1),
                _ => {}
            },
        }
    }
    None
}

fn compile_expr(
    p: &mut Problems,
    path: &str,
    text: &str,
    row: &[(String, FieldType)],
) -> Option<Expr> {
    if let Some(why) = expr_too_big(text) {
        p.add(
            path,
            format!("the CEL expression is {why}"),
            format!("write a shorter expression (at most {MAX_EXPR_BYTES} bytes, {MAX_EXPR_DEPTH} levels of brackets)"),
        );
        return None;
    }
    // cel-parser's ANTLR runtime panics on some malformed input (fuzzing found
    // `page !=<<<<…< '/health'`): a definition must get a problem, never a crash.
    let compiled = std::panic::catch_unwind(|| Program::compile(text));
    let program = match compiled {
        Err(_) => {
            p.add(
                path,
                format!("invalid CEL expression `{text}`: the CEL parser cannot read it"),
                "see https://github.com/google/cel-spec for the syntax; field names are variables",
            );
            return None;
        }
        Ok(Ok(prog)) => prog,
        Ok(Err(e)) => {
            let msg = e.to_string().lines().next().unwrap_or_default().to_string();
            p.add(
                path,
                format!("invalid CEL expression `{text}`: {msg}"),
                "see https://github.com/google/cel-spec for the syntax; field names are variables",
            );
            return None;
        }
    };
    // Macros (`exists`, `all`, `map`, `filter`, ...) bind their own loop variables.
    let mut bound = std::collections::HashSet::new();
    if let Ok(ast) = cel_parser::Parser::new().parse(text) {
        comprehension_vars(&ast, &mut bound);
    }
    let mut vars = Vec::new();
    let mut ok = true;
    let mut referenced = program
        .references()
        .variables()
        .into_iter()
        .map(str::to_string)
        .collect::<Vec<_>>();
    referenced.sort();
    for v in referenced.into_iter().filter(|v| !bound.contains(v)) {
        match row.iter().position(|(n, _)| *n == v) {
            Some(i) => vars.push((v, i)),
            None => {
                ok = false;
                p.add(
                    path,
                    format!("unknown field `{v}` in expression `{text}`"),
                    format!("use one of the fields available here: {}", field_names(row)),
                );
            }
        }
    }
    ok.then(|| Expr {
        text: text.to_string(),
        program,
        vars,
    })
}

/// The variables that comprehensions (CEL macros) bind inside an expression.
fn comprehension_vars(e: &cel_parser::Expression, out: &mut std::collections::HashSet<String>) {
    use cel_parser::ast::{EntryExpr, Expr as E};
    match &e.expr {
        E::Comprehension(c) => {
            out.insert(c.iter_var.clone());
            out.extend(c.iter_var2.clone());
            out.insert(c.accu_var.clone());
            for x in [
                &c.iter_range,
                &c.accu_init,
                &c.loop_cond,
                &c.loop_step,
                &c.result,
            ] {
                comprehension_vars(x, out);
            }
        }
        E::Call(c) => {
            if let Some(t) = &c.target {
                comprehension_vars(t, out);
            }
            c.args.iter().for_each(|a| comprehension_vars(a, out));
        }
        E::List(l) => l.elements.iter().for_each(|x| comprehension_vars(x, out)),
        E::Select(s) => comprehension_vars(&s.operand, out),
        E::Map(m) => m.entries.iter().for_each(|en| match &en.expr {
            EntryExpr::StructField(f) => comprehension_vars(&f.value, out),
            EntryExpr::MapEntry(me) => {
                comprehension_vars(&me.key, out);
                comprehension_vars(&me.value, out);
            }
        }),
        E::Struct(s) => s.entries.iter().for_each(|en| match &en.expr {
            EntryExpr::StructField(f) => comprehension_vars(&f.value, out),
            EntryExpr::MapEntry(me) => {
                comprehension_vars(&me.key, out);
                comprehension_vars(&me.value, out);
            }
        }),
        _ => {}
    }
}

fn declared_type(
    p: &mut Problems,
    path: &str,
    ty: Option<&str>,
    nullable: bool,
) -> Option<FieldType> {
    match ty {
        None => {
            p.add(
                path,
                "a computed field needs its type",
                format!(
                    "write it as {{expr: \"...\", type: long}}; types: {}",
                    Kind::DECLARABLE
                ),
            );
            None
        }
        Some(t) => match Kind::parse_declared(t) {
            Some(k) => Some(FieldType::new(k, nullable)),
            None => {
                p.add(
                    &format!("{path}.type"),
                    format!("unknown type `{t}`"),
                    format!("use one of: {}", Kind::DECLARABLE),
                );
                None
            }
        },
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
    let mut stage = 0; // 0: row steps, 1: after key_by, 2: after window, 3: after aggregate

    if def.steps.is_empty() {
        p.add(
            "steps",
            "no steps",
            "add key_by, window and aggregate steps",
        );
    }
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
        let want_stage = match kind {
            "filter" | "map" => 0,
            "key_by" => 1,
            "window" => 2,
            _ => 3,
        };
        let expected_next =
            ["filter, map or key_by", "window", "aggregate", "nothing"][stage.min(3)];
        if want_stage < stage || want_stage > stage + 1 || (want_stage == stage && want_stage != 0)
        {
            p.add(
                &format!("{path}.{kind}"),
                format!("`{kind}` cannot come here; expected {expected_next}"),
                "order the steps as: filter/map (any number), key_by, window, aggregate",
            );
            continue;
        }
        stage = want_stage;
        if let Some(f) = &step.filter {
            if schema_known {
                if let Some(e) = compile_expr(p, &format!("{path}.filter"), f, &row) {
                    row_steps.push(RowStep::Filter(e));
                }
            }
        }
        if let Some(m) = &step.map {
            if m.is_empty() {
                p.add(
                    &format!("{path}.map"),
                    "a map step needs at least one field",
                    "list the fields to keep or compute",
                );
            }
            let mut outs = Vec::new();
            let mut next_row = Vec::new();
            for (name, fd) in m {
                let fpath = format!("{path}.map.{name}");
                let (text, ty, nullable) = match fd {
                    MapFieldDef::Expr(t) => (t.as_str(), None, false),
                    MapFieldDef::Typed(t) => (t.expr.as_str(), t.ty.as_deref(), t.nullable),
                };
                if !schema_known {
                    continue;
                }
                // A bare field name copies (or renames) a field and keeps its type.
                if let Some(idx) = row.iter().position(|(n, _)| n == text.trim()) {
                    if ty.is_none() {
                        outs.push(MapOut::Field(idx));
                        next_row.push((name.clone(), row[idx].1.clone()));
                        continue;
                    }
                }
                let e = compile_expr(p, &fpath, text, &row);
                let t = declared_type(p, &fpath, ty, nullable);
                if let (Some(e), Some(t)) = (e, t) {
                    next_row.push((name.clone(), t.clone()));
                    outs.push(MapOut::Expr(e, t));
                }
            }
            if schema_known {
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
        }
    }
    if stage < 3 && !def.steps.is_empty() {
        let missing = ["key_by", "window", "aggregate"][stage.min(2)..].join(", ");
        p.add(
            "steps",
            format!("the steps end before {missing}"),
            "a pipeline needs key_by, window and aggregate steps, in that order",
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
        (Some(s), Some((_, kf)), Some((aggs, _))) => check_output(p, s, kf, aggs),
        _ => None,
    };

    for (i, s) in def.sinks.iter().enumerate() {
        check_sink(p, &format!("sinks[{i}]"), s);
    }
    if let Some(d) = &def.dead_letter {
        check_sink(p, "dead_letter", d);
        if d.kind == super::SinkKind::Postgres {
            p.add(
                "dead_letter.type",
                "dead letters go to a file, a Kafka topic or stdout, not to PostgreSQL",
                "use type: kafka with a topic, or type: file with a path",
            );
        }
    }
    if def.state.cache_entries == 0 {
        p.add(
            "state.cache_entries",
            "must be at least 1",
            "the default is 1000000",
        );
    }

    if !p.is_empty() {
        return None;
    }
    let (key, _) = key?;
    let (aggs, emit) = aggregate?;
    let mut source = source?;
    if row_steps.is_empty() {
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
        window: window?,
        aggs,
        emit,
        output: output?,
        sinks: def.sinks.clone(),
        dead_letter: def.dead_letter.clone(),
        state: def.state.clone(),
    })
}

fn check_sink(p: &mut Problems, path: &str, s: &SinkDef) {
    use super::SinkKind::*;
    let name = match s.kind {
        Stdout => "stdout",
        File => "file",
        Kafka => "kafka",
        Postgres => "postgres",
    };
    let allowed: &[&str] = match s.kind {
        Stdout => &[],
        File => &["path"],
        Kafka => &["topic", "partitions", "replication_factor", "schema_id"],
        Postgres => &["url", "table"],
    };
    let set = [
        ("path", s.path.is_some()),
        ("topic", s.topic.is_some()),
        ("partitions", s.partitions.is_some()),
        ("replication_factor", s.replication_factor.is_some()),
        ("schema_id", s.schema_id.is_some()),
        ("url", s.url.is_some()),
        ("table", s.table.is_some()),
    ];
    for (key, is_set) in set {
        if is_set && !allowed.contains(&key) {
            let fix = if allowed.is_empty() {
                format!("remove {key}")
            } else {
                format!("remove {key}; a {name} sink takes {}", allowed.join(", "))
            };
            p.add(
                &format!("{path}.{key}"),
                format!("a {name} sink takes no {key}"),
                fix,
            );
        }
    }
    let empty = |o: &Option<String>| o.as_deref().unwrap_or("").trim().is_empty();
    match s.kind {
        File if empty(&s.path) => p.add(
            &format!("{path}.path"),
            "a file sink needs a path",
            "add path: out/results.jsonl",
        ),
        Kafka if empty(&s.topic) => p.add(
            &format!("{path}.topic"),
            "a kafka sink needs a topic",
            "add topic: my-results",
        ),
        Postgres => {
            if empty(&s.table) {
                p.add(
                    &format!("{path}.table"),
                    "a postgres sink needs a table",
                    "add table: my_results",
                );
            } else if let Some(t) = &s.table {
                let ok = t.split('.').all(|part| {
                    !part.is_empty()
                        && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                        && !part.starts_with(|c: char| c.is_ascii_digit())
                });
                if !ok {
                    p.add(
                        &format!("{path}.table"),
                        format!("`{t}` is not a plain table name"),
                        "use letters, digits and _ (optionally schema.table), e.g. page_views",
                    );
                }
            }
        }
        _ => {}
    }
    for (key, v) in [
        ("partitions", s.partitions),
        ("replication_factor", s.replication_factor),
    ] {
        if matches!(v, Some(n) if n < 1) {
            p.add(
                &format!("{path}.{key}"),
                format!("{key} must be at least 1"),
                format!("set {key}: 1 or more"),
            );
        }
    }
}

/// The source plan, and the reader schema whenever it loaded (so that the steps are
/// checked even when another part of the source is wrong).
fn compile_source(
    def: &PipelineDef,
    resolver: &SchemaResolver,
    p: &mut Problems,
) -> (Option<SourcePlan>, Option<Schema>) {
    let s = &def.source;
    if s.topics.is_empty() {
        p.add(
            "source.topics",
            "at least one topic is needed",
            "add topics: [my-topic]",
        );
    }
    let reader = match resolver.load(&s.schema) {
        Ok(r) => Some(r),
        Err(e) => {
            p.add(
                "source.schema",
                e.to_string(),
                "put the .avsc file in schemas/ or fix the name",
            );
            None
        }
    };
    let reader = match reader {
        Some(r) if record_fields(&r).is_none() => {
            p.add(
                "source.schema",
                "the event schema must be an Avro record",
                "wrap the fields in {\"type\": \"record\", ...}",
            );
            None
        }
        r => r,
    };
    let mut writers = Vec::new();
    if s.format != ValueFormat::Avro && !s.writer_schemas.is_empty() {
        p.add(
            "source.writer_schemas",
            "writer schemas by id apply to the `avro` (Confluent wire) format only",
            "remove writer_schemas, or set format: avro",
        );
    }
    for (id, file) in &s.writer_schemas {
        let path = format!("source.writer_schemas.{id}");
        match resolver.load(file) {
            Err(e) => p.add(
                &path,
                e.to_string(),
                "put the .avsc file in schemas/ or fix the name",
            ),
            Ok(w) => {
                if let Some(r) = &reader {
                    if let Err(e) = check_readable(&w, r) {
                        p.add(
                            &path,
                            format!(
                                "events written with {file} cannot be read as {}: {e}",
                                s.schema
                            ),
                            "give removed fields no role and added fields a default",
                        );
                    }
                }
                writers.push((*id, w));
            }
        }
    }
    if s.format == ValueFormat::Avro && s.writer_schemas.is_empty() {
        if let Some(r) = &reader {
            // Offline default: the reader schema under id 1.
            writers.push((1, r.clone()));
        }
    }
    let event_time = compile_event_time(p, &s.event_time, reader.as_ref());
    let ooo = duration(
        p,
        "source.watermark.max_out_of_orderness",
        &s.watermark.max_out_of_orderness,
        false,
    )
    .unwrap_or(0);
    let idle = duration(
        p,
        "source.watermark.idle_timeout",
        &s.watermark.idle_timeout,
        true,
    );
    let plan = match (&reader, event_time) {
        (Some(r), Some(event_time)) => Some(SourcePlan {
            topics: s.topics.clone(),
            group: s
                .group
                .clone()
                .unwrap_or_else(|| format!("weir-{}", def.name)),
            format: s.format,
            reader_schema: r.clone(),
            writer_schemas: writers,
            event_time,
            needed: vec![true; record_fields(r).map_or(0, |f| f.len())],
            max_out_of_orderness_ms: ooo,
            idle_timeout_ms: idle,
        }),
        _ => None,
    };
    (plan, reader)
}

fn compile_event_time(
    p: &mut Problems,
    et: &EventTimeDef,
    reader: Option<&Schema>,
) -> Option<EventTime> {
    match (&et.field, et.record_timestamp) {
        (Some(_), Some(true)) | (None, None) | (None, Some(false)) => {
            p.add(
                "source.event_time",
                "set exactly one of `field` or `record_timestamp: true`",
                "for example event_time: {field: ts}",
            );
            None
        }
        (None, Some(true)) => Some(EventTime::RecordTimestamp),
        (Some(f), _) => {
            let fields = record_fields(reader?)?;
            let Some(index) = fields.iter().position(|(n, _)| n == f) else {
                p.add(
                    "source.event_time.field",
                    format!("unknown field `{f}`"),
                    format!("use one of: {}", field_names(&fields)),
                );
                return None;
            };
            let unit = match fields[index].1.kind {
                Kind::TimestampMillis | Kind::Long => TimeUnit::Millis,
                Kind::TimestampMicros => TimeUnit::Micros,
                Kind::String => TimeUnit::Rfc3339,
                ref k => {
                    p.add("source.event_time.field", format!("`{f}` is {}, which cannot hold an event time", k.name()), "use a timestamp-millis, timestamp-micros, long (epoch ms) or RFC 3339 string field");
                    return None;
                }
            };
            Some(EventTime::Field {
                index,
                name: f.clone(),
                unit,
            })
        }
    }
}

fn compile_key(
    p: &mut Problems,
    path: &str,
    k: &KeyByDef,
    row: &[(String, FieldType)],
    known: bool,
) -> Option<(KeyPlan, Vec<KeyField>)> {
    match k {
        KeyByDef::Fields(fields) => {
            if fields.is_empty() {
                p.add(
                    path,
                    "no key fields",
                    "list at least one field, e.g. key_by: [user_id]",
                );
                return None;
            }
            if !known {
                return None;
            }
            let mut idx = Vec::new();
            let mut kf = Vec::new();
            for (i, f) in fields.iter().enumerate() {
                match row.iter().position(|(n, _)| n == f) {
                    None => p.add(
                        &format!("{path}[{i}]"),
                        format!("unknown field `{f}`"),
                        format!("use one of the fields available here: {}", field_names(row)),
                    ),
                    Some(j) if !groupable(&row[j].1.kind) => p.add(
                        &format!("{path}[{i}]"),
                        format!("`{f}` is {}, which cannot be a key", row[j].1.kind.name()),
                        "key by scalar fields (strings, numbers, booleans, enums, timestamps)",
                    ),
                    Some(j) => {
                        idx.push(j);
                        kf.push(KeyField {
                            name: f.clone(),
                            ty: FieldType::new(out_kind(&row[j].1.kind), row[j].1.nullable),
                        });
                    }
                }
            }
            (idx.len() == fields.len()).then_some((KeyPlan::Fields(idx), kf))
        }
        KeyByDef::Expr(e) => {
            if !known {
                return None;
            }
            let expr = compile_expr(p, &format!("{path}.expr"), &e.expr, row);
            let ty = declared_type(p, path, Some(&e.ty), false);
            Some((
                KeyPlan::Expr(expr?),
                vec![KeyField {
                    name: e.name.clone(),
                    ty: ty?,
                }],
            ))
        }
    }
}

fn compile_window(p: &mut Problems, path: &str, w: &super::WindowDef) -> Option<WindowPlan> {
    let grace = duration(p, &format!("{path}.grace"), &w.grace, false).unwrap_or(0);
    let need = |p: &mut Problems,
                name: &str,
                d: &Option<super::DurationSpec>,
                example: &str|
     -> Option<i64> {
        if d.is_none() {
            p.add(
                &format!("{path}.{name}"),
                format!("a {:?} window needs `{name}`", w.kind).to_lowercase(),
                format!("add {name}: {example}"),
            );
            return None;
        }
        duration(p, &format!("{path}.{name}"), d, true)
    };
    let forbid = |p: &mut Problems, name: &str, d: &Option<super::DurationSpec>| {
        if d.is_some() {
            p.add(
                &format!("{path}.{name}"),
                format!("a {:?} window has no `{name}`", w.kind).to_lowercase(),
                format!("remove {name}"),
            );
        }
    };
    let assigner = match w.kind {
        WindowKind::Tumbling => {
            forbid(p, "advance", &w.advance);
            forbid(p, "gap", &w.gap);
            WindowAssigner::Tumbling {
                size: need(p, "size", &w.size, "1m")?,
            }
        }
        WindowKind::Hopping => {
            forbid(p, "gap", &w.gap);
            let size = need(p, "size", &w.size, "1m");
            let advance = need(p, "advance", &w.advance, "10s");
            let (size, advance) = (size?, advance?);
            if advance > size {
                p.add(
                    &format!("{path}.advance"),
                    format!(
                        "must not exceed size ({} > {})",
                        w.advance.as_ref()?.0,
                        w.size.as_ref()?.0
                    ),
                    "use an advance no larger than the size; equal means tumbling",
                );
                return None;
            }
            if size / advance > MAX_WINDOWS_PER_EVENT {
                p.add(
                    &format!("{path}.advance"),
                    format!(
                        "puts every event in {} windows ({} / {}); at most {MAX_WINDOWS_PER_EVENT} are allowed",
                        size / advance,
                        w.size.as_ref()?.0,
                        w.advance.as_ref()?.0
                    ),
                    format!(
                        "use an advance of at least {}ms (size / {MAX_WINDOWS_PER_EVENT})",
                        (size as u64).div_ceil(MAX_WINDOWS_PER_EVENT as u64)
                    ),
                );
                return None;
            }
            WindowAssigner::Hopping { size, advance }
        }
        WindowKind::Session => {
            forbid(p, "size", &w.size);
            forbid(p, "advance", &w.advance);
            WindowAssigner::Session {
                gap: need(p, "gap", &w.gap, "5m")?,
            }
        }
    };
    Some(WindowPlan { assigner, grace })
}

fn compile_aggregate(
    p: &mut Problems,
    path: &str,
    a: &super::AggregateDef,
    row: &[(String, FieldType)],
    known: bool,
) -> Option<(Vec<AggPlan>, EmitPlan)> {
    if a.outputs.is_empty() {
        p.add(
            &format!("{path}.outputs"),
            "no outputs",
            "add e.g. views: {fn: count}",
        );
    }
    let emit = match a.emit.unwrap_or(EmitMode::Final) {
        EmitMode::Final => {
            if a.interval.is_some() {
                p.add(
                    &format!("{path}.interval"),
                    "`interval` applies to emit: update only",
                    "remove interval, or set emit: update",
                );
            }
            EmitPlan::Final
        }
        EmitMode::Update => EmitPlan::Update {
            interval_ms: duration(p, &format!("{path}.interval"), &a.interval, false).unwrap_or(0),
        },
    };
    let mut aggs = Vec::new();
    for (name, o) in &a.outputs {
        let opath = format!("{path}.outputs.{name}");
        if matches!(name.as_str(), "window_start" | "window_end") {
            p.add(
                &opath,
                format!("`{name}` is reserved for the window bounds"),
                "choose another output name",
            );
            continue;
        }
        let input = match (&o.field, o.func) {
            (None, AggFn::Count) => None,
            (None, f) => {
                p.add(
                    &format!("{opath}.field"),
                    format!("{} needs a field", fn_name(f)),
                    format!("add field: <one of {}>", field_names(row)),
                );
                continue;
            }
            (Some(f), func) => {
                if !known {
                    continue;
                }
                let Some(j) = row.iter().position(|(n, _)| n == f) else {
                    p.add(
                        &format!("{opath}.field"),
                        format!("unknown field `{f}`"),
                        format!("use one of the fields available here: {}", field_names(row)),
                    );
                    continue;
                };
                let t = &row[j].1;
                let ok = match func {
                    AggFn::Sum | AggFn::Avg => t.kind.is_numeric(),
                    _ => groupable(&t.kind),
                };
                if !ok {
                    let need = if matches!(func, AggFn::Sum | AggFn::Avg) {
                        "a numeric (int, long, float, double)"
                    } else {
                        "a scalar"
                    };
                    p.add(
                        &format!("{opath}.field"),
                        format!(
                            "{} needs {need} field; `{f}` is {}",
                            fn_name(func),
                            t.kind.name()
                        ),
                        "aggregate another field, or convert it in a map step",
                    );
                    continue;
                }
                Some((j, t.clone()))
            }
        };
        let out = match (o.func, &input) {
            (AggFn::Count | AggFn::CountDistinct, _) => FieldType::new(Kind::Long, false),
            (AggFn::Sum, Some((_, t))) => FieldType::new(
                if matches!(t.kind, Kind::Int | Kind::Long) {
                    Kind::Long
                } else {
                    Kind::Double
                },
                t.nullable,
            ),
            (AggFn::Avg, Some((_, t))) => FieldType::new(Kind::Double, t.nullable),
            (_, Some((_, t))) => FieldType::new(out_kind(&t.kind), t.nullable),
            (_, None) => continue,
        };
        aggs.push(AggPlan {
            name: name.clone(),
            func: o.func,
            field: input.as_ref().map(|x| x.0),
            input: input.map(|x| x.1),
            out,
        });
    }
    Some((aggs, emit))
}

pub fn fn_name(f: AggFn) -> &'static str {
    match f {
        AggFn::Count => "count",
        AggFn::Sum => "sum",
        AggFn::Min => "min",
        AggFn::Max => "max",
        AggFn::Avg => "avg",
        AggFn::CountDistinct => "count_distinct",
        AggFn::First => "first",
        AggFn::Last => "last",
    }
}

fn check_output(
    p: &mut Problems,
    schema: &Schema,
    keys: &[KeyField],
    aggs: &[AggPlan],
) -> Option<OutputPlan> {
    let Schema::Record(rec) = schema else {
        p.add(
            "output.schema",
            "the output schema must be an Avro record",
            "wrap the fields in {\"type\": \"record\", ...}",
        );
        return None;
    };
    // What the steps produce, in order.
    let mut produced: Vec<(String, OutSource, FieldType)> = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        produced.push((k.name.clone(), OutSource::Key(i), k.ty.clone()));
    }
    produced.push((
        "window_start".into(),
        OutSource::WindowStart,
        FieldType::new(Kind::TimestampMillis, false),
    ));
    produced.push((
        "window_end".into(),
        OutSource::WindowEnd,
        FieldType::new(Kind::TimestampMillis, false),
    ));
    for (i, a) in aggs.iter().enumerate() {
        produced.push((a.name.clone(), OutSource::Agg(i), a.out.clone()));
    }
    let mut ok = true;
    let mut fields = Vec::new();
    for f in &rec.fields {
        let declared = FieldType::of(&f.schema);
        match produced.iter().find(|(n, _, _)| *n == f.name) {
            None => {
                ok = false;
                p.add(
                    "output.schema",
                    format!(
                        "field `{}` is in the output schema but no step produces it",
                        f.name
                    ),
                    format!(
                        "remove it from the schema, or produce it (the steps produce: {})",
                        produced
                            .iter()
                            .map(|x| x.0.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
            }
            Some((name, src, ty)) => {
                let bounds = matches!(src, OutSource::WindowStart | OutSource::WindowEnd);
                let same = if bounds {
                    !declared.nullable
                        && matches!(declared.kind, Kind::Long | Kind::TimestampMillis)
                } else {
                    declared == *ty
                };
                if !same {
                    ok = false;
                    p.add(
                        "output.schema",
                        format!(
                            "field `{name}`: the schema says {declared}, the steps produce {ty}"
                        ),
                        format!("declare `{name}` as {ty} in the output schema"),
                    );
                }
                fields.push(OutField {
                    name: name.clone(),
                    source: *src,
                    schema: f.schema.clone(),
                    ty: declared,
                });
            }
        }
    }
    for (n, _, ty) in &produced {
        if !rec.fields.iter().any(|f| f.name == *n) {
            ok = false;
            p.add(
                "output.schema",
                format!("the steps produce `{n}` ({ty}) but the output schema has no such field"),
                format!("add {{\"name\": \"{n}\", \"type\": {ty}}} to the output schema"),
            );
        }
    }
    ok.then(|| OutputPlan {
        schema: schema.clone(),
        key_fields: keys
            .iter()
            .map(|k| KeyField {
                name: k.name.clone(),
                ty: k.ty.clone(),
            })
            .collect(),
        fields,
    })
}
