//! Replay: rewind a (stopped) pipeline so that its state is rebuilt from the log.
//!
//! `weir replay <pipeline> --from T`:
//! 1. the new start offset of each partition is the first record at or after
//!    `T − max_out_of_orderness` (ListOffsets by time), so every event of a window that
//!    starts at or after `T` is read again;
//! 2. the open windows starting at or after `T` (and before `--to`) are discarded from the
//!    state, and the watermark is rewound to just before `T`, so they are open again;
//! 3. the state's offsets and the group's committed offsets are set to the new start.
//!
//! While the pipeline reprocesses records it had already counted (below its positions at
//! the rewind), a [`ReplayGuard`] lets such a record count only in the windows the replay
//! discarded; windows starting before `T` keep their state and stay closed as they were.
//! The rebuilt windows emit the same (key, window) results, which the idempotent sinks
//! absorb: the PostgreSQL upsert rewrites its rows, the Kafka sink's records carry the same
//! `weir-event-id`. Records that were dead-lettered are not dead-lettered again.
//!
//! `--from earliest` discards the whole state and rewinds the group to the log start (Kafka
//! Streams' application reset). `--from partition:offset,...` rewinds those partitions; `T`
//! is then the smallest record timestamp at those offsets.

use super::RunError;
use crate::kafka_client::{self, Role};
use crate::pipeline::plan::Plan;
use crate::state::checkpoint::{self, Checkpoint, ReplayGuard};
use crate::state::windows::discard_sessions;
use crate::state::{window_prefix, Store};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rocksdb::WriteBatch;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::{Duration, Instant};

mod logged;

pub use logged::delete_internal_topics;
use logged::rewind_logged;

/// Where a replay starts.
#[derive(Debug, Clone, PartialEq)]
pub enum ReplayFrom {
    Earliest,
    /// Event time, ms since the epoch.
    Time(i64),
    /// partition -> offset (every source topic).
    Offsets(Vec<(i32, i64)>),
}

pub fn parse_time(s: &str) -> Result<i64, String> {
    crate::schema::json::parse_rfc3339_millis(s.trim())
        .ok_or_else(|| format!("`{s}` is not an RFC 3339 time; write it like 2026-11-22T08:00:00Z"))
}

impl ReplayFrom {
    pub fn parse(s: &str) -> Result<ReplayFrom, String> {
        let s = s.trim();
        if s == "earliest" {
            return Ok(ReplayFrom::Earliest);
        }
        if s.contains(':') && !s.contains('T') && !s.contains('-') {
            let mut out = Vec::new();
            for part in s.split(',') {
                let (p, o) = part
                    .split_once(':')
                    .ok_or("x")
                    .map_err(|_| format!("`{part}` is not partition:offset"))?;
                let p: i32 = p
                    .trim()
                    .parse()
                    .map_err(|_| format!("`{p}` is not a partition number"))?;
                let o: i64 = o
                    .trim()
                    .parse()
                    .map_err(|_| format!("`{o}` is not an offset"))?;
                if p < 0 || o < 0 {
                    return Err(format!("`{part}`: partitions and offsets are not negative"));
                }
                out.push((p, o));
            }
            return Ok(ReplayFrom::Offsets(out));
        }
        parse_time(s).map(ReplayFrom::Time).map_err(|_| {
            format!("--from `{s}`: expected an RFC 3339 time (2026-11-22T08:00:00Z), `earliest`, or partition:offset,... (0:120,1:98)")
        })
    }
}

/// What a replay did (or, with `dry_run`, would do).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplayPlan {
    pub pipeline: String,
    pub dry_run: bool,
    /// Windows starting at or after this time (ms) are rebuilt; none for `earliest`.
    pub rebuild_from: Option<i64>,
    pub rebuild_to: Option<i64>,
    /// The whole state is discarded (`earliest`).
    pub state_reset: bool,
    pub partitions: Vec<ReplayPartition>,
    pub windows_discarded: usize,
    pub sessions_discarded: usize,
    /// The group's committed offsets were moved too (they only show lag; the state's
    /// offsets decide where the pipeline resumes).
    pub group_offsets_moved: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplayPartition {
    pub topic: String,
    pub partition: i32,
    /// The offset the state had reached.
    pub state_offset: Option<i64>,
    /// Where the pipeline resumes.
    pub new_offset: i64,
}

fn client(
    brokers: &str,
    group: &str,
    extra: &[(String, String)],
) -> Result<BaseConsumer, RunError> {
    kafka_client::config(brokers, Role::Tool { group }, extra)
        .create()
        .map_err(RunError::kafka("cannot create a Kafka client"))
}

