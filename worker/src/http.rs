//! The worker's HTTP surface on `http.listen`: `/metrics`, `/healthz`,
//! `/readyz` and the admin API under `/admin/` (bearer token, compared in
//! constant time), which runs the operator commands of
//! [`LedgerOperations`] on the worker's ledger. Its client is
//! `operators::AdminApiClient`.
//!
//! `/admin/status` and `/admin/audit` stream JSON Lines
//! (`application/x-ndjson`): a blocking task reads the ledger a page at a
//! time and queues the lines, a chunk at a time, in a bounded channel that
//! the response body drains — a slow client makes the reader wait, never
//! the worker hold the whole answer. A failure before the first line is
//! the answer's status; after it, a last `{"error": …}` line
//! (`operators::StreamFailure`). `/admin/reconcile` streams a reconcile's
//! findings as it makes them, then its report, from a task of its own.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Extension, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use palworker_events::Event;
use secrecy::SecretString;
use serde::Deserialize;

use palworker_core::{ActionId, StatusFilter};

use crate::admin_socket::LocalPeer;
use crate::health::Health;
use crate::ledger::PauseState;
use crate::operators::{
    Decision, EventRef, IMPORT_REQUEST_LIMIT, LedgerOperations, Operator, OperatorError,
    RetryTarget,
};
use crate::reconcile::{ReconcileError, ReconcileLine, ReconcileRequest};
use crate::server::{
    ApiError, LineSink, STREAM_CHUNK_BYTES, STREAM_QUEUE_CHUNKS, STREAM_ROW_SLACK, SinkWriter,
    failure_line, stream_lines, token_operator,
};
use crate::telemetry::{LedgerSizeMeasured, Metrics};

#[derive(Clone)]
struct AppState {
    metrics: Metrics,
    health: Health,
    admin: LedgerOperations,
    /// The admin tokens by name (`http.admin_tokens`; the single
    /// `http.admin_token` is named `admin`). Empty: the admin API is off.
    admin_tokens: Arc<Vec<(Operator, SecretString)>>,
}

/// How long a ledger export waits for a client that stopped reading: an
/// export holds the ledger's write gate (it is a consistent snapshot), so a
/// stalled reader must not stall the worker's writes for longer.
const EXPORT_STALL_LIMIT: Duration = Duration::from_secs(30);

pub fn router(
    metrics: Metrics,
    health: Health,
    admin: LedgerOperations,
    admin_tokens: BTreeMap<String, SecretString>,
) -> Router {
    let state = AppState {
        metrics,
        health,
        admin,
        admin_tokens: Arc::new(
            admin_tokens
                .into_iter()
                .map(|(name, token)| (Operator::token(&name), token))
                .collect(),
        ),
    };
    // The token is checked before any request body or query is looked at.
    let admin = Router::new()
        .route("/admin/status", get(status))
        .route("/admin/retry", post(retry))
        .route("/admin/approve", post(approve))
        .route("/admin/reject", post(reject))
        .route("/admin/audit", get(audit))
        .route("/admin/audit/verify", get(audit_verify))
        .route("/admin/pause", post(pause))
        .route("/admin/resume", post(resume))
        .route("/admin/ledger/export", get(ledger_export))
        .route(
            "/admin/inventory",
            get(inventory_list)
                .post(inventory_import)
                .layer(DefaultBodyLimit::max(IMPORT_REQUEST_LIMIT)),
        )
        .route("/admin/plan", post(plan))
        .route("/admin/report/revocations", get(report_revocations))
        .route("/admin/reconcile", post(reconcile))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_admin_token,
        ));
    let console = crate::console::router(
        state.metrics.clone(),
        state.health.clone(),
        state.admin.clone(),
        state.admin_tokens.clone(),
    );
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(admin)
        .with_state(state)
        .merge(console)
}

pub use crate::server::{ServerLimits, bind, serve, serve_with_limits};

/// The router's endpoints (`palworker route` has no ledger and no admin
/// API): `/metrics`, `/healthz`, `/readyz`.
pub fn probes(metrics: Metrics, health: Health) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(metrics): State<Metrics>| async move { exposition(&metrics) }),
        )
        .with_state(metrics)
        .route(
            "/healthz",
            get(|State(health): State<Health>| async move { liveness(&health) }),
        )
        .route(
            "/readyz",
            get(|State(health): State<Health>| async move { readiness(&health) }),
        )
        .with_state(health)
}

