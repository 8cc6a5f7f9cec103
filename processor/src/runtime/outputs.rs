//! Opening the pipeline's sinks and dead letter, and writing each result to every sink.
//! Shared by the file replay and the Kafka runtime.

use crate::pipeline::plan::Plan;
use crate::pipeline::{SinkDef, SinkKind};
use crate::schema::registry::Registry;
use crate::sink::discard::DiscardSink;
use crate::sink::encode::{DeadLetter, Emitted, ResultFormat};
use crate::sink::file::{FileSink, StdoutSink};
use crate::sink::kafka::{ensure_topic_with, KafkaDeadLetter, KafkaSink, SharedProducer};
use crate::sink::postgres::{PostgresSink, DEFAULT_URL};
use crate::sink::{Output, Sink, SinkError};

/// Where the outside services are. Each falls back to an environment variable.
#[derive(Debug, Clone, Default)]
pub struct Connections {
    /// Kafka bootstrap servers (`$WEIR_BROKERS`, default `127.0.0.1:9092`).
    pub brokers: Option<String>,
    /// PostgreSQL connection string for sinks without a `url` (`$WEIR_POSTGRES_URL`).
    pub postgres_url: Option<String>,
    /// Confluent Schema Registry URL (`$WEIR_SCHEMA_REGISTRY`); none = local schemas only.
    pub schema_registry: Option<String>,
    /// Extra librdkafka properties for every producer (`--kafka-config`).
    pub kafka_config: Vec<(String, String)>,
}

impl Connections {
    pub fn brokers(&self) -> String {
        self.brokers
            .clone()
            .or_else(|| std::env::var("WEIR_BROKERS").ok())
            .unwrap_or_else(|| "127.0.0.1:9092".to_string())
    }

    pub fn postgres_url(&self, sink: &SinkDef) -> String {
        sink.url
            .clone()
            .or_else(|| self.postgres_url.clone())
            .or_else(|| std::env::var("WEIR_POSTGRES_URL").ok())
            .unwrap_or_else(|| DEFAULT_URL.to_string())
    }

    pub fn registry(&self) -> Option<Registry> {
        self.schema_registry
            .clone()
            .or_else(|| std::env::var("WEIR_SCHEMA_REGISTRY").ok())
            .filter(|u| !u.is_empty())
            .map(|u| Registry::new(&u))
    }
}

pub enum AnySink {
    File(FileSink),
    Stdout(StdoutSink),
    Kafka(KafkaSink),
    Postgres(Box<PostgresSink>),
    Discard(DiscardSink),
}

impl AnySink {
    pub fn as_sink(&mut self) -> &mut dyn Sink {
        match self {
            AnySink::File(f) => f,
            AnySink::Stdout(s) => s,
            AnySink::Kafka(k) => k,
            AnySink::Postgres(p) => p.as_mut(),
            AnySink::Discard(d) => d,
        }
    }

    /// The sink's name in telemetry: `kafka:<topic>`, `postgres:<table>`, `file:<path>`.
    pub fn label(&mut self) -> String {
        let kind = match self {
            AnySink::File(_) => "file",
            AnySink::Stdout(_) => "stdout",
            AnySink::Kafka(_) => "kafka",
            AnySink::Postgres(_) => "postgres",
            AnySink::Discard(_) => "discard",
        };
        let name = self.as_sink().name();
        if name.starts_with(&format!("{kind}:")) {
            name.to_string()
        } else {
            format!("{kind}:{name}")
        }
    }
}

fn open_err(name: &str, e: impl std::fmt::Display) -> SinkError {
    SinkError::Write {
        name: name.to_string(),
        source: std::io::Error::other(e.to_string()),
    }
}

/// Creates the topic of a Kafka sink or dead letter when missing; returns its name. A
/// table's results (`compact`) go to a compacted topic: the latest value per key.
fn create_topic(
    brokers: &str,
    d: &SinkDef,
    compact: bool,
    extra: &[(String, String)],
) -> Result<String, SinkError> {
    let topic = d.topic.clone().unwrap_or_default();
    let configs = match compact {
        true => vec![("cleanup.policy", "compact".to_string())],
        false => Vec::new(),
    };
    ensure_topic_with(
        brokers,
        &topic,
        d.partitions.unwrap_or(1),
        d.replication_factor.unwrap_or(1),
        &configs,
        extra,
    )?;
    Ok(topic)
}

