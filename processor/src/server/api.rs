//! The HTTP API of `weir serve` (axum). Every route is listed in [`ROUTES`] and described in
//! `openapi.json` (served at `/openapi.json`; a test keeps the two equal). Handlers that
//! wait on pipelines (deploy, pause, replay...) run on the blocking pool.
//!
//! Mutating routes (POST, DELETE) need `Authorization: Bearer <token>` when the server was
//! given a token; a server bound beyond loopback refuses to start without one.

use super::{ApiError, DeployRequest, ErrorBody, ReplayRequest, Server, StopResponse};
use crate::monitor::prometheus;
use axum::body::Body;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

/// (method, path) of every route, as in `openapi.json`.
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/"),
    ("get", "/openapi.json"),
    ("get", "/metrics"),
    ("get", "/api/health"),
    ("get", "/api/pipelines"),
    ("post", "/api/pipelines"),
    ("get", "/api/pipelines/{name}"),
    ("delete", "/api/pipelines/{name}"),
    ("get", "/api/pipelines/{name}/offsets"),
    ("post", "/api/pipelines/{name}/pause"),
    ("post", "/api/pipelines/{name}/resume"),
    ("post", "/api/pipelines/{name}/replay"),
    ("post", "/api/pipelines/{name}/replay-dlq"),
];

pub const OPENAPI: &str = include_str!("openapi.json");
const PAGE: &str = include_str!("page.html");

#[derive(Clone)]
struct AppState {
    server: Arc<Server>,
    token: Option<String>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let error = self.to_string();
        let plain = |status| {
            (
                status,
                ErrorBody {
                    error: error.clone(),
                    problems: Vec::new(),
                    reasons: Vec::new(),
                },
            )
        };
        let (status, body) = match self {
            ApiError::Invalid(problems) => (
                StatusCode::BAD_REQUEST,
                ErrorBody {
                    error,
                    problems,
                    reasons: Vec::new(),
                },
            ),
            ApiError::NotFound(_) => plain(StatusCode::NOT_FOUND),
            ApiError::Incompatible { reasons, .. } => (
                StatusCode::CONFLICT,
                ErrorBody {
                    error,
                    problems: Vec::new(),
                    reasons,
                },
            ),
            ApiError::BadRequest(_) => plain(StatusCode::BAD_REQUEST),
            ApiError::Conflict(_) => plain(StatusCode::CONFLICT),
            ApiError::Internal(_) => plain(StatusCode::BAD_GATEWAY),
        };
        (status, Json(body)).into_response()
    }
}

/// Runs a blocking server operation off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(format!("the operation panicked: {e}")))?
}

async fn auth(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let mutating = matches!(*req.method(), Method::POST | Method::DELETE | Method::PUT);
    if let (true, Some(token)) = (mutating, &st.token) {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(token.as_str()) {
            return (
                StatusCode::UNAUTHORIZED,
                Json(json!({"error": "this server needs a token for changes: pass --token or set WEIR_TOKEN"})),
            )
                .into_response();
        }
    }
    next.run(req).await
}

/// A body or query that does not parse is a 400 with a JSON error, like every other error.
fn parsed<T>(r: Result<T, impl std::fmt::Display>) -> Result<T, ApiError> {
    r.map_err(|e| ApiError::BadRequest(e.to_string()))
}

#[derive(Deserialize)]
struct StopQuery {
    #[serde(default)]
    purge: bool,
}

/// The largest request body the server reads.
pub const MAX_BODY_BYTES: usize = 8 << 20;