const TIMEOUT: Duration = Duration::from_secs(10);

fn all_partitions(c: &BaseConsumer, topics: &[String]) -> Result<Vec<(String, i32)>, RunError> {
    let mut out = Vec::new();
    for t in topics {
        let md = c
            .fetch_metadata(Some(t), TIMEOUT)
            .map_err(RunError::kafka(format!("metadata of `{t}`")))?;
        for mt in md.topics() {
            for p in mt.partitions() {
                out.push((t.clone(), p.id()));
            }
        }
    }
    Ok(out)
}

/// The new start offset per partition (`None`: that partition is not rewound).
fn targets(
    c: &BaseConsumer,
    topics: &[String],
    from: &ReplayFrom,
    lookback_ms: i64,
) -> Result<Vec<(String, i32, Option<i64>)>, RunError> {
    let parts = all_partitions(c, topics)?;
    let mut out = Vec::new();
    match from {
        ReplayFrom::Earliest => {
            for (t, p) in parts {
                let (lo, _) = c
                    .fetch_watermarks(&t, p, TIMEOUT)
                    .map_err(RunError::kafka(format!("offsets of {t}-{p}")))?;
                out.push((t, p, Some(lo)));
            }
        }
        ReplayFrom::Time(ts) => {
            let mut tpl = TopicPartitionList::new();
            for (t, p) in &parts {
                tpl.add_partition_offset(t, *p, Offset::Offset(ts.saturating_sub(lookback_ms)))
                    .map_err(RunError::kafka("offsets for time"))?;
            }
            let found = c
                .offsets_for_times(tpl, TIMEOUT)
                .map_err(RunError::kafka("offsets for time"))?;
            for e in found.elements() {
                let o = match e.offset() {
                    Offset::Offset(o) if o >= 0 => o,
                    // No record at or after the time: the log end.
                    _ => {
                        c.fetch_watermarks(e.topic(), e.partition(), TIMEOUT)
                            .map_err(RunError::kafka(format!(
                                "log end of {}-{}",
                                e.topic(),
                                e.partition()
                            )))?
                            .1
                    }
                };
                out.push((e.topic().to_string(), e.partition(), Some(o)));
            }
        }
        ReplayFrom::Offsets(list) => {
            for (t, p) in parts {
                let o = list.iter().find(|(lp, _)| *lp == p).map(|(_, o)| *o);
                out.push((t, p, o));
            }
            for (lp, _) in list {
                if !out.iter().any(|(_, p, _)| p == lp) {
                    return Err(RunError::Usage(format!(
                        "partition {lp} does not exist in {topics:?}"
                    )));
                }
            }
        }
    }
    Ok(out)
}

/// The timestamp of the record at `offset` (bounded wait).
fn timestamp_at(
    brokers: &str,
    topic: &str,
    partition: i32,
    offset: i64,
    extra: &[(String, String)],
) -> Result<Option<i64>, RunError> {
    let c = client(brokers, "weir-replay-probe", extra)?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(offset))
        .map_err(RunError::kafka(format!("assign {topic}-{partition}")))?;
    c.assign(&tpl)
        .map_err(RunError::kafka(format!("assign {topic}-{partition}")))?;
    let until = Instant::now() + TIMEOUT;
    while Instant::now() < until {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            return Ok(m.timestamp().to_millis());
        }
    }
    Ok(None)
}

/// Commits `offsets` for the group as a non-member. A broker refuses that while the group
/// still has members, e.g. a paused pipeline's static member until its session times out:
/// retried for up to 15 s.
fn commit(c: &BaseConsumer, offsets: &[(String, i32, i64)]) -> Result<(), RunError> {
    if offsets.is_empty() {
        return Ok(());
    }
    let mut tpl = TopicPartitionList::new();
    for (t, p, o) in offsets {
        tpl.add_partition_offset(t, *p, Offset::Offset(*o))
            .map_err(RunError::kafka("cannot reset the group's offsets"))?;
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match c.commit(&tpl, CommitMode::Sync) {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "group offsets not reset yet; retrying");
                std::thread::sleep(Duration::from_secs(1));
            }
            Err(e) => {
                return Err(RunError::kafka(
                    "cannot reset the group's offsets (is another consumer still in the group?)",
                )(e))
            }
        }
    }
}

