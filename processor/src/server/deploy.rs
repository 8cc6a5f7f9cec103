//! The files of a deploy: the definition is compiled against the schemas sent along in a
//! staging directory, and only a definition that compiles is installed as the deployment
//! (its definition beside its state too, so a later deploy can check compatibility).

use super::layout::Layout;
use super::types::{ApiError, DeployRequest};
use crate::pipeline::plan::Plan;
use crate::pipeline::{load_str, Problem};
use crate::schema::SchemaResolver;
use std::path::{Path, PathBuf};

/// Compiles a definition with schemas from `schemas_dir`.
pub fn compile(yaml: &str, schemas_dir: &Path) -> Result<Plan, Vec<Problem>> {
    let loaded = load_str(yaml, "definition", &SchemaResolver::in_dir(schemas_dir));
    match loaded.plan {
        Some(p) if loaded.problems.is_empty() => Ok(p),
        _ => Err(loaded.problems),
    }
}

/// Writes the schemas sent along into a fresh staging directory and compiles the
/// definition against them; returns the plan and the staging directory.
pub fn stage(layout: &Layout, req: &DeployRequest) -> Result<(Plan, PathBuf), ApiError> {
    let staging = layout.staging_dir();
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(staging.join("schemas")).map_err(ApiError::internal)?;
    for (file, text) in &req.schemas {
        if file.is_empty() || file.contains(['/', '\\', '\0']) || file.starts_with('.') {
            return Err(ApiError::BadRequest(format!(
                "schema file name `{file}` must be a plain file name"
            )));
        }
        std::fs::write(staging.join("schemas").join(file), text).map_err(ApiError::internal)?;
    }
    let plan = compile(&req.definition, &staging.join("schemas")).map_err(ApiError::Invalid)?;
    Ok((plan, staging))
}

/// Installs the staged files as the deployment of `name`, with its control file, and
/// records the definition beside its state.
pub fn install(
    layout: &Layout,
    name: &str,
    staging: &Path,
    definition: &str,
    paused: bool,
) -> Result<(), ApiError> {
    let pdir = layout.pipeline_dir(name);
    let _ = std::fs::remove_dir_all(&pdir);
    std::fs::create_dir_all(pdir.parent().unwrap_or(Path::new("."))).map_err(ApiError::internal)?;
    std::fs::rename(staging, &pdir).map_err(ApiError::internal)?;
    std::fs::write(pdir.join("definition.yaml"), definition).map_err(ApiError::internal)?;
    layout
        .persist_control(name, paused)
        .map_err(ApiError::internal)?;
    // The state remembers the definition it was built by (for compatibility after a stop).
    let sdir = layout.state_dir(name);
    std::fs::create_dir_all(&sdir).map_err(ApiError::internal)?;
    std::fs::write(sdir.join("definition.yaml"), definition).map_err(ApiError::internal)?;
    Ok(())
}
