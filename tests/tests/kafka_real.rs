//! The proof of the guarantee, on a real broker (`WEIR_TEST_KAFKA`, default Apache Kafka):
//! SIGKILL Weir in every phase while traffic arrives, and kill the broker mid-run;
//! the PostgreSQL table and the Kafka topic must still equal the aggregates computed
//! independently, and every bad record must be in the dead-letter topic.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use weir::faults::Point;
use weir_tests::kafka::{produce_at, producer, real_broker, Rng, WeirProcess};
use weir_tests::postgres::PrivatePostgres;
use weir_tests::scenario::{event_time, pg_url, Scenario};

/// How one run of Weir ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kill {
    /// Weir SIGKILLs itself at a named point of the protocol (`WEIR_TEST_SIGKILL_AT`).
    Hook(&'static str),
    /// Weir SIGKILLs itself after N records (`WEIR_TEST_SIGKILL_AFTER`): mid-processing.
    Records,
    /// The test SIGKILLs Weir within 1.5 s of its start: during restart and restore.
    AfterStart,
    /// The test SIGKILLs Weir while no traffic arrives.
    Quiet,
    /// The test SIGKILLs Weir at a random moment once it makes progress.
    Random,
    /// The test SIGKILLs the broker while Weir runs, restarts it on the same data, and
    /// SIGKILLs Weir once it makes progress again (exactly-once).
    Broker,
}

fn seed() -> u64 {
    match std::env::var("WEIR_TEST_SEED") {
        Ok(s) => {
            u64::from_str_radix(s.trim_start_matches("0x"), 16).expect("WEIR_TEST_SEED is hex")
        }
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
    }
}

/// 200,000 Avro events in steady batches while Weir is SIGKILLed at 26 moments, two in each
/// phase: at every named point of the checkpoint protocol (results emitted and buffered,
/// a sink's writes sent but not acknowledged, between each step of the checkpoint), during
/// restart and restore, mid-processing, in quiet stretches and at random. The table, the last
/// value per key in the output topic and the dead letters must equal the independently
/// computed expectations; re-emitted results (the same `weir-event-id` twice) must appear,
/// each with the same value, and be bounded.
#[test]
fn sigkill_in_every_phase_loses_nothing_and_doubles_nothing() {
    let Some(broker) = real_broker() else { return };
    sigkill_in_every_phase(broker, false, false, false);
}

/// The same 26 kills with `state.changelog`: every checkpoint also goes to the changelog in
/// a transaction, and each restart checks its partitions against it. A kill between the
/// changelog's commit and the local batch leaves the changelog ahead; the restart must
/// restore the difference and resume at the changelog's offsets, or the table double counts.
#[test]
fn sigkill_in_every_phase_with_a_changelog() {
    let Some(broker) = changelog_broker() else {
        return;
    };
    sigkill_in_every_phase(broker, true, false, false);
}

/// Exactly-once (`delivery: exactly_once`): the same kills, two at each point of the
/// protocol, now with one Kafka transaction per checkpoint holding the results, the dead
/// letters, the changelog records and the source offsets. A `read_committed` reader of the
/// output topic must see every (user, window) result exactly once with the right value,
/// and every invalid event once in the dead-letter topic. One more kill in the plan is the
/// broker's: SIGKILLed mid-stream and restarted on its data while Weir runs, then Weir is
/// killed once it makes progress again. A `read_uncommitted` reader must
/// see the aborted records too (so the test is not passing by accident); and each restart
/// must resume from its local store, restoring only what it lacks, never the whole
/// changelog.
#[test]
fn sigkill_in_every_phase_exactly_once() {
    let Some(broker) = changelog_broker() else {
        return;
    };
    sigkill_in_every_phase(broker, true, false, true);
}

/// The same kills on a pipeline that re-keys (`partitioned_by: []`, each user's events
/// spread at random over the partitions), with the changelog: the kills land in both
/// stages (the protocol points with results in flight only downstream), and the upstream
/// re-sends what it had sent since its last checkpoint. The table must still be exact.
#[test]
fn sigkill_in_every_phase_of_a_rekeyed_pipeline() {
    let Some(broker) = changelog_broker() else {
        return;
    };
    sigkill_in_every_phase(broker, true, true, false);
}

