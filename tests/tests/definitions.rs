//! Pipeline definitions: every shipped pipeline validates, and invalid fixtures produce
//! exactly the messages in their `.expected` files (wording is part of the interface).
//! Set WEIR_BLESS=1 to rewrite the `.expected` files after a deliberate wording change:
//! the test then fails, asking you to review the diff (never under CI=true).

use std::process::Command;
use weir_tests::{bless, repo, text, weir_bin};

#[test]
fn every_shipped_pipeline_is_valid() {
    let mut n = 0;
    for entry in std::fs::read_dir(repo().join("pipelines")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            let loaded = weir::pipeline::load_file(&path, None);
            let problems: Vec<String> = loaded.problems.iter().map(|p| p.to_string()).collect();
            assert!(
                problems.is_empty(),
                "{}:\n{}",
                path.display(),
                problems.join("\n")
            );
            assert!(loaded.plan.is_some());
            n += 1;
        }
    }
    assert!(n >= 2, "expected the shipped pipelines in pipelines/");
}

#[test]
fn invalid_fixtures_report_every_problem_exactly() {
    let dir = repo().join("tests/fixtures/invalid");
    let bless = bless();
    let mut blessed = Vec::new();
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let out = Command::new(weir_bin())
            .args(["validate", &format!("fixtures/invalid/{name}")])
            .current_dir(repo().join("tests"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{name}: validate must exit 1");
        let got = text(&out.stdout);
        let expected_path = path.with_extension("expected");
        if bless {
            if std::fs::read_to_string(&expected_path).ok().as_deref() != Some(got.as_str()) {
                std::fs::write(&expected_path, &got).unwrap();
                blessed.push(expected_path.display().to_string());
            }
            n += 1;
            continue;
        }
        let want = std::fs::read_to_string(&expected_path)
            .unwrap_or_else(|e| panic!("{}: {e}", expected_path.display()));
        assert_eq!(
            got,
            want,
            "{name}: messages differ from {}",
            expected_path.display()
        );
        n += 1;
    }
    assert!(
        blessed.is_empty(),
        "WEIR_BLESS=1 rewrote {}: review the diff (git diff tests/fixtures), then run again without WEIR_BLESS",
        blessed.join(", ")
    );
    assert!(n >= 4);
}

#[test]
fn validate_exits_zero_on_valid_files() {
    let out = Command::new(weir_bin())
        .args([
            "validate",
            "pipelines/clickstream.yaml",
            "pipelines/clickstream-sessions.yaml",
        ])
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stdout));
    assert_eq!(
        text(&out.stdout),
        "pipelines/clickstream.yaml: ok\npipelines/clickstream-sessions.yaml: ok\n"
    );
}

/// A definition too big or too deeply nested is refused by a linear pre-scan, before the
/// YAML parser (quadratic in nesting: a 200 KB file of `[ ` took 22 s) ever sees it.
#[test]
fn huge_and_deep_definitions_are_refused_before_parsing() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "deep.yaml",
            format!("a: {}\n", "[ ".repeat(100_000)),
            "nest more than 64 levels deep",
        ),
        (
            "deep_braces.yaml",
            format!("a: {}\n", "{a: ".repeat(100_000)),
            "nest more than 64 levels deep",
        ),
        (
            "huge.yaml",
            format!("apiVersion: weir/v1\n# {}\n", "x".repeat(2 << 20)),
            "larger than 1048576 bytes",
        ),
    ];
    for (name, body, want) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, body).unwrap();
        let out = Command::new(weir_bin())
            .arg("validate")
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{name}");
        let got = text(&out.stdout);
        assert!(got.contains(want), "{name}: {got}");
        assert!(got.contains("1 problem(s)"), "{name}: {got}");
    }
    // Brackets in quotes and comments are not nesting.
    let quoted = format!(
        "a: \"{}\"\nb: '{}'\n# {}\n",
        "[".repeat(100),
        "{".repeat(100),
        "[".repeat(100)
    );
    let path = dir.path().join("quoted.yaml");
    std::fs::write(&path, quoted).unwrap();
    let out = Command::new(weir_bin())
        .arg("validate")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        !text(&out.stdout).contains("nest more"),
        "{}",
        text(&out.stdout)
    );
}

/// Found by fuzzing: cel-parser's ANTLR runtime panics on `page !=<<<…< '/health'`. The
/// definition gets a problem instead, and the parser still works afterwards in the same
/// process (as in `weir serve`, which compiles every deploy). Deep brackets are refused
/// before the parser's recursion sees them.
#[test]
fn a_cel_expression_that_crashes_the_parser_is_a_problem() {
    let path = repo().join("pipelines/clickstream.yaml");
    let good = std::fs::read_to_string(&path).unwrap();
    let resolver = weir::schema::SchemaResolver::for_pipeline(&path, None);
    let filter = "filter: \"page != '/health'\"";
    assert!(
        good.contains(filter),
        "the shipped pipeline's filter changed"
    );
    let cases = [
        (
            format!("filter: \"page !={} '/health'\"", "<".repeat(72)),
            "the CEL parser cannot read it",
        ),
        (
            format!("filter: \"{}true{}\"", "(".repeat(40), ")".repeat(40)),
            "nested more than 32 brackets deep",
        ),
        (
            format!("filter: \"{}\"", "x == 1 && ".repeat(500) + "true"),
            "bytes long",
        ),
    ];
    for (bad, want) in cases {
        let text = good.replace(filter, &bad);
        let loaded = weir::pipeline::load_str(&text, "bad.yaml", &resolver);
        let problems: Vec<String> = loaded.problems.iter().map(|p| p.to_string()).collect();
        assert!(
            problems
                .iter()
                .any(|p| p.contains(want) && p.contains("steps[0].filter")),
            "{want}: {problems:?}"
        );
        let again = weir::pipeline::load_str(&good, "good.yaml", &resolver);
        assert!(again.problems.is_empty(), "{:?}", again.problems);
    }
}
