//! The commands that talk to `weir serve`: deploy, pipelines, status, pause, resume, stop,
//! replay, replay-dlq.

use crate::monitor::telemetry::PartitionStatus;
use crate::schema::json::fmt_ms;
use crate::schema::SchemaResolver;
use crate::server::{
    referenced_schemas, DeployRequest, PipelineStatus, PipelineSummary, ReplayRequest,
};
use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

/// Where the server is.
#[derive(Args, Clone)]
pub struct ServerArgs {
    /// The `weir serve` URL.
    #[arg(long, env = "WEIR_SERVER", default_value = "http://127.0.0.1:7878")]
    pub server: String,
    /// The server's token, for changes [env: WEIR_TOKEN].
    #[arg(long, env = "WEIR_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[arg(long, value_enum, default_value = "table")]
    pub output: OutputFormat,
}

pub struct Client {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl Client {
    pub fn new(a: &ServerArgs) -> Client {
        Client {
            base: a.server.trim_end_matches('/').to_string(),
            token: a.token.clone().filter(|t| !t.is_empty()),
            agent: ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_secs(300)))
                .http_status_as_error(false)
                .build()
                .into(),
        }
    }

    /// Sends a request; returns the status and the JSON body.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let url = format!("{}{}", self.base, path);
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let result = match (method, body) {
            ("GET", _) => {
                let mut r = self.agent.get(&url);
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                r.call()
            }
            ("DELETE", _) => {
                let mut r = self.agent.delete(&url);
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                r.call()
            }
            (_, b) => {
                let mut r = self.agent.post(&url);
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                match b {
                    Some(b) => r
                        .header("Content-Type", "application/json")
                        .send(b.to_string().as_str()),
                    None => r.send_empty(),
                }
            }
        };
        let mut resp = result.with_context(|| {
            format!(
                "cannot reach the Weir server at {}; start it with `weir serve` or pass --server",
                self.base
            )
        })?;
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, v))
    }

    /// Like `call`, but a non-2xx answer becomes an error with the server's message.
    pub fn ok(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let (status, v) = self.call(method, path, body)?;
        if !(200..300).contains(&status) {
            bail!("{}", error_text(status, &v));
        }
        Ok(v)
    }
}

fn error_text(status: u16, v: &Value) -> String {
    let mut s = format!(
        "the server answered {status}: {}",
        v.get("error")
            .and_then(Value::as_str)
            .unwrap_or(&v.to_string())
    );
    if let Some(rs) = v.get("reasons").and_then(Value::as_array) {
        for r in rs {
            s.push_str(&format!("\n  - {}", r.as_str().unwrap_or_default()));
        }
    }
    s
}

/// Prints rows as aligned columns.
pub fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            let w = widths.get(i).copied().unwrap_or(0);
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}  "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r.clone());
    }
}

