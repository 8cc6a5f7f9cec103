//! `weir serve`: one process that hosts many pipelines.
//!
//! Each deployed pipeline runs [`run_kafka`] on its own thread with its own consumer group,
//! state directory and [`Live`] status. Deployed definitions (and copies of their schemas)
//! persist in the data directory, so a restarted server resumes them:
//!
//! ```text
//!   <data>/pipelines/<name>/definition.yaml   the deployed definition
//!   <data>/pipelines/<name>/schemas/*.avsc    the schemas it was deployed with
//!   <data>/pipelines/<name>/control.json      {"paused": bool}
//!   <data>/state/<name>/                       RocksDB: windows, offsets, watermarks
//! ```
//!
//! Stopping a pipeline removes its definition and keeps its state (a later deploy of the
//! same name resumes it) unless a purge is asked for. The HTTP layer is in [`api`].

pub mod api;
mod shape;
mod types;

pub use shape::referenced_schemas;
use shape::{incompatibilities, valid_name};
pub use types::{
    DeployRequest, DeployResponse, OffsetsReport, PipelineStatus, PipelineSummary, ReplayRequest,
};

use crate::monitor::offsets::group_offsets;
use crate::monitor::telemetry::{Live, LiveStatus, RunState, Telemetry};
use crate::pipeline::plan::Plan;
use crate::pipeline::{load_str, Problem};
use crate::runtime::kafka::{redrive, run_kafka, KafkaOptions, RedriveReport};
use crate::runtime::outputs::Connections;
use crate::runtime::replay::{self, ReplayFrom, ReplayPlan};
use crate::runtime::RunError;
use crate::schema::SchemaResolver;
use serde_yaml::Value as Yaml;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// How the server reaches Kafka, PostgreSQL and the registry, and how it checkpoints.
#[derive(Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub conn: Connections,
    pub checkpoint_interval: Duration,
    pub checkpoint_every: u64,
    /// Join groups as static members (`group.instance.id`), see [`Server::instance_id`].
    pub static_membership: bool,
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
    fn internal(e: impl std::fmt::Display) -> ApiError {
        ApiError::Internal(e.to_string())
    }
}

