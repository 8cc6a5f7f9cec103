//! State hygiene: closed windows are deleted from RocksDB, and a run whose write cache is
//! far smaller than its state (it spills and reads back) gives the same results.

use weir::pipeline::load_file;
use weir::runtime::{run_file, RunOptions};
use weir::source::file::InputFormat;
use weir::state::Store;
use weir_tests::{json_lines, repo};

fn run(
    cache_entries: usize,
    checkpoint_every: u64,
) -> (Vec<serde_json::Value>, tempfile::TempDir, u64) {
    let dir = repo().join("tests/golden/many_keys");
    let mut plan = load_file(&dir.join("pipeline.yaml"), None)
        .plan
        .expect("valid");
    plan.state.cache_entries = cache_entries;
    let work = tempfile::tempdir().unwrap();
    let opts = RunOptions {
        input: dir.join("input.jsonl"),
        input_format: InputFormat::Auto,
        output: Some(work.path().join("out.jsonl").display().to_string()),
        dead_letter: Some(work.path().join("dead.jsonl").display().to_string()),
        state_dir: Some(work.path().join("state")),
        checkpoint_every,
        conn: Default::default(),
    };
    let summary = run_file(&plan, &opts).unwrap();
    assert_eq!(summary.counters.events_in, 6000);
    (
        json_lines(&work.path().join("out.jsonl")),
        work,
        summary.evicted,
    )
}

#[test]
fn closed_windows_leave_no_state_behind() {
    let (out, work, _) = run(1_000_000, 500);
    assert!(out.len() > 1000);
    let plan = load_file(&repo().join("tests/golden/many_keys/pipeline.yaml"), None)
        .plan
        .unwrap();
    let store = Store::open(&work.path().join("state"), &plan.state).unwrap();
    assert_eq!(
        store.scan(b"w").unwrap().len(),
        0,
        "window entries left in RocksDB"
    );
    assert_eq!(
        store.scan(b"s").unwrap().len(),
        0,
        "session entries left in RocksDB"
    );
    assert!(store
        .get(weir::state::checkpoint::META_KEY)
        .unwrap()
        .is_some());
}

#[test]
fn a_tiny_cache_spills_to_rocksdb_and_gives_the_same_results() {
    let (big, _a, none) = run(1_000_000, 10_000);
    let (tiny, _b, evicted) = run(10, 10_000);
    assert_eq!(none, 0, "a cache bigger than the state never evicts");
    assert!(
        evicted > 1000,
        "a 10-entry cache for thousands of keys evicted only {evicted} entries: nothing spilled"
    );
    assert_eq!(big, tiny);
    assert_eq!(
        big,
        json_lines(&repo().join("tests/golden/many_keys/expected.jsonl"))
    );
}
