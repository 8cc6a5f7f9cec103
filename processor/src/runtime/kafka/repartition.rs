//! The repartition topic of a re-keying pipeline (`<group>-repartition`, see
//! [`crate::operators::repartition`] for its records and the rules across the hop).
//!
//! `weir run` (and `weir serve`) runs such a pipeline as two stages in one process, each a
//! consumer group of its own with its own state directory: the **upstream** stage reads the
//! source topics (group `<group>`, state `<state-dir>/upstream`) and sends each valid event
//! to the repartition partition of its group key; the **downstream** stage reads the
//! repartition topic (group `<group>-repartition`, state `<state-dir>/downstream`) and runs
//! the windows, aggregates and sinks. Several instances share both stages' partitions
//! through the two groups, as Kafka Streams' sub-topologies share their tasks.
//!
//! **Delivery.** The upstream checkpoint sends its markers, waits until the broker has
//! acknowledged every record sent (idempotent producer, `acks=all`), and only then writes
//! its state and commits the source offsets: nothing is lost across the hop. A crash
//! re-sends the events since the last checkpoint; the downstream partition skips those it
//! has applied (by upstream partition and offset), so nothing is counted twice.

use super::super::driver::Router;
use super::super::{RunError, Summary};
use super::{run_stage, wait, KafkaOptions};
use crate::kafka_client::{self, Role};
use crate::monitor::telemetry::Live;
use crate::pipeline::plan::Plan;
use crate::sink::kafka::{ensure_topic_with, Sender, SharedProducer};
use rdkafka::consumer::{BaseConsumer, Consumer};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long a checkpoint waits for the repartition records' acknowledgements.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(60);

/// The largest partition count of `topics`.
pub fn partitions_of(
    brokers: &str,
    topics: &[String],
    extra: &[(String, String)],
) -> Result<i32, RunError> {
    let meta: BaseConsumer = kafka_client::config(brokers, Role::Admin, extra)
        .create()
        .map_err(RunError::kafka("cannot create a metadata client"))?;
    let mut n = 0;
    for t in topics {
        let m = meta
            .fetch_metadata(Some(t), Duration::from_secs(10))
            .map_err(RunError::kafka(format!("cannot read the metadata of {t}")))?;
        for mt in m.topics() {
            n = n.max(mt.partitions().len() as i32);
        }
    }
    Ok(n)
}

/// Creates the repartition topic when missing; returns (its partitions, the source's).
pub fn ensure(
    plan: &Plan,
    brokers: &str,
    extra: &[(String, String)],
) -> Result<(u32, u32), RunError> {
    let Some(r) = &plan.repartition else {
        return Ok((1, 1));
    };
    let source = partitions_of(brokers, &plan.source.topics, extra)?.max(1);
    let want = r.partitions.unwrap_or(source);
    // Records older than a window can stay open are of no use downstream.
    ensure_topic_with(
        brokers,
        &r.topic,
        want,
        -1,
        &[("retention.ms", "604800000".to_string())],
        extra,
    )?;
    // An existing topic keeps its partition count: keys hash over what it has.
    let have = partitions_of(brokers, std::slice::from_ref(&r.topic), extra)?.max(1);
    tracing::info!(topic = %r.topic, partitions = have, source_partitions = source, why = %r.why, "re-keying through the repartition topic");
    Ok((have as u32, source as u32))
}

/// The upstream stage's producer to the repartition topic: its own, or the pipeline's
/// transactional producer (exactly-once: the records are in the checkpoint's transaction,
/// and the downstream stage reads them `read_committed`).
pub struct KafkaRouter {
    topic: String,
    partitions: u32,
    upstream: u32,
    sender: Sender,
}

impl KafkaRouter {
    pub fn open(
        plan: &Plan,
        brokers: &str,
        extra: &[(String, String)],
        partitions: u32,
        upstream: u32,
        shared: Option<&SharedProducer>,
    ) -> Result<KafkaRouter, RunError> {
        let topic = plan
            .repartition
            .as_ref()
            .map(|r| r.topic.clone())
            .unwrap_or_default();
        let name = format!("repartition:{topic}");
        let sender = match shared {
            Some(p) => Sender::shared(&name, p.clone()),
            None => Sender::new(brokers, &name, extra)?,
        };
        Ok(KafkaRouter {
            topic,
            partitions,
            upstream,
            sender,
        })
    }
}

