//! Golden cases: `tests/golden/<case>/{pipeline.yaml, input.jsonl or input.avro, expected.jsonl}` and,
//! where dead letters are expected, `expected-dead.jsonl` (`{"line", "reason"}` per dead
//! letter). Expected files are written by hand or by `golden/generate.py`, never copied
//! from Weir's output. Each case also runs as a restart variant: checkpoint every 2
//! records, SIGKILL in the middle, resume, and the output must be byte-identical to an
//! uninterrupted run.

use std::path::{Path, PathBuf};
use std::process::Command;
use weir::source::file::{FileSource, InputFormat};
use weir_tests::{json_lines, repo, text, weir_bin};

fn case_dir(name: &str) -> PathBuf {
    repo().join("tests/golden").join(name)
}

/// `input.avro` (an Avro container file) when the case has one, else `input.jsonl`.
fn input_of(dir: &Path) -> &'static str {
    if dir.join("input.avro").is_file() {
        "input.avro"
    } else {
        "input.jsonl"
    }
}

fn run(
    dir: &Path,
    work: &Path,
    extra_env: Option<(&str, &str)>,
    every: &str,
) -> std::process::Output {
    let mut cmd = Command::new(weir_bin());
    cmd.args(["run", "pipeline.yaml", "--input", input_of(dir)])
        .arg("--output")
        .arg(work.join("out.jsonl"))
        .arg("--dead-letter")
        .arg(work.join("dead.jsonl"))
        .arg("--state-dir")
        .arg(work.join("state"))
        .args(["--checkpoint-every", every])
        .current_dir(dir);
    if let Some((k, v)) = extra_env {
        cmd.env(k, v);
    }
    cmd.output().expect("run weir")
}

fn golden(name: &str) {
    let dir = case_dir(name);
    let work = tempfile::tempdir().unwrap();
    let out = run(&dir, work.path(), None, "1000");
    assert!(
        out.status.success(),
        "{name}: weir failed: {}",
        text(&out.stderr)
    );

    let got = json_lines(&work.path().join("out.jsonl"));
    let want = json_lines(&dir.join("expected.jsonl"));
    if got != want {
        let show = |v: &[serde_json::Value]| {
            v.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        };
        panic!(
            "{name}: output differs\n--- expected\n{}\n--- got\n{}",
            show(&want),
            show(&got)
        );
    }
    let dead = json_lines(&work.path().join("dead.jsonl"));
    let want_dead = json_lines(&dir.join("expected-dead.jsonl"));
    let got_dead: Vec<serde_json::Value> = dead
        .iter()
        .map(|d| serde_json::json!({"line": d["source"]["line"], "reason": d["reason"]}))
        .collect();
    assert_eq!(got_dead, want_dead, "{name}: dead letters differ: {dead:?}");
    // Every dead letter carries its original bytes and coordinates.
    for d in &dead {
        assert!(
            d["value_b64"].is_string() && d["source"]["offset"].is_i64() && d["error"].is_string(),
            "{d}"
        );
        assert_eq!(
            d["pipeline"],
            serde_json::json!(format!("golden-{}", name.replace('_', "-")))
        );
    }

    // Restart variant.
    let input = dir.join(input_of(&dir));
    let total = FileSource::open(&input, InputFormat::Auto, "t")
        .unwrap()
        .count();
    // Checkpoints fall on even record counts; the kill on an odd one, so the resumed run
    // must truncate the outputs and re-emit what followed the last checkpoint.
    assert!(
        total >= 3,
        "{name}: a golden input needs at least 3 records"
    );
    let kill_at = ((total / 2) | 1).max(3).to_string();
    let crash = tempfile::tempdir().unwrap();
    let killed = run(
        &dir,
        crash.path(),
        Some(("WEIR_TEST_SIGKILL_AFTER", &kill_at)),
        "2",
    );
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            killed.status.signal(),
            Some(9),
            "{name}: expected a SIGKILL, got {:?}: {}",
            killed.status,
            text(&killed.stderr)
        );
    }
    let resumed = run(&dir, crash.path(), None, "2");
    assert!(
        resumed.status.success(),
        "{name}: resume failed: {}",
        text(&resumed.stderr)
    );
    assert!(
        text(&resumed.stderr).contains("resumed after record"),
        "{}",
        text(&resumed.stderr)
    );
    let a = std::fs::read(work.path().join("out.jsonl")).unwrap();
    let b = std::fs::read(crash.path().join("out.jsonl")).unwrap();
    assert_eq!(
        text(&a),
        text(&b),
        "{name}: output after a crash and restart differs"
    );
    let a = std::fs::read(work.path().join("dead.jsonl")).unwrap();
    let b = std::fs::read(crash.path().join("dead.jsonl")).unwrap();
    assert_eq!(
        text(&a),
        text(&b),
        "{name}: dead letters after a crash and restart differ"
    );
}

macro_rules! golden_cases {
    ($($name:ident),* $(,)?) => {
        $( #[test] fn $name() { golden(stringify!($name)); } )*
        const CASES: &[&str] = &[$(stringify!($name)),*];
    };
}

golden_cases!(
    tumbling,
    hopping,
    session_merge,
    out_of_order_late,
    aggregations,
    invalid_avro,
    schema_evolution,
    emit_update,
    emit_update_interval,
    many_keys,
    complex_types,
    avro_raw,
);

#[test]
fn every_golden_folder_is_a_test() {
    let mut folders: Vec<String> = std::fs::read_dir(repo().join("tests/golden"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    folders.sort();
    let mut cases: Vec<String> = CASES.iter().map(|s| s.to_string()).collect();
    cases.sort();
    assert_eq!(folders, cases, "add the new folder to golden_cases!");
}
