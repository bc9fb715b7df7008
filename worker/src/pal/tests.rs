//! The PAL client against a tiny local HTTP server: redirects and response
//! sizes (SPEC §11.1).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use palworker_config::{CredentialSecret, CredentialSettings, PalSettings};
use palworker_events::{CredentialName, TenantId};
use secrecy::SecretString;

use palworker_core::RetryReason;

use super::{MAX_RESPONSE_BYTES, PalClient, PalError, Transient};
use crate::clock::SystemClock;
use crate::telemetry::Metrics;

const TENANT: &str = "11111111-1111-4111-8111-111111111111";
const OBJECT: &str = "22222222-2222-4222-8222-222222222222";
const PARTNERS: &str = "/providers/Microsoft.ManagementPartner/partners";
const TWO_MIB: usize = 2 * 1024 * 1024;

/// What the local server saw.
#[derive(Default)]
struct Seen {
    /// Requests that reached a redirect's target.
    redirected: AtomicUsize,
    /// Bodies of the requests that reached a redirect's target.
    redirected_bodies: Mutex<Vec<String>>,
}

/// A local server on 127.0.0.1:0 and a PAL client whose ARM endpoint and
/// token authority are that server.
struct Local {
    address: std::net::SocketAddr,
    client: PalClient,
    seen: Arc<Seen>,
}

impl Local {
    /// A client whose ARM endpoint is `prefix` on the local server.
    fn with_arm_prefix(&self, prefix: &str) -> PalClient {
        client(
            &format!("http://{}{prefix}/", self.address),
            &format!("http://{}/", self.address),
        )
    }

    /// A client whose token authority is `prefix` on the local server.
    fn with_authority_prefix(&self, prefix: &str) -> PalClient {
        client(
            &format!("http://{}/", self.address),
            &format!("http://{}{prefix}/", self.address),
        )
    }
}

async fn local(routes: Router<Arc<Seen>>) -> Local {
    let seen = Arc::new(Seen::default());
    let routes = routes
        .route("/redirected", get(redirected).post(redirected))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding a local port");
    let address = listener.local_addr().expect("local address");
    tokio::spawn(async move { axum::serve(listener, routes).await });
    let base = format!("http://{address}/");
    Local {
        address,
        client: client(&base, &base),
        seen,
    }
}

fn client(arm_endpoint: &str, authority: &str) -> PalClient {
    let settings = PalSettings {
        arm_endpoint: url::Url::parse(arm_endpoint).expect("local URL"),
        authority: url::Url::parse(authority).expect("local URL"),
        api_version: "2018-02-01".into(),
        request_timeout: Duration::from_secs(30),
        verify_writes: false,
    };
    let credentials = BTreeMap::from([(
        "sp".to_owned(),
        CredentialSettings {
            client_id: "client".into(),
            secret: CredentialSecret::ClientSecret(SecretString::from("s3cret")),
        },
    )]);
    PalClient::new(
        &settings,
        &credentials,
        1000.0,
        Metrics::new(),
        Arc::new(SystemClock),
    )
    .expect("PAL client")
}

async fn redirected(
    axum::extract::State(seen): axum::extract::State<Arc<Seen>>,
    body: String,
) -> Response {
    seen.redirected.fetch_add(1, Ordering::SeqCst);
    seen.redirected_bodies.lock().expect("seen lock").push(body);
    // Whatever was asked, a valid answer: a token response that is also a
    // PartnerResponse.
    axum::Json(token_response_json("")).into_response()
}

