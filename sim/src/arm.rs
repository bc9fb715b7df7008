//! The simulated Azure Resource Manager `Microsoft.ManagementPartner` provider:
//! authentication, fault injection, api-version, then the partner-link calls of
//! PAL-API.md. Every request not claimed by the token endpoint or `/_sim` lands
//! here and is recorded.

use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, TimeDelta, Utc};
use rand::Rng as _;
use serde_json::{Value, json};
use uuid::Uuid;

use super::Simulator;
use super::config::is_partner_id;
use super::state::{
    IdentityKey, LinkRecord, RequestKind, RequestRecord, State as SimState, Throttle, arm_time,
};
use super::token::{AuthFailure, Caller, verify_authorization};

/// The only api-version the provider knows.
pub const API_VERSION: &str = "2018-02-01";
const PROVIDER_SEGMENTS: [&str; 2] = ["providers", "microsoft.managementpartner"];

/// Which resource a path names.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Route {
    /// `/providers/Microsoft.ManagementPartner/partners`
    Partners,
    /// `/providers/Microsoft.ManagementPartner/partners/{partnerId}`
    Partner(String),
    Unknown,
}

impl Route {
    /// ARM paths are case-insensitive; a trailing slash is tolerated.
    fn parse(path: &str) -> Self {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        match segments.as_slice() {
            [providers, namespace, partners, rest @ ..]
                if providers.eq_ignore_ascii_case(PROVIDER_SEGMENTS[0])
                    && namespace.eq_ignore_ascii_case(PROVIDER_SEGMENTS[1])
                    && partners.eq_ignore_ascii_case("partners") =>
            {
                match rest {
                    [] => Self::Partners,
                    // Kept raw: anything percent-encoded is not 1–10 digits anyway.
                    [partner_id] => Self::Partner((*partner_id).to_owned()),
                    _ => Self::Unknown,
                }
            }
            _ => Self::Unknown,
        }
    }
}

/// How the simulator answers one ARM request.
struct Outcome {
    status: StatusCode,
    body: Option<Value>,
    retry_after_secs: Option<u64>,
    fault_injected: bool,
    throttle_violation: bool,
    rate_limit: Option<(&'static str, u64)>,
    authentication_failed: bool,
    lost: bool,
}

impl Outcome {
    fn new(status: StatusCode, body: Option<Value>) -> Self {
        Self {
            status,
            body,
            retry_after_secs: None,
            fault_injected: false,
            throttle_violation: false,
            rate_limit: None,
            authentication_failed: false,
            lost: false,
        }
    }

    fn error(status: StatusCode, code: &str, message: &str) -> Self {
        Self::new(status, Some(error_body(code, message)))
    }
}

/// ARM's error envelope, with `code` and `message` repeated at the top level as
/// the real service does.
pub(crate) fn error_body(code: &str, message: &str) -> Value {
    json!({
        "error": {"code": code, "message": message},
        "code": code,
        "message": message,
    })
}

fn not_linked() -> Outcome {
    Outcome::error(
        StatusCode::NOT_FOUND,
        "ManagementPartnerNotFound",
        "This user or service principal is not linked with a Partner ID",
    )
}

fn partner_id_invalid() -> Outcome {
    Outcome::error(
        StatusCode::BAD_REQUEST,
        "PartnerIdInvalid",
        "The Partner ID is not valid",
    )
}

/// A PartnerResponse exactly as PAL-API.md shows it.
pub(crate) fn partner_response(key: &IdentityKey, link: &LinkRecord) -> Value {
    json!({
        "id": format!("/providers/microsoft.managementpartner/partners/{}", link.partner_id),
        "type": "Microsoft.ManagementPartner/partners",
        "name": link.partner_id,
        "etag": link.version,
        "properties": {
            "partnerId": link.partner_id,
            "partnerName": format!("Simulated Partner {}", link.partner_id),
            "tenantId": key.tenant_id,
            "objectId": key.object_id,
            "version": link.version,
            "createdTime": arm_time(link.created_time),
            "updatedTime": arm_time(link.updated_time),
            "state": link.state.as_str(),
        }
    })
}

/// Fallback handler: every ARM request.
pub(super) async fn handle(
    State(simulator): State<Simulator>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let received = std::time::Instant::now();
    let request_id = Uuid::new_v4();
    let correlation_id = headers
        .get("x-ms-correlation-request-id")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| Uuid::try_parse(value).ok())
        .unwrap_or_else(Uuid::new_v4);
    let route = Route::parse(uri.path());

