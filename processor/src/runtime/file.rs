//! File replay (`weir run --input`): an event log fed through the [driver](super::driver),
//! with no broker. The input is bounded, so its end closes every window; its position is
//! the number of records consumed, and a resume skips that many.

use super::driver::{drive_to_end, Cadence, Driver, DriverOptions, Polled, Source};
use super::outputs::Connections;
use super::{RunError, Summary};
use crate::monitor::telemetry::Live;
use crate::pipeline::plan::Plan;
use crate::source::file::{FileSource, InputFormat};
use crate::source::SourceRecord;
use crate::state::checkpoint::Checkpoint;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where results and dead letters of an offline run go.
pub struct RunOptions {
    pub input: PathBuf,
    pub input_format: InputFormat,
    /// Overrides the pipeline's sinks with one file (`-` for stdout).
    pub output: Option<String>,
    pub dead_letter: Option<String>,
    /// Keep state here to resume after a crash; a temporary directory otherwise.
    pub state_dir: Option<PathBuf>,
    pub checkpoint_every: u64,
    pub conn: Connections,
}

/// An event log as a [`Source`].
struct FileInput {
    file: FileSource,
    opts: (PathBuf, InputFormat, String),
    /// The record lent to the driver.
    current: Option<SourceRecord>,
}

impl Source for FileInput {
    fn positioned(&self) -> bool {
        false
    }

    fn seek(&mut self, driver: &mut Driver<'_>) -> Result<(), RunError> {
        for _ in 0..driver.position() {
            if self.file.next().transpose()?.is_none() {
                break;
            }
        }
        // Every partition of the file holds the watermark from the start, as an assigned
        // Kafka partition does: a replay is as deterministic as the log.
        let (path, format, topic) = &self.opts;
        for p in FileSource::open(path, *format, topic)?.partitions()? {
            driver.engine.watermarks.register(p);
        }
        Ok(())
    }

    fn next(&mut self, _timeout: Duration) -> Result<Polled<'_>, RunError> {
        Ok(match self.file.next().transpose()? {
            Some(rec) => Polled::Record(self.current.insert(rec)),
            None => Polled::End,
        })
    }

    fn after_checkpoint(&mut self, _cp: &Checkpoint, _last: bool) {}
}

/// Replays an event log through the pipeline.
pub fn run_file(plan: &Plan, opts: &RunOptions) -> Result<Summary, RunError> {
    run_file_reporting(plan, opts, Arc::new(Live::new(&plan.name)))
}

/// Replays an event log, reporting telemetry (progress, checkpoints) to `live`.
pub fn run_file_reporting(
    plan: &Plan,
    opts: &RunOptions,
    live: Arc<Live>,
) -> Result<Summary, RunError> {
    let _tmp;
    let state_dir: PathBuf = match &opts.state_dir {
        Some(d) => d.clone(),
        None => {
            let t = tempfile::Builder::new()
                .prefix("weir-state-")
                .tempdir()
                .map_err(RunError::TempDir)?;
            let p = t.path().to_path_buf();
            _tmp = t;
            p
        }
    };
    let topic = plan.source.topics.first().cloned().unwrap_or_default();
    let file = FileSource::open(&opts.input, opts.input_format, &topic)?;
    let input_name = file.path().to_string();
    // Without --state-dir, dead letters default to ./dead-letter.jsonl, not the temp dir.
    let default_dead_letter = match &opts.state_dir {
        Some(d) => d.join("dead-letter.jsonl").display().to_string(),
        None => "dead-letter.jsonl".to_string(),
    };
    let driver = Driver::open(
        plan,
        DriverOptions {
            state_dir: &state_dir,
            conn: &opts.conn,
            output: opts.output.as_deref(),
            discard: false,
            dead_letter: opts.dead_letter.as_deref(),
            default_dead_letter,
            input_name: &input_name,
            container_schema: file.container_schema().cloned(),
            live,
            sample_latency: false,
            producer: None,
        },
    )?;
    let mut source = FileInput {
        current: None,
        file,
        opts: (opts.input.clone(), opts.input_format, topic),
    };
    let cadence = Cadence {
        every: opts.checkpoint_every,
        interval: None,
        stop_after: None,
    };
    drive_to_end(&Mutex::new(driver), &mut source, &cadence)
}