struct Runner {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

struct Pipeline {
    name: String,
    yaml: String,
    group: String,
    topics: Vec<String>,
    description: Option<String>,
    sinks: Vec<String>,
    dead_letter: Option<String>,
    paused: bool,
    live: Arc<Live>,
    runner: Option<Runner>,
}

pub struct Server {
    cfg: ServerConfig,
    pipelines: Mutex<BTreeMap<String, Pipeline>>,
    /// Serializes deploy/pause/resume/stop/replay: each may wait for a pipeline to stop.
    ops: Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Server {
    pub fn new(cfg: ServerConfig) -> Server {
        Server {
            cfg,
            pipelines: Mutex::new(BTreeMap::new()),
            ops: Mutex::new(()),
        }
    }

    fn pipeline_dir(&self, name: &str) -> PathBuf {
        self.cfg.data_dir.join("pipelines").join(name)
    }

    fn state_dir(&self, name: &str) -> PathBuf {
        self.cfg.data_dir.join("state").join(name)
    }

    /// A deployed pipeline's plan, compiled from its stored definition and schemas.
    fn deployed_plan(&self, name: &str, yaml: &str) -> Result<Plan, ApiError> {
        Self::compile(yaml, &self.pipeline_dir(name).join("schemas")).map_err(|ps| {
            ApiError::Internal(format!(
                "the deployed definition of `{name}` no longer compiles ({} problem(s))",
                ps.len()
            ))
        })
    }

    /// Compiles a definition with schemas from `schemas_dir`.
    fn compile(yaml: &str, schemas_dir: &Path) -> Result<Plan, Vec<Problem>> {
        let loaded = load_str(yaml, "definition", &SchemaResolver::in_dir(schemas_dir));
        match loaded.plan {
            Some(p) if loaded.problems.is_empty() => Ok(p),
            _ => Err(loaded.problems),
        }
    }

    fn describe(plan: &Plan, yaml: &str, live: Arc<Live>, paused: bool) -> Pipeline {
        let sink_name = |s: &crate::pipeline::SinkDef| {
            let target = s
                .topic
                .clone()
                .or_else(|| s.table.clone())
                .or_else(|| s.path.clone())
                .unwrap_or_default();
            format!("{}:{}", s.kind_name(), target)
        };
        let description = serde_yaml::from_str::<Yaml>(yaml).ok().and_then(|y| {
            y.get("description")
                .and_then(Yaml::as_str)
                .map(str::to_string)
        });
        Pipeline {
            name: plan.name.clone(),
            yaml: yaml.to_string(),
            group: plan.source.group.clone(),
            topics: plan.source.topics.clone(),
            description,
            sinks: plan.sinks.iter().map(sink_name).collect(),
            dead_letter: plan.dead_letter.as_ref().map(sink_name),
            paused,
            live,
            runner: None,
        }
    }

    /// Loads every deployed pipeline and starts those not paused.
    pub fn load_all(&self) -> Result<(), String> {
        let dir = self.cfg.data_dir.join("pipelines");
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join("definition.yaml").is_file())
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .collect();
        names.sort();
        for name in names {
            let pdir = self.pipeline_dir(&name);
            let yaml = match std::fs::read_to_string(pdir.join("definition.yaml")) {
                Ok(y) => y,
                Err(e) => {
                    tracing::error!(pipeline = %name, error = %e, "cannot read the deployed definition");
                    continue;
                }
            };
            let paused = std::fs::read_to_string(pdir.join("control.json"))
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .and_then(|v| v.get("paused").and_then(|p| p.as_bool()))
                .unwrap_or(false);
            let plan = match Self::compile(&yaml, &pdir.join("schemas")) {
                Ok(p) => p,
                Err(problems) => {
                    for p in problems {
                        tracing::error!(pipeline = %name, problem = %p, "deployed definition no longer compiles");
                    }
                    continue;
                }
            };
            let live = Arc::new(Live::new(&name));
            self.seed_from_state(&plan, &live);
            let mut p = Self::describe(&plan, &yaml, live, paused);
            if paused {
                p.live.record(Telemetry::StateChanged(RunState::Paused));
            } else {
                p.runner = Some(self.start(plan, p.live.clone()));
            }
            tracing::info!(pipeline = %name, paused, "resumed deployed pipeline");
            lock(&self.pipelines).insert(name, p);
        }
        Ok(())
    }

    /// Shows a stopped pipeline's checkpointed offsets and counters.
    fn seed_from_state(&self, plan: &Plan, live: &Live) {
        let dir = self.state_dir(&plan.name);
        if !dir.exists() {
            return;
        }
        match crate::runtime::peek_checkpoint(plan, &dir) {
            Ok(Some(cp)) => live.seed(&cp.offsets, &cp.counters, cp.watermark),
            Ok(None) => {}
            Err(e) => tracing::warn!(pipeline = %plan.name, error = %e, "cannot read the state"),
        }
    }

