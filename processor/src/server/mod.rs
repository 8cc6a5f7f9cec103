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
mod deploy;
mod layout;
mod shape;
mod supervisor;
mod types;

use layout::Layout;
pub use shape::referenced_schemas;
use shape::{incompatibilities, valid_name};
pub use supervisor::ServerConfig;
use supervisor::{halt, Runner};
pub use types::{
    ApiError, DeployRequest, DeployResponse, ErrorBody, OffsetsReport, PipelineStatus,
    PipelineSummary, ReplayRequest, StopResponse,
};
// What the operations answer, for the CLI to read.
pub use crate::runtime::kafka::RedriveReport;
pub use crate::runtime::replay::ReplayPlan;

use crate::monitor::offsets::{group_offsets, merge_live};
use crate::monitor::telemetry::{Live, LiveStatus, RunState, Telemetry};
use crate::pipeline::plan::Plan;
use crate::pipeline::Problem;
use crate::runtime::kafka::{redrive, KafkaOptions};
use crate::runtime::replay::{self, ReplayFrom};
use crate::runtime::RunError;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use yaml_serde::Value as Yaml;

/// What an operation on a halted pipeline needs.
struct Halted {
    yaml: String,
    was_paused: bool,
    live: Arc<Live>,
}

struct Pipeline {
    name: String,
    yaml: String,
    group: String,
    topics: Vec<String>,
    description: Option<String>,
    sinks: Vec<String>,
    dead_letter: Option<String>,
    delivery: &'static str,
    paused: bool,
    live: Arc<Live>,
    runner: Option<Runner>,
}

