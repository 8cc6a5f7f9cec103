//! Re-feeding dead letters (`weir replay-dlq`): the pipeline's own processor, fed from its
//! dead-letter topic instead of its source.

use super::{open_driver, KafkaOptions};
use crate::kafka_client::{self, Role};
use crate::monitor::telemetry::Live;
use crate::pipeline::plan::Plan;
use crate::pipeline::SinkKind;
use crate::runtime::driver::{drive_to_end, lock, Cadence, Driver, Polled, Source};
use crate::runtime::RunError;
use crate::source::{Payload, SourceRecord};
use crate::state::checkpoint::Checkpoint;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What `weir replay-dlq` did.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RedriveReport {
    pub pipeline: String,
    pub dead_letter_topic: String,
    /// Dead-letter records read (up to the topic's end when the re-feed started).
    pub read: u64,
    /// This pipeline's records processed again.
    pub refed: u64,
    /// Records of other pipelines sharing the topic (left alone).
    pub other_pipelines: u64,
    /// Re-fed records that failed again (now back in the dead letter with their new reason).
    pub failed_again: u64,
    pub results_out: u64,
}

fn header<'a>(m: &'a BorrowedMessage<'_>, name: &str) -> Option<&'a str> {
    let h = m.headers()?;
    h.iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}

/// Re-feeds the pipeline's dead letters (the pipeline must not be running): reads its
/// dead-letter topic from the offsets committed by the last re-feed (group
/// `<group>-dlq-replay`) up to the end it has now, processes each record of this pipeline
/// with its original coordinates, checkpoints (sinks acknowledged, state written; the source
/// offsets do not move), then commits the dead-letter offsets. Records that fail again go
/// back to the dead letter with their new reason. A crash before the commit re-feeds the
/// same records again: their results are idempotent, their second failures are duplicates.
pub fn redrive(plan: Plan, opts: &KafkaOptions) -> Result<RedriveReport, RunError> {
    let topic = match &plan.dead_letter {
        Some(d) if d.kind == SinkKind::Kafka => d.topic.clone().unwrap_or_default(),
        _ => {
            return Err(RunError::Usage(format!(
                "pipeline `{}` has no dead-letter topic to re-feed: replay-dlq needs `dead_letter: {{type: kafka, topic: ...}}`",
                plan.name
            )))
        }
    };
    let plan: &'static Plan = Box::leak(Box::new(plan));
    let live = opts
        .live
        .clone()
        .unwrap_or_else(|| Arc::new(Live::new(&plan.name)));
    let group = format!("{}-dlq-replay", plan.source.group);
    let c: BaseConsumer = kafka_client::config(
        &opts.conn.brokers(),
        Role::Tool { group: &group },
        &opts.kafka_config,
    )
    .create()
    .map_err(RunError::kafka("cannot create a consumer"))?;
    let timeout = Duration::from_secs(10);
    let md = c
        .fetch_metadata(Some(&topic), timeout)
        .map_err(RunError::kafka(format!("metadata of `{topic}`")))?;
    let mut all = TopicPartitionList::new();
    for mt in md.topics() {
        for part in mt.partitions() {
            all.add_partition(&topic, part.id());
        }
    }
    let committed = c
        .committed_offsets(all, timeout)
        .map_err(RunError::kafka(format!("committed offsets of `{group}`")))?;
    let mut assign = TopicPartitionList::new();
    // partition -> (next offset to read, end when the re-feed started)
    let mut todo: BTreeMap<i32, (i64, i64)> = BTreeMap::new();
    for e in committed.elements() {
        let (lo, hi) =
            c.fetch_watermarks(&topic, e.partition(), timeout)
                .map_err(RunError::kafka(format!(
                    "offsets of {topic}-{}",
                    e.partition()
                )))?;
        let from = match e.offset() {
            Offset::Offset(o) => o.max(lo),
            _ => lo,
        };
        if from < hi {
            todo.insert(e.partition(), (from, hi));
            let _ = assign.add_partition_offset(&topic, e.partition(), Offset::Offset(from));
        }
    }
    let mut report = RedriveReport {
        pipeline: plan.name.clone(),
        dead_letter_topic: topic.clone(),
        read: 0,
        refed: 0,
        other_pipelines: 0,
        failed_again: 0,
        results_out: 0,
    };
    let driver = Mutex::new(open_driver(plan, opts, &live, false, None)?);
    let (results_before, dead_before) = {
        let d = lock(&driver);
        (
            d.engine.counters.results_out,
            d.engine.counters.dead_total(),
        )
    };
    if !todo.is_empty() {
        c.assign(&assign)
            .map_err(RunError::kafka(format!("assign `{topic}`")))?;
        let total: i64 = todo.values().map(|(a, b)| b - a).sum();
        let mut source = DeadLetterSource {
            current: None,
            pipeline: plan.name.clone(),
            topic: topic.clone(),
            pos: todo.iter().map(|(k, v)| (*k, v.0)).collect(),
            todo,
            consumer: c,
            // Bounded: a minute plus a millisecond per record.
            deadline: Instant::now()
                + Duration::from_secs(60)
                + Duration::from_millis(total as u64),
            total,
            report: &mut report,
            commit_failed: None,
        };
        let cadence = Cadence {
            every: opts.checkpoint_every,
            interval: None,
            stop_after: None,
        };
        drive_to_end(&driver, &mut source, &cadence)?;
        if let Some(e) = source.commit_failed.take() {
            return Err(RunError::kafka("cannot commit the re-feed's offsets")(e));
        }
        kafka_client::close(source.consumer, Duration::from_secs(30), &group);
    }
    let mut d = lock(&driver);
    report.results_out = d.engine.counters.results_out - results_before;
    report.failed_again = d.engine.counters.dead_total() - dead_before;
    d.publish();
    tracing::info!(pipeline = %plan.name, refed = report.refed, failed_again = report.failed_again, "dead letters re-fed");
    Ok(report)
}

