//! The parts of a replay that touch the pipeline's internal topics: rewinding a pipeline
//! whose state is also in its changelog, and deleting those topics on a reset or a purge.

use super::{client, ReplayPlan, TIMEOUT};
use crate::pipeline::plan::Plan;
use crate::runtime::driver::Changelog;
use crate::runtime::kafka::changelog as kchangelog;
use crate::runtime::RunError;
use crate::sink::kafka::delete_topic;
use crate::state::changelog::{
    self, partition_meta_key, replay_guard_key, Change, PartitionMeta, StateChanges, Tee,
};
use crate::state::checkpoint::{self, ReplayGuard};
use crate::state::windows::discard_sessions;
use crate::state::{window_id_of, window_prefix, WindowId};
use rdkafka::consumer::Consumer;
use rocksdb::WriteBatch;
use std::path::Path;

/// The topics Weir made for a pipeline's state: its changelog and, when it re-keys, the
/// repartition topic and the downstream stage's changelog.
pub fn internal_topics(plan: &Plan) -> Vec<String> {
    let mut out = Vec::new();
    if plan.state.changelog {
        out.push(kchangelog::topic(&plan.source.group));
    }
    if let Some(r) = &plan.repartition {
        out.push(r.topic.clone());
        if plan.state.changelog {
            out.push(kchangelog::topic(&r.group));
        }
    }
    out
}

/// Deletes a purged pipeline's internal topics ([`internal_topics`]): nothing of its state
/// may come back from them when it is deployed again (Kafka Streams' reset tool does the
/// same).
pub fn delete_internal_topics(
    plan: &Plan,
    brokers: &str,
    extra: &[(String, String)],
) -> Result<(), RunError> {
    for t in internal_topics(plan) {
        delete_topic(brokers, &t, extra)?;
    }
    Ok(())
}

