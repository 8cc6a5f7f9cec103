//! The broker harness: one place that starts (or finds) a Kafka-protocol broker for a test.
//!
//! `WEIR_TEST_KAFKA` chooses the real broker for [`real_broker`]:
//! - `kafka` (default): Apache Kafka, one JVM in KRaft combined mode on free loopback ports,
//!   started by `scripts/kafka.sh start --data-dir <temp dir>` (the script people use; its
//!   jars come from Maven Central, cached in `~/.cache/weir`). Data on `/dev/shm` when it
//!   exists. An outage is a SIGKILL of the JVM; a restart reuses the data dir and port.
//! - `tansu`: a `tansu` process with sqlite storage in a temporary directory, on a free
//!   loopback port. The binary is `$WEIR_TANSU`, else `~/.cache/weir/tools/bin/tansu`, else
//!   `tansu` on the PATH (not installed by the scripts any more; `cargo install tansu`).
//! - `mock`: librdkafka's mock cluster, in this process.
//! - `docker`: `apache/kafka` (JVM image, KRaft) through testcontainers; needs a Docker engine.
//! - `host:port`: an existing broker (topics are created through the admin API).
//!
//! Under `CI=true` a broker that cannot start fails the test; elsewhere the test prints why
//! it is skipped and passes.
//!
//! [`mock_broker`] always gives the mock cluster: the fast suite's broker.

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use testcontainers_modules::kafka::apache;
use testcontainers_modules::testcontainers::runners::SyncRunner;
use testcontainers_modules::testcontainers::Container;

pub struct Broker {
    inner: Inner,
    pub bootstrap: String,
    pub kind: &'static str,
}

enum Inner {
    Mock(MockCluster<'static, DefaultProducerContext>),
    Kafka(ApacheKafka),
    Tansu(Tansu),
    Docker(Box<Container<apache::Kafka>>),
    External,
}

/// An Apache Kafka broker run by `scripts/kafka.sh` on a data dir of its own.
pub struct ApacheKafka {
    dir: tempfile::TempDir,
    bootstrap: String,
}

impl ApacheKafka {
    fn start() -> Result<ApacheKafka, String> {
        let shm = std::path::Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::Builder::new()
                .prefix("weir-kafka-")
                .tempdir_in(shm)
        } else {
            tempfile::Builder::new().prefix("weir-kafka-").tempdir()
        }
        .map_err(|e| e.to_string())?;
        let mut k = ApacheKafka {
            dir,
            bootstrap: String::new(),
        };
        k.spawn()?;
        Ok(k)
    }