/// Opens the sinks. `lengths[i]`: where file sink `i` was at the checkpoint being resumed.
/// `output` overrides the pipeline's sinks with one file (`-` = stdout). `shared`: the
/// transactional producer Kafka sinks write through (exactly-once).
pub fn open_sinks(
    plan: &Plan,
    output: Option<&str>,
    conn: &Connections,
    registry: &mut Option<Registry>,
    lengths: &[Option<u64>],
    shared: Option<&SharedProducer>,
) -> Result<Vec<AnySink>, SinkError> {
    let defs: Vec<SinkDef> = match output {
        Some(o) => vec![SinkDef {
            kind: if o == "-" {
                SinkKind::Stdout
            } else {
                SinkKind::File
            },
            path: (o != "-").then(|| o.to_string()),
            ..empty_sink()
        }],
        None if plan.sinks.is_empty() => vec![SinkDef {
            kind: SinkKind::Stdout,
            ..empty_sink()
        }],
        None => plan.sinks.clone(),
    };
    let mut out = Vec::with_capacity(defs.len());
    for (i, d) in defs.iter().enumerate() {
        let at = lengths.get(i).copied().flatten();
        out.push(match d.kind {
            SinkKind::Stdout => AnySink::Stdout(StdoutSink::default()),
            SinkKind::File => AnySink::File(FileSink::open(d.path.as_deref().unwrap_or(""), at)?),
            SinkKind::Kafka => {
                let brokers = conn.brokers();
                let topic = d.topic.clone().unwrap_or_default();
                let id = output_schema_id(plan, &topic, d, registry)?;
                create_topic(&brokers, d, plan.is_table(), &conn.kafka_config)?;
                AnySink::Kafka(KafkaSink::new(
                    &brokers,
                    &topic,
                    id,
                    &conn.kafka_config,
                    shared,
                )?)
            }
            SinkKind::Postgres => AnySink::Postgres(Box::new(PostgresSink::open(
                plan,
                &conn.postgres_url(d),
                d.table.as_deref().unwrap_or(""),
            )?)),
        });
    }
    Ok(out)
}

/// The schema id for the Confluent frame: registered under `<topic>-value` when a registry
/// is configured (after a compatibility check), else the sink's `schema_id`.
fn output_schema_id(
    plan: &Plan,
    topic: &str,
    d: &SinkDef,
    registry: &mut Option<Registry>,
) -> Result<u32, SinkError> {
    let name = format!("kafka:{topic}");
    match registry {
        Some(r) => {
            let subject = format!("{topic}-value");
            let schema = &plan.output.schema;
            if !r.is_compatible(&subject, schema).map_err(|e| open_err(&name, e))? {
                return Err(open_err(
                    &name,
                    format!(
                        "the output schema is not compatible with the latest version of subject {subject} in {}; register a compatible schema or change the subject's compatibility",
                        r.url()
                    ),
                ));
            }
            r.register(&subject, schema).map_err(|e| open_err(&name, e))
        }
        None => d.schema_id.ok_or_else(|| {
            open_err(
                &name,
                "a kafka sink needs a schema id for the Confluent frame: give --schema-registry URL (the output schema is registered under <topic>-value) or set schema_id in the sink",
            )
        }),
    }
}

fn empty_sink() -> SinkDef {
    SinkDef {
        kind: SinkKind::Stdout,
        path: None,
        topic: None,
        partitions: None,
        replication_factor: None,
        schema_id: None,
        url: None,
        table: None,
    }
}

/// Where dead letters go.
pub enum DeadLetters {
    /// JSON Lines; the string is the input file named in each envelope (may be empty).
    File(FileSink, String),
    Stdout(StdoutSink),
    Kafka(KafkaDeadLetter),
}