/// The pipeline's records in its dead-letter topic, up to the end it had when the re-feed
/// started, each with its original coordinates (not positions: the source offsets do not
/// move). After a checkpoint, the dead-letter offsets read so far are committed.
struct DeadLetterSource<'r> {
    pipeline: String,
    topic: String,
    /// partition -> (first offset to read, end when the re-feed started)
    todo: BTreeMap<i32, (i64, i64)>,
    /// partition -> next offset to read
    pos: BTreeMap<i32, i64>,
    consumer: BaseConsumer,
    deadline: Instant,
    total: i64,
    report: &'r mut RedriveReport,
    commit_failed: Option<rdkafka::error::KafkaError>,
    /// The record lent to the driver.
    current: Option<SourceRecord>,
}

impl Source for DeadLetterSource<'_> {
    fn positioned(&self) -> bool {
        false
    }

    fn seek(&mut self, _driver: &mut Driver<'_>) -> Result<(), RunError> {
        Ok(()) // assigned at the committed offsets
    }

    fn next(&mut self, timeout: Duration) -> Result<Polled<'_>, RunError> {
        loop {
            if !self.pos.iter().any(|(k, o)| *o < self.todo[k].1) {
                return Ok(Polled::Stop);
            }
            if Instant::now() > self.deadline {
                return Err(RunError::TimedOut(format!(
                    "reading `{}` ({} of {} records read)",
                    self.topic, self.report.read, self.total
                )));
            }
            let m = match self.consumer.poll(timeout) {
                None => return Ok(Polled::Idle),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "dead-letter read error; retrying");
                    return Ok(Polled::Idle);
                }
                Some(Ok(m)) => m,
            };
            let end = self.todo.get(&m.partition()).map(|t| t.1).unwrap_or(0);
            self.pos.insert(m.partition(), m.offset() + 1);
            if m.offset() >= end {
                continue; // written after the re-feed started (maybe by it)
            }
            self.report.read += 1;
            if header(&m, "weir-pipeline") != Some(self.pipeline.as_str()) {
                self.report.other_pipelines += 1;
                continue;
            }
            self.report.refed += 1;
            return Ok(Polled::Record(self.current.insert(original(&m))));
        }
    }

    fn after_checkpoint(&mut self, _cp: &Checkpoint, _last: bool) {
        let mut done = TopicPartitionList::new();
        for (part, o) in &self.pos {
            let _ = done.add_partition_offset(&self.topic, *part, Offset::Offset(*o));
        }
        if let Err(e) = self.consumer.commit(&done, CommitMode::Sync) {
            self.commit_failed = Some(e);
        }
    }
}

/// A dead letter as the record it was, with its original coordinates.
fn original(m: &BorrowedMessage<'_>) -> SourceRecord {
    let num = |h: &str| header(m, h).and_then(|v| v.parse::<i64>().ok());
    SourceRecord {
        topic: header(m, "weir-source-topic")
            .unwrap_or_default()
            .to_string(),
        partition: num("weir-source-partition").unwrap_or(0) as u32,
        offset: num("weir-source-offset").unwrap_or(-1),
        timestamp: num("weir-source-timestamp").or(m.timestamp().to_millis()),
        key: m.key().map(|k| k.to_vec()),
        value: Payload::Bytes(m.payload().unwrap_or(&[]).to_vec()),
        line: 0,
    }
}