impl Router for KafkaRouter {
    fn partitions(&self) -> u32 {
        self.partitions
    }

    fn upstream_partitions(&self) -> u32 {
        self.upstream
    }

    fn send(&mut self, partition: u32, key: &[u8], value: &[u8]) -> Result<(), RunError> {
        self.sender
            .send_to(&self.topic, partition as i32, key, Some(value))?;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), RunError> {
        self.sender.flush_within(FLUSH_TIMEOUT)?;
        Ok(())
    }
}

/// A pipeline that re-keys: its two stages side by side ([`repartition`]), each with its
/// own group and state directory; when one ends, the other is stopped too.
pub(super) fn run_rekeyed(
    plan: Plan,
    opts: &KafkaOptions,
    stop: Arc<AtomicBool>,
) -> Result<Summary, RunError> {
    let brokers = opts.conn.brokers();
    let mut backoff = Duration::from_millis(500);
    let (partitions, upstream) = loop {
        match ensure(&plan, &brokers, &opts.kafka_config) {
            Ok(x) => break x,
            Err(e) if e.is_retryable() => {
                tracing::warn!(error = %e, "cannot create the repartition topic; retrying");
                if !wait(&stop, backoff) {
                    return Err(e);
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            Err(e) => return Err(e),
        }
    };
    let Some(down) = plan.downstream() else {
        return Err(RunError::SessionFailed);
    };
    let down: &'static Plan = Box::leak(Box::new(down));
    let up: &'static Plan = Box::leak(Box::new(plan.upstream()));
    let stage_opts = |dir: &str, live: Option<Arc<Live>>, downstream: bool| KafkaOptions {
        state_dir: opts.state_dir.join(dir),
        conn: opts.conn.clone(),
        instance_id: opts.instance_id.clone(),
        checkpoint_every: opts.checkpoint_every,
        checkpoint_interval: opts.checkpoint_interval,
        output: if downstream {
            opts.output.clone()
        } else {
            None
        },
        dead_letter: opts
            .dead_letter
            .clone()
            .map(|d| if downstream { format!("{d}.late") } else { d }),
        kafka_config: opts.kafka_config.clone(),
        stop_after: if downstream { None } else { opts.stop_after },
        live,
        sample_latency: opts.sample_latency,
        discard: downstream && opts.discard,
    };
    for d in ["upstream", "downstream"] {
        std::fs::create_dir_all(opts.state_dir.join(d)).map_err(|source| RunError::Io {
            op: format!("create {}", opts.state_dir.join(d).display()),
            source,
        })?;
    }
    let up_opts = stage_opts("upstream", opts.live.clone(), false);
    let down_opts = stage_opts(
        "downstream",
        opts.live.as_ref().map(|l| l.downstream()),
        true,
    );
    let inner = AtomicBool::new(false);
    let (a, b) = std::thread::scope(|scope| {
        let upstream_stage = scope.spawn(|| {
            let r = run_stage(up, &up_opts, &inner, Some((partitions, upstream)));
            inner.store(true, Ordering::SeqCst);
            r
        });
        let downstream_stage = scope.spawn(|| {
            let r = run_stage(down, &down_opts, &inner, None);
            inner.store(true, Ordering::SeqCst);
            r
        });
        while !inner.load(Ordering::SeqCst) && !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(50));
        }
        inner.store(true, Ordering::SeqCst);
        (upstream_stage.join(), downstream_stage.join())
    });
    let a = a.map_err(|_| RunError::SessionFailed)??;
    let b = b.map_err(|_| RunError::SessionFailed)??;
    let mut s = a;
    let (c, d) = (&mut s.counters, &b.counters);
    c.results_out += d.results_out;
    c.dead_decode += d.dead_decode;
    c.dead_late += d.dead_late;
    s.watermark = b.watermark;
    s.checkpoints += b.checkpoints;
    s.state_writes += b.state_writes;
    s.evicted += b.evicted;
    s.expired += b.expired;
    Ok(s)
}
