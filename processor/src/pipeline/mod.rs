//! Pipeline definitions: the YAML a user writes, parsed and checked.
//!
//! Owns: the versioned definition types (`apiVersion: weir/v1`), loading a file while
//! collecting *every* problem with its path, line and a fix ([`validate`]), and turning a
//! valid definition into an executable [`plan::Plan`].
//!
//! Guarantees: a definition that loads without problems compiles into a plan whose output
//! records match the declared output schema exactly (names, types, nullability).

pub mod compile;
pub mod locate;
pub mod plan;
pub mod problems;
pub mod validate;

use indexmap::IndexMap;
use serde::de::{self, Deserializer};
use serde::Deserialize;

pub use problems::Problem;
pub use validate::{load_file, load_str, Loaded};

/// The definition format version. New versions are added as variants, so old files keep parsing.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum ApiVersion {
    #[serde(rename = "weir/v1")]
    V1,
}

/// A whole pipeline definition (`apiVersion: weir/v1`).
#[derive(Debug, Clone)]
pub struct PipelineDef {
    pub api_version: ApiVersion,
    pub name: String,
    pub description: Option<String>,
    pub source: SourceDef,
    pub steps: Vec<StepDef>,
    pub output: OutputDef,
    pub sinks: Vec<SinkDef>,
    pub dead_letter: Option<SinkDef>,
    pub state: StateDef,
    pub delivery: Delivery,
}

/// The delivery guarantee of a pipeline's Kafka outputs (`delivery:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// A crash re-emits the results since the last checkpoint: the same records with the
    /// same `weir-event-id`, which idempotent consumers absorb.
    #[default]
    AtLeastOnce,
    /// One Kafka transaction per checkpoint holds the results, the dead letters, the
    /// changelog and repartition records and the source offsets: a `read_committed`
    /// consumer sees every result once.
    ExactlyOnce,
}

impl Delivery {
    pub fn name(self) -> &'static str {
        match self {
            Delivery::AtLeastOnce => "at_least_once",
            Delivery::ExactlyOnce => "exactly_once",
        }
    }
}

