//! Bounds on a datum before apache-avro reads it: block counts backed by bytes, zero-byte
//! items and nesting depth limited.

use super::binary::{bad, Cursor, DecodeError};
use apache_avro::schema::Schema;
use std::collections::HashMap;

/// Zero-byte items (nulls, empty records) a datum may hold in all its arrays and maps.
pub(super) const MAX_EMPTY_ITEMS: u64 = 1 << 16;
/// How deep a datum may nest (records, arrays, maps, unions).
pub(super) const MAX_DATUM_DEPTH: usize = 128;

/// Walks a datum without building it, checking that every array and map block count is
/// backed by bytes, before apache-avro reads it: apache-avro 0.20 reserves a block's count
/// before reading its items, so an 80-byte record claiming a map of 270 million entries
/// asked for 21 GB and killed the process (found by fuzzing). Also bounds the nesting of
/// recursive types, which apache-avro reads recursively.
pub(super) fn check_lengths(schema: &Schema, bytes: &[u8]) -> Result<(), DecodeError> {
    let mut names = HashMap::new();
    collect_names(schema, &mut names);
    let mut walk = Walk {
        c: Cursor::new(bytes),
        names,
        empty_items: 0,
    };
    walk.skip(schema, 0)
}

pub(super) fn collect_names<'s>(s: &'s Schema, out: &mut HashMap<String, &'s Schema>) {
    match s {
        Schema::Record(r) => {
            out.insert(r.name.fullname(None), s);
            for f in &r.fields {
                collect_names(&f.schema, out);
            }
        }
        Schema::Enum(e) => {
            out.insert(e.name.fullname(None), s);
        }
        Schema::Fixed(f) => {
            out.insert(f.name.fullname(None), s);
        }
        Schema::Array(a) => collect_names(&a.items, out),
        Schema::Map(m) => collect_names(&m.types, out),
        Schema::Union(u) => u.variants().iter().for_each(|v| collect_names(v, out)),
        Schema::Decimal(d) => collect_names(&d.inner, out),
        _ => {}
    }
}

pub(super) struct Walk<'a, 's> {
    c: Cursor<'a>,
    names: HashMap<String, &'s Schema>,
    empty_items: u64,
}

impl<'s> Walk<'_, 's> {
    pub(super) fn skip(&mut self, s: &'s Schema, depth: usize) -> Result<(), DecodeError> {
        if depth > MAX_DATUM_DEPTH {
            return Err(bad(format!(
                "the datum nests deeper than {MAX_DATUM_DEPTH} levels"
            )));
        }
        match s {
            Schema::Null => {}
            Schema::Boolean => {
                self.c.take(1)?;
            }
            Schema::Int
            | Schema::Long
            | Schema::Date
            | Schema::TimeMillis
            | Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos
            | Schema::Enum(_) => {
                self.c.long()?;
            }
            Schema::Float => {
                self.c.take(4)?;
            }
            Schema::Double => {
                self.c.take(8)?;
            }
            Schema::Duration => {
                self.c.take(12)?;
            }
            Schema::Fixed(f) => {
                self.c.take(f.size)?;
            }
            Schema::Decimal(d) => self.skip(&d.inner, depth + 1)?,
            Schema::Record(r) => {
                for f in &r.fields {
                    self.skip(&f.schema, depth + 1)?;
                }
            }
            Schema::Union(u) => {
                let i = self.c.long()?;
                let v = usize::try_from(i)
                    .ok()
                    .and_then(|i| u.variants().get(i))
                    .ok_or_else(|| bad(format!("union index {i} out of range")))?;
                self.skip(v, depth + 1)?;
            }
            Schema::Array(a) => self.blocks(&a.items, None, depth)?,
            Schema::Map(m) => self.blocks(&m.types, Some(&Schema::String), depth)?,
            Schema::Ref { name } => {
                let target = self
                    .names
                    .get(&name.fullname(None))
                    .copied()
                    .ok_or_else(|| bad(format!("unknown type {}", name.fullname(None))))?;
                self.skip(target, depth + 1)?;
            }
            // Bytes, String, Uuid, BigDecimal: a length and that many bytes.
            _ => {
                self.c.len_prefixed()?;
            }
        }
        Ok(())
    }

    /// Array or map blocks: a count (negative: followed by a byte size), its items, until 0.
    pub(super) fn blocks(
        &mut self,
        item: &'s Schema,
        key: Option<&'s Schema>,
        depth: usize,
    ) -> Result<(), DecodeError> {
        loop {
            let n = self.c.long()?;
            if n == 0 {
                return Ok(());
            }
            if n < 0 {
                self.c.long()?;
            }
            let n = n.unsigned_abs();
            let left = (self.c.b.len() - self.c.pos) as u64;
            if n > left && n > MAX_EMPTY_ITEMS {
                return Err(bad(format!("a block of {n} items with {left} bytes left")));
            }
            for _ in 0..n {
                let before = self.c.pos;
                if let Some(k) = key {
                    self.skip(k, depth + 1)?;
                }
                self.skip(item, depth + 1)?;
                if self.c.pos == before {
                    self.empty_items += 1;
                    if self.empty_items > MAX_EMPTY_ITEMS {
                        return Err(bad(format!("more than {MAX_EMPTY_ITEMS} zero-byte items")));
                    }
                }
            }
        }
    }
}
