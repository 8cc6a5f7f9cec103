use crate::runtime::outputs::Connections;
use crate::server::{api, Server, ServerConfig};
use anyhow::{bail, Context};
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// Host many pipelines in one process, with an HTTP API (deploy, status, pause, replay),
/// Prometheus metrics at /metrics and a live web page at /. Deployed pipelines persist in
/// --data-dir and resume when the server restarts.
#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on. Beyond loopback, a --token is required.
    #[arg(long, default_value = "127.0.0.1:7878", env = "WEIR_LISTEN")]
    listen: SocketAddr,
    /// Deployed definitions and pipeline state live here.
    #[arg(long, default_value = ".weir/server", env = "WEIR_DATA_DIR")]
    data_dir: PathBuf,
    /// Mutating requests must carry `Authorization: Bearer <token>`.
    #[arg(long, env = "WEIR_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Kafka bootstrap servers [env: WEIR_BROKERS; default 127.0.0.1:9092].
    #[arg(long)]
    brokers: Option<String>,
    /// PostgreSQL connection string for postgres sinks without a url [env: WEIR_POSTGRES_URL].
    #[arg(long)]
    postgres_url: Option<String>,
    /// Confluent Schema Registry URL [env: WEIR_SCHEMA_REGISTRY].
    #[arg(long)]
    schema_registry: Option<String>,
    /// Checkpoint every pipeline this often (and every --checkpoint-every records).
    #[arg(long, default_value = "1s")]
    checkpoint_interval: humantime::Duration,
    #[arg(long, default_value_t = 10_000)]
    checkpoint_every: u64,
    /// Join consumer groups as dynamic members. By default each pipeline is a static member
    /// (group.instance.id = <server id>-<pipeline>, the id kept in --data-dir), so a server
    /// restarted after a crash gets its partitions back at once instead of after the
    /// session timeout. Brokers whose static membership is defective (tansu 0.6) need this.
    #[arg(long)]
    dynamic_membership: bool,
    /// An extra librdkafka property for every consumer and producer (repeatable).
    #[arg(long, value_parser = super::parse_kv)]
    kafka_config: Vec<(String, String)>,
}

pub fn run(a: ServeArgs) -> anyhow::Result<ExitCode> {
    if !a.listen.ip().is_loopback() && a.token.as_deref().unwrap_or("").is_empty() {
        bail!(
            "--listen {} is reachable from other machines: give a --token (or WEIR_TOKEN) so that only holders can deploy, pause or replay",
            a.listen
        );
    }
    let cfg = ServerConfig {
        data_dir: a.data_dir.clone(),
        conn: Connections {
            brokers: a.brokers.clone(),
            postgres_url: a.postgres_url.clone(),
            schema_registry: a.schema_registry.clone(),
            kafka_config: a.kafka_config.clone(),
        },
        checkpoint_interval: a.checkpoint_interval.into(),
        checkpoint_every: a.checkpoint_every,
        static_membership: !a.dynamic_membership,
    };
    let server = Arc::new(Server::new(cfg));
    server
        .load_all()
        .map_err(anyhow::Error::msg)
        .context("loading the deployed pipelines")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let app = api::router(server.clone(), a.token.clone().filter(|t| !t.is_empty()));
    let listen = a.listen;
    let result: anyhow::Result<()> = rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let addr = listener.local_addr()?;
        tracing::info!(address = %addr, data_dir = %a.data_dir.display(), "listening");
        // One line on stdout that scripts (and tests) can wait for.
        println!("weir: serving on http://{addr} (web page at /, metrics at /metrics)");
        eprintln!(
            "weir: data in {}; deploy with `weir deploy <pipeline.yaml> --server http://{addr}`",
            a.data_dir.display()
        );
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let ctrl_c = tokio::signal::ctrl_c();
                #[cfg(unix)]
                {
                    let mut term =
                        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                            .ok();
                    tokio::select! {
                        _ = ctrl_c => {}
                        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
                    }
                }
                #[cfg(not(unix))]
                {
                    let _ = ctrl_c.await;
                }
            })
            .await
            .context("the HTTP server failed")?;
        Ok(())
    });
    eprintln!("weir: stopping the pipelines (last checkpoint each)");
    server.shutdown();
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    result?;
    Ok(ExitCode::SUCCESS)
}
