//! What the commands that talk to `weir serve` share: where the server is, one HTTP client
//! that decodes the server's typed answers (`server::types`), and the table printing. Each
//! verb has its own file: `deploy`, `pipelines`, `status`, `control` (pause, resume, stop),
//! `replay`, `replay_dlq`.

use crate::schema::json::fmt_ms;
use crate::server::ErrorBody;
use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use serde::de::DeserializeOwned;
use serde_json::Value;
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

impl ServerArgs {
    pub fn json(&self) -> bool {
        self.output == OutputFormat::Json
    }
}

/// A server's answer: its status, the body as sent (for `--output json`) and, for an error
/// answer, the error body.
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

impl Answer {
    pub fn is_ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body as the response type `T`; `what` names it in the error.
    pub fn decode<T: DeserializeOwned>(&self, what: &str) -> anyhow::Result<T> {
        serde_json::from_value(self.body.clone())
            .with_context(|| format!("the server's {what} is not what this weir expects"))
    }

    /// The error body of a non-2xx answer; a body that is not one becomes its message.
    pub fn error(&self) -> ErrorBody {
        serde_json::from_value(self.body.clone()).unwrap_or_else(|_| ErrorBody {
            error: match &self.body {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            },
            problems: Vec::new(),
            reasons: Vec::new(),
        })
    }

    /// The error as one text: the message and each reason on a line of its own.
    pub fn error_text(&self) -> String {
        let e = self.error();
        let mut s = format!("the server answered {}: {}", self.status, e.error);
        for r in &e.reasons {
            s.push_str(&format!("\n  - {r}"));
        }
        s
    }

    /// Prints the body as the server sent it, pretty.
    pub fn print_json(&self) {
        println!(
            "{}",
            serde_json::to_string_pretty(&self.body).unwrap_or_default()
        );
    }
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

    /// Sends a request; any answer the server gives, error or not, comes back.
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<Answer> {
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
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok(Answer { status, body })
    }

    /// Like `call`, but a non-2xx answer becomes an error with the server's message.
    pub fn ok(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<Answer> {
        let a = self.call(method, path, body)?;
        if !a.is_ok() {
            bail!("{}", a.error_text());
        }
        Ok(a)
    }
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

/// A value the server may not have: `-` when it has none.
pub fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

/// A time the server may not have (ms since the epoch), as RFC 3339.
pub fn opt_time(ms: Option<i64>) -> String {
    ms.map(fmt_ms).unwrap_or_else(|| "-".into())
}
