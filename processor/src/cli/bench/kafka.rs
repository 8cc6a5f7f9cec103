//! `weir bench --kafka`: the Kafka path against a raw consumer on the same topic, and with
//! `--changelog` / `--compare-instances` the changelog's size, its restore, and 2 instances
//! against 1.

use super::{bid_padded, BenchArgs, Rng};
use crate::monitor::peak_rss_bytes;
use crate::monitor::telemetry::Live;
use crate::pipeline::{load_file, Delivery, SinkDef, SinkKind};
use crate::runtime::driver::{Driver, DriverOptions};
use crate::runtime::kafka::{run_kafka, KafkaOptions};
use crate::runtime::outputs::Connections;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The Kafka path: the same pipeline fed by a consumer group, against a raw consumer.
pub(super) fn bench_kafka(a: &BenchArgs, brokers: &str) -> anyhow::Result<ExitCode> {
    use crate::sink::kafka::{ensure_topic, Sender};
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Message, OwnedHeaders};

    let loaded = load_file(&a.pipeline, None);
    let Some(mut plan) = loaded.plan else {
        anyhow::bail!("{} is not a valid pipeline", a.pipeline.display());
    };
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let topic = format!("weir-bench-{stamp}");
    plan.source.topics = vec![topic.clone()];
    plan.source.group = format!("weir-bench-{stamp}");
    set_changelog(&mut plan, a);
    // The restore below needs the plan again (the run consumes this one).
    let restore_plan = a.changelog.then(|| {
        let mut p = load_file(&a.pipeline, None).plan;
        if let Some(p) = p.as_mut() {
            p.source.topics = plan.source.topics.clone();
            p.source.group = plan.source.group.clone();
            p.state.changelog = true;
        }
        p
    });
    let partitions = a.partitions.max(1);
    ensure_topic(brokers, &topic, partitions, 1, &a.kafka_config)?;
    // The padding that makes a value about --value-bytes long (the rest is ~66 bytes).
    let mut probe = Vec::new();
    bid_padded(
        &mut Rng(1),
        a.keys.max(1),
        1_767_225_600_000,
        "",
        &mut probe,
    );
    let extra = "x".repeat(a.value_bytes.saturating_sub(probe.len() + 2));

    // 1. Pre-produce, keyed by bidder (so key_by bidder matches the partitioning).
    let keys = a.keys.max(1);
    let per_window = a.events_per_window.unwrap_or(keys * 2).max(1);
    let step_us = 10_000_000f64 / per_window as f64;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let base: i64 = 1_767_225_600_000;
    let mut sender = Sender::new(brokers, "bench", &a.kafka_config)?;
    let mut buf = Vec::with_capacity(128);
    let t0 = Instant::now();
    for seq in 0..a.events {
        let t = base + ((seq as f64 * step_us) / 1000.0) as i64;
        bid_padded(&mut rng, keys, t, &extra, &mut buf);
        // The bidder is the second field: re-derive it for the key.
        let bidder = decode_bidder(&buf).unwrap_or(0).to_string();
        sender.send(
            &topic,
            Some(bidder.as_bytes()),
            &buf,
            OwnedHeaders::new(),
            None,
        )?;
    }
    sender.flush()?;
    let produce_secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "  produced {} events to {topic} in {produce_secs:.1} s ({:.0}/s)",
        a.events,
        a.events as f64 / produce_secs
    );

    // 2. A raw consumer: subscribe, poll until every record is read, touch each payload. It
    // has the pipeline's consumer settings (prefetch bounds, fetch backoff), so the ratio
    // compares processing, not configurations.
    let raw: BaseConsumer = crate::source::kafka::consumer_config(
        brokers,
        &format!("weir-bench-raw-{stamp}"),
        None,
        &a.kafka_config,
    )
    .set("statistics.interval.ms", "0")
    .create()?;
    raw.subscribe(&[&topic])?;
    let mut n = 0u64;
    let mut bytes = 0u64;
    let mut first = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    while n < a.events && Instant::now() < deadline {
        if let Some(Ok(m)) = raw.poll(Duration::from_millis(100)) {
            first.get_or_insert_with(Instant::now);
            bytes += m.payload().map(|p| p.len() as u64).unwrap_or(0);
            n += 1;
        }
    }
    let raw_secs = first.map(|f| f.elapsed().as_secs_f64()).unwrap_or(f64::NAN);
    drop(raw);
    anyhow::ensure!(
        n == a.events,
        "the raw consumer read {n} of {} records",
        a.events
    );

    // 3. The pipeline, from its first record to its last.
    let state = tempfile::Builder::new().prefix("weir-bench-").tempdir()?;
    // A stateless pipeline's results are one per bid: encoded to Avro as for a Kafka sink,
    // then dropped, as the offline bench does (a file would measure JSON and the disk).
    let stateless = plan.stateless;
    let out = state.path().join("results.jsonl");
    let opts = KafkaOptions {
        output: (!stateless).then(|| out.display().to_string()),
        discard: stateless,
        stop_after: Some(a.events),
        sample_latency: true,
        ..options(a, brokers, state.path())
    };
    let mut s = run_kafka(plan, &opts, Arc::new(AtomicBool::new(false)))?;
    let weir_secs = s.active.map(|d| d.as_secs_f64()).unwrap_or(f64::NAN);
    let raw_rate = a.events as f64 / raw_secs;
    let weir_rate = s.counters.events_in as f64 / weir_secs;
    s.latencies_ns.sort_unstable();
    let pct = |q: f64| {
        let v = &s.latencies_ns;
        v.get(((v.len() as f64 * q) as usize).min(v.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "weir bench --kafka: {} events ({:.1} MB, {} B per value), {} bidders, {partitions} partitions, broker {brokers}",
        a.events,
        bytes as f64 / 1e6,
        bytes / a.events.max(1),
        keys
    );
    println!("  raw consumer    {raw_rate:.0} events/s (poll and touch each payload)");
    let work = match stateless {
        true => "decode, filter, map, key, Avro encode, commits",
        false => "decode, window, RocksDB checkpoints, commits",
    };
    println!(
        "  weir pipeline   {weir_rate:.0} events/s ({work}; {} results, {} checkpoints)",
        s.counters.results_out, s.checkpoints
    );
    println!("  ratio           {:.2}", weir_rate / raw_rate);
    println!(
        "  per event       p50 {} ns, p99 {} ns (poll to processed, every 16th record)",
        pct(0.50),
        pct(0.99)
    );
    println!(
        "  peak RSS        {:.1} MiB",
        peak_rss_bytes().unwrap_or(0) as f64 / 1048576.0
    );
    if let Some(Some(p)) = restore_plan {
        bench_restore(p, a, brokers, partitions)?;
    }
    if a.compare_instances {
        let one = instances_rate(1, a, brokers, &topic, stamp, None)?;
        let two = instances_rate(2, a, brokers, &topic, stamp, None)?;
        println!(
            "  1 instance      {one:.0} events/s (a new group; first record to all processed)"
        );
        println!(
            "  2 instances     {two:.0} events/s (one group, two state dirs, in this process)"
        );
        println!(
            "  2 vs 1          {:.2} (two processing threads on this machine's cores, shared with the broker)",
            two / one
        );
    }
    if a.compare_delivery {
        // Alternating, so a drift of the machine's speed does not favour either.
        let mut alo = Vec::new();
        let mut eos = Vec::new();
        for _ in 0..2 {
            alo.push(instances_rate(
                1,
                a,
                brokers,
                &topic,
                stamp,
                Some(Delivery::AtLeastOnce),
            )?);
            eos.push(instances_rate(
                1,
                a,
                brokers,
                &topic,
                stamp,
                Some(Delivery::ExactlyOnce),
            )?);
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        println!(
            "  at least once   {:.0} events/s ({alo:.0?}; results to a Kafka topic, changelog on, 1 s checkpoints)",
            mean(&alo)
        );
        println!(
            "  exactly once    {:.0} events/s ({eos:.0?}; one transaction per checkpoint)",
            mean(&eos)
        );
        println!("  exactly / least {:.2}", mean(&eos) / mean(&alo));
        // End to end at half the exactly-once rate: live traffic stamped with the wall
        // clock, results read back by a read_committed consumer.
        let rate = (mean(&eos) / 2.0).max(1.0);
        for d in [Delivery::AtLeastOnce, Delivery::ExactlyOnce] {
            let (n, p50, p99) = latency(d, rate, a, brokers, stamp)?;
            println!(
                "  {:<15} end to end p50 {p50} ms, p99 {p99} ms ({n} results at {rate:.0} events/s; produce to visible for read_committed)",
                d.name()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Results' end-to-end latency in delivery mode `d`: bids stamped with the wall clock are
/// produced at `rate` per second for 20 s to a new topic while the pipeline runs; a window
/// closes when a partition's bid stamped at its end plus `max_out_of_orderness` (and grace)
/// arrives, so a result's latency is when a `read_committed` consumer sees it minus that
/// moment. Returns (results measured, p50 ms, p99 ms).
fn latency(
    d: Delivery,
    rate: f64,
    a: &BenchArgs,
    brokers: &str,
    stamp: u128,
) -> anyhow::Result<(usize, i64, i64)> {
    use crate::sink::kafka::{ensure_topic, Sender};
    use apache_avro::types::Value;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Message, OwnedHeaders};
    use std::sync::atomic::Ordering;

    let Some(mut plan) = load_file(&a.pipeline, None).plan else {
        anyhow::bail!("{} is not a valid pipeline", a.pipeline.display());
    };
    let name = format!("weir-bench-{stamp}-lat-{}", d.name());
    let out = format!("{name}-out");
    let partitions = a.partitions.max(1);
    ensure_topic(brokers, &name, partitions, 1, &a.kafka_config)?;
    // Created here, so the reader's subscription finds it at once.
    ensure_topic(brokers, &out, partitions, 1, &a.kafka_config)?;
    plan.source.topics = vec![name.clone()];
    plan.source.group = name.clone();
    plan.delivery = d;
    plan.state.changelog = true;
    plan.sinks = vec![SinkDef {
        kind: SinkKind::Kafka,
        path: None,
        topic: Some(out.clone()),
        partitions: Some(partitions),
        replication_factor: None,
        schema_id: Some(1),
        url: None,
        table: None,
    }];
    let closes_after = plan.source.max_out_of_orderness_ms + plan.window.grace;
    let schema = plan.output.schema.clone();
    let dir = tempfile::Builder::new()
        .prefix("weir-bench-lat")
        .tempdir()?;
    let opts = options(a, brokers, dir.path());
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|t| t.as_millis() as i64)
            .unwrap_or(0)
    };
    let stop = Arc::new(AtomicBool::new(false));
    let produced = AtomicBool::new(false);
    let mut latencies: Vec<i64> = Vec::new();
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let runner = {
            let stop = stop.clone();
            scope.spawn(move || run_kafka(plan, &opts, stop))
        };
        let producer = scope.spawn(|| -> anyhow::Result<()> {
            let mut sender = Sender::new(brokers, "bench-latency", &a.kafka_config)?;
            let mut rng = Rng(0x5EED_1A7E);
            let mut buf = Vec::with_capacity(128);
            let started = Instant::now();
            let mut sent = 0u64;
            while started.elapsed() < Duration::from_secs(20) {
                let due = (started.elapsed().as_secs_f64() * rate) as u64;
                if sent >= due {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
                let t = now_ms();
                for _ in sent..due {
                    bid_padded(&mut rng, a.keys.max(1), t, "", &mut buf);
                    let bidder = decode_bidder(&buf).unwrap_or(0).to_string();
                    sender.send(
                        &name,
                        Some(bidder.as_bytes()),
                        &buf,
                        OwnedHeaders::new(),
                        None,
                    )?;
                }
                sent = due;
            }
            sender.flush()?;
            produced.store(true, Ordering::SeqCst);
            Ok(())
        });
        let reader: BaseConsumer = crate::kafka_client::config(
            brokers,
            crate::kafka_client::Role::Tool {
                group: &format!("{name}-reader"),
            },
            &a.kafka_config,
        )
        .set("isolation.level", "read_committed")
        .create()?;
        reader.subscribe(&[&out])?;
        // Bounded: the 20 s of traffic, then until the output is quiet for 5 s.
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut quiet_since: Option<Instant> = None;
        while Instant::now() < deadline {
            match reader.poll(Duration::from_millis(50)) {
                Some(Ok(m)) => {
                    let seen = now_ms();
                    quiet_since = None;
                    let Some(v) = m.payload().filter(|v| v.len() > 5) else {
                        continue;
                    };
                    if let Ok(Value::Record(f)) =
                        apache_avro::from_avro_datum(&schema, &mut &v[5..], None)
                    {
                        let end = f
                            .iter()
                            .find(|(k, _)| k == "window_end")
                            .and_then(|(_, v)| match v {
                                Value::Long(x) | Value::TimestampMillis(x) => Some(*x),
                                _ => None,
                            });
                        if let Some(end) = end {
                            latencies.push(seen - (end + closes_after));
                        }
                    }
                }
                _ => {
                    if produced.load(Ordering::SeqCst) {
                        let q = *quiet_since.get_or_insert_with(Instant::now);
                        if q.elapsed() > Duration::from_secs(5) {
                            break;
                        }
                    }
                }
            }
        }
        stop.store(true, Ordering::SeqCst);
        producer
            .join()
            .map_err(|_| anyhow::anyhow!("the latency producer panicked"))??;
        runner
            .join()
            .map_err(|_| anyhow::anyhow!("the pipeline panicked"))??;
        Ok(())
    })?;
    anyhow::ensure!(!latencies.is_empty(), "no result was read in {}", d.name());
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    Ok((latencies.len(), at(0.50), at(0.99)))
}

/// `n` instances of the pipeline in one new consumer group on `topic`: events per second
/// from the first record any of them processed until together they processed them all.
/// `delivery`: the pipeline writes its results to a new Kafka topic in that mode (with its
/// changelog), instead of a file.
fn instances_rate(
    n: usize,
    a: &BenchArgs,
    brokers: &str,
    topic: &str,
    stamp: u128,
    delivery: Option<Delivery>,
) -> anyhow::Result<f64> {
    let dir = tempfile::Builder::new().prefix("weir-bench-x").tempdir()?;
    let stop = Arc::new(AtomicBool::new(false));
    let lives: Vec<Arc<Live>> = (0..n).map(|_| Arc::new(Live::new("bench"))).collect();
    let mut runs = Vec::new();
    // A new group (and output topic) for every run: each reads the topic from the start.
    static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mode = delivery
        .map(|d| {
            let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            format!("-{}-{run}", d.name())
        })
        .unwrap_or_default();
    for (i, live) in lives.iter().enumerate() {
        let Some(mut plan) = load_file(&a.pipeline, None).plan else {
            anyhow::bail!("{} is not a valid pipeline", a.pipeline.display());
        };
        plan.source.topics = vec![topic.to_string()];
        plan.source.group = format!("weir-bench-{stamp}-x{n}{mode}");
        set_changelog(&mut plan, a);
        if let Some(d) = delivery {
            plan.delivery = d;
            plan.state.changelog = true;
            plan.sinks = vec![SinkDef {
                kind: SinkKind::Kafka,
                path: None,
                topic: Some(format!("weir-bench-{stamp}-out{mode}")),
                partitions: Some(a.partitions.max(1)),
                replication_factor: None,
                schema_id: Some(1),
                url: None,
                table: None,
            }];
        }
        let at = dir.path().join(i.to_string());
        let opts = KafkaOptions {
            output: delivery
                .is_none()
                .then(|| at.join("results.jsonl").display().to_string()),
            live: Some(live.clone()),
            ..options(a, brokers, &at)
        };
        runs.push((plan, opts));
    }
    let secs = std::thread::scope(|scope| {
        let handles: Vec<_> = runs
            .into_iter()
            .map(|(plan, opts)| {
                let stop = stop.clone();
                scope.spawn(move || run_kafka(plan, &opts, stop))
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(600);
        let mut first = None;
        loop {
            let done: u64 = lives.iter().map(|l| l.snapshot().counters.events_in).sum();
            if done > 0 {
                first.get_or_insert_with(Instant::now);
            }
            if done >= a.events || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let secs = first.map(|f| f.elapsed().as_secs_f64());
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        for h in handles {
            let _ = h.join();
        }
        secs
    });
    let secs = secs.ok_or_else(|| anyhow::anyhow!("{n} instances processed nothing"))?;
    Ok(a.events as f64 / secs)
}

/// The changelog a `--kafka --changelog` run wrote, restored into an empty state directory
/// as a new machine would: records, bytes (per input event), window entries and seconds.
fn bench_restore(
    plan: crate::pipeline::plan::Plan,
    a: &BenchArgs,
    brokers: &str,
    partitions: i32,
) -> anyhow::Result<()> {
    let plan: &'static crate::pipeline::plan::Plan = Box::leak(Box::new(plan));
    let dir = tempfile::Builder::new().prefix("weir-restore-").tempdir()?;
    let conn = Connections {
        brokers: Some(brokers.to_string()),
        kafka_config: a.kafka_config.clone(),
        ..Default::default()
    };
    let dead = dir.path().join("dead.jsonl").display().to_string();
    let mut d = Driver::open(
        plan,
        DriverOptions {
            state_dir: &dir.path().join("state"),
            conn: &conn,
            output: None,
            discard: true,
            dead_letter: Some(&dead),
            default_dead_letter: dead.clone(),
            input_name: "",
            container_schema: None,
            live: Arc::new(Live::new(&plan.name)),
            sample_latency: false,
            producer: None,
        },
    )?;
    let parts: Vec<u32> = (0..partitions.max(1) as u32).collect();
    let t = Instant::now();
    let read =
        crate::runtime::kafka::changelog::restore(&mut d, plan, brokers, &a.kafka_config, &parts)?;
    let secs = t.elapsed().as_secs_f64();
    let records: u64 = read.values().map(|r| r.records).sum();
    let bytes: u64 = read.values().map(|r| r.bytes).sum();
    let entries = d.store.iter_prefix(b"w").count();
    println!(
        "  changelog       {records} records, {:.1} MB: {:.1} B per input event",
        bytes as f64 / 1e6,
        bytes as f64 / a.events.max(1) as f64
    );
    println!(
        "  restore         {records} records into an empty state dir in {secs:.2} s ({:.0} records/s); {entries} window entries restored",
        records as f64 / secs
    );
    Ok(())
}

/// The bidder of a generated bid: the second zigzag varint after the 5-byte frame.
fn decode_bidder(b: &[u8]) -> Option<i64> {
    let mut i = 5;
    let mut read = || {
        let mut z = 0u64;
        let mut shift = 0;
        loop {
            let byte = *b.get(i)?;
            i += 1;
            z |= ((byte & 0x7f) as u64) << shift;
            if byte < 0x80 {
                return Some(((z >> 1) as i64) ^ -((z & 1) as i64));
            }
            shift += 7;
        }
    };
    read()?;
    read()
}

/// `--changelog` turns the pipeline's changelog on, `--no-changelog` off; neither keeps the
/// definition's (`state.changelog`, on by default).
fn set_changelog(plan: &mut crate::pipeline::plan::Plan, a: &BenchArgs) {
    if a.no_changelog {
        plan.state.changelog = false;
    } else {
        plan.state.changelog |= a.changelog;
    }
}

/// A bench run's options: state and dead letters under `dir`, 1 s checkpoints, the user's
/// `--kafka-config`; each run sets what differs.
fn options(a: &BenchArgs, brokers: &str, dir: &std::path::Path) -> KafkaOptions {
    KafkaOptions {
        state_dir: dir.join("state"),
        conn: Connections {
            brokers: Some(brokers.to_string()),
            kafka_config: a.kafka_config.clone(),
            ..Default::default()
        },
        instance_id: None,
        checkpoint_every: a.checkpoint_every,
        checkpoint_interval: Duration::from_secs(1),
        output: None,
        dead_letter: Some(dir.join("dead.jsonl").display().to_string()),
        kafka_config: a.kafka_config.clone(),
        stop_after: None,
        live: None,
        sample_latency: false,
        discard: false,
    }
}
