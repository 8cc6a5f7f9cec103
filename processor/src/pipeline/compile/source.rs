//! `source`: topics, format, schema, writer schemas and event time.

use super::rules::{duration, field_names};
use crate::pipeline::plan::{EventTime, MissingOffsets, SourcePlan, TimeUnit};
use crate::pipeline::problems::Problems;
use crate::pipeline::{EventTimeDef, PipelineDef, ValueFormat};
use crate::schema::codec::check_readable;
use crate::schema::{record_fields, Kind, SchemaResolver};
use apache_avro::Schema;

/// The source plan, and the reader schema whenever it loaded (so that the steps are
/// checked even when another part of the source is wrong).
pub(super) fn compile_source(
    def: &PipelineDef,
    resolver: &SchemaResolver,
    p: &mut Problems,
) -> (Option<SourcePlan>, Option<Schema>) {
    let s = &def.source;
    if s.topics.is_empty() {
        p.add(
            "source.topics",
            "at least one topic is needed",
            "add topics: [my-topic]",
        );
    }
    let reader = match resolver.load(&s.schema) {
        Ok(r) => Some(r),
        Err(e) => {
            p.add(
                "source.schema",
                e.to_string(),
                "put the .avsc file in schemas/ or fix the name",
            );
            None
        }
    };
    let reader = match reader {
        Some(r) if record_fields(&r).is_none() => {
            p.add(
                "source.schema",
                "the event schema must be an Avro record",
                "wrap the fields in {\"type\": \"record\", ...}",
            );
            None
        }
        r => r,
    };
    let mut writers = Vec::new();
    if s.format != ValueFormat::Avro && !s.writer_schemas.is_empty() {
        p.add(
            "source.writer_schemas",
            "writer schemas by id apply to the `avro` (Confluent wire) format only",
            "remove writer_schemas, or set format: avro",
        );
    }
    for (id, file) in &s.writer_schemas {
        let path = format!("source.writer_schemas.{id}");
        match resolver.load(file) {
            Err(e) => p.add(
                &path,
                e.to_string(),
                "put the .avsc file in schemas/ or fix the name",
            ),
            Ok(w) => {
                if let Some(r) = &reader {
                    if let Err(e) = check_readable(&w, r) {
                        p.add(
                            &path,
                            format!(
                                "events written with {file} cannot be read as {}: {e}",
                                s.schema
                            ),
                            "give removed fields no role and added fields a default",
                        );
                    }
                }
                writers.push((*id, w));
            }
        }
    }
    if s.format == ValueFormat::Avro && s.writer_schemas.is_empty() {
        if let Some(r) = &reader {
            // Offline default: the reader schema under id 1.
            writers.push((1, r.clone()));
        }
    }
    let event_time = compile_event_time(p, &s.event_time, reader.as_ref());
    let ooo = duration(
        p,
        "source.watermark.max_out_of_orderness",
        &s.watermark.max_out_of_orderness,
        false,
    )
    .unwrap_or(0);
    let idle = duration(
        p,
        "source.watermark.idle_timeout",
        &s.watermark.idle_timeout,
        true,
    );
    let idle_advance = duration(
        p,
        "source.watermark.idle_advance",
        &s.watermark.idle_advance,
        true,
    );
    let on_missing_offsets = match s.on_missing_offsets.as_deref() {
        None | Some("fail") => MissingOffsets::Fail,
        Some("earliest") => MissingOffsets::Earliest,
        Some("latest") => MissingOffsets::Latest,
        Some(other) => {
            p.add(
                "source.on_missing_offsets",
                format!("`{other}` is not a policy for missing offsets"),
                "write fail (stop with an error; the default), earliest (go on from the log start) or latest (from the log end)",
            );
            MissingOffsets::Fail
        }
    };
    let plan = match (&reader, event_time) {
        (Some(r), Some(event_time)) => Some(SourcePlan {
            topics: s.topics.clone(),
            group: s
                .group
                .clone()
                .unwrap_or_else(|| format!("weir-{}", def.name)),
            format: s.format,
            reader_schema: r.clone(),
            writer_schemas: writers,
            event_time,
            needed: vec![true; record_fields(r).map_or(0, |f| f.len())],
            max_out_of_orderness_ms: ooo,
            idle_timeout_ms: idle,
            idle_advance_ms: idle_advance,
            on_missing_offsets,
        }),
        _ => None,
    };
    (plan, reader)
}

pub(super) fn compile_event_time(
    p: &mut Problems,
    et: &EventTimeDef,
    reader: Option<&Schema>,
) -> Option<EventTime> {
    match (&et.field, et.record_timestamp) {
        (Some(_), Some(true)) | (None, None) | (None, Some(false)) => {
            p.add(
                "source.event_time",
                "set exactly one of `field` or `record_timestamp: true`",
                "for example event_time: {field: ts}",
            );
            None
        }
        (None, Some(true)) => Some(EventTime::RecordTimestamp),
        (Some(f), _) => {
            let fields = record_fields(reader?)?;
            let Some(index) = fields.iter().position(|(n, _)| n == f) else {
                p.add(
                    "source.event_time.field",
                    format!("unknown field `{f}`"),
                    format!("use one of: {}", field_names(&fields)),
                );
                return None;
            };
            let unit = match fields[index].1.kind {
                Kind::TimestampMillis | Kind::Long => TimeUnit::Millis,
                Kind::TimestampMicros => TimeUnit::Micros,
                Kind::String => TimeUnit::Rfc3339,
                ref k => {
                    p.add("source.event_time.field", format!("`{f}` is {}, which cannot hold an event time", k.name()), "use a timestamp-millis, timestamp-micros, long (epoch ms) or RFC 3339 string field");
                    return None;
                }
            };
            Some(EventTime::Field {
                index,
                name: f.clone(),
                unit,
            })
        }
    }
}
