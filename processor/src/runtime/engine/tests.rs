//! The engine's property tests: sessions against a sort-and-sweep, checkpoints restored
//! anywhere, and the changelog rebuilding the state.

use super::*;
use crate::pipeline::load_str;
use crate::schema::SchemaResolver;
use proptest::prelude::*;
use std::collections::BTreeMap;

fn plan(gap_ms: i64, ooo_ms: i64) -> Plan {
    let yaml = format!(
        "apiVersion: weir/v1
name: prop-sessions
source:
  topics: [events]
  format: json
  schema: input.avsc
  event_time: {{field: ts}}
  watermark: {{max_out_of_orderness: {ooo_ms}ms}}
steps:
  - key_by: [user]
  - window: {{type: session, gap: {gap_ms}ms}}
  - aggregate:
      outputs:
        events: {{fn: count}}
        total: {{fn: sum, field: n}}
output:
  schema: output.avsc
"
    );
    load(&yaml)
}

/// A definition over the `session_merge` golden case's schemas.
fn load(yaml: &str) -> Plan {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/golden/session_merge");
    let loaded = load_str(yaml, "prop.yaml", &SchemaResolver::in_dir(&dir));
    assert!(loaded.problems.is_empty(), "{:?}", loaded.problems);
    loaded.plan.expect("plan")
}

/// A new engine restored from `engine`'s checkpoint over `store`, through a bincode round
/// trip of everything the checkpoint record holds (as a restart does).
fn restarted<'p>(plan: &'p Plan, engine: &Engine<'_>, store: &Store) -> Engine<'p> {
    let bytes = bincode::serialize(&(
        engine.windows.meta(),
        &engine.watermarks,
        &engine.counters,
        engine.clock,
    ))
    .expect("serialize");
    let (meta, w, c, clock): (crate::state::windows::WindowMeta, Watermarks, Counters, i64) =
        bincode::deserialize(&bytes).expect("deserialize");
    let mut next = Engine::new(plan, None);
    next.restore(w, c, clock);
    next.windows.restore(meta, store).expect("restore");
    next
}

fn record(i: usize, user: u8, n: i64, ts: i64) -> SourceRecord {
    SourceRecord {
        topic: "events".into(),
        partition: 0,
        offset: i as i64,
        timestamp: None,
        key: None,
        value: Payload::Json(
            format!("{{\"user\":\"u{user}\",\"n\":{n},\"ts\":{ts}}}").into_bytes(),
        ),
        line: i as u64 + 1,
    }
}

/// (user, start, end, events, total) of every emitted session, in emission order.
type Rows = Vec<(String, i64, i64, i64, i64)>;

fn row(e: Emitted) -> (String, i64, i64, i64, i64) {
    let user = match &e.key[0] {
        Scalar::Str(s) => s.to_string(),
        other => format!("{other:?}"),
    };
    let int = |s: &Scalar| match s {
        Scalar::Int(i) => *i,
        _ => -1,
    };
    (user, e.start, e.end, int(&e.results[0]), int(&e.results[1]))
}

/// Runs `events` through a fresh engine; with `split`, checkpoints after that many
/// records and continues in a new engine restored from the checkpoint (as a restart
/// does), through a bincode round trip of everything the checkpoint record holds.
fn run(plan: &Plan, events: &[(u8, i64, i64)], split: Option<usize>) -> (Rows, u64) {
    let dir = tempfile::tempdir().expect("tmp");
    let mut store = Store::open(dir.path(), &plan.state).expect("store");
    let mut rows = Rows::new();
    let mut engine = Engine::new(plan, None);
    for (i, &(user, n, ts)) in events.iter().enumerate() {
        if split == Some(i) {
            let mut batch = rocksdb::WriteBatch::default();
            engine
                .windows
                .checkpoint_into(&mut batch)
                .expect("checkpoint");
            store.write(batch).expect("write");
            engine = restarted(plan, &engine, &store);
        }
        let mut dead = Vec::new();
        engine
            .process(
                &store,
                &record(i, user, n, ts),
                &mut |e| rows.push(row(e)),
                &mut dead,
            )
            .expect("process");
    }
    engine
        .finish(&store, &mut |e| rows.push(row(e)))
        .expect("finish");
    (rows, engine.counters.dead_late)
}

fn tumbling_plan(size_ms: i64, grace_ms: i64, ooo_ms: i64) -> Plan {
    let yaml = format!(
        "apiVersion: weir/v1
name: prop-tumbling
source:
  topics: [events]
  format: json
  schema: input.avsc
  event_time: {{field: ts}}
  watermark: {{max_out_of_orderness: {ooo_ms}ms}}
steps:
  - key_by: [user]
  - window: {{type: tumbling, size: {size_ms}ms, grace: {grace_ms}ms}}
  - aggregate:
      outputs:
        events: {{fn: count}}
        total: {{fn: sum, field: n}}
output:
  schema: output.avsc
"
    );
    load(&yaml)
}