    /// `scripts/kafka.sh start` on this data dir; returns once the broker serves.
    fn spawn(&mut self) -> Result<(), String> {
        let out = Command::new(crate::repo().join("scripts/kafka.sh"))
            .args(["start", "--data-dir"])
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run scripts/kafka.sh: {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let Some(addr) = stdout.lines().find_map(|l| l.strip_prefix("bootstrap=")) else {
            return Err(format!(
                "scripts/kafka.sh start failed ({}): {}{}",
                out.status,
                stdout,
                String::from_utf8_lossy(&out.stderr)
            ));
        };
        self.bootstrap = addr.trim().to_string();
        wait_ready(&self.bootstrap, Duration::from_secs(60))
            .map_err(|e| format!("{e}; log: {}", self.log_tail()))
    }

    /// The data dir `scripts/kafka.sh` runs this broker on.
    pub fn data_dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// The broker JVM's process id, while it runs.
    pub fn pid(&self) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(self.dir.path().join("broker.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        // SAFETY: signal 0 only checks that the process exists.
        (unsafe { libc::kill(pid, 0) } == 0).then_some(pid)
    }

    /// SIGKILL (an outage, not a shutdown); waits (bounded) until the process is gone.
    fn kill(&mut self) {
        if let Some(pid) = self.pid() {
            // SAFETY: signalling the broker this harness started.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
            let deadline = Instant::now() + Duration::from_secs(20);
            while std::path::Path::new(&format!("/proc/{pid}")).exists()
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("broker.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for ApacheKafka {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct Tansu {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Tansu {
    fn spawn(&mut self) -> Result<(), String> {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("tansu.log"))
            .map_err(|e| e.to_string())?;
        let child = Command::new(&self.bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "sqlite://tansu.db",
            ])
            .current_dir(self.dir.path())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.bin.display()))?;
        self.child = Some(child);
        wait_ready(&format!("127.0.0.1:{}", self.port), Duration::from_secs(30))
            .map_err(|e| format!("{e}; log: {}", self.log_tail()))
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("tansu.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

fn tansu_bin() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("WEIR_TANSU") {
        return Some(PathBuf::from(p));
    }
    if let Ok(home) = std::env::var("HOME") {
        let p = PathBuf::from(home).join(".cache/weir/tools/bin/tansu");
        if p.is_file() {
            return Some(p);
        }
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("tansu"))
            .find(|p| p.is_file())
    })
}

/// A free port on the loopback interface.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Waits (bounded) until a broker answers a metadata request.
pub fn wait_ready(bootstrap: &str, within: Duration) -> Result<(), String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + within;
    let mut last = String::new();
    while Instant::now() < deadline {
        match consumer.fetch_metadata(None, Duration::from_secs(1)) {
            Ok(m) if !m.brokers().is_empty() => return Ok(()),
            Ok(_) => last = "no brokers in metadata".into(),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(format!(
        "broker at {bootstrap} not ready within {within:?}: {last}"
    ))
}

fn unavailable(why: String) -> Option<Broker> {
    if std::env::var("CI").map(|v| v == "true").unwrap_or(false) {
        panic!("CI=true and the test broker is unavailable: {why}");
    }
    eprintln!("SKIPPED (no broker): {why}; run ./scripts/test.sh, which installs Java and Apache Kafka, or set WEIR_TEST_KAFKA=host:port");
    None
}

/// The broker chosen by `WEIR_TEST_KAFKA` (default `kafka`).
pub fn real_broker() -> Option<Broker> {
    let choice = std::env::var("WEIR_TEST_KAFKA").unwrap_or_else(|_| "kafka".into());
    match choice.as_str() {
        "mock" => Some(mock_broker()),
        "kafka" => match ApacheKafka::start() {
            Ok(k) => Some(Broker {
                bootstrap: k.bootstrap.clone(),
                inner: Inner::Kafka(k),
                kind: "kafka",
            }),
            Err(e) => unavailable(e),
        },
        "tansu" => {
            let Some(bin) = tansu_bin() else {
                return unavailable(
                    "tansu is not installed (cargo install tansu --locked --features libsql)"
                        .into(),
                );
            };
            let mut t = Tansu {
                bin,
                dir: tempfile::tempdir().expect("tempdir"),
                port: free_port(),
                child: None,
            };
            match t.spawn() {
                Ok(()) => Some(Broker {
                    bootstrap: format!("127.0.0.1:{}", t.port),
                    inner: Inner::Tansu(t),
                    kind: "tansu",
                }),
                Err(e) => unavailable(e),
            }
        }
        "docker" => match apache::Kafka::default().with_jvm_image().start() {
            Ok(c) => match c.get_host_port_ipv4(apache::KAFKA_PORT) {
                Ok(port) => {
                    let bootstrap = format!("127.0.0.1:{port}");
                    match wait_ready(&bootstrap, Duration::from_secs(60)) {
                        Ok(()) => Some(Broker {
                            bootstrap,
                            inner: Inner::Docker(Box::new(c)),
                            kind: "docker",
                        }),
                        Err(e) => unavailable(e),
                    }
                }
                Err(e) => unavailable(format!("apache/kafka container has no mapped port: {e}")),
            },
            Err(e) => unavailable(format!(
                "cannot start apache/kafka with testcontainers: {e}"
            )),
        },
        addr => match wait_ready(addr, Duration::from_secs(10)) {
            Ok(()) => Some(Broker {
                bootstrap: addr.to_string(),
                inner: Inner::External,
                kind: "external",
            }),
            Err(e) => unavailable(e),
        },
    }
}

/// librdkafka's mock cluster (one broker), in this process.
pub fn mock_broker() -> Broker {
    let cluster = MockCluster::new(1).expect("mock cluster");
    Broker {
        bootstrap: cluster.bootstrap_servers(),
        inner: Inner::Mock(cluster),
        kind: "mock",
    }
}

impl Broker {
    /// An admin client of this broker, and a runtime to wait on its futures.
    fn admin(&self) -> (AdminClient<DefaultClientContext>, tokio::runtime::Runtime) {
        let admin = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()
            .expect("admin client");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        (admin, rt)
    }

    /// Deletes each partition's records below `offset` (Kafka's DeleteRecords, what
    /// `kafka-delete-records.sh` and retention do); returns the new log starts.
    pub fn delete_records_before(&self, topic: &str, offsets: &[(i32, i64)]) -> Vec<(i32, i64)> {
        let (admin, rt) = self.admin();
        let mut tpl = rdkafka::TopicPartitionList::new();
        for (p, o) in offsets {
            tpl.add_partition_offset(topic, *p, rdkafka::Offset::Offset(*o))
                .expect("offset");
        }
        let r = rt
            .block_on(admin.delete_records(&tpl, &AdminOptions::new()))
            .expect("delete_records");
        r.elements()
            .iter()
            .map(|e| {
                assert!(
                    e.error().is_ok(),
                    "delete records {topic} [{}]: {:?}",
                    e.partition(),
                    e.error()
                );
                match e.offset() {
                    rdkafka::Offset::Offset(o) => (e.partition(), o),
                    other => panic!("delete records {topic} [{}]: {other:?}", e.partition()),
                }
            })
            .collect()
    }

    /// A topic's configuration value (`cleanup.policy`...), as the broker describes it.
    pub fn topic_config(&self, topic: &str, name: &str) -> Option<String> {
        let (admin, rt) = self.admin();
        let r = rt
            .block_on(admin.describe_configs(
                [&rdkafka::admin::ResourceSpecifier::Topic(topic)],
                &AdminOptions::new(),
            ))
            .expect("describe_configs");
        r.into_iter()
            .filter_map(|c| c.ok())
            .flat_map(|c| c.entries)
            .find(|e| e.name == name)
            .and_then(|e| e.value)
    }

    pub fn create_topic(&self, name: &str, partitions: i32) {
        match &self.inner {
            Inner::Mock(c) => c
                .create_topic(name, partitions, 1)
                .expect("mock create_topic"),
            _ => {
                let (admin, rt) = self.admin();
                let t = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
                let r = rt
                    .block_on(admin.create_topics([&t], &AdminOptions::new()))
                    .expect("create_topics");
                for x in r {
                    if let Err((t, code)) = x {
                        panic!("cannot create topic {t}: {code}");
                    }
                }
            }
        }
    }

    /// The Apache Kafka broker process, when the harness runs one.
    pub fn kafka(&self) -> Option<&ApacheKafka> {
        match &self.inner {
            Inner::Kafka(k) => Some(k),
            _ => None,
        }
    }

    pub fn mock(&self) -> Option<&MockCluster<'static, DefaultProducerContext>> {
        match &self.inner {
            Inner::Mock(c) => Some(c),
            _ => None,
        }
    }

    /// Stops the broker, keeping its data: Kafka and tansu are SIGKILLed, a container paused.
    pub fn stop(&mut self) {
        match &mut self.inner {
            Inner::Kafka(k) => k.kill(),
            Inner::Tansu(t) => t.kill(),
            Inner::Docker(c) => docker(&["pause", c.id()]),
            _ => {}
        }
    }

    /// Starts a stopped broker again on the same port and data.
    pub fn start(&mut self) {
        match &mut self.inner {
            Inner::Kafka(k) => {
                k.spawn().expect("restart Apache Kafka");
                assert_eq!(k.bootstrap, self.bootstrap, "a restart keeps the port");
            }
            Inner::Tansu(t) => t.spawn().expect("restart tansu"),
            Inner::Docker(c) => docker(&["unpause", c.id()]),
            _ => {}
        }
    }

    pub fn can_restart(&self) -> bool {
        matches!(
            self.inner,
            Inner::Kafka(_) | Inner::Tansu(_) | Inner::Docker(_)
        )
    }

    pub fn log_tail(&self) -> String {
        match &self.inner {
            Inner::Kafka(k) => k.log_tail(),
            Inner::Tansu(t) => t.log_tail(),
            _ => String::new(),
        }
    }

    /// Extra client settings this broker needs (passed to weir with --kafka-config too).
    pub fn client_settings(&self) -> Vec<(&'static str, &'static str)> {
        match self.inner {
            // tansu: short fetch waits keep its fetch path responsive (BROKERS.md).
            Inner::Tansu(_) => vec![("fetch.wait.max.ms", "10")],
            _ => vec![],
        }
    }
}

/// An idempotent producer for test data.
pub fn producer(bootstrap: &str) -> ThreadedProducer<DefaultProducerContext> {
    {
        ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("compression.type", "lz4")
            .create()
            .expect("producer")
    }
}

fn docker(args: &[&str]) {
    let ok = Command::new("docker")
        .args(args)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "docker {args:?} failed");
}

