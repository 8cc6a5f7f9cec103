//! The steps after the row steps: `key_by`, `window`, `aggregate`.

use super::expr::{compile_expr, declared_type};
use super::rules::{duration, field_names, groupable, out_kind, MAX_WINDOWS_PER_EVENT};
use crate::pipeline::plan::{AggPlan, EmitPlan, KeyField, KeyPlan, WindowAssigner, WindowPlan};
use crate::pipeline::problems::Problems;
use crate::pipeline::{
    AggFn, AggregateDef, DurationSpec, EmitMode, KeyByDef, WindowDef, WindowKind,
};
use crate::schema::{FieldType, Kind};

pub(super) fn compile_key(
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

pub(super) fn compile_window(p: &mut Problems, path: &str, w: &WindowDef) -> Option<WindowPlan> {
    let grace = duration(p, &format!("{path}.grace"), &w.grace, false).unwrap_or(0);
    let need =
        |p: &mut Problems, name: &str, d: &Option<DurationSpec>, example: &str| -> Option<i64> {
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
    let forbid = |p: &mut Problems, name: &str, d: &Option<DurationSpec>| {
        if d.is_some() {
            let what = match w.kind {
                WindowKind::None => "a table (window type none)".to_string(),
                k => format!("a {k:?} window").to_lowercase(),
            };
            p.add(
                &format!("{path}.{name}"),
                format!("{what} has no `{name}`"),
                match name {
                    "ttl" => "remove ttl: it bounds a table's keys (window type none); a window's state ends when it closes".to_string(),
                    _ => format!("remove {name}"),
                },
            );
        }
    };
    if w.kind != WindowKind::None {
        forbid(p, "ttl", &w.ttl);
    }
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
        WindowKind::None => {
            forbid(p, "size", &w.size);
            forbid(p, "advance", &w.advance);
            forbid(p, "gap", &w.gap);
            if w.grace.is_some() {
                p.add(
                    &format!("{path}.grace"),
                    "a table (window type none) has no grace: it never closes",
                    "remove grace; set ttl to drop keys untouched that long",
                );
            }
            // A bad ttl is reported; the other checks still run on the table.
            let ttl = duration(p, &format!("{path}.ttl"), &w.ttl, true);
            WindowAssigner::Table { ttl }
        }
    };
    Some(WindowPlan { assigner, grace })
}

pub(super) fn compile_aggregate(
    p: &mut Problems,
    path: &str,
    a: &AggregateDef,
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
