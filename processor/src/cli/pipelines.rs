//! `weir pipelines`: the pipelines of `weir serve`, one row each.

use super::client::{opt, opt_time, print_table, Client, ServerArgs};
use crate::server::PipelineSummary;
use clap::Args;
use std::process::ExitCode;

/// List the pipelines of `weir serve`.
#[derive(Args)]
pub struct PipelinesArgs {
    #[command(flatten)]
    server: ServerArgs,
}

pub fn run(a: PipelinesArgs) -> anyhow::Result<ExitCode> {
    let answer = Client::new(&a.server).ok("GET", "/api/pipelines", None)?;
    if a.server.json() {
        answer.print_json();
        return Ok(ExitCode::SUCCESS);
    }
    let list: Vec<PipelineSummary> = answer.decode("pipeline list")?;
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                p.state.as_str().to_string(),
                p.events_in.to_string(),
                p.results_out.to_string(),
                p.dead_letters.to_string(),
                opt(p.lag),
                format!("{:.0}", p.events_per_second),
                opt_time(p.watermark),
            ]
        })
        .collect();
    print_table(
        &[
            "NAME",
            "STATE",
            "IN",
            "OUT",
            "DEAD",
            "LAG",
            "EVENTS/S",
            "WATERMARK",
        ],
        &rows,
    );
    Ok(ExitCode::SUCCESS)
}
