//! `GET /metrics`: the live status of every pipeline in the Prometheus text format
//! (version 0.0.4). Counters are cumulative over restarts (they are checkpointed).

use super::telemetry::{now_ms, LiveStatus, RunState};
use std::fmt::Write;

fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Out {
    text: String,
}

impl Out {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], v: f64) {
        let l: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", esc(v)))
            .collect();
        let _ = writeln!(self.text, "{name}{{{}}} {v}", l.join(","));
    }
}

/// Renders the metrics of `pipelines` (name, status).
pub fn render(pipelines: &[(String, LiveStatus)]) -> String {
    let mut o = Out {
        text: String::new(),
    };
    let now = now_ms();
    o.head(
        "weir_pipeline_up",
        "gauge",
        "1 when the pipeline is consuming, 0 when paused, starting or retrying.",
    );
    for (n, s) in pipelines {
        o.sample(
            "weir_pipeline_up",
            &[("pipeline", n), ("state", s.state.as_str())],
            f64::from(u8::from(s.state == RunState::Running)),
        );
    }
    type Counter = (&'static str, &'static str, fn(&LiveStatus) -> u64);
    let counters: [Counter; 3] = [
        (
            "weir_records_in_total",
            "Records read from the source.",
            |s| s.counters.events_in,
        ),
        (
            "weir_results_out_total",
            "Derived events emitted to the sinks.",
            |s| s.counters.results_out,
        ),
        (
            "weir_filtered_total",
            "Events dropped by a filter step.",
            |s| s.counters.filtered,
        ),
    ];
    for (name, help, f) in counters {
        o.head(name, "counter", help);
        for (n, s) in pipelines {
            o.sample(name, &[("pipeline", n)], f(s) as f64);
        }
    }
    o.head(
        "weir_dead_letters_total",
        "counter",
        "Records sent to the dead letter, by reason (decode, schema, expression, late).",
    );
    for (n, s) in pipelines {
        let c = &s.counters;
        for (reason, v) in [
            ("decode", c.dead_decode),
            ("schema", c.dead_schema),
            ("expression", c.dead_expression),
            ("late", c.dead_late),
        ] {
            o.sample(
                "weir_dead_letters_total",
                &[("pipeline", n), ("reason", reason)],
                v as f64,
            );
        }
    }
    o.head(
        "weir_missing_offsets_total",
        "counter",
        "Offsets to resume from that the log no longer held (retention), handled by source.on_missing_offsets (the policy label).",
    );
    for (n, s) in pipelines {
        let m = &s.missing_offsets;
        if !m.policy.is_empty() {
            o.sample(
                "weir_missing_offsets_total",
                &[("pipeline", n), ("policy", m.policy.as_str())],
                m.total as f64,
            );
        }
    }
    o.head(
        "weir_late_events_total",
        "counter",
        "Events that arrived after every window they belong to had closed.",
    );
    for (n, s) in pipelines {
        o.sample(
            "weir_late_events_total",
            &[("pipeline", n)],
            s.counters.dead_late as f64,
        );
    }
    o.head(
        "weir_events_per_second",
        "gauge",
        "Records in per second over the last seconds.",
    );
    for (n, s) in pipelines {
        o.sample(
            "weir_events_per_second",
            &[("pipeline", n)],
            s.events_per_second,
        );
    }
    o.head(
        "weir_consumer_lag",
        "gauge",
        "Records between the pipeline's position and the log end, per partition.",
    );
    for (n, s) in pipelines {
        for p in &s.partitions {
            if let Some(lag) = p.lag {
                let part = p.partition.to_string();
                o.sample(
                    "weir_consumer_lag",
                    &[("pipeline", n), ("topic", &p.topic), ("partition", &part)],
                    lag as f64,
                );
            }
        }
    }
    o.head(
        "weir_partition_watermark_seconds",
        "gauge",
        "Per partition: largest event time minus max_out_of_orderness (Unix seconds).",
    );
    for (n, s) in pipelines {
        for p in &s.partitions {
            if let Some(w) = p.watermark {
                let part = p.partition.to_string();
                o.sample(
                    "weir_partition_watermark_seconds",
                    &[("pipeline", n), ("topic", &p.topic), ("partition", &part)],
                    w as f64 / 1000.0,
                );
            }
        }
    }
    o.head(
        "weir_watermark_seconds",
        "gauge",
        "The pipeline's watermark: windows ending before it (plus grace) are closed.",
    );
    o.head_only_samples(pipelines, "weir_watermark_seconds", |s| {
        s.watermark.map(|w| w as f64 / 1000.0)
    });
    o.head(
        "weir_event_time_lag_seconds",
        "gauge",
        "Wall-clock time minus the watermark.",
    );
    o.head_only_samples(pipelines, "weir_event_time_lag_seconds", |s| {
        s.watermark.map(|w| (now - w) as f64 / 1000.0)
    });
    o.head(
        "weir_checkpoint_duration_seconds",
        "summary",
        "Checkpoint time: flush and acknowledge every sink, write RocksDB, commit offsets.",
    );
    for (n, s) in pipelines {
        o.sample(
            "weir_checkpoint_duration_seconds_sum",
            &[("pipeline", n)],
            s.checkpoint_seconds_sum,
        );
        o.sample(
            "weir_checkpoint_duration_seconds_count",
            &[("pipeline", n)],
            s.checkpoints as f64,
        );
    }
    o.head(
        "weir_last_checkpoint_timestamp_seconds",
        "gauge",
        "When the last checkpoint was written (Unix seconds).",
    );
    o.head_only_samples(pipelines, "weir_last_checkpoint_timestamp_seconds", |s| {
        s.last_checkpoint.map(|t| t as f64 / 1000.0)
    });
    o.head(
        "weir_state_size_bytes",
        "gauge",
        "RocksDB's estimate of the live state size.",
    );
    o.head_only_samples(pipelines, "weir_state_size_bytes", |s| {
        Some(s.state_bytes as f64)
    });
    type Figure = fn(&LiveStatus) -> f64;
    let figures: [(&str, &str, Figure); 4] = [
        (
            "weir_changelog_restored_records_total",
            "Changelog records read to restore assigned partitions (state.changelog).",
            |s| s.restore.records as f64,
        ),
        (
            "weir_changelog_restored_bytes_total",
            "Bytes (keys and values) of the changelog records read to restore partitions.",
            |s| s.restore.bytes as f64,
        ),
        (
            "weir_changelog_restore_seconds_total",
            "Time spent restoring partitions from the changelog.",
            |s| s.restore.seconds_sum,
        ),
        (
            "weir_table_keys_expired_total",
            "A table's keys (window type none) dropped by its ttl, untouched that long in event time.",
            |s| s.table_keys_expired as f64,
        ),
    ];
    for (name, help, figure) in figures {
        o.head(name, "counter", help);
        o.head_only_samples(pipelines, name, |s| Some(figure(s)));
    }
    o.head(
        "weir_sink_flush_duration_seconds",
        "summary",
        "Time a sink took to acknowledge everything written since the last checkpoint.",
    );
    for (n, s) in pipelines {
        for (sink, l) in &s.sink_flush {
            o.sample(
                "weir_sink_flush_duration_seconds_sum",
                &[("pipeline", n), ("sink", sink)],
                l.seconds_sum,
            );
            o.sample(
                "weir_sink_flush_duration_seconds_count",
                &[("pipeline", n), ("sink", sink)],
                l.flushes as f64,
            );
        }
    }
    o.text
}