/// Every `w|` and `s|` entry of a store.
fn entries(store: &Store) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut all = Vec::new();
    for prefix in [b"w".as_slice(), b"s".as_slice()] {
        for kv in store.scan(prefix).expect("scan") {
            all.push((kv.0.to_vec(), kv.1.to_vec()));
        }
    }
    all
}

/// Runs `events` checkpointing every `every` records into the store and, through the
/// changelog's records, into a second store that only ever sees those records (as a
/// store restored on another machine would). After each checkpoint the two hold the
/// same entries. At `move_at` the run moves: a new engine restores from the rebuilt
/// store and goes on. Returns the results.
fn run_logged(plan: &Plan, events: &[(u8, i64, i64)], every: usize, move_at: usize) -> Rows {
    use crate::state::changelog::{apply, Change, Tee};
    let (local_dir, moved_dir) = (
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    );
    let mut local = Store::open(local_dir.path(), &plan.state).expect("store");
    let mut rebuilt = Store::open(moved_dir.path(), &plan.state).expect("store");
    let mut on_rebuilt = false;
    let mut rows = Rows::new();
    let mut engine = Engine::new(plan, None);
    let checkpoint =
        |engine: &mut Engine, local: &mut Store, rebuilt: &mut Store, on_rebuilt: bool| {
            let mut batch = rocksdb::WriteBatch::default();
            let mut log: Vec<Change> = Vec::new();
            engine
                .windows
                .checkpoint_into(&mut Tee(&mut batch, &mut log))
                .expect("checkpoint");
            let mut replayed = rocksdb::WriteBatch::default();
            for c in &log {
                assert_eq!(c.partition, 0, "the one source partition");
                apply(&mut replayed, &c.key, c.value.as_deref());
            }
            rebuilt.write(replayed).expect("write");
            if !on_rebuilt {
                local.write(batch).expect("write");
                assert_eq!(
                    entries(local),
                    entries(rebuilt),
                    "the changelog rebuilds the store"
                );
            }
            engine.windows.after_checkpoint();
        };
    for (i, &(user, n, ts)) in events.iter().enumerate() {
        if i > 0 && i % every == 0 {
            checkpoint(&mut engine, &mut local, &mut rebuilt, on_rebuilt);
            if i >= move_at && !on_rebuilt {
                engine = restarted(plan, &engine, &rebuilt);
                on_rebuilt = true;
            }
        }
        let store = if on_rebuilt { &rebuilt } else { &local };
        let mut dead = Vec::new();
        engine
            .process(
                store,
                &record(i, user, n, ts),
                &mut |e| rows.push(row(e)),
                &mut dead,
            )
            .expect("process");
    }
    let store = if on_rebuilt { &rebuilt } else { &local };
    engine
        .finish(store, &mut |e| rows.push(row(e)))
        .expect("finish");
    rows
}