    /// This server's identity in consumer groups, kept in the data directory: each pipeline
    /// is a static member (`group.instance.id` = `<id>-<pipeline>`), so a restarted server
    /// (even after SIGKILL) gets its partitions back at once instead of waiting for the
    /// broker to expire the old member.
    fn instance_id(&self) -> String {
        let path = self.cfg.data_dir.join("instance-id");
        if let Ok(id) = std::fs::read_to_string(&path) {
            if !id.trim().is_empty() {
                return id.trim().to_string();
            }
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let id = format!(
            "weir-{:012x}",
            (nanos ^ ((std::process::id() as u64) << 40)) & 0xffff_ffff_ffff
        );
        if let Err(e) = std::fs::write(&path, format!("{id}\n")) {
            tracing::warn!(error = %e, "cannot keep the server's instance id");
        }
        id
    }

    fn options(&self, plan: &Plan, live: Arc<Live>) -> KafkaOptions {
        KafkaOptions {
            state_dir: self.state_dir(&plan.name),
            conn: self.cfg.conn.clone(),
            instance_id: self
                .cfg
                .static_membership
                .then(|| format!("{}-{}", self.instance_id(), plan.name)),
            checkpoint_every: self.cfg.checkpoint_every,
            checkpoint_interval: self.cfg.checkpoint_interval,
            output: None,
            dead_letter: None,
            kafka_config: self.cfg.conn.kafka_config.clone(),
            stop_after: None,
            live: Some(live),
            sample_latency: false,
            discard: false,
        }
    }

    fn start(&self, plan: Plan, live: Arc<Live>) -> Runner {
        let stop = Arc::new(AtomicBool::new(false));
        let opts = self.options(&plan, live.clone());
        let flag = stop.clone();
        let name = plan.name.clone();
        let thread = std::thread::Builder::new()
            .name(format!("pipeline-{name}"))
            .spawn(move || match run_kafka(plan, &opts, flag) {
                Ok(s) => {
                    tracing::info!(pipeline = %name, summary = %s.counters, "pipeline stopped");
                }
                Err(e) => live.record(Telemetry::Failed {
                    error: &e.to_string(),
                }),
            });
        let thread = match thread {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the pipeline thread");
                None
            }
        };
        Runner { stop, thread }
    }

    /// Stops a pipeline's thread gracefully (last checkpoint, commit, leave the group).
    fn halt(runner: Option<Runner>) {
        if let Some(r) = runner {
            r.stop.store(true, Ordering::SeqCst);
            if let Some(t) = r.thread {
                let _ = t.join();
            }
        }
    }

    fn persist_control(&self, name: &str, paused: bool) -> Result<(), ApiError> {
        let path = self.pipeline_dir(name).join("control.json");
        std::fs::write(path, format!("{{\"paused\": {paused}}}\n")).map_err(ApiError::internal)
    }

    pub fn deploy(&self, req: DeployRequest) -> Result<DeployResponse, ApiError> {
        let _op = lock(&self.ops);
        // Compile against the schemas sent along, in a staging directory.
        let staging = self.cfg.data_dir.join("staging");
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
        let plan =
            Self::compile(&req.definition, &staging.join("schemas")).map_err(ApiError::Invalid)?;
        let name = plan.name.clone();
        if !valid_name(&name) {
            return Err(ApiError::Invalid(vec![Problem {
                file: "definition".into(),
                line: None,
                path: "name".into(),
                message: format!("`{name}` cannot name a deployed pipeline"),
                fix: "use letters, digits, `-`, `_` and `.` (at most 100)".into(),
            }]));
        }
        // An existing deployment, or state left by a stopped one.
        let previous_yaml = lock(&self.pipelines).get(&name).map(|p| p.yaml.clone());
        let kept_yaml = previous_yaml.clone().or_else(|| {
            std::fs::read_to_string(self.state_dir(&name).join("definition.yaml")).ok()
        });
        let mut outcome = if previous_yaml.is_some() {
            "updated"
        } else {
            "created"
        };
        if previous_yaml.as_deref() == Some(req.definition.as_str()) && !req.reset_state {
            let p = lock(&self.pipelines);
            let state = p
                .get(&name)
                .map(|p| p.live.snapshot().state)
                .unwrap_or_default();
            // Schemas may have changed: compare them too before calling it unchanged.
            let same_schemas = req.schemas.iter().all(|(f, t)| {
                std::fs::read_to_string(self.pipeline_dir(&name).join("schemas").join(f))
                    .is_ok_and(|old| &old == t)
            });
            if same_schemas {
                return Ok(DeployResponse {
                    name,
                    outcome: "unchanged".into(),
                    state,
                });
            }
        }
        let mut reset = false;
        if let Some(old) = &kept_yaml {
            let reasons = incompatibilities(old, &req.definition);
            if !reasons.is_empty() {
                if !req.reset_state {
                    return Err(ApiError::Incompatible { name, reasons });
                }
                reset = true;
            }
        }
        if req.reset_state {
            reset = true;
        }
        // Stop the running version, install the new files, start again.
        let (runner, paused, live) = {
            let mut ps = lock(&self.pipelines);
            match ps.get_mut(&name) {
                Some(p) => (p.runner.take(), p.paused, p.live.clone()),
                None => (None, false, Arc::new(Live::new(&name))),
            }
        };
        Self::halt(runner);
        if reset && self.state_dir(&name).exists() {
            self.reset_state(&plan)?;
            outcome = "reset";
        }
        let pdir = self.pipeline_dir(&name);
        let _ = std::fs::remove_dir_all(&pdir);
        std::fs::create_dir_all(pdir.parent().unwrap_or(Path::new(".")))
            .map_err(ApiError::internal)?;
        std::fs::rename(&staging, &pdir).map_err(ApiError::internal)?;
        std::fs::write(pdir.join("definition.yaml"), &req.definition)
            .map_err(ApiError::internal)?;
        self.persist_control(&name, paused)?;
        // The state remembers the definition it was built by (for compatibility after a stop).
        std::fs::create_dir_all(self.state_dir(&name)).map_err(ApiError::internal)?;
        std::fs::write(
            self.state_dir(&name).join("definition.yaml"),
            &req.definition,
        )
        .map_err(ApiError::internal)?;
        let mut p = Self::describe(&plan, &req.definition, live, paused);
        if !paused {
            p.runner = Some(self.start(plan, p.live.clone()));
        }
        let state = if paused {
            RunState::Paused
        } else {
            RunState::Starting
        };
        lock(&self.pipelines).insert(name.clone(), p);
        tracing::info!(pipeline = %name, outcome, "deployed");
        Ok(DeployResponse {
            name,
            outcome: outcome.into(),
            state,
        })
    }

