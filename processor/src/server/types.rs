//! The API's request and response bodies (described in `openapi.json`).

use crate::monitor::telemetry::{LiveStatus, PartitionStatus, RunState};
use crate::pipeline::Problem;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `POST /api/pipelines`: a definition and the schemas it names (file name -> text).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeployRequest {
    pub definition: String,
    #[serde(default)]
    pub schemas: BTreeMap<String, String>,
    /// Discard the state when the new definition is not compatible with it.
    #[serde(default)]
    pub reset_state: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeployResponse {
    pub name: String,
    /// `created`, `updated` (state kept), `reset` (state discarded) or `unchanged`.
    pub outcome: String,
    pub state: RunState,
}

/// One row of `GET /api/pipelines`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PipelineSummary {
    pub name: String,
    pub state: RunState,
    pub group: String,
    pub topics: Vec<String>,
    pub events_in: u64,
    pub results_out: u64,
    pub dead_letters: u64,
    pub lag: Option<i64>,
    pub watermark: Option<i64>,
    pub events_per_second: f64,
    pub error: Option<String>,
}

/// `GET /api/pipelines/{name}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PipelineStatus {
    pub name: String,
    pub description: Option<String>,
    pub group: String,
    pub topics: Vec<String>,
    pub sinks: Vec<String>,
    pub dead_letter: Option<String>,
    /// `at_least_once` or `exactly_once` (the definition's `delivery`).
    #[serde(default)]
    pub delivery: String,
    #[serde(flatten)]
    pub live: LiveStatus,
}

/// `GET /api/pipelines/{name}/offsets` and `weir offsets`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OffsetsReport {
    pub group: String,
    /// The group's state as the coordinator tells it (`weir offsets --group` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    pub pipeline: Option<String>,
    pub partitions: Vec<PartitionStatus>,
    /// A pipeline's `source.on_missing_offsets` and the times it applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing_offsets: Option<crate::monitor::telemetry::MissingOffsetsStatus>,
}

/// `POST /api/pipelines/{name}/replay`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplayRequest {
    /// RFC 3339 time, `earliest`, or `partition:offset,...`.
    pub from: String,
    /// RFC 3339 time: only windows starting before it are rebuilt.
    #[serde(default)]
    pub to: Option<String>,
    #[serde(default)]
    pub dry_run: bool,
}

/// `DELETE /api/pipelines/{name}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StopResponse {
    pub name: String,
    pub stopped: bool,
    pub purged: bool,
}

/// The body of every error answer: the message, and for an invalid definition its
/// problems, for a refused redeploy the reasons.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<Problem>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
}

/// What goes wrong in an API call; `api` maps each to an HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the definition has {} problem(s)", .0.len())]
    Invalid(Vec<Problem>),
    #[error("pipeline `{0}` is not deployed")]
    NotFound(String),
    #[error("the new definition of `{name}` changes its state's shape; redeploy with --reset-state (reset_state=true) to discard the state and reprocess the topic from the start")]
    Incompatible { name: String, reasons: Vec<String> },
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn internal(e: impl std::fmt::Display) -> ApiError {
        ApiError::Internal(e.to_string())
    }
}
