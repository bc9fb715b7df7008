//! The simulated Microsoft identity platform: `POST /{tenant}/oauth2/v2.0/token`
//! (client credentials with a secret or a certificate assertion), and the
//! access tokens it issues and ARM later checks.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::json;
use subtle::ConstantTimeEq as _;
use uuid::Uuid;

use super::Simulator;
use super::config::is_guid;
use super::state::{ClientEntry, IdentityKey, TokenRequestRecord};

/// The only scope the simulator grants.
pub const ARM_SCOPE: &str = "https://management.azure.com/.default";
/// `aud` of issued access tokens.
pub const ARM_AUDIENCE: &str = "https://management.azure.com/";
/// `client_assertion_type` for certificate credentials.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Clock skew tolerated on client assertions, as Entra ID does.
const ASSERTION_SKEW_SECS: f64 = 300.0;

/// Claims of the access tokens the simulator issues (a subset of Entra ID's v1
/// app-only tokens for ARM).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessTokenClaims {
    /// Always [`ARM_AUDIENCE`].
    pub aud: String,
    /// `https://sts.windows.net/{tid}/`.
    pub iss: String,
    /// Issued at (seconds since the epoch).
    pub iat: i64,
    /// Not before.
    pub nbf: i64,
    /// Expiry.
    pub exp: i64,
    /// Tenant ID, lower-case.
    pub tid: String,
    /// Object ID of the service principal in `tid`, lower-case.
    pub oid: String,
    /// Same as `oid`, as Entra ID does for app-only tokens.
    pub sub: String,
    /// The client (application) ID.
    pub appid: String,
    /// `"1"` for a secret, `"2"` for a certificate.
    pub appidacr: String,
    /// Always `"app"`.
    pub idtyp: String,
    /// Unique token identifier.
    pub uti: String,
}

/// The identity behind a valid access token.
#[derive(Clone, Debug)]
pub(crate) struct Caller {
    pub key: IdentityKey,
}

/// Why ARM refuses a bearer token.
#[derive(Debug)]
pub(crate) enum AuthFailure {
    Missing,
    Scheme,
    Invalid(&'static str),
    Expired {
        expired_at: DateTime<Utc>,
        now: DateTime<Utc>,
    },
}

impl AuthFailure {
    /// ARM error code and message.
    pub fn code_and_message(&self) -> (&'static str, String) {
        match self {
            Self::Missing => (
                "AuthenticationFailed",
                "Authentication failed. The 'Authorization' header is missing.".to_owned(),
            ),
            Self::Scheme => (
                "InvalidAuthenticationToken",
                "The access token is invalid: the 'Authorization' header must use the Bearer scheme."
                    .to_owned(),
            ),
            Self::Invalid(reason) => (
                "InvalidAuthenticationToken",
                format!("The access token is invalid: {reason}."),
            ),
            Self::Expired { expired_at, now } => (
                "ExpiredAuthenticationToken",
                format!(
                    "The access token expiry UTC time '{}' is earlier than current UTC time '{}'.",
                    expired_at.format("%-m/%-d/%Y %-I:%M:%S %p"),
                    now.format("%-m/%-d/%Y %-I:%M:%S %p"),
                ),
            ),
        }
    }
}

pub(crate) fn issue_access_token(
    signing_key: &[u8],
    key: &IdentityKey,
    client_id: &str,
    credential: Credential,
    now: DateTime<Utc>,
    lifetime_secs: u64,
) -> String {
    let iat = now.timestamp();
    let claims = AccessTokenClaims {
        aud: ARM_AUDIENCE.to_owned(),
        iss: format!("https://sts.windows.net/{}/", key.tenant_id),
        iat,
        nbf: iat,
        exp: iat.saturating_add(i64::try_from(lifetime_secs).unwrap_or(i64::MAX)),
        tid: key.tenant_id.clone(),
        oid: key.object_id.clone(),
        sub: key.object_id.clone(),
        appid: client_id.to_owned(),
        appidacr: match credential {
            Credential::Secret => "1",
            Credential::Assertion | Credential::None => "2",
        }
        .to_owned(),
        idtyp: "app".to_owned(),
        uti: Uuid::new_v4().simple().to_string(),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(signing_key),
    )
    .expect("HS256 signing of serializable claims cannot fail")
}

/// Checks an `Authorization` header value against the simulator's key and clock.
pub(crate) fn verify_authorization(
    signing_key: &[u8],
    authorization: Option<&HeaderValue>,
    now: DateTime<Utc>,
) -> Result<Caller, AuthFailure> {
    let value = authorization
        .ok_or(AuthFailure::Missing)?
        .to_str()
        .map_err(|_| AuthFailure::Scheme)?;
    let token = match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
        _ => return Err(AuthFailure::Scheme),
    };
    let mut validation = Validation::new(Algorithm::HS256);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_aud = false;
    let claims = jsonwebtoken::decode::<AccessTokenClaims>(
        token,
        &jsonwebtoken::DecodingKey::from_secret(signing_key),
        &validation,
    )
    .map_err(|_| AuthFailure::Invalid("not a token issued by this simulator"))?
    .claims;
    if claims.aud != ARM_AUDIENCE {
        return Err(AuthFailure::Invalid("wrong audience"));
    }
    if claims.nbf > now.timestamp() {
        return Err(AuthFailure::Invalid("not yet valid"));
    }
    if claims.exp <= now.timestamp() {
        return Err(AuthFailure::Expired {
            expired_at: DateTime::from_timestamp(claims.exp, 0).unwrap_or_default(),
            now,
        });
    }
    Ok(Caller {
        key: IdentityKey::new(&claims.tid, &claims.oid),
    })
}

