//! Monitoring: what a run did, in numbers. Counters survive restarts (they are part of the
//! checkpoint), so the summary of a resumed run covers the whole input. Typed telemetry
//! events: each counter change goes through one method here, so names live in one place.

pub mod offsets;
pub mod prometheus;
pub mod telemetry;

use serde::{Deserialize, Serialize};
use std::fmt;

/// Why an event went to the dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeadLetterReason {
    /// The bytes are not the declared format.
    Decode,
    /// The event does not satisfy the schema (or its writer schema is unknown/incompatible).
    Schema,
    /// A filter, map or key expression failed on it.
    Expression,
    /// Every window it belongs to had already closed.
    Late,
}

impl DeadLetterReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterReason::Decode => "decode",
            DeadLetterReason::Schema => "schema",
            DeadLetterReason::Expression => "expression",
            DeadLetterReason::Late => "late",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub events_in: u64,
    pub results_out: u64,
    pub filtered: u64,
    pub dead_decode: u64,
    pub dead_schema: u64,
    pub dead_expression: u64,
    pub dead_late: u64,
}

impl Counters {
    pub fn dead_letter(&mut self, r: DeadLetterReason) {
        match r {
            DeadLetterReason::Decode => self.dead_decode += 1,
            DeadLetterReason::Schema => self.dead_schema += 1,
            DeadLetterReason::Expression => self.dead_expression += 1,
            DeadLetterReason::Late => self.dead_late += 1,
        }
    }

    pub fn dead_total(&self) -> u64 {
        self.dead_decode + self.dead_schema + self.dead_expression + self.dead_late
    }
}

impl fmt::Display for Counters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} events in, {} results out, {} dead-lettered (decode {}, schema {}, expression {}, late {}), {} late, {} filtered",
            self.events_in,
            self.results_out,
            self.dead_total(),
            self.dead_decode,
            self.dead_schema,
            self.dead_expression,
            self.dead_late,
            self.dead_late,
            self.filtered
        )
    }
}

/// Peak resident set size of this process, in bytes (Linux `VmHWM`).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
