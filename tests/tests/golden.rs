//! Golden cases: `tests/golden/<case>/{pipeline.yaml, input.jsonl or input.avro, expected.jsonl}` and,
//! where dead letters are expected, `expected-dead.jsonl` (`{"line", "reason"}` per dead
//! letter). Expected files are written by hand or by `golden/generate.py`, never copied
//! from Weir's output. Each case also runs as a restart variant: checkpoint every 2
//! records, SIGKILL in the middle, resume, and the output must be byte-identical to an
//! uninterrupted run.

use base64::Engine as _;
use std::collections::HashMap;
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

enum Want {
    Bytes(Vec<u8>),
    Json(serde_json::Value),
    /// An Avro container datum: its bytes are the writer's encoding, not in the file.
    NonEmpty,
}

struct Coordinates {
    partition: u64,
    offset: i64,
    value: Want,
}

/// Where the record of input line `line` (1-based) is, and what bytes it has, read
/// without Weir's source: a values file numbers its non-blank lines 0, 1, ...; a records
/// file takes explicit offsets (the next one per partition follows), and a line that is not
/// a valid record takes no offset (partition 0, the next offset there).
fn coordinates(input: &Path, line: u64) -> Coordinates {
    if input.extension().is_some_and(|e| e == "avro") {
        return Coordinates {
            partition: 0,
            offset: line as i64 - 1,
            value: Want::NonEmpty,
        };
    }
    let data = std::fs::read(input).unwrap();
    let lines: Vec<&[u8]> = data
        .split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .collect();
    let blank = |l: &[u8]| l.iter().all(u8::is_ascii_whitespace);
    let object = |l: &[u8]| match serde_json::from_slice::<serde_json::Value>(l) {
        Ok(serde_json::Value::Object(m)) => Some(m),
        _ => None,
    };
    let records = lines
        .iter()
        .find(|l| !blank(l))
        .and_then(|l| object(l))
        .is_some_and(|m| m.contains_key("value") || m.contains_key("value_b64"));
    let mut next: HashMap<u64, i64> = HashMap::new();
    for (i, l) in lines.iter().enumerate() {
        if blank(l) {
            continue;
        }
        let this = i as u64 + 1 == line;
        let whole = Coordinates {
            partition: 0,
            offset: *next.get(&0).unwrap_or(&0),
            value: Want::Bytes(l.to_vec()),
        };
        if !records {
            let off = next.entry(0).or_insert(0);
            if this {
                return Coordinates {
                    offset: *off,
                    ..whole
                };
            }
            *off += 1;
            continue;
        }
        let m = object(l);
        let field = |k: &str| m.as_ref().and_then(|m| m.get(k));
        let partition = match field("partition") {
            None => Some(0),
            Some(v) => v.as_u64().filter(|p| *p <= i32::MAX as u64),
        };
        let explicit = field("offset").map(|v| v.as_i64().filter(|o| *o >= 0));
        let value = match (field("value"), field("value_b64").and_then(|v| v.as_str())) {
            (Some(v), _) => Some(Want::Json(v.clone())),
            (None, Some(b)) => base64::engine::general_purpose::STANDARD
                .decode(b)
                .ok()
                .map(Want::Bytes),
            _ => None,
        };
        let ts_ok = field("timestamp").is_none_or(|t| t.is_i64());
        match (m.is_some() && ts_ok, partition, explicit, value) {
            (true, Some(p), e, Some(value)) if e != Some(None) => {
                let off = e.flatten().unwrap_or(*next.get(&p).unwrap_or(&0));
                next.insert(p, off + 1);
                if this {
                    return Coordinates {
                        partition: p,
                        offset: off,
                        value,
                    };
                }
            }
            _ if this => return whole,
            _ => {}
        }
    }
    panic!("{}: no record on line {line}", input.display())
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
    assert!(
        dir.join("expected.jsonl").is_file(),
        "{name}: expected.jsonl is missing (an empty file says \"no results\")"
    );
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
    // Every dead letter carries its original bytes and coordinates, as an independent
    // reading of the input gives them.
    let input = dir.join(input_of(&dir));
    for d in &dead {
        let line = d["source"]["line"].as_u64().unwrap_or(0);
        let want = coordinates(&input, line);
        let b64 = d["value_b64"].as_str().unwrap_or_default();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap_or_else(|e| panic!("{name}: value_b64 {b64:?}: {e}"));
        assert_eq!(
            (
                d["source"]["partition"].as_u64(),
                d["source"]["offset"].as_i64()
            ),
            (Some(want.partition), Some(want.offset)),
            "{name}: coordinates of the dead letter of line {line}: {d}"
        );
        match &want.value {
            Want::Bytes(b) => assert_eq!(&bytes, b, "{name}: bytes of line {line}: {d}"),
            Want::Json(j) => assert_eq!(
                serde_json::from_slice::<serde_json::Value>(&bytes)
                    .ok()
                    .as_ref(),
                Some(j),
                "{name}: value of line {line}: {d}"
            ),
            Want::NonEmpty => assert!(!bytes.is_empty(), "{name}: line {line}: {d}"),
        }
        assert!(d["error"].as_str().is_some_and(|e| !e.is_empty()), "{d}");
        assert_eq!(
            d["pipeline"],
            serde_json::json!(format!("golden-{}", name.replace('_', "-")))
        );
    }

    // Restart variant.
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
    event_time_range,
    hostile_lines,
    non_finite,
    filtered_time,
    session_order,
    late_partition,
    stateless,
    rekeyed,
    table_ttl,
    table_many,
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

/// The file sink buffers 64 KiB, so a kill between checkpoints usually finds the output
/// file at its checkpointed length. Here far more than 64 KiB of results follow the last
/// checkpoint before the kill: the file on disk is longer than the checkpoint says, and the
/// resumed run must cut it back (a sink that appended would duplicate those results).
#[test]
fn restart_truncates_output_written_after_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let golden = case_dir("tumbling");
    for f in ["input.avsc", "output.avsc"] {
        std::fs::copy(golden.join(f), dir.path().join(f)).unwrap();
    }
    let yaml = std::fs::read_to_string(golden.join("pipeline.yaml"))
        .unwrap()
        .replace("size: 10s", "size: 1s");
    std::fs::write(dir.path().join("pipeline.yaml"), yaml).unwrap();
    // One event per second: each closes the previous second's window (one result).
    let input: String = (0..6000)
        .map(|i| {
            format!(
                "{{\"user\":\"user-{i:05}\",\"n\":{i},\"ts\":{}}}\n",
                i * 1000
            )
        })
        .collect();
    std::fs::write(dir.path().join("input.jsonl"), input).unwrap();
    let clean = tempfile::tempdir().unwrap();
    let out = run(dir.path(), clean.path(), None, "2000");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let full = std::fs::read(clean.path().join("out.jsonl")).unwrap();
    assert_eq!(text(&full).lines().count(), 6000);

    let crash = tempfile::tempdir().unwrap();
    let killed = run(
        dir.path(),
        crash.path(),
        Some(("WEIR_TEST_SIGKILL_AFTER", "3900")),
        "2000",
    );
    assert!(!killed.status.success());
    // The last checkpoint was after record 2000 (1999 results); the file holds more.
    let partial = std::fs::read(crash.path().join("out.jsonl")).unwrap();
    let lines = text(&partial).lines().count();
    assert!(
        lines > 2999,
        "only {lines} results reached the file before the kill: the test no longer exercises truncation"
    );
    let resumed = run(dir.path(), crash.path(), None, "2000");
    assert!(resumed.status.success(), "{}", text(&resumed.stderr));
    assert!(
        text(&resumed.stderr).contains("resumed after record 2000"),
        "{}",
        text(&resumed.stderr)
    );
    let after = std::fs::read(crash.path().join("out.jsonl")).unwrap();
    assert!(
        after == full,
        "output after the restart differs from a clean run"
    );
}
