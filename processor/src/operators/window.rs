//! Window assignment. All arithmetic is in integer epoch milliseconds.
//!
//! Alignment: tumbling windows are `[k*size, (k+1)*size)` and hopping windows
//! `[k*advance, k*advance + size)` for integer `k`, aligned to the Unix epoch
//! (1970-01-01T00:00:00Z), so a 1-minute window starts on a whole UTC minute and a 1-day
//! window at UTC midnight. Negative times floor toward minus infinity. A session is
//! `[first event, last event + gap)`; two sessions of a key merge when an event makes
//! them overlap or touch.
//!
//! A window closes when the watermark reaches `end + grace`; an event whose every window
//! is closed on arrival is late.
//!
//! Event times must lie in [`MIN_EVENT_TIME_MS`, `MAX_EVENT_TIME_MS`] (years 0001 to 9999,
//! the range of an RFC 3339 timestamp). Durations are bounded at validation (100 years),
//! so within that range `end + grace` and every other sum here cannot overflow. A record
//! outside it is dead-lettered (`schema`) before it reaches a window or the watermark.

use crate::pipeline::plan::WindowAssigner;

/// 0001-01-01T00:00:00Z in epoch milliseconds.
pub const MIN_EVENT_TIME_MS: i64 = -62_135_596_800_000;
/// 9999-12-31T23:59:59.999Z in epoch milliseconds.
pub const MAX_EVENT_TIME_MS: i64 = 253_402_300_799_999;

/// Why `ts` cannot be an event time, if it cannot.
pub fn check_event_time(ts: i64) -> Result<i64, String> {
    if (MIN_EVENT_TIME_MS..=MAX_EVENT_TIME_MS).contains(&ts) {
        Ok(ts)
    } else {
        Err(format!(
            "event time {ts} ms is outside the supported range \
             0001-01-01T00:00:00Z..9999-12-31T23:59:59.999Z ({MIN_EVENT_TIME_MS}..{MAX_EVENT_TIME_MS} ms)"
        ))
    }
}

/// Puts the aligned windows (start, end) containing `ts` in `out`, oldest first. None for
/// sessions and tables, which the state store assigns per key.
pub fn assign(a: WindowAssigner, ts: i64, out: &mut Vec<(i64, i64)>) {
    out.clear();
    match a {
        WindowAssigner::Tumbling { size } => {
            let start = ts.div_euclid(size) * size;
            out.push((start, start + size));
        }
        WindowAssigner::Hopping { size, advance } => {
            let mut s = ts.div_euclid(advance) * advance;
            while s > ts - size {
                out.push((s, s + size));
                s -= advance;
            }
            out.reverse();
        }
        WindowAssigner::Session { .. } | WindowAssigner::Table { .. } => {}
    }
}

#[cfg(test)]
mod tests {
    use crate::pipeline::plan::WindowAssigner;

    fn assign(a: WindowAssigner, ts: i64) -> Vec<(i64, i64)> {
        let mut v = Vec::new();
        super::assign(a, ts, &mut v);
        v
    }

    #[test]
    fn tumbling_and_hopping_align_to_epoch() {
        assert_eq!(
            assign(WindowAssigner::Tumbling { size: 60_000 }, 61_000),
            vec![(60_000, 120_000)]
        );
        assert_eq!(
            assign(WindowAssigner::Tumbling { size: 10 }, -1),
            vec![(-10, 0)]
        );
        assert_eq!(
            assign(
                WindowAssigner::Hopping {
                    size: 30,
                    advance: 10
                },
                25
            ),
            vec![(0, 30), (10, 40), (20, 50)]
        );
        assert_eq!(
            assign(
                WindowAssigner::Hopping {
                    size: 30,
                    advance: 10
                },
                30
            ),
            vec![(10, 40), (20, 50), (30, 60)]
        );
    }

    proptest::proptest! {
        /// Every aligned window holding `ts`, found by brute force over window indices,
        /// and nothing else, oldest first.
        #[test]
        fn assignment_matches_brute_force(
            ts in super::MIN_EVENT_TIME_MS..=super::MAX_EVENT_TIME_MS,
            advance in 1i64..100_000,
            k in 1i64..=50,
            tumbling in proptest::bool::ANY,
        ) {
            let size = if tumbling { advance } else { advance * k };
            let a = if tumbling {
                WindowAssigner::Tumbling { size }
            } else {
                WindowAssigner::Hopping { size, advance }
            };
            let got = assign(a, ts);
            let mut want = Vec::new();
            let first = (ts - size).div_euclid(advance) - 1;
            for i in first..=ts.div_euclid(advance) + 1 {
                let start = i * advance;
                if start <= ts && ts < start + size {
                    want.push((start, start + size));
                }
            }
            proptest::prop_assert_eq!(&got, &want);
            proptest::prop_assert_eq!(got.len() as i64, size / advance);
        }
    }
}
