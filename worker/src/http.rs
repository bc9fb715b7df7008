//! The worker's HTTP surface on `http.listen`: `/metrics`, `/healthz`,
//! `/readyz` and the admin API under `/admin/` (bearer token, compared in
//! constant time), which runs the operator commands of
//! [`LedgerOperations`] on the worker's ledger. Its client is
//! `operators::AdminApiClient`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use palworker_events::Event;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use palworker_core::{ActionId, StatusFilter};

use crate::health::Health;
use crate::operators::{Decision, EventRef, LedgerOperations, OperatorError, RetryTarget};
use crate::telemetry::{LedgerSizeMeasured, Metrics};

#[derive(Clone)]
struct AppState {
    metrics: Metrics,
    health: Health,
    admin: LedgerOperations,
    admin_token: Option<Arc<SecretString>>,
}

pub fn router(
    metrics: Metrics,
    health: Health,
    admin: LedgerOperations,
    admin_token: Option<SecretString>,
) -> Router {
    let state = AppState {
        metrics,
        health,
        admin,
        admin_token: admin_token.map(Arc::new),
    };
    // The token is checked before any request body or query is looked at.
    let admin = Router::new()
        .route("/admin/status", get(status))
        .route("/admin/retry", post(retry))
        .route("/admin/approve", post(approve))
        .route("/admin/reject", post(reject))
        .route("/admin/audit", get(audit))
        .route(
            "/admin/inventory",
            get(inventory_list).post(inventory_import),
        )
        .route("/admin/plan", post(plan))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_admin_token,
        ));
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(admin)
        .with_state(state)
}

/// Binds `listen` and serves until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

pub async fn bind(listen: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on http.listen {listen}: {e}"))
}

async fn metrics_handler(State(state): State<AppState>) -> Response {
    let ledger = state.admin.ledger().clone();
    if let Ok(bytes) = tokio::task::spawn_blocking(move || ledger.size_on_disk()).await {
        LedgerSizeMeasured { bytes }.emit(&state.metrics);
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

async fn healthz(State(state): State<AppState>) -> Response {
    match state.health.liveness() {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not alive: {why}\n"),
        )
            .into_response(),
    }
}

async fn readyz(State(state): State<AppState>) -> Response {
    match state.health.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}

/// An admin API error, as JSON `{"error": "..."}`.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, axum::Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

impl From<OperatorError> for ApiError {
    fn from(error: OperatorError) -> Self {
        match error {
            OperatorError::Refused(message) => ApiError(StatusCode::BAD_REQUEST, message),
            OperatorError::Failed(error) => {
                ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("{error:#}"))
            }
        }
    }
}

async fn require_admin_token(
    State(state): State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match authorize(&state, request.headers()) {
        Ok(()) => next.run(request).await,
        Err(error) => error.into_response(),
    }
}

fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = &state.admin_token else {
        return Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "the admin API is disabled: set http.admin_token_file or http.admin_token_env".into(),
        ));
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let matches: bool = presented
        .as_bytes()
        .ct_eq(expected.expose_secret().as_bytes())
        .into();
    if matches && !presented.is_empty() {
        Ok(())
    } else {
        Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "missing or wrong admin bearer token".into(),
        ))
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, OperatorError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(ApiError::from)
}

async fn status(
    State(state): State<AppState>,
    Query(filter): Query<StatusFilter>,
) -> Result<Response, ApiError> {
    let admin = state.admin.clone();
    let rows = blocking(move || admin.status_rows(&filter)).await?;
    Ok(axum::Json(rows).into_response())
}

#[derive(Deserialize)]
struct RetryRequest {
    action: Option<ActionId>,
    #[serde(default)]
    failed: bool,
}

async fn retry(
    State(state): State<AppState>,
    axum::Json(request): axum::Json<RetryRequest>,
) -> Result<Response, ApiError> {
    let admin = state.admin.clone();
    let target = match (request.action, request.failed) {
        (Some(id), _) => RetryTarget::Action(id),
        (None, true) => RetryTarget::AllFailed,
        (None, false) => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                "retry needs an action id or failed=true".into(),
            ));
        }
    };
    let retried = blocking(move || admin.retry_now(target)).await?;
    Ok(axum::Json(serde_json::json!({ "retried": retried })).into_response())
}

async fn approve(
    State(state): State<AppState>,
    axum::Json(request): axum::Json<EventRef>,
) -> Result<Response, ApiError> {
    let admin = state.admin.clone();
    let summary = blocking(move || admin.decide_now(Decision::Approve, &request)).await?;
    Ok(axum::Json(summary).into_response())
}

async fn reject(
    State(state): State<AppState>,
    axum::Json(request): axum::Json<EventRef>,
) -> Result<Response, ApiError> {
    let admin = state.admin.clone();
    let summary = blocking(move || admin.decide_now(Decision::Reject, &request)).await?;
    Ok(axum::Json(summary).into_response())
}

#[derive(Deserialize)]
struct AuditQuery {
    since: Option<DateTime<Utc>>,
}

async fn audit(
    State(state): State<AppState>,
    Query(query): Query<AuditQuery>,
) -> Result<Response, ApiError> {
    let admin = state.admin.clone();
    let body = blocking(move || {
        let mut out = String::new();
        admin.audit_records(query.since, |record| {
            out.push_str(&serde_json::to_string(&record).expect("audit records serialise"));
            out.push('\n');
        })?;
        Ok(out)
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}

#[derive(Deserialize)]
struct InventoryQuery {
    employee: Option<String>,
    tenant: Option<String>,
}

async fn inventory_list(
    State(state): State<AppState>,
    Query(query): Query<InventoryQuery>,
) -> Result<Response, ApiError> {
    let admin = state.admin.clone();
    let entries = blocking(move || {
        admin.inventory_entries(query.employee.as_deref(), query.tenant.as_deref())
    })
    .await?;
    Ok(axum::Json(entries).into_response())
}

async fn inventory_import(
    State(state): State<AppState>,
    body: String,
) -> Result<Response, ApiError> {
    let admin = state.admin.clone();
    let imported = blocking(move || admin.import_text(&body)).await?;
    Ok(axum::Json(serde_json::json!({ "imported": imported })).into_response())
}

async fn plan(
    State(state): State<AppState>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let event = Event::from_json_slice(&body)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
    let admin = state.admin.clone();
    let plan = blocking(move || admin.plan_event(&event)).await?;
    Ok(axum::Json(plan).into_response())
}
