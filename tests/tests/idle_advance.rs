//! `watermark.idle_advance` on a real broker (`WEIR_TEST_KAFKA`, default Apache Kafka): the
//! traffic stops without the sentinel records that would move every partition's watermark
//! past the last windows, so those windows close only because the wall clock moves the
//! watermark once the source has been quiet for `idle_advance`.

use std::time::{Duration, Instant};
use weir_tests::kafka::{real_broker, WeirProcess};
use weir_tests::scenario::{assert_same, Scenario};

/// A scenario whose definition sets `idle_advance`.
fn scenario(name: &str, seed: u64, idle: Option<&str>) -> Scenario {
    let s = Scenario::with_step(name, 2_000, 200, seed, 10);
    let yaml = std::fs::read_to_string(&s.pipeline).expect("pipeline");
    let wm = "watermark: {max_out_of_orderness: 3s";
    assert!(yaml.contains(wm), "{yaml}");
    let yaml = match idle {
        Some(d) => yaml.replace(wm, &format!("{wm}, idle_advance: {d}")),
        None => yaml,
    };
    std::fs::write(&s.pipeline, yaml).expect("pipeline");
    s
}

#[test]
fn the_last_windows_close_once_the_source_is_quiet_for_idle_advance() {
    let Some(broker) = real_broker() else { return };
    let s = scenario("idle", 0x1d1e_0001, Some("2s"));
    s.create_topics(&broker);
    // Every batch but the last: the sentinels that would close the last windows stay out.
    let n = s.batches.len();
    s.produce(&broker.bootstrap, 0..n - 1, Duration::from_millis(20));
    let mut weir = WeirProcess::start(&s.args(&broker), s.log(), &[]);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut got = s.table_rows().unwrap_or_default();
    while got != s.expected && Instant::now() < deadline && weir.exited().is_none() {
        std::thread::sleep(Duration::from_millis(250));
        got = s.table_rows().unwrap_or_default();
    }
    let log = weir.log_text();
    assert!(weir.stop(), "weir did not stop cleanly: {log}");
    assert_same("the table after the traffic stopped", &got, &s.expected);
    assert!(
        log.contains(
            "no record for watermark.idle_advance: the watermark moved with the wall clock"
        ),
        "{log}"
    );
}

/// The control: without `idle_advance` the same traffic leaves the last windows open, so
/// the test above passes because of it.
#[test]
fn without_idle_advance_the_last_windows_stay_open() {
    let Some(broker) = real_broker() else { return };
    let s = scenario("noidle", 0x1d1e_0002, None);
    s.create_topics(&broker);
    let n = s.batches.len();
    s.produce(&broker.bootstrap, 0..n - 1, Duration::from_millis(20));
    let mut weir = WeirProcess::start(&s.args(&broker), s.log(), &[]);
    // Results arrive (windows behind the watermark close), then nothing more for 8 s:
    // four times the other test's idle_advance.
    let deadline = Instant::now() + Duration::from_secs(120);
    while s.table_events() == 0 && Instant::now() < deadline && weir.exited().is_none() {
        std::thread::sleep(Duration::from_millis(250));
    }
    std::thread::sleep(Duration::from_secs(8));
    let got = s.table_rows().unwrap_or_default();
    let log = weir.log_text();
    assert!(weir.stop(), "weir did not stop cleanly: {log}");
    assert!(!got.is_empty(), "no results at all: {log}");
    let open: Vec<_> = s
        .expected
        .keys()
        .filter(|k| !got.contains_key(*k))
        .collect();
    assert!(
        !open.is_empty(),
        "every window closed without idle_advance: the test above proves nothing"
    );
}
