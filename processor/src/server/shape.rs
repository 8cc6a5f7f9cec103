//! What a deployment compares: the schema files a definition names, the parts of it that
//! shape its state (a redeploy that changes them cannot keep the state), safe names.

use yaml_serde::Value as Yaml;

pub(super) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn schema_names(yaml: &Yaml) -> Vec<String> {
    let mut out = Vec::new();
    let mut push = |v: Option<&Yaml>| {
        if let Some(s) = v.and_then(Yaml::as_str) {
            out.push(s.to_string());
        }
    };
    push(yaml.get("source").and_then(|s| s.get("schema")));
    push(yaml.get("output").and_then(|s| s.get("schema")));
    if let Some(Yaml::Mapping(m)) = yaml.get("source").and_then(|s| s.get("writer_schemas")) {
        for v in m.values() {
            push(Some(v));
        }
    }
    out
}

/// The schema files a definition names, for `weir deploy` to send along.
pub fn referenced_schemas(definition: &str) -> Vec<String> {
    yaml_serde::from_str::<Yaml>(definition)
        .map(|y| schema_names(&y))
        .unwrap_or_default()
}

/// The parts of a definition that shape its state: key, window (without grace, which only
/// moves the closing time) and aggregates. Two definitions with the same shape can share
/// state, as Kafka Streams can keep a store when its topology is unchanged.
fn state_shape(yaml: &str) -> Vec<(String, String)> {
    let doc: Yaml = yaml_serde::from_str(yaml).unwrap_or(Yaml::Null);
    let mut out = Vec::new();
    let render = |v: &Yaml| serde_json::to_string(v).unwrap_or_default();
    if let Some(Yaml::Sequence(steps)) = doc.get("steps") {
        for s in steps {
            if let Some(k) = s.get("key_by") {
                out.push(("key_by".to_string(), render(k)));
            }
            if let Some(w) = s.get("window") {
                let mut w = w.clone();
                if let Yaml::Mapping(m) = &mut w {
                    m.remove("grace");
                }
                out.push(("window".to_string(), render(&w)));
            }
            if let Some(a) = s.get("aggregate").and_then(|a| a.get("outputs")) {
                out.push(("aggregate.outputs".to_string(), render(a)));
            }
        }
    }
    if let Some(t) = doc.get("source").and_then(|s| s.get("event_time")) {
        out.push(("source.event_time".to_string(), render(t)));
    }
    out
}

pub(super) fn incompatibilities(old: &str, new: &str) -> Vec<String> {
    let (a, b) = (state_shape(old), state_shape(new));
    let mut reasons = Vec::new();
    let names: Vec<&String> = a.iter().chain(b.iter()).map(|(k, _)| k).collect();
    let mut seen = Vec::new();
    for n in names {
        if seen.contains(&n) {
            continue;
        }
        seen.push(n);
        let va: Vec<&String> = a.iter().filter(|(k, _)| k == n).map(|(_, v)| v).collect();
        let vb: Vec<&String> = b.iter().filter(|(k, _)| k == n).map(|(_, v)| v).collect();
        if va != vb {
            let show = |v: &[&String]| {
                if v.is_empty() {
                    "(none)".to_string()
                } else {
                    v.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                }
            };
            reasons.push(format!("{n} changes from {} to {}", show(&va), show(&vb)));
        }
    }
    reasons
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "name: a\nsteps:\n  - key_by: [user]\n  - window: {type: tumbling, size: 1m, grace: 5s}\n  - aggregate:\n      outputs:\n        n: {fn: count}\n      emit: final\n";

    #[test]
    fn grace_and_emit_changes_keep_state_key_changes_do_not() {
        let b = A
            .replace("grace: 5s", "grace: 30s")
            .replace("final", "update");
        assert!(incompatibilities(A, &b).is_empty());
        let c = A.replace("[user]", "[page]");
        let r = incompatibilities(A, &c);
        assert_eq!(r.len(), 1, "{r:?}");
        assert!(
            r[0].starts_with("key_by changes from [\"user\"] to [\"page\"]"),
            "{r:?}"
        );
        let d = A.replace("size: 1m", "size: 5m");
        assert!(incompatibilities(A, &d)[0].starts_with("window changes"));
    }

    #[test]
    fn names_safe_for_directories() {
        assert!(valid_name("clicks-per-minute_v2.1"));
        assert!(!valid_name("../x"));
        assert!(!valid_name(".hidden"));
        assert!(!valid_name(""));
    }
}