/// Top-level keys of a definition, in the order they are documented.
pub const TOP_LEVEL_KEYS: &[&str] = &[
    "apiVersion",
    "name",
    "description",
    "source",
    "steps",
    "output",
    "sinks",
    "dead_letter",
    "state",
    "delivery",
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceDef {
    /// Kafka topics to read. Offline runs use the first one in dead-letter coordinates.
    pub topics: Vec<String>,
    /// Consumer group; defaults to `weir-<pipeline name>`.
    #[serde(default)]
    pub group: Option<String>,
    /// How each record value is encoded.
    pub format: ValueFormat,
    /// The reader schema every event must satisfy (an `.avsc` file).
    pub schema: String,
    /// Writer schemas by Confluent schema id, for the `avro` format without a registry.
    #[serde(default)]
    pub writer_schemas: IndexMap<u32, String>,
    /// Where the event time comes from.
    pub event_time: EventTimeDef,
    #[serde(default)]
    pub watermark: WatermarkDef,
    /// The source fields the producer partitions the topic by (its record key). When the
    /// group key does not include them all, Weir re-keys through a repartition topic; `[]`
    /// says no field does (round-robin). Unset: the topic is taken to be partitioned by the
    /// group key, and nothing is re-keyed.
    #[serde(default)]
    pub partitioned_by: Option<Vec<String>>,
    /// The repartition topic, when there is one.
    #[serde(default)]
    pub repartition: RepartitionDef,
    /// Kafka: what to do when the offset to resume from (in the state or the group) is no
    /// longer in the log (deleted by retention): `fail` (default), `earliest`, `latest`.
    #[serde(default)]
    pub on_missing_offsets: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RepartitionDef {
    /// Partitions of the repartition topic (default: as many as the largest source topic).
    #[serde(default)]
    pub partitions: Option<i32>,
}

/// How source values are encoded; defined next to the codecs that read them.
pub use crate::schema::ValueFormat;

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct EventTimeDef {
    /// A field of the source schema: `timestamp-millis`, `timestamp-micros`, a long of epoch
    /// milliseconds, or an RFC 3339 string.
    #[serde(default)]
    pub field: Option<String>,
    /// Use the Kafka record timestamp instead.
    #[serde(default)]
    pub record_timestamp: Option<bool>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct WatermarkDef {
    #[serde(default)]
    pub max_out_of_orderness: Option<DurationSpec>,
    #[serde(default)]
    pub idle_timeout: Option<DurationSpec>,
    /// Kafka only: after this long without a record from any partition (wall clock), every
    /// partition's watermark moves with the wall clock.
    #[serde(default)]
    pub idle_advance: Option<DurationSpec>,
}

/// One step. Exactly one of its keys is set; validation says so when not.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StepDef {
    #[serde(default)]
    pub filter: Option<String>,
    #[serde(default)]
    pub map: Option<IndexMap<String, MapFieldDef>>,
    #[serde(default)]
    pub key_by: Option<KeyByDef>,
    #[serde(default)]
    pub window: Option<WindowDef>,
    #[serde(default)]
    pub aggregate: Option<AggregateDef>,
}

impl StepDef {
    /// The kinds of step this entry sets (more than one is an error).
    pub fn kinds(&self) -> Vec<&'static str> {
        let mut k = Vec::new();
        if self.filter.is_some() {
            k.push("filter");
        }
        if self.map.is_some() {
            k.push("map");
        }
        if self.key_by.is_some() {
            k.push("key_by");
        }
        if self.window.is_some() {
            k.push("window");
        }
        if self.aggregate.is_some() {
            k.push("aggregate");
        }
        k
    }
}

/// A computed field of a `map` step: a CEL expression, optionally with its type.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum MapFieldDef {
    Expr(String),
    Typed(TypedExprDef),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TypedExprDef {
    pub expr: String,
    /// An Avro primitive type name: boolean, int, long, float, double, string, bytes,
    /// or `timestamp-millis`.
    #[serde(rename = "type", default)]
    pub ty: Option<String>,
    #[serde(default)]
    pub nullable: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum KeyByDef {
    Fields(Vec<String>),
    Expr(KeyExprDef),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyExprDef {
    pub expr: String,
    /// The output field that carries the key.
    #[serde(rename = "as")]
    pub name: String,
    #[serde(rename = "type")]
    pub ty: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowDef {
    #[serde(rename = "type")]
    pub kind: WindowKind,
    #[serde(default)]
    pub size: Option<DurationSpec>,
    #[serde(default)]
    pub advance: Option<DurationSpec>,
    #[serde(default)]
    pub gap: Option<DurationSpec>,
    #[serde(default)]
    pub grace: Option<DurationSpec>,
    /// `type: none` only: a key untouched for this long in event time is dropped.
    #[serde(default)]
    pub ttl: Option<DurationSpec>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WindowKind {
    Tumbling,
    Hopping,
    Session,
    /// No window: a running aggregate per key (a table), emitted as updates.
    None,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateDef {
    pub outputs: IndexMap<String, AggFieldDef>,
    #[serde(default)]
    pub emit: Option<EmitMode>,
    /// With `emit: update`: at most one update per window per this much watermark progress.
    #[serde(default)]
    pub interval: Option<DurationSpec>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EmitMode {
    Final,
    Update,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggFieldDef {
    #[serde(rename = "fn")]
    pub func: AggFn,
    #[serde(default)]
    pub field: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum AggFn {
    Count,
    Sum,
    Min,
    Max,
    Avg,
    CountDistinct,
    First,
    Last,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputDef {
    /// The Avro schema of the derived events.
    pub schema: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkDef {
    #[serde(rename = "type")]
    pub kind: SinkKind,
    /// File sinks: where to write. Relative paths are relative to the working directory.
    #[serde(default)]
    pub path: Option<String>,
    /// Kafka sinks: the topic (created when missing).
    #[serde(default)]
    pub topic: Option<String>,
    /// Kafka sinks: partitions of a topic Weir creates.
    #[serde(default)]
    pub partitions: Option<i32>,
    /// Kafka sinks: replication factor of a topic Weir creates.
    #[serde(default)]
    pub replication_factor: Option<i32>,
    /// Kafka sinks without a schema registry: the schema id written in the Confluent frame.
    #[serde(default)]
    pub schema_id: Option<u32>,
    /// PostgreSQL sinks: a connection string (`host=... user=... dbname=...` or a URL);
    /// default `$WEIR_POSTGRES_URL`, else `host=127.0.0.1 user=postgres dbname=postgres`.
    #[serde(default)]
    pub url: Option<String>,
    /// PostgreSQL sinks: the table (created from the output schema when missing).
    #[serde(default)]
    pub table: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SinkKind {
    Stdout,
    File,
    Kafka,
    Postgres,
}

impl SinkDef {
    /// `stdout`, `file`, `kafka` or `postgres`.
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            SinkKind::Stdout => "stdout",
            SinkKind::File => "file",
            SinkKind::Kafka => "kafka",
            SinkKind::Postgres => "postgres",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateDef {
    /// Window entries kept in the in-memory write cache before a checkpoint spills them.
    #[serde(default = "default_cache_entries")]
    pub cache_entries: usize,
    /// RocksDB block cache, in MiB.
    #[serde(default = "default_block_cache_mb")]
    pub block_cache_mb: usize,
    /// RocksDB write buffer (memtable), in MiB.
    #[serde(default = "default_write_buffer_mb")]
    pub write_buffer_mb: usize,
    /// Kafka path: also write every checkpoint's state changes to the compacted topic
    /// `<group>-changelog`, from which a new machine restores the state. On by default, as
    /// Kafka Streams' changelogs are: without it a partition that moves to another instance
    /// starts there without its windows.
    #[serde(default = "default_changelog")]
    pub changelog: bool,
}

fn default_changelog() -> bool {
    true
}
fn default_cache_entries() -> usize {
    1_000_000
}
fn default_block_cache_mb() -> usize {
    64
}
fn default_write_buffer_mb() -> usize {
    32
}

impl Default for StateDef {
    fn default() -> Self {
        StateDef {
            cache_entries: default_cache_entries(),
            block_cache_mb: default_block_cache_mb(),
            write_buffer_mb: default_write_buffer_mb(),
            changelog: default_changelog(),
        }
    }
}

/// A duration as written (`10s`, `1m30s`, `250ms`, or an integer of milliseconds). It is
/// parsed during validation so that a bad value is reported with its path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurationSpec(pub String);

impl DurationSpec {
    /// Milliseconds, possibly negative (validation rejects negatives with a message).
    pub fn millis(&self) -> Result<i64, String> {
        let t = self.0.trim();
        if let Ok(n) = t.parse::<i64>() {
            return Ok(n);
        }
        let (neg, body) = match t.strip_prefix('-') {
            Some(rest) => (true, rest.trim()),
            None => (false, t),
        };
        let d = humantime::parse_duration(body).map_err(|e| e.to_string())?;
        let ms = i64::try_from(d.as_millis()).map_err(|_| "too large".to_string())?;
        Ok(if neg { -ms } else { ms })
    }
}

impl<'de> Deserialize<'de> for DurationSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = DurationSpec;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a duration such as 10s, 5m, 250ms, or an integer of milliseconds")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<DurationSpec, E> {
                Ok(DurationSpec(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<DurationSpec, E> {
                Ok(DurationSpec(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<DurationSpec, E> {
                Ok(DurationSpec(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}