impl Out {
    fn head_only_samples(
        &mut self,
        pipelines: &[(String, LiveStatus)],
        name: &str,
        f: impl Fn(&LiveStatus) -> Option<f64>,
    ) {
        for (n, s) in pipelines {
            if let Some(v) = f(s) {
                self.sample(name, &[("pipeline", n)], v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::telemetry::PartitionStatus;

    #[test]
    fn renders_labels_and_escapes() {
        let mut s = LiveStatus::default();
        s.counters.events_in = 7;
        s.counters.dead_late = 2;
        s.partitions.push(PartitionStatus {
            topic: "t".into(),
            partition: 3,
            lag: Some(5),
            ..Default::default()
        });
        let text = render(&[("a\"b".into(), s)]);
        assert!(text.contains("weir_records_in_total{pipeline=\"a\\\"b\"} 7\n"));
        assert!(text.contains("weir_dead_letters_total{pipeline=\"a\\\"b\",reason=\"late\"} 2\n"));
        assert!(
            text.contains("weir_consumer_lag{pipeline=\"a\\\"b\",topic=\"t\",partition=\"3\"} 5\n")
        );
        assert!(text.contains("# TYPE weir_checkpoint_duration_seconds summary\n"));
    }

    /// Restores reach `/metrics` from the telemetry events alone; a check that read nothing
    /// (a current store) counts no restore.
    #[test]
    fn restores_from_the_changelog_are_counted() {
        use crate::monitor::telemetry::{Live, Telemetry};
        use std::time::Duration;
        let live = Live::new("p");
        live.record(Telemetry::Restored {
            partitions: &[(0, 0, 0), (1, 0, 0)],
            took: Duration::from_millis(3),
        });
        assert_eq!(live.snapshot().restore, Default::default());
        live.record(Telemetry::Restored {
            partitions: &[(0, 120, 4_000), (1, 0, 0), (2, 30, 1_000)],
            took: Duration::from_millis(250),
        });
        live.record(Telemetry::Restored {
            partitions: &[(3, 10, 500)],
            took: Duration::from_millis(500),
        });
        let s = live.snapshot();
        assert_eq!(
            (s.restore.partitions, s.restore.records, s.restore.bytes),
            (3, 160, 5_500)
        );
        assert_eq!(s.restore.seconds_last, 0.5);
        let text = render(&[("p".into(), s)]);
        assert!(text.contains("weir_changelog_restored_records_total{pipeline=\"p\"} 160\n"));
        assert!(text.contains("weir_changelog_restored_bytes_total{pipeline=\"p\"} 5500\n"));
        assert!(text.contains("weir_changelog_restore_seconds_total{pipeline=\"p\"} 0.75\n"));
        assert!(text.contains("# TYPE weir_changelog_restored_records_total counter\n"));
    }
}