/// The group's offsets only show lag (the state's offsets decide where a pipeline
/// resumes), so a replay goes on when they cannot be moved.
fn commit_for_display(c: &BaseConsumer, offsets: &[(String, i32, i64)]) -> bool {
    match commit(c, offsets) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "the group's committed offsets were not moved; the pipeline's first checkpoint will");
            false
        }
    }
}

/// A new state that starts at `offsets` (and holds nothing else).
fn start_state(
    plan: &Plan,
    state_dir: &Path,
    offsets: &[(String, i32, i64)],
) -> Result<(), RunError> {
    let mut store = checkpoint::open(plan, state_dir, false)?.store;
    let mut batch = WriteBatch::default();
    checkpoint::put(&mut batch, &Checkpoint::start(plan, offsets.to_vec()), None)?;
    store.write(batch)?;
    Ok(())
}

/// Rewinds `group` on `topics` (no state involved); returns the new offsets.
pub fn rewind_group(
    brokers: &str,
    group: &str,
    topics: &[String],
    from: &ReplayFrom,
    extra: &[(String, String)],
) -> Result<Vec<(String, i32, i64)>, String> {
    let c = client(brokers, group, extra).map_err(|e| e.to_string())?;
    let t: Vec<(String, i32, i64)> = targets(&c, topics, from, 0)
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter_map(|(t, p, o)| o.map(|o| (t, p, o)))
        .collect();
    commit(&c, &t).map_err(|e| e.to_string())?;
    Ok(t)
}

