//! The README's first command, as a test: the shipped clickstream pipeline over the shipped
//! event log (out-of-order, late and invalid events included).

use std::process::Command;
use weir_tests::{json_lines, repo, text, weir_bin};

fn run_example(pipeline: &str, dir: &std::path::Path) -> (String, String) {
    let out = Command::new(weir_bin())
        .args([
            "run",
            pipeline,
            "--input",
            "examples/clickstream.jsonl",
            "--dead-letter",
        ])
        .arg(dir.join("dead.jsonl"))
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    (text(&out.stdout), text(&out.stderr))
}

#[test]
fn clickstream_example_runs_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let (stdout, stderr) = run_example("pipelines/clickstream.yaml", dir.path());
    let results: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // 16 (user, minute) windows: the README's quick start shows them.
    assert_eq!(results.len(), 16, "{stdout}");
    for r in &results {
        assert_eq!(
            r["window_end"].as_i64().unwrap() - r["window_start"].as_i64().unwrap(),
            60_000
        );
        assert!(r["views"].as_i64().unwrap() >= 1);
    }
    // 67 lines: 1 health check filtered, 1 late, 1 truncated JSON, 2 schema violations.
    assert!(
        stderr.contains("67 events in")
            && stderr.contains("4 dead-lettered (decode 1, schema 2, expression 0, late 1)")
            && stderr.contains("1 filtered"),
        "{stderr}"
    );
    let dead = json_lines(&dir.path().join("dead.jsonl"));
    let reasons: Vec<&str> = dead.iter().map(|d| d["reason"].as_str().unwrap()).collect();
    assert_eq!(reasons, ["late", "decode", "schema", "schema"]);
    // The sum of views equals the events that were neither filtered nor dead-lettered.
    let views: i64 = results.iter().map(|r| r["views"].as_i64().unwrap()).sum();
    assert_eq!(views, 67 - 1 - 4);
}

#[test]
fn replay_is_deterministic() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let first = run_example("pipelines/clickstream-sessions.yaml", a.path()).0;
    let second = run_example("pipelines/clickstream-sessions.yaml", b.path()).0;
    assert!(!first.is_empty());
    assert_eq!(first, second);
    assert_eq!(
        std::fs::read(a.path().join("dead.jsonl")).unwrap(),
        std::fs::read(b.path().join("dead.jsonl")).unwrap()
    );
}

/// The README's stateless example: `pipelines/clickstream-clean.yaml` over the same log.
/// Expectations from reading the log independently: every line that is a JSON object with
/// the schema's required fields and a page other than `/health` comes out, in order, with
/// a missing referrer as "direct".
#[test]
fn clickstream_clean_example_routes_every_valid_event() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(weir_bin())
        .args([
            "run",
            "pipelines/clickstream-clean.yaml",
            "--input",
            "examples/clickstream.jsonl",
            "--output",
            "-",
            "--dead-letter",
        ])
        .arg(dir.path().join("dead.jsonl"))
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let got: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let log = std::fs::read_to_string(repo().join("examples/clickstream.jsonl")).unwrap();
    let want: Vec<(String, String, String)> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| {
            ["user_id", "page", "ts"]
                .iter()
                .all(|f| v.get(f).is_some_and(|x| !x.is_null()))
                && v["user_id"].is_string()
                && v["page"].is_string()
        })
        .filter(|v| v["page"] != "/health")
        .map(|v| {
            (
                v["user_id"].as_str().unwrap().to_string(),
                v["page"].as_str().unwrap().to_string(),
                v["referrer"].as_str().unwrap_or("direct").to_string(),
            )
        })
        .collect();
    let got_rows: Vec<(String, String, String)> = got
        .iter()
        .map(|v| {
            (
                v["user_id"].as_str().unwrap().to_string(),
                v["page"].as_str().unwrap().to_string(),
                v["referrer"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(got_rows, want);
    assert_eq!(got.len(), 63, "the README's count");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("67 events in, 63 results out, 3 dead-lettered"),
        "{stderr}"
    );
}