pub fn router(server: Arc<Server>, token: Option<String>) -> Router {
    let st = AppState { server, token };
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route(
            "/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
        .route(
            "/metrics",
            get(|State(st): State<AppState>| async move {
                let text = prometheus::render(&st.server.all_live());
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    Body::from(text),
                )
            }),
        )
        .route("/api/health", get(|| async { Json(json!({"ok": true})) }))
        .route(
            "/api/pipelines",
            get(|State(st): State<AppState>| async move { Json(st.server.list()) }).post(
                |State(st): State<AppState>,
                 body: Result<Json<DeployRequest>, JsonRejection>| async move {
                    let Json(req) = parsed(body)?;
                    let s = st.server.clone();
                    blocking(move || s.deploy(req)).await.map(|r| {
                        let code = if r.outcome == "created" {
                            StatusCode::CREATED
                        } else {
                            StatusCode::OK
                        };
                        (code, Json(r))
                    })
                },
            ),
        )
        .route(
            "/api/pipelines/{name}",
            get(
                |State(st): State<AppState>, Path(name): Path<String>| async move {
                    st.server.status(&name).map(Json)
                },
            )
            .delete(
                |State(st): State<AppState>,
                 Path(name): Path<String>,
                 q: Result<Query<StopQuery>, QueryRejection>| async move {
                    let Query(q) = parsed(q)?;
                    let s = st.server.clone();
                    blocking(move || s.stop(&name, q.purge).map(|_| name))
                        .await
                        .map(|name| Json(StopResponse { name, stopped: true, purged: q.purge }))
                },
            ),
        )
        .route(
            "/api/pipelines/{name}/offsets",
            get(
                |State(st): State<AppState>, Path(name): Path<String>| async move {
                    let s = st.server.clone();
                    blocking(move || s.offsets(&name)).await.map(Json)
                },
            ),
        )
        .route(
            "/api/pipelines/{name}/pause",
            post(
                |State(st): State<AppState>, Path(name): Path<String>| async move {
                    let s = st.server.clone();
                    blocking(move || s.pause(&name)).await.map(Json)
                },
            ),
        )
        .route(
            "/api/pipelines/{name}/resume",
            post(
                |State(st): State<AppState>, Path(name): Path<String>| async move {
                    let s = st.server.clone();
                    blocking(move || s.resume(&name)).await.map(Json)
                },
            ),
        )
        .route(
            "/api/pipelines/{name}/replay",
            post(
                |State(st): State<AppState>,
                 Path(name): Path<String>,
                 body: Result<Json<ReplayRequest>, JsonRejection>| async move {
                    let Json(req) = parsed(body)?;
                    let s = st.server.clone();
                    blocking(move || s.replay(&name, &req)).await.map(Json)
                },
            ),
        )
        .route(
            "/api/pipelines/{name}/replay-dlq",
            post(
                |State(st): State<AppState>, Path(name): Path<String>| async move {
                    let s = st.server.clone();
                    blocking(move || s.replay_dead_letters(&name))
                        .await
                        .map(Json)
                },
            ),
        )
        // A deploy carries a definition (at most 1 MiB, see `MAX_DEFINITION_BYTES`) and its
        // schemas; a bigger body is refused (400, "length limit exceeded") unread.
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(st.clone(), auth))
        .layer(middleware::from_fn(redact_secrets))
        .with_state(st)
}

/// Masks secrets ([`crate::redact`]) in every textual response: a definition shown by
/// `weir status`, an error quoting a connection string, a label in `/metrics`.
async fn redact_secrets(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let textual = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json") || t.starts_with("text/plain"));
    if !textual {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let bytes = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(e) => {
            return ApiError::Internal(format!("cannot read the response: {e}")).into_response()
        }
    };
    let text = crate::redact::redact(&String::from_utf8_lossy(&bytes));
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_openapi_description_lists_every_route_and_no_other() {
        let spec: serde_json::Value = serde_json::from_str(OPENAPI).expect("openapi.json parses");
        assert_eq!(spec["openapi"], "3.0.3");
        let mut documented: Vec<(String, String)> = Vec::new();
        for (path, item) in spec["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("path item").keys() {
                documented.push((method.clone(), path.clone()));
            }
        }
        let mut routes: Vec<(String, String)> = ROUTES
            .iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
        documented.sort();
        routes.sort();
        assert_eq!(documented, routes);
    }
}