fn sigkill_in_every_phase(
    mut broker: weir_tests::kafka::Broker,
    changelog: bool,
    rekeyed: bool,
    exactly_once: bool,
) {
    let seed = seed();
    eprintln!(
        "crash test seed: {seed:#x} (set WEIR_TEST_SEED={seed:x} to repeat the data and the plan)"
    );
    // Event i at T0 + 5i ms: a 10 s window closes every 2,000 events, so results are in
    // flight often.
    let s = if rekeyed {
        Scenario::rekeyed("crashkey", 200_000, 500, seed, 4)
    } else {
        Scenario::with_step(
            match (exactly_once, changelog) {
                (true, _) => "crasheos",
                (false, true) => "crashlog",
                (false, false) => "crash",
            },
            200_000,
            500,
            seed,
            5,
        )
    };
    let s = if changelog {
        s.with_changelog()
    } else {
        s.without_changelog()
    };
    let s = if exactly_once { s.exactly_once() } else { s };
    s.create_topics(&broker);
    let args = s.args(&broker);

    let mut rng = Rng(seed ^ 0x9e37_79b9_7f4a_7c15 | 1);
    let mut plan: Vec<Kill> = Vec::new();
    for _ in 0..2 {
        let points: &[Point] = if changelog {
            &Point::WITH_CHANGELOG
        } else {
            &Point::ALL
        };
        plan.extend(points.iter().map(|p| Kill::Hook(p.name())));
        plan.extend([Kill::Records, Kill::AfterStart, Kill::Quiet, Kill::Random]);
    }
    if exactly_once {
        if broker.can_restart() {
            plan.push(Kill::Broker);
        } else {
            cannot_run(&format!(
                "the {} broker cannot be stopped and started by the harness",
                broker.kind
            ));
        }
    }
    for i in (1..plan.len()).rev() {
        plan.swap(i, rng.below(i as u64 + 1) as usize);
    }
    // The broker outage needs traffic after it (Weir must go on): not among the last
    // kills, by when the producer may have sent everything.
    if let Some(i) = plan.iter().position(|k| *k == Kill::Broker) {
        let last = plan.len().saturating_sub(6).max(1);
        if i >= last {
            plan.swap(i, rng.below(last as u64) as usize);
        }
    }
    let planned = plan.len();
    eprintln!("kill plan: {plan:?}");

    let kills_done = AtomicUsize::new(0);
    let quiet = AtomicBool::new(false);
    let produced_all = AtomicBool::new(false);
    let released = AtomicBool::new(false);
    // Set when a failed assertion unwinds the kill loop: the producer stops, so the
    // failure is reported at once instead of after the producer's per-batch waits.
    let abandoned = AtomicBool::new(false);
    let batches = s.batches.len();
    let bootstrap = broker.bootstrap.clone();
    let mut hits: BTreeMap<Kill, usize> = BTreeMap::new();
    let mut missed: Vec<Kill> = Vec::new();
    let mut weir: Option<WeirProcess> = None;
    std::thread::scope(|scope| {
        let producer = scope.spawn(|| {
            // Traffic is paced by the kills: batch b waits until enough kills happened that
            // every kill has traffic around it (bounded: 60 s per batch at most). Every
            // 40 batches a 3 s quiet stretch. A wait for the kills is quiet too: nothing is
            // sent until the next kill, so a quiet kill planned then is not left waiting.
            let p = producer(&bootstrap);
            for (b, batch) in s.batches.iter().enumerate() {
                let allowed =
                    |k: usize| released.load(Ordering::SeqCst) || b * planned <= (k + 3) * batches;
                let deadline = Instant::now() + Duration::from_secs(60);
                while !allowed(kills_done.load(Ordering::SeqCst)) && Instant::now() < deadline {
                    if abandoned.load(Ordering::SeqCst) {
                        return;
                    }
                    quiet.store(true, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(20));
                }
                quiet.store(false, Ordering::SeqCst);
                if abandoned.load(Ordering::SeqCst) {
                    return;
                }
                if b % 40 == 39 {
                    quiet.store(true, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_secs(3));
                    quiet.store(false, Ordering::SeqCst);
                }
                produce_at(&p, &s.source, batch, &event_time);
                std::thread::sleep(Duration::from_millis(60));
            }
            produced_all.store(true, Ordering::SeqCst);
        });
        /// Sets the flag when dropped while a failed assertion unwinds the kill loop.
        struct OnDrop<'a>(&'a AtomicBool);
        impl Drop for OnDrop<'_> {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    self.0.store(true, Ordering::SeqCst);
                }
            }
        }
        let _abandon_on_failure = OnDrop(&abandoned);
        for kill in plan.iter().copied() {
            let from = std::fs::metadata(s.log()).map(|m| m.len()).unwrap_or(0) as usize;
            let mut env: Vec<(&str, String)> = Vec::new();
            match kill {
                Kill::Hook(name) => {
                    let n = match name {
                        "restored" | "assigned" => 1,
                        "emitted" => 1 + rng.below(150),
                        _ => 1 + rng.below(2),
                    };
                    env.push(("WEIR_TEST_SIGKILL_AT", format!("{name}:{n}")));
                }
                Kill::Records => env.push((
                    "WEIR_TEST_SIGKILL_AFTER",
                    (1 + rng.below(4_000)).to_string(),
                )),
                _ => {}
            }
            let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let mut w = WeirProcess::start(&args, s.log(), &env_refs);
            let hit = match kill {
                Kill::Hook(_) | Kill::Records => {
                    let deadline = Instant::now() + Duration::from_secs(45);
                    while w.exited().is_none() && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    let exited = w.exited();
                    let log = w.log_text();
                    let own = &log[from.min(log.len())..];
                    let hooked = match kill {
                        Kill::Hook(name) => {
                            own.contains(&format!("test hook: SIGKILL at {name} #"))
                        }
                        _ => exited.is_some(),
                    };
                    if exited.is_none() {
                        w.sigkill();
                    } else {
                        assert!(
                            hooked,
                            "weir exited without its hook ({kill:?}): {}",
                            tail(own)
                        );
                    }
                    hooked
                }
                Kill::AfterStart => {
                    std::thread::sleep(Duration::from_millis(rng.below(1_500)));
                    w.sigkill();
                    true
                }
                Kill::Quiet => {
                    // Into a stretch: what arrived before it is processed, nothing new. A
                    // stretch that ends before the kill is let go, and the next one waited
                    // for (the wait began late in it).
                    let deadline = Instant::now() + Duration::from_secs(60);
                    let is_quiet =
                        || quiet.load(Ordering::SeqCst) || produced_all.load(Ordering::SeqCst);
                    let mut hit = false;
                    while !hit && Instant::now() < deadline {
                        while !is_quiet() && Instant::now() < deadline {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        std::thread::sleep(Duration::from_millis(300 + rng.below(1_500)));
                        hit = is_quiet();
                    }
                    w.sigkill();
                    hit
                }
                Kill::Broker => {
                    let before = s.table_events();
                    let deadline = Instant::now() + Duration::from_secs(45);
                    while s.table_events() <= before
                        && Instant::now() < deadline
                        && !produced_all.load(Ordering::SeqCst)
                    {
                        assert!(w.exited().is_none(), "weir exited: {}", tail(&w.log_text()));
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    std::thread::sleep(Duration::from_millis(rng.below(1_000)));
                    broker.stop();
                    eprintln!("broker SIGKILLed mid-stream");
                    // Longer than the group session (10 s), as a broker restart usually is:
                    // the static member's session times out and it rejoins.
                    std::thread::sleep(Duration::from_secs(11 + rng.below(4)));
                    broker.start();
                    eprintln!("broker restarted on the same data dir");
                    // Weir goes on after the outage (in the same session or a new one).
                    let before = s.table_events();
                    let deadline = Instant::now() + Duration::from_secs(120);
                    while s.table_events() <= before
                        && Instant::now() < deadline
                        && !produced_all.load(Ordering::SeqCst)
                    {
                        assert!(w.exited().is_none(), "weir exited: {}", tail(&w.log_text()));
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    let went_on = s.table_events() > before;
                    std::thread::sleep(Duration::from_millis(rng.below(1_000)));
                    w.sigkill();
                    let log = w.log_text();
                    let own = &log[from.min(log.len())..];
                    eprintln!(
                        "during the outage weir logged {} group session timeouts and {} spurious fences it rejoined after",
                        own.matches("SESSTMOUT").count(),
                        own.matches("own group session timed out: rejoining").count()
                    );
                    went_on
                }
                Kill::Random => {
                    let before = s.table_events();
                    let deadline = Instant::now() + Duration::from_secs(45);
                    while s.table_events() <= before
                        && Instant::now() < deadline
                        && !produced_all.load(Ordering::SeqCst)
                    {
                        assert!(w.exited().is_none(), "weir exited: {}", tail(&w.log_text()));
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    std::thread::sleep(Duration::from_millis(rng.below(2_000)));
                    w.sigkill();
                    true
                }
            };
            if hit {
                *hits.entry(kill).or_default() += 1;
            } else {
                missed.push(kill);
            }
            let done = kills_done.fetch_add(1, Ordering::SeqCst) + 1;
            eprintln!(
                "kill {done}/{planned} ({kill:?}): {}, {} events in the table",
                if hit { "hit" } else { "missed" },
                s.table_events()
            );
        }
        // The last run goes to the end.
        weir = Some(WeirProcess::start(&args, s.log(), &[]));
        released.store(true, Ordering::SeqCst);
        producer.join().expect("producer thread");
    });
    let mut weir = weir.expect("the last run");
    let rows = s.wait_for_table(Duration::from_secs(300), &mut || weir.exited().is_none());
    assert!(
        weir.stop(),
        "weir did not stop cleanly: {}",
        tail(&weir.log_text())
    );
    let (counts, dead) = s.check_all(&broker, &rows);
    if changelog {
        // A kill after the changelog's commit left it ahead of the local store: a restart
        // read the difference (and resumed at the changelog's offsets, or the table would
        // double count).
        let log = weir.log_text();
        let restores = log.matches("restored from the changelog").count();
        assert!(
            restores > 0,
            "no restart restored anything from the changelog: {}",
            tail(&log)
        );
        eprintln!("{restores} partition restores from the changelog across the kills");
    }
    let kills: usize = hits.values().sum::<usize>() + missed.len();
    eprintln!(
        "crash test on {} (seed {seed:#x}): {} windows, {} events, {kills} kills, hits {hits:?}, missed {missed:?}; output {counts:?}, {dead} dead letters",
        broker.kind,
        s.expected.len(),
        s.total_events()
    );
    assert!(kills >= 20, "only {kills} kills");
    // Every phase was hit at least once.
    let never: Vec<Kill> = {
        let mut kinds: Vec<Kill> = plan.clone();
        kinds.sort();
        kinds.dedup();
        kinds
            .into_iter()
            .filter(|k| !hits.contains_key(k))
            .collect()
    };
    assert!(
        never.is_empty(),
        "no kill landed in {never:?} (seed {seed:#x}); hits {hits:?}"
    );
    if exactly_once {
        check_exactly_once(&s, &broker, counts, dead, &weir.log_text());
        s.drop_table();
        return;
    }
    // Re-emission happened (kills after the sinks acknowledged and before the state was
    // written guarantee it) and was absorbed: same id, same value (checked while reading),
    // the last value per key right. Bounded: a kill re-emits at most what one checkpoint
    // interval produced (5,000 records at 2,000 events per window: 3 windows x 40 users).
    assert!(
        counts.repeated > 0,
        "no weir-event-id was emitted twice: the kills never interrupted results in flight ({counts:?})"
    );
    assert!(
        counts.repeated <= kills * 200,
        "{} re-emitted records for {kills} kills ({counts:?})",
        counts.repeated
    );
    s.drop_table();
}

/// The end checks of the exactly-once crash test, after [`Scenario::check_all`] found the
/// table, the last value per window and the dead letters right (read `read_committed`).
fn check_exactly_once(
    s: &Scenario,
    broker: &weir_tests::kafka::Broker,
    counts: weir_tests::scenario::TopicCounts,
    dead: usize,
    log: &str,
) {
    // Not one record twice: every (user, window) once (the sentinels' windows too).
    assert_eq!(
        counts.repeated, 0,
        "a read_committed consumer saw {} results twice ({counts:?})",
        counts.repeated
    );
    assert_eq!(counts.records, counts.distinct_ids, "{counts:?}");
    let sentinels = counts.records - s.expected.len();
    assert!(
        sentinels <= s.partitions as usize,
        "{} records for {} windows ({counts:?})",
        counts.records,
        s.expected.len()
    );
    assert_eq!(
        dead,
        s.dead.len(),
        "read_committed: {dead} dead letters for {} invalid or late events",
        s.dead.len()
    );
    // The kills before the commits left aborted transactions: a read_uncommitted consumer
    // sees their records, a read_committed one does not.
    let settings = broker.client_settings();
    let uncommitted =
        weir_tests::kafka::read_isolated(&broker.bootstrap, &s.out_topic, &settings, false);
    assert!(
        uncommitted.len() > counts.records,
        "read_uncommitted sees {} records, read_committed {}: no transaction was aborted",
        uncommitted.len(),
        counts.records
    );
    // Each restart resumed from its local store: a restore reads what the store lacks (at
    // most a few checkpoints), never the whole changelog.
    let changelog = format!("{}-changelog", s.group);
    let mut per_partition: BTreeMap<i32, usize> = BTreeMap::new();
    for r in weir_tests::kafka::read_isolated(&broker.bootstrap, &changelog, &settings, true) {
        *per_partition.entry(r.partition).or_default() += 1;
    }
    let field = |l: &str, name: &str| -> Option<u64> {
        l.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .and_then(|n| n.trim_matches('"').parse().ok())
    };
    // (partition, records) of every partition restore.
    let restored: Vec<(i32, u64)> = log
        .lines()
        .filter(|l| l.contains("restored from the changelog"))
        .filter_map(|l| Some((field(l, "partition=")? as i32, field(l, "records=")?)))
        .collect();
    eprintln!(
        "exactly once: {} records read_committed, {} read_uncommitted; {} partition restores {restored:?}; changelog records per partition {per_partition:?}",
        counts.records,
        uncommitted.len(),
        restored.len()
    );
    assert!(!restored.is_empty(), "no restart restored anything");
    for (p, n) in &restored {
        let total = per_partition.get(p).copied().unwrap_or(0);
        assert!(
            (*n as usize) * 4 < total,
            "a restore of partition {p} read {n} of its {total} changelog records: a rebuild, not a roll forward"
        );
    }
}

/// Says why a test cannot run: under `CI=true` that fails it, elsewhere it is skipped.
/// The broker for a changelog test: its transactions need one that writes transaction
/// markers (Apache Kafka, not the mock cluster or tansu).
fn changelog_broker() -> Option<weir_tests::kafka::Broker> {
    let broker = real_broker()?;
    if broker.kind == "mock" || broker.kind == "tansu" {
        cannot_run(&format!(
            "the changelog's transactions need a broker that writes transaction markers, not {}",
            broker.kind
        ));
        return None;
    }
    Some(broker)
}

fn cannot_run(why: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true and this test cannot run: {why}");
    }
    eprintln!("SKIPPED: {why}");
}

