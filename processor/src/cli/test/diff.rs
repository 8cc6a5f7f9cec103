//! How a case's results and dead letters differ from its expectations, as lines a person
//! reads: `missing`, `unexpected`, and `changed` with each field that differs.

use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// The results against the expectations. With `identity` (the key fields and window
/// start), results are matched by it (the n-th result of a window against the n-th
/// expected one: `emit: update` gives several), whatever their order; without it (a
/// stateless pipeline), by position.
pub(super) fn results(
    identity: &Option<Vec<String>>,
    want: &[Value],
    got: &[Value],
) -> Vec<String> {
    let mut out = Vec::new();
    match identity {
        None => {
            for i in 0..want.len().max(got.len()) {
                let name = format!("result {}", i + 1);
                match (want.get(i), got.get(i)) {
                    (Some(w), Some(g)) => changed(&name, w, g, &mut out),
                    (Some(w), None) => out.push(format!("missing    {w}")),
                    (None, Some(g)) => out.push(format!("unexpected {g}")),
                    (None, None) => {}
                }
            }
        }
        Some(fields) => {
            let index = |rows: &[Value]| {
                let mut seen: BTreeMap<String, usize> = BTreeMap::new();
                let mut m: BTreeMap<(String, usize), Value> = BTreeMap::new();
                for r in rows {
                    let id = name_of(fields, r);
                    let n = seen.entry(id.clone()).or_default();
                    *n += 1;
                    m.insert((id, *n), r.clone());
                }
                m
            };
            let (w, g) = (index(want), index(got));
            for ((id, n), wr) in &w {
                let name = if *n > 1 {
                    format!("{id} #{n}")
                } else {
                    id.clone()
                };
                match g.get(&(id.clone(), *n)) {
                    Some(gr) => changed(&name, wr, gr, &mut out),
                    None => out.push(format!("missing    {wr}")),
                }
            }
            for (k, gr) in &g {
                if !w.contains_key(k) {
                    out.push(format!("unexpected {gr}"));
                }
            }
        }
    }
    out
}

/// `{user_id: "alice", window_start: 1767225600000}`: the identity fields' values.
fn name_of(fields: &[String], row: &Value) -> String {
    let parts: Vec<String> = fields
        .iter()
        .map(|f| format!("{f}: {}", row.get(f).unwrap_or(&Value::Null)))
        .collect();
    format!("{{{}}}", parts.join(", "))
}

/// Each field of `name` that differs (or is in one only).
fn changed(name: &str, want: &Value, got: &Value, out: &mut Vec<String>) {
    if want == got {
        return;
    }
    let (Some(w), Some(g)) = (want.as_object(), got.as_object()) else {
        out.push(format!("changed    {name}: expected {want}, got {got}"));
        return;
    };
    let mut keys: Vec<&String> = w.keys().chain(g.keys()).collect();
    keys.sort();
    keys.dedup();
    for k in keys {
        match (w.get(k), g.get(k)) {
            (Some(a), Some(b)) if a == b => {}
            (Some(a), Some(b)) => {
                out.push(format!("changed    {name}: `{k}` expected {a}, got {b}"))
            }
            (Some(a), None) => out.push(format!(
                "changed    {name}: `{k}` expected {a}, got no such field"
            )),
            (None, Some(b)) => out.push(format!("changed    {name}: `{k}` not expected, got {b}")),
            (None, None) => {}
        }
    }
}

/// A dead letter as a case records it: the input line (or offset), the reason and the
/// message.
pub(super) fn dead_letter(d: &Value) -> Value {
    let src = &d["source"];
    let mut m = Map::new();
    match src.get("line").filter(|l| !l.is_null()) {
        Some(l) => m.insert("line".into(), l.clone()),
        None => m.insert("offset".into(), src["offset"].clone()),
    };
    m.insert("reason".into(), d["reason"].clone());
    m.insert("error".into(), d["error"].clone());
    Value::Object(m)
}

/// The dead letters against the expected ones. An expected entry matches a dead letter
/// that has each of its fields with the same value (so `{"line": 4, "reason": "schema"}`
/// leaves the message unchecked); each dead letter matches once.
pub(super) fn dead_letters(want: &[Value], got: &[Value]) -> Vec<String> {
    let mut left: Vec<&Value> = got.iter().collect();
    let mut out = Vec::new();
    for w in want {
        let fits = |g: &&Value| {
            w.as_object()
                .is_some_and(|o| o.iter().all(|(k, v)| g.get(k) == Some(v)))
        };
        match left.iter().position(fits) {
            Some(i) => {
                left.remove(i);
            }
            None => out.push(format!("missing    dead letter {w}")),
        }
    }
    for g in left {
        out.push(format!("unexpected dead letter {g}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn windowed_results_match_by_key_and_window_whatever_their_order() {
        let id = Some(vec!["user".to_string(), "window_start".to_string()]);
        let want = [
            json!({"user": "a", "window_start": 0, "n": 1}),
            json!({"user": "b", "window_start": 0, "n": 2}),
            json!({"user": "c", "window_start": 0, "n": 3}),
        ];
        let got = [
            json!({"user": "b", "window_start": 0, "n": 5}),
            json!({"user": "a", "window_start": 0, "n": 1}),
            json!({"user": "d", "window_start": 0, "n": 4}),
        ];
        let d = results(&id, &want, &got);
        assert_eq!(
            d,
            [
                "changed    {user: \"b\", window_start: 0}: `n` expected 2, got 5",
                "missing    {\"user\":\"c\",\"window_start\":0,\"n\":3}",
                "unexpected {\"user\":\"d\",\"window_start\":0,\"n\":4}",
            ]
        );
        assert!(results(
            &id,
            &want,
            &[want[2].clone(), want[0].clone(), want[1].clone()]
        )
        .is_empty());
    }

    #[test]
    fn stateless_results_match_by_position() {
        let want = [json!({"a": 1}), json!({"a": 2})];
        let got = [json!({"a": 1}), json!({"a": 3, "b": true})];
        assert_eq!(
            results(&None, &want, &got),
            [
                "changed    result 2: `a` expected 2, got 3",
                "changed    result 2: `b` not expected, got true",
            ]
        );
        assert_eq!(results(&None, &want, &want[..1]).len(), 1);
    }

    #[test]
    fn an_expected_dead_letter_checks_only_the_fields_it_has() {
        let got = [
            json!({"line": 4, "reason": "schema", "error": "field x"}),
            json!({"line": 9, "reason": "late", "error": "behind"}),
        ];
        assert!(dead_letters(
            &[json!({"line": 4, "reason": "schema"}), json!({"line": 9})],
            &got
        )
        .is_empty());
        assert_eq!(
            dead_letters(&[json!({"line": 5, "reason": "schema"})], &got),
            [
                "missing    dead letter {\"line\":5,\"reason\":\"schema\"}",
                "unexpected dead letter {\"line\":4,\"reason\":\"schema\",\"error\":\"field x\"}",
                "unexpected dead letter {\"line\":9,\"reason\":\"late\",\"error\":\"behind\"}",
            ]
        );
    }
}
