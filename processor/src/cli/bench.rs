//! `weir bench`: the offline path under load, with a built-in Nexmark-style generator.
//! decode (Confluent wire Avro) -> key_by bidder -> tumbling 10 s count/sum/max ->
//! checkpoint to RocksDB -> encode results as Avro; with `--stateless`: decode -> filter ->
//! map -> key_by -> encode each bid. Prints events/s, p99 per-event
//! processing time, RocksDB writes per event and peak RSS.

mod kafka;

use crate::monitor::peak_rss_bytes;
use crate::monitor::telemetry::Live;
use crate::pipeline::load_file;
use crate::runtime::driver::{drive_to_end, lock, Cadence, Driver, DriverOptions, Polled, Source};
use crate::runtime::outputs::Connections;
use crate::runtime::RunError;
use crate::source::{Payload, SourceRecord};
use crate::state::checkpoint::Checkpoint;
use anyhow::Context;
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Benchmark the offline path at a given number of distinct keys.
#[derive(Args)]
pub struct BenchArgs {
    /// Events to process.
    #[arg(long, default_value_t = 5_000_000)]
    events: u64,
    /// Distinct bidders (group keys).
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    /// Events per 10 s window of event time (default: twice the keys, so a window sees
    /// most keys).
    #[arg(long)]
    events_per_window: Option<u64>,
    /// Override the pipeline's write-cache bound (entries).
    #[arg(long)]
    cache_entries: Option<usize>,
    /// Checkpoint every this many events.
    #[arg(long, default_value_t = 200_000)]
    checkpoint_every: u64,
    /// Where RocksDB lives (default: a temporary directory).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// The pipeline to run.
    #[arg(long, default_value = "pipelines/nexmark-bids.yaml")]
    pipeline: PathBuf,
    /// Run the stateless pipeline `pipelines/nexmark-bids-clean.yaml` (validate, filter,
    /// map, key: one result per bid, no window state) instead of --pipeline. Its results are
    /// encoded to Avro and dropped.
    #[arg(long)]
    stateless: bool,
    /// Benchmark the Kafka path on this broker instead: pre-produce --events bids to a new
    /// topic of --partitions partitions, read it with a raw rdkafka consumer, then run the
    /// pipeline on it, and print both rates, their ratio, p99 per-event latency and peak RSS.
    #[arg(long, value_name = "HOST:PORT")]
    kafka: Option<String>,
    /// With --kafka: the topic's partitions.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// With --kafka: the size of each record's value in bytes (the bid's `extra` field is
    /// padded to it; at least about 70).
    #[arg(long, default_value_t = 100)]
    value_bytes: usize,
    /// With --kafka: run the pipeline with `state.changelog`, then report the changelog's
    /// bytes per input event and restore it all into an empty state directory, timed.
    #[arg(long)]
    changelog: bool,
    /// With --kafka: run the pipeline without its changelog (`state.changelog: false`), to
    /// compare against a run with it.
    #[arg(long, conflicts_with = "changelog")]
    no_changelog: bool,
    /// With --kafka: also run the pipeline as 1 and then 2 instances sharing a new
    /// consumer group, each timed from its first record until all are processed, and print
    /// the 2-to-1 throughput ratio (both instances and the broker share this machine's
    /// cores: a second instance gains only what an idle core gives).
    #[arg(long)]
    compare_instances: bool,
    /// With --kafka: also run the pipeline twice in each delivery mode, alternating, with
    /// its results to a new Kafka topic and 1 s checkpoints, and print the exactly-once to
    /// at-least-once throughput ratio.
    #[arg(long)]
    compare_delivery: bool,
    /// Extra librdkafka properties for the Kafka benchmark's clients (repeatable).
    #[arg(long, value_parser = super::parse_kv)]
    kafka_config: Vec<(String, String)>,
}

/// A deterministic xorshift generator: the benchmark needs no statistical quality.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn zigzag(n: i64, out: &mut Vec<u8>) {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

fn string(s: &str, out: &mut Vec<u8>) {
    zigzag(s.len() as i64, out);
    out.extend_from_slice(s.as_bytes());
}

const CHANNELS: [&str; 4] = ["apple", "google", "facebook", "baidu"];

