//! Offsets of any consumer group, as `kafka-consumer-groups --describe` shows them: per
//! partition the committed offset (OffsetFetch, without joining the group), the log-end
//! offset (ListOffsets) and the lag between them, with the owning member when the broker
//! describes the group (DescribeGroups; the consumer protocol's assignment is decoded).

use super::telemetry::{LiveStatus, PartitionStatus};
use crate::kafka_client::{self, Role};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::time::Duration;

/// A group's member and the partitions it owns.
#[derive(Debug, Clone)]
pub struct Member {
    pub id: String,
    pub client_id: String,
    pub partitions: Vec<(String, i32)>,
}

pub struct GroupOffsets {
    pub group: String,
    pub state: Option<String>,
    pub partitions: Vec<PartitionStatus>,
}

fn client(brokers: &str, group: &str, extra: &[(String, String)]) -> Result<BaseConsumer, String> {
    kafka_client::config(brokers, Role::Tool { group }, extra)
        .create()
        .map_err(|e| format!("cannot create a Kafka client for {brokers}: {e}"))
}

/// Adds a running pipeline's own view to its group's rows: its position, watermark and
/// owner per partition. Its position is ahead of the committed offset between checkpoints,
/// so lag counts from what it has processed. A partition that another member owns (another
/// instance or server of the same pipeline, as the group describes it) keeps the group's
/// view: what this instance knows of it is from before it moved.
pub fn merge_live(rows: &mut [PartitionStatus], live: &LiveStatus) {
    for r in rows.iter_mut() {
        let Some(l) = live
            .partitions
            .iter()
            .find(|l| l.topic == r.topic && l.partition == r.partition)
        else {
            continue;
        };
        let here = l.member.is_some();
        if !here && r.member.is_some() {
            continue;
        }
        r.state_offset = l.state_offset;
        r.watermark = l.watermark;
        r.last_event_time = l.last_event_time;
        if r.member.is_none() {
            r.member = l.member.clone();
        }
        if let (Some(end), Some(pos)) = (r.log_end, l.state_offset.or(r.committed)) {
            r.lag = Some((end - pos).max(0));
        }
    }
}

/// The consumer protocol's MemberAssignment: version, [topic, [partition]], user data.
pub fn decode_assignment(b: &[u8]) -> Option<Vec<(String, i32)>> {
    let mut at = 0usize;
    let mut take = |n: usize| -> Option<&[u8]> {
        let s = b.get(at..at + n)?;
        at += n;
        Some(s)
    };
    let _version = i16::from_be_bytes(take(2)?.try_into().ok()?);
    let topics = i32::from_be_bytes(take(4)?.try_into().ok()?);
    let mut out = Vec::new();
    for _ in 0..topics.clamp(0, 100_000) {
        let len = i16::from_be_bytes(take(2)?.try_into().ok()?);
        let name = String::from_utf8(take(len.max(0) as usize)?.to_vec()).ok()?;
        let n = i32::from_be_bytes(take(4)?.try_into().ok()?);
        for _ in 0..n.clamp(0, 1_000_000) {
            let p = i32::from_be_bytes(take(4)?.try_into().ok()?);
            out.push((name.clone(), p));
        }
    }
    Some(out)
}

/// Describes the group's members (DescribeGroups). `None` when the broker cannot.
pub fn members(c: &BaseConsumer, group: &str, timeout: Duration) -> Option<(String, Vec<Member>)> {
    let list = c.fetch_group_list(Some(group), timeout).ok()?;
    let g = list.groups().iter().find(|g| g.name() == group)?;
    let members = g
        .members()
        .iter()
        .map(|m| Member {
            id: m.id().to_string(),
            client_id: m.client_id().to_string(),
            partitions: m
                .assignment()
                .and_then(decode_assignment)
                .unwrap_or_default(),
        })
        .collect();
    Some((g.state().to_string(), members))
}

