//! `/_sim/*`: inspection and control of a running simulator, in JSON and
//! without authentication (a development tool; bind it to loopback).

use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::Simulator;
use super::config::{Faults, SeedLink, SimClient, is_guid};

pub(super) fn router() -> Router<Simulator> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/links", get(list_links).post(seed_link))
        .route("/requests", get(requests))
        .route("/token-requests", get(token_requests))
        .route("/violations", get(violations))
        .route("/faults", get(get_faults).put(put_faults))
        .route("/clients", get(list_clients).post(add_client))
        .route(
            "/identities/{tenant_id}/{object_id}",
            axum::routing::delete(delete_identity),
        )
        .route("/clock", get(clock).post(advance_clock))
        .fallback(not_found)
}

fn bad_request(message: impl std::fmt::Display) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": message.to_string()})),
    )
        .into_response()
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error": "no such simulator admin endpoint"})),
    )
        .into_response()
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

#[derive(Deserialize)]
struct LinksQuery {
    /// `all` includes Deleted links.
    #[serde(default)]
    state: Option<String>,
}

async fn list_links(
    State(simulator): State<Simulator>,
    Query(query): Query<LinksQuery>,
) -> Response {
    let links = if query.state.as_deref() == Some("all") {
        simulator.all_links()
    } else {
        simulator.links()
    };
    Json(links).into_response()
}

async fn seed_link(
    State(simulator): State<Simulator>,
    body: Result<Json<SeedLink>, JsonRejection>,
) -> Response {
    let Json(link) = match body {
        Ok(body) => body,
        Err(rejection) => return bad_request(rejection.body_text()),
    };
    if let Err(error) = link.validate() {
        return bad_request(error);
    }
    let view = simulator.seed_link(&link.tenant_id, &link.object_id, &link.partner_id);
    (StatusCode::CREATED, Json(view)).into_response()
}

async fn requests(State(simulator): State<Simulator>) -> Response {
    Json(simulator.requests()).into_response()
}

async fn token_requests(State(simulator): State<Simulator>) -> Response {
    Json(simulator.token_requests()).into_response()
}

async fn violations(State(simulator): State<Simulator>) -> Response {
    Json(simulator.throttle_violations()).into_response()
}

async fn get_faults(State(simulator): State<Simulator>) -> Json<Faults> {
    Json(simulator.faults())
}

async fn put_faults(
    State(simulator): State<Simulator>,
    body: Result<Json<Faults>, JsonRejection>,
) -> Response {
    let Json(faults) = match body {
        Ok(body) => body,
        Err(rejection) => return bad_request(rejection.body_text()),
    };
    if let Err(error) = faults.validate() {
        return bad_request(error);
    }
    simulator.set_faults(faults);
    Json(simulator.faults()).into_response()
}

/// A client as listed: never its secret or certificate.
#[derive(Serialize)]
struct ClientSummary {
    client_id: String,
    has_secret: bool,
    certificates: usize,
    identities: std::collections::BTreeMap<String, String>,
    disabled: bool,
}

async fn list_clients(State(simulator): State<Simulator>) -> Response {
    let clients: Vec<ClientSummary> = simulator
        .lock()
        .clients
        .values()
        .map(|entry| ClientSummary {
            client_id: entry.client.client_id.clone(),
            has_secret: entry.client.client_secret.is_some(),
            certificates: entry.certificates.len(),
            identities: entry.client.identities.clone(),
            disabled: entry.client.disabled,
        })
        .collect();
    Json(clients).into_response()
}

async fn add_client(
    State(simulator): State<Simulator>,
    body: Result<Json<SimClient>, JsonRejection>,
) -> Response {
    let Json(client) = match body {
        Ok(body) => body,
        Err(rejection) => return bad_request(rejection.body_text()),
    };
    if let Err(error) = client.validate() {
        return bad_request(error);
    }
    let client_id = client.client_id.clone();
    simulator.add_client(client);
    (StatusCode::CREATED, Json(json!({"client_id": client_id}))).into_response()
}

async fn delete_identity(
    State(simulator): State<Simulator>,
    Path((tenant_id, object_id)): Path<(String, String)>,
) -> Response {
    if !is_guid(&tenant_id) || !is_guid(&object_id) {
        return bad_request(format!(
            "identity {tenant_id}/{object_id}: tenant_id and object_id must be GUIDs"
        ));
    }
    let client_ids = simulator.delete_identity(&tenant_id, &object_id);
    if client_ids.is_empty() {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": format!(
                "no client has the identity {object_id} in tenant {tenant_id}"
            )})),
        )
            .into_response();
    }
    Json(json!({
        "tenant_id": tenant_id.to_ascii_lowercase(),
        "object_id": object_id.to_ascii_lowercase(),
        "client_ids": client_ids,
    }))
    .into_response()
}

async fn clock(State(simulator): State<Simulator>) -> Response {
    Json(json!({"now": simulator.now()})).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AdvanceClock {
    advance_secs: u64,
}

async fn advance_clock(
    State(simulator): State<Simulator>,
    body: Result<Json<AdvanceClock>, JsonRejection>,
) -> Response {
    let Json(AdvanceClock { advance_secs }) = match body {
        Ok(body) => body,
        Err(rejection) => return bad_request(rejection.body_text()),
    };
    simulator.advance_clock(Duration::from_secs(advance_secs));
    Json(json!({"now": simulator.now()})).into_response()
}