pub struct Server {
    cfg: ServerConfig,
    layout: Layout,
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
            layout: Layout::new(&cfg.data_dir),
            cfg,
            pipelines: Mutex::new(BTreeMap::new()),
            ops: Mutex::new(()),
        }
    }

    /// A deployed pipeline's plan, compiled from its stored definition and schemas.
    fn deployed_plan(&self, name: &str, yaml: &str) -> Result<Plan, ApiError> {
        deploy::compile(yaml, &self.pipeline_dir(name).join("schemas")).map_err(|ps| {
            ApiError::Internal(format!(
                "the deployed definition of `{name}` no longer compiles ({} problem(s))",
                ps.len()
            ))
        })
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
        let description = yaml_serde::from_str::<Yaml>(yaml).ok().and_then(|y| {
            y.get("description")
                .and_then(Yaml::as_str)
                .map(str::to_string)
        });
        live.record(crate::monitor::telemetry::Telemetry::MissingOffsetsPolicy(
            plan.source.on_missing_offsets.name(),
        ));
        Pipeline {
            name: plan.name.clone(),
            yaml: yaml.to_string(),
            group: plan.source.group.clone(),
            topics: plan.source.topics.clone(),
            description,
            sinks: plan.sinks.iter().map(sink_name).collect(),
            dead_letter: plan.dead_letter.as_ref().map(sink_name),
            delivery: plan.delivery.name(),
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
            let plan = match deploy::compile(&yaml, &pdir.join("schemas")) {
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

    fn pipeline_dir(&self, name: &str) -> PathBuf {
        self.layout.pipeline_dir(name)
    }

    fn state_dir(&self, name: &str) -> PathBuf {
        self.layout.state_dir(name)
    }

    fn persist_control(&self, name: &str, paused: bool) -> Result<(), ApiError> {
        self.layout
            .persist_control(name, paused)
            .map_err(ApiError::internal)
    }

    fn options(&self, plan: &Plan, live: Arc<Live>) -> KafkaOptions {
        supervisor::options(&self.cfg, &self.layout, plan, live)
    }

    fn start(&self, plan: Plan, live: Arc<Live>) -> Runner {
        let opts = self.options(&plan, live.clone());
        Runner::start(plan, opts, live)
    }

    /// Halts a pipeline and marks it paused: the first half of every operation on a
    /// stopped pipeline (pause, stop, replay, re-feed). Returns what the operation needs
    /// and whether it was paused before.
    fn halt_pipeline(&self, name: &str) -> Result<Halted, ApiError> {
        let (runner, halted) = {
            let mut ps = lock(&self.pipelines);
            let p = ps
                .get_mut(name)
                .ok_or_else(|| ApiError::NotFound(name.to_string()))?;
            let halted = Halted {
                yaml: p.yaml.clone(),
                was_paused: p.paused,
                live: p.live.clone(),
            };
            (p.runner.take(), halted)
        };
        halt(runner);
        halted
            .live
            .record(Telemetry::StateChanged(RunState::Paused));
        Ok(halted)
    }

    /// Halts a pipeline, runs `f` on its plan, and resumes it unless it was paused before.
    fn with_halted<T>(
        &self,
        name: &str,
        f: impl FnOnce(Plan, &Arc<Live>) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let h = self.halt_pipeline(name)?;
        let result = self
            .deployed_plan(name, &h.yaml)
            .and_then(|plan| f(plan, &h.live));
        if !h.was_paused {
            self.resume_locked(name)?;
        }
        result
    }

    pub fn deploy(&self, req: DeployRequest) -> Result<DeployResponse, ApiError> {
        let _op = lock(&self.ops);
        let (plan, staging) = deploy::stage(&self.layout, &req)?;
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
        halt(runner);
        if reset && self.state_dir(&name).exists() {
            self.reset_state(&plan)?;
            outcome = "reset";
        }
        deploy::install(&self.layout, &name, &staging, &req.definition, paused)?;
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
            delivery: p.delivery.to_string(),
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
            // Each partition's owner, when several servers host the pipeline.
            true,
            &self.cfg.conn.kafka_config,
            Duration::from_secs(5),
        )
        .map_err(ApiError::Internal)?;
        let mut rows = g.partitions;
        merge_live(&mut rows, &live);
        Ok(OffsetsReport {
            group,
            state: None,
            pipeline: Some(name.to_string()),
            partitions: rows,
            missing_offsets: Some(live.missing_offsets.clone()),
        })
    }

    pub fn pause(&self, name: &str) -> Result<PipelineSummary, ApiError> {
        let _op = lock(&self.ops);
        self.halt_pipeline(name)?;
        if let Some(p) = lock(&self.pipelines).get_mut(name) {
            p.paused = true;
        }
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
        if p.runner.as_ref().is_some_and(Runner::is_running) {
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
        let Halted { yaml, live, .. } = self.halt_pipeline(name)?;
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
            if let Err(e) = replay::delete_internal_topics(
                &plan,
                &self.cfg.conn.brokers(),
                &self.cfg.conn.kafka_config,
            ) {
                tracing::warn!(pipeline = %name, error = %e,
                    "cannot delete the pipeline's internal topics; a new deployment under its group may restore old state from them");
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
        let apply = |plan: &Plan, dry_run: bool| {
            replay::plan_replay(
                plan,
                &self.state_dir(name),
                &from,
                to,
                &self.cfg.conn.brokers(),
                &self.cfg.conn.kafka_config,
                dry_run,
            )
            .map_err(replay_err)
        };
        if req.dry_run {
            let yaml = lock(&self.pipelines)
                .get(name)
                .map(|p| p.yaml.clone())
                .ok_or_else(|| ApiError::NotFound(name.to_string()))?;
            return apply(&self.deployed_plan(name, &yaml)?, true);
        }
        self.with_halted(name, |plan, live| {
            let result = apply(&plan, false);
            live.reset_positions();
            self.seed_from_state(&plan, live);
            result
        })
    }

    /// Pauses the pipeline, re-feeds its dead letters, and resumes it.
    pub fn replay_dead_letters(&self, name: &str) -> Result<RedriveReport, ApiError> {
        let _op = lock(&self.ops);
        self.with_halted(name, |plan, live| {
            let opts = self.options(&plan, live.clone());
            redrive(plan, &opts).map_err(|e| match e {
                RunError::Usage(m) => ApiError::BadRequest(m),
                other => replay_err(other),
            })
        })
    }

    /// Stops every pipeline gracefully (server shutdown); their deployments persist.
    pub fn shutdown(&self) {
        let _op = lock(&self.ops);
        let runners: Vec<Runner> = lock(&self.pipelines)
            .values_mut()
            .filter_map(|p| p.runner.take())
            .collect();
        // Signal every pipeline first, so they stop in parallel.
        for r in &runners {
            r.signal();
        }
        for r in runners {
            r.halt();
        }
    }
}

fn replay_err(e: RunError) -> ApiError {
    ApiError::Internal(e.to_string())
}