/// How the client authenticated (or tried to).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Credential {
    Secret,
    Assertion,
    None,
}

impl Credential {
    fn as_str(self) -> &'static str {
        match self {
            Self::Secret => "secret",
            Self::Assertion => "assertion",
            Self::None => "none",
        }
    }
}

/// An error as the identity platform sends it.
#[derive(Debug)]
struct AadError {
    status: StatusCode,
    error: &'static str,
    code: u32,
    message: String,
}

impl AadError {
    fn new(status: StatusCode, error: &'static str, code: u32, message: impl Into<String>) -> Self {
        Self {
            status,
            error,
            code,
            message: message.into(),
        }
    }

    fn missing_parameter(name: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900_144,
            format!("The request body must contain the following parameter: '{name}'."),
        )
    }

    fn tenant_not_found(tenant: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            90002,
            format!(
                "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID \
                 and are signing into the correct cloud."
            ),
        )
    }

    fn application_not_found(client_id: &str, tenant: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700_016,
            format!(
                "Application with identifier '{client_id}' was not found in the directory \
                 '{tenant}'. This can happen if the application has not been installed by the \
                 administrator of the tenant or consented to by any user in the tenant."
            ),
        )
    }

    fn bad_assertion(reason: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            700_027,
            format!("Client assertion failed validation: {reason}."),
        )
    }

    fn into_response(self, trace_id: Uuid, correlation_id: Uuid, now: DateTime<Utc>) -> Response {
        let timestamp = now.format("%Y-%m-%d %H:%M:%SZ").to_string();
        let body = json!({
            "error": self.error,
            "error_description": format!(
                "AADSTS{}: {} Trace ID: {trace_id} Correlation ID: {correlation_id} Timestamp: {timestamp}",
                self.code, self.message
            ),
            "error_codes": [self.code],
            "timestamp": timestamp,
            "trace_id": trace_id,
            "correlation_id": correlation_id,
            "error_uri": format!("https://login.microsoftonline.com/error?code={}", self.code),
        });
        (self.status, axum::Json(body)).into_response()
    }
}

struct Grant {
    access_token: String,
    expires_in: u64,
}

