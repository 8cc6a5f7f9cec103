//! The proof of the guarantee, on a real broker (`WEIR_TEST_KAFKA`, default tansu):
//! SIGKILL Weir at random moments while traffic arrives, and stop the broker mid-run;
//! the PostgreSQL table and the Kafka topic must still equal the aggregates computed
//! independently, and every bad record must be in the dead-letter topic.

use std::time::{Duration, Instant};
use weir_tests::kafka::{real_broker, Rng, WeirProcess};
use weir_tests::scenario::Scenario;

#[test]
fn sigkill_at_random_moments_loses_nothing_and_doubles_nothing() {
    let Some(broker) = real_broker() else { return };
    let s = Scenario::new("crash", 200_000, 1_000, 0x5eed_0001);
    s.create_topics(&broker);
    let args = s.args(&broker);
    let mut weir = WeirProcess::start(&args, s.log(), &[]);

    // Steady traffic from another thread while this one kills and restarts Weir.
    let batches = s.batches.len();
    let bootstrap = broker.bootstrap.clone();
    std::thread::scope(|scope| {
        let producer =
            scope.spawn(|| s.produce(&bootstrap, 0..batches, Duration::from_millis(500)));
        let mut rng = Rng(0xdead_beef);
        let mut kills = 0;
        while kills < 6 {
            // Kill mid-stream: once this instance has delivered results (it has rejoined the
            // group and is processing), at a random moment within the next 2 s.
            let before = s.table_events();
            let deadline = Instant::now() + Duration::from_secs(90);
            while s.table_events() <= before {
                assert!(
                    Instant::now() < deadline,
                    "no progress after restart: {}",
                    tail(&weir.log_text())
                );
                assert!(
                    weir.exited().is_none(),
                    "weir exited: {}",
                    tail(&weir.log_text())
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            std::thread::sleep(Duration::from_millis(rng.below(2_000)));
            weir.sigkill();
            kills += 1;
            eprintln!(
                "SIGKILL #{kills} with {} events in the table",
                s.table_events()
            );
            weir = WeirProcess::start(&args, s.log(), &[]);
        }
        producer.join().expect("producer thread");
    });

    let rows = s.wait_for_table(Duration::from_secs(300), &mut || weir.exited().is_none());
    assert!(
        weir.stop(),
        "weir did not stop cleanly: {}",
        tail(&weir.log_text())
    );
    let (n, dead) = s.check_all(&broker, &rows);
    let starts = weir.log_text().matches("weir: crash: consuming").count();
    eprintln!(
        "crash test on {}: {} windows, {} events, {n} output records, {dead} dead letters, {starts} starts",
        broker.kind,
        s.expected.len(),
        s.total_events()
    );
    s.drop_table();
}

#[test]
fn broker_outage_mid_run_loses_nothing() {
    let Some(mut broker) = real_broker() else {
        return;
    };
    if !broker.can_restart() {
        eprintln!(
            "SKIPPED: the {} broker cannot be stopped and started by the harness",
            broker.kind
        );
        return;
    }
    let s = Scenario::new("outage", 20_000, 1_000, 0x5eed_0002);
    s.create_topics(&broker);
    let mut weir = WeirProcess::start(&s.args(&broker), s.log(), &[]);
    let half = s.batches.len() / 2;
    s.produce(&broker.bootstrap, 0..half, Duration::from_millis(100));
    // Wait until results flow, then take the broker away for a while.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while s.table_rows().map(|r| r.is_empty()).unwrap_or(true) {
        assert!(
            std::time::Instant::now() < deadline,
            "no results before the outage: {}",
            tail(&weir.log_text())
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    broker.stop();
    eprintln!("broker stopped");
    std::thread::sleep(Duration::from_secs(8));
    assert!(
        weir.exited().is_none(),
        "weir exited during the outage: {}",
        tail(&weir.log_text())
    );
    broker.start();
    eprintln!("broker started");
    s.produce(
        &broker.bootstrap,
        half..s.batches.len(),
        Duration::from_millis(100),
    );
    let rows = s.wait_for_table(Duration::from_secs(240), &mut || weir.exited().is_none());
    assert!(
        weir.stop(),
        "weir did not stop cleanly: {}",
        tail(&weir.log_text())
    );
    s.check_all(&broker, &rows);
    let log = weir.log_text();
    assert!(
        log.contains("retrying") || log.contains("restarting"),
        "the outage is not in the log: {}",
        tail(&log)
    );
    s.drop_table();
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
