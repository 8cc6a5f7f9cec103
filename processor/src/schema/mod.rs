//! Schemas: loading `.avsc` files, the field types validation reasons about, and the
//! Avro/JSON codecs every event goes through.
//!
//! Owns: [`SchemaResolver`] (where schemas come from: the local `schemas/` directory now, a
//! Confluent registry later), [`FieldType`] (a field's type as validation compares it),
//! [`codec::Decoder`] (bytes -> validated Avro record, with writer-to-reader resolution set
//! up once per writer schema).

mod binary;
mod bounds;
pub mod codec;
mod flat;
pub mod json;
pub mod registry;

use apache_avro::Schema;
use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};

/// How a source's values are encoded (`source.format` in a definition).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum ValueFormat {
    /// Confluent wire format: magic byte 0, 4-byte big-endian schema id, Avro binary.
    #[serde(rename = "avro")]
    Avro,
    /// A bare Avro binary datum written with the reader schema.
    #[serde(rename = "avro-raw")]
    AvroRaw,
    /// A JSON object validated against the Avro schema.
    #[serde(rename = "json")]
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("cannot read schema file {path}: {source}")]
    ReadFile {
        path: String,
        source: std::io::Error,
    },
    #[error("schema file {path} is not a valid Avro schema: {message}")]
    ParseSchema { path: String, message: String },
    #[error("schema {name} was not found; looked in: {looked}")]
    NotFound { name: String, looked: String },
}

/// Where schema files are found. A reference is tried relative to the pipeline file's
/// directory first, then in each schemas directory, in order.
#[derive(Debug, Clone)]
pub struct SchemaResolver {
    dirs: Vec<PathBuf>,
}

impl SchemaResolver {
    /// The resolver for a pipeline file: its own directory, `<its directory>/../schemas`,
    /// and `./schemas`.
    pub fn for_pipeline(pipeline_file: &Path, extra: Option<&Path>) -> SchemaResolver {
        let mut dirs = Vec::new();
        if let Some(e) = extra {
            dirs.push(e.to_path_buf());
        }
        let parent = pipeline_file
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        dirs.push(parent.clone());
        dirs.push(parent.join("..").join("schemas"));
        dirs.push(PathBuf::from("schemas"));
        SchemaResolver { dirs }
    }

    /// Schemas from one directory only (a deployed pipeline's own copies).
    pub fn in_dir(dir: &Path) -> SchemaResolver {
        SchemaResolver {
            dirs: vec![dir.to_path_buf()],
        }
    }