    /// Discards a pipeline's state and rewinds its group to the earliest offsets (as
    /// Kafka Streams' application reset tool does), so that the state is rebuilt.
    /// The new state starts at the earliest offsets, whatever the group has committed.
    fn reset_state(&self, plan: &Plan) -> Result<(), ApiError> {
        replay::plan_replay(
            plan,
            &self.state_dir(&plan.name),
            &ReplayFrom::Earliest,
            None,
            &self.cfg.conn.brokers(),
            &self.cfg.conn.kafka_config,
            false,
        )
        .map(|_| ())
        .map_err(|e| ApiError::Internal(format!("cannot reset the state: {e}")))
    }

    /// Rewinds the group (purge: no state remains to say where to start).
    fn rewind_group(&self, plan: &Plan) -> Result<(), ApiError> {
        replay::rewind_group(
            &self.cfg.conn.brokers(),
            &plan.source.group,
            &plan.source.topics,
            &ReplayFrom::Earliest,
            &self.cfg.conn.kafka_config,
        )
        .map(|_| ())
        .map_err(|e| {
            ApiError::Internal(format!("cannot rewind group `{}`: {e}", plan.source.group))
        })
    }

    pub fn list(&self) -> Vec<PipelineSummary> {
        lock(&self.pipelines)
            .values()
            .map(|p| {
                let s = p.live.snapshot();
                let lag = s
                    .partitions
                    .iter()
                    .filter_map(|p| p.lag)
                    .reduce(|a, b| a + b);
                PipelineSummary {
                    name: p.name.clone(),
                    state: s.state,
                    group: p.group.clone(),
                    topics: p.topics.clone(),
                    events_in: s.counters.events_in,
                    results_out: s.counters.results_out,
                    dead_letters: s.counters.dead_total(),
                    lag,
                    watermark: s.watermark,
                    events_per_second: s.events_per_second,
                    error: s.error,
                }
            })
            .collect()
    }

    pub fn status(&self, name: &str) -> Result<PipelineStatus, ApiError> {
        let ps = lock(&self.pipelines);
        let p = ps
            .get(name)
            .ok_or_else(|| ApiError::NotFound(name.to_string()))?;
        Ok(PipelineStatus {
            name: p.name.clone(),
            description: p.description.clone(),
            group: p.group.clone(),
            topics: p.topics.clone(),
            sinks: p.sinks.clone(),
            dead_letter: p.dead_letter.clone(),
            live: p.live.snapshot(),
        })
    }

