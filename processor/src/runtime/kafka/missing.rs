//! `source.on_missing_offsets`: where each assigned partition starts when the offset to
//! resume from (the state's, else the group's committed one) is no longer in the log,
//! because retention deleted the records (or the topic was recreated).
//!
//! On assignment every partition gets an explicit start: its offset, checked against the
//! log's first and next offsets; the log start for a partition with no offset anywhere (a
//! new group reads from the beginning, as before). A missing offset is reported
//! ([`Telemetry::OffsetMissing`]) and then `fail` stops the pipeline with an error naming
//! the partition, the offset and the log start; `earliest` goes on from the log start,
//! `latest` from the log end. librdkafka's `auto.offset.reset` is set to the same policy
//! (`error` for `fail`) for an offset that retention overtakes while the pipeline runs.

use crate::monitor::telemetry::{now_ms, Live, MissingOffset, Telemetry};
use crate::pipeline::plan::MissingOffsets;
use crate::runtime::RunError;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::{Offset, TopicPartitionList};
use std::time::Duration;

const BROKER_TIMEOUT: Duration = Duration::from_secs(10);

/// librdkafka's `auto.offset.reset` for the policy.
pub(super) fn auto_offset_reset(p: MissingOffsets) -> &'static str {
    match p {
        MissingOffsets::Fail => "error",
        MissingOffsets::Earliest => "earliest",
        MissingOffsets::Latest => "latest",
    }
}

/// Sets each partition of `tpl` to start where it should; `from_state` holds the offsets
/// the state resumes from. Returns the partitions moved by `earliest` or `latest` (the
/// driver then resumes them there); fails (`fail`) on the first missing offset.
pub(super) fn place<C: ConsumerContext>(
    c: &BaseConsumer<C>,
    policy: MissingOffsets,
    tpl: &mut TopicPartitionList,
    from_state: &[(String, i32, i64)],
    live: &Live,
) -> Result<Vec<(String, i32, i64)>, RunError> {
    let mut moved = Vec::new();
    let state_offset = |t: &str, p: i32| {
        from_state
            .iter()
            .find(|(st, sp, _)| st == t && *sp == p)
            .map(|x| x.2)
    };
    // The group's committed offsets, for the partitions the state has none of.
    let mut ask = TopicPartitionList::new();
    for e in tpl.elements() {
        if state_offset(e.topic(), e.partition()).is_none() {
            ask.add_partition(e.topic(), e.partition());
        }
    }
    let committed = if ask.count() > 0 {
        c.committed_offsets(ask, BROKER_TIMEOUT)
            .map_err(RunError::kafka("read the group's committed offsets"))?
    } else {
        TopicPartitionList::new()
    };
    let parts: Vec<(String, i32)> = tpl
        .elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect();
    for (t, p) in parts {
        let group = committed
            .find_partition(&t, p)
            .and_then(|e| match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            });
        let (offset, from) = match (state_offset(&t, p), group) {
            (Some(o), _) => (o, "the state"),
            (None, Some(o)) => (o, "the group's committed offset"),
            (None, None) => {
                let _ = tpl.set_partition_offset(&t, p, Offset::Beginning);
                continue;
            }
        };
        let (log_start, log_end) =
            c.fetch_watermarks(&t, p, BROKER_TIMEOUT)
                .map_err(RunError::kafka(format!(
                    "read the log start and end of {t} [{p}]"
                )))?;
        if (log_start..=log_end).contains(&offset) {
            let _ = tpl.set_partition_offset(&t, p, Offset::Offset(offset));
            continue;
        }
        let resumed_at = match policy {
            MissingOffsets::Fail => None,
            MissingOffsets::Earliest => Some(log_start),
            MissingOffsets::Latest => Some(log_end),
        };
        live.record(Telemetry::OffsetMissing(MissingOffset {
            topic: t.clone(),
            partition: p,
            offset,
            log_start,
            log_end,
            resumed_at,
            at: now_ms(),
        }));
        match resumed_at {
            Some(o) => {
                let _ = tpl.set_partition_offset(&t, p, Offset::Offset(o));
                moved.push((t, p, o));
            }
            None => {
                return Err(RunError::OffsetsMissing {
                    topic: t,
                    partition: p,
                    offset,
                    from,
                    log_start,
                    log_end,
                })
            }
        }
    }
    Ok(moved)
}
