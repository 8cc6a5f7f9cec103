//! Rules every section of a definition shares: the bounds on durations and windows, the
//! kinds a key may have, and how a field list is named in messages.

use crate::pipeline::problems::Problems;
use crate::pipeline::DurationSpec;
use crate::schema::{FieldType, Kind};

/// The type a key or aggregate carries into the output for an input kind.
pub(super) fn out_kind(k: &Kind) -> Kind {
    match k {
        Kind::Enum | Kind::Uuid => Kind::String,
        other => other.clone(),
    }
}

pub(super) fn groupable(k: &Kind) -> bool {
    matches!(
        k,
        Kind::Boolean
            | Kind::Int
            | Kind::Long
            | Kind::Float
            | Kind::Double
            | Kind::String
            | Kind::Bytes
            | Kind::Enum
            | Kind::Uuid
            | Kind::Date
            | Kind::TimeMillis
            | Kind::TimeMicros
            | Kind::TimestampMillis
            | Kind::TimestampMicros
    )
}

pub(super) fn field_names(row: &[(String, FieldType)]) -> String {
    row.iter()
        .map(|(n, _)| n.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The longest duration a definition may give (100 years, 3,153,600,000,000 ms): window
/// ends, close times (`end + grace`) and watermarks are event times plus durations, and
/// longer durations overflow that arithmetic (a grace of `i64::MAX` ms closed every window
/// at once).
pub const MAX_DURATION_MS: i64 = 100 * 365 * 24 * 3_600_000;

/// The most hopping windows one event may belong to (`size / advance`): each one is state
/// and, at close, a result. A 1 h window advancing every 1 ms asked for 3.6 million per
/// event and passed 4 GiB of memory in seconds.
pub const MAX_WINDOWS_PER_EVENT: i64 = 1_000;

pub(super) fn duration(
    p: &mut Problems,
    path: &str,
    d: &Option<DurationSpec>,
    positive: bool,
) -> Option<i64> {
    let d = d.as_ref()?;
    match d.millis() {
        Err(_) => {
            p.add(
                path,
                format!("`{}` is not a duration", d.0),
                "write a duration such as 30s, 5m, 1h or 250ms",
            );
            None
        }
        Ok(ms) if positive && ms <= 0 => {
            p.add(
                path,
                format!("must be greater than 0, got {}", d.0),
                "set a positive duration such as 1m",
            );
            None
        }
        Ok(ms) if ms < 0 => {
            p.add(
                path,
                format!("must be >= 0s, got {}", d.0),
                "use 0s for no allowance, or a positive duration",
            );
            None
        }
        Ok(ms) if ms > MAX_DURATION_MS => {
            p.add(
                path,
                format!("must be at most 100 years (3153600000000ms), got {}", d.0),
                "use a shorter duration: event times plus durations longer than that overflow",
            );
            None
        }
        Ok(ms) => Some(ms),
    }
}
