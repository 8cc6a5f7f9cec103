//! Loading a definition while collecting every problem.
//!
//! Pass 1 parses the YAML and deserializes each section on its own (`source`, each
//! `steps[i]`, `output`, each `sinks[i]` ...), so one typo does not hide the others.
//! Pass 2 ([`super::compile`]) checks meaning: fields exist, types fit, durations are
//! positive, the output schema matches. Each problem carries its path, line and a fix, and
//! its wording is tested (`tests/fixtures/invalid`): it is part of the interface.

use super::compile::compile;
use super::plan::Plan;
use super::problems::{Problem, Problems};
use super::{ApiVersion, Delivery, PipelineDef, StateDef, StepDef, TOP_LEVEL_KEYS};
use crate::schema::SchemaResolver;
use serde::de::DeserializeOwned;
use std::path::Path;
use yaml_serde::Value as Yaml;

/// The result of loading: the plan when there is no problem, else every problem found.
pub struct Loaded {
    pub def: Option<PipelineDef>,
    pub plan: Option<Plan>,
    pub problems: Vec<Problem>,
}

pub fn load_file(path: &Path, schemas_dir: Option<&Path>) -> Loaded {
    let file = path.display().to_string();
    // Read at most one byte past the bound: a huge file is refused, not loaded.
    let read = || -> std::io::Result<String> {
        use std::io::Read;
        let mut text = String::new();
        std::fs::File::open(path)?
            .take(MAX_DEFINITION_BYTES as u64 + 1)
            .read_to_string(&mut text)?;
        Ok(text)
    };
    match read() {
        Ok(text) => load_str(
            &text,
            &file,
            &SchemaResolver::for_pipeline(path, schemas_dir),
        ),
        Err(e) => Loaded {
            def: None,
            plan: None,
            problems: vec![Problem {
                file,
                line: None,
                path: String::new(),
                message: format!("cannot read the file: {e}"),
                fix: "check the path".into(),
            }],
        },
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// "did you mean" for an unknown key among `known`.
fn suggest(key: &str, known: &[&str]) -> String {
    let best = known
        .iter()
        .map(|k| (edit_distance(key, k), *k))
        .min()
        .filter(|(d, _)| *d <= 3);
    match best {
        Some((_, k)) => format!("did you mean `{k}`?"),
        None => format!("use one of: {}", known.join(", ")),
    }
}

/// From the rest of serde's "unknown field `x`, expected one of `a`, `b`" (or "unknown
/// variant ..."): the name and the names it expected.
fn name_and_expected(rest: &str) -> (&str, Vec<&str>) {
    let name = rest.split('`').next().unwrap_or_default();
    let known = rest
        .split("expected one of ")
        .nth(1)
        .or_else(|| rest.split("expected ").nth(1))
        .unwrap_or_default()
        // Two names come as "`a` or `b`", more as "one of `a`, `b`, `c`".
        .split(", ")
        .flat_map(|s| s.split(" or "))
        .map(|s| s.trim_matches('`'))
        .collect();
    (name, known)
}

/// Deserializes one section, adding a problem (with the precise path) when it does not fit.
fn section<T: DeserializeOwned>(p: &mut Problems, path: &str, v: &Yaml) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(v.clone()) {
        Ok(t) => Some(t),
        Err(e) => {
            let inner = e.path().to_string();
            let full = if inner == "." || inner.is_empty() {
                path.to_string()
            } else if inner.starts_with('[') {
                format!("{path}{inner}")
            } else {
                format!("{path}.{inner}")
            };
            let msg = e.inner().to_string();
            let fix = if let Some(rest) = msg.strip_prefix("unknown field `") {
                let (name, known) = name_and_expected(rest);
                let full_unknown = if full.ends_with(&format!(".{name}")) || full == name {
                    full.clone()
                } else {
                    format!("{full}.{name}")
                };
                p.add(
                    &full_unknown,
                    format!("unknown key `{name}`"),
                    suggest(name, &known),
                );
                return None;
            } else if msg.starts_with("missing field") {
                "add it (see the README's pipeline reference)".to_string()
            } else if let Some(rest) = msg.strip_prefix("unknown variant `") {
                let (name, known) = name_and_expected(rest);
                suggest(name, &known)
            } else {
                "see the README's pipeline reference for this key".to_string()
            };
            p.add(&full, msg, fix);
            None
        }
    }
}

/// The largest definition Weir reads (a real one is a few KiB).
pub const MAX_DEFINITION_BYTES: usize = 1 << 20;
/// The deepest flow nesting (`[` and `{`) a definition may have. Real definitions nest 3
/// or 4 levels; the YAML parser takes quadratic time on deep nesting (a 200 KB file of `[`
/// took 18 s), so the text is measured in one linear pass before it is parsed.
pub const MAX_FLOW_DEPTH: usize = 64;

/// Why a definition is too big or too deep to parse: (line, message, fix).
fn too_big(text: &str) -> Option<(usize, String, String)> {
    if text.len() > MAX_DEFINITION_BYTES {
        return Some((
            1,
            format!("the definition is larger than {MAX_DEFINITION_BYTES} bytes, the limit"),
            "split it into several pipelines, or move long lists into schemas".into(),
        ));
    }
    let (mut depth, mut line) = (0usize, 1usize);
    let (mut single, mut double, mut comment, mut escaped) = (false, false, false, false);
    let mut prev = b'\n';
    for &b in text.as_bytes() {
        if b == b'\n' {
            line += 1;
            comment = false;
        } else if comment {
        } else if double {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => double = false,
                _ => {}
            }
        } else if single {
            single = b != b'\'';
        } else {
            match b {
                b'#' if prev.is_ascii_whitespace() => comment = true,
                b'"' => double = true,
                b'\'' => single = true,
                b'[' | b'{' => {
                    depth += 1;
                    if depth > MAX_FLOW_DEPTH {
                        return Some((
                            line,
                            format!("`[` and `{{` nest more than {MAX_FLOW_DEPTH} levels deep"),
                            "a definition nests a few levels: close the brackets you opened".into(),
                        ));
                    }
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        prev = b;
    }
    None
}

/// Loads a definition from text. `file` names it in problems.
pub fn load_str(text: &str, file: &str, resolver: &SchemaResolver) -> Loaded {
    let fail = |p: Problems| Loaded {
        def: None,
        plan: None,
        problems: p.list,
    };
    if let Some((line, message, fix)) = too_big(text) {
        return Loaded {
            def: None,
            plan: None,
            problems: vec![Problem {
                file: file.to_string(),
                line: Some(line),
                path: String::new(),
                message,
                fix,
            }],
        };
    }
    let mut p = Problems::new(file, text);
    let doc: Yaml = match yaml_serde::from_str(text) {
        Ok(d) => d,
        Err(e) => {
            let line = e.location().map(|l| l.line());
            p.list.push(Problem {
                file: file.to_string(),
                line,
                path: String::new(),
                message: format!("not valid YAML: {e}"),
                fix: "fix the YAML syntax (indentation, colons, quotes)".into(),
            });
            return fail(p);
        }
    };
    let Yaml::Mapping(map) = &doc else {
        p.add(
            "",
            "a pipeline definition is a YAML mapping",
            "start with `apiVersion: weir/v1`",
        );
        return fail(p);
    };
    for k in map.keys() {
        let name = k.as_str().unwrap_or("?");
        if !TOP_LEVEL_KEYS.contains(&name) {
            p.add(
                name,
                format!("unknown key `{name}`"),
                suggest(name, TOP_LEVEL_KEYS),
            );
        }
    }
    let get = |k: &str| map.get(k);
    let required = |p: &mut Problems, k: &str, example: &str| -> Option<Yaml> {
        match get(k) {
            Some(v) => Some(v.clone()),
            None => {
                p.add(
                    k,
                    format!("missing required key `{k}`"),
                    format!("add {example}"),
                );
                None
            }
        }
    };
    let api = required(&mut p, "apiVersion", "apiVersion: weir/v1").and_then(|v| {
        let r = section::<ApiVersion>(&mut p, "apiVersion", &v);
        if r.is_none() {
            if let Some(last) = p.list.last_mut() {
                last.message = format!("unsupported apiVersion {}", yaml_text(&v));
                last.fix = "use apiVersion: weir/v1".into();
            }
        }
        r
    });
    let name = required(&mut p, "name", "name: my-pipeline")
        .and_then(|v| section::<String>(&mut p, "name", &v));
    if let Some(n) = &name {
        if n.is_empty()
            || !n
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            p.add(
                "name",
                format!("`{n}` is not a valid pipeline name"),
                "use letters, digits, - and _ only",
            );
        }
    }
    let description = get("description").and_then(|v| section::<String>(&mut p, "description", v));
    let source =
        required(&mut p, "source", "a source section").and_then(|v| section(&mut p, "source", &v));
    let steps: Option<Vec<StepDef>> =
        required(&mut p, "steps", "a steps list").and_then(|v| match v {
            Yaml::Sequence(items) => {
                let parsed: Vec<Option<StepDef>> = items
                    .iter()
                    .enumerate()
                    .map(|(i, it)| section(&mut p, &format!("steps[{i}]"), it))
                    .collect();
                parsed.into_iter().collect()
            }
            _ => {
                p.add(
                    "steps",
                    "must be a list",
                    "write each step as a list item: - key_by: [user_id]",
                );
                None
            }
        });
    let output = required(&mut p, "output", "output: {schema: my_output.avsc}")
        .and_then(|v| section(&mut p, "output", &v));
    let sinks = match get("sinks") {
        None => Some(Vec::new()),
        Some(Yaml::Sequence(items)) => items
            .iter()
            .enumerate()
            .map(|(i, it)| section(&mut p, &format!("sinks[{i}]"), it))
            .collect::<Vec<Option<_>>>()
            .into_iter()
            .collect(),
        Some(_) => {
            p.add(
                "sinks",
                "must be a list",
                "write each sink as a list item: - type: stdout",
            );
            None
        }
    };
    let dead_letter = match get("dead_letter") {
        None => Some(None),
        Some(v) => section(&mut p, "dead_letter", v).map(Some),
    };
    let state = match get("state") {
        None => Some(StateDef::default()),
        Some(v) => section(&mut p, "state", v),
    };
    let delivery = match get("delivery") {
        None => Some(Delivery::default()),
        Some(v) => section(&mut p, "delivery", v),
    };
    let (
        Some(api_version),
        Some(name),
        Some(source),
        Some(steps),
        Some(output),
        Some(sinks),
        Some(dead_letter),
        Some(state),
        Some(delivery),
    ) = (
        api,
        name,
        source,
        steps,
        output,
        sinks,
        dead_letter,
        state,
        delivery,
    )
    else {
        return fail(p);
    };
    let def = PipelineDef {
        api_version,
        name,
        description,
        source,
        steps,
        output,
        sinks,
        dead_letter,
        state,
        delivery,
    };
    let plan = compile(&def, resolver, &mut p);
    // In file order; problems on one line keep the order they were found in.
    p.list.sort_by_key(|x| x.line.unwrap_or(0));
    Loaded {
        def: Some(def),
        plan,
        problems: p.list,
    }
}

fn yaml_text(v: &Yaml) -> String {
    yaml_serde::to_string(v)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
