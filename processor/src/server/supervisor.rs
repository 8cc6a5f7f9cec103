//! The threads that run deployed pipelines: each runs [`run_kafka`] until it is halted
//! (last checkpoint, commit, leave the group). A pipeline that fails records why in its
//! [`Live`] status; the server keeps serving.

use super::layout::Layout;
use crate::monitor::telemetry::{Live, Telemetry};
use crate::pipeline::plan::Plan;
use crate::runtime::kafka::{run_kafka, KafkaOptions};
use crate::runtime::outputs::Connections;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// How the server reaches Kafka, PostgreSQL and the registry, and how it checkpoints.
#[derive(Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub conn: Connections,
    pub checkpoint_interval: Duration,
    pub checkpoint_every: u64,
    /// Join groups as static members (`group.instance.id`), with the id kept in `<data>/instance-id`.
    pub static_membership: bool,
}

/// The Kafka options of a deployed pipeline.
pub fn options(cfg: &ServerConfig, layout: &Layout, plan: &Plan, live: Arc<Live>) -> KafkaOptions {
    KafkaOptions {
        state_dir: layout.state_dir(&plan.name),
        conn: cfg.conn.clone(),
        instance_id: cfg
            .static_membership
            .then(|| format!("{}-{}", layout.instance_id(), plan.name)),
        checkpoint_every: cfg.checkpoint_every,
        checkpoint_interval: cfg.checkpoint_interval,
        output: None,
        dead_letter: None,
        kafka_config: cfg.conn.kafka_config.clone(),
        stop_after: None,
        live: Some(live),
        sample_latency: false,
        discard: false,
    }
}

pub struct Runner {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Runner {
    pub fn start(plan: Plan, opts: KafkaOptions, live: Arc<Live>) -> Runner {
        let stop = Arc::new(AtomicBool::new(false));
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

    /// Whether its thread is still running.
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Asks the pipeline to stop, without waiting.
    pub fn signal(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Stops the pipeline gracefully and waits for it.
    pub fn halt(mut self) {
        self.signal();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Halts a pipeline's runner, if it has one.
pub fn halt(runner: Option<Runner>) {
    if let Some(r) = runner {
        r.halt();
    }
}