/// Committed and log-end offsets of `group` on `topics` (all partitions). With no topics,
/// the topics its members are assigned (which needs DescribeGroups).
pub fn group_offsets(
    brokers: &str,
    group: &str,
    topics: &[String],
    describe: bool,
    extra: &[(String, String)],
    timeout: Duration,
) -> Result<GroupOffsets, String> {
    let c = client(brokers, group, extra)?;
    let described = if describe {
        members(&c, group, timeout)
    } else {
        None
    };
    let mut owner: BTreeMap<(String, i32), String> = BTreeMap::new();
    let mut topics: Vec<String> = topics.to_vec();
    if let Some((_, ms)) = &described {
        for m in ms {
            for p in &m.partitions {
                owner.insert(p.clone(), format!("{} ({})", m.id, m.client_id));
                if !topics.contains(&p.0) {
                    topics.push(p.0.clone());
                }
            }
        }
    }
    if topics.is_empty() {
        return Err(match (describe, &described) {
            (true, None) => format!(
                "the brokers did not describe group `{group}` (DescribeGroups failed; tansu does not answer it): name its topics with --topic"
            ),
            _ => format!(
                "group `{group}` has no member to say which topics it reads; name them with --topic"
            ),
        });
    }
    let mut tpl = TopicPartitionList::new();
    for t in &topics {
        let md = c
            .fetch_metadata(Some(t), timeout)
            .map_err(|e| format!("cannot read the metadata of topic `{t}` from {brokers}: {e}"))?;
        for mt in md.topics() {
            if let Some(err) = mt.error() {
                return Err(format!("topic `{t}`: {err:?}"));
            }
            for p in mt.partitions() {
                tpl.add_partition(t, p.id());
            }
        }
    }
    let committed = c
        .committed_offsets(tpl.clone(), timeout)
        .map_err(|e| format!("cannot fetch the committed offsets of group `{group}`: {e}"))?;
    let mut rows = Vec::new();
    for e in committed.elements() {
        let committed = match e.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        };
        let log_end = c
            .fetch_watermarks(e.topic(), e.partition(), timeout)
            .ok()
            .map(|(_, hi)| hi);
        let key = (e.topic().to_string(), e.partition());
        rows.push(PartitionStatus {
            topic: e.topic().to_string(),
            partition: e.partition(),
            committed,
            state_offset: None,
            log_end,
            lag: log_end.map(|end| (end - committed.unwrap_or(0)).max(0)),
            watermark: None,
            last_event_time: None,
            member: owner.get(&key).cloned(),
        });
    }
    rows.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    Ok(GroupOffsets {
        group: group.to_string(),
        state: described.map(|(s, _)| s),
        partitions: rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(partition: i32, member: Option<&str>) -> PartitionStatus {
        PartitionStatus {
            topic: "t".into(),
            partition,
            committed: Some(10),
            log_end: Some(100),
            lag: Some(90),
            member: member.map(String::from),
            ..Default::default()
        }
    }

    /// Two servers of one pipeline: each partition shows its owner from the group, and only
    /// the partitions this one owns take its position.
    #[test]
    fn merge_keeps_the_owner_of_a_partition_held_elsewhere() {
        let mut rows = vec![
            row(0, Some("m-a (weir)")),
            row(1, Some("m-b (weir)")),
            row(2, None),
        ];
        let mut live = LiveStatus::default();
        for (p, member) in [(0, Some("m-a")), (1, None), (2, Some("m-a"))] {
            live.partitions.push(PartitionStatus {
                topic: "t".into(),
                partition: p,
                state_offset: Some(50),
                member: member.map(String::from),
                ..Default::default()
            });
        }
        merge_live(&mut rows, &live);
        let got: Vec<(Option<&str>, Option<i64>, Option<i64>)> = rows
            .iter()
            .map(|r| (r.member.as_deref(), r.state_offset, r.lag))
            .collect();
        assert_eq!(
            got,
            vec![
                (Some("m-a (weir)"), Some(50), Some(50)),
                (Some("m-b (weir)"), None, Some(90)),
                (Some("m-a"), Some(50), Some(50)),
            ]
        );
    }

    #[test]
    fn decodes_a_consumer_protocol_assignment() {
        let mut b = vec![0, 1, 0, 0, 0, 1, 0, 5];
        b.extend_from_slice(b"click");
        b.extend_from_slice(&[0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 3, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(
            decode_assignment(&b),
            Some(vec![("click".into(), 0), ("click".into(), 3)])
        );
        assert_eq!(decode_assignment(&b[..9]), None);
    }
}
