use super::client::{Client, ServerArgs};
use super::status::partition_table;
use crate::monitor::offsets::group_offsets;
use crate::runtime::outputs::Connections;
use crate::server::OffsetsReport;
use anyhow::bail;
use clap::Args;
use std::process::ExitCode;
use std::time::Duration;

/// Offsets and lag per partition, like `kafka-consumer-groups --describe`: the committed
/// offset, the offset checkpointed in the pipeline's state, the log end, lag, watermark, last
/// event time and owning member. `--pipeline` asks `weir serve`; `--group` reads any
/// consumer group straight from the brokers.
#[derive(Args)]
pub struct OffsetsArgs {
    /// A pipeline deployed on `weir serve`.
    #[arg(long, conflicts_with = "group", required_unless_present = "group")]
    pipeline: Option<String>,
    /// Any consumer group.
    #[arg(long)]
    group: Option<String>,
    /// With --group: the topics to show (default: those its members are assigned).
    #[arg(long)]
    topic: Vec<String>,
    /// Kafka bootstrap servers, for --group [env: WEIR_BROKERS; default 127.0.0.1:9092].
    #[arg(long)]
    brokers: Option<String>,
    /// With --group: ask the brokers for the group's members (DescribeGroups).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    members: bool,
    /// Refresh until interrupted.
    #[arg(long)]
    watch: bool,
    /// With --watch: how often.
    #[arg(long, default_value = "2s")]
    interval: humantime::Duration,
    /// With --watch: stop after this many refreshes (0: never).
    #[arg(long, default_value_t = 0)]
    count: u64,
    #[arg(long, value_parser = super::parse_kv)]
    kafka_config: Vec<(String, String)>,
    #[command(flatten)]
    server: ServerArgs,
}

fn once(a: &OffsetsArgs) -> anyhow::Result<OffsetsReport> {
    if let Some(p) = &a.pipeline {
        return Client::new(&a.server)
            .ok("GET", &format!("/api/pipelines/{p}/offsets"), None)?
            .decode("offsets report");
    }
    let Some(group) = &a.group else {
        bail!("give --pipeline NAME or --group GROUP");
    };
    let conn = Connections {
        brokers: a.brokers.clone(),
        ..Default::default()
    };
    let g = group_offsets(
        &conn.brokers(),
        group,
        &a.topic,
        a.members,
        &a.kafka_config,
        Duration::from_secs(10),
    )
    .map_err(anyhow::Error::msg)?;
    Ok(OffsetsReport {
        group: g.group,
        state: g.state,
        pipeline: None,
        partitions: g.partitions,
        missing_offsets: None,
    })
}

fn show(a: &OffsetsArgs, r: &OffsetsReport) {
    if a.server.json() {
        // One JSON document per line under --watch, so it can be piped.
        let text = if a.watch {
            serde_json::to_string(r)
        } else {
            serde_json::to_string_pretty(r)
        };
        println!("{}", text.unwrap_or_default());
        return;
    }
    let total: i64 = r.partitions.iter().filter_map(|p| p.lag).sum();
    let title = match &r.pipeline {
        Some(p) => format!("pipeline {p}, group {}", r.group),
        None => format!("group {}", r.group),
    };
    let state = r
        .state
        .as_ref()
        .map(|s| format!(" ({s})"))
        .unwrap_or_default();
    println!("{title}{state}: total lag {total}");
    partition_table(&r.partitions, true);
    if let Some(m) = &r.missing_offsets {
        super::status::missing_offsets(m);
    }
}

pub fn run(a: OffsetsArgs) -> anyhow::Result<ExitCode> {
    if !a.watch {
        show(&a, &once(&a)?);
        return Ok(ExitCode::SUCCESS);
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let _ = signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone());
    let _ = signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone());
    let interval: Duration = a.interval.into();
    let mut n = 0u64;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        match once(&a) {
            Ok(v) => {
                if !a.server.json() && std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                    print!("\x1b[2J\x1b[H");
                }
                show(&a, &v);
                if !a.server.json() {
                    println!();
                }
            }
            Err(e) => eprintln!("weir: {e:#}"),
        }
        n += 1;
        if a.count > 0 && n >= a.count {
            break;
        }
        let until = std::time::Instant::now() + interval;
        while std::time::Instant::now() < until && !stop.load(std::sync::atomic::Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(ExitCode::SUCCESS)
}
