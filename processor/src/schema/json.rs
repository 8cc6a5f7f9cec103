//! JSON <-> Avro values. Input JSON objects are validated against the reader schema while
//! they are converted (the `json` source format); derived and dead-letter records are written
//! as natural JSON (unions unwrapped, enums as symbols, logical types as their numbers).

use apache_avro::schema::{ResolvedSchema, Schema};
use apache_avro::types::Value;
use base64::Engine;
use serde_json::Value as Json;
use std::collections::HashMap;

/// Named types of a schema by full name, owned so the map can live in a plan.
#[derive(Debug, Clone, Default)]
pub struct Names(HashMap<String, Schema>);

impl Names {
    pub fn of(schema: &Schema) -> Names {
        let mut m = HashMap::new();
        if let Ok(rs) = ResolvedSchema::try_from(schema) {
            for (n, s) in rs.get_names() {
                m.insert(n.fullname(None), (*s).clone());
            }
        }
        Names(m)
    }

    fn get(&self, name: &apache_avro::schema::Name) -> Option<&Schema> {
        self.0.get(&name.fullname(None))
    }
}

/// Converts a JSON value into an Avro value of `schema`, or says where it does not fit.
pub fn json_to_avro(json: &Json, schema: &Schema, names: &Names) -> Result<Value, String> {
    to_avro(json, schema, names, "")
}

fn at(path: &str) -> String {
    if path.is_empty() {
        "the event".to_string()
    } else {
        format!("field `{path}`")
    }
}

fn int_of(json: &Json, path: &str) -> Result<i64, String> {
    json.as_i64()
        .ok_or_else(|| format!("{} must be an integer, got {json}", at(path)))
}

