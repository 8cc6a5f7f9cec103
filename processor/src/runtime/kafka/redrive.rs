//! Re-feeding dead letters (`weir replay-dlq`): the pipeline's own processor, fed from its
//! dead-letter topic instead of its source.

use super::{open_processor, KafkaOptions};
use crate::monitor::telemetry::Live;
use crate::pipeline::compile::Plan;
use crate::pipeline::SinkKind;
use crate::runtime::RunError;
use crate::source::{Payload, SourceRecord};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::Arc;
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
    let (mut p, _, _) = open_processor(plan, opts, &live)?;
    let group = format!("{}-dlq-replay", plan.source.group);
    let mut cfg = rdkafka::config::ClientConfig::new();
    cfg.set("bootstrap.servers", opts.conn.brokers())
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", "earliest");
    for (k, v) in &opts.kafka_config {
        cfg.set(k, v);
    }
    let c: BaseConsumer = cfg
        .create()
        .map_err(|e| RunError::Kafka(format!("cannot create a consumer: {e}")))?;
    let timeout = Duration::from_secs(10);
    let md = c
        .fetch_metadata(Some(&topic), timeout)
        .map_err(|e| RunError::Kafka(format!("metadata of `{topic}`: {e}")))?;
    let mut all = TopicPartitionList::new();
    for mt in md.topics() {
        for part in mt.partitions() {
            all.add_partition(&topic, part.id());
        }
    }
    let committed = c
        .committed_offsets(all, timeout)
        .map_err(|e| RunError::Kafka(format!("committed offsets of `{group}`: {e}")))?;
    let mut assign = TopicPartitionList::new();
    // partition -> (next offset to read, end when the re-feed started)
    let mut todo: BTreeMap<i32, (i64, i64)> = BTreeMap::new();
    for e in committed.elements() {
        let (lo, hi) = c
            .fetch_watermarks(&topic, e.partition(), timeout)
            .map_err(|er| RunError::Kafka(format!("offsets of {topic}-{}: {er}", e.partition())))?;
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
    let results_before = p.engine.counters.results_out;
    if !todo.is_empty() {
        c.assign(&assign)
            .map_err(|e| RunError::Kafka(format!("assign `{topic}`: {e}")))?;
        let total: i64 = todo.values().map(|(a, b)| b - a).sum();
        // Bounded: a minute plus a millisecond per record.
        let deadline =
            Instant::now() + Duration::from_secs(60) + Duration::from_millis(total as u64);
        let mut pos: BTreeMap<i32, i64> = todo.iter().map(|(k, v)| (*k, v.0)).collect();
        while pos.iter().any(|(k, o)| *o < todo[k].1) {
            if Instant::now() > deadline {
                return Err(RunError::Kafka(format!(
                    "timed out reading `{topic}` ({} of {total} records read)",
                    report.read
                )));
            }
            let m = match c.poll(Duration::from_millis(200)) {
                None => continue,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "dead-letter read error; retrying");
                    continue;
                }
                Some(Ok(m)) => m,
            };
            let end = todo.get(&m.partition()).map(|t| t.1).unwrap_or(0);
            pos.insert(m.partition(), m.offset() + 1);
            if m.offset() >= end {
                continue; // written after the re-feed started (maybe by it)
            }
            report.read += 1;
            if header(&m, "weir-pipeline") != Some(plan.name.as_str()) {
                report.other_pipelines += 1;
                continue;
            }
            let num = |h: &str| header(&m, h).and_then(|v| v.parse::<i64>().ok());
            let rec = SourceRecord {
                topic: header(&m, "weir-source-topic")
                    .unwrap_or_default()
                    .to_string(),
                partition: num("weir-source-partition").unwrap_or(0) as u32,
                offset: num("weir-source-offset").unwrap_or(-1),
                timestamp: num("weir-source-timestamp").or(m.timestamp().to_millis()),
                key: m.key().map(|k| k.to_vec()),
                value: Payload::Bytes(m.payload().unwrap_or(&[]).to_vec()),
                line: 0,
            };
            let dead_before = p.engine.counters.dead_total();
            p.process_record(&rec)?;
            report.failed_again += p.engine.counters.dead_total() - dead_before;
            report.refed += 1;
        }
        p.checkpoint(None)?;
        let mut done = TopicPartitionList::new();
        for (part, o) in &pos {
            let _ = done.add_partition_offset(&topic, *part, Offset::Offset(*o));
        }
        c.commit(&done, CommitMode::Sync)
            .map_err(|e| RunError::Kafka(format!("cannot commit the re-feed's offsets: {e}")))?;
    }
    report.results_out = p.engine.counters.results_out - results_before;
    p.publish();
    tracing::info!(pipeline = %plan.name, refed = report.refed, failed_again = report.failed_again, "dead letters re-fed");
    Ok(report)
}
