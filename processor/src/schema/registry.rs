//! A client for the Confluent Schema Registry REST API: schema by id, register under a
//! subject, compatibility check. Answers are cached for the life of the client (ids are
//! immutable in a registry, so the cache never goes stale).
//!
//! Local `schemas/` files stay the offline default: the registry is used only when a URL
//! is given (`--schema-registry` or `$WEIR_SCHEMA_REGISTRY`).

use apache_avro::Schema;
use std::collections::HashMap;
use std::time::Duration;

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("schema registry {url}: {message}")]
    Http { url: String, message: String },
    #[error("schema registry {url}: HTTP {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("schema registry {url}: unexpected answer {body}: {message}")]
    Answer {
        url: String,
        body: String,
        message: String,
    },
}

pub struct Registry {
    base: String,
    agent: ureq::Agent,
    by_id: HashMap<u32, Schema>,
    /// Ids the registry answered 404 for: not asked again by this client.
    missing: std::collections::HashSet<u32>,
    registered: HashMap<(String, String), u32>,
}

impl Registry {
    pub fn new(url: &str) -> Registry {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .http_status_as_error(false)
            .build()
            .into();
        Registry {
            base: url.trim_end_matches('/').to_string(),
            agent,
            by_id: HashMap::new(),
            missing: Default::default(),
            registered: HashMap::new(),
        }
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    fn call(&self, path: &str, body: Option<String>) -> Result<serde_json::Value, RegistryError> {
        let url = format!("{}{}", self.base, path);
        let http = |e: ureq::Error| RegistryError::Http {
            url: url.clone(),
            message: e.to_string(),
        };
        let mut resp = match body {
            None => self
                .agent
                .get(&url)
                .header("Accept", CONTENT_TYPE)
                .call()
                .map_err(http)?,
            Some(b) => self
                .agent
                .post(&url)
                .header("Accept", CONTENT_TYPE)
                .header("Content-Type", CONTENT_TYPE)
                .send(b.as_str())
                .map_err(http)?,
        };
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().map_err(http)?;
        if !(200..300).contains(&status) {
            return Err(RegistryError::Status {
                url,
                status,
                body: text,
            });
        }
        serde_json::from_str(&text).map_err(|e| RegistryError::Answer {
            url,
            body: text.clone(),
            message: e.to_string(),
        })
    }

    /// Whether the registry said it has no schema with this id.
    pub fn is_missing(&self, id: u32) -> bool {
        self.missing.contains(&id)
    }

    /// `GET /schemas/ids/{id}`: the writer schema of a Confluent-framed record.
    pub fn schema_by_id(&mut self, id: u32) -> Result<Schema, RegistryError> {
        if let Some(s) = self.by_id.get(&id) {
            return Ok(s.clone());
        }
        let path = format!("/schemas/ids/{id}");
        let v = match self.call(&path, None) {
            Err(e @ RegistryError::Status { status: 404, .. }) => {
                self.missing.insert(id);
                return Err(e);
            }
            other => other?,
        };
        let text = v
            .get("schema")
            .and_then(|s| s.as_str())
            .ok_or_else(|| self.answer(&path, &v, "no `schema` string"))?;
        let schema = Schema::parse_str(text).map_err(|e| self.answer(&path, &v, e))?;
        self.by_id.insert(id, schema.clone());
        Ok(schema)
    }

    /// `POST /subjects/{subject}/versions`: registers (or finds) `schema` and returns its id.
    pub fn register(&mut self, subject: &str, schema: &Schema) -> Result<u32, RegistryError> {
        let canon = schema.canonical_form();
        if let Some(id) = self.registered.get(&(subject.to_string(), canon.clone())) {
            return Ok(*id);
        }
        let path = format!("/subjects/{subject}/versions");
        let body = serde_json::json!({ "schema": canon }).to_string();
        let v = self.call(&path, Some(body))?;
        let id = v
            .get("id")
            .and_then(|i| i.as_u64())
            .and_then(|i| u32::try_from(i).ok())
            .ok_or_else(|| self.answer(&path, &v, "no numeric `id`"))?;
        self.registered.insert((subject.to_string(), canon), id);
        self.by_id.insert(id, schema.clone());
        Ok(id)
    }

    /// `POST /compatibility/subjects/{subject}/versions/latest`: whether `schema` may be
    /// registered under `subject` by the subject's compatibility rule. A subject with no
    /// versions yet accepts anything.
    pub fn is_compatible(&mut self, subject: &str, schema: &Schema) -> Result<bool, RegistryError> {
        let path = format!("/compatibility/subjects/{subject}/versions/latest");
        let body = serde_json::json!({ "schema": schema.canonical_form() }).to_string();
        match self.call(&path, Some(body)) {
            Ok(v) => v
                .get("is_compatible")
                .and_then(|b| b.as_bool())
                .ok_or_else(|| self.answer(&path, &v, "no boolean `is_compatible`")),
            // 40401 subject not found / 40402 version not found: nothing to be compatible with.
            Err(RegistryError::Status { status: 404, .. }) => Ok(true),
            Err(e) => Err(e),
        }
    }

    fn answer(
        &self,
        path: &str,
        v: &serde_json::Value,
        message: impl std::fmt::Display,
    ) -> RegistryError {
        RegistryError::Answer {
            url: format!("{}{}", self.base, path),
            body: v.to_string(),
            message: message.to_string(),
        }
    }
}