/// The Prometheus text of every metric.
fn exposition(metrics: &Metrics) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics.render(),
    )
        .into_response()
}

async fn metrics_handler(State(state): State<AppState>) -> Response {
    let ledger = state.admin.ledger().clone();
    if let Ok(bytes) = tokio::task::spawn_blocking(move || ledger.size_on_disk()).await {
        LedgerSizeMeasured { bytes }.emit(&state.metrics);
    }
    exposition(&state.metrics)
}

async fn healthz(State(state): State<AppState>) -> Response {
    liveness(&state.health)
}

async fn readyz(State(state): State<AppState>) -> Response {
    readiness(&state.health)
}

fn liveness(health: &Health) -> Response {
    match health.liveness() {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not alive: {why}\n"),
        )
            .into_response(),
    }
}

fn readiness(health: &Health) -> Response {
    match health.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}

async fn require_admin_token(
    State(state): State<AppState>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    // Over the admin socket the peer's OS user is the operator (its
    // credentials were checked when it connected).
    if let Some(LocalPeer(operator)) = request.extensions().get::<LocalPeer>().cloned() {
        request.extensions_mut().insert(operator);
        return next.run(request).await;
    }
    match authorize(&state, request.headers()) {
        Ok(operator) => {
            request.extensions_mut().insert(operator);
            next.run(request).await
        }
        Err(error) => error.into_response(),
    }
}

/// The operator whose token the request presents. Every configured token
/// is compared, in constant time each, whichever matches.
fn authorize(state: &AppState, headers: &HeaderMap) -> Result<Operator, ApiError> {
    if state.admin_tokens.is_empty() {
        return Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "the admin API over TCP is disabled: set http.admin_token_file, http.admin_token_env or http.admin_tokens \
             (on the worker's machine, its OS user and root reach it without a token through admin.sock in the ledger directory)".into(),
        ));
    }
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    token_operator(&state.admin_tokens, presented).ok_or_else(|| {
        ApiError(
            StatusCode::UNAUTHORIZED,
            "missing or wrong admin bearer token".into(),
        )
    })
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, OperatorError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(ApiError::from)
}

/// Pushes every item of `rows` into `sink` until the rows end, one fails,
/// or the client goes away.
fn push_all<T: serde::Serialize>(
    sink: &mut LineSink,
    rows: impl Iterator<Item = Result<T, OperatorError>>,
) -> Result<(), OperatorError> {
    for row in rows {
        if sink.push(&row?).is_err() {
            break;
        }
    }
    Ok(())
}

async fn status(State(state): State<AppState>, Query(filter): Query<StatusFilter>) -> Response {
    let admin = state.admin.clone();
    stream_lines(move |sink| push_all(sink, admin.status_iter(filter))).await
}

#[derive(Deserialize)]
struct RetryRequest {
    action: Option<ActionId>,
    #[serde(default)]
    failed: bool,
}

async fn retry(
    State(state): State<AppState>,
    Extension(operator): Extension<Operator>,
    axum::Json(request): axum::Json<RetryRequest>,
) -> Result<Response, ApiError> {
    let admin = state.admin.acting_as(operator);
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
    Extension(operator): Extension<Operator>,
    axum::Json(request): axum::Json<EventRef>,
) -> Result<Response, ApiError> {
    let admin = state.admin.acting_as(operator);
    let summary = blocking(move || admin.decide_now(Decision::Approve, &request)).await?;
    Ok(axum::Json(summary).into_response())
}

async fn reject(
    State(state): State<AppState>,
    Extension(operator): Extension<Operator>,
    axum::Json(request): axum::Json<EventRef>,
) -> Result<Response, ApiError> {
    let admin = state.admin.acting_as(operator);
    let summary = blocking(move || admin.decide_now(Decision::Reject, &request)).await?;
    Ok(axum::Json(summary).into_response())
}

#[derive(Deserialize)]
struct AuditQuery {
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
}

/// The audit trail within `[since, until)`, streamed as JSON Lines.
async fn audit(State(state): State<AppState>, Query(query): Query<AuditQuery>) -> Response {
    let admin = state.admin.clone();
    stream_lines(move |sink| {
        admin.audit_entries(query.since, query.until, |entry| sink.push(&entry).is_ok())
    })
    .await
}

#[derive(Deserialize)]
struct RevocationsQuery {
    since: Option<DateTime<Utc>>,
}