    /// Every pipeline's live status, for `/metrics`.
    pub fn all_live(&self) -> Vec<(String, LiveStatus)> {
        lock(&self.pipelines)
            .values()
            .map(|p| (p.name.clone(), p.live.snapshot()))
            .collect()
    }

    /// The group's committed and log-end offsets joined with the pipeline's own view.
    pub fn offsets(&self, name: &str) -> Result<OffsetsReport, ApiError> {
        let (group, topics, live) = {
            let ps = lock(&self.pipelines);
            let p = ps
                .get(name)
                .ok_or_else(|| ApiError::NotFound(name.to_string()))?;
            (p.group.clone(), p.topics.clone(), p.live.snapshot())
        };
        let g = group_offsets(
            &self.cfg.conn.brokers(),
            &group,
            &topics,
            false,
            &self.cfg.conn.kafka_config,
            Duration::from_secs(5),
        )
        .map_err(ApiError::Internal)?;
        let mut rows = g.partitions;
        for r in rows.iter_mut() {
            if let Some(l) = live
                .partitions
                .iter()
                .find(|l| l.topic == r.topic && l.partition == r.partition)
            {
                r.state_offset = l.state_offset;
                r.watermark = l.watermark;
                r.last_event_time = l.last_event_time;
                r.member = l.member.clone();
                // The pipeline's position is ahead of the committed offset between
                // checkpoints: lag counts from what it has processed.
                if let (Some(end), Some(pos)) = (r.log_end, l.state_offset.or(r.committed)) {
                    r.lag = Some((end - pos).max(0));
                }
            }
        }
        Ok(OffsetsReport {
            group,
            pipeline: Some(name.to_string()),
            partitions: rows,
        })
    }

    pub fn pause(&self, name: &str) -> Result<PipelineSummary, ApiError> {
        let _op = lock(&self.ops);
        let (runner, live) = {
            let mut ps = lock(&self.pipelines);
            let p = ps
                .get_mut(name)
                .ok_or_else(|| ApiError::NotFound(name.to_string()))?;
            p.paused = true;
            (p.runner.take(), p.live.clone())
        };
        Self::halt(runner);
        live.record(Telemetry::StateChanged(RunState::Paused));
        self.persist_control(name, true)?;
        self.summary(name)
    }

    pub fn resume(&self, name: &str) -> Result<PipelineSummary, ApiError> {
        let _op = lock(&self.ops);
        self.resume_locked(name)?;
        self.summary(name)
    }

    fn resume_locked(&self, name: &str) -> Result<(), ApiError> {
        let mut ps = lock(&self.pipelines);
        let p = ps
            .get_mut(name)
            .ok_or_else(|| ApiError::NotFound(name.to_string()))?;
        if p.runner
            .as_ref()
            .and_then(|r| r.thread.as_ref())
            .is_some_and(|t| !t.is_finished())
        {
            return Ok(()); // already running
        }
        let plan = self.deployed_plan(name, &p.yaml)?;
        p.paused = false;
        p.runner = Some(self.start(plan, p.live.clone()));
        drop(ps);
        self.persist_control(name, false)
    }

    fn summary(&self, name: &str) -> Result<PipelineSummary, ApiError> {
        self.list()
            .into_iter()
            .find(|s| s.name == name)
            .ok_or_else(|| ApiError::NotFound(name.to_string()))
    }