    pub fn find(&self, name: &str) -> Result<PathBuf, SchemaError> {
        let direct = Path::new(name);
        if direct.is_absolute() && direct.is_file() {
            return Ok(direct.to_path_buf());
        }
        for d in &self.dirs {
            let p = d.join(name);
            if p.is_file() {
                return Ok(p);
            }
        }
        Err(SchemaError::NotFound {
            name: name.to_string(),
            looked: self
                .dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    pub fn load(&self, name: &str) -> Result<Schema, SchemaError> {
        let path = self.find(name)?;
        load_schema_file(&path)
    }
}

pub fn load_schema_file(path: &Path) -> Result<Schema, SchemaError> {
    let text = std::fs::read_to_string(path).map_err(|source| SchemaError::ReadFile {
        path: path.display().to_string(),
        source,
    })?;
    Schema::parse_str(&text).map_err(|e| SchemaError::ParseSchema {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// The type of a field as validation sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldType {
    pub kind: Kind,
    pub nullable: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    String,
    Bytes,
    Enum,
    Fixed,
    Decimal,
    Uuid,
    Date,
    TimeMillis,
    TimeMicros,
    TimestampMillis,
    TimestampMicros,
    Record,
    Array,
    Map,
    Other(String),
}

impl Kind {
    pub fn name(&self) -> &str {
        match self {
            Kind::Null => "null",
            Kind::Boolean => "boolean",
            Kind::Int => "int",
            Kind::Long => "long",
            Kind::Float => "float",
            Kind::Double => "double",
            Kind::String => "string",
            Kind::Bytes => "bytes",
            Kind::Enum => "enum",
            Kind::Fixed => "fixed",
            Kind::Decimal => "decimal",
            Kind::Uuid => "uuid",
            Kind::Date => "date",
            Kind::TimeMillis => "time-millis",
            Kind::TimeMicros => "time-micros",
            Kind::TimestampMillis => "timestamp-millis",
            Kind::TimestampMicros => "timestamp-micros",
            Kind::Record => "record",
            Kind::Array => "array",
            Kind::Map => "map",
            Kind::Other(s) => s,
        }
    }

    /// Parses the type names a definition may declare for computed fields.
    pub fn parse_declared(s: &str) -> Option<Kind> {
        Some(match s {
            "boolean" => Kind::Boolean,
            "int" => Kind::Int,
            "long" => Kind::Long,
            "float" => Kind::Float,
            "double" => Kind::Double,
            "string" => Kind::String,
            "bytes" => Kind::Bytes,
            "timestamp-millis" => Kind::TimestampMillis,
            _ => return None,
        })
    }

    pub const DECLARABLE: &'static str =
        "boolean, int, long, float, double, string, bytes, timestamp-millis";

    pub fn is_numeric(&self) -> bool {
        matches!(self, Kind::Int | Kind::Long | Kind::Float | Kind::Double)
    }

    /// Scalars can be keys, compared (min/max), counted distinct and kept (first/last).
    pub fn is_scalar(&self) -> bool {
        !matches!(
            self,
            Kind::Record | Kind::Array | Kind::Map | Kind::Null | Kind::Other(_)
        )
    }
}

impl FieldType {
    pub fn new(kind: Kind, nullable: bool) -> FieldType {
        FieldType { kind, nullable }
    }

    pub fn of(schema: &Schema) -> FieldType {
        match schema {
            Schema::Union(u) => {
                let variants = u.variants();
                let non_null: Vec<&Schema> =
                    variants.iter().filter(|s| **s != Schema::Null).collect();
                let nullable = non_null.len() < variants.len();
                if non_null.len() == 1 {
                    FieldType::new(FieldType::of(non_null[0]).kind, nullable)
                } else {
                    FieldType::new(Kind::Other("union".into()), nullable)
                }
            }
            s => FieldType::new(kind_of(s), false),
        }
    }
}

fn kind_of(s: &Schema) -> Kind {
    match s {
        Schema::Null => Kind::Null,
        Schema::Boolean => Kind::Boolean,
        Schema::Int => Kind::Int,
        Schema::Long => Kind::Long,
        Schema::Float => Kind::Float,
        Schema::Double => Kind::Double,
        Schema::Bytes => Kind::Bytes,
        Schema::String => Kind::String,
        Schema::Array(_) => Kind::Array,
        Schema::Map(_) => Kind::Map,
        Schema::Record(_) => Kind::Record,
        Schema::Enum(_) => Kind::Enum,
        Schema::Fixed(_) => Kind::Fixed,
        Schema::Decimal(_) | Schema::BigDecimal => Kind::Decimal,
        Schema::Uuid => Kind::Uuid,
        Schema::Date => Kind::Date,
        Schema::TimeMillis => Kind::TimeMillis,
        Schema::TimeMicros => Kind::TimeMicros,
        Schema::TimestampMillis | Schema::LocalTimestampMillis => Kind::TimestampMillis,
        Schema::TimestampMicros | Schema::LocalTimestampMicros => Kind::TimestampMicros,
        Schema::Ref { name } => Kind::Other(name.fullname(None)),
        other => Kind::Other(format!(
            "{:?}",
            apache_avro::schema::SchemaKind::from(other)
        )),
    }
}

impl fmt::Display for FieldType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nullable {
            write!(f, "[\"null\", \"{}\"]", self.kind.name())
        } else {
            write!(f, "\"{}\"", self.kind.name())
        }
    }
}

/// The named fields of a record schema, in order.
pub fn record_fields(schema: &Schema) -> Option<Vec<(String, FieldType)>> {
    match schema {
        Schema::Record(r) => Some(
            r.fields
                .iter()
                .map(|f| (f.name.clone(), FieldType::of(&f.schema)))
                .collect(),
        ),
        _ => None,
    }
}
