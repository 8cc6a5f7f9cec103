//! `weir status`: one pipeline of `weir serve`, and the per-partition table that
//! `weir offsets` prints too.

use super::client::{opt, opt_time, print_table, Client, ServerArgs};
use crate::monitor::telemetry::PartitionStatus;
use crate::server::PipelineStatus;
use clap::Args;
use std::process::ExitCode;

/// One pipeline's status on `weir serve`.
#[derive(Args)]
pub struct StatusArgs {
    name: String,
    #[command(flatten)]
    server: ServerArgs,
}

pub fn run(a: StatusArgs) -> anyhow::Result<ExitCode> {
    let answer = Client::new(&a.server).ok("GET", &format!("/api/pipelines/{}", a.name), None)?;
    if a.server.json() {
        answer.print_json();
        return Ok(ExitCode::SUCCESS);
    }
    let s: PipelineStatus = answer.decode("pipeline status")?;
    let (live, c) = (&s.live, &s.live.counters);
    println!("pipeline:        {}", s.name);
    println!("state:           {}", live.state.as_str());
    if let Some(e) = &live.error {
        println!("error:           {e}");
    }
    println!("group:           {}", s.group);
    println!("topics:          {}", s.topics.join(", "));
    println!("sinks:           {}", s.sinks.join(", "));
    println!("dead letter:     {}", opt(s.dead_letter.as_ref()));
    println!("delivery:        {}", s.delivery);
    missing_offsets(&live.missing_offsets);
    println!("member:          {}", opt(live.member_id.as_ref()));
    println!("watermark:       {}", opt_time(live.watermark));
    println!(
        "last checkpoint: {} ({} checkpoints, last took {:.3} s)",
        opt_time(live.last_checkpoint),
        live.checkpoints,
        live.checkpoint_seconds_last
    );
    println!("state size:      {} bytes", live.state_bytes);
    if live.table_keys_expired > 0 {
        println!(
            "keys expired:    {} (the table's ttl)",
            live.table_keys_expired
        );
    }
    let r = &live.restore;
    if r.partitions > 0 {
        println!(
            "restored:        {} records, {} bytes from the changelog ({} partition restores, {:.3} s in all, last {:.3} s)",
            r.records, r.bytes, r.partitions, r.seconds_sum, r.seconds_last
        );
    }
    println!(
        "events:          {} in, {} out, {:.0}/s; dead letters: decode {}, schema {}, expression {}, late {}; filtered {}",
        c.events_in,
        c.results_out,
        live.events_per_second,
        c.dead_decode,
        c.dead_schema,
        c.dead_expression,
        c.dead_late,
        c.filtered
    );
    println!();
    partition_table(&live.partitions, false);
    if let Some(d) = &live.downstream {
        // A re-keying pipeline: the table above is its upstream stage's (source topics).
        println!();
        println!(
            "downstream stage (group {}-repartition: windows, aggregates, sinks): {}",
            s.group,
            d.state.as_str()
        );
        println!("watermark:       {}", opt_time(d.watermark));
        println!(
            "last checkpoint: {} ({} checkpoints); {} results out, {} late",
            opt_time(d.last_checkpoint),
            d.checkpoints,
            d.counters.results_out,
            d.counters.dead_late
        );
        println!();
        partition_table(&d.partitions, false);
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints per-partition rows (from a status or an offsets report).
pub fn partition_table(parts: &[PartitionStatus], with_committed: bool) {
    let rows: Vec<Vec<String>> = parts
        .iter()
        .map(|p| {
            let mut r = vec![p.topic.clone(), p.partition.to_string()];
            if with_committed {
                r.push(opt(p.committed));
            }
            r.extend([
                opt(p.state_offset),
                opt(p.log_end),
                opt(p.lag),
                opt_time(p.watermark),
                opt_time(p.last_event_time),
                opt(p.member.as_ref()),
            ]);
            r
        })
        .collect();
    let mut h = vec!["TOPIC", "PARTITION"];
    if with_committed {
        h.push("COMMITTED");
    }
    h.extend([
        "STATE",
        "LOG-END",
        "LAG",
        "WATERMARK",
        "LAST-EVENT",
        "MEMBER",
    ]);
    print_table(&h, &rows);
}

/// `source.on_missing_offsets` and the times it applied (`weir status`, `weir offsets`).
pub fn missing_offsets(m: &crate::monitor::telemetry::MissingOffsetsStatus) {
    if m.policy.is_empty() {
        return;
    }
    println!("missing offsets: {} ({} times)", m.policy, m.total);
    for o in &m.last {
        let then = match o.resumed_at {
            Some(r) => format!("went on from {r}"),
            None => "stopped".to_string(),
        };
        println!(
            "                 {} [{}]: offset {} gone (log {}..{}), {then}, at {}",
            o.topic,
            o.partition,
            o.offset,
            o.log_start,
            o.log_end,
            opt_time(Some(o.at))
        );
    }
}
