//! One checkpoint record for every way of running a pipeline: a state directory left by
//! one path resumes under another. (The benchmark once wrote raw offset bytes under the
//! checkpoint key, and a later `weir run` on its `--state-dir` refused the state.)

use weir_tests::{text, weir};

/// `n` bids as JSON events, one a second from `t0`, bidders 0..10.
fn bids(t0: i64, n: u64) -> String {
    (0..n)
        .map(|i| {
            format!(
                r#"{{"auction":1000,"bidder":{},"price":{},"channel":"apple","url":"u","date_time":{},"extra":"x"}}"#,
                i % 10,
                i + 1,
                t0 + i as i64 * 1000
            ) + "\n"
        })
        .collect()
}

const BASE: i64 = 1_767_225_600_000;

#[test]
fn a_benchmark_state_resumes_under_a_file_replay() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let state_s = state.display().to_string();
    let out = weir(&[
        "bench",
        "--events",
        "3000",
        "--keys",
        "10",
        "--checkpoint-every",
        "1000",
        "--state-dir",
        &state_s,
    ]);
    assert!(out.status.success(), "bench: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("results         "),
        "{}",
        text(&out.stdout)
    );
    // The file's first 3,000 records are the ones the checkpoint covers; 5 follow.
    let input = dir.path().join("bids.jsonl");
    std::fs::write(&input, bids(BASE, 3005)).unwrap();
    let run = |state: &str| {
        weir(&[
            "run",
            "pipelines/nexmark-bids.yaml",
            "--input",
            &input.display().to_string(),
            "--state-dir",
            state,
            "--output",
            &dir.path().join("out.jsonl").display().to_string(),
            "--dead-letter",
            &dir.path().join("dead.jsonl").display().to_string(),
        ])
    };
    let out = run(&state_s);
    let err = text(&out.stderr);
    assert!(out.status.success(), "run on the bench's state: {err}");
    assert!(err.contains("resumed after record 3000"), "{err}");
    // The counters go on from the benchmark's; its input ended, so every window closed and
    // the 5 records after it are late (as after a finished file replay).
    assert!(err.contains("3005 events in"), "{err}");
    assert!(err.contains("5 late"), "{err}");
}

#[test]
fn a_file_replay_state_resumes_under_the_benchmark() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state").display().to_string();
    let input = dir.path().join("bids.jsonl");
    std::fs::write(&input, bids(BASE, 5)).unwrap();
    let out = weir(&[
        "run",
        "pipelines/nexmark-bids.yaml",
        "--input",
        &input.display().to_string(),
        "--state-dir",
        &state,
        "--output",
        &dir.path().join("out.jsonl").display().to_string(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = weir(&[
        "bench",
        "--events",
        "10",
        "--keys",
        "10",
        "--state-dir",
        &state,
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "bench: {}", text(&out.stderr));
    // It resumed after the replay's 5 records: 5 more, late behind the closed windows.
    assert!(stdout.contains("weir bench: 10 events"), "{stdout}");
    assert!(stdout.contains("dead letters 5"), "{stdout}");
}