/// A record to produce: (partition, key, value).
pub type OutRecord = (i32, Vec<u8>, Vec<u8>);

/// One record read back from a topic.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
    /// The record's timestamp (ms), when it has one.
    pub timestamp: Option<i64>,
}

impl Record {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
}

/// Sends records `(partition, key, value)` and waits for every acknowledgement.
pub fn produce(p: &ThreadedProducer<DefaultProducerContext>, topic: &str, records: &[OutRecord]) {
    produce_at(p, topic, records, &|_| None)
}

/// Like [`produce`], with each record's timestamp from `ts` (the producer's clock if none).
pub fn produce_at(
    p: &ThreadedProducer<DefaultProducerContext>,
    topic: &str,
    records: &[OutRecord],
    ts: &dyn Fn(&[u8]) -> Option<i64>,
) {
    for (part, k, v) in records {
        let mut rec = BaseRecord::to(topic).partition(*part).key(k).payload(v);
        if let Some(t) = ts(v) {
            rec = rec.timestamp(t);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((e, back)) => {
                    assert!(Instant::now() < deadline, "produce to {topic}: {e}");
                    rec = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }
    p.flush(Duration::from_secs(60))
        .expect("flush produced records");
}

/// Every record of `topic`, from the beginning to the high watermark at the time of call.
/// The offsets `group` has committed for partitions `0..partitions` of `topic` (-1: none).
pub fn committed(bootstrap: &str, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got = c
        .committed_offsets(tpl, Duration::from_secs(30))
        .expect("committed offsets");
    got.elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            _ => -1,
        })
        .collect()
}

