//! `weir replay`: rewind a pipeline of `weir serve` and reprocess.

use super::client::{opt, opt_time, print_table, Client, ServerArgs};
use crate::schema::json::fmt_ms;
use crate::server::{ReplayPlan, ReplayRequest};
use clap::Args;
use std::process::ExitCode;

/// Rewind a pipeline on `weir serve` and reprocess: it is paused, its group offsets are
/// reset (by time, to the earliest, or to given offsets), the state of windows starting at
/// or after the start is discarded, and it resumes. The idempotent sinks converge to the
/// results of a first run.
#[derive(Args)]
pub struct ReplayArgs {
    name: String,
    /// RFC 3339 time (2026-11-22T08:00:00Z), `earliest`, or partition:offset,... (0:120,1:98)
    #[arg(long)]
    from: String,
    /// RFC 3339 time: only windows starting before it are rebuilt.
    #[arg(long)]
    to: Option<String>,
    /// Show what would change; change nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    server: ServerArgs,
}

pub fn run(a: ReplayArgs) -> anyhow::Result<ExitCode> {
    let req = ReplayRequest {
        from: a.from.clone(),
        to: a.to.clone(),
        dry_run: a.dry_run,
    };
    let answer = Client::new(&a.server).ok(
        "POST",
        &format!("/api/pipelines/{}/replay", a.name),
        Some(&serde_json::to_value(&req)?),
    )?;
    if a.server.json() {
        answer.print_json();
        return Ok(ExitCode::SUCCESS);
    }
    let p: ReplayPlan = answer.decode("replay plan")?;
    let verb = if a.dry_run { "would" } else { "will" };
    if p.state_reset {
        println!("{}: the whole state is discarded; every partition {verb} restart at its earliest offset", a.name);
    } else {
        println!(
            "{}: windows starting at or after {}{} {verb} be rebuilt ({} open windows and {} sessions discarded)",
            a.name,
            opt_time(p.rebuild_from),
            p.rebuild_to
                .map(|t| format!(" and before {}", fmt_ms(t)))
                .unwrap_or_default(),
            p.windows_discarded,
            p.sessions_discarded
        );
    }
    let rows: Vec<Vec<String>> = p
        .partitions
        .iter()
        .map(|p| {
            vec![
                p.topic.clone(),
                p.partition.to_string(),
                opt(p.state_offset),
                p.new_offset.to_string(),
            ]
        })
        .collect();
    print_table(&["TOPIC", "PARTITION", "FROM", "TO"], &rows);
    if a.dry_run {
        println!("(dry run: nothing changed)");
    }
    Ok(ExitCode::SUCCESS)
}