    /// Undeploys a pipeline; its state is kept (a later deploy resumes it) unless `purge`.
    pub fn stop(&self, name: &str, purge: bool) -> Result<(), ApiError> {
        let _op = lock(&self.ops);
        let (runner, yaml, live) = {
            let mut ps = lock(&self.pipelines);
            let p = ps
                .get_mut(name)
                .ok_or_else(|| ApiError::NotFound(name.to_string()))?;
            (p.runner.take(), p.yaml.clone(), p.live.clone())
        };
        Self::halt(runner);
        if purge {
            let plan = self.deployed_plan(name, &yaml)?;
            if let Err(e) = self.rewind_group(&plan) {
                // Keep it deployed (paused) rather than half-purged.
                if let Some(p) = lock(&self.pipelines).get_mut(name) {
                    p.paused = true;
                }
                live.record(Telemetry::StateChanged(RunState::Paused));
                self.persist_control(name, true)?;
                return Err(ApiError::Internal(format!(
                    "{e}; the pipeline is paused and its state kept"
                )));
            }
            let _ = std::fs::remove_dir_all(self.state_dir(name));
        }
        lock(&self.pipelines).remove(name);
        let _ = std::fs::remove_dir_all(self.pipeline_dir(name));
        tracing::info!(pipeline = %name, purge, "stopped");
        Ok(())
    }

    /// Pauses the pipeline, rewinds it (group offsets and state), and resumes it.
    pub fn replay(&self, name: &str, req: &ReplayRequest) -> Result<ReplayPlan, ApiError> {
        let _op = lock(&self.ops);
        let from = ReplayFrom::parse(&req.from).map_err(ApiError::BadRequest)?;
        let to = match &req.to {
            Some(t) => Some(replay::parse_time(t).map_err(ApiError::BadRequest)?),
            None => None,
        };
        let (yaml, was_paused) = {
            let ps = lock(&self.pipelines);
            let p = ps
                .get(name)
                .ok_or_else(|| ApiError::NotFound(name.to_string()))?;
            (p.yaml.clone(), p.paused)
        };
        let plan = self.deployed_plan(name, &yaml)?;
        let apply = |dry_run: bool| {
            replay::plan_replay(
                &plan,
                &self.state_dir(name),
                &from,
                to,
                &self.cfg.conn.brokers(),
                &self.cfg.conn.kafka_config,
                dry_run,
            )
        };
        if req.dry_run {
            return apply(true).map_err(replay_err);
        }
        let (runner, live) = {
            let mut ps = lock(&self.pipelines);
            let p = ps
                .get_mut(name)
                .ok_or_else(|| ApiError::NotFound(name.to_string()))?;
            (p.runner.take(), p.live.clone())
        };
        Self::halt(runner);
        live.record(Telemetry::StateChanged(RunState::Paused));
        let result = apply(false);
        live.reset_positions();
        self.seed_from_state(&plan, &live);
        if !was_paused {
            self.resume_locked(name)?;
        }
        result.map_err(replay_err)
    }

    /// Pauses the pipeline, re-feeds its dead letters, and resumes it.
    pub fn replay_dead_letters(&self, name: &str) -> Result<RedriveReport, ApiError> {
        let _op = lock(&self.ops);
        let (yaml, was_paused, runner, live) = {
            let mut ps = lock(&self.pipelines);
            let p = ps
                .get_mut(name)
                .ok_or_else(|| ApiError::NotFound(name.to_string()))?;
            (p.yaml.clone(), p.paused, p.runner.take(), p.live.clone())
        };
        Self::halt(runner);
        live.record(Telemetry::StateChanged(RunState::Paused));
        let result = self.deployed_plan(name, &yaml).and_then(|plan| {
            let opts = self.options(&plan, live.clone());
            redrive(plan, &opts).map_err(|e| match e {
                RunError::Usage(m) => ApiError::BadRequest(m),
                other => replay_err(other),
            })
        });
        if !was_paused {
            self.resume_locked(name)?;
        }
        result
    }

    /// Stops every pipeline gracefully (server shutdown); their deployments persist.
    pub fn shutdown(&self) {
        let _op = lock(&self.ops);
        let runners: Vec<Runner> = lock(&self.pipelines)
            .values_mut()
            .filter_map(|p| p.runner.take())
            .collect();
        for r in &runners {
            r.stop.store(true, Ordering::SeqCst);
        }
        for r in runners {
            if let Some(t) = r.thread {
                let _ = t.join();
            }
        }
    }
}

fn replay_err(e: RunError) -> ApiError {
    ApiError::Internal(e.to_string())
}
