use crate::runtime::outputs::Connections;
use crate::sink::kafka::{ensure_topic, Sender};
use crate::source::file::{FileSource, InputFormat};
use crate::source::Payload;
use anyhow::Context;
use clap::Args;
use rdkafka::message::OwnedHeaders;
use std::path::PathBuf;
use std::process::ExitCode;

/// Load an event log into a Kafka topic: JSON Lines (events or Kafka records) or an Avro
/// container file. Each record keeps its key (or takes --key-field from a JSON event), so
/// the broker partitions by key as a producer application would.
#[derive(Args)]
pub struct ProduceArgs {
    /// The event log.
    #[arg(long)]
    file: PathBuf,
    /// The topic (created with --partitions when missing).
    #[arg(long)]
    topic: String,
    #[arg(long, value_enum, default_value = "auto")]
    input_format: InputFormat,
    /// Kafka bootstrap servers [env: WEIR_BROKERS; default 127.0.0.1:9092].
    #[arg(long)]
    brokers: Option<String>,
    /// Use this field of each JSON event as the record key.
    #[arg(long)]
    key_field: Option<String>,
    /// Frame Avro container records in the Confluent wire format with this schema id.
    #[arg(long)]
    schema_id: Option<u32>,
    #[arg(long, default_value_t = 1)]
    partitions: i32,
}

pub fn run(a: ProduceArgs) -> anyhow::Result<ExitCode> {
    let conn = Connections {
        brokers: a.brokers.clone(),
        ..Default::default()
    };
    let brokers = conn.brokers();
    ensure_topic(&brokers, &a.topic, a.partitions, 1, &[])?;
    // A first pass counts the records, so the progress bar knows its length.
    let mut total = 0u64;
    let mut counting = FileSource::open(&a.file, a.input_format, &a.topic)?;
    while counting.next().transpose()?.is_some() {
        total += 1;
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {bar:40} {pos}/{len} records  {per_sec}  eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut source = FileSource::open(&a.file, a.input_format, &a.topic)?;
    let mut sender = Sender::new(&brokers, &format!("produce:{}", a.topic), &[])?;
    let mut n = 0u64;
    let mut value = Vec::new();
    while let Some(rec) = source.next().transpose()? {
        value.clear();
        let mut key = rec.key.clone();
        match &rec.value {
            Payload::Avro { bytes, .. } => {
                if let Some(id) = a.schema_id {
                    value.push(0);
                    value.extend_from_slice(&id.to_be_bytes());
                }
                value.extend_from_slice(bytes);
            }
            // A line that is no record is sent as it is: the pipeline dead-letters it.
            Payload::Json(b) | Payload::Bytes(b) | Payload::Invalid { bytes: b, .. } => {
                value.extend_from_slice(b);
                if let (None, Some(field)) = (&key, &a.key_field) {
                    key = serde_json::from_slice::<serde_json::Value>(b)
                        .ok()
                        .and_then(|j| j.get(field).cloned())
                        .map(|v| match v {
                            serde_json::Value::String(s) => s.into_bytes(),
                            other => other.to_string().into_bytes(),
                        });
                }
            }
        }
        sender.send(
            &a.topic,
            key.as_deref(),
            &value,
            OwnedHeaders::new(),
            rec.timestamp,
        )?;
        n += 1;
        if n % 256 == 0 {
            bar.set_position(n);
        }
    }
    bar.set_position(n);
    bar.set_message("waiting for acknowledgements");
    sender
        .flush()
        .with_context(|| format!("waiting for the broker to acknowledge {n} records"))?;
    bar.finish_and_clear();
    eprintln!("weir: produced {n} records to {} at {brokers}", a.topic);
    Ok(ExitCode::SUCCESS)
}