/// A replay of a pipeline with a changelog (`state.changelog`). Its state is in the
/// changelog as much as in this state directory (other instances may hold some of its
/// partitions), so the rewind works on the whole state and is written to both, as a
/// checkpoint's changes are:
/// 1. every changelog partition is applied to the local store (incrementally), so the store
///    holds every partition's entries and partition record;
/// 2. per partition: its windows and sessions starting in `[floor, ceil)` are discarded
///    (closed-window records and tombstones), its partition record gets the new offsets and
///    its largest event time capped so that those windows are open again, and a rewound
///    partition gets its replay guard (`g|p`): whichever instance reprocesses it counts the
///    records it had counted only in the discarded windows;
/// 3. the changes go to the changelog in one transaction, then the local batch (changes,
///    changelog positions, the local checkpoint rewound the same way) is written.
///
/// A crash between 3's two writes leaves the store behind the changelog, which the next
/// restore reads, as after a checkpoint.
#[allow(clippy::too_many_arguments)]
pub(super) fn rewind_logged(
    plan: &Plan,
    state_dir: &Path,
    rewound: &[(String, i32, i64, Option<i64>)],
    floor: i64,
    ceil: i64,
    brokers: &str,
    extra: &[(String, String)],
    report: &mut ReplayPlan,
) -> Result<(), RunError> {
    let group = &plan.source.group;
    let opened = checkpoint::open(plan, state_dir, false)?;
    let mut store = opened.store;
    let mut positions = changelog::positions(&store)?;
    let meta_client = client(brokers, &format!("{group}-replay"), extra)?;
    let n = match meta_client.fetch_metadata(Some(&kchangelog::topic(group)), TIMEOUT) {
        Ok(md) => md
            .topics()
            .iter()
            .filter(|t| t.error().is_none())
            .map(|t| t.partitions().len() as u32)
            .max()
            .unwrap_or(0),
        Err(_) => 0,
    };
    let parts: Vec<u32> = (0..n).collect();
    let read = kchangelog::read(&mut store, &positions, group, brokers, extra, &parts)?;
    for p in read.reset {
        positions.remove(&p);
    }
    for (p, (_, next)) in &read.reached {
        positions.insert(*p, *next);
    }

    // 2. The rewind, into the local batch and the changelog's records at once.
    let mut batch = WriteBatch::default();
    let mut changes: Vec<Change> = Vec::new();
    let mut gone: std::collections::BTreeSet<WindowId> = std::collections::BTreeSet::new();
    for item in store.iter_prefix(b"w") {
        let (k, _) = item?;
        if let Some(id) = window_id_of(&k) {
            if id.start >= floor && id.start < ceil {
                gone.insert(id);
            }
        }
    }
    let (sessions, emptied) = {
        let mut tee = Tee(&mut batch, &mut changes);
        for id in &gone {
            tee.delete_window(&window_prefix(id));
        }
        discard_sessions(&store, &mut tee, floor, ceil)?
    };
    report.sessions_discarded = sessions;
    let ooo = plan.source.max_out_of_orderness_ms;
    let cap = floor.saturating_sub(1).saturating_add(ooo);
    let target = |t: &str, p: i32| rewound.iter().find(|r| r.0 == t && r.1 == p).map(|r| r.2);
    let mut metas: Vec<(u32, PartitionMeta)> = Vec::new();
    for &p in &parts {
        if let Some(b) = store.get(&partition_meta_key(p))? {
            metas.push((p, PartitionMeta::decode(&b)?));
        }
    }
    let old_watermark = metas
        .iter()
        .map(|(_, m)| m.max_event_time.saturating_sub(ooo))
        .min()
        .unwrap_or(i64::MIN);
    let mut windows_gone = gone.len();
    // The offsets each rewound partition had reached, by its partition record.
    let mut reached_by_record: std::collections::BTreeMap<(String, u32), i64> =
        std::collections::BTreeMap::new();
    for (p, mut m) in metas {
        let mut guard = ReplayGuard {
            floor,
            ceil,
            old_watermark,
            until: Vec::new(),
        };
        for (t, o) in m.offsets.iter_mut() {
            if let Some(new) = target(t, p as i32) {
                if new < *o {
                    guard.until.push((t.clone(), p, *o));
                    reached_by_record.insert((t.clone(), p), *o);
                    *o = new;
                }
            }
        }
        m.max_event_time = m.max_event_time.min(cap);
        m.pending.retain(|(id, _)| !gone.contains(id));
        m.pending_sessions.retain(|k| {
            !emptied
                .iter()
                .any(|e| e.get(1..5) == Some(&p.to_be_bytes()[..]) && e.get(5..) == Some(&k[..]))
        });
        let mut tee = Tee(&mut batch, &mut changes);
        if !guard.until.is_empty() {
            let bytes = bincode::serialize(&guard)
                .map_err(|e| crate::state::StateError::Corrupt(e.to_string()))?;
            tee.put(&replay_guard_key(p), &bytes);
        }
        let c = m.change(p)?;
        if let Some(v) = &c.value {
            tee.put(&c.key, v);
        }
    }
    // The local checkpoint, rewound the same way (its partitions resume from it).
    if let Some(mut meta) = opened.checkpoint {
        let local_gone = meta.windows.discard(floor, ceil);
        windows_gone = windows_gone.max(local_gone.len());
        let mut guard = ReplayGuard {
            floor,
            ceil,
            old_watermark: old_watermark.min(meta.watermarks.current()),
            until: Vec::new(),
        };
        for (t, p, new, cur) in rewound {
            // The partition record is at least as new as the local checkpoint (a restore
            // may have adopted a newer one since).
            let cur = reached_by_record
                .get(&(t.clone(), *p as u32))
                .copied()
                .or(*cur);
            if let Some(cur) = cur {
                guard.until.push((t.clone(), *p as u32, cur));
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
    }
    report.windows_discarded = windows_gone;

    // 3. The changelog first, then the local store.
    let mut log = kchangelog::KafkaChangelog::open(
        plan,
        brokers,
        &format!("weir-{group}-changelog-replay"),
        extra,
    )?;
    let reached = log.write(changes)?;
    positions.extend(reached);
    changelog::put_positions(&mut batch, &positions)?;
    store.write(batch)?;
    tracing::info!(pipeline = %plan.name, floor, windows = report.windows_discarded,
        sessions = report.sessions_discarded, "replay: state rewound, in the changelog too");
    Ok(())
}