/// `report revocations`: one row per event that removes links, streamed
/// as JSON Lines.
async fn report_revocations(
    State(state): State<AppState>,
    Query(query): Query<RevocationsQuery>,
) -> Response {
    let admin = state.admin.clone();
    stream_lines(move |sink| admin.revocation_rows(query.since, |row| sink.push(&row).is_ok()))
        .await
}

async fn audit_verify(State(state): State<AppState>) -> Result<Response, ApiError> {
    let admin = state.admin.clone();
    let check = blocking(move || admin.verify_audit_now()).await?;
    Ok(axum::Json(check).into_response())
}

async fn pause(
    State(state): State<AppState>,
    Extension(operator): Extension<Operator>,
) -> Result<Response, ApiError> {
    let admin = state.admin.acting_as(operator);
    let answer = blocking(move || admin.set_pause_now(PauseState::Paused)).await?;
    Ok(axum::Json(answer).into_response())
}

async fn resume(
    State(state): State<AppState>,
    Extension(operator): Extension<Operator>,
) -> Result<Response, ApiError> {
    let admin = state.admin.acting_as(operator);
    let answer = blocking(move || admin.set_pause_now(PauseState::Running)).await?;
    Ok(axum::Json(answer).into_response())
}

/// How long a reconcile's answer goes without a line before it sends a
/// blank one (which the client skips): a reconcile that finds nothing for
/// minutes must not meet the client's read timeout.
const RECONCILE_HEARTBEAT: Duration = Duration::from_secs(20);

/// `reconcile` (SPEC §11.3): runs one as the request's operator and
/// streams its findings as JSON Lines as they are made, then its report
/// (`reconcile::ReconcileLine`). The run is a task of its own: a client
/// that goes away does not stop it (it still plans what it found).
async fn reconcile(
    State(state): State<AppState>,
    Extension(operator): Extension<Operator>,
    axum::Json(request): axum::Json<ReconcileRequest>,
) -> Result<Response, ApiError> {
    let reconciler = state.admin.reconciler().cloned().ok_or_else(|| {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "this worker cannot reconcile: it has no PAL client".into(),
        )
    })?;
    let (found, findings) = tokio::sync::mpsc::channel(STREAM_QUEUE_CHUNKS * 32);
    let run = tokio::spawn(async move {
        let report = reconciler.run(&request, operator.as_str(), &found).await;
        drop(found);
        report
    });
    let body = futures::stream::unfold(Some((findings, run)), |state| async move {
        let (mut findings, run) = state?;
        match tokio::time::timeout(RECONCILE_HEARTBEAT, findings.recv()).await {
            Err(_) => Some((axum::body::Bytes::from_static(b"\n"), Some((findings, run)))),
            Ok(Some(finding)) => {
                let mut chunk = Vec::with_capacity(STREAM_CHUNK_BYTES + STREAM_ROW_SLACK);
                push_line(&mut chunk, &ReconcileLine::Finding(finding));
                while chunk.len() < STREAM_CHUNK_BYTES {
                    match findings.try_recv() {
                        Ok(finding) => push_line(&mut chunk, &ReconcileLine::Finding(finding)),
                        Err(_) => break,
                    }
                }
                Some((chunk.into(), Some((findings, run))))
            }
            // The run dropped its sender: it has ended.
            Ok(None) => {
                let last = match run.await {
                    Ok(Ok(report)) => {
                        let mut line = Vec::new();
                        push_line(&mut line, &ReconcileLine::Report(Box::new(report)));
                        line.into()
                    }
                    Ok(Err(ReconcileError::Ledger(error))) => {
                        failure_line(&OperatorError::from(error))
                    }
                    Ok(Err(error)) => failure_line(&OperatorError::Failed(error.into())),
                    Err(panicked) => failure_line(&OperatorError::Failed(anyhow::anyhow!(
                        "internal: the reconcile panicked: {panicked}"
                    ))),
                };
                Some((last, None))
            }
        }
    })
    .map(Ok::<_, std::convert::Infallible>);
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        axum::body::Body::from_stream(body),
    )
        .into_response())
}

/// Appends `row` to `buffer` as one JSON line.
fn push_line(buffer: &mut Vec<u8>, row: &impl serde::Serialize) {
    serde_json::to_writer(&mut *buffer, row).expect("operator rows serialise");
    buffer.push(b'\n');
}

