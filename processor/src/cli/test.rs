//! `weir test`: users' pipeline tests, offline, with no broker (as Kafka Streams'
//! TopologyTestDriver or ksqlDB's test runner). A case is a directory next to the pipelines:
//!
//! ```text
//! pipelines/clickstream.yaml
//! pipelines/tests/clickstream/<case>/input.jsonl              (or input.avro)
//! pipelines/tests/clickstream/<case>/expected.jsonl           the results, one JSON object a line
//! pipelines/tests/clickstream/<case>/expected-dead-letter.jsonl   optional: none expected without it
//! ```
//!
//! Each case runs as `weir run <pipeline> --input <case>/input.jsonl` does, with the results
//! and dead letters written to files in a temporary directory instead of the pipeline's
//! sinks; then they are compared with the expectations ([`diff`]).

mod diff;

use crate::pipeline::{load_file, plan::Plan};
use crate::runtime::file::{run_file, RunOptions};
use crate::runtime::outputs::Connections;
use crate::source::file::InputFormat;
use anyhow::Context;
use clap::Args;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Run the pipelines' test cases offline (no broker) and compare their results and dead
/// letters with the expectations: `<dir>/tests/<pipeline>/<case>/{input.jsonl,
/// expected.jsonl, expected-dead-letter.jsonl}`. Prints one line per case and a diff for each
/// failure; exits 1 if any case fails.
#[derive(Args)]
pub struct TestArgs {
    /// Directories of pipeline definitions (their cases are in `<dir>/tests/`), or
    /// pipeline files.
    #[arg(default_value = "pipelines")]
    paths: Vec<PathBuf>,
    /// Write each case's expectations from what the pipeline does now (review them!).
    #[arg(long)]
    bless: bool,
    /// Only the cases whose `<pipeline>/<case>` name contains this.
    #[arg(long)]
    filter: Option<String>,
    /// A directory to look for schemas in first.
    #[arg(long)]
    schemas: Option<PathBuf>,
}

/// One case: its pipeline and its directory.
struct Case {
    pipeline: PathBuf,
    name: String,
    dir: PathBuf,
}

