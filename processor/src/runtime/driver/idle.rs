//! `watermark.idle_advance`: time that moves when traffic stops (Kafka).

use super::{Driver, RunError};
use std::time::{Duration, Instant};

impl Driver<'_> {
    /// No record this poll. With `watermark.idle_advance`, on a Kafka source (`positioned`):
    /// once no partition has delivered a record for that long, every partition's watermark
    /// moves with the wall clock (a step at most once a second) and the windows it passes
    /// close and emit; results written so make a checkpoint due. A file input never gets
    /// here with time to spare, and its time stays the events' own (deterministic). Upstream
    /// of a repartition nothing closes: the downstream stage advances its own partitions.
    pub(super) fn idle(&mut self, positioned: bool) -> Result<(), RunError> {
        let Some(after) = self.plan.source.idle_advance_ms else {
            return Ok(());
        };
        if !positioned || self.plan.stage == crate::pipeline::plan::Stage::Upstream {
            return Ok(());
        }
        let quiet = self.last_record.unwrap_or(self.opened).elapsed();
        if quiet < Duration::from_millis(after.max(0) as u64)
            || self
                .last_advance
                .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return Ok(());
        }
        self.last_advance = Some(Instant::now());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let written = self.writer.written;
        let (writer, sinks) = (&mut self.writer, &mut self.sinks);
        let moved = self
            .engine
            .advance_idle(&self.store, now, &mut |e| writer.write(&e, sinks))?;
        self.writer.check()?;
        if self.writer.written > written {
            tracing::info!(
                pipeline = %self.plan.name,
                results = self.writer.written - written,
                quiet_ms = quiet.as_millis() as u64,
                "no record for watermark.idle_advance: the watermark moved with the wall clock"
            );
            self.since_checkpoint = self.since_checkpoint.max(1);
        } else if moved {
            tracing::debug!(pipeline = %self.plan.name, "idle advance: the watermark moved with the wall clock");
        }
        Ok(())
    }
}