/// One bid in Confluent wire format (schema id 1), about 100 bytes.
fn bid(rng: &mut Rng, keys: u64, date_time: i64, out: &mut Vec<u8>) {
    bid_padded(
        rng,
        keys,
        date_time,
        "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
        out,
    )
}

/// One bid whose `extra` field is `extra`.
fn bid_padded(rng: &mut Rng, keys: u64, date_time: i64, extra: &str, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&[0, 0, 0, 0, 1]);
    let r = rng.next();
    zigzag((r % 10_000) as i64 + 1000, out); // auction
    zigzag((rng.next() % keys) as i64, out); // bidder
    zigzag(((r >> 20) % 100_000) as i64 + 1, out); // price
    string(CHANNELS[(r >> 40) as usize % 4], out);
    string("https://www.nexmark.com/item.htm?query=1", out);
    zigzag(date_time, out);
    string(extra, out); // padding
}

fn current_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

pub fn run(mut a: BenchArgs) -> anyhow::Result<ExitCode> {
    if a.stateless {
        a.pipeline = PathBuf::from("pipelines/nexmark-bids-clean.yaml");
    }
    if let Some(brokers) = a.kafka.clone() {
        return kafka::bench_kafka(&a, &brokers);
    }
    let loaded = load_file(&a.pipeline, None);
    let Some(mut plan) = loaded.plan else {
        for p in &loaded.problems {
            eprintln!("error: {p}");
        }
        anyhow::bail!("{} is not a valid pipeline", a.pipeline.display());
    };
    if let Some(c) = a.cache_entries {
        plan.state.cache_entries = c.max(1);
    }
    let tmp = tempfile::Builder::new().prefix("weir-bench-").tempdir()?;
    let dir = a
        .state_dir
        .clone()
        .unwrap_or_else(|| tmp.path().to_path_buf());
    let keys = a.keys.max(1);
    let per_window = a.events_per_window.unwrap_or(keys * 2).max(1);
    let conn = Connections::default();
    let driver = Driver::open(
        &plan,
        DriverOptions {
            state_dir: &dir,
            conn: &conn,
            output: None,
            discard: true,
            dead_letter: None,
            default_dead_letter: dir.join("dead-letter.jsonl").display().to_string(),
            input_name: "",
            container_schema: None,
            live: Arc::new(Live::new(&plan.name)),
            sample_latency: true,
            producer: None,
        },
    )
    .context("opening the state store")?;
    let mut source = Bids {
        rng: Rng(0x9E37_79B9_7F4A_7C15),
        keys,
        // Event time advances 10 s per `per_window` events, in microsecond steps.
        step_us: 10_000_000f64 / per_window as f64,
        events: a.events,
        next_seq: 0,
        pool: Vec::new(),
        at: 0,
        bytes_in: 0,
        generating: Duration::ZERO,
    };
    let cadence = Cadence {
        every: a.checkpoint_every,
        interval: None,
        stop_after: None,
    };
    let driver = Mutex::new(driver);
    let started = Instant::now();
    let mut s = drive_to_end(&driver, &mut source, &cadence)?;
    // The generator's time is not the pipeline's.
    let busy = started.elapsed().saturating_sub(source.generating);
    let d = lock(&driver);
    let events = s.counters.events_in;

    let samples = &mut s.latencies_ns;
    samples.sort_unstable();
    let pct = |p: f64| {
        samples
            .get(((samples.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(0)
    };
    let checkpoint_times = &mut s.checkpoint_times;
    checkpoint_times.sort();
    let cp99 = checkpoint_times
        .get(((checkpoint_times.len() as f64 - 1.0) * 0.99).max(0.0) as usize)
        .copied()
        .unwrap_or_default();
    let secs = busy.as_secs_f64();
    match plan.stateless {
        true => println!(
            "weir bench: {} events, {} distinct keys, stateless ({})",
            events,
            keys,
            a.pipeline.display()
        ),
        false => println!(
            "weir bench: {} events, {} distinct keys, {} events per 10 s window, cache {} entries",
            events, keys, per_window, plan.state.cache_entries
        ),
    }
    println!(
        "  throughput      {:.0} events/s ({:.1} MB/s of Avro in) on one thread",
        events as f64 / secs,
        source.bytes_in as f64 / secs / 1e6
    );
    println!(
        "  per event       p50 {} ns, p99 {} ns, max {} ns (1 in 16 sampled)",
        pct(0.5),
        pct(0.99),
        samples.last().copied().unwrap_or(0)
    );
    println!(
        "  checkpoints     {} (p99 {:.1} ms)",
        checkpoint_times.len(),
        cp99.as_secs_f64() * 1e3
    );
    println!(
        "  rocksdb writes  {:.3} per input event ({} in all)",
        s.state_writes as f64 / events.max(1) as f64,
        s.state_writes
    );
    println!(
        "  results         {} ({} bytes of Avro), dead letters {}",
        s.counters.results_out,
        s.discarded_bytes,
        s.counters.dead_total()
    );
    println!(
        "  peak RSS        {:.1} MiB",
        peak_rss_bytes().unwrap_or(0) as f64 / 1048576.0
    );
    println!(
        "  state on disk   {:.1} MiB",
        d.store.size_bytes() as f64 / 1048576.0
    );
    Ok(ExitCode::SUCCESS)
}

/// The generator as a [`Source`]: bids in chunks, the time spent generating them kept apart.
/// Its position is the bid's sequence number, so a resumed `--state-dir` goes on after it.
struct Bids {
    rng: Rng,
    keys: u64,
    step_us: f64,
    events: u64,
    next_seq: u64,
    /// The current chunk; the next chunk rewrites these records in place, so their buffers
    /// are reused (freeing each record once processed made the allocator return and
    /// re-fault pages, 20% of the time of `weir bench`).
    pool: Vec<SourceRecord>,
    /// The next record of `pool` to lend.
    at: usize,
    bytes_in: u64,
    generating: Duration,
}

impl Bids {
    const BASE: i64 = 1_767_225_600_000;
    const CHUNK: u64 = 8_192;

    fn bid_at(&mut self, seq: u64, buf: &mut Vec<u8>) {
        let t = Self::BASE + ((seq as f64 * self.step_us) / 1000.0) as i64;
        bid(&mut self.rng, self.keys, t, buf);
    }

    fn refill(&mut self) {
        let t0 = Instant::now();
        let n = Self::CHUNK.min(self.events - self.next_seq);
        let mut buf = Vec::with_capacity(128);
        self.pool.truncate(n as usize);
        while self.pool.len() < n as usize {
            self.pool.push(SourceRecord {
                topic: "nexmark-bids".into(),
                partition: 0,
                offset: 0,
                timestamp: None,
                key: None,
                value: Payload::Bytes(Vec::with_capacity(128)),
                line: 0,
            });
        }
        for i in 0..n {
            let seq = self.next_seq + i;
            self.bid_at(seq, &mut buf);
            self.bytes_in += buf.len() as u64;
            let rec = &mut self.pool[i as usize];
            rec.offset = seq as i64;
            rec.line = seq;
            match &mut rec.value {
                Payload::Bytes(v) => {
                    v.clear();
                    v.extend_from_slice(&buf);
                }
                other => *other = Payload::Bytes(buf.clone()),
            }
        }
        self.at = 0;
        let before = self.next_seq;
        self.next_seq += n;
        if self.next_seq / 1_000_000 != before / 1_000_000 {
            eprintln!(
                "  ... {} events, RSS {:.0} MiB",
                self.next_seq,
                current_rss_mib()
            );
        }
        self.generating += t0.elapsed();
    }
}

impl Source for Bids {
    fn positioned(&self) -> bool {
        false
    }

    fn seek(&mut self, driver: &mut Driver<'_>) -> Result<(), RunError> {
        // The generator is deterministic: regenerate what the checkpoint covers.
        let mut buf = Vec::new();
        while self.next_seq < driver.position().min(self.events) {
            self.bid_at(self.next_seq, &mut buf);
            self.next_seq += 1;
        }
        Ok(())
    }

    fn next(&mut self, _timeout: Duration) -> Result<Polled<'_>, RunError> {
        if self.at >= self.pool.len() {
            if self.next_seq >= self.events {
                return Ok(Polled::End);
            }
            self.refill();
        }
        self.at += 1;
        Ok(self
            .pool
            .get(self.at - 1)
            .map_or(Polled::End, Polled::Record))
    }

    fn after_checkpoint(&mut self, _cp: &Checkpoint, _last: bool) {}
}
