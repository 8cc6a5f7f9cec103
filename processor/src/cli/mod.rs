//! The command line: one file per verb. `anyhow` lives here only, at the edge.

pub mod bench;
pub mod client;
pub mod control;
pub mod deploy;
pub mod offsets;
pub mod pipelines;
pub mod produce;
pub mod replay;
pub mod replay_dlq;
pub mod run;
pub mod serve;
pub mod status;
pub mod test;
pub mod validate;

use clap::{Parser, Subcommand, ValueEnum};
use std::process::ExitCode;

/// Weir: a stateful stream processor for Kafka. Avro in, windowed aggregates out, state in
/// RocksDB.
#[derive(Parser)]
#[command(name = "weir", version, about, long_about = None)]
pub struct Cli {
    /// Log format on stderr; the level comes from RUST_LOG (default: warn).
    #[arg(long, value_enum, default_value = "human", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    Run(run::RunArgs),
    Validate(validate::ValidateArgs),
    Bench(bench::BenchArgs),
    Produce(produce::ProduceArgs),
    Serve(serve::ServeArgs),
    Deploy(deploy::DeployArgs),
    Pipelines(pipelines::PipelinesArgs),
    Status(status::StatusArgs),
    /// Pause a pipeline on `weir serve` (last checkpoint, leave the group; state kept).
    Pause(control::ControlArgs),
    /// Resume a paused pipeline on `weir serve`.
    Resume(control::ControlArgs),
    /// Stop and undeploy a pipeline on `weir serve`; its state is kept unless --purge.
    Stop(control::ControlArgs),
    Replay(replay::ReplayArgs),
    ReplayDlq(replay_dlq::ReplayDlqArgs),
    Offsets(offsets::OffsetsArgs),
    Test(test::TestArgs),
}

/// `key=value`, for `--kafka-config`.
fn parse_kv(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("expected key=value, got `{s}`")),
    }
}

/// Standard error, with secrets masked ([`crate::redact`]): the log formatter writes each
/// event in one call.
struct RedactingStderr;

impl std::io::Write for RedactingStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        std::io::stderr().write_all(crate::redact::redact(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

fn init_logs(f: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(|| RedactingStderr);
    match f {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    let result = match cli.command {
        Command::Run(a) => run::run(a),
        Command::Validate(a) => validate::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Produce(a) => produce::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Deploy(a) => deploy::run(a),
        Command::Pipelines(a) => pipelines::run(a),
        Command::Status(a) => status::run(a),
        Command::Pause(a) => control::run(control::Verb::Pause, a),
        Command::Resume(a) => control::run(control::Verb::Resume, a),
        Command::Stop(a) => control::run(control::Verb::Stop, a),
        Command::Replay(a) => replay::run(a),
        Command::ReplayDlq(a) => replay_dlq::run(a),
        Command::Offsets(a) => offsets::run(a),
        Command::Test(a) => test::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            // The chain, without repeating a cause that a message above already quotes.
            let mut msg = String::new();
            for cause in e.chain() {
                let c = cause.to_string();
                if !msg.contains(&c) {
                    if !msg.is_empty() {
                        msg.push_str(": ");
                    }
                    msg.push_str(&c);
                }
            }
            eprintln!("error: {}", crate::redact::redact(&msg));
            ExitCode::from(2)
        }
    }
}
