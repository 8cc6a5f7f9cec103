//! The PostgreSQL sink: results upserted into a table, one transaction per checkpoint.
//!
//! Idempotency: the table's primary key is (group key columns, window start), a table's
//! (`window: {type: none}`) the group key columns alone, and each
//! batch is `INSERT ... ON CONFLICT (...) DO UPDATE`, so a result delivered twice leaves
//! one row with the same values. Within a checkpoint the sink keeps only the latest result
//! per (key, window) (an `emit: update` pipeline may emit several).
//!
//! The table is created from the output schema when missing; when present, every output
//! field must be a column of a compatible type and the primary key must match.

use super::{Output, Sink, SinkError};
use crate::pipeline::plan::{OutSource, Plan};
use crate::schema::Kind;
use indexmap::IndexMap;
use tokio::runtime::Runtime;
use tokio_postgres::{Client, NoTls};

/// The connection string used when neither the sink nor `$WEIR_POSTGRES_URL` gives one.
pub const DEFAULT_URL: &str = "host=127.0.0.1 port=5432 user=postgres dbname=postgres";

/// Rows per INSERT statement (one statement carries its rows as one JSON parameter).
const ROWS_PER_STATEMENT: usize = 5_000;

struct Column {
    name: String,
    /// The SQL type used when creating the table.
    sql_type: &'static str,
    /// Types accepted in an existing table (`information_schema.columns.data_type`).
    accepts: &'static [&'static str],
    /// Turns the JSON text of the field (`e->>'name'`) into the column type.
    cast: String,
    nullable: bool,
    in_key: bool,
}

pub struct PostgresSink {
    name: String,
    rt: Runtime,
    client: Client,
    upsert: String,
    /// A table pipeline: one row per key, whatever the entry's start.
    table: bool,
    pending: IndexMap<(String, i64), String>,
}

fn pg_err(name: &str, e: impl std::fmt::Display) -> SinkError {
    SinkError::Write {
        name: name.to_string(),
        source: std::io::Error::other(e.to_string()),
    }
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

fn quote_table(t: &str) -> String {
    t.split('.').map(quote).collect::<Vec<_>>().join(".")
}

fn columns(plan: &Plan) -> Result<Vec<Column>, String> {
    let mut cols = Vec::new();
    for f in &plan.output.fields {
        let json = format!("(e->>'{}')", f.name.replace('\'', "''"));
        let (sql_type, accepts, cast): (&str, &[&str], String) = match f.ty.kind {
            Kind::Boolean => ("boolean", &["boolean"], format!("{json}::boolean")),
            Kind::Int => (
                "integer",
                &["integer", "bigint"],
                format!("{json}::integer"),
            ),
            Kind::Long => ("bigint", &["bigint", "numeric"], format!("{json}::bigint")),
            Kind::Float => (
                "real",
                &["real", "double precision"],
                format!("{json}::real"),
            ),
            Kind::Double => (
                "double precision",
                &["double precision"],
                format!("{json}::double precision"),
            ),
            Kind::String | Kind::Enum | Kind::Uuid => (
                "text",
                &["text", "character varying"],
                format!("{json}::text"),
            ),
            Kind::TimestampMillis => (
                "timestamptz",
                &["timestamp with time zone"],
                format!("to_timestamp({json}::numeric / 1000)"),
            ),
            Kind::TimestampMicros => (
                "timestamptz",
                &["timestamp with time zone"],
                format!("to_timestamp({json}::numeric / 1000000)"),
            ),
            Kind::Date => (
                "date",
                &["date"],
                format!("(DATE '1970-01-01' + {json}::integer)"),
            ),
            ref k => {
                return Err(format!(
                    "output field `{}` is {}, which the postgres sink does not store",
                    f.name,
                    k.name()
                ))
            }
        };
        cols.push(Column {
            name: f.name.clone(),
            sql_type,
            accepts,
            cast,
            nullable: f.ty.nullable,
            in_key: matches!(f.source, OutSource::Key(_) | OutSource::WindowStart),
        });
    }
    if plan.is_table() {
        return Ok(cols);
    }
    if !plan
        .output
        .fields
        .iter()
        .any(|f| f.source == OutSource::WindowStart)
    {
        return Err("the postgres sink upserts on (key, window start): add a window_start field (timestamp-millis) to the output schema".into());
    }
    Ok(cols)
}

impl PostgresSink {
    /// Connects, creates or checks the table, and prepares the upsert.
    pub fn open(plan: &Plan, url: &str, table: &str) -> Result<PostgresSink, SinkError> {
        let name = format!("postgres:{table}");
        let cols = columns(plan).map_err(|e| pg_err(&name, e))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| pg_err(&name, e))?;
        let client = rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(url, NoTls)
                .await
                .map_err(|e| pg_err(&name, format!("cannot connect to {url}: {e}")))?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::warn!(error = %e, "postgres connection closed");
                }
            });
            prepare_table(&client, &name, table, &cols).await?;
            Ok::<_, SinkError>(client)
        })?;
        let names: Vec<String> = cols.iter().map(|c| quote(&c.name)).collect();
        let keys: Vec<String> = cols
            .iter()
            .filter(|c| c.in_key)
            .map(|c| quote(&c.name))
            .collect();
        let updates: Vec<String> = cols
            .iter()
            .filter(|c| !c.in_key)
            .map(|c| format!("{0} = EXCLUDED.{0}", quote(&c.name)))
            .collect();
        let on_conflict = if updates.is_empty() {
            "DO NOTHING".to_string()
        } else {
            format!("DO UPDATE SET {}", updates.join(", "))
        };
        let upsert = format!(
            "INSERT INTO {} ({}) SELECT {} FROM jsonb_array_elements($1::text::jsonb) AS e ON CONFLICT ({}) {}",
            quote_table(table),
            names.join(", "),
            cols.iter().map(|c| c.cast.as_str()).collect::<Vec<_>>().join(", "),
            keys.join(", "),
            on_conflict
        );
        Ok(PostgresSink {
            name,
            rt,
            client,
            upsert,
            table: plan.is_table(),
            pending: IndexMap::new(),
        })
    }
}

