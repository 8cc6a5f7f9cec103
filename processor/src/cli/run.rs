use crate::monitor::telemetry::Live;
use crate::pipeline::load_file;
use crate::runtime::file::{run_file_reporting, RunOptions};
use crate::runtime::kafka::{run_kafka, KafkaOptions};
use crate::runtime::outputs::Connections;
use crate::schema::json::fmt_ms;
use crate::source::file::InputFormat;
use anyhow::Context;
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Run a pipeline: against Kafka (the default), or over an event log file (--input) with no
/// broker. Results go to the pipeline's sinks (or --output), dead letters to its dead_letter,
/// and a one-line summary to stderr. Against Kafka it runs until SIGTERM or Ctrl-C.
#[derive(Args)]
pub struct RunArgs {
    /// The pipeline definition.
    pipeline: PathBuf,
    /// Replay this event log instead of consuming Kafka: JSON Lines (events or Kafka
    /// records) or an Avro container file.
    #[arg(long)]
    input: Option<PathBuf>,
    /// Kafka bootstrap servers [env: WEIR_BROKERS; default 127.0.0.1:9092].
    #[arg(long)]
    brokers: Option<String>,
    /// Confluent Schema Registry URL: source writer schemas by id, output schema
    /// registered under <topic>-value [env: WEIR_SCHEMA_REGISTRY].
    #[arg(long)]
    schema_registry: Option<String>,
    /// PostgreSQL connection string for postgres sinks without a url [env: WEIR_POSTGRES_URL].
    #[arg(long)]
    postgres_url: Option<String>,
    /// Kafka: static group membership (group.instance.id), so a restart gets its partitions
    /// back at once.
    #[arg(long, env = "WEIR_INSTANCE_ID")]
    instance_id: Option<String>,
    /// Kafka: also checkpoint this often (e.g. 1s, 500ms).
    #[arg(long, default_value = "1s")]
    checkpoint_interval: humantime::Duration,
    /// Kafka: an extra librdkafka property for the consumer and producers (repeatable),
    /// e.g. --kafka-config fetch.wait.max.ms=10
    #[arg(long, value_parser = super::parse_kv)]
    kafka_config: Vec<(String, String)>,
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
    /// Kafka default: .weir/<pipeline name>; file default: a temporary directory.
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
    let conn = Connections {
        brokers: a.brokers.clone(),
        postgres_url: a.postgres_url.clone(),
        schema_registry: a.schema_registry.clone(),
        kafka_config: a.kafka_config.clone(),
    };
    let Some(input) = a.input.clone() else {
        return run_against_kafka(a, plan, conn);
    };
    let opts = RunOptions {
        input: input.clone(),
        input_format: a.input_format,
        output: a.output,
        dead_letter: a.dead_letter,
        state_dir: a.state_dir,
        checkpoint_every: a.checkpoint_every.max(1),
        conn,
    };
    let live = Arc::new(Live::new(&plan.name));
    let progress = Progress::start(live.clone());
    let s = run_file_reporting(&plan, &opts, live.clone());
    progress.finish();
    let s =
        s.with_context(|| format!("running {} over {}", a.pipeline.display(), input.display()))?;
    let resumed = match s.resumed_from {
        Some(p) => format!(" (resumed after record {p})"),
        None => String::new(),
    };
    // The summary is read from the same telemetry that feeds `/metrics` under `weir serve`.
    let status = live.snapshot();
    eprintln!(
        "weir: {}: {}{}; dead letters in {}{}",
        plan.name,
        status.counters,
        expired(status.table_keys_expired),
        s.dead_letter_path,
        resumed
    );
    tracing::info!(watermark = %fmt_ms(s.watermark), checkpoints = status.checkpoints, "run finished");
    Ok(ExitCode::SUCCESS)
}

/// A live line on a terminal (none when stderr is not one): records in, results, dead
/// letters, watermark and rate, from the pipeline's telemetry.
struct Progress {
    bar: indicatif::ProgressBar,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    fn start(live: Arc<Live>) -> Progress {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        let stop = Arc::new(AtomicBool::new(false));
        let thread = (!bar.is_hidden()).then(|| {
            let (bar, stop) = (bar.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let s = live.snapshot();
                    let wm = s.watermark.map(fmt_ms).unwrap_or_else(|| "-".into());
                    bar.set_message(format!(
                        "{} events in, {} results out, {} dead-lettered, watermark {wm}, {:.0} events/s",
                        s.counters.events_in,
                        s.counters.results_out,
                        s.counters.dead_total(),
                        s.events_per_second
                    ));
                    bar.tick();
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
            })
        });
        Progress { bar, stop, thread }
    }

    fn finish(mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.bar.finish_and_clear();
    }
}

fn run_against_kafka(
    a: RunArgs,
    plan: crate::pipeline::plan::Plan,
    conn: Connections,
) -> anyhow::Result<ExitCode> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handlers")?;
    }
    let name = plan.name.clone();
    let opts = KafkaOptions {
        state_dir: a
            .state_dir
            .unwrap_or_else(|| PathBuf::from(".weir").join(&plan.name)),
        conn,
        instance_id: a.instance_id,
        checkpoint_every: a.checkpoint_every.max(1),
        checkpoint_interval: a.checkpoint_interval.into(),
        output: a.output,
        dead_letter: a.dead_letter,
        kafka_config: a.kafka_config,
        stop_after: None,
        live: None,
        sample_latency: false,
        discard: false,
    };
    eprintln!(
        "weir: {name}: consuming {:?} from {} as group {}; state in {}; Ctrl-C to stop",
        plan.source.topics,
        opts.conn.brokers(),
        plan.source.group,
        opts.state_dir.display()
    );
    let s = run_kafka(plan, &opts, stop)
        .with_context(|| format!("running {} against Kafka", a.pipeline.display()))?;
    eprintln!(
        "weir: {name}: stopped; {}{}; dead letters in {}",
        s.counters,
        expired(s.expired),
        s.dead_letter_path
    );
    Ok(ExitCode::SUCCESS)
}

/// The summary's note of a table's ttl drops, when there were any.
fn expired(n: u64) -> String {
    match n {
        0 => String::new(),
        n => format!(", {n} table keys expired (ttl)"),
    }
}