fn to_avro(json: &Json, schema: &Schema, names: &Names, path: &str) -> Result<Value, String> {
    let mismatch = |what: &str| format!("{} must be {what}, got {json}", at(path));
    Ok(match schema {
        Schema::Null => match json {
            Json::Null => Value::Null,
            _ => return Err(mismatch("null")),
        },
        Schema::Boolean => Value::Boolean(json.as_bool().ok_or_else(|| mismatch("a boolean"))?),
        Schema::Int => {
            let n = int_of(json, path)?;
            Value::Int(i32::try_from(n).map_err(|_| mismatch("a 32-bit int"))?)
        }
        Schema::Long => Value::Long(int_of(json, path)?),
        Schema::Float => Value::Float(json.as_f64().ok_or_else(|| mismatch("a number"))? as f32),
        Schema::Double => Value::Double(json.as_f64().ok_or_else(|| mismatch("a number"))?),
        Schema::String => Value::String(json.as_str().ok_or_else(|| mismatch("a string"))?.into()),
        Schema::Bytes => Value::Bytes(decode_b64(json).ok_or_else(|| mismatch("base64 bytes"))?),
        Schema::Fixed(f) => {
            let b = decode_b64(json).ok_or_else(|| mismatch("base64 bytes"))?;
            if b.len() != f.size {
                return Err(mismatch(&format!("{} bytes", f.size)));
            }
            Value::Fixed(f.size, b)
        }
        Schema::Enum(e) => {
            let s = json.as_str().ok_or_else(|| mismatch("an enum symbol"))?;
            match e.symbols.iter().position(|x| x == s) {
                Some(i) => Value::Enum(i as u32, s.to_string()),
                None => {
                    return Err(format!(
                        "{} must be one of {:?}, got {json}",
                        at(path),
                        e.symbols
                    ))
                }
            }
        }
        Schema::Array(a) => {
            let items = json.as_array().ok_or_else(|| mismatch("an array"))?;
            let mut out = Vec::with_capacity(items.len());
            for (i, it) in items.iter().enumerate() {
                out.push(to_avro(it, &a.items, names, &format!("{path}[{i}]"))?);
            }
            Value::Array(out)
        }
        Schema::Map(m) => {
            let obj = json.as_object().ok_or_else(|| mismatch("an object"))?;
            let mut out = HashMap::with_capacity(obj.len());
            for (k, v) in obj {
                out.insert(k.clone(), to_avro(v, &m.types, names, &join(path, k))?);
            }
            Value::Map(out)
        }
        Schema::Record(r) => {
            let obj = json.as_object().ok_or_else(|| mismatch("an object"))?;
            let mut out = Vec::with_capacity(r.fields.len());
            for f in &r.fields {
                let p = join(path, &f.name);
                let v = match obj.get(&f.name) {
                    Some(v) => to_avro(v, &f.schema, names, &p)?,
                    None => match &f.default {
                        Some(d) => to_avro(d, &f.schema, names, &p)?,
                        None if nullable(&f.schema) => to_avro(&Json::Null, &f.schema, names, &p)?,
                        None => return Err(format!("{} is missing and has no default", at(&p))),
                    },
                };
                out.push((f.name.clone(), v));
            }
            Value::Record(out)
        }
        Schema::Union(u) => {
            let mut last_err = None;
            for (i, s) in u.variants().iter().enumerate() {
                match to_avro(json, s, names, path) {
                    Ok(v) => return Ok(Value::Union(i as u32, Box::new(v))),
                    Err(e) => last_err = Some(e),
                }
            }
            return Err(last_err.unwrap_or_else(|| mismatch("a value of the union")));
        }
        Schema::Date => match json {
            Json::String(s) => {
                let d = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
                    .map_err(|_| mismatch("a date (YYYY-MM-DD)"))?;
                let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default();
                Value::Date((d - epoch).num_days() as i32)
            }
            _ => Value::Date(
                i32::try_from(int_of(json, path)?).map_err(|_| mismatch("days since epoch"))?,
            ),
        },
        Schema::TimeMillis => Value::TimeMillis(
            i32::try_from(int_of(json, path)?).map_err(|_| mismatch("millis of day"))?,
        ),
        Schema::TimeMicros => Value::TimeMicros(int_of(json, path)?),
        Schema::TimestampMillis | Schema::LocalTimestampMillis => match json {
            Json::String(s) => Value::TimestampMillis(
                parse_rfc3339_millis(s).ok_or_else(|| mismatch("an RFC 3339 timestamp"))?,
            ),
            _ => Value::TimestampMillis(int_of(json, path)?),
        },
        Schema::TimestampMicros | Schema::LocalTimestampMicros => match json {
            Json::String(s) => Value::TimestampMicros(
                parse_rfc3339_millis(s).ok_or_else(|| mismatch("an RFC 3339 timestamp"))? * 1000,
            ),
            _ => Value::TimestampMicros(int_of(json, path)?),
        },
        Schema::Uuid => {
            let s = json.as_str().ok_or_else(|| mismatch("a UUID string"))?;
            Value::Uuid(apache_avro::Uuid::parse_str(s).map_err(|_| mismatch("a UUID"))?)
        }
        Schema::Decimal(d) => {
            let unscaled = decimal_unscaled(json, d.scale).ok_or_else(|| {
                mismatch(&format!(
                    "a decimal with at most {} fractional digits",
                    d.scale
                ))
            })?;
            let mut bytes = unscaled.to_be_bytes().to_vec();
            // Shortest two's complement form.
            while bytes.len() > 1
                && ((bytes[0] == 0 && bytes[1] & 0x80 == 0)
                    || (bytes[0] == 0xff && bytes[1] & 0x80 != 0))
            {
                bytes.remove(0);
            }
            if let Schema::Fixed(f) = d.inner.as_ref() {
                let fill = if unscaled < 0 { 0xff } else { 0 };
                if bytes.len() > f.size {
                    return Err(mismatch("a decimal that fits its fixed size"));
                }
                let mut padded = vec![fill; f.size - bytes.len()];
                padded.extend(bytes);
                bytes = padded;
            }
            Value::Decimal(apache_avro::Decimal::from(bytes))
        }
        Schema::Ref { name } => {
            let s = names
                .get(name)
                .ok_or_else(|| format!("unknown named type {}", name.fullname(None)))?;
            return to_avro(json, s, names, path);
        }
        other => {
            return Err(format!(
                "{}: the type {:?} is not supported in JSON input",
                at(path),
                apache_avro::schema::SchemaKind::from(other)
            ))
        }
    })
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn nullable(s: &Schema) -> bool {
    matches!(s, Schema::Union(u) if u.variants().contains(&Schema::Null))
}

fn decode_b64(json: &Json) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(json.as_str()?)
        .ok()
}

fn decimal_unscaled(json: &Json, scale: usize) -> Option<i128> {
    let text = match json {
        Json::String(s) => s.clone(),
        Json::Number(n) => n.to_string(),
        _ => return None,
    };
    let (neg, t) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text.as_str()),
    };
    let (int_part, frac) = t.split_once('.').unwrap_or((t, ""));
    if frac.len() > scale || int_part.is_empty() {
        return None;
    }
    let digits = format!("{int_part}{frac:0<scale$}");
    let v: i128 = digits.parse().ok()?;
    Some(if neg { -v } else { v })
}

