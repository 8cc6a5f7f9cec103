//! The driver's side of a re-keying pipeline ([`crate::operators::repartition`]): where
//! the upstream stage's events go, the markers each of its checkpoints sends, and the
//! downstream partitions' record of their upstream partitions (`u | partition`), kept
//! with the state.

use super::{Driver, RunError};
use crate::operators::repartition::{upstream_key, Hop, Upstream};
use crate::pipeline::plan::{Plan, Stage};
use crate::runtime::engine::Engine;
use crate::state::changelog::Change;
use crate::state::{StateError, Store};

/// Where the upstream stage of a re-keying pipeline sends its records (Kafka: the
/// repartition topic, [`super::kafka`]).
pub trait Router: Send {
    /// The repartition topic's partition count.
    fn partitions(&self) -> u32;
    /// How many upstream (source) partitions there are, for the markers.
    fn upstream_partitions(&self) -> u32;
    fn send(&mut self, partition: u32, key: &[u8], value: &[u8]) -> Result<(), RunError>;
    /// Waits until every record sent so far is acknowledged.
    fn flush(&mut self) -> Result<(), RunError>;
}

/// Downstream (and offline): each partition's upstream record as the store has it.
pub(super) fn load_upstream(
    plan: &Plan,
    store: &Store,
    engine: &mut Engine<'_>,
) -> Result<(), RunError> {
    if plan.repartition.is_none() || plan.stage == Stage::Upstream {
        return Ok(());
    }
    for (k, v) in store.scan(b"u")? {
        if let (Some(p), Ok(u)) = (
            k.get(1..5)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_be_bytes),
            bincode::deserialize::<Upstream>(&v),
        ) {
            engine.upstream.insert(p, u);
        }
    }
    Ok(())
}

impl Driver<'_> {
    /// From now on re-keyed events (upstream of a repartition) go to `router`.
    pub fn route_to(&mut self, router: Box<dyn Router>) {
        self.engine.hop_partitions = router.partitions();
        self.router = Some(router);
    }

    /// Upstream: the record's re-keyed event, on its way.
    pub(super) fn send_routed(&mut self) -> Result<(), RunError> {
        if let Some(r) = self.router.as_mut() {
            for (p, k, v) in self.engine.routed.drain(..) {
                r.send(p, &k, &v)?;
            }
        }
        Ok(())
    }

    /// Step 1 upstream: each owned partition's time, after its events, to every downstream
    /// partition; then every repartition record is acknowledged.
    pub(super) fn send_markers(&mut self) -> Result<(), RunError> {
        let Some(r) = self.router.as_mut() else {
            return Ok(());
        };
        let total = r.upstream_partitions();
        let owned: std::collections::BTreeSet<u32> =
            self.offsets.keys().map(|(_, p)| *p as u32).collect();
        for sp in owned {
            let max = self.engine.watermarks.max_event_time(sp);
            if max == i64::MIN {
                continue;
            }
            let m = Hop::Marker { sp, max, total }.encode();
            for dp in 0..r.partitions() {
                r.send(dp, b"", &m)?;
            }
        }
        r.flush()
    }

    /// Each downstream partition's record of its upstream partitions (`u | partition`),
    /// written with every checkpoint (and to the changelog).
    pub(super) fn upstream_changes(&self) -> Result<Vec<Change>, RunError> {
        let mut out = Vec::new();
        // Only owned partitions (Kafka): another instance's record is its own to write.
        let owned: std::collections::BTreeSet<u32> =
            self.offsets.keys().map(|(_, p)| *p as u32).collect();
        for (p, u) in &self.engine.upstream {
            if !self.offsets.is_empty() && !owned.contains(p) {
                continue;
            }
            let v = bincode::serialize(u).map_err(|e| StateError::Corrupt(e.to_string()))?;
            out.push(Change {
                partition: *p,
                key: upstream_key(*p),
                value: Some(v),
            });
        }
        Ok(out)
    }
}