async fn prepare_table(
    client: &Client,
    name: &str,
    table: &str,
    cols: &[Column],
) -> Result<(), SinkError> {
    let (schema, bare) = match table.split_once('.') {
        Some((s, t)) => (s.to_string(), t.to_string()),
        None => ("public".to_string(), table.to_string()),
    };
    let existing = client
        .query(
            "SELECT column_name, data_type, is_nullable FROM information_schema.columns \
             WHERE table_schema = $1 AND table_name = $2",
            &[&schema, &bare],
        )
        .await
        .map_err(|e| pg_err(name, e))?;
    if existing.is_empty() {
        let defs: Vec<String> = cols
            .iter()
            .map(|c| {
                format!(
                    "{} {}{}",
                    quote(&c.name),
                    c.sql_type,
                    if c.nullable && !c.in_key {
                        ""
                    } else {
                        " NOT NULL"
                    }
                )
            })
            .collect();
        let keys: Vec<String> = cols
            .iter()
            .filter(|c| c.in_key)
            .map(|c| quote(&c.name))
            .collect();
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS {} ({}, PRIMARY KEY ({}))",
            quote_table(table),
            defs.join(", "),
            keys.join(", ")
        );
        client
            .batch_execute(&sql)
            .await
            .map_err(|e| pg_err(name, format!("cannot create table {table}: {e}")))?;
        tracing::info!(table, "created table");
        return Ok(());
    }
    let mut problems = Vec::new();
    for c in cols {
        let found = existing
            .iter()
            .find(|r| r.get::<_, String>(0) == c.name)
            .map(|r| r.get::<_, String>(1));
        match found {
            None => problems.push(format!(
                "column `{}` is missing (add it: ALTER TABLE {table} ADD COLUMN {} {})",
                c.name,
                quote(&c.name),
                c.sql_type
            )),
            Some(t) if !c.accepts.contains(&t.as_str()) => problems.push(format!(
                "column `{}` is {t}, the output schema needs {}",
                c.name, c.sql_type
            )),
            Some(_) => {}
        }
    }
    let pk = client
        .query(
            "SELECT a.attname FROM pg_index i \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
             WHERE i.indrelid = to_regclass($1) AND i.indisprimary",
            &[&quote_table(table)],
        )
        .await
        .map_err(|e| pg_err(name, e))?;
    let mut pk: Vec<String> = pk.iter().map(|r| r.get::<_, String>(0)).collect();
    pk.sort();
    let mut want: Vec<String> = cols
        .iter()
        .filter(|c| c.in_key)
        .map(|c| c.name.clone())
        .collect();
    want.sort();
    if pk != want {
        problems.push(format!(
            "the primary key is ({}), the upsert needs ({})",
            pk.join(", "),
            want.join(", ")
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(pg_err(
            name,
            format!(
                "table {table} does not match the output schema: {}",
                problems.join("; ")
            ),
        ))
    }
}

impl Sink for PostgresSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn write(&mut self, out: &Output<'_>) -> Result<(), SinkError> {
        let start = if self.table { 0 } else { out.window_start };
        self.pending
            .insert((out.key.to_string(), start), out.json.to_string());
        Ok(())
    }

    /// One transaction for everything since the last checkpoint.
    fn flush(&mut self) -> Result<Option<u64>, SinkError> {
        if self.pending.is_empty() {
            return Ok(None);
        }
        let rows: Vec<String> = self.pending.values().cloned().collect();
        let name = self.name.clone();
        let upsert = self.upsert.clone();
        let client = &mut self.client;
        self.rt.block_on(async {
            let tx = client.transaction().await.map_err(|e| pg_err(&name, e))?;
            for chunk in rows.chunks(ROWS_PER_STATEMENT) {
                let json = format!("[{}]", chunk.join(","));
                tx.execute(upsert.as_str(), &[&json])
                    .await
                    .map_err(|e| pg_err(&name, e))?;
            }
            crate::faults::reached(crate::faults::Point::SinkWritten);
            tx.commit().await.map_err(|e| pg_err(&name, e))
        })?;
        self.pending.clear();
        Ok(None)
    }
}