fn token_response_json(padding: &str) -> serde_json::Value {
    let claims = format!(r#"{{"tid":"{TENANT}","oid":"{OBJECT}"}}"#);
    serde_json::json!({
        "token_type": "Bearer",
        "expires_in": 3599,
        "access_token": format!("e30.{}.sig", URL_SAFE_NO_PAD.encode(claims)),
        "name": "123",
        "properties": {"partnerId": "123", "tenantId": TENANT, "objectId": OBJECT, "state": "Active"},
        "padding": padding,
    })
}

async fn token_endpoint() -> Response {
    axum::Json(token_response_json("")).into_response()
}

fn redirect_to_redirected(status: StatusCode) -> Response {
    (status, [(header::LOCATION, "/redirected")]).into_response()
}

fn credential() -> CredentialName {
    CredentialName::parse("sp").expect("credential name")
}

fn tenant() -> TenantId {
    TenantId::parse(TENANT).expect("tenant id")
}

const TOKEN_PATH: &str = "/{tenant}/oauth2/v2.0/token";

/// A body sent in chunks of 64 KiB with no `Content-Length` (chunked
/// encoding): only counting what arrives can bound it.
fn streamed(body: Vec<u8>) -> Response {
    let chunks: Vec<Result<Bytes, std::convert::Infallible>> = body
        .chunks(64 * 1024)
        .map(|chunk| Ok(Bytes::copy_from_slice(chunk)))
        .collect();
    Body::from_stream(futures::stream::iter(chunks)).into_response()
}

/// A body that never ends: reading it whole would never finish.
fn endless() -> Response {
    let chunk = Bytes::from(vec![b' '; 64 * 1024]);
    Body::from_stream(futures::stream::repeat_with(move || {
        Ok::<_, std::convert::Infallible>(chunk.clone())
    }))
    .into_response()
}

/// A PartnerResponse of exactly `length` bytes (padded with an unknown field).
fn partner_response_of(length: usize) -> Vec<u8> {
    let bare = token_response_json("").to_string().len();
    let body = token_response_json(&" ".repeat(length - bare))
        .to_string()
        .into_bytes();
    assert_eq!(body.len(), length);
    body
}

fn permanent_code<T: std::fmt::Debug>(result: Result<T, PalError>) -> String {
    match result {
        Err(PalError::Permanent { code, .. }) => code,
        other => panic!("expected a permanent error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_redirect_of_the_partner_read_is_refused_not_followed_nor_parsed() {
    let local = local(Router::new().route(TOKEN_PATH, post(token_endpoint)).route(
        PARTNERS,
        // A redirect whose body is a valid PartnerResponse: it is
        // still no answer.
        get(|| async {
            (
                StatusCode::FOUND,
                [(header::LOCATION, "/redirected")],
                axum::Json(token_response_json("")),
            )
        }),
    ))
    .await;
    let token = local.client.token(&credential(), &tenant()).await.unwrap();
    let link = local.client.get_link(&token).await;
    assert_eq!(permanent_code(link), "redirect_refused");
    assert_eq!(local.seen.redirected.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_redirect_of_the_token_request_is_refused_and_the_secret_is_not_re_sent() {
    let local = local(Router::new().route(
        TOKEN_PATH,
        post(|| async { redirect_to_redirected(StatusCode::TEMPORARY_REDIRECT) }),
    ))
    .await;
    let token = local.client.token(&credential(), &tenant()).await;
    assert_eq!(permanent_code(token), "redirect_refused");
    assert_eq!(local.seen.redirected.load(Ordering::SeqCst), 0);
    assert!(local.seen.redirected_bodies.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_partner_response_over_one_mib_is_refused_announced_streamed_or_endless() {
    let local = local(
        Router::new()
            .route(TOKEN_PATH, post(token_endpoint))
            .route(
                PARTNERS,
                get(|| async { axum::Json(token_response_json(&" ".repeat(TWO_MIB))) }),
            )
            .route(
                "/streamed/providers/Microsoft.ManagementPartner/partners",
                get(|| async { streamed(partner_response_of(MAX_RESPONSE_BYTES + 1)) }),
            )
            .route(
                "/endless/providers/Microsoft.ManagementPartner/partners",
                get(|| async { endless() }),
            )
            .route(
                "/exact/providers/Microsoft.ManagementPartner/partners",
                get(|| async { streamed(partner_response_of(MAX_RESPONSE_BYTES)) }),
            ),
    )
    .await;
    let token = local.client.token(&credential(), &tenant()).await.unwrap();
    // Content-Length announces 2 MiB.
    assert_eq!(
        permanent_code(local.client.get_link(&token).await),
        "response_too_large"
    );
    // No Content-Length: one byte over the bound arrives.
    let streamed = local.with_arm_prefix("/streamed");
    assert_eq!(
        permanent_code(streamed.get_link(&token).await),
        "response_too_large"
    );
    // A body that never ends is refused too: nothing waits for its end (the
    // client's request timeout, 30 s, would make this a timeout instead).
    let endless = local.with_arm_prefix("/endless");
    assert_eq!(
        permanent_code(endless.get_link(&token).await),
        "response_too_large"
    );
    // Exactly the bound is read.
    let exact = local.with_arm_prefix("/exact");
    let link = exact.get_link(&token).await;
    assert!(matches!(link, Ok(Some(_))), "{link:?}");
}

#[tokio::test]
async fn a_token_response_over_one_mib_is_refused() {
    let local = local(Router::new().route(
        TOKEN_PATH,
        post(|| async { streamed(partner_response_of(MAX_RESPONSE_BYTES + 1)) }),
    ))
    .await;
    let token = local.client.token(&credential(), &tenant()).await;
    assert_eq!(permanent_code(token), "response_too_large");
}

#[tokio::test]
async fn an_oversized_error_body_leaves_the_retry_to_the_status() {
    let unavailable = || async {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "7")],
            " ".repeat(TWO_MIB),
        )
    };
    let local = local(
        Router::new()
            .route(TOKEN_PATH, post(token_endpoint))
            .route(PARTNERS, get(unavailable))
            .route("/failing/{tenant}/oauth2/v2.0/token", post(unavailable)),
    )
    .await;
    let token = local.client.token(&credential(), &tenant()).await.unwrap();
    match local.client.get_link(&token).await {
        Err(PalError::Transient(Transient {
            reason: RetryReason::ServerError,
            retry_after,
            message,
            ..
        })) => {
            assert_eq!(retry_after, Some(Duration::from_secs(7)));
            assert!(message.contains("not read"), "{message}");
        }
        other => panic!("expected a transient server error, got {other:?}"),
    }
    let failing = local.with_authority_prefix("/failing");
    match failing.token(&credential(), &tenant()).await {
        Err(PalError::Transient(Transient {
            reason: RetryReason::Token,
            retry_after,
            ..
        })) => assert_eq!(retry_after, Some(Duration::from_secs(7))),
        other => panic!("expected a transient token error, got {other:?}"),
    }
}
