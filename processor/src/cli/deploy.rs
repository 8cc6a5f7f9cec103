//! `weir deploy`: send a definition and the schemas it names to `weir serve`.

use super::client::{Client, ServerArgs};
use crate::schema::SchemaResolver;
use crate::server::{referenced_schemas, DeployRequest, DeployResponse};
use anyhow::Context;
use clap::Args;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

/// Deploy a pipeline definition to `weir serve` (validated there first). Its schemas are
/// sent along. A changed definition keeps the state when its key, window, aggregates and
/// event time are unchanged; otherwise give --reset-state.
#[derive(Args)]
pub struct DeployArgs {
    pipeline: PathBuf,
    /// Discard the pipeline's state (and rewind its group) when the change needs it.
    #[arg(long)]
    reset_state: bool,
    /// A directory to look for schemas in first.
    #[arg(long)]
    schemas: Option<PathBuf>,
    #[command(flatten)]
    server: ServerArgs,
}

pub fn run(a: DeployArgs) -> anyhow::Result<ExitCode> {
    let definition = std::fs::read_to_string(&a.pipeline)
        .with_context(|| format!("cannot read {}", a.pipeline.display()))?;
    let resolver = SchemaResolver::for_pipeline(&a.pipeline, a.schemas.as_deref());
    let mut schemas = BTreeMap::new();
    for name in referenced_schemas(&definition) {
        // A schema that is not found here is reported by the server, with its path.
        if let Ok(path) = resolver.find(&name) {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let file = std::path::Path::new(&name)
                .file_name()
                .and_then(|f| f.to_str())
                .unwrap_or(&name)
                .to_string();
            schemas.insert(file, text);
        }
    }
    // The server stores schemas by file name: the definition must name them so too.
    let definition = rewrite_schema_paths(&definition);
    let req = DeployRequest {
        definition,
        schemas,
        reset_state: a.reset_state,
    };
    let answer = Client::new(&a.server).call(
        "POST",
        "/api/pipelines",
        Some(&serde_json::to_value(&req)?),
    )?;
    if !answer.is_ok() {
        let e = answer.error();
        if answer.status == 400 && !e.problems.is_empty() {
            if a.server.json() {
                answer.print_json();
            } else {
                let file = a.pipeline.display().to_string();
                for p in &e.problems {
                    let line = p.line.map(|l| format!(":{l}")).unwrap_or_default();
                    let path = if p.path.is_empty() {
                        String::new()
                    } else {
                        format!("{}: ", p.path)
                    };
                    eprintln!("error: {file}{line}: {path}{}\n  fix: {}", p.message, p.fix);
                }
                eprintln!(
                    "{file}: {} problem(s); nothing was deployed",
                    e.problems.len()
                );
            }
        } else {
            eprintln!("error: {}", answer.error_text());
        }
        return Ok(ExitCode::from(1));
    }
    if a.server.json() {
        answer.print_json();
    } else {
        let d: DeployResponse = answer.decode("deploy answer")?;
        println!("{}: {} ({})", d.name, d.outcome, d.state.as_str());
    }
    Ok(ExitCode::SUCCESS)
}

/// `schema: ../schemas/x.avsc` -> `schema: x.avsc` (the server keeps one flat directory).
fn rewrite_schema_paths(definition: &str) -> String {
    let names = referenced_schemas(definition);
    let mut out = definition.to_string();
    for n in names {
        if let Some(file) = std::path::Path::new(&n)
            .file_name()
            .and_then(|f| f.to_str())
        {
            if file != n {
                out = out.replace(&n, file);
            }
        }
    }
    out
}
