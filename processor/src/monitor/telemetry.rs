//! Typed telemetry: every observation a running pipeline reports goes through
//! [`Live::record`] as a [`Telemetry`] value. One place turns it into a log line (`tracing`)
//! and into the live status that `weir serve` shows (`/api/pipelines/{name}`, `/metrics`,
//! the web page). Counters that must survive restarts (records in/out, dead letters) live
//! in the checkpointed [`super::Counters`] and are copied here by [`Telemetry::Progress`].

use super::Counters;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What a pipeline is doing, as `weir status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Deployed, the consumer is joining the group.
    #[default]
    Starting,
    Running,
    /// A session failed (broker, sink, registry); retrying from the last checkpoint.
    Retrying,
    /// Paused by the user: the consumer left the group, the state is kept.
    Paused,
    /// Stopped for good after an error that retrying cannot fix (a bad state directory).
    Failed,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Starting => "starting",
            RunState::Running => "running",
            RunState::Retrying => "retrying",
            RunState::Paused => "paused",
            RunState::Failed => "failed",
        }
    }
}

/// One partition of a source topic.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PartitionStatus {
    pub topic: String,
    pub partition: i32,
    /// The next offset the group has committed.
    pub committed: Option<i64>,
    /// The next offset the pipeline's state includes (its checkpoint, or its live position
    /// while running; ahead of `committed` until the next checkpoint).
    pub state_offset: Option<i64>,
    /// The log-end offset (high watermark).
    pub log_end: Option<i64>,
    /// `log_end` minus the pipeline's position (or the committed offset).
    pub lag: Option<i64>,
    /// This partition's watermark (largest event time − max_out_of_orderness), ms.
    pub watermark: Option<i64>,
    /// The largest event time seen on this partition, ms.
    pub last_event_time: Option<i64>,
    /// The consumer-group member that owns it.
    pub member: Option<String>,
}

/// A pipeline's live numbers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LiveStatus {
    pub state: RunState,
    pub member_id: Option<String>,
    pub partitions: Vec<PartitionStatus>,
    /// The pipeline watermark (ms since the epoch), once there is one.
    pub watermark: Option<i64>,
    pub counters: Counters,
    /// Records in per second over the last few seconds.
    pub events_per_second: f64,
    /// Wall-clock time of the last checkpoint, ms since the epoch.
    pub last_checkpoint: Option<i64>,
    pub checkpoints: u64,
    pub checkpoint_seconds_last: f64,
    pub checkpoint_seconds_sum: f64,
    /// RocksDB's estimate of the live state size.
    pub state_bytes: u64,
    /// Per sink: (flushes, seconds spent waiting for acknowledgements in all, last).
    pub sink_flush: BTreeMap<String, SinkLatency>,
    /// The last session error, while retrying.
    pub error: Option<String>,
    /// What restores from the changelog read (`state.changelog`).
    #[serde(default)]
    pub restore: RestoreStatus,
    /// `source.on_missing_offsets` and each time it applied.
    #[serde(default)]
    pub missing_offsets: MissingOffsetsStatus,
    /// A table's (`window: {type: none}`) keys dropped by its `ttl` since the pipeline
    /// started.
    #[serde(default)]
    pub table_keys_expired: u64,
    /// A re-keying pipeline's downstream stage (group `<group>-repartition`: windows,
    /// aggregates, sinks); this status is then the upstream stage's, with the downstream's
    /// results and late events added to its counters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downstream: Option<Box<LiveStatus>>,
}

/// Restores from the changelog since the pipeline started (every session of it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RestoreStatus {
    /// Partition restores that read any records.
    pub partitions: u64,
    pub records: u64,
    pub bytes: u64,
    /// Time spent restoring, in all and in the last restore that read anything.
    pub seconds_sum: f64,
    pub seconds_last: f64,
}

/// `source.on_missing_offsets` (Kafka) and the times an offset to resume from was gone.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MissingOffsetsStatus {
    /// `fail`, `earliest` or `latest`; empty before the first Kafka session.
    pub policy: String,
    /// How many times, since the pipeline started.
    pub total: u64,
    /// The last few (at most 20), oldest first.
    pub last: Vec<MissingOffset>,
}

/// One offset to resume from that the log no longer held.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MissingOffset {
    pub topic: String,
    pub partition: i32,
    /// The offset to resume from (the state's, or the group's committed one).
    pub offset: i64,
    /// The log's first and next offsets then.
    pub log_start: i64,
    pub log_end: i64,
    /// Where the pipeline went on from (none: it stopped, `fail`).
    pub resumed_at: Option<i64>,
    /// When, ms since the epoch.
    pub at: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SinkLatency {
    pub flushes: u64,
    pub seconds_sum: f64,
    pub seconds_last: f64,
}

/// Everything a running pipeline reports.
pub enum Telemetry<'a> {
    StateChanged(RunState),
    SessionFailed {
        error: &'a str,
        retry_in: Duration,
    },
    /// The pipeline stopped on an error that retrying cannot fix.
    Failed {
        error: &'a str,
    },
    /// The consumer group assigned partitions to this member.
    Assigned {
        member_id: Option<String>,
        partitions: &'a [(String, i32)],
    },
    Revoked {
        partitions: &'a [(String, i32)],
    },
    /// A sink acknowledged everything written since the last checkpoint.
    SinkFlushed {
        sink: &'a str,
        took: Duration,
    },
    CheckpointWritten {
        took: Duration,
        state_bytes: u64,
    },
    /// Assigned partitions were checked against the changelog: (partition, records,
    /// bytes) read for each, and how long the check and the restore took.
    Restored {
        partitions: &'a [(u32, u64, u64)],
        took: Duration,
    },
    /// The periodic snapshot of counters, positions and watermarks (every ~250 ms).
    Progress {
        counters: &'a Counters,
        watermark: i64,
        /// (topic, partition, next offset in state)
        positions: &'a [(String, i32, i64)],
        /// (partition, largest event time)
        event_times: &'a [(u32, i64)],
        max_out_of_orderness_ms: i64,
    },
    /// A table's keys dropped by its `ttl` since the last report.
    KeysExpired(u64),
    /// The session's `source.on_missing_offsets`.
    MissingOffsetsPolicy(&'static str),
    /// An offset to resume from was no longer in the log; the policy applied.
    OffsetMissing(MissingOffset),
    /// librdkafka's statistics: the log end per partition.
    LogEnd {
        topic: &'a str,
        partition: i32,
        offset: i64,
    },
}

/// The shared live status of one pipeline.
#[derive(Default)]
pub struct Live {
    name: String,
    inner: Mutex<LiveInner>,
    /// A re-keying pipeline's downstream stage ([`Live::downstream`]).
    downstream: Mutex<Option<Arc<Live>>>,
}

#[derive(Default)]
struct LiveInner {
    status: LiveStatus,
    /// (topic, partition) -> (state offset, log end)
    parts: BTreeMap<(String, i32), (Option<i64>, Option<i64>)>,
    owned: Vec<(String, i32)>,
    event_times: BTreeMap<u32, i64>,
    ooo: i64,
    rate_samples: Vec<(std::time::Instant, u64)>,
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Live {
    pub fn new(name: &str) -> Live {
        Live {
            name: name.to_string(),
            inner: Mutex::new(LiveInner::default()),
            downstream: Mutex::new(None),
        }
    }

    /// The live status of a re-keying pipeline's downstream stage, shown inside this one's.
    pub fn downstream(&self) -> Arc<Live> {
        let mut d = self.downstream.lock().unwrap_or_else(|e| e.into_inner());
        d.get_or_insert_with(|| Arc::new(Live::new(&format!("{} (downstream)", self.name))))
            .clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LiveInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn record(&self, t: Telemetry<'_>) {
        let name = self.name.as_str();
        let mut g = self.lock();
        match t {
            Telemetry::StateChanged(s) => {
                if g.status.state != s {
                    tracing::info!(pipeline = name, state = s.as_str(), "pipeline state");
                }
                g.status.state = s;
                if s == RunState::Running {
                    g.status.error = None;
                }
                if s == RunState::Paused {
                    g.owned.clear();
                    g.status.member_id = None;
                    g.rate_samples.clear();
                    g.status.events_per_second = 0.0;
                }
            }
            Telemetry::SessionFailed { error, retry_in } => {
                tracing::error!(
                    pipeline = name,
                    error,
                    retry_in_ms = retry_in.as_millis() as u64,
                    "pipeline session failed; restarting from the last checkpoint"
                );
                g.status.state = RunState::Retrying;
                g.status.error = Some(error.to_string());
                g.owned.clear();
            }
            Telemetry::Failed { error } => {
                tracing::error!(pipeline = name, error, "pipeline stopped");
                g.status.state = RunState::Failed;
                g.status.error = Some(error.to_string());
                g.owned.clear();
            }
            Telemetry::Assigned {
                member_id,
                partitions,
            } => {
                tracing::info!(pipeline = name, ?partitions, "partitions assigned");
                for p in partitions {
                    if !g.owned.contains(p) {
                        g.owned.push(p.clone());
                    }
                    g.parts.entry(p.clone()).or_default();
                }
                g.owned.sort();
                if member_id.is_some() {
                    g.status.member_id = member_id;
                }
            }
            Telemetry::Revoked { partitions } => {
                tracing::info!(pipeline = name, ?partitions, "partitions revoked");
                g.owned.retain(|p| !partitions.contains(p));
            }
            Telemetry::SinkFlushed { sink, took } => {
                let s = g.status.sink_flush.entry(sink.to_string()).or_default();
                s.flushes += 1;
                s.seconds_last = took.as_secs_f64();
                s.seconds_sum += took.as_secs_f64();
            }
            Telemetry::CheckpointWritten { took, state_bytes } => {
                tracing::debug!(
                    pipeline = name,
                    took_ms = took.as_millis() as u64,
                    state_bytes,
                    "checkpoint"
                );
                g.status.checkpoints += 1;
                g.status.checkpoint_seconds_last = took.as_secs_f64();
                g.status.checkpoint_seconds_sum += took.as_secs_f64();
                g.status.last_checkpoint = Some(now_ms());
                g.status.state_bytes = state_bytes;
            }
            Telemetry::MissingOffsetsPolicy(policy) => {
                g.status.missing_offsets.policy = policy.to_string();
            }
            Telemetry::OffsetMissing(m) => {
                let went_on = match m.resumed_at {
                    Some(o) => format!("going on from offset {o}"),
                    None => "stopping".to_string(),
                };
                tracing::warn!(
                    pipeline = name,
                    topic = %m.topic,
                    partition = m.partition,
                    offset = m.offset,
                    log_start = m.log_start,
                    log_end = m.log_end,
                    policy = %g.status.missing_offsets.policy,
                    "the offset to resume from is no longer in the log; {went_on}"
                );
                let s = &mut g.status.missing_offsets;
                s.total += 1;
                s.last.push(m);
                if s.last.len() > 20 {
                    s.last.remove(0);
                }
            }
            Telemetry::Restored { partitions, took } => {
                let mut read = false;
                for &(partition, records, bytes) in partitions.iter().filter(|p| p.1 > 0) {
                    tracing::info!(
                        pipeline = name,
                        partition,
                        records,
                        bytes,
                        seconds = took.as_secs_f64(),
                        "restored from the changelog"
                    );
                    let r = &mut g.status.restore;
                    r.partitions += 1;
                    r.records += records;
                    r.bytes += bytes;
                    read = true;
                }
                if read {
                    let r = &mut g.status.restore;
                    r.seconds_sum += took.as_secs_f64();
                    r.seconds_last = took.as_secs_f64();
                } else {
                    tracing::debug!(pipeline = name, ?partitions, "changelog checked: current");
                }
            }
            Telemetry::KeysExpired(n) => g.status.table_keys_expired += n,
            Telemetry::Progress {
                counters,
                watermark,
                positions,
                event_times,
                max_out_of_orderness_ms,
            } => {
                g.status.counters = counters.clone();
                g.status.watermark = (watermark > i64::MIN).then_some(watermark);
                for (t, p, o) in positions {
                    g.parts.entry((t.clone(), *p)).or_default().0 = Some(*o);
                }
                for (p, ts) in event_times {
                    if *ts > i64::MIN {
                        g.event_times.insert(*p, *ts);
                    }
                }
                g.ooo = max_out_of_orderness_ms;
                let now = std::time::Instant::now();
                let n = counters.events_in;
                g.rate_samples.push((now, n));
                let horizon = Duration::from_secs(5);
                while g.rate_samples.len() > 2 && now - g.rate_samples[0].0 > horizon {
                    g.rate_samples.remove(0);
                }
                if let (Some(a), Some(b)) = (g.rate_samples.first(), g.rate_samples.last()) {
                    let dt = (b.0 - a.0).as_secs_f64();
                    if dt > 0.2 {
                        g.status.events_per_second = (b.1.saturating_sub(a.1)) as f64 / dt;
                    }
                }
            }
            Telemetry::LogEnd {
                topic,
                partition,
                offset,
            } => {
                if offset >= 0 {
                    g.parts.entry((topic.to_string(), partition)).or_default().1 = Some(offset);
                }
            }
        }
    }

    /// The status with per-partition rows (positions, log ends, lag, watermarks).
    pub fn snapshot(&self) -> LiveStatus {
        let g = self.lock();
        let mut s = g.status.clone();
        s.partitions = g
            .parts
            .iter()
            .map(|((t, p), (pos, end))| {
                let last = g.event_times.get(&(*p as u32)).copied();
                PartitionStatus {
                    topic: t.clone(),
                    partition: *p,
                    committed: None,
                    state_offset: *pos,
                    log_end: *end,
                    lag: end.map(|e| (e - pos.unwrap_or(0)).max(0)),
                    watermark: last.map(|t| t.saturating_sub(g.ooo)),
                    last_event_time: last,
                    member: g
                        .owned
                        .contains(&(t.clone(), *p))
                        .then(|| g.status.member_id.clone().unwrap_or_else(|| "-".into())),
                }
            })
            .collect();
        drop(g);
        let down = self
            .downstream
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(d) = down {
            let d = d.snapshot();
            s.counters.results_out += d.counters.results_out;
            s.counters.dead_late += d.counters.dead_late;
            s.table_keys_expired += d.table_keys_expired;
            s.downstream = Some(Box::new(d));
        }
        s
    }

    /// Sets the state offsets read from a checkpoint (a paused pipeline at server start).
    pub fn seed(&self, positions: &[(String, i32, i64)], counters: &Counters, watermark: i64) {
        let mut g = self.lock();
        for (t, p, o) in positions {
            g.parts.entry((t.clone(), *p)).or_default().0 = Some(*o);
        }
        g.status.counters = counters.clone();
        g.status.watermark = (watermark > i64::MIN).then_some(watermark);
    }

    /// Forgets positions (after a replay rewrote them, or a purge).
    pub fn reset_positions(&self) {
        let mut g = self.lock();
        for v in g.parts.values_mut() {
            v.0 = None;
        }
        g.event_times.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A re-keying pipeline's status: the upstream stage's, with the downstream stage inside
    /// it and the downstream's results and late events in its counters.
    #[test]
    fn a_downstream_stage_shows_inside_its_pipeline() {
        let live = Live::new("p");
        let up = Counters {
            events_in: 10,
            dead_decode: 1,
            ..Default::default()
        };
        let down = Counters {
            events_in: 9,
            results_out: 4,
            dead_late: 2,
            ..Default::default()
        };
        let progress = |l: &Live, c: &Counters, wm: i64| {
            l.record(Telemetry::Progress {
                counters: c,
                watermark: wm,
                positions: &[],
                event_times: &[],
                max_out_of_orderness_ms: 0,
            })
        };
        progress(&live, &up, 50);
        assert!(live.snapshot().downstream.is_none());
        progress(&live.downstream(), &down, 40);
        let s = live.snapshot();
        assert_eq!(s.counters.events_in, 10);
        assert_eq!(s.counters.results_out, 4);
        assert_eq!(s.counters.dead_late, 2);
        assert_eq!(s.counters.dead_decode, 1);
        let d = s.downstream.expect("downstream");
        assert_eq!(d.watermark, Some(40));
        assert_eq!(d.counters.events_in, 9);
        // The same child every time.
        assert!(Arc::ptr_eq(&live.downstream(), &live.downstream()));
    }
}
