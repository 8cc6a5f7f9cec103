//! `output` and `sinks`: the output schema checked against the keys and aggregates, and
//! each sink's settings.

use crate::pipeline::plan::{AggPlan, KeyField, OutField, OutSource, OutputPlan};
use crate::pipeline::problems::Problems;
use crate::pipeline::{SinkDef, SinkKind};
use crate::schema::{FieldType, Kind};
use apache_avro::Schema;

pub(super) fn check_output(
    p: &mut Problems,
    schema: &Schema,
    keys: &[KeyField],
    aggs: &[AggPlan],
    table: bool,
) -> Option<OutputPlan> {
    // What the steps produce, in order. A table has no window bounds.
    let mut produced: Vec<(String, OutSource, FieldType)> = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        produced.push((k.name.clone(), OutSource::Key(i), k.ty.clone()));
    }
    if table {
        for (i, a) in aggs.iter().enumerate() {
            produced.push((a.name.clone(), OutSource::Agg(i), a.out.clone()));
        }
        let fields = match_fields(p, schema, &produced, &TABLE)?;
        return Some(OutputPlan {
            schema: schema.clone(),
            key_fields: keys.to_vec(),
            fields,
        });
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
    let fields = match_fields(p, schema, &produced, &STEPS)?;
    Some(OutputPlan {
        schema: schema.clone(),
        key_fields: keys.to_vec(),
        fields,
    })
}

/// A stateless pipeline's output schema: exactly the row's fields (the source schema's, or
/// the last `map`'s), with their types.
pub(super) fn check_row_output(
    p: &mut Problems,
    schema: &Schema,
    row: &[(String, FieldType)],
    keys: &[KeyField],
) -> Option<OutputPlan> {
    let produced: Vec<(String, OutSource, FieldType)> = row
        .iter()
        .enumerate()
        .map(|(i, (n, ty))| (n.clone(), OutSource::Row(i), ty.clone()))
        .collect();
    let fields = match_fields(p, schema, &produced, &EVENTS)?;
    Some(OutputPlan {
        schema: schema.clone(),
        key_fields: keys.to_vec(),
        fields,
    })
}

/// How the problems name what feeds the output.
struct Feed {
    /// "the steps produce", "the events have".
    has: &'static str,
    /// Why a schema field is unfed, and how to feed it.
    unfed: &'static str,
    feed: &'static str,
    /// The fix's tail for a field the schema lacks.
    or_drop: &'static str,
}

const STEPS: Feed = Feed {
    has: "the steps produce",
    unfed: "no step produces it",
    feed: "produce it",
    or_drop: "",
};

const TABLE: Feed = Feed {
    has: "the steps produce",
    unfed: "no step produces it (a table, window type none, has no window_start or window_end)",
    feed: "produce it",
    or_drop: "",
};

const EVENTS: Feed = Feed {
    has: "the events have",
    unfed: "the events have no such field",
    feed: "produce it with a map step",
    or_drop: ", or drop the field with a map step",
};

/// The output schema's fields matched, by name and type, against what feeds them: each
/// field the schema has and nothing feeds, each type that differs and each fed field the
/// schema lacks is a problem. `None` when there is any.
fn match_fields(
    p: &mut Problems,
    schema: &Schema,
    produced: &[(String, OutSource, FieldType)],
    feed: &Feed,
) -> Option<Vec<OutField>> {
    let Schema::Record(rec) = schema else {
        p.add(
            "output.schema",
            "the output schema must be an Avro record",
            "wrap the fields in {\"type\": \"record\", ...}",
        );
        return None;
    };
    let has = feed.has;
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
                        "field `{}` is in the output schema but {}",
                        f.name, feed.unfed
                    ),
                    format!(
                        "remove it from the schema, or {} ({has}: {})",
                        feed.feed,
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
                        format!("field `{name}`: the schema says {declared}, {has} {ty}"),
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
    for (n, _, ty) in produced {
        if !rec.fields.iter().any(|f| f.name == *n) {
            ok = false;
            p.add(
                "output.schema",
                format!("{has} `{n}` ({ty}) but the output schema has no such field"),
                format!(
                    "add {{\"name\": \"{n}\", \"type\": {ty}}} to the output schema{}",
                    feed.or_drop
                ),
            );
        }
    }
    ok.then_some(fields)
}

pub(super) fn check_sink(p: &mut Problems, path: &str, s: &SinkDef) {
    use SinkKind::*;
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
