//! `weir replay-dlq`: re-feed a pipeline's dead letters on `weir serve`.

use super::client::{Client, ServerArgs};
use crate::server::RedriveReport;
use clap::Args;
use std::process::ExitCode;

/// Re-feed a pipeline's dead-letter records after a fix (a redeployed definition, a new
/// writer schema). Records that fail again go back to the dead letter with their new reason.
#[derive(Args)]
pub struct ReplayDlqArgs {
    name: String,
    #[command(flatten)]
    server: ServerArgs,
}

pub fn run(a: ReplayDlqArgs) -> anyhow::Result<ExitCode> {
    let answer = Client::new(&a.server).ok(
        "POST",
        &format!("/api/pipelines/{}/replay-dlq", a.name),
        None,
    )?;
    if a.server.json() {
        answer.print_json();
        return Ok(ExitCode::SUCCESS);
    }
    let r: RedriveReport = answer.decode("re-feed report")?;
    println!(
        "{}: read {} dead letters from {}; re-fed {} ({} failed again and are back in the dead letter), {} results out; {} belong to other pipelines",
        a.name, r.read, r.dead_letter_topic, r.refed, r.failed_again, r.results_out, r.other_pipelines
    );
    Ok(ExitCode::SUCCESS)
}