pub fn num(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub fn time(v: &Value) -> String {
    v.as_i64().map(fmt_ms).unwrap_or_else(|| "-".into())
}

/// A value the server may not have: `-` when it has none.
pub fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

/// A time the server may not have (ms since the epoch), as RFC 3339.
pub fn opt_time(ms: Option<i64>) -> String {
    ms.map(fmt_ms).unwrap_or_else(|| "-".into())
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// Deploy a pipeline definition to `weir serve` (validated there first). Its schemas are
/// sent along. A changed definition keeps the state when its key, window, aggregates and
/// event time are unchanged; otherwise give --reset-state.
#[derive(Args)]
pub struct DeployArgs {
    pipeline: PathBuf,
    /// Discard the pipeline's state (and rewind its group) when the change needs it.
    #[arg(long)]
    reset_state: bool,
    /// A directory to look for schemas in first.
    #[arg(long)]
    schemas: Option<PathBuf>,
    #[command(flatten)]
    server: ServerArgs,
}

pub fn deploy(a: DeployArgs) -> anyhow::Result<ExitCode> {
    let definition = std::fs::read_to_string(&a.pipeline)
        .with_context(|| format!("cannot read {}", a.pipeline.display()))?;
    let resolver = SchemaResolver::for_pipeline(&a.pipeline, a.schemas.as_deref());
    let mut schemas = BTreeMap::new();
    for name in referenced_schemas(&definition) {
        // A schema that is not found here is reported by the server, with its path.
        if let Ok(path) = resolver.find(&name) {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let file = std::path::Path::new(&name)
                .file_name()
                .and_then(|f| f.to_str())
                .unwrap_or(&name)
                .to_string();
            schemas.insert(file, text);
        }
    }
    // The server stores schemas by file name: the definition must name them so too.
    let definition = rewrite_schema_paths(&definition);
    let req = DeployRequest {
        definition,
        schemas,
        reset_state: a.reset_state,
    };
    let c = Client::new(&a.server);
    let (status, v) = c.call("POST", "/api/pipelines", Some(&serde_json::to_value(&req)?))?;
    if status == 400 && v.get("problems").is_some() {
        if a.server.output == OutputFormat::Json {
            print_json(&v);
        } else {
            let file = a.pipeline.display().to_string();
            let problems = v["problems"].as_array().cloned().unwrap_or_default();
            for p in &problems {
                let line = p["line"]
                    .as_u64()
                    .map(|l| format!(":{l}"))
                    .unwrap_or_default();
                let path = p["path"].as_str().unwrap_or_default();
                let path = if path.is_empty() {
                    String::new()
                } else {
                    format!("{path}: ")
                };
                eprintln!(
                    "error: {file}{line}: {path}{}\n  fix: {}",
                    p["message"].as_str().unwrap_or_default(),
                    p["fix"].as_str().unwrap_or_default()
                );
            }
            eprintln!(
                "{file}: {} problem(s); nothing was deployed",
                problems.len()
            );
        }
        return Ok(ExitCode::from(1));
    }
    if !(200..300).contains(&status) {
        eprintln!("error: {}", error_text(status, &v));
        return Ok(ExitCode::from(1));
    }
    if a.server.output == OutputFormat::Json {
        print_json(&v);
    } else {
        println!(
            "{}: {} ({})",
            num(&v["name"]),
            num(&v["outcome"]),
            num(&v["state"])
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `schema: ../schemas/x.avsc` -> `schema: x.avsc` (the server keeps one flat directory).
fn rewrite_schema_paths(definition: &str) -> String {
    let names = referenced_schemas(definition);
    let mut out = definition.to_string();
    for n in names {
        if let Some(file) = std::path::Path::new(&n)
            .file_name()
            .and_then(|f| f.to_str())
        {
            if file != n {
                out = out.replace(&n, file);
            }
        }
    }
    out
}

/// List the pipelines of `weir serve`.
#[derive(Args)]
pub struct PipelinesArgs {
    #[command(flatten)]
    server: ServerArgs,
}

pub fn pipelines(a: PipelinesArgs) -> anyhow::Result<ExitCode> {
    let v = Client::new(&a.server).ok("GET", "/api/pipelines", None)?;
    if a.server.output == OutputFormat::Json {
        print_json(&v);
        return Ok(ExitCode::SUCCESS);
    }
    let list: Vec<PipelineSummary> =
        serde_json::from_value(v).context("the server's pipeline list")?;
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                p.state.as_str().to_string(),
                p.events_in.to_string(),
                p.results_out.to_string(),
                p.dead_letters.to_string(),
                opt(p.lag),
                format!("{:.0}", p.events_per_second),
                opt_time(p.watermark),
            ]
        })
        .collect();
    print_table(
        &[
            "NAME",
            "STATE",
            "IN",
            "OUT",
            "DEAD",
            "LAG",
            "EVENTS/S",
            "WATERMARK",
        ],
        &rows,
    );
    Ok(ExitCode::SUCCESS)
}

/// One pipeline's status on `weir serve`.
#[derive(Args)]
pub struct StatusArgs {
    name: String,
    #[command(flatten)]
    server: ServerArgs,
}

pub fn status(a: StatusArgs) -> anyhow::Result<ExitCode> {
    let v = Client::new(&a.server).ok("GET", &format!("/api/pipelines/{}", a.name), None)?;
    if a.server.output == OutputFormat::Json {
        print_json(&v);
        return Ok(ExitCode::SUCCESS);
    }
    let s: PipelineStatus = serde_json::from_value(v).context("the server's pipeline status")?;
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
    println!("member:          {}", opt(live.member_id.as_ref()));
    println!("watermark:       {}", opt_time(live.watermark));
    println!(
        "last checkpoint: {} ({} checkpoints, last took {:.3} s)",
        opt_time(live.last_checkpoint),
        live.checkpoints,
        live.checkpoint_seconds_last
    );
    println!("state size:      {} bytes", live.state_bytes);
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

/// Pause, resume or stop a pipeline on `weir serve`.
#[derive(Args)]
pub struct ControlArgs {
    name: String,
    /// `stop` only: also delete the state and rewind the group to the earliest offsets.
    #[arg(long)]
    purge: bool,
    #[command(flatten)]
    server: ServerArgs,
}

pub fn control(verb: &str, a: ControlArgs) -> anyhow::Result<ExitCode> {
    let c = Client::new(&a.server);
    let v = match verb {
        "stop" => c.ok(
            "DELETE",
            &format!("/api/pipelines/{}?purge={}", a.name, a.purge),
            None,
        )?,
        _ => c.ok("POST", &format!("/api/pipelines/{}/{verb}", a.name), None)?,
    };
    if a.server.output == OutputFormat::Json {
        print_json(&v);
    } else {
        match verb {
            "stop" if a.purge => println!("{}: stopped; state purged", a.name),
            "stop" => println!("{}: stopped; state kept", a.name),
            _ => println!("{}: {}", a.name, num(&v["state"])),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Rewind a pipeline on `weir serve` and reprocess: it is paused, its group offsets are
/// reset (by time, to the earliest, or to given offsets), the state of windows starting at
/// or after the start is discarded, and it resumes. The idempotent sinks converge to the
/// results of a first run.
#[derive(Args)]
pub struct ReplayArgs {
    name: String,
    /// RFC 3339 time (2026-11-22T08:00:00Z), `earliest`, or partition:offset,... (0:120,1:98)
    #[arg(long)]
    from: String,
    /// RFC 3339 time: only windows starting before it are rebuilt.
    #[arg(long)]
    to: Option<String>,
    /// Show what would change; change nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    server: ServerArgs,
}

pub fn replay(a: ReplayArgs) -> anyhow::Result<ExitCode> {
    let req = ReplayRequest {
        from: a.from.clone(),
        to: a.to.clone(),
        dry_run: a.dry_run,
    };
    let v = Client::new(&a.server).ok(
        "POST",
        &format!("/api/pipelines/{}/replay", a.name),
        Some(&serde_json::to_value(&req)?),
    )?;
    if a.server.output == OutputFormat::Json {
        print_json(&v);
        return Ok(ExitCode::SUCCESS);
    }
    let verb = if a.dry_run { "would" } else { "will" };
    if v["state_reset"].as_bool() == Some(true) {
        println!("{}: the whole state is discarded; every partition {verb} restart at its earliest offset", a.name);
    } else {
        println!(
            "{}: windows starting at or after {}{} {verb} be rebuilt ({} open windows and {} sessions discarded)",
            a.name,
            time(&v["rebuild_from"]),
            v["rebuild_to"]
                .as_i64()
                .map(|t| format!(" and before {}", fmt_ms(t)))
                .unwrap_or_default(),
            num(&v["windows_discarded"]),
            num(&v["sessions_discarded"])
        );
    }
    let rows: Vec<Vec<String>> = v["partitions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|p| {
            vec![
                num(&p["topic"]),
                num(&p["partition"]),
                num(&p["state_offset"]),
                num(&p["new_offset"]),
            ]
        })
        .collect();
    print_table(&["TOPIC", "PARTITION", "FROM", "TO"], &rows);
    if a.dry_run {
        println!("(dry run: nothing changed)");
    }
    Ok(ExitCode::SUCCESS)
}

/// Re-feed a pipeline's dead-letter records after a fix (a redeployed definition, a new
/// writer schema). Records that fail again go back to the dead letter with their new reason.
#[derive(Args)]
pub struct ReplayDlqArgs {
    name: String,
    #[command(flatten)]
    server: ServerArgs,
}

pub fn replay_dlq(a: ReplayDlqArgs) -> anyhow::Result<ExitCode> {
    let v = Client::new(&a.server).ok(
        "POST",
        &format!("/api/pipelines/{}/replay-dlq", a.name),
        None,
    )?;
    if a.server.output == OutputFormat::Json {
        print_json(&v);
    } else {
        println!(
            "{}: read {} dead letters from {}; re-fed {} ({} failed again and are back in the dead letter), {} results out; {} belong to other pipelines",
            a.name,
            num(&v["read"]),
            num(&v["dead_letter_topic"]),
            num(&v["refed"]),
            num(&v["failed_again"]),
            num(&v["results_out"]),
            num(&v["other_pipelines"])
        );
    }
    Ok(ExitCode::SUCCESS)
}