/// `POST /{tenant}/oauth2/v2.0/token`.
pub(super) async fn handle(
    State(simulator): State<Simulator>,
    Path(tenant): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().fold(
        HashMap::new(),
        |mut form, (name, value)| {
            form.entry(name).or_insert(value);
            form
        },
    );
    let arrival = simulator.now();
    let trace_id = Uuid::new_v4();
    let correlation_id = headers
        .get("client-request-id")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| Uuid::try_parse(value).ok())
        .unwrap_or_else(Uuid::new_v4);
    let credential = match (form.get("client_secret"), form.get("client_assertion")) {
        (Some(_), None) => Credential::Secret,
        (None, Some(_)) => Credential::Assertion,
        _ => Credential::None,
    };
    let host = headers
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);

    let result = exchange(
        &simulator,
        &tenant,
        &form,
        credential,
        host.as_deref(),
        uri.path(),
    );

    let (status, error_code) = match &result {
        Ok(_) => (StatusCode::OK, None),
        Err(error) => (error.status, Some(error.code)),
    };
    simulator.lock().token_requests.push(TokenRequestRecord {
        at: arrival,
        tenant: tenant.clone(),
        client_id: form.get("client_id").cloned(),
        credential: credential.as_str().to_owned(),
        status: status.as_u16(),
        error_code,
    });
    if let Err(error) = &result {
        tracing::debug!(%tenant, code = error.code, "Simulator refused a token request.");
    }

    let mut response = match result {
        Ok(grant) => (
            StatusCode::OK,
            axum::Json(json!({
                "token_type": "Bearer",
                "expires_in": grant.expires_in,
                "ext_expires_in": grant.expires_in,
                "access_token": grant.access_token,
            })),
        )
            .into_response(),
        Err(error) => error.into_response(trace_id, correlation_id, simulator.now()),
    };
    let response_headers = response.headers_mut();
    response_headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-store, no-cache"),
    );
    super::insert_header(response_headers, "x-ms-request-id", &trace_id.to_string());
    super::insert_header(
        response_headers,
        "client-request-id",
        &correlation_id.to_string(),
    );
    response
}

