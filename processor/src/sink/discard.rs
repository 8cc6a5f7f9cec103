//! A sink that encodes every result in Avro and keeps only the count of bytes: what the
//! benchmark measures the pipeline into (like Flink's `DiscardingSink` or Arroyo's
//! `blackhole`). Not a sink a pipeline definition can name.

use super::{Output, Sink, SinkError};

#[derive(Default)]
pub struct DiscardSink {
    /// Bytes of Avro written so far.
    pub bytes: u64,
}

impl Sink for DiscardSink {
    fn name(&self) -> &str {
        "discard"
    }

    fn wants_avro(&self) -> bool {
        true
    }

    fn wants_json(&self) -> bool {
        false
    }

    fn wants_key(&self) -> bool {
        false
    }

    fn write(&mut self, out: &Output<'_>) -> Result<(), SinkError> {
        self.bytes += out.avro.len() as u64;
        Ok(())
    }

    fn flush(&mut self) -> Result<Option<u64>, SinkError> {
        Ok(None)
    }
}
