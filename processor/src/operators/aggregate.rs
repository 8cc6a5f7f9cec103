//! Accumulators for the aggregate functions. Every function ignores nulls except
//! `count` without a field, which counts events. `sum`, `min`, `max`, `avg`, `first` and
//! `last` are null when no non-null value was seen. `first`/`last` order by event time,
//! ties by source offset, so the result does not depend on arrival order.

use super::{Row, Scalar};
use crate::pipeline::plan::{AggPlan, Plan};
use crate::pipeline::AggFn;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use std::collections::BTreeSet;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AccState {
    Count(i64),
    SumInt(Option<i64>),
    SumFloat(Option<f64>),
    Min(Option<Scalar>),
    Max(Option<Scalar>),
    Avg {
        sum: f64,
        n: i64,
    },
    Distinct(BTreeSet<Vec<u8>>),
    /// (event time, offset, value), boxed to keep every accumulator small
    First(Option<Box<(i64, i64, Scalar)>>),
    Last(Option<Box<(i64, i64, Scalar)>>),
}

/// The state of one window of one key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowAcc {
    /// Inline for up to three aggregates: one allocation less, one cache miss less per event.
    pub states: SmallVec<[AccState; 3]>,
    /// How many times this window was emitted (the emission sequence).
    pub emitted: u32,
    /// Changed since it was last emitted.
    pub changed: bool,
}

impl WindowAcc {
    pub fn new(plan: &Plan) -> WindowAcc {
        WindowAcc {
            states: plan.aggs.iter().map(init).collect(),
            emitted: 0,
            changed: false,
        }
    }

    pub fn add(&mut self, plan: &Plan, row: &Row, ts: i64, offset: i64) {
        for (st, a) in self.states.iter_mut().zip(&plan.aggs) {
            let v = a.field.map(|i| Scalar::of(&row[i]));
            update(st, v, ts, offset);
        }
        self.changed = true;
    }

    pub fn merge(&mut self, other: WindowAcc) {
        for (a, b) in self.states.iter_mut().zip(other.states) {
            merge(a, b);
        }
        self.emitted = self.emitted.max(other.emitted);
        self.changed = true;
    }

    pub fn results(&self) -> Vec<Scalar> {
        self.states.iter().map(result).collect()
    }
}

fn init(a: &AggPlan) -> AccState {
    match a.func {
        AggFn::Count => AccState::Count(0),
        AggFn::Sum => {
            if matches!(a.out.kind, crate::schema::Kind::Long) {
                AccState::SumInt(None)
            } else {
                AccState::SumFloat(None)
            }
        }
        AggFn::Min => AccState::Min(None),
        AggFn::Max => AccState::Max(None),
        AggFn::Avg => AccState::Avg { sum: 0.0, n: 0 },
        AggFn::CountDistinct => AccState::Distinct(BTreeSet::new()),
        AggFn::First => AccState::First(None),
        AggFn::Last => AccState::Last(None),
    }
}

fn update(st: &mut AccState, v: Option<Scalar>, ts: i64, off: i64) {
    let v = match v {
        None => {
            if let AccState::Count(n) = st {
                *n += 1;
            }
            return;
        }
        Some(Scalar::Null) => return,
        Some(v) => v,
    };
    match st {
        AccState::Count(n) => *n += 1,
        AccState::SumInt(s) => {
            if let Scalar::Int(i) = v {
                *s = Some(s.unwrap_or(0).wrapping_add(i));
            }
        }
        AccState::SumFloat(s) => {
            if let Some(f) = v.as_f64() {
                *s = Some(s.unwrap_or(0.0) + f);
            }
        }
        AccState::Min(m) => {
            if m.as_ref().is_none_or(|cur| v < *cur) {
                *m = Some(v);
            }
        }
        AccState::Max(m) => {
            if m.as_ref().is_none_or(|cur| v > *cur) {
                *m = Some(v);
            }
        }
        AccState::Avg { sum, n } => {
            if let Some(f) = v.as_f64() {
                *sum += f;
                *n += 1;
            }
        }
        AccState::Distinct(set) => {
            set.insert(bincode::serialize(&v).unwrap_or_default());
        }
        AccState::First(f) => {
            if f.as_ref().is_none_or(|x| (ts, off) < (x.0, x.1)) {
                *f = Some(Box::new((ts, off, v)));
            }
        }
        AccState::Last(l) => {
            if l.as_ref().is_none_or(|x| (ts, off) >= (x.0, x.1)) {
                *l = Some(Box::new((ts, off, v)));
            }
        }
    }
}

fn merge(a: &mut AccState, b: AccState) {
    match (a, b) {
        (AccState::Count(x), AccState::Count(y)) => *x += y,
        (AccState::SumInt(x), AccState::SumInt(Some(y))) => {
            *x = Some(x.unwrap_or(0).wrapping_add(y))
        }
        (AccState::SumFloat(x), AccState::SumFloat(Some(y))) => *x = Some(x.unwrap_or(0.0) + y),
        (AccState::Min(x), AccState::Min(Some(y))) if x.as_ref().is_none_or(|c| y < *c) => {
            *x = Some(y)
        }
        (AccState::Max(x), AccState::Max(Some(y))) if x.as_ref().is_none_or(|c| y > *c) => {
            *x = Some(y)
        }
        (AccState::Avg { sum, n }, AccState::Avg { sum: s2, n: n2 }) => {
            *sum += s2;
            *n += n2;
        }
        (AccState::Distinct(x), AccState::Distinct(y)) => x.extend(y),
        (AccState::First(x), AccState::First(Some(y)))
            if x.as_ref().is_none_or(|c| (y.0, y.1) < (c.0, c.1)) =>
        {
            *x = Some(y)
        }
        (AccState::Last(x), AccState::Last(Some(y)))
            if x.as_ref().is_none_or(|c| (y.0, y.1) >= (c.0, c.1)) =>
        {
            *x = Some(y)
        }
        _ => {}
    }
}

fn result(st: &AccState) -> Scalar {
    match st {
        AccState::Count(n) => Scalar::Int(*n),
        AccState::SumInt(s) => s.map(Scalar::Int).unwrap_or(Scalar::Null),
        AccState::SumFloat(s) => s.map(Scalar::Float).unwrap_or(Scalar::Null),
        AccState::Min(m) | AccState::Max(m) => m.clone().unwrap_or(Scalar::Null),
        AccState::Avg { sum, n } => {
            if *n == 0 {
                Scalar::Null
            } else {
                Scalar::Float(*sum / *n as f64)
            }
        }
        AccState::Distinct(s) => Scalar::Int(s.len() as i64),
        AccState::First(f) | AccState::Last(f) => {
            f.as_ref().map(|x| x.2.clone()).unwrap_or(Scalar::Null)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The write cache holds millions of these: keep them small (see `weir bench`).
    #[test]
    fn accumulators_stay_small() {
        assert!(
            std::mem::size_of::<AccState>() <= 40,
            "{}",
            std::mem::size_of::<AccState>()
        );
        assert!(
            std::mem::size_of::<WindowAcc>() <= 136,
            "{}",
            std::mem::size_of::<WindowAcc>()
        );
    }
}
