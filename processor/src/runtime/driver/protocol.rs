//! The checkpoint: the protocol of the [driver](super)'s module doc, step by step.

use super::Driver;
use crate::faults::{reached, Point};
use crate::monitor::telemetry::Telemetry;
use crate::runtime::RunError;
use crate::state::changelog;
use crate::state::changelog::Tee;
use crate::state::checkpoint::{self, Checkpoint};
use std::time::Instant;

impl Driver<'_> {
    /// Marks the session failed: no checkpoint may be written any more.
    pub fn poison(&mut self) {
        self.poisoned = true;
    }

    /// Steps 1-3 of the protocol; `after` is step 3.
    pub fn checkpoint(&mut self, after: &mut dyn FnMut(&Checkpoint)) -> Result<(), RunError> {
        if self.poisoned {
            return Err(RunError::SessionFailed);
        }
        let r = self.checkpoint_inner(after);
        self.poisoned |= r.is_err();
        r
    }

    fn checkpoint_inner(&mut self, after: &mut dyn FnMut(&Checkpoint)) -> Result<(), RunError> {
        let started = Instant::now();
        // Crash points (tests): only checkpoints with results in flight count.
        let in_flight = self.writer.written > self.written_at_checkpoint;
        let point = |p: Point| {
            if in_flight {
                reached(p)
            }
        };
        point(Point::CheckpointBegin);
        self.send_markers()?;
        let mut lengths = Vec::with_capacity(self.sinks.len());
        for s in self.sinks.iter_mut() {
            let t = Instant::now();
            lengths.push(s.as_sink().flush()?);
            let label = s.label();
            self.live.record(Telemetry::SinkFlushed {
                sink: &label,
                took: t.elapsed(),
            });
        }
        point(Point::SinksFlushed);
        let t = Instant::now();
        let dead_letter = self.dead.flush()?;
        self.live.record(Telemetry::SinkFlushed {
            sink: "dead_letter",
            took: t.elapsed(),
        });
        point(Point::DeadLettersFlushed);
        let cp = Checkpoint {
            pipeline: self.plan.name.clone(),
            position: self.position,
            offsets: self.positions(),
            watermarks: self.engine.watermarks.clone(),
            windows: self.engine.windows.meta(),
            counters: self.engine.counters.clone(),
            sinks: lengths,
            dead_letter,
            clock: self.engine.clock,
        };
        let mut batch = rocksdb::WriteBatch::default();
        // Re-keying, downstream: each partition's upstream record (`u|`), kept locally too.
        let upstream = self.upstream_changes()?;
        for c in &upstream {
            batch.put(&c.key, c.value.as_deref().unwrap_or_default());
        }
        if self.changelog.is_some() {
            let mut changes = self.full_entries()?;
            self.engine
                .windows
                .checkpoint_into(&mut Tee(&mut batch, &mut changes))?;
            changes.extend(upstream);
            for c in self.finished_guards()? {
                batch.delete(&c.key);
                changes.push(c);
            }
            let owned: std::collections::BTreeSet<u32> =
                self.offsets.keys().map(|(_, p)| *p as u32).collect();
            for p in owned {
                let c = self.partition_meta(p).change(p)?;
                // The local store keeps it too: a partition that comes back finds it.
                if let Some(v) = &c.value {
                    batch.put(&c.key, v);
                }
                changes.push(c);
            }
            if let Some(log) = self.changelog.as_mut() {
                log.send(&changes, &cp.offsets)?;
                point(Point::TransactionSent);
                // From here a crash may leave the commit done and the local batch not:
                // the restart rolls forward, so its files must keep these lengths.
                checkpoint::put_lengths(
                    &mut self.store,
                    &checkpoint::Lengths {
                        sinks: cp.sinks.clone(),
                        dead_letter: cp.dead_letter,
                    },
                )?;
                let reached = log.commit(&changes)?;
                self.positions.extend(reached);
                point(Point::ChangelogCommitted);
            }
            changelog::put_positions(&mut batch, &self.positions)?;
        } else {
            self.engine.windows.checkpoint_into(&mut batch)?;
        }
        checkpoint::save(
            &mut self.store,
            &mut self.engine.windows,
            batch,
            &cp,
            self.engine.replay.as_ref(),
        )?;
        point(Point::StateWritten);
        after(&cp);
        point(Point::OffsetsCommitted);
        self.written_at_checkpoint = self.writer.written;
        self.since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
        self.checkpoints += 1;
        let took = started.elapsed();
        if self.latencies.is_some() {
            self.checkpoint_times.push(took);
        }
        self.live.record(Telemetry::CheckpointWritten {
            took,
            state_bytes: self.store.size_bytes(),
        });
        Ok(())
    }
}