    // Arrival: authenticate and take a slot in the request log, so the log
    // keeps arrival order even when latency makes answers overtake each other.
    let (slot, arrival, caller, latency_ms) = {
        let mut state = simulator.lock();
        let arrival = state.now();
        let caller = verify_authorization(
            simulator.signing_key(),
            headers.get(header::AUTHORIZATION),
            arrival,
        );
        let identity = caller.as_ref().ok().map(|caller| caller.key.clone());
        let latency_ms = state
            .faults
            .profile_for(identity.as_ref().map(|key| key.tenant_id.as_str()))
            .latency_ms;
        state.requests.push(RequestRecord {
            at: arrival,
            method: method.to_string(),
            path: uri.path().to_owned(),
            tenant_id: identity.as_ref().map(|key| key.tenant_id.clone()),
            object_id: identity.map(|key| key.object_id),
            partner_id: match &route {
                Route::Partner(partner_id) => Some(partner_id.clone()),
                _ => None,
            },
            status: 0,
            fault_injected: false,
            throttle_violation: false,
            lost: false,
            request_id: request_id.to_string(),
            service_us: 0,
        });
        (state.requests.len() - 1, arrival, caller, latency_ms)
    };

    // Like the real service, a request that has arrived is carried out even
    // if the client goes away meanwhile (a worker killed mid-request): the
    // processing runs in its own task, which dropping this handler does not
    // cancel.
    let processing = tokio::spawn(async move {
        // The latency is the service's time to answer, counted from
        // receiving the request: the simulator's own work is part of it.
        if latency_ms > 0 {
            simulator
                .delay_until(received + Duration::from_millis(latency_ms))
                .await;
        }
        let outcome = {
            let mut state = simulator.lock();
            let outcome = process(&mut state, &method, &uri, &route, caller, arrival);
            let record = &mut state.requests[slot];
            record.status = outcome.status.as_u16();
            record.fault_injected = outcome.fault_injected;
            record.throttle_violation = outcome.throttle_violation;
            record.lost = outcome.lost;
            record.service_us = u64::try_from(received.elapsed().as_micros()).unwrap_or(u64::MAX);
            outcome
        };
        if outcome.throttle_violation {
            tracing::warn!(%method, path = %uri.path(), "Simulator: request sent before Retry-After expired.");
        }
        outcome
    });
    match processing.await {
        Ok(outcome) => respond(outcome, request_id, correlation_id),
        Err(error) => {
            tracing::error!(%error, "Simulator: processing a request failed.");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

fn respond(outcome: Outcome, request_id: Uuid, correlation_id: Uuid) -> Response {
    let mut response = match outcome.body {
        Some(body) => (outcome.status, axum::Json(body)).into_response(),
        None => outcome.status.into_response(),
    };
    let headers = response.headers_mut();
    super::insert_header(headers, "x-ms-request-id", &request_id.to_string());
    super::insert_header(
        headers,
        "x-ms-correlation-request-id",
        &correlation_id.to_string(),
    );
    let (name, remaining) = outcome
        .rate_limit
        .unwrap_or((RequestKind::Read.header(), 249));
    super::insert_header(headers, name, &remaining.to_string());
    if let Some(seconds) = outcome.retry_after_secs {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    if outcome.authentication_failed {
        headers.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(
                "Bearer authorization_uri=\"https://login.microsoftonline.com/common\", \
                 error=\"invalid_token\", error_description=\"The access token is missing, \
                 invalid or expired.\"",
            ),
        );
    }
    response
}

/// The decision, taken under the state lock: authentication, fault injection
/// and throttling, api-version, then the PAL call itself.
fn process(
    state: &mut SimState,
    method: &Method,
    uri: &Uri,
    route: &Route,
    caller: Result<Caller, AuthFailure>,
    arrival: DateTime<Utc>,
) -> Outcome {
    let caller = match caller {
        Ok(caller) => caller,
        Err(failure) => {
            let (code, message) = failure.code_and_message();
            let mut outcome = Outcome::error(StatusCode::UNAUTHORIZED, code, &message);
            outcome.authentication_failed = true;
            return outcome;
        }
    };
    let key = caller.key;
    let now = state.now();
    let kind = if *method == Method::GET || *method == Method::HEAD {
        RequestKind::Read
    } else {
        RequestKind::Write
    };
    let remaining = state.consume_rate_limit(&key, kind, now);
    let mut outcome = decide(state, method, uri, route, &key, arrival, now);
    outcome.rate_limit = Some((kind.header(), remaining));
    outcome
}

fn decide(
    state: &mut SimState,
    method: &Method,
    uri: &Uri,
    route: &Route,
    key: &IdentityKey,
    arrival: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Outcome {
    let profile = state.faults.profile_for(Some(&key.tenant_id)).clone();

    // ARM: "a request sent before that time is not processed and restarts the
    // wait" — with the period announced, whatever the faults are now.
    if let Some(throttle) = state.throttles.get(key).copied()
        && arrival < throttle.until
    {
        throttle_identity(state, key, throttle.retry_after_secs, now);
        let mut outcome = too_many_requests(throttle.retry_after_secs);
        outcome.throttle_violation = true;
        return outcome;
    }
    // Always roll every die so a seeded run is reproducible whatever the rates
    // (the lost-write die from a stream of its own, which leaves the others'
    // values as they were before it existed).
    let roll_429: f64 = state.rng.random();
    let roll_5xx: f64 = state.rng.random();
    let roll_lost: f64 = state.lost_write_rng.random();
    if roll_429 < profile.rate_429 {
        throttle_identity(state, key, profile.retry_after_secs, now);
        return too_many_requests(profile.retry_after_secs);
    }
    if roll_5xx < profile.rate_5xx {
        let status = StatusCode::from_u16(profile.status_5xx)
            .ok()
            .filter(StatusCode::is_server_error)
            .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        let code = match status {
            StatusCode::INTERNAL_SERVER_ERROR => "InternalServerError",
            StatusCode::BAD_GATEWAY => "BadGateway",
            StatusCode::SERVICE_UNAVAILABLE => "ServiceUnavailable",
            StatusCode::GATEWAY_TIMEOUT => "GatewayTimeout",
            _ => "ServerError",
        };
        let mut outcome = Outcome::error(
            status,
            code,
            "The simulator injected a server error; retry the request.",
        );
        outcome.fault_injected = true;
        return outcome;
    }

    if let Some(outcome) = check_api_version(uri) {
        return outcome;
    }

    match route {
        Route::Unknown => Outcome::error(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("The simulator has no resource at '{}'.", uri.path()),
        ),
        Route::Partners if *method == Method::GET => match state.visible_active_link(key, now) {
            Some(link) => Outcome::new(StatusCode::OK, Some(partner_response(key, &link))),
            None => not_linked(),
        },
        Route::Partners => method_not_allowed(method),
        Route::Partner(partner_id) => {
            let write = WriteFaults {
                lose: roll_lost < profile.rate_lost_write,
                visible_after: TimeDelta::try_milliseconds(
                    i64::try_from(profile.write_visibility_ms).unwrap_or(i64::MAX),
                )
                .unwrap_or(TimeDelta::MAX),
            };
            partner(state, method, key, partner_id, now, write)
        }
    }
}

/// What the fault profile does to a write that succeeds.
#[derive(Clone, Copy, Debug)]
struct WriteFaults {
    /// Answer as if it were applied, apply nothing.
    lose: bool,
    /// How long until ARM reads see it.
    visible_after: TimeDelta,
}

/// Answers a successful write with `body` and stores `link` (`None`: the
/// write changes nothing), unless the write is lost.
fn commit(
    state: &mut SimState,
    key: &IdentityKey,
    link: Option<LinkRecord>,
    body: Option<Value>,
    now: DateTime<Utc>,
    write: WriteFaults,
) -> Outcome {
    let mut outcome = Outcome::new(StatusCode::OK, body);
    if write.lose {
        outcome.lost = true;
    } else if let Some(link) = link {
        state.write_link(key, link, now, write.visible_after);
    }
    outcome
}

fn partner(
    state: &mut SimState,
    method: &Method,
    key: &IdentityKey,
    partner_id: &str,
    now: DateTime<Utc>,
    write: WriteFaults,
) -> Outcome {
    if !is_partner_id(partner_id) {
        return partner_id_invalid();
    }
    let known = |state: &SimState| {
        state
            .valid_partner_ids
            .as_ref()
            .is_none_or(|ids| ids.contains(partner_id))
    };
    match *method {
        Method::GET => match state.visible_active_link(key, now) {
            Some(link) if link.partner_id == partner_id => {
                Outcome::new(StatusCode::OK, Some(partner_response(key, &link)))
            }
            _ => not_linked(),
        },
        // Writes act on the stored record (ARM's primary), whatever reads
        // still show.
        Method::PUT => {
            if !known(state) {
                return partner_id_invalid();
            }
            let link = LinkRecord::after_put(state.links.get(key), partner_id, now);
            let body = partner_response(key, &link);
            commit(state, key, Some(link), Some(body), now, write)
        }
        Method::PATCH => {
            if !known(state) {
                return partner_id_invalid();
            }
            match state
                .links
                .get(key)
                .and_then(|link| link.after_patch(partner_id, now))
            {
                Some(link) => {
                    let body = partner_response(key, &link);
                    commit(state, key, Some(link), Some(body), now, write)
                }
                None => not_linked(),
            }
        }
        Method::DELETE => {
            // 200 whether or not something was removed, as recorded traffic
            // shows; only a link carrying this partner ID is removed.
            let link = state
                .links
                .get(key)
                .and_then(|link| link.after_delete(partner_id, now));
            commit(state, key, link, None, now, write)
        }
        _ => method_not_allowed(method),
    }
}

fn throttle_identity(
    state: &mut SimState,
    key: &IdentityKey,
    retry_after_secs: u64,
    now: DateTime<Utc>,
) {
    let wait = TimeDelta::try_seconds(i64::try_from(retry_after_secs).unwrap_or(i64::MAX))
        .unwrap_or(TimeDelta::MAX);
    state.throttles.insert(
        key.clone(),
        Throttle {
            until: now
                .checked_add_signed(wait)
                .unwrap_or(DateTime::<Utc>::MAX_UTC),
            retry_after_secs,
        },
    );
}

fn too_many_requests(retry_after_secs: u64) -> Outcome {
    let mut outcome = Outcome::error(
        StatusCode::TOO_MANY_REQUESTS,
        "TooManyRequests",
        &format!(
            "The request is being throttled. Retry after {retry_after_secs} seconds; a request \
             sent earlier is not processed and restarts the wait."
        ),
    );
    outcome.retry_after_secs = Some(retry_after_secs);
    outcome.fault_injected = true;
    outcome
}

fn method_not_allowed(method: &Method) -> Outcome {
    Outcome::error(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        &format!("The method '{method}' is not supported for this resource."),
    )
}

fn check_api_version(uri: &Uri) -> Option<Outcome> {
    let version = url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
        .find(|(name, _)| name.eq_ignore_ascii_case("api-version"))
        .map(|(_, value)| value.into_owned());
    match version.as_deref() {
        None | Some("") => Some(Outcome::error(
            StatusCode::BAD_REQUEST,
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
        )),
        Some(API_VERSION) => None,
        Some(other) => Some(Outcome::error(
            StatusCode::BAD_REQUEST,
            "InvalidApiVersionParameter",
            &format!(
                "The api-version '{other}' is invalid. The supported versions are '{API_VERSION}'."
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_case_insensitive_and_tolerate_a_trailing_slash() {
        assert_eq!(
            Route::parse("/providers/Microsoft.ManagementPartner/partners"),
            Route::Partners
        );
        assert_eq!(
            Route::parse("/PROVIDERS/microsoft.managementpartner/Partners/"),
            Route::Partners
        );
        assert_eq!(
            Route::parse("/providers/Microsoft.ManagementPartner/partners/123"),
            Route::Partner("123".into())
        );
        assert_eq!(
            Route::parse("/providers/Microsoft.ManagementPartner/partners/1%202"),
            Route::Partner("1%202".into())
        );
        assert_eq!(
            Route::parse("/providers/Microsoft.ManagementPartner/partners/1/x"),
            Route::Unknown
        );
        assert_eq!(Route::parse("/subscriptions"), Route::Unknown);
    }

    #[test]
    fn api_version_is_required_and_exact() {
        let check = |uri: &str| {
            check_api_version(&uri.parse().unwrap())
                .map(|outcome| outcome.body.unwrap()["code"].clone())
        };
        assert_eq!(check("/p?api-version=2018-02-01"), None);
        assert_eq!(check("/p"), Some(json!("MissingApiVersionParameter")));
        assert_eq!(
            check("/p?api-version="),
            Some(json!("MissingApiVersionParameter"))
        );
        assert_eq!(
            check("/p?api-version=2020-01-01"),
            Some(json!("InvalidApiVersionParameter"))
        );
    }

    #[test]
    fn partner_response_has_the_documented_shape() {
        use chrono::TimeZone as _;
        let key = IdentityKey::new(
            "1b1121dd-6900-412a-af73-e8d44f81e1c1",
            "aa67f786-0552-423e-8849-244ed12bf581",
        );
        let link = LinkRecord {
            partner_id: "123456".into(),
            version: 59,
            state: super::super::state::LinkState::Active,
            created_time: Utc.timestamp_opt(1_516_411_420, 528_049_600).unwrap(),
            updated_time: Utc.timestamp_opt(1_516_411_420, 0).unwrap(),
        };
        assert_eq!(
            partner_response(&key, &link),
            json!({
                "id": "/providers/microsoft.managementpartner/partners/123456",
                "type": "Microsoft.ManagementPartner/partners",
                "name": "123456",
                "etag": 59,
                "properties": {
                    "partnerId": "123456",
                    "partnerName": "Simulated Partner 123456",
                    "tenantId": "1b1121dd-6900-412a-af73-e8d44f81e1c1",
                    "objectId": "aa67f786-0552-423e-8849-244ed12bf581",
                    "version": 59,
                    "createdTime": "2018-01-20T01:23:40.5280496Z",
                    "updatedTime": "2018-01-20T01:23:40.0000000Z",
                    "state": "Active"
                }
            })
        );
    }

    #[test]
    fn error_body_repeats_code_and_message_at_the_top_level() {
        let body = error_body("X", "y");
        assert_eq!(body["error"]["code"], body["code"]);
        assert_eq!(body["error"]["message"], body["message"]);
    }
}
