//! `weir pause`, `weir resume` and `weir stop`.

use super::client::{Client, ServerArgs};
use crate::server::{PipelineSummary, StopResponse};
use clap::Args;
use std::process::ExitCode;

/// Pause, resume or stop a pipeline on `weir serve`.
#[derive(Args)]
pub struct ControlArgs {
    name: String,
    /// `stop` only: also delete the state and rewind the group to the earliest offsets.
    #[arg(long)]
    purge: bool,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Clone, Copy)]
pub enum Verb {
    Pause,
    Resume,
    Stop,
}

pub fn run(verb: Verb, a: ControlArgs) -> anyhow::Result<ExitCode> {
    let c = Client::new(&a.server);
    let answer = match verb {
        Verb::Stop => c.ok(
            "DELETE",
            &format!("/api/pipelines/{}?purge={}", a.name, a.purge),
            None,
        )?,
        Verb::Pause => c.ok("POST", &format!("/api/pipelines/{}/pause", a.name), None)?,
        Verb::Resume => c.ok("POST", &format!("/api/pipelines/{}/resume", a.name), None)?,
    };
    if a.server.json() {
        answer.print_json();
        return Ok(ExitCode::SUCCESS);
    }
    match verb {
        Verb::Stop => {
            let s: StopResponse = answer.decode("stop answer")?;
            let kept = if s.purged {
                "state purged"
            } else {
                "state kept"
            };
            println!("{}: stopped; {kept}", s.name);
        }
        Verb::Pause | Verb::Resume => {
            let p: PipelineSummary = answer.decode("pipeline summary")?;
            println!("{}: {}", p.name, p.state.as_str());
        }
    }
    Ok(ExitCode::SUCCESS)
}