pub fn run(a: TestArgs) -> anyhow::Result<ExitCode> {
    let mut cases = Vec::new();
    let mut bare = Vec::new();
    for p in &a.paths {
        find(p, &mut cases, &mut bare)?;
    }
    if let Some(f) = &a.filter {
        cases.retain(|c| c.name.contains(f.as_str()));
    }
    for p in &bare {
        let stem = p
            .file_stem()
            .map(|s| s.to_string_lossy())
            .unwrap_or_default();
        println!(
            "note: {} has no test cases (add {}/tests/{stem}/<case>/input.jsonl)",
            p.display(),
            p.parent().unwrap_or(Path::new(".")).display()
        );
    }
    if cases.is_empty() {
        println!("no test cases found");
        return Ok(ExitCode::from(1));
    }
    let (mut passed, mut failed) = (0, 0);
    for c in &cases {
        match run_case(c, &a) {
            Ok(Outcome::Pass(what)) => {
                passed += 1;
                println!("ok      {}: {what}", c.name);
            }
            Ok(Outcome::Blessed(what)) => {
                passed += 1;
                println!("blessed {}: {what}", c.name);
            }
            Ok(Outcome::Fail(lines)) => {
                failed += 1;
                println!("FAIL    {}", c.name);
                for l in lines {
                    println!("    {l}");
                }
            }
            Err(e) => {
                failed += 1;
                println!("FAIL    {}: {e:#}", c.name);
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The cases of a directory of pipelines, or of one pipeline file. Pipelines with no case
/// go to `bare`; a tests directory with no pipeline of its name is an error.
fn find(path: &Path, cases: &mut Vec<Case>, bare: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let (root, pipelines): (PathBuf, Vec<PathBuf>) = if path.is_dir() {
        let mut ps: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("reading {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .collect();
        ps.sort();
        (path.to_path_buf(), ps)
    } else if path.is_file() {
        let root = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        (root, vec![path.to_path_buf()])
    } else {
        anyhow::bail!("{}: no such file or directory", path.display());
    };
    let tests = root.join("tests");
    for p in &pipelines {
        let stem = p
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default();
        let dir = tests.join(&stem);
        let mut found: Vec<PathBuf> = match std::fs::read_dir(&dir) {
            Ok(rd) => rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|d| d.is_dir())
                .collect(),
            Err(_) => Vec::new(),
        };
        found.sort();
        if found.is_empty() {
            bare.push(p.clone());
        }
        for d in found {
            let case = d
                .file_name()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_default();
            cases.push(Case {
                pipeline: p.clone(),
                name: format!("{stem}/{case}"),
                dir: d,
            });
        }
    }
    // A directory of cases whose pipeline is not there is a mistake worth saying.
    if path.is_dir() {
        if let Ok(rd) = std::fs::read_dir(&tests) {
            for e in rd.filter_map(|e| e.ok()) {
                let name = e.file_name().to_string_lossy().to_string();
                let known = pipelines
                    .iter()
                    .any(|p| p.file_stem().is_some_and(|s| s.to_string_lossy() == name));
                if e.path().is_dir() && !known {
                    anyhow::bail!(
                        "{}: no pipeline {name}.yaml in {} for these cases",
                        e.path().display(),
                        root.display()
                    );
                }
            }
        }
    }
    Ok(())
}

enum Outcome {
    Pass(String),
    Blessed(String),
    Fail(Vec<String>),
}

fn run_case(c: &Case, a: &TestArgs) -> anyhow::Result<Outcome> {
    let loaded = load_file(&c.pipeline, a.schemas.as_deref());
    let Some(plan) = loaded.plan else {
        let mut lines = vec![format!(
            "{}: {} problem(s); the case was not run",
            c.pipeline.display(),
            loaded.problems.len()
        )];
        lines.extend(loaded.problems.iter().map(|p| format!("error: {p}")));
        return Ok(Outcome::Fail(lines));
    };
    let input = ["input.jsonl", "input.avro"]
        .iter()
        .map(|f| c.dir.join(f))
        .find(|p| p.is_file())
        .with_context(|| format!("{}: no input.jsonl or input.avro", c.dir.display()))?;
    let work = tempfile::tempdir().context("a temporary directory")?;
    let (out, dead) = (
        work.path().join("out.jsonl"),
        work.path().join("dead.jsonl"),
    );
    let opts = RunOptions {
        input,
        input_format: InputFormat::Auto,
        output: Some(out.display().to_string()),
        dead_letter: Some(dead.display().to_string()),
        state_dir: Some(work.path().join("state")),
        checkpoint_every: 10_000,
        conn: Connections::default(),
    };
    run_file(&plan, &opts).with_context(|| format!("running {}", c.pipeline.display()))?;
    let got = read_lines(&out)?;
    let got_dead: Vec<Value> = read_lines(&dead)?.iter().map(diff::dead_letter).collect();
    let what = format!("{} result(s), {} dead letter(s)", got.len(), got_dead.len());
    let (expected, expected_dead) = (
        c.dir.join("expected.jsonl"),
        c.dir.join("expected-dead-letter.jsonl"),
    );
    if a.bless {
        write_lines(&expected, &got)?;
        if got_dead.is_empty() {
            if expected_dead.is_file() {
                std::fs::remove_file(&expected_dead)
                    .with_context(|| format!("removing {}", expected_dead.display()))?;
            }
        } else {
            write_lines(&expected_dead, &got_dead)?;
        }
        return Ok(Outcome::Blessed(what));
    }
    if !expected.is_file() {
        return Ok(Outcome::Fail(vec![format!(
            "{} is missing: write it, or run `weir test --bless` and review what it writes",
            expected.display()
        )]));
    }
    let want = read_lines(&expected)?;
    let want_dead = if expected_dead.is_file() {
        read_lines(&expected_dead)?
    } else {
        Vec::new()
    };
    let mut lines = diff::results(&plan_identity(&plan), &want, &got);
    lines.extend(diff::dead_letters(&want_dead, &got_dead));
    Ok(if lines.is_empty() {
        Outcome::Pass(what)
    } else {
        Outcome::Fail(lines)
    })
}

/// What names a result: its key fields and window start; a stateless pipeline's results
/// are compared in order instead.
fn plan_identity(plan: &Plan) -> Option<Vec<String>> {
    (!plan.stateless).then(|| {
        let mut id: Vec<String> = plan
            .output
            .key_fields
            .iter()
            .map(|k| k.name.clone())
            .collect();
        id.push("window_start".into());
        id
    })
}

/// A JSON Lines file's objects (none when it does not exist); a line that is not JSON is
/// an error naming it.
fn read_lines(path: &Path) -> anyhow::Result<Vec<Value>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{} line {}: not JSON", path.display(), i + 1))
        })
        .collect()
}

fn write_lines(path: &Path, rows: &[Value]) -> anyhow::Result<()> {
    let mut text = String::new();
    for r in rows {
        text.push_str(&r.to_string());
        text.push('\n');
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}