/// The token endpoint's decision, in Entra ID's order: request shape, tenant,
/// application, then credentials.
fn exchange(
    simulator: &Simulator,
    tenant: &str,
    form: &HashMap<String, String>,
    credential: Credential,
    host: Option<&str>,
    request_path: &str,
) -> Result<Grant, AadError> {
    let field = |name: &str| {
        form.get(name)
            .map(String::as_str)
            .filter(|value| !value.is_empty())
    };
    if !is_guid(tenant) {
        return Err(AadError::tenant_not_found(tenant));
    }
    let tenant_id = tenant.to_ascii_lowercase();
    let grant_type =
        field("grant_type").ok_or_else(|| AadError::missing_parameter("grant_type"))?;
    if grant_type != "client_credentials" {
        return Err(AadError::new(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70003,
            format!("The app requested an unsupported grant type '{grant_type}'."),
        ));
    }
    let client_id = field("client_id").ok_or_else(|| AadError::missing_parameter("client_id"))?;
    let scope = field("scope").ok_or_else(|| AadError::missing_parameter("scope"))?;
    if scope != ARM_SCOPE {
        return Err(AadError::new(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            70011,
            format!(
                "The provided value for the input parameter 'scope' is not valid. The scope \
                 '{scope}' is not valid (the simulator grants only '{ARM_SCOPE}')."
            ),
        ));
    }

    let (entry, object_id, lifetime_secs, now) = {
        let state = simulator.lock();
        if !state.tenant_exists(&tenant_id) {
            return Err(AadError::tenant_not_found(tenant));
        }
        let entry = state
            .client(client_id)
            .ok_or_else(|| AadError::application_not_found(client_id, tenant))?;
        let object_id = entry
            .client
            .identities
            .get(&tenant_id)
            .ok_or_else(|| AadError::application_not_found(client_id, tenant))?
            .clone();
        if entry.client.disabled {
            return Err(AadError::new(
                StatusCode::BAD_REQUEST,
                "unauthorized_client",
                7_000_112,
                format!("Application '{client_id}'({client_id}) is disabled."),
            ));
        }
        (
            entry.clone(),
            object_id,
            state.token_lifetime_secs,
            state.now(),
        )
    };

    match credential {
        Credential::None
            if field("client_secret").is_some() && field("client_assertion").is_some() =>
        {
            return Err(AadError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                900_144,
                "Send either 'client_secret' or 'client_assertion', not both.",
            ));
        }
        Credential::None => {
            return Err(AadError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                7_000_218,
                "The request body must contain the following parameter: 'client_assertion' or \
                 'client_secret'.",
            ));
        }
        Credential::Secret => {
            let sent = form
                .get("client_secret")
                .map(String::as_bytes)
                .unwrap_or_default();
            let matches = entry
                .client
                .client_secret
                .as_deref()
                .is_some_and(|secret| bool::from(secret.as_bytes().ct_eq(sent)));
            if !matches {
                return Err(AadError::new(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    7_000_215,
                    format!(
                        "Invalid client secret provided. Ensure the secret being sent in the \
                         request is the client secret value, not the client secret ID, for a \
                         secret added to app '{client_id}'."
                    ),
                ));
            }
        }
        Credential::Assertion => {
            let audience = Audience {
                host,
                path: request_path,
            };
            verify_assertion(
                &entry,
                field("client_assertion_type"),
                field("client_assertion").unwrap_or_default(),
                &audience,
                now,
            )
            .map_err(AadError::bad_assertion)?;
        }
    }

    let key = IdentityKey::new(&tenant_id, &object_id);
    Ok(Grant {
        access_token: issue_access_token(
            simulator.signing_key(),
            &key,
            &entry.client.client_id,
            credential,
            now,
            lifetime_secs,
        ),
        expires_in: lifetime_secs,
    })
}

/// Where the assertion must be addressed: the token URL the request was sent to.
struct Audience<'a> {
    host: Option<&'a str>,
    path: &'a str,
}

impl Audience<'_> {
    /// Same path (case-insensitive) on this host, or on the real authority's
    /// host, so a client configured with either passes.
    fn matches(&self, aud: &str) -> bool {
        let Ok(url) = url::Url::parse(aud) else {
            return false;
        };
        if !matches!(url.scheme(), "http" | "https")
            || !url
                .path()
                .trim_end_matches('/')
                .eq_ignore_ascii_case(self.path.trim_end_matches('/'))
        {
            return false;
        }
        let Some(host) = url.host_str() else {
            return false;
        };
        let authority = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        host.eq_ignore_ascii_case("login.microsoftonline.com")
            || self
                .host
                .is_some_and(|expected| expected.eq_ignore_ascii_case(&authority))
    }
}

#[derive(Deserialize)]
struct AssertionClaims {
    aud: Option<serde_json::Value>,
    iss: Option<String>,
    sub: Option<String>,
    jti: Option<String>,
    nbf: Option<f64>,
    iat: Option<f64>,
    exp: Option<f64>,
}