/// The log end (high watermark) of partitions `0..partitions` of `topic`.
pub fn log_ends(bootstrap: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("consumer");
    (0..partitions)
        .map(|p| {
            c.fetch_watermarks(topic, p, Duration::from_secs(30))
                .expect("watermarks")
                .1
        })
        .collect()
}

/// A consumed message as a [`Record`].
fn record_of(m: &rdkafka::message::BorrowedMessage<'_>) -> Record {
    let headers = m
        .headers()
        .map(|h| {
            h.iter()
                .map(|x| (x.key.to_string(), x.value.unwrap_or(&[]).to_vec()))
                .collect()
        })
        .unwrap_or_default();
    Record {
        partition: m.partition(),
        offset: m.offset(),
        key: m.key().map(|k| k.to_vec()),
        value: m.payload().unwrap_or(&[]).to_vec(),
        headers,
        timestamp: m.timestamp().to_millis(),
    }
}

/// Every record of `topic` as a consumer with `isolation.level` `read_committed`
/// (`committed`) or `read_uncommitted` sees it, read until each partition reports its end
/// (a transactional topic's last offsets are commit markers, which no consumer is given).
/// For a topic nothing writes to any more.
pub fn read_isolated(
    bootstrap: &str,
    topic: &str,
    extra: &[(&str, &str)],
    committed: bool,
) -> Vec<Record> {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", bootstrap)
        .set("group.id", "weir-test-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set(
            "isolation.level",
            if committed {
                "read_committed"
            } else {
                "read_uncommitted"
            },
        );
    for (k, v) in extra {
        cfg.set(*k, *v);
    }
    let consumer: BaseConsumer = cfg.create().expect("reader");
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let parts: Vec<i32> = md
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut tpl = TopicPartitionList::new();
    for p in &parts {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)
            .expect("tpl");
    }
    consumer.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let mut ended = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while ended.len() < parts.len() {
        assert!(
            Instant::now() < deadline,
            "reading {topic}: only partitions {ended:?} of {parts:?} reached their end"
        );
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                out.push(record_of(&m));
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                ended.insert(p);
            }
            Some(Err(e)) => eprintln!("reader: {e}"),
            None => {}
        }
    }
    out
}

