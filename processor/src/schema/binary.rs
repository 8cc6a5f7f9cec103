//! Avro binary, the shared primitives: varints (zigzag longs), lengths, strings, and the
//! error a datum that is not Avro binary gives. The fast decoder ([`super::flat`]), the
//! bounds walk ([`super::bounds`]) and the output encoder build on them.

use apache_avro::types::Value;

/// Why a record could not become an event. The variant names are the dead-letter reasons.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes are not the declared encoding at all.
    #[error("{0}")]
    Decode(String),
    /// The bytes decode, but not to an event of the reader schema.
    #[error("{0}")]
    Schema(String),
}

/// A primitive (or logical) type of a flat record field.
#[derive(Debug, Clone)]
pub(super) enum Prim {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    Enum(Vec<String>),
    Fixed(usize),
    Date,
    TimeMillis,
    TimeMicros,
    TsMillis,
    TsMicros,
    LocalTsMillis,
    LocalTsMicros,
    Uuid,
}

pub(super) fn bad(m: String) -> DecodeError {
    DecodeError::Decode(format!("invalid Avro binary: {m}"))
}

pub(super) struct Cursor<'a> {
    pub(super) b: &'a [u8],
    /// The next byte to read.
    pub(super) pos: usize,
}

impl<'a> Cursor<'a> {
    pub(super) fn new(b: &'a [u8]) -> Cursor<'a> {
        Cursor { b, pos: 0 }
    }
}

impl<'a> Cursor<'a> {
    pub(super) fn long(&mut self) -> Result<i64, DecodeError> {
        let mut z: u64 = 0;
        for shift in (0..70).step_by(7) {
            let byte = *self
                .b
                .get(self.pos)
                .ok_or_else(|| bad("unexpected end of data".into()))?;
            self.pos += 1;
            // The 10th byte's bits above the 64th are dropped, as apache-avro and Avro's
            // Java decoder drop them: both decoders must accept the same records (fuzzing
            // found this one refusing what apache-avro read).
            z |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(((z >> 1) as i64) ^ -((z & 1) as i64));
            }
        }
        Err(bad("varint overflows a long".into()))
    }

    pub(super) fn int(&mut self) -> Result<i32, DecodeError> {
        let v = self.long()?;
        i32::try_from(v).map_err(|_| bad(format!("{v} does not fit an int")))
    }

    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.b.len())
            .ok_or_else(|| bad(format!("a length of {n} runs past the end")))?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    pub(super) fn len_prefixed(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.long()?;
        let n = usize::try_from(n).map_err(|_| bad(format!("negative length {n}")))?;
        self.take(n)
    }

    pub(super) fn string(&mut self) -> Result<&'a str, DecodeError> {
        let b = self.len_prefixed()?;
        simdutf8::basic::from_utf8(b).map_err(|_| bad("a string is not UTF-8".into()))
    }

    pub(super) fn prim(&mut self, p: &Prim, keep: bool) -> Result<Value, DecodeError> {
        Ok(match p {
            Prim::Null => Value::Null,
            Prim::Boolean => match self.take(1)?[0] {
                0 => Value::Boolean(false),
                1 => Value::Boolean(true),
                x => return Err(bad(format!("{x} is not a boolean"))),
            },
            Prim::Int => Value::Int(self.int()?),
            Prim::Long => Value::Long(self.long()?),
            Prim::Float => Value::Float(f32::from_le_bytes(
                self.take(4)?.try_into().map_err(|_| bad("float".into()))?,
            )),
            Prim::Double => Value::Double(f64::from_le_bytes(
                self.take(8)?.try_into().map_err(|_| bad("double".into()))?,
            )),
            Prim::Bytes => {
                let b = self.len_prefixed()?;
                if keep {
                    Value::Bytes(b.to_vec())
                } else {
                    Value::Null
                }
            }
            Prim::String => {
                let s = self.string()?;
                if keep {
                    Value::String(s.to_string())
                } else {
                    Value::Null
                }
            }
            Prim::Uuid => {
                let s = self.string()?;
                let u = apache_avro::Uuid::parse_str(s)
                    .map_err(|_| bad(format!("{s:?} is not a UUID")))?;
                Value::Uuid(u)
            }
            Prim::Enum(symbols) => {
                let i = self.long()?;
                let sym = usize::try_from(i)
                    .ok()
                    .and_then(|i| symbols.get(i))
                    .ok_or_else(|| bad(format!("enum index {i} out of range")))?;
                if keep {
                    Value::Enum(i as u32, sym.clone())
                } else {
                    Value::Null
                }
            }
            Prim::Fixed(n) => {
                let b = self.take(*n)?;
                if keep {
                    Value::Fixed(*n, b.to_vec())
                } else {
                    Value::Null
                }
            }
            Prim::Date => Value::Date(self.int()?),
            Prim::TimeMillis => Value::TimeMillis(self.int()?),
            Prim::TimeMicros => Value::TimeMicros(self.long()?),
            Prim::TsMillis => Value::TimestampMillis(self.long()?),
            Prim::TsMicros => Value::TimestampMicros(self.long()?),
            Prim::LocalTsMillis => Value::LocalTimestampMillis(self.long()?),
            Prim::LocalTsMicros => Value::LocalTimestampMicros(self.long()?),
        })
    }
}

/// Appends `n` as an Avro long (zigzag varint).
pub fn zigzag(n: i64, out: &mut Vec<u8>) {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}