/// Checks a certificate client assertion; the error is the reason.
fn verify_assertion(
    entry: &ClientEntry,
    assertion_type: Option<&str>,
    assertion: &str,
    audience: &Audience<'_>,
    now: DateTime<Utc>,
) -> Result<(), String> {
    if assertion_type != Some(JWT_BEARER) {
        return Err(format!("client_assertion_type must be '{JWT_BEARER}'"));
    }
    let header = jsonwebtoken::decode_header(assertion)
        .map_err(|error| format!("the assertion is not a JWT ({error})"))?;
    if !matches!(header.alg, Algorithm::RS256 | Algorithm::PS256) {
        return Err(format!(
            "algorithm {:?} is not supported (RS256 or PS256)",
            header.alg
        ));
    }
    let thumbprint = header.x5t_s256.ok_or("the 'x5t#S256' header is missing")?;
    let certificate = entry
        .certificates
        .iter()
        .find(|certificate| certificate.thumbprint_s256 == thumbprint)
        .ok_or_else(|| {
            format!(
                "the key was not found; thumbprint of key used by client: '{thumbprint}' is not \
                 registered for application '{}'",
                entry.client.client_id
            )
        })?;

    let mut validation = Validation::new(header.alg);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_aud = false;
    let claims = jsonwebtoken::decode::<AssertionClaims>(
        assertion,
        &certificate.decoding_key(),
        &validation,
    )
    .map_err(|error| format!("invalid signature or claims ({error})"))?
    .claims;

    let client_id = &entry.client.client_id;
    for (name, value) in [("iss", &claims.iss), ("sub", &claims.sub)] {
        if !value
            .as_deref()
            .is_some_and(|value| value.eq_ignore_ascii_case(client_id))
        {
            return Err(format!(
                "claim '{name}' must be the client ID '{client_id}'"
            ));
        }
    }
    let audiences: Vec<&str> = match &claims.aud {
        Some(serde_json::Value::String(aud)) => vec![aud.as_str()],
        Some(serde_json::Value::Array(values)) => values
            .iter()
            .filter_map(serde_json::Value::as_str)
            .collect(),
        _ => Vec::new(),
    };
    if !audiences.iter().any(|aud| audience.matches(aud)) {
        return Err(format!(
            "claim 'aud' must be the token endpoint URL (…{}), got {:?}",
            audience.path, audiences
        ));
    }
    if claims.jti.as_deref().is_none_or(str::is_empty) {
        return Err("claim 'jti' is missing".to_owned());
    }
    let now = now.timestamp_millis() as f64 / 1000.0;
    let exp = claims.exp.ok_or("claim 'exp' is missing")?;
    let nbf = claims.nbf.ok_or("claim 'nbf' is missing")?;
    let iat = claims.iat.ok_or("claim 'iat' is missing")?;
    if exp + ASSERTION_SKEW_SECS <= now {
        return Err("the assertion has expired".to_owned());
    }
    if nbf - ASSERTION_SKEW_SECS > now || iat - ASSERTION_SKEW_SECS > now {
        return Err("the assertion is not yet valid".to_owned());
    }
    if exp <= nbf {
        return Err("claim 'exp' must be after 'nbf'".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::certificate::test_material::*;
    use super::super::config::SimClient;
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";
    const PATH: &str = "/1b1121dd-6900-412a-af73-e8d44f81e1c1/oauth2/v2.0/token";

    fn identity() -> IdentityKey {
        IdentityKey::new(
            "1b1121dd-6900-412a-af73-e8d44f81e1c1",
            "aa67f786-0552-423e-8849-244ed12bf581",
        )
    }

    fn bearer(token: &str) -> HeaderValue {
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap()
    }

    #[test]
    fn issued_tokens_verify_until_they_expire() {
        let now = Utc::now();
        let token = issue_access_token(KEY, &identity(), "app", Credential::Secret, now, 60);
        let caller = verify_authorization(KEY, Some(&bearer(&token)), now).unwrap();
        assert_eq!(caller.key, identity());
        let later = now + chrono::TimeDelta::seconds(61);
        assert!(matches!(
            verify_authorization(KEY, Some(&bearer(&token)), later),
            Err(AuthFailure::Expired { .. })
        ));
    }

    #[test]
    fn foreign_or_malformed_authorization_is_refused() {
        let now = Utc::now();
        let token = issue_access_token(
            b"another key",
            &identity(),
            "app",
            Credential::Secret,
            now,
            60,
        );
        assert!(matches!(
            verify_authorization(KEY, Some(&bearer(&token)), now),
            Err(AuthFailure::Invalid(_))
        ));
        assert!(matches!(
            verify_authorization(KEY, None, now),
            Err(AuthFailure::Missing)
        ));
        assert!(matches!(
            verify_authorization(KEY, Some(&HeaderValue::from_static("Basic abc")), now),
            Err(AuthFailure::Scheme)
        ));
    }

    fn entry() -> ClientEntry {
        let client = SimClient::with_certificate("app-id", CLIENT_CERTIFICATE);
        ClientEntry {
            certificates: super::super::certificate::parse_certificates(CLIENT_CERTIFICATE)
                .unwrap(),
            client,
        }
    }

    fn assertion(private_key: &str, thumbprint: &str, claims: serde_json::Value) -> String {
        let mut header = Header::new(Algorithm::PS256);
        header.x5t_s256 = Some(thumbprint.to_owned());
        jsonwebtoken::encode(
            &header,
            &claims,
            &EncodingKey::from_rsa_pem(private_key.as_bytes()).unwrap(),
        )
        .unwrap()
    }

    fn claims(now: DateTime<Utc>) -> serde_json::Value {
        let now = now.timestamp();
        json!({"aud": format!("http://127.0.0.1:8080{PATH}"), "iss": "app-id", "sub": "app-id",
               "jti": "j1", "nbf": now, "iat": now, "exp": now + 600})
    }

    fn check(assertion: &str, now: DateTime<Utc>) -> Result<(), String> {
        let audience = Audience {
            host: Some("127.0.0.1:8080"),
            path: PATH,
        };
        verify_assertion(&entry(), Some(JWT_BEARER), assertion, &audience, now)
    }

    #[test]
    fn a_well_formed_assertion_passes() {
        let now = Utc::now();
        check(&assertion(CLIENT_KEY, CLIENT_THUMBPRINT, claims(now)), now).unwrap();
        let mut real_authority = claims(now);
        real_authority["aud"] = json!(format!("https://login.microsoftonline.com{PATH}"));
        check(
            &assertion(CLIENT_KEY, CLIENT_THUMBPRINT, real_authority),
            now,
        )
        .unwrap();
    }

    #[test]
    fn each_assertion_defect_is_refused() {
        let now = Utc::now();
        let with = |name: &str, value: serde_json::Value| {
            let mut claims = claims(now);
            claims[name] = value;
            assertion(CLIENT_KEY, CLIENT_THUMBPRINT, claims)
        };
        let cases = [
            (
                "not registered",
                assertion(OTHER_KEY, OTHER_THUMBPRINT, claims(now)),
            ),
            (
                "invalid signature",
                assertion(OTHER_KEY, CLIENT_THUMBPRINT, claims(now)),
            ),
            (
                "'aud'",
                with(
                    "aud",
                    json!("http://127.0.0.1:8080/other/oauth2/v2.0/token"),
                ),
            ),
            (
                "'aud'",
                with("aud", json!(format!("http://evil:8080{PATH}"))),
            ),
            ("'iss'", with("iss", json!("someone-else"))),
            ("'sub'", with("sub", json!("someone-else"))),
            ("'jti'", with("jti", json!(null))),
            ("expired", with("exp", json!(now.timestamp() - 3600))),
            ("not yet valid", with("nbf", json!(now.timestamp() + 3600))),
            ("'iat'", with("iat", json!(null))),
            ("not a JWT", "abc.def".to_owned()),
        ];
        for (reason, assertion) in cases {
            let error = check(&assertion, now).expect_err(reason);
            assert!(error.contains(reason), "expected {reason:?}, got {error:?}");
        }
        let audience = Audience {
            host: None,
            path: PATH,
        };
        let good = assertion(CLIENT_KEY, CLIENT_THUMBPRINT, claims(now));
        let error = verify_assertion(&entry(), Some("bearer"), &good, &audience, now).unwrap_err();
        assert!(error.contains("client_assertion_type"), "{error}");
    }
}