pub fn read_all(bootstrap: &str, topic: &str, extra: &[(&str, &str)]) -> Vec<Record> {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", bootstrap)
        .set("group.id", "weir-test-reader")
        .set("enable.auto.commit", "false");
    for (k, v) in extra {
        cfg.set(*k, *v);
    }
    let consumer: BaseConsumer = cfg.create().expect("reader");
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let parts: Vec<i32> = md
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut tpl = TopicPartitionList::new();
    let mut ends = std::collections::HashMap::new();
    for p in &parts {
        let (_, high) = consumer
            .fetch_watermarks(topic, *p, Duration::from_secs(10))
            .expect("watermarks");
        ends.insert(*p, high);
        tpl.add_partition_offset(topic, *p, Offset::Beginning)
            .expect("tpl");
    }
    consumer.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let mut next: std::collections::HashMap<i32, i64> = parts.iter().map(|p| (*p, 0)).collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    while next.iter().any(|(p, o)| *o < ends[p]) {
        assert!(
            Instant::now() < deadline,
            "reading {topic}: stuck at {next:?}, ends {ends:?}"
        );
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                next.insert(m.partition(), m.offset() + 1);
                if m.offset() < ends[&m.partition()] {
                    out.push(record_of(&m));
                }
            }
            Some(Err(e)) => eprintln!("reader: {e}"),
            None => {}
        }
    }
    out
}

/// A `weir run` subprocess against a broker.
pub struct WeirProcess {
    pub child: Child,
    pub log: PathBuf,
}

impl WeirProcess {
    pub fn start(args: &[String], log: PathBuf, env: &[(&str, &str)]) -> WeirProcess {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let err = out.try_clone().expect("log file");
        let mut cmd = Command::new(crate::weir_bin());
        cmd.args(args)
            .current_dir(crate::repo())
            .env(
                "RUST_LOG",
                "weir=info,weir::runtime::kafka::changelog=debug,warn",
            )
            .stdout(out)
            .stderr(err);
        for (k, v) in env {
            cmd.env(k, v);
        }
        WeirProcess {
            child: cmd.spawn().expect("spawn weir"),
            log,
        }
    }

    pub fn sigkill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits (bounded) for a clean exit; returns whether it exited 0.
    pub fn stop(&mut self) -> bool {
        // SAFETY: sending a signal to our own child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.sigkill();
        false
    }

    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for WeirProcess {
    fn drop(&mut self) {
        if self.exited().is_none() {
            self.sigkill();
        }
        // A failing test's process log (which goes with its temporary directory) is the
        // best clue to why it failed: its tail goes to the test's output.
        if std::thread::panicking() {
            let log = self.log_text();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "--- last lines of {} ---\n{}\n---",
                self.log.display(),
                lines[lines.len().saturating_sub(80)..].join("\n")
            );
        }
    }
}

/// A small deterministic generator (xorshift64*), so failures reproduce.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}