/// Plans (and unless `dry_run`, applies) a replay of a stopped pipeline.
pub fn plan_replay(
    plan: &Plan,
    state_dir: &Path,
    from: &ReplayFrom,
    to: Option<i64>,
    brokers: &str,
    extra: &[(String, String)],
    dry_run: bool,
) -> Result<ReplayPlan, RunError> {
    if let (Some(r), false) = (&plan.repartition, *from == ReplayFrom::Earliest) {
        return Err(RunError::Usage(format!(
            "`{}` re-keys through `{}`, and a replay does not rewind a re-keying pipeline yet \
             (its two stages keep their state apart); replay it from `earliest`, or \
             undeploy it with --purge and deploy it again",
            plan.name, r.topic
        )));
    }
    let c = client(brokers, &plan.source.group, extra)?;
    let ooo = plan.source.max_out_of_orderness_ms;
    let wanted = targets(&c, &plan.source.topics, from, ooo)?;
    let mut report = ReplayPlan {
        pipeline: plan.name.clone(),
        dry_run,
        rebuild_from: None,
        rebuild_to: to,
        state_reset: false,
        partitions: Vec::new(),
        windows_discarded: 0,
        sessions_discarded: 0,
        group_offsets_moved: false,
    };
    let (store, cp) = if state_dir.join("CURRENT").exists() {
        let opened = checkpoint::open(plan, state_dir, dry_run)?;
        (Some(opened.store), opened.checkpoint)
    } else {
        (None, None)
    };
    let state_offset = |t: &str, p: i32| {
        cp.as_ref().and_then(|c| {
            c.offsets
                .iter()
                .find(|(ct, cp, _)| ct == t && *cp == p)
                .map(|x| x.2)
        })
    };
    if *from == ReplayFrom::Earliest {
        report.state_reset = true;
        for (t, p, o) in &wanted {
            report.partitions.push(ReplayPartition {
                topic: t.clone(),
                partition: *p,
                state_offset: state_offset(t, *p),
                new_offset: o.unwrap_or(0),
            });
        }
        if !dry_run {
            drop(store);
            // The state lives in the changelog too (and, re-keying, in the repartition
            // topic): Kafka Streams' reset deletes its internal topics, and so does this.
            // Another instance's store that is ahead of a new changelog discards its
            // entries of that partition on restore.
            delete_internal_topics(plan, brokers, extra)?;
            if state_dir.exists() {
                std::fs::remove_dir_all(state_dir).map_err(|e| RunError::Io {
                    op: format!("remove {}", state_dir.display()),
                    source: e,
                })?;
            }
            let offsets: Vec<(String, i32, i64)> = report
                .partitions
                .iter()
                .map(|p| (p.topic.clone(), p.partition, p.new_offset))
                .collect();
            if plan.repartition.is_some() {
                // Its upstream stage reads the source topics.
                start_state(plan, &state_dir.join("upstream"), &offsets)?;
            } else {
                start_state(plan, state_dir, &offsets)?;
            }
            report.group_offsets_moved = commit_for_display(&c, &offsets);
        }
        return Ok(report);
    }
    let floor = match from {
        ReplayFrom::Time(t) => *t,
        ReplayFrom::Offsets(list) => {
            let mut min: Option<i64> = None;
            for (t, p, o) in &wanted {
                if let (Some(o), true) = (o, list.iter().any(|(lp, _)| lp == p)) {
                    if let Some(ts) = timestamp_at(brokers, t, *p, *o, extra)? {
                        min = Some(min.map_or(ts, |m| m.min(ts)));
                    }
                }
            }
            min.ok_or_else(|| {
                RunError::Usage("no record at the given offsets to take a start time from".into())
            })?
        }
        ReplayFrom::Earliest => i64::MIN,
    };
    let ceil = to.unwrap_or(i64::MAX);
    report.rebuild_from = Some(floor);
    // A partition is rewound only backwards: moving forward would skip records.
    let mut rewound: Vec<(String, i32, i64, Option<i64>)> = Vec::new();
    for (t, p, o) in &wanted {
        let Some(o) = o else { continue };
        let cur = state_offset(t, *p);
        let new = match cur {
            Some(c) if *o >= c => c,
            _ => *o,
        };
        report.partitions.push(ReplayPartition {
            topic: t.clone(),
            partition: *p,
            state_offset: cur,
            new_offset: new,
        });
        if cur.is_none_or(|c| new < c) {
            rewound.push((t.clone(), *p, new, cur));
        }
    }
    if plan.state.changelog && !dry_run {
        drop(store);
        rewind_logged(
            plan,
            state_dir,
            &rewound,
            floor,
            ceil,
            brokers,
            extra,
            &mut report,
        )?;
        let offsets: Vec<(String, i32, i64)> = report
            .partitions
            .iter()
            .filter(|p| p.state_offset.is_none_or(|s| p.new_offset < s))
            .map(|p| (p.topic.clone(), p.partition, p.new_offset))
            .collect();
        report.group_offsets_moved = commit_for_display(&c, &offsets);
        return Ok(report);
    }
    let (Some(mut store), Some(mut cp)) = (store, cp) else {
        // No state yet: a new one starts at the offsets.
        if !dry_run {
            let offsets: Vec<(String, i32, i64)> =
                rewound.iter().map(|r| (r.0.clone(), r.1, r.2)).collect();
            start_state(plan, state_dir, &offsets)?;
            report.group_offsets_moved = commit_for_display(&c, &offsets);
        }
        return Ok(report);
    };
    let mut batch = WriteBatch::default();
    let mut meta: Checkpoint = cp.clone();
    let gone = meta.windows.discard(floor, ceil);
    report.windows_discarded = gone.len();
    for id in &gone {
        Store::delete_prefix(&mut batch, &window_prefix(id));
    }
    report.sessions_discarded = discard_sessions(&store, &mut batch, floor, ceil)?.0;
    if dry_run {
        return Ok(report);
    }
    let old_watermark = meta.watermarks.current();
    let mut guard = ReplayGuard {
        floor,
        ceil,
        old_watermark,
        until: Vec::new(),
    };
    for (t, p, new, cur) in &rewound {
        if let Some(cur) = cur {
            guard.until.push((t.clone(), *p as u32, *cur));
        }
        match meta
            .offsets
            .iter_mut()
            .find(|(mt, mp, _)| mt == t && mp == p)
        {
            Some(e) => e.2 = *new,
            None => meta.offsets.push((t.clone(), *p, *new)),
        }
    }
    meta.watermarks.rewind(floor.saturating_sub(1));
    checkpoint::put(&mut batch, &meta, Some(&guard))?;
    store.write(batch)?;
    cp = meta;
    drop(store);
    let offsets: Vec<(String, i32, i64)> =
        rewound.iter().map(|r| (r.0.clone(), r.1, r.2)).collect();
    report.group_offsets_moved = commit_for_display(&c, &offsets);
    tracing::info!(pipeline = %plan.name, floor, windows = report.windows_discarded,
        partitions = offsets.len(), watermark = cp.watermarks.current(), "replay: state rewound");
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_starts() {
        assert_eq!(ReplayFrom::parse("earliest"), Ok(ReplayFrom::Earliest));
        assert_eq!(
            ReplayFrom::parse("0:120,3:7"),
            Ok(ReplayFrom::Offsets(vec![(0, 120), (3, 7)]))
        );
        assert_eq!(
            ReplayFrom::parse("2026-11-22T08:00:00Z"),
            Ok(ReplayFrom::Time(1_795_334_400_000))
        );
        assert!(ReplayFrom::parse("yesterday").is_err());
        assert!(ReplayFrom::parse("0:-1").is_err());
    }
}