/// Parses an RFC 3339 timestamp to epoch milliseconds.
pub fn parse_rfc3339_millis(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|d| d.timestamp_millis())
}

/// Writes an Avro value as natural JSON.
pub fn avro_to_json(v: &Value) -> Json {
    match v {
        Value::Null => Json::Null,
        Value::Boolean(b) => Json::Bool(*b),
        Value::Int(i) | Value::Date(i) | Value::TimeMillis(i) => Json::from(*i),
        Value::Long(i)
        | Value::TimeMicros(i)
        | Value::TimestampMillis(i)
        | Value::TimestampMicros(i)
        | Value::TimestampNanos(i)
        | Value::LocalTimestampMillis(i)
        | Value::LocalTimestampMicros(i)
        | Value::LocalTimestampNanos(i) => Json::from(*i),
        Value::Float(f) => float_json(f64::from(*f)),
        Value::Double(f) => float_json(*f),
        Value::String(s) | Value::Enum(_, s) => Json::String(s.clone()),
        Value::Bytes(b) | Value::Fixed(_, b) => {
            Json::String(base64::engine::general_purpose::STANDARD.encode(b))
        }
        Value::Union(_, b) => avro_to_json(b),
        Value::Array(items) => Json::Array(items.iter().map(avro_to_json).collect()),
        Value::Map(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            Json::Object(
                keys.into_iter()
                    .map(|k| (k.clone(), avro_to_json(&m[k])))
                    .collect(),
            )
        }
        Value::Record(fields) => Json::Object(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), avro_to_json(v)))
                .collect(),
        ),
        Value::Uuid(u) => Json::String(u.to_string()),
        Value::Decimal(d) => match <Vec<u8>>::try_from(d) {
            Ok(bytes) => Json::String(format!("unscaled:{}", i128_of(&bytes))),
            Err(_) => Json::Null,
        },
        other => Json::String(format!("{other:?}")),
    }
}

/// A double as JSON. JSON has no NaN or infinity: they are written as the strings `"NaN"`,
/// `"Infinity"` and `"-Infinity"`, as Avro's Java JSON encoder (Jackson) and Protobuf's
/// JSON mapping write them, and as PostgreSQL reads them into `double precision`. (Events
/// never carry them; a `sum` or `avg` can overflow to an infinity.)
fn float_json(f: f64) -> Json {
    match serde_json::Number::from_f64(f) {
        Some(n) => Json::Number(n),
        None if f.is_nan() => Json::String("NaN".into()),
        None if f > 0.0 => Json::String("Infinity".into()),
        None => Json::String("-Infinity".into()),
    }
}

fn i128_of(bytes: &[u8]) -> i128 {
    let mut v: i128 = if bytes.first().is_some_and(|b| b & 0x80 != 0) {
        -1
    } else {
        0
    };
    for b in bytes.iter().take(16) {
        v = (v << 8) | i128::from(*b);
    }
    v
}

/// Milliseconds as RFC 3339, for messages.
pub fn fmt_ms(ms: i64) -> String {
    if ms == i64::MIN {
        return "-inf".into();
    }
    if ms == i64::MAX {
        return "+inf".into();
    }
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| ms.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_and_converts() {
        let schema = Schema::parse_str(
            r#"{"type":"record","name":"r","fields":[
                {"name":"a","type":"long"},
                {"name":"b","type":["null","string"],"default":null},
                {"name":"t","type":{"type":"long","logicalType":"timestamp-millis"}},
                {"name":"d","type":{"type":"bytes","logicalType":"decimal","precision":9,"scale":2}},
                {"name":"e","type":{"type":"enum","name":"E","symbols":["X","Y"]}}]}"#,
        )
        .unwrap();
        let names = Names::of(&schema);
        let ok: Json =
            serde_json::json!({"a": 1, "t": "2024-01-01T00:00:00Z", "d": "12.5", "e": "Y"});
        let v = json_to_avro(&ok, &schema, &names).unwrap();
        assert!(v.validate(&schema));
        let bad: Json = serde_json::json!({"a": "x", "t": 0, "d": "1", "e": "Y"});
        assert_eq!(
            json_to_avro(&bad, &schema, &names).unwrap_err(),
            "field `a` must be an integer, got \"x\""
        );
        let bad_enum: Json = serde_json::json!({"a": 1, "t": 0, "d": "1", "e": "Z"});
        assert!(json_to_avro(&bad_enum, &schema, &names)
            .unwrap_err()
            .contains("must be one of"));
    }
}
