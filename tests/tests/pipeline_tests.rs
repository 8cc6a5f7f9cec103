//! `weir test`: the shipped pipelines' cases pass on a fresh clone, and an edited
//! expectation fails with a readable diff and exit 1; `--bless` writes them back.

use std::path::Path;
use std::process::{Command, Output};
use weir_tests::{repo, text, weir_bin};

fn weir_test(dir: &Path, args: &[&str]) -> Output {
    Command::new(weir_bin())
        .arg("test")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run weir test")
}

/// `pipelines/` and `schemas/` copied into a temporary directory, to edit.
fn copy_of_the_pipelines() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for sub in ["pipelines", "schemas"] {
        let st = Command::new("cp")
            .arg("-r")
            .arg(repo().join(sub))
            .arg(dir.path().join(sub))
            .status()
            .unwrap();
        assert!(st.success());
    }
    dir
}

#[test]
fn every_shipped_pipeline_has_cases_and_they_pass() {
    let out = weir_test(&repo(), &["pipelines/"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(!stdout.contains("has no test cases"), "{stdout}");
    for entry in std::fs::read_dir(repo().join("pipelines")).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "yaml") {
            let stem = p.file_stem().unwrap().to_string_lossy().to_string();
            assert!(
                stdout.contains(&format!("ok      {stem}/")),
                "{stem}: {stdout}"
            );
        }
    }
    assert!(
        stdout.contains("ok      clickstream/late-and-out-of-order: 4 result(s), 3 dead letter(s)"),
        "{stdout}"
    );
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
}

#[test]
fn an_edited_expectation_fails_with_a_diff_and_bless_writes_it_back() {
    let dir = copy_of_the_pipelines();
    let case = dir
        .path()
        .join("pipelines/tests/clickstream/late-and-out-of-order");
    let expected = std::fs::read_to_string(case.join("expected.jsonl")).unwrap();
    // alice's first minute had 3 views; say 4. Drop bob's second minute. Expect no decode
    // dead letter.
    let edited: Vec<String> = expected
        .lines()
        .filter(|l| !(l.contains("\"bob\"") && l.contains("1767225660000,\"window_end\"")))
        .map(|l| {
            if l.contains("\"alice\"") && l.contains("\"window_start\":1767225600000,") {
                l.replace("\"views\":3", "\"views\":4")
            } else {
                l.to_string()
            }
        })
        .collect();
    assert_eq!(edited.len(), 3, "{expected}");
    std::fs::write(case.join("expected.jsonl"), edited.join("\n") + "\n").unwrap();
    let dead = std::fs::read_to_string(case.join("expected-dead-letter.jsonl")).unwrap();
    let dead: Vec<&str> = dead.lines().filter(|l| !l.contains("decode")).collect();
    std::fs::write(
        case.join("expected-dead-letter.jsonl"),
        dead.join("\n") + "\n",
    )
    .unwrap();

    let out = weir_test(dir.path(), &["pipelines", "--filter", "clickstream/late"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
    for want in [
        "FAIL    clickstream/late-and-out-of-order",
        "    changed    {user_id: \"alice\", window_start: 1767225600000}: `views` expected 4, got 3",
        "    unexpected {\"user_id\":\"bob\",\"window_start\":1767225660000,",
        "    unexpected dead letter {\"line\":9,\"reason\":\"decode\",",
        "0 passed, 1 failed",
    ] {
        assert!(stdout.contains(want), "no {want:?} in:\n{stdout}");
    }

    // --bless writes what the pipeline does; then the case passes.
    let out = weir_test(
        dir.path(),
        &["pipelines", "--filter", "clickstream/late", "--bless"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("blessed clickstream/late-and-out-of-order"));
    let blessed = std::fs::read_to_string(case.join("expected.jsonl")).unwrap();
    assert_eq!(blessed.lines().count(), 4, "{blessed}");
    let out = weir_test(dir.path(), &["pipelines", "--filter", "clickstream/late"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
}

#[test]
fn no_cases_and_cases_without_a_pipeline_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("p/tests/ghost/one")).unwrap();
    let out = weir_test(dir.path(), &["p"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("no pipeline ghost.yaml"),
        "{}",
        text(&out.stderr)
    );
    std::fs::remove_dir_all(dir.path().join("p/tests")).unwrap();
    let out = weir_test(dir.path(), &["p"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("no test cases found"));
}