/// Runs records (partition, user, n, ts) through one engine per instance (`instance_of`
/// picks each partition's), every partition registered first as an assigned Kafka partition
/// is; returns each partition's results in emission order, and the late count.
fn run_partitioned(
    plan: &Plan,
    events: &[(u32, u8, i64, i64)],
    instances: usize,
    instance_of: &dyn Fn(u32) -> usize,
) -> (BTreeMap<u32, Rows>, u64) {
    let dir = tempfile::tempdir().expect("tmp");
    let mut out: BTreeMap<u32, Rows> = BTreeMap::new();
    let mut late = 0;
    for i in 0..instances {
        let store = Store::open(&dir.path().join(i.to_string()), &plan.state).expect("store");
        let mut engine = Engine::new(plan, None);
        let mine: Vec<u32> = (0..4).filter(|p| instance_of(*p) == i).collect();
        for p in &mine {
            engine.watermarks.register(*p);
        }
        for (off, &(p, user, n, ts)) in events.iter().enumerate() {
            if !mine.contains(&p) {
                continue;
            }
            let mut rec = record(off, user, n, ts);
            rec.partition = p;
            let mut dead = Vec::new();
            engine
                .process(
                    &store,
                    &rec,
                    &mut |e| out.entry(e.partition).or_default().push(row(e)),
                    &mut dead,
                )
                .expect("process");
        }
        engine
            .finish(&store, &mut |e| {
                out.entry(e.partition).or_default().push(row(e))
            })
            .expect("finish");
        late += engine.counters.dead_late;
    }
    (out, late)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// With no event late, sessions are independent of arrival order: an event joins
    /// every session it overlaps or touches ([first, last + gap)). The expectation is a
    /// sort-and-sweep over the same events, written without the state store.
    #[test]
    fn sessions_merge_as_a_sort_and_sweep_says(
        events in proptest::collection::vec((0u8..3, 1i64..100, 0i64..100_000), 1..80),
        gap in 1i64..10_000,
    ) {
        let plan = plan(gap, 86_400_000);
        let (mut got, late) = run(&plan, &events, None);
        prop_assert_eq!(late, 0);
        let mut want = Rows::new();
        for user in 0u8..3 {
            let mut mine: Vec<(i64, i64)> =
                events.iter().filter(|e| e.0 == user).map(|e| (e.2, e.1)).collect();
            mine.sort();
            let mut cur: Option<(i64, i64, i64, i64)> = None; // start, last, count, sum
            for (ts, n) in mine {
                cur = match cur {
                    Some((s, last, c, t)) if ts <= last + gap => Some((s, ts, c + 1, t + n)),
                    Some((s, last, c, t)) => {
                        want.push((format!("u{user}"), s, last + gap, c, t));
                        Some((ts, ts, 1, n))
                    }
                    None => Some((ts, ts, 1, n)),
                };
            }
            if let Some((s, last, c, t)) = cur {
                want.push((format!("u{user}"), s, last + gap, c, t));
            }
        }
        got.sort();
        want.sort();
        prop_assert_eq!(got, want);
    }

    /// A checkpoint taken anywhere and restored into a new engine gives exactly the
    /// results and late counts of an uninterrupted run, late events included.
    #[test]
    fn a_restored_checkpoint_changes_nothing(
        events in proptest::collection::vec((0u8..3, 1i64..100, 0i64..100_000), 2..80),
        gap in 1i64..10_000,
        ooo in 0i64..20_000,
        at in 0usize..80,
    ) {
        let plan = plan(gap, ooo);
        let split = at % events.len();
        prop_assert_eq!(run(&plan, &events, None), run(&plan, &events, Some(split)));
    }

    /// The changelog's records rebuild the store entry for entry after every
    /// checkpoint, and a run that moves onto the rebuilt store at any checkpoint gives
    /// the results of a run that never moved: sessions, tumbling windows with grace,
    /// late events, a tiny cache that spills (so closed windows are deleted from RocksDB).
    #[test]
    fn the_changelog_rebuilds_the_state_anywhere(
        events in proptest::collection::vec((0u8..4, 1i64..100, 0i64..100_000), 2..120),
        gap in 1i64..10_000,
        ooo in 0i64..20_000,
        every in 1usize..20,
        move_at in 0usize..120,
        tumbling in proptest::bool::ANY,
    ) {
        let mut plan = if tumbling { tumbling_plan(gap, ooo / 2, ooo) } else { plan(gap, ooo) };
        plan.state.cache_entries = 2;
        let (want, _) = run(&plan, &events, None);
        prop_assert_eq!(run_logged(&plan, &events, every, move_at), want);
    }

    /// A partition's windows close by its own watermark: its results (in their order) and
    /// late events are the same whichever partitions share its instance and however the
    /// instance interleaves their records: one instance, four, or two, with partitions that
    /// lag far behind the others (a backlog after a restart, a rebalance).
    #[test]
    fn a_partitions_results_do_not_depend_on_its_neighbours(
        events in proptest::collection::vec((0u32..4, 0u8..3, 1i64..100, 0i64..20_000), 2..150),
        lag in proptest::collection::vec(0i64..200_000, 4),
        size in 1i64..10_000,
        ooo in 0i64..5_000,
        tumbling in proptest::bool::ANY,
    ) {
        let plan = if tumbling { tumbling_plan(size, ooo / 2, ooo) } else { plan(size, ooo) };
        // Each partition's event times run from its own start: partition p is lag[p] ahead.
        let mut events = events;
        for e in events.iter_mut() {
            e.3 += lag[e.0 as usize];
        }
        let one = run_partitioned(&plan, &events, 1, &|_| 0);
        prop_assert_eq!(&run_partitioned(&plan, &events, 4, &|p| p as usize), &one);
        prop_assert_eq!(&run_partitioned(&plan, &events, 2, &|p| (p % 2) as usize), &one);
        // Partition order kept, partitions interleaved differently: all of partition 3
        // first, then the rest.
        let mut moved: Vec<_> = events.iter().filter(|e| e.0 == 3).copied().collect();
        moved.extend(events.iter().filter(|e| e.0 != 3).copied());
        prop_assert_eq!(&run_partitioned(&plan, &moved, 1, &|_| 0), &one);
    }
}