impl DeadLetters {
    pub fn open(
        def: Option<&SinkDef>,
        file_override: Option<&str>,
        default_path: &str,
        conn: &Connections,
        resume_at: Option<u64>,
        input_name: &str,
        shared: Option<&SharedProducer>,
    ) -> Result<(DeadLetters, String), SinkError> {
        if let Some(p) = file_override {
            return Ok((
                DeadLetters::File(FileSink::open(p, resume_at)?, input_name.to_string()),
                p.to_string(),
            ));
        }
        match def {
            Some(d) if d.kind == SinkKind::Kafka => {
                let brokers = conn.brokers();
                let topic = create_topic(&brokers, d, false, &conn.kafka_config)?;
                Ok((
                    DeadLetters::Kafka(KafkaDeadLetter::new(
                        &brokers,
                        &topic,
                        &conn.kafka_config,
                        shared,
                    )?),
                    format!("kafka topic {topic}"),
                ))
            }
            Some(d) if d.kind == SinkKind::Stdout => {
                Ok((DeadLetters::Stdout(StdoutSink::default()), "stdout".into()))
            }
            _ => {
                let path = def
                    .and_then(|d| d.path.clone())
                    .unwrap_or_else(|| default_path.to_string());
                Ok((
                    DeadLetters::File(FileSink::open(&path, resume_at)?, input_name.to_string()),
                    path,
                ))
            }
        }
    }

    pub fn write(&mut self, d: &DeadLetter) -> Result<(), SinkError> {
        match self {
            DeadLetters::File(f, input) => f.write_line(&d.to_json(input)),
            DeadLetters::Stdout(s) => {
                let line = d.to_json("");
                s.write(&Output {
                    json: &line,
                    avro: &[],
                    key: "",
                    window_start: 0,
                    event_id: "",
                    record_key: None,
                    timestamp: None,
                })
            }
            DeadLetters::Kafka(k) => k.write(d),
        }
    }

    /// Makes every dead letter durable; the file length to checkpoint, if a file.
    pub fn flush(&mut self) -> Result<Option<u64>, SinkError> {
        match self {
            DeadLetters::File(f, _) => f.flush(),
            DeadLetters::Stdout(s) => s.flush(),
            DeadLetters::Kafka(k) => k.flush().map(|()| None),
        }
    }
}

/// Writes each result to every sink as it is emitted; the first failure is kept and
/// reported after the engine returns (the engine's emit callback cannot fail).
pub struct ResultWriter<'p> {
    format: ResultFormat<'p>,
    wants_avro: bool,
    wants_json: bool,
    wants_key: bool,
    json: String,
    key: String,
    id: String,
    avro: Vec<u8>,
    failed: Option<SinkError>,
    /// Results handed to the sinks so far (the runtime compares it across checkpoints).
    pub written: u64,
}

impl<'p> ResultWriter<'p> {
    pub fn new(plan: &'p Plan, sinks: &mut [AnySink]) -> ResultWriter<'p> {
        ResultWriter {
            format: ResultFormat::new(plan),
            wants_avro: sinks.iter_mut().any(|s| s.as_sink().wants_avro()),
            wants_json: sinks.iter_mut().any(|s| s.as_sink().wants_json()),
            wants_key: sinks.iter_mut().any(|s| s.as_sink().wants_key()),
            json: String::new(),
            key: String::new(),
            id: String::new(),
            avro: Vec::new(),
            failed: None,
            written: 0,
        }
    }

    pub fn write(&mut self, e: &Emitted, sinks: &mut [AnySink]) {
        if self.failed.is_some() {
            return;
        }
        self.json.clear();
        self.key.clear();
        self.id.clear();
        self.avro.clear();
        if self.wants_json {
            self.format.output_json(e, &mut self.json);
        }
        if self.wants_key {
            self.format.key_json(e, &mut self.key);
            self.format.event_id(&self.key, e, &mut self.id);
        }
        if self.wants_avro {
            self.format.encode_avro(e, &mut self.avro);
        }
        let out = Output {
            json: &self.json,
            avro: &self.avro,
            key: &self.key,
            window_start: e.start,
            event_id: &self.id,
            record_key: self.format.record_key(&self.key, e),
            timestamp: e.origin.as_ref().and_then(|o| o.timestamp),
        };
        for s in sinks.iter_mut() {
            if let Err(err) = s.as_sink().write(&out) {
                self.failed = Some(err);
                return;
            }
        }
        self.written += 1;
        crate::faults::reached(crate::faults::Point::Emitted);
    }

    pub fn check(&mut self) -> Result<(), SinkError> {
        match self.failed.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
