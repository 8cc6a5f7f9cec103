use crate::pipeline::load_file;
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

/// Check pipeline definitions and report every problem, with its file, line, path and a
/// fix. Exits 1 if any file has a problem.
#[derive(Args)]
pub struct ValidateArgs {
    /// Pipeline definition files.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// A directory to look for schemas in first.
    #[arg(long)]
    schemas: Option<PathBuf>,
}

pub fn run(a: ValidateArgs) -> anyhow::Result<ExitCode> {
    let mut bad = 0;
    for f in &a.files {
        let loaded = load_file(f, a.schemas.as_deref());
        if loaded.problems.is_empty() {
            println!("{}: ok", f.display());
            if let Some(r) = loaded.plan.as_ref().and_then(|p| p.repartition.as_ref()) {
                println!(
                    "note: on Kafka this pipeline re-keys through the topic `{}` (group `{}`): {}",
                    r.topic, r.group, r.why
                );
            }
        } else {
            bad += 1;
            for p in &loaded.problems {
                println!("error: {p}");
            }
            println!("{}: {} problem(s)", f.display(), loaded.problems.len());
        }
    }
    Ok(if bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