/// Waits (bounded) until `needle` appears in the log after byte `from`; returns where.
fn wait_log(w: &mut WeirProcess, from: usize, needle: &str, within: Duration) -> usize {
    let deadline = Instant::now() + within;
    loop {
        let log = w.log_text();
        if let Some(i) = log.get(from..).and_then(|l| l.find(needle)) {
            return from + i + needle.len();
        }
        assert!(
            Instant::now() < deadline,
            "no `{needle}` in the log within {within:?}: {}",
            tail(&log)
        );
        assert!(w.exited().is_none(), "weir exited: {}", tail(&log));
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits (bounded) until the table holds some results.
fn wait_first_results(s: &Scenario, weir: &mut WeirProcess) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while s.table_events() == 0 {
        assert!(
            Instant::now() < deadline,
            "no results: {}",
            tail(&weir.log_text())
        );
        assert!(
            weir.exited().is_none(),
            "weir exited: {}",
            tail(&weir.log_text())
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

const SESSION_FAILED: &str = "pipeline session failed; restarting from the last checkpoint";

/// The broker is SIGKILLed twice while Weir holds fetched records it has not processed yet
/// (a test hook stalls its processing thread after the 5,000th record of every session, like
/// a long GC pause), and restarted on the same data dir. The results of those records
/// cannot be delivered (deliveries time out after 3 s), so the checkpoint fails, the session
/// fails and restarts from the last checkpoint once the broker is back. Nothing is lost.
#[test]
fn broker_killed_twice_mid_run_fails_a_session_and_loses_nothing() {
    broker_killed_twice(false);
}

/// The same two broker outages with `delivery: exactly_once`: each failed session's
/// transaction is aborted (by the next incarnation's `init_transactions` when the broker
/// was away for the abort), and a `read_committed` reader sees every result and every dead
/// letter once.
#[test]
fn broker_killed_twice_mid_run_exactly_once() {
    broker_killed_twice(true);
}

fn broker_killed_twice(exactly_once: bool) {
    let Some(mut broker) = (if exactly_once {
        changelog_broker()
    } else {
        real_broker()
    }) else {
        return;
    };
    if !broker.can_restart() {
        return cannot_run(&format!(
            "the {} broker cannot be stopped and started by the harness",
            broker.kind
        ));
    }
    // Event i at T0 + 5i ms: a window closes every 2,000 events, so the held records close
    // windows.
    let s = if exactly_once {
        Scenario::with_step("outageeos", 40_000, 1_000, 0x5eed_0032, 5).exactly_once()
    } else {
        Scenario::with_step("outage", 40_000, 1_000, 0x5eed_0002, 5)
    };
    s.create_topics(&broker);
    let args = s.args_with(&broker, &[("message.timeout.ms", "3000")]);
    let mut weir = WeirProcess::start(&args, s.log(), &[("WEIR_TEST_STALL_AT", "5000:4000")]);
    let n = s.batches.len();
    let mut from = 0;
    let mut produced = 0;
    for outage in 1..=2 {
        // Enough records for the stall and a backlog behind it.
        let upto = (produced + 12).min(n);
        s.produce(&broker.bootstrap, produced..upto, Duration::ZERO);
        produced = upto;
        from = wait_log(
            &mut weir,
            from,
            "test hook: stalling",
            Duration::from_secs(90),
        );
        // The consumer keeps fetching during the stall; then the broker dies.
        std::thread::sleep(Duration::from_millis(1_500));
        broker.stop();
        eprintln!("outage {outage}: broker SIGKILLed while weir holds records");
        from = wait_log(&mut weir, from, SESSION_FAILED, Duration::from_secs(60));
        std::thread::sleep(Duration::from_secs(2));
        broker.start();
        eprintln!("outage {outage}: broker restarted on the same data dir");
        from = wait_log(
            &mut weir,
            from,
            "partitions assigned",
            Duration::from_secs(120),
        );
    }
    s.produce(&broker.bootstrap, produced..n, Duration::from_millis(50));
    let rows = s.wait_for_table(Duration::from_secs(240), &mut || weir.exited().is_none());
    assert!(
        weir.stop(),
        "weir did not stop cleanly: {}",
        tail(&weir.log_text())
    );
    let (counts, dead) = s.check_all(&broker, &rows);
    if exactly_once {
        assert_eq!(counts.repeated, 0, "results seen twice: {counts:?}");
        assert_eq!(dead, s.dead.len(), "dead letters seen twice or missing");
    }
    let failed = weir.log_text().matches(SESSION_FAILED).count();
    eprintln!("broker outage test: {failed} failed sessions logged; output {counts:?}");
    s.drop_table();
}

/// Exactly-once: a transaction the broker times out. With `transaction.timeout.ms=3000`,
/// Weir's processing thread stalls for 15 s after the 5,000th record of each session, with
/// results and dead letters in its open transaction (the broker checks for timed-out
/// transactions every 10 s by default). The coordinator aborts the transaction; Weir's
/// next send or commit fails, the session fails (it is not mistaken for a fencing) and
/// restarts from the last committed checkpoint. A `read_committed` reader sees every result
/// and dead letter once.
#[test]
fn a_transaction_the_broker_times_out_is_aborted_and_the_session_restarts() {
    let Some(broker) = changelog_broker() else {
        return;
    };
    let s = Scenario::with_step("txntimeout", 12_000, 1_000, 0x5eed_0033, 5).exactly_once();
    s.create_topics(&broker);
    let mut args = s.args_with(&broker, &[("transaction.timeout.ms", "3000")]);
    // Every session stalls at its 5,000th record, so every session must checkpoint before
    // it to make progress: by count (every 1,000), not only by the 200 ms interval, which a
    // backlog read at full speed does not reach before record 5,000 (a CI run went round
    // the same offsets until its deadline).
    let every = args
        .iter()
        .position(|a| a == "--checkpoint-every")
        .expect("--checkpoint-every");
    args[every + 1] = "1000".into();
    let mut weir = WeirProcess::start(&args, s.log(), &[("WEIR_TEST_STALL_AT", "5000:15000")]);
    s.produce(
        &broker.bootstrap,
        0..s.batches.len(),
        Duration::from_millis(20),
    );
    wait_log(&mut weir, 0, SESSION_FAILED, Duration::from_secs(120));
    let rows = s.wait_for_table(Duration::from_secs(240), &mut || weir.exited().is_none());
    assert!(
        weir.stop(),
        "weir did not stop cleanly: {}",
        tail(&weir.log_text())
    );
    let log = weir.log_text();
    assert!(
        !log.contains("fenced: another instance"),
        "a timed-out transaction was taken for a fencing: {}",
        tail(&log)
    );
    let (counts, dead) = s.check_all(&broker, &rows);
    assert_eq!(counts.repeated, 0, "results seen twice: {counts:?}");
    assert_eq!(dead, s.dead.len(), "dead letters seen twice or missing");
    let failed = log.matches(SESSION_FAILED).count();
    let why = log
        .lines()
        .find(|l| l.contains(SESSION_FAILED))
        .unwrap_or("");
    eprintln!("transaction timeout test: {failed} failed sessions (the first: {why}); output {counts:?}, {dead} dead letters");
    s.drop_table();
}

/// PostgreSQL (a private server, so other tests keep theirs) crashes mid-run while results
/// flow (`pg_ctl stop -m immediate`) and comes back: the sink's transaction fails, the
/// session fails and restarts from the last checkpoint (retrying while the database is
/// away), and the table ends equal to the expected aggregates.
#[test]
fn postgres_outage_mid_run_fails_a_session_and_loses_nothing() {
    let Some(broker) = real_broker() else {
        return;
    };
    let pg = match PrivatePostgres::start() {
        Ok(pg) => pg,
        Err(e) => return cannot_run(&format!("no private PostgreSQL: {e}")),
    };
    let s = Scenario::build("pgoutage", 30_000, 1_000, 0x5eed_0005, 5, pg.url());
    s.create_topics(&broker);
    let mut weir = WeirProcess::start(&s.args(&broker), s.log(), &[]);
    let n = s.batches.len();
    s.produce(&broker.bootstrap, 0..n / 3, Duration::from_millis(50));
    wait_first_results(&s, &mut weir);
    pg.crash();
    eprintln!("PostgreSQL crashed");
    // Traffic goes on: its results cannot be written.
    s.produce(
        &broker.bootstrap,
        n / 3..2 * n / 3,
        Duration::from_millis(50),
    );
    wait_log(&mut weir, 0, SESSION_FAILED, Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(3));
    pg.resume().expect("restart PostgreSQL");
    eprintln!("PostgreSQL back");
    s.produce(&broker.bootstrap, 2 * n / 3..n, Duration::from_millis(50));
    let rows = s.wait_for_table(Duration::from_secs(240), &mut || weir.exited().is_none());
    assert!(
        weir.stop(),
        "weir did not stop cleanly: {}",
        tail(&weir.log_text())
    );
    s.check_all(&broker, &rows);
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Static membership on Apache Kafka: an instance SIGKILLed and restarted with the same
/// `--instance-id` within the session timeout gets its partitions back at once (KIP-345: the
/// broker replaces the old incarnation instead of waiting for it to expire). Then the
/// group as others see it: `weir offsets --group` without `--topic` finds the members through
/// DescribeGroups, and Kafka's own `kafka-consumer-groups --describe` shows lag 0 and the
/// same committed offsets after a clean stop.
#[test]
fn static_member_restarted_after_sigkill_resumes_at_once() {
    let Some(broker) = real_broker() else {
        return;
    };
    if broker.kind == "mock" || broker.kind == "tansu" {
        return cannot_run(&format!(
            "static membership needs a broker that implements KIP-345 faithfully, not {}",
            broker.kind
        ));
    }
    let s = Scenario::with_step("member", 20_000, 1_000, 0x5eed_0006, 5);
    s.create_topics(&broker);
    let args = s.args(&broker);
    let group = s.group.clone();
    let n = s.batches.len();
    let mut weir = WeirProcess::start(&args, s.log(), &[]);
    s.produce(&broker.bootstrap, 0..n / 2, Duration::from_millis(20));
    wait_first_results(&s, &mut weir);
    // The group shows its member while it runs (DescribeGroups).
    let live = offsets_json(&broker, &group, &[]);
    let members: Vec<&str> = live["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .filter_map(|p| p["member"].as_str())
        .collect();
    assert_eq!(members.len(), 4, "every partition has an owner: {live}");

    weir.sigkill();
    let from = weir.log_text().len();
    let restarted = Instant::now();
    let mut weir = WeirProcess::start(&args, s.log(), &[]);
    let mut assigned = None;
    while Instant::now() < restarted + Duration::from_secs(30) {
        let log = weir.log_text();
        if log
            .get(from..)
            .is_some_and(|l| l.contains("partitions assigned"))
        {
            assigned = Some(restarted.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let assigned = assigned
        .unwrap_or_else(|| panic!("no assignment after restart: {}", tail(&weir.log_text())));
    eprintln!("static member restarted after SIGKILL: partitions back in {assigned:?}");
    assert!(
        assigned < Duration::from_secs(5),
        "partitions came back after {assigned:?}: the broker waited for the dead incarnation's session timeout"
    );

    s.produce(&broker.bootstrap, n / 2..n, Duration::from_millis(20));
    let rows = s.wait_for_table(Duration::from_secs(180), &mut || weir.exited().is_none());
    assert!(
        weir.stop(),
        "weir did not stop cleanly: {}",
        tail(&weir.log_text())
    );
    s.check_all(&broker, &rows);

    // After a clean stop: committed == log end, in Weir's view and in Kafka's own tool.
    let ours = offsets_json(&broker, &group, &["--topic", &s.source]);
    let mut committed = BTreeMap::new();
    for p in ours["partitions"].as_array().expect("partitions") {
        assert_eq!(p["lag"].as_i64(), Some(0), "weir offsets: {ours}");
        committed.insert(
            p["partition"].as_i64().expect("partition"),
            p["committed"].as_i64().expect("committed"),
        );
    }
    let Some(k) = broker.kafka() else {
        return;
    };
    let out = std::process::Command::new(weir_tests::repo().join("scripts/kafka.sh"))
        .args([
            "tool",
            "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
            "--bootstrap-server",
            &broker.bootstrap,
            "--describe",
            "--group",
            &group,
        ])
        .output()
        .expect("kafka-consumer-groups");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "kafka-consumer-groups: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut theirs = BTreeMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        // GROUP TOPIC PARTITION CURRENT-OFFSET LOG-END-OFFSET LAG CONSUMER-ID HOST CLIENT-ID
        if f.len() >= 6 && f[1] == s.source {
            assert_eq!(f[5], "0", "kafka-consumer-groups shows lag: {line}");
            theirs.insert(
                f[2].parse::<i64>().expect("partition"),
                f[3].parse::<i64>().expect("offset"),
            );
        }
    }
    assert_eq!(
        theirs, committed,
        "kafka-consumer-groups --describe:\n{text}"
    );
    eprintln!(
        "kafka-consumer-groups agrees with weir offsets: {theirs:?} (broker pid {:?})",
        k.pid()
    );
    s.drop_table();
}

/// A new machine: the pipeline is SIGKILLed mid-stream and its state directory deleted.
/// The next instance restores every partition from the changelog (its log says how many
/// records), resumes at the offsets the changelog holds, and the sinks end exact: nothing
/// lost, nothing counted twice in the PostgreSQL table.
#[test]
fn an_empty_state_dir_restores_from_the_changelog() {
    let Some(broker) = changelog_broker() else {
        return;
    };
    let s = Scenario::with_step("restore", 20_000, 1_000, 0x5eed_0012, 5).with_changelog();
    s.create_topics(&broker);
    let args = s.args(&broker);
    let n = s.batches.len();
    let mut weir = WeirProcess::start(&args, s.log(), &[]);
    s.produce(&broker.bootstrap, 0..n / 2, Duration::from_millis(20));
    wait_first_results(&s, &mut weir);
    // Let a few checkpoints reach the changelog, then take the machine away.
    std::thread::sleep(Duration::from_secs(2));
    weir.sigkill();
    std::fs::remove_dir_all(s.state_dir()).expect("remove the state directory");
    let from = weir.log_text().len();
    let mut weir = WeirProcess::start(&args, s.log(), &[]);
    let restored = wait_log(
        &mut weir,
        from,
        "restored from the changelog",
        Duration::from_secs(60),
    );
    let log = weir.log_text();
    let records: u64 = log[from..]
        .lines()
        .filter(|l| l.contains("restored from the changelog"))
        .filter_map(|l| {
            let at = l.find("records=")? + "records=".len();
            l[at..]
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    assert!(
        records > 0,
        "an empty state directory restored nothing: {}",
        tail(&log[restored..])
    );
    eprintln!("restored {records} changelog records into an empty state directory");
    s.produce(&broker.bootstrap, n / 2..n, Duration::from_millis(20));
    let rows = s.wait_for_table(Duration::from_secs(180), &mut || weir.exited().is_none());
    assert!(
        weir.stop(),
        "weir did not stop cleanly: {}",
        tail(&weir.log_text())
    );
    s.check_all(&broker, &rows);

    // A restart on the state it left restores nothing: the local store is current.
    let from = weir.log_text().len();
    let mut weir = WeirProcess::start(&args, s.log(), &[]);
    wait_log(
        &mut weir,
        from,
        "partitions assigned",
        Duration::from_secs(60),
    );
    assert!(
        weir.stop(),
        "weir did not stop cleanly: {}",
        tail(&weir.log_text())
    );
    let again = weir.log_text();
    assert!(
        !again[from..].contains("restored from the changelog"),
        "a current store restored records: {}",
        tail(&again[from..])
    );
    s.drop_table();
}

/// A kill between the changelog's commit and the local batch leaves the changelog ahead;
/// the restart restores the difference, adopts it, and is killed at once, before its first
/// checkpoint. The next restart finds the store current (its changelog positions say so)
/// but its local checkpoint older than the restored entries: it must resume from the
/// partition records the restore put in the store, not from the checkpoint, or the records
/// between the two count twice. (The crash test found it with seed 0x18ed65f213e17b9b:
/// a kill at `changelog.committed`, then one at `assigned`.) The restarts leave a backlog
/// that the consumer reads unevenly across partitions, and the stale members of the killed
/// runs first give the new one only some partitions: with one watermark for the instance, a
/// partition that raced ahead made a lagging one's events late (the table ended short). Each
/// partition's windows now close by its own watermark.
#[test]
fn a_kill_right_after_a_restore_counts_nothing_twice() {
    let Some(broker) = changelog_broker() else {
        return;
    };
    let s = Scenario::with_step("rekill", 20_000, 1_000, 0x5eed_0014, 5).with_changelog();
    s.create_topics(&broker);
    let args = s.args(&broker);
    let n = s.batches.len();
    let run_to_hook = |hook: &str| -> String {
        let from = std::fs::metadata(s.log()).map(|m| m.len()).unwrap_or(0) as usize;
        let mut w = WeirProcess::start(&args, s.log(), &[("WEIR_TEST_SIGKILL_AT", hook)]);
        let deadline = Instant::now() + Duration::from_secs(90);
        while w.exited().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if w.exited().is_none() {
            w.sigkill();
        }
        let log = w.log_text();
        let own = log[from.min(log.len())..].to_string();
        let name = hook.split(':').next().unwrap_or(hook);
        assert!(
            own.contains(&format!("test hook: SIGKILL at {name} #")),
            "weir did not reach its hook {hook}: {}",
            tail(&own)
        );
        own
    };
    std::thread::scope(|scope| {
        let producer =
            scope.spawn(|| s.produce(&broker.bootstrap, 0..n / 2, Duration::from_millis(100)));
        run_to_hook("changelog.committed:1");
        producer.join().expect("producer thread");
    });
    let second = run_to_hook("assigned:1");
    assert!(
        second.contains("restored from the changelog"),
        "the restart after a kill past the changelog's commit restored nothing: {}",
        tail(&second)
    );
    let mut weir = WeirProcess::start(&args, s.log(), &[]);
    s.produce(&broker.bootstrap, n / 2..n, Duration::from_millis(20));
    let rows = s.wait_for_table(Duration::from_secs(180), &mut || weir.exited().is_none());
    assert!(
        weir.stop(),
        "weir did not stop cleanly: {}",
        tail(&weir.log_text())
    );
    s.check_all(&broker, &rows);
    s.drop_table();
}

/// A kill after the changelog's commit and before the local batch, with a file sink: the
/// restart rolls the state forward from the changelog, so nothing of that checkpoint is
/// processed again, and the file must keep what the checkpoint flushed. (Cutting the file
/// back to the older checkpoint's length lost that checkpoint's results.)
#[test]
fn a_kill_after_the_changelog_commit_keeps_the_file_sinks_results() {
    let Some(broker) = changelog_broker() else {
        return;
    };
    let s = Scenario::with_step("filekeep", 20_000, 1_000, 0x5eed_0015, 5).with_changelog();
    s.create_topics(&broker);
    let out = s.dir.path().join("results.jsonl");
    let mut args = s.args(&broker);
    args.extend(["--output".to_string(), out.display().to_string()]);
    let n = s.batches.len();
    std::thread::scope(|scope| {
        let producer =
            scope.spawn(|| s.produce(&broker.bootstrap, 0..3 * n / 4, Duration::from_millis(100)));
        // The first checkpoint comes with the assignment, the second and third after 5,000
        // and 10,000 events: the third has results to flush beyond the second's.
        let hook = "changelog.committed:3";
        let mut w = WeirProcess::start(&args, s.log(), &[("WEIR_TEST_SIGKILL_AT", hook)]);
        let deadline = Instant::now() + Duration::from_secs(90);
        while w.exited().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if w.exited().is_none() {
            w.sigkill();
        }
        let log = w.log_text();
        assert!(
            log.contains("test hook: SIGKILL at changelog.committed #"),
            "weir did not reach its hook {hook}: {}",
            tail(&log)
        );
        producer.join().expect("producer thread");
    });
    let from = std::fs::metadata(s.log()).map(|m| m.len()).unwrap_or(0) as usize;
    let mut weir = WeirProcess::start(&args, s.log(), &[]);
    s.produce(&broker.bootstrap, 3 * n / 4..n, Duration::from_millis(20));
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut got = file_results(&out);
    while got.len() < s.expected.len() && Instant::now() < deadline && weir.exited().is_none() {
        std::thread::sleep(Duration::from_millis(200));
        got = file_results(&out);
    }
    assert!(
        weir.stop(),
        "weir did not stop cleanly: {}",
        tail(&weir.log_text())
    );
    let log = weir.log_text();
    let own = &log[from.min(log.len())..];
    assert!(
        own.contains("restored from the changelog")
            && own.contains("the file outputs keep what that checkpoint flushed"),
        "the restart did not roll forward past the killed checkpoint: {}",
        tail(own)
    );
    // Meaningful only when the killed checkpoint flushed results the one before it had not:
    // then a restart that cut the files to the older length would lose them.
    let field = |name: &str| -> u64 {
        own.split(&format!("{name}="))
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    assert!(
        field("kept_bytes") > field("checkpointed_bytes"),
        "the killed checkpoint flushed nothing new, so the test proves nothing: {}",
        tail(own)
    );
    weir_tests::scenario::assert_same("file sink", &file_results(&out), &s.expected);
    // The killed run's checkpoint counters miss the records of the checkpoint the changelog
    // committed; the roll forward counts them, so every record is counted once.
    let records: usize = s.batches.iter().map(Vec::len).sum();
    let stopped = own
        .lines()
        .find_map(|l| l.split("stopped; ").nth(1))
        .unwrap_or_default();
    assert!(
        stopped.starts_with(&format!("{records} events in,")),
        "the restart counted other than {records} records: {stopped:?}"
    );
}

/// A results file's (user, window start) -> (events, total), sentinels excluded. A window
/// written twice (at least once) must have the same value both times.
fn file_results(path: &std::path::Path) -> weir_tests::scenario::Aggregates {
    let mut got = weir_tests::scenario::Aggregates::new();
    let text = std::fs::read_to_string(path).unwrap_or_default();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("a JSON result line");
        let user = v["user"].as_str().unwrap_or_default().to_string();
        if user.starts_with("zz-sentinel") {
            continue;
        }
        let window = v["window_start"].as_i64().expect("window_start");
        let value = (
            v["events"].as_i64().expect("events"),
            v["total"].as_i64().expect("total"),
        );
        if let Some(before) = got.insert((user.clone(), window), value) {
            assert_eq!(
                before, value,
                "{user} at {window} written twice with other values"
            );
        }
    }
    got
}

/// Two instances of one pipeline share its four partitions through the consumer group;
/// the second one's arrival moves two partitions, with their state, from the first
/// (revoked, checkpointed, restored from the changelog). Then the first is SIGKILLed
/// mid-stream and the second takes its partitions, restoring them from the changelog. The
/// PostgreSQL table ends exact: no window lost, none counted twice.
#[test]
fn two_instances_share_the_partitions_and_one_takes_over_after_a_sigkill() {
    let Some(broker) = changelog_broker() else {
        return;
    };
    let s = Scenario::with_step("pair", 30_000, 1_000, 0x5eed_0013, 5).with_changelog();
    s.create_topics(&broker);
    let args_a = s.args(&broker);
    let (args_b, log_b) = other_instance(&s, &args_a, "b");
    let n = s.batches.len();
    let mut a = WeirProcess::start(&args_a, s.log(), &[]);
    s.produce(&broker.bootstrap, 0..n / 3, Duration::from_millis(20));
    wait_first_results(&s, &mut a);
    let mut b = WeirProcess::start(&args_b, log_b, &[]);
    wait_log(&mut b, 0, "partitions assigned", Duration::from_secs(60));
    wait_log(&mut a, 0, "partitions revoked", Duration::from_secs(60));
    s.produce(
        &broker.bootstrap,
        n / 3..2 * n / 3,
        Duration::from_millis(20),
    );
    std::thread::sleep(Duration::from_secs(2));
    let from_b = b.log_text().len();
    a.sigkill();
    // A's partitions come to B once A's session times out.
    wait_log(
        &mut b,
        from_b,
        "partitions assigned",
        Duration::from_secs(60),
    );
    s.produce(&broker.bootstrap, 2 * n / 3..n, Duration::from_millis(20));
    let waiting = Instant::now();
    let mut told = false;
    let rows = s.wait_for_table(Duration::from_secs(240), &mut || {
        let alive = b.exited().is_none();
        // The table's timeout prints A's log; B's is the one that matters by then.
        if !alive || (!told && waiting.elapsed() > Duration::from_secs(230)) {
            told = true;
            eprintln!("weir B's log: {}", tail(&b.log_text()));
        }
        alive
    });
    assert!(
        b.stop(),
        "weir B did not stop cleanly: {}",
        tail(&b.log_text())
    );
    let log_b = b.log_text();
    let restores = log_b.matches("restored from the changelog").count();
    assert!(
        restores > 0,
        "B never restored a partition from the changelog: {}",
        tail(&log_b)
    );
    eprintln!("instance B restored {restores} partitions from the changelog");
    s.check_all(&broker, &rows);
    s.drop_table();
}

/// Fencing (exactly-once): a second process started mid-run with the first one's identity
/// (the same `--instance-id`, so the same `transactional.id` and `group.instance.id`) on a
/// state directory of its own fences the first. The first stops writing, says why and exits
/// non-zero (it does not retry: that would fence the newcomer in turn); the second restores
/// the state from the changelog and finishes. A `read_committed` reader sees every result
/// and every dead letter once, and the table is exact.
#[test]
fn a_second_instance_with_the_same_identity_fences_the_first() {
    let Some(broker) = changelog_broker() else {
        return;
    };
    let s = Scenario::with_step("fence", 30_000, 1_000, 0x5eed_0031, 5)
        .with_changelog()
        .exactly_once();
    s.create_topics(&broker);
    let args_a = s.args(&broker);
    let state_b = s.dir.path().join("state-b");
    let args_b: Vec<String> = args_a
        .iter()
        .map(|a| {
            if *a == s.state_dir().display().to_string() {
                state_b.display().to_string()
            } else {
                a.clone()
            }
        })
        .collect();
    let n = s.batches.len();
    let mut a = WeirProcess::start(&args_a, s.log(), &[]);
    s.produce(&broker.bootstrap, 0..n / 2, Duration::from_millis(20));
    wait_first_results(&s, &mut a);
    let mut b = WeirProcess::start(&args_b, s.dir.path().join("weir-b.log"), &[]);
    let deadline = Instant::now() + Duration::from_secs(90);
    while a.exited().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = a.exited();
    let log_a = a.log_text();
    assert!(
        status.is_some_and(|c| !c.success()),
        "the first instance was not fenced out ({status:?}): {}",
        tail(&log_a)
    );
    assert!(
        log_a.to_lowercase().contains("fenced"),
        "the first instance exited without saying it was fenced: {}",
        tail(&log_a)
    );
    assert!(
        b.exited().is_none(),
        "the second instance exited: {}",
        tail(&b.log_text())
    );
    s.produce(&broker.bootstrap, n / 2..n, Duration::from_millis(20));
    let rows = s.wait_for_table(Duration::from_secs(240), &mut || b.exited().is_none());
    assert!(
        b.stop(),
        "the second instance did not stop cleanly: {}",
        tail(&b.log_text())
    );
    let log_b = b.log_text();
    assert!(
        log_b.contains("restored from the changelog"),
        "the second instance restored nothing: {}",
        tail(&log_b)
    );
    let (counts, dead) = s.check_all(&broker, &rows);
    assert_eq!(counts.repeated, 0, "results seen twice: {counts:?}");
    assert_eq!(dead, s.dead.len(), "dead letters seen twice or missing");
    eprintln!(
        "fenced: {status:?}; output {counts:?}, {dead} dead letters; first instance's last words: {}",
        log_a.lines().rev().find(|l| l.to_lowercase().contains("fenced")).unwrap_or("")
    );
    s.drop_table();
}

/// Repartition on Apache Kafka: the producer spreads every user's events over 4 partitions
/// at random, and the pipeline (`partitioned_by: []`, `key_by: [user]`) re-keys them by
/// user through `<group>-repartition`. Instance A SIGKILLs itself mid-stream (a hook after
/// 7,000 records of either stage), restarts, is joined by B, and B is SIGKILLed mid-stream
/// too; A finishes alone. Every (user, window) must equal the aggregates computed from the
/// produced events, which only a re-key can give (each partition holds a part of each
/// user's window), with no double count from the re-sent events, and every invalid and
/// late event in the dead-letter topic with its source coordinates.
#[test]
fn a_rekeyed_pipeline_survives_sigkills_and_a_second_instance() {
    let Some(broker) = changelog_broker() else {
        return;
    };
    let s = Scenario::rekeyed("rekey", 40_000, 1_000, 0x5eed_0016, 4).with_changelog();
    s.create_topics(&broker);
    let args = s.args(&broker);
    let n = s.batches.len();
    let out = weir_tests::weir(&["validate", &s.pipeline.display().to_string()]);
    let said = weir_tests::text(&out.stdout);
    assert!(
        said.contains("re-keys through the topic") && said.contains("-repartition"),
        "weir validate does not say the pipeline re-keys: {said}"
    );
    let mut a = WeirProcess::start(&args, s.log(), &[("WEIR_TEST_SIGKILL_AFTER", "7000")]);
    s.produce(&broker.bootstrap, 0..n / 3, Duration::from_millis(10));
    let deadline = Instant::now() + Duration::from_secs(120);
    while a.exited().is_none() {
        assert!(
            Instant::now() < deadline,
            "the kill hook never fired: {}",
            tail(&a.log_text())
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut a = WeirProcess::start(&args, s.dir.path().join("weir-a2.log"), &[]);
    wait_first_results(&s, &mut a);
    let (args_b, log_b) = other_instance(&s, &args, "b");
    let mut b = WeirProcess::start(&args_b, log_b, &[]);
    wait_log(&mut b, 0, "partitions assigned", Duration::from_secs(90));
    std::thread::scope(|scope| {
        let producer = scope.spawn(|| {
            s.produce(
                &broker.bootstrap,
                n / 3..2 * n / 3,
                Duration::from_millis(20),
            )
        });
        std::thread::sleep(Duration::from_secs(2));
        b.sigkill();
        producer.join().expect("producer thread");
    });
    s.produce(&broker.bootstrap, 2 * n / 3..n, Duration::from_millis(10));
    let rows = s.wait_for_table(Duration::from_secs(240), &mut || a.exited().is_none());
    assert!(
        a.stop(),
        "weir A did not stop cleanly: {}",
        tail(&a.log_text())
    );
    s.check_all(&broker, &rows);
    s.drop_table();
}

/// The arguments and log of another instance of `s`'s pipeline: its own state directory and
/// `--instance-id` (suffix `name`), the same group.
fn other_instance(s: &Scenario, args: &[String], name: &str) -> (Vec<String>, PathBuf) {
    let state = s.dir.path().join(format!("state-{name}"));
    let args = args
        .iter()
        .map(|a| {
            if *a == s.state_dir().display().to_string() {
                state.display().to_string()
            } else if *a == format!("{}-instance", s.name) {
                format!("{}-instance-{name}", s.name)
            } else {
                a.clone()
            }
        })
        .collect();
    (args, s.dir.path().join(format!("weir-{name}.log")))
}

/// Scale-out on Apache Kafka: 200,000 events on a 6-partition topic, an instance running
/// alone, then joined by two more (1 -> 3: partitions move with their state), one of them
/// SIGKILLed mid-stream (its partitions move to the others, restored from the changelog),
/// another stopped (3 -> 1), and the first finishing alone. The PostgreSQL table and the last
/// value per key in the output topic equal the aggregates computed independently from the
/// produced events, and every invalid or late event is in the dead-letter topic.
#[test]
fn three_instances_on_six_partitions_resize_and_fail_over() {
    let Some(broker) = changelog_broker() else {
        return;
    };
    let s =
        Scenario::build_on("scale", 200_000, 2_000, 0x5eed_0015, 1, pg_url(), 6).with_changelog();
    s.create_topics(&broker);
    let args = s.args(&broker);
    let n = s.batches.len();
    let quarter = |i: usize| i * n / 4;
    let mut a = WeirProcess::start(&args, s.log(), &[]);
    s.produce(&broker.bootstrap, 0..quarter(1), Duration::from_millis(10));
    wait_first_results(&s, &mut a);
    // 1 -> 3.
    let (args_b, log_b) = other_instance(&s, &args, "b");
    let (args_c, log_c) = other_instance(&s, &args, "c");
    let from_a = a.log_text().len();
    let mut b = WeirProcess::start(&args_b, log_b, &[]);
    let mut c = WeirProcess::start(&args_c, log_c, &[]);
    wait_log(&mut b, 0, "partitions assigned", Duration::from_secs(90));
    wait_log(&mut c, 0, "partitions assigned", Duration::from_secs(90));
    wait_log(
        &mut a,
        from_a,
        "partitions revoked",
        Duration::from_secs(90),
    );
    std::thread::scope(|scope| {
        let producer = scope.spawn(|| {
            s.produce(
                &broker.bootstrap,
                quarter(1)..quarter(3),
                Duration::from_millis(20),
            )
        });
        // B dies mid-stream; its partitions go to A and C once its session times out.
        std::thread::sleep(Duration::from_secs(1));
        let (from_a, from_c) = (a.log_text().len(), c.log_text().len());
        b.sigkill();
        producer.join().expect("producer thread");
        let deadline = Instant::now() + Duration::from_secs(90);
        while !a.log_text()[from_a..].contains("partitions assigned")
            && !c.log_text()[from_c..].contains("partitions assigned")
        {
            assert!(
                Instant::now() < deadline,
                "B's partitions never moved: {}",
                tail(&a.log_text())
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    // 3 -> 1: C stops (a static member does not leave: its partitions move after its
    // session times out).
    let from_a = a.log_text().len();
    assert!(
        c.stop(),
        "weir C did not stop cleanly: {}",
        tail(&c.log_text())
    );
    wait_log(
        &mut a,
        from_a,
        "partitions assigned",
        Duration::from_secs(90),
    );
    s.produce(&broker.bootstrap, quarter(3)..n, Duration::from_millis(10));
    let rows = s.wait_for_table(Duration::from_secs(240), &mut || a.exited().is_none());
    assert!(
        a.stop(),
        "weir A did not stop cleanly: {}",
        tail(&a.log_text())
    );
    let restored: usize = [a.log_text(), c.log_text(), b.log_text()]
        .iter()
        .map(|l| l.matches("restored from the changelog").count())
        .sum();
    assert!(
        restored > 0,
        "no partition was restored from the changelog: {}",
        tail(&a.log_text())
    );
    eprintln!("partitions restored from the changelog: {restored}");
    s.check_all(&broker, &rows);
    s.assert_no_lag(&broker);
    s.drop_table();
}

fn offsets_json(
    broker: &weir_tests::kafka::Broker,
    group: &str,
    extra: &[&str],
) -> serde_json::Value {
    let mut args = vec![
        "offsets",
        "--group",
        group,
        "--brokers",
        &broker.bootstrap,
        "--output",
        "json",
    ];
    args.extend_from_slice(extra);
    let out = weir_tests::weir(&args);
    assert!(
        out.status.success(),
        "weir offsets: {}",
        weir_tests::text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("weir offsets --output json")
}

/// An upgrade: a pipeline that ran without its changelog is started with it (the default
/// now). Its changelog partitions are empty and its store has no position in them, so its
/// first checkpoint writes every entry of its partitions, not only the ones that change
/// afterwards. A new machine (the state directory deleted) then restores the windows that
/// were open at the upgrade; without the full write they would be lost and the table short.
#[test]
fn a_store_from_before_the_changelog_is_written_to_it_in_full() {
    let Some(broker) = changelog_broker() else {
        return;
    };
    let s = Scenario::with_step("upgrade", 20_000, 1_000, 0x5eed_0017, 5).without_changelog();
    s.create_topics(&broker);
    let args = s.args(&broker);
    let n = s.batches.len();
    // Half the traffic without the changelog, then a clean stop.
    let mut weir = WeirProcess::start(&args, s.log(), &[]);
    s.produce(&broker.bootstrap, 0..n / 2, Duration::from_millis(20));
    wait_first_results(&s, &mut weir);
    std::thread::sleep(Duration::from_secs(3));
    assert!(weir.stop(), "weir did not stop: {}", tail(&weir.log_text()));
    // The upgrade: the changelog on. No traffic meanwhile: only the full write can carry
    // the open windows.
    let yaml = std::fs::read_to_string(&s.pipeline).expect("pipeline");
    std::fs::write(
        &s.pipeline,
        yaml.replace("state: {changelog: false}", "state: {changelog: true}"),
    )
    .expect("pipeline");
    let from = weir.log_text().len();
    let mut weir = WeirProcess::start(&args, s.log(), &[]);
    wait_log(
        &mut weir,
        from,
        "partitions assigned",
        Duration::from_secs(60),
    );
    assert!(weir.stop(), "weir did not stop: {}", tail(&weir.log_text()));
    let log = weir.log_text();
    assert!(
        log[from..].contains("predate the changelog"),
        "the upgraded store was not written to the changelog: {}",
        tail(&log[from..])
    );
    // A new machine.
    std::fs::remove_dir_all(s.state_dir()).expect("remove the state directory");
    let from = weir.log_text().len();
    let mut weir = WeirProcess::start(&args, s.log(), &[]);
    wait_log(
        &mut weir,
        from,
        "restored from the changelog",
        Duration::from_secs(60),
    );
    s.produce(&broker.bootstrap, n / 2..n, Duration::from_millis(20));
    let rows = s.wait_for_table(Duration::from_secs(180), &mut || weir.exited().is_none());
    assert!(weir.stop(), "weir did not stop: {}", tail(&weir.log_text()));
    s.check_all(&broker, &rows);
    s.drop_table();
}