/// A consistent snapshot of the ledger (`ledger export`), streamed as the
/// ledger is read. It holds the ledger's write gate throughout, so a client
/// that stops reading for [`EXPORT_STALL_LIMIT`] ends it.
async fn ledger_export(State(state): State<AppState>) -> Response {
    let admin = state.admin.clone();
    stream_lines(move |sink| {
        sink.stall_limit = Some(EXPORT_STALL_LIMIT);
        let mut out = SinkWriter(sink);
        match admin.export_now(&mut out) {
            Ok(_) => Ok(()),
            // The client went away or stopped reading: nobody to tell.
            Err(_) if out.0.gone => Ok(()),
            Err(error) => Err(error),
        }
    })
    .await
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

/// One batch of an import (JSON Lines or CSV, at most
/// [`IMPORT_REQUEST_LIMIT`] bytes): the CLI validates the whole file first
/// and sends it a batch per request.
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

#[cfg(test)]
mod serve_tests {
    //! The server's limits and its graceful shutdown, over real sockets.

    use std::sync::Arc;
    use std::time::Duration;

    use axum::Router;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::sync::{Notify, oneshot};

    use super::{ServerLimits, serve_with_limits};

    const PING: &[u8] = b"GET /ping HTTP/1.1\r\nHost: local\r\n\r\n";

    /// Serves `router` on a local port within `limits` until the returned
    /// sender is used or dropped.
    async fn spawn(
        router: Router,
        limits: ServerLimits,
    ) -> (
        std::net::SocketAddr,
        oneshot::Sender<()>,
        tokio::task::JoinHandle<std::io::Result<()>>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(serve_with_limits(listener, router, limits, async move {
            let _ = stopped.await;
        }));
        (address, stop, server)
    }

    fn ping_router() -> Router {
        Router::new().route("/ping", get(|| async { "pong" }))
    }

    /// Reads one response whose body ends with `end`.
    async fn read_response(stream: &mut TcpStream, end: &str) -> String {
        let mut response = Vec::new();
        let mut buffer = [0u8; 1024];
        while !response.ends_with(end.as_bytes()) {
            let read = stream.read(&mut buffer).await.expect("reading a response");
            assert!(read > 0, "closed mid-response: {response:?}");
            response.extend_from_slice(&buffer[..read]);
        }
        String::from_utf8(response).expect("a UTF-8 response")
    }

    async fn ping(stream: &mut TcpStream) -> String {
        stream.write_all(PING).await.expect("sending a request");
        read_response(stream, "pong").await
    }

    #[tokio::test]
    async fn a_connection_that_never_finishes_its_headers_is_closed() {
        let limits = ServerLimits {
            header_read_timeout: Duration::from_millis(100),
            max_connections: 4,
        };
        let (address, _stop, _server) = spawn(ping_router(), limits).await;
        let mut slow = TcpStream::connect(address).await.unwrap();
        slow.write_all(b"GET /ping HTTP/1.1\r\nHost: local\r\n")
            .await
            .unwrap();
        // Whatever the server says before closing, the request is never answered.
        let mut said = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(60), slow.read_to_end(&mut said))
            .await
            .expect("the server closed the connection");
        assert!(
            closed.is_ok()
                || closed.is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset)
        );
        assert!(!String::from_utf8_lossy(&said).contains("pong"), "{said:?}");
        // The server itself serves on.
        let mut fresh = TcpStream::connect(address).await.unwrap();
        assert!(ping(&mut fresh).await.starts_with("HTTP/1.1 200"));
    }

    #[tokio::test]
    async fn the_connection_over_the_limit_waits_until_one_closes() {
        let limits = ServerLimits {
            header_read_timeout: Duration::from_secs(600),
            max_connections: 1,
        };
        let (address, _stop, _server) = spawn(ping_router(), limits).await;
        let mut first = TcpStream::connect(address).await.unwrap();
        assert!(ping(&mut first).await.starts_with("HTTP/1.1 200"));
        // The kernel completes the second connection (listen backlog); its
        // request waits.
        let mut second = TcpStream::connect(address).await.unwrap();
        second.write_all(PING).await.unwrap();
        // The first connection is served on, after the second's request was sent…
        assert!(ping(&mut first).await.starts_with("HTTP/1.1 200"));
        // …and the second has had no answer.
        let mut buffer = [0u8; 64];
        match second.try_read(&mut buffer) {
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("the connection over the limit was served: {other:?}"),
        }
        // Once the first closes, the second is served.
        drop(first);
        assert!(
            read_response(&mut second, "pong")
                .await
                .starts_with("HTTP/1.1 200")
        );
    }

    #[tokio::test]
    async fn shutdown_lets_the_request_in_flight_finish_then_returns() {
        let started = Arc::new(Notify::new());
        let release = Arc::new(Notify::new());
        let router = {
            let (started, release) = (started.clone(), release.clone());
            Router::new().route(
                "/slow",
                get(move || async move {
                    started.notify_one();
                    release.notified().await;
                    "done"
                }),
            )
        };
        let (address, stop, server) = spawn(router, ServerLimits::WORKER).await;
        let mut client = TcpStream::connect(address).await.unwrap();
        client
            .write_all(b"GET /slow HTTP/1.1\r\nHost: local\r\n\r\n")
            .await
            .unwrap();
        started.notified().await;
        stop.send(()).unwrap();
        // Once the server stopped accepting (its listener is closed)…
        loop {
            match TcpStream::connect(address).await {
                Err(error) if error.kind() == std::io::ErrorKind::ConnectionRefused => break,
                // Accepted by the kernel before the listener closed.
                _ => tokio::task::yield_now().await,
            }
        }
        // …it still waits for the request in flight, which finishes.
        assert!(
            !server.is_finished(),
            "serve returned with a request in flight"
        );
        release.notify_one();
        assert!(
            read_response(&mut client, "done")
                .await
                .starts_with("HTTP/1.1 200")
        );
        server.await.unwrap().unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serves `router` on a free loopback port; its base URL.
    async fn serve_test(router: Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        format!("http://{address}")
    }

    /// `rows` rows (several chunks' worth), then `end`.
    fn rows_then(
        rows: u64,
        end: fn() -> Result<(), OperatorError>,
    ) -> impl FnOnce(&mut LineSink) -> Result<(), OperatorError> + Send + 'static {
        move |sink| {
            for row in 0..rows {
                if sink.push(&serde_json::json!({ "row": row })).is_err() {
                    return Ok(());
                }
            }
            end()
        }
    }

    async fn read_all(url: &str) -> (StatusCode, u64, Result<(), OperatorError>) {
        let response = reqwest::get(url).await.unwrap();
        let status = response.status();
        let mut seen = 0;
        let read = crate::operators::read_lines(response, &mut |_: serde_json::Value| {
            seen += 1;
            Ok(())
        })
        .await;
        (status, seen, read)
    }

    #[tokio::test]
    async fn every_row_arrives_in_order_over_many_chunks() {
        let base = serve_test(
            Router::new().route("/rows", get(|| stream_lines(rows_then(5_000, || Ok(()))))),
        )
        .await;
        let response = reqwest::get(format!("{base}/rows")).await.unwrap();
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/x-ndjson"
        );
        let mut next = 0;
        crate::operators::read_lines(response, &mut |row: serde_json::Value| {
            assert_eq!(row["row"], next);
            next += 1;
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!(next, 5_000);
    }

    #[tokio::test]
    async fn a_failure_after_the_first_line_reaches_the_client_as_an_error() {
        let base = serve_test(Router::new().route(
            "/rows",
            get(|| {
                stream_lines(rows_then(3_000, || {
                    Err(OperatorError::Failed(anyhow::anyhow!(
                        "the disk is on fire"
                    )))
                }))
            }),
        ))
        .await;
        let (status, seen, read) = read_all(&format!("{base}/rows")).await;
        assert_eq!(status, StatusCode::OK, "the first lines were sent");
        assert_eq!(seen, 3_000);
        let error = read.unwrap_err().to_string();
        assert!(error.contains("the disk is on fire"), "{error}");
    }

    #[tokio::test]
    async fn a_failure_before_the_first_line_is_the_answers_status() {
        let base = serve_test(Router::new().route(
            "/rows",
            get(|| {
                stream_lines(rows_then(0, || {
                    Err(OperatorError::Refused("no such event".into()))
                }))
            }),
        ))
        .await;
        let response = reqwest::get(format!("{base}/rows")).await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"], "no such event");
    }

    #[tokio::test]
    async fn a_panic_while_streaming_reaches_the_client_as_an_error() {
        let base = serve_test(Router::new().route(
            "/rows",
            get(|| stream_lines(rows_then(3_000, || panic!("a bug in a query")))),
        ))
        .await;
        let (status, seen, read) = read_all(&format!("{base}/rows")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(seen, 3_000);
        let error = read.unwrap_err().to_string();
        assert!(error.contains("a bug in a query"), "{error}");
    }
}
