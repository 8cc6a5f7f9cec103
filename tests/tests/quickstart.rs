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
