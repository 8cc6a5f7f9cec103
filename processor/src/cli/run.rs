use crate::pipeline::load_file;
use crate::runtime::engine::fmt_ms;
use crate::runtime::{run_file, RunOptions};
use crate::source::file::InputFormat;
use anyhow::Context;
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

/// Replay an event log through a pipeline, with no broker. Results go to the pipeline's
/// sinks (or --output), dead letters to a JSON Lines file, and a one-line summary to stderr.
#[derive(Args)]
pub struct RunArgs {
    /// The pipeline definition.
    pipeline: PathBuf,
    /// The event log: JSON Lines (events or Kafka records) or an Avro container file.
    #[arg(long)]
    input: PathBuf,
    #[arg(long, value_enum, default_value = "auto")]
    input_format: InputFormat,
    /// Write results here (JSON Lines) instead of the pipeline's sinks; `-` for stdout.
    #[arg(long)]
    output: Option<String>,
    /// Write dead letters here (default: the pipeline's dead_letter, else
    /// <state-dir>/dead-letter.jsonl, else ./dead-letter.jsonl).
    #[arg(long)]
    dead_letter: Option<String>,
    /// Keep state here; running again after a crash resumes from the last checkpoint.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Checkpoint after this many records.
    #[arg(long, default_value_t = 10_000)]
    checkpoint_every: u64,
    /// A directory to look for schemas in first.
    #[arg(long)]
    schemas: Option<PathBuf>,
}

pub fn run(a: RunArgs) -> anyhow::Result<ExitCode> {
    let loaded = load_file(&a.pipeline, a.schemas.as_deref());
    let Some(plan) = loaded.plan else {
        for p in &loaded.problems {
            eprintln!("error: {p}");
        }
        eprintln!(
            "{}: {} problem(s); nothing was run",
            a.pipeline.display(),
            loaded.problems.len()
        );
        return Ok(ExitCode::from(1));
    };
    let opts = RunOptions {
        input: a.input.clone(),
        input_format: a.input_format,
        output: a.output,
        dead_letter: a.dead_letter,
        state_dir: a.state_dir,
        checkpoint_every: a.checkpoint_every.max(1),
    };
    let s = run_file(&plan, &opts).with_context(|| {
        format!(
            "running {} over {}",
            a.pipeline.display(),
            a.input.display()
        )
    })?;
    let resumed = match s.resumed_from {
        Some(p) => format!(" (resumed after record {p})"),
        None => String::new(),
    };
    eprintln!(
        "weir: {}: {}; dead letters in {}{}",
        plan.name, s.counters, s.dead_letter_path, resumed
    );
    tracing::info!(watermark = %fmt_ms(s.watermark), checkpoints = s.checkpoints, "run finished");
    Ok(ExitCode::SUCCESS)
}
