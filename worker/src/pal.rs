//! The PAL client: Microsoft identity platform tokens and the
//! `Microsoft.ManagementPartner` REST calls of PAL-API.md.
//!
//! Only this module imports reqwest. It classifies every failure as
//! [`PalError::Transient`] (retry later) or [`PalError::Permanent`] (the action
//! fails) — that one bit decides the action's fate, so it is a type.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use palworker_config::{CredentialSecret, CredentialSettings, PalSettings};
use palworker_events::{CredentialName, ObjectId, PartnerId, TenantId};
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::clock::Clock;
use crate::telemetry::{ApiRequestCompleted, Metrics, RetryReason};

/// Tokens are renewed this long before they expire (SPEC §5).
pub const TOKEN_RENEWAL_MARGIN: Duration = Duration::from_secs(5 * 60);
/// Bytes of tokens kept at most (one per credential and tenant in use). A
/// bound in bytes, not in tokens: Entra ID tokens are 1–3 KiB, so 16,384 of
/// them could take 48 MiB after a fan-out over as many identities; 12 MiB
/// keep about 5,000 real tokens (14,000 of the simulator's).
pub const TOKEN_CACHE_BYTES: usize = 12 * 1024 * 1024;
/// What a cached token costs beyond its strings' bytes: the map slot and the
/// allocations' headers and rounding.
const TOKEN_ENTRY_OVERHEAD: usize = 160;
/// A secret reported invalid (AADSTS7000215) is retried this long, in case it was just rotated.
pub const SECRET_ROTATION_GRACE: Duration = Duration::from_secs(5 * 60);

/// A failure of a PAL or token call.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PalError {
    /// Worth retrying later (429, 5xx, timeouts, connection errors, transient token errors).
    #[error("{message}")]
    Transient {
        reason: RetryReason,
        /// The server's `Retry-After`, counted from when the response arrived.
        retry_after: Option<Duration>,
        /// A retry budget shorter than `retry.max_elapsed`, when the error has one.
        budget: Option<Duration>,
        message: String,
    },
    /// Retrying cannot help: the action fails with this code and message.
    #[error("{code}: {message}")]
    Permanent { code: String, message: String },
}

impl PalError {
    fn permanent(code: impl Into<String>, message: impl Into<String>) -> Self {
        PalError::Permanent {
            code: code.into(),
            message: message.into(),
        }
    }
}

/// An access token of one identity in one tenant.
#[derive(Clone)]
pub struct AccessToken {
    secret: SecretString,
    pub tenant_id: String,
    pub object_id: String,
    pub expires_at: DateTime<Utc>,
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessToken")
            .field("secret", &"[redacted]")
            .field("tenant_id", &self.tenant_id)
            .field("object_id", &self.object_id)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// The link PAL reports for the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub partner_id: String,
    pub tenant_id: Option<String>,
    pub object_id: Option<String>,
    pub state: Option<String>,
}

#[derive(Deserialize)]
struct PartnerResponse {
    name: Option<String>,
    properties: Option<PartnerProperties>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PartnerProperties {
    partner_id: Option<String>,
    tenant_id: Option<String>,
    object_id: Option<String>,
    state: Option<String>,
}

#[derive(Deserialize, Default)]
struct ArmErrorBody {
    error: Option<ArmErrorInner>,
    code: Option<String>,
    message: Option<String>,
}

#[derive(Deserialize)]
struct ArmErrorInner {
    code: Option<String>,
    message: Option<String>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: Option<serde_json::Value>,
}

#[derive(Deserialize, Default)]
struct TokenErrorBody {
    error: Option<String>,
    error_description: Option<String>,
    #[serde(default)]
    error_codes: Vec<u64>,
}

#[derive(Deserialize)]
struct TokenClaims {
    tid: Option<String>,
    oid: Option<String>,
}

/// Client-credential material, resolved once from the configuration.
enum Credential {
    Secret {
        client_id: String,
        secret: SecretString,
    },
    Certificate {
        client_id: String,
        /// base64url(SHA-256(DER certificate)).
        thumbprint_s256: String,
        key: jsonwebtoken::EncodingKey,
    },
}

impl Credential {
    fn from_settings(name: &str, settings: &CredentialSettings) -> anyhow::Result<Credential> {
        Ok(match &settings.secret {
            CredentialSecret::ClientSecret(secret) => Credential::Secret {
                client_id: settings.client_id.clone(),
                secret: secret.clone(),
            },
            CredentialSecret::Certificate { pem, path } => {
                let blocks = pem::parse_many(pem.expose_secret().as_bytes()).map_err(|e| {
                    anyhow::anyhow!("credential `{name}`: `{}` is not PEM: {e}", path.display())
                })?;
                let certificate = blocks
                    .iter()
                    .find(|b| b.tag() == "CERTIFICATE")
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "credential `{name}`: `{}` holds no CERTIFICATE block",
                            path.display()
                        )
                    })?;
                let key_block = blocks
                    .iter()
                    .find(|b| b.tag() == "PRIVATE KEY" || b.tag() == "RSA PRIVATE KEY")
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "credential `{name}`: `{}` holds no PRIVATE KEY block (RSA, PKCS#8 or PKCS#1)",
                            path.display()
                        )
                    })?;
                let key = jsonwebtoken::EncodingKey::from_rsa_pem(
                    pem::encode(key_block).as_bytes(),
                )
                .map_err(|e| {
                    anyhow::anyhow!(
                        "credential `{name}`: the private key in `{}` is not a usable RSA key: {e}",
                        path.display()
                    )
                })?;
                let digest =
                    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, certificate.contents());
                Credential::Certificate {
                    client_id: settings.client_id.clone(),
                    thumbprint_s256: URL_SAFE_NO_PAD.encode(digest.as_ref()),
                    key,
                }
            }
        })
    }
}

type TokenKey = (String, String);

/// Tokens by (credential, tenant), within [`TOKEN_CACHE_BYTES`].
#[derive(Default)]
struct TokenCache {
    tokens: HashMap<TokenKey, AccessToken>,
    bytes: usize,
}

impl TokenCache {
    fn weight(key: &TokenKey, token: &AccessToken) -> usize {
        key.0.len()
            + key.1.len()
            + token.secret.expose_secret().len()
            + token.tenant_id.len()
            + token.object_id.len()
            + TOKEN_ENTRY_OVERHEAD
    }

    fn get(&self, key: &TokenKey) -> Option<&AccessToken> {
        self.tokens.get(key)
    }

    fn remove(&mut self, key: &TokenKey) {
        if let Some(token) = self.tokens.remove(key) {
            self.bytes -= Self::weight(key, &token);
        }
    }

    /// Adds a token. When that would exceed the budget — a fan-out over many
    /// tenants and identities must not keep a token per identity for an
    /// hour — the tokens due for renewal by `renew_after` go first, then, if
    /// still needed, half of the rest.
    fn insert(&mut self, key: TokenKey, token: AccessToken, renew_after: DateTime<Utc>) {
        self.remove(&key);
        let weight = Self::weight(&key, &token);
        if self.bytes + weight > TOKEN_CACHE_BYTES {
            self.retain(|token| token.expires_at > renew_after);
            if self.bytes + weight > TOKEN_CACHE_BYTES {
                let mut keep = false;
                self.retain(|_| {
                    keep = !keep;
                    keep
                });
            }
        }
        self.bytes += weight;
        self.tokens.insert(key, token);
    }

    fn retain(&mut self, mut keep: impl FnMut(&AccessToken) -> bool) {
        let mut bytes = self.bytes;
        self.tokens.retain(|key, token| {
            let kept = keep(token);
            if !kept {
                bytes -= Self::weight(key, token);
            }
            kept
        });
        self.bytes = bytes;
    }
}

/// The PAL client. Cheap to clone.
#[derive(Clone)]
pub struct PalClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    arm_endpoint: String,
    authority: String,
    api_version: String,
    credentials: HashMap<String, Credential>,
    tokens: Mutex<TokenCache>,
    /// Identities (tenant, object) that PAL answered with a `Retry-After`,
    /// and until when: no request for them is sent before, whichever action
    /// it belongs to (a newer action for the same account must wait too).
    throttled: Mutex<HashMap<(String, String), DateTime<Utc>>>,
    /// One async lock per (credential, tenant): concurrent misses fetch one token.
    token_fetch: Mutex<HashMap<TokenKey, Arc<tokio::sync::Mutex<()>>>>,
    limiter: DefaultKeyedRateLimiter<String>,
    metrics: Metrics,
    clock: Arc<dyn Clock>,
}

impl PalClient {
    pub fn new(
        settings: &PalSettings,
        credentials: &std::collections::BTreeMap<String, CredentialSettings>,
        per_tenant_rps: f64,
        metrics: Metrics,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<PalClient> {
        let http = reqwest::Client::builder()
            .timeout(settings.request_timeout)
            .connect_timeout(settings.request_timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("palworker/", env!("CARGO_PKG_VERSION")))
            .pool_max_idle_per_host(256)
            .build()?;
        let mut resolved = HashMap::new();
        for (name, settings) in credentials {
            resolved.insert(name.clone(), Credential::from_settings(name, settings)?);
        }
        Ok(PalClient {
            inner: Arc::new(Inner {
                http,
                arm_endpoint: settings
                    .arm_endpoint
                    .as_str()
                    .trim_end_matches('/')
                    .to_owned(),
                authority: settings.authority.as_str().trim_end_matches('/').to_owned(),
                api_version: settings.api_version.clone(),
                credentials: resolved,
                tokens: Mutex::new(TokenCache::default()),
                throttled: Mutex::new(HashMap::new()),
                token_fetch: Mutex::new(HashMap::new()),
                limiter: RateLimiter::keyed(tenant_quota(per_tenant_rps)),
                metrics,
                clock,
            }),
        })
    }

    pub fn has_credential(&self, name: &CredentialName) -> bool {
        self.inner.credentials.contains_key(name.as_str())
    }

    /// A token of `credential` in `tenant`, from the cache unless it expires
    /// within [`TOKEN_RENEWAL_MARGIN`].
    pub async fn token(
        &self,
        credential: &CredentialName,
        tenant: &TenantId,
    ) -> Result<AccessToken, PalError> {
        let key = (credential.as_str().to_owned(), tenant.as_str().to_owned());
        if let Some(token) = self.cached(&key) {
            return Ok(token);
        }
        let fetch_lock = {
            let mut locks = self.inner.token_fetch.lock().expect("token lock");
            locks.entry(key.clone()).or_default().clone()
        };
        let guard = fetch_lock.lock().await;
        if let Some(token) = self.cached(&key) {
            return Ok(token);
        }
        let fetched = self.fetch_token(credential, tenant).await;
        drop(guard);
        {
            // Nobody else waits on this key's lock once we hold the only
            // other reference: drop it, so the map stays as small as the
            // fetches in progress.
            let mut locks = self.inner.token_fetch.lock().expect("token lock");
            if locks
                .get(&key)
                .is_some_and(|lock| Arc::strong_count(lock) <= 2)
            {
                locks.remove(&key);
            }
        }
        let token = fetched?;
        let renew_after = self.renew_after();
        self.inner
            .tokens
            .lock()
            .expect("token lock")
            .insert(key, token.clone(), renew_after);
        Ok(token)
    }

    /// Tokens that expire by then are due for renewal.
    fn renew_after(&self) -> DateTime<Utc> {
        self.inner.clock.now()
            + chrono::Duration::from_std(TOKEN_RENEWAL_MARGIN).expect("small duration")
    }

    fn cached(&self, key: &TokenKey) -> Option<AccessToken> {
        let renew_after = self.renew_after();
        let tokens = self.inner.tokens.lock().expect("token lock");
        let token = tokens.get(key)?;
        (token.expires_at > renew_after).then(|| token.clone())
    }

    /// How long the token's identity must still wait after a `Retry-After`.
    fn throttled_for(&self, token: &AccessToken) -> Option<Duration> {
        let throttled = self.inner.throttled.lock().expect("throttle lock");
        let until = throttled.get(&(token.tenant_id.clone(), token.object_id.clone()))?;
        (*until - self.inner.clock.now())
            .to_std()
            .ok()
            .filter(|wait| !wait.is_zero())
    }

    /// Records a `Retry-After`, counted from now (the response just arrived).
    fn throttle(&self, token: &AccessToken, wait: Duration) {
        let now = self.inner.clock.now();
        let until = chrono::Duration::from_std(wait)
            .ok()
            .and_then(|wait| now.checked_add_signed(wait))
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        let mut throttled = self.inner.throttled.lock().expect("throttle lock");
        throttled.retain(|_, until| *until > now);
        let entry = throttled
            .entry((token.tenant_id.clone(), token.object_id.clone()))
            .or_insert(until);
        *entry = (*entry).max(until);
    }

    /// Drops a cached token (after a 401).
    pub fn invalidate(&self, credential: &CredentialName, tenant: &TenantId) {
        self.inner
            .tokens
            .lock()
            .expect("token lock")
            .remove(&(credential.as_str().to_owned(), tenant.as_str().to_owned()));
    }

    async fn fetch_token(
        &self,
        credential: &CredentialName,
        tenant: &TenantId,
    ) -> Result<AccessToken, PalError> {
        let Some(material) = self.inner.credentials.get(credential.as_str()) else {
            return Err(PalError::permanent(
                "unknown_credential",
                format!("credential `{credential}` is not configured"),
            ));
        };
        let url = format!(
            "{}/{}/oauth2/v2.0/token",
            self.inner.authority,
            tenant.as_str()
        );
        let scope = format!("{}/.default", self.inner.arm_endpoint_scope());
        let mut form: Vec<(&str, String)> = vec![
            ("grant_type", "client_credentials".into()),
            ("scope", scope),
        ];
        match material {
            Credential::Secret { client_id, secret } => {
                form.push(("client_id", client_id.clone()));
                form.push(("client_secret", secret.expose_secret().to_owned()));
            }
            Credential::Certificate {
                client_id,
                thumbprint_s256,
                key,
            } => {
                let assertion = client_assertion(
                    client_id,
                    thumbprint_s256,
                    key,
                    &url,
                    self.inner.clock.now(),
                )?;
                form.push(("client_id", client_id.clone()));
                form.push((
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into(),
                ));
                form.push(("client_assertion", assertion));
            }
        }
        let response = self.inner.http.post(&url).form(&form).send().await;
        let received_at = self.inner.clock.now();
        let response = match response {
            Ok(response) => response,
            Err(error) => {
                return Err(PalError::Transient {
                    reason: RetryReason::Token,
                    retry_after: None,
                    budget: None,
                    message: format!("token request failed: {}", transport_message(&error)),
                });
            }
        };
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let body = response.bytes().await.unwrap_or_default();
        if status.is_success() {
            let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|e| {
                PalError::permanent(
                    "invalid_token_response",
                    format!("token endpoint answered 200 with an unreadable body: {e}"),
                )
            })?;
            let expires_in = parsed
                .expires_in
                .as_ref()
                .and_then(|v| {
                    v.as_u64()
                        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                })
                .unwrap_or(3599);
            let claims = token_claims(&parsed.access_token)?;
            return Ok(AccessToken {
                secret: SecretString::from(parsed.access_token),
                tenant_id: claims.tid.unwrap_or_default().to_ascii_lowercase(),
                object_id: claims.oid.unwrap_or_default().to_ascii_lowercase(),
                expires_at: received_at + chrono::Duration::seconds(expires_in as i64),
            });
        }
        let error: TokenErrorBody = serde_json::from_slice(&body).unwrap_or_default();
        Err(classify_token_error(status, &error, retry_after))
    }

    /// `GET /providers/Microsoft.ManagementPartner/partners`: the caller's link, if any.
    pub async fn get_link(&self, token: &AccessToken) -> Result<Option<Link>, PalError> {
        let (status, body) = self.arm(Method::GET, None, token).await?;
        match status {
            StatusCode::OK => parse_link(&body).map(Some),
            StatusCode::NOT_FOUND => Ok(None),
            _ => unreachable!("arm() returns only 200 and 404"),
        }
    }

    /// `PUT .../partners/{partner}`: create the link.
    pub async fn put_link(
        &self,
        token: &AccessToken,
        partner: &PartnerId,
    ) -> Result<Option<Link>, PalError> {
        self.write(Method::PUT, partner, token).await
    }

    /// `PATCH .../partners/{partner}`: move the caller's link to `partner`.
    pub async fn patch_link(
        &self,
        token: &AccessToken,
        partner: &PartnerId,
    ) -> Result<Option<Link>, PalError> {
        self.write(Method::PATCH, partner, token).await
    }

    /// `DELETE .../partners/{partner}`: remove the link. Returns false when
    /// PAL answered 404 (already gone).
    pub async fn delete_link(&self, token: &AccessToken, partner: &str) -> Result<bool, PalError> {
        let (status, _) = self.arm(Method::DELETE, Some(partner), token).await?;
        Ok(status == StatusCode::OK)
    }

    async fn write(
        &self,
        method: Method,
        partner: &PartnerId,
        token: &AccessToken,
    ) -> Result<Option<Link>, PalError> {
        let (status, body) = self
            .arm(method.clone(), Some(partner.as_str()), token)
            .await?;
        if status == StatusCode::NOT_FOUND {
            return Err(PalError::permanent(
                "ManagementPartnerNotFound",
                format!("{method} answered 404: the caller has no link"),
            ));
        }
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        parse_link(&body).map(Some)
    }

    /// One ARM call, rate-limited per tenant. Returns 200 or 404 with the
    /// body; every other outcome is classified into a [`PalError`].
    async fn arm(
        &self,
        method: Method,
        partner: Option<&str>,
        token: &AccessToken,
    ) -> Result<(StatusCode, bytes_body::Body), PalError> {
        let path = match partner {
            Some(partner) => format!("/providers/Microsoft.ManagementPartner/partners/{partner}"),
            None => "/providers/Microsoft.ManagementPartner/partners".to_owned(),
        };
        let url = format!("{}{}", self.inner.arm_endpoint, path);
        self.inner.limiter.until_key_ready(&token.tenant_id).await;
        if let Some(wait) = self.throttled_for(token) {
            return Err(PalError::Transient {
                reason: RetryReason::Throttled,
                retry_after: Some(wait),
                budget: None,
                message: format!(
                    "{method} {path}: not sent: PAL throttled this identity, its Retry-After runs for another {} ms",
                    wait.as_millis()
                ),
            });
        }
        let method_label = method_label(&method);
        let started = Instant::now();
        let mut request = self
            .inner
            .http
            .request(method.clone(), &url)
            .query(&[("api-version", self.inner.api_version.as_str())])
            .bearer_auth(token.secret.expose_secret());
        if method == Method::PUT || method == Method::DELETE {
            request = request.header(reqwest::header::CONTENT_LENGTH, "0");
        }
        let response = request.send().await;
        let response = match response {
            Ok(response) => response,
            Err(error) => {
                ApiRequestCompleted {
                    method: method_label,
                    status: None,
                    elapsed: started.elapsed(),
                }
                .emit(&self.inner.metrics);
                let reason = if error.is_timeout() {
                    RetryReason::Timeout
                } else {
                    RetryReason::Connection
                };
                return Err(PalError::Transient {
                    reason,
                    retry_after: None,
                    budget: None,
                    message: format!("{method} {path}: {}", transport_message(&error)),
                });
            }
        };
        let status = response.status();
        let headers = response.headers().clone();
        if (status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error())
            && let Some(wait) = retry_after(&headers)
        {
            self.throttle(token, wait);
        }
        let body = response.bytes().await;
        ApiRequestCompleted {
            method: method_label,
            status: Some(status.as_u16()),
            elapsed: started.elapsed(),
        }
        .emit(&self.inner.metrics);
        let body = match body {
            Ok(body) => bytes_body::Body(body.to_vec()),
            Err(error) => {
                return Err(PalError::Transient {
                    reason: if error.is_timeout() {
                        RetryReason::Timeout
                    } else {
                        RetryReason::Connection
                    },
                    retry_after: None,
                    budget: None,
                    message: format!(
                        "{method} {path}: reading the response failed: {}",
                        transport_message(&error)
                    ),
                });
            }
        };
        if status == StatusCode::OK || status == StatusCode::NOT_FOUND {
            return Ok((status, body));
        }
        let (code, message) = arm_error(&body);
        let request_id = header(&headers, "x-ms-request-id");
        let correlation_id = header(&headers, "x-ms-correlation-request-id");
        tracing::debug!(
            method = %method,
            path = %path,
            status = status.as_u16(),
            code = %code,
            x_ms_request_id = %request_id,
            x_ms_correlation_request_id = %correlation_id,
            ratelimit_remaining_writes = %header(&headers, "x-ms-ratelimit-remaining-tenant-writes"),
            "PAL request failed."
        );
        let text = format!(
            "{method} {path} answered {}: {code}: {message} (x-ms-request-id {request_id})",
            status.as_u16()
        );
        Err(match status.as_u16() {
            401 => PalError::Transient {
                reason: RetryReason::Unauthorized,
                retry_after: None,
                budget: None,
                message: text,
            },
            429 => PalError::Transient {
                reason: RetryReason::Throttled,
                retry_after: retry_after(&headers),
                budget: None,
                message: text,
            },
            408 | 500 | 502 | 503 | 504 => PalError::Transient {
                reason: RetryReason::ServerError,
                retry_after: retry_after(&headers),
                budget: None,
                message: text,
            },
            other => PalError::permanent(
                if code.is_empty() {
                    format!("http_{other}")
                } else {
                    code
                },
                text,
            ),
        })
    }
}

impl Inner {
    /// The resource whose `/.default` scope tokens are requested for.
    fn arm_endpoint_scope(&self) -> &str {
        // Tokens are always for Azure Resource Manager, also when the API is
        // served by a simulator or a sovereign-cloud endpoint of the same shape.
        if self.arm_endpoint.starts_with("https://management.") {
            &self.arm_endpoint
        } else {
            "https://management.azure.com"
        }
    }
}

mod bytes_body {
    /// A response body (kept apart from reqwest's types so callers never see them).
    pub struct Body(pub Vec<u8>);

    impl std::ops::Deref for Body {
        type Target = [u8];
        fn deref(&self) -> &[u8] {
            &self.0
        }
    }
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        _ => "OTHER",
    }
}

fn header(headers: &reqwest::header::HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned()
}

fn tenant_quota(per_tenant_rps: f64) -> Quota {
    let rps = if per_tenant_rps.is_finite() && per_tenant_rps > 0.0 {
        per_tenant_rps
    } else {
        1.0
    };
    let period = Duration::from_secs_f64(1.0 / rps);
    let burst = NonZeroU32::new(rps.ceil().max(1.0) as u32).expect("at least one");
    Quota::with_period(period)
        .expect("non-zero period")
        .allow_burst(burst)
}

/// The delay a server asks for: `retry-after-ms`, `x-ms-retry-after-ms`, or
/// `Retry-After` in seconds (or an HTTP date).
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    for name in ["retry-after-ms", "x-ms-retry-after-ms"] {
        if let Some(ms) = headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|v| v.is_finite() && *v >= 0.0)
        {
            // An absurd value saturates rather than panicking.
            return Some(Duration::try_from_secs_f64(ms / 1000.0).unwrap_or(Duration::MAX));
        }
    }
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(seconds) = value.parse::<f64>() {
        return (seconds.is_finite() && seconds >= 0.0)
            .then(|| Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX));
    }
    let at = DateTime::parse_from_rfc2822(value)
        .ok()?
        .with_timezone(&Utc);
    (at - Utc::now()).to_std().ok()
}

fn transport_message(error: &reqwest::Error) -> String {
    // reqwest's Display includes the URL, which carries no secret here
    // (tokens travel in headers, secrets in form bodies).
    let mut message = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(inner) = source {
        message.push_str(": ");
        message.push_str(&inner.to_string());
        source = inner.source();
    }
    message
}

fn arm_error(body: &[u8]) -> (String, String) {
    let parsed: ArmErrorBody = serde_json::from_slice(body).unwrap_or_default();
    let code = parsed
        .error
        .as_ref()
        .and_then(|e| e.code.clone())
        .or(parsed.code)
        .unwrap_or_default();
    let message = parsed
        .error
        .and_then(|e| e.message)
        .or(parsed.message)
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned());
    (code, message)
}

fn parse_link(body: &[u8]) -> Result<Link, PalError> {
    let parsed: PartnerResponse = serde_json::from_slice(body).map_err(|e| {
        PalError::permanent(
            "invalid_response",
            format!("PAL answered 200 with an unreadable PartnerResponse: {e}"),
        )
    })?;
    let properties = parsed.properties;
    let partner_id = properties
        .as_ref()
        .and_then(|p| p.partner_id.clone())
        .or(parsed.name)
        .ok_or_else(|| {
            PalError::permanent("invalid_response", "PartnerResponse without partnerId")
        })?;
    Ok(Link {
        partner_id,
        tenant_id: properties
            .as_ref()
            .and_then(|p| p.tenant_id.as_ref().map(|s| s.to_ascii_lowercase())),
        object_id: properties
            .as_ref()
            .and_then(|p| p.object_id.as_ref().map(|s| s.to_ascii_lowercase())),
        state: properties.and_then(|p| p.state),
    })
}

/// The `tid` and `oid` claims of an access token (read, not verified: the
/// token is verified by ARM; palworker only checks it names the expected identity).
fn token_claims(token: &str) -> Result<TokenClaims, PalError> {
    let payload = token
        .split('.')
        .nth(1)
        .ok_or_else(|| PalError::permanent("invalid_token", "the access token is not a JWT"))?;
    let bytes = URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .or_else(|_| STANDARD.decode(payload))
        .map_err(|_| {
            PalError::permanent("invalid_token", "the access token payload is not base64url")
        })?;
    serde_json::from_slice(&bytes)
        .map_err(|_| PalError::permanent("invalid_token", "the access token payload is not JSON"))
}

/// Decides retry vs failure from the identity platform's error codes, never from the description.
fn classify_token_error(
    status: StatusCode,
    body: &TokenErrorBody,
    retry_after: Option<Duration>,
) -> PalError {
    const TRANSIENT: [u64; 7] = [50033, 90006, 90024, 90033, 90090, 50196, 90055];
    let code = body.error_codes.first().copied();
    let error = body
        .error
        .clone()
        .unwrap_or_else(|| format!("http_{}", status.as_u16()));
    // The description starts with "AADSTSnnnn: text"; keep its first line only.
    let description = body
        .error_description
        .as_deref()
        .and_then(|d| d.lines().next())
        .unwrap_or("")
        .chars()
        .take(300)
        .collect::<String>();
    let message = format!(
        "token request answered {}: {error}: {description}",
        status.as_u16()
    );
    let transient = |budget| PalError::Transient {
        reason: RetryReason::Token,
        retry_after,
        budget,
        message: message.clone(),
    };
    if body.error.as_deref() == Some("temporarily_unavailable")
        || code.is_some_and(|c| TRANSIENT.contains(&c))
        || status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
    {
        return transient(None);
    }
    if code == Some(7000215) {
        return transient(Some(SECRET_ROTATION_GRACE));
    }
    PalError::permanent(code.map(|c| format!("AADSTS{c}")).unwrap_or(error), message)
}

#[derive(serde::Serialize)]
struct AssertionClaims<'a> {
    aud: &'a str,
    iss: &'a str,
    sub: &'a str,
    jti: String,
    nbf: i64,
    iat: i64,
    exp: i64,
}

/// A client assertion JWT signed with the certificate's key (PAL-API.md).
fn client_assertion(
    client_id: &str,
    thumbprint_s256: &str,
    key: &jsonwebtoken::EncodingKey,
    audience: &str,
    now: DateTime<Utc>,
) -> Result<String, PalError> {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.x5t_s256 = Some(thumbprint_s256.to_owned());
    let claims = AssertionClaims {
        aud: audience,
        iss: client_id,
        sub: client_id,
        jti: uuid::Uuid::new_v4().to_string(),
        nbf: now.timestamp(),
        iat: now.timestamp(),
        exp: now.timestamp() + 600,
    };
    jsonwebtoken::encode(&header, &claims, key).map_err(|e| {
        PalError::permanent(
            "client_assertion",
            format!("signing the client assertion failed: {e}"),
        )
    })
}

/// Checks that a token and a link belong to the expected identity (SPEC §5 step 3).
pub fn check_identity(
    token: &AccessToken,
    link: Option<&Link>,
    tenant: &TenantId,
    object: &ObjectId,
) -> Result<(), PalError> {
    if token.tenant_id != tenant.as_str() || token.object_id != object.as_str() {
        return Err(PalError::permanent(
            "identity_mismatch",
            format!(
                "the credential's token is for identity {}/{} but the account is {}/{}; nothing was written",
                token.tenant_id, token.object_id, tenant, object
            ),
        ));
    }
    if let Some(link) = link {
        let tenant_ok = link
            .tenant_id
            .as_deref()
            .is_none_or(|t| t == tenant.as_str());
        let object_ok = link
            .object_id
            .as_deref()
            .is_none_or(|o| o == object.as_str());
        if !tenant_ok || !object_ok {
            return Err(PalError::permanent(
                "identity_mismatch",
                format!(
                    "PAL returned a link of identity {}/{} for account {}/{}; nothing was written",
                    link.tenant_id.as_deref().unwrap_or("?"),
                    link.object_id.as_deref().unwrap_or("?"),
                    tenant,
                    object
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue};

    #[test]
    fn the_token_cache_stays_within_its_bytes_and_drops_expiring_tokens_first() {
        let now = Utc::now();
        let token = |n: usize, expires_in_secs: i64| AccessToken {
            secret: SecretString::from("x".repeat(2_000 + n % 7)),
            tenant_id: format!("{n:08x}-0000-4000-8000-000000000000"),
            object_id: format!("{n:08x}-1111-4111-8111-111111111111"),
            expires_at: now + chrono::Duration::seconds(expires_in_secs),
        };
        let key = |n: usize| {
            (
                "sp".to_owned(),
                format!("{n:08x}-0000-4000-8000-000000000000"),
            )
        };
        let recount = |cache: &TokenCache| -> usize {
            cache
                .tokens
                .iter()
                .map(|(k, t)| TokenCache::weight(k, t))
                .sum()
        };
        let mut cache = TokenCache::default();
        // Tokens about to expire, then fresh ones, far beyond the budget.
        for n in 0..100 {
            cache.insert(key(n), token(n, 60), now);
        }
        let fresh = 10_000;
        for n in 100..fresh {
            cache.insert(
                key(n),
                token(n, 3_600),
                now + chrono::Duration::seconds(300),
            );
            assert!(cache.bytes <= TOKEN_CACHE_BYTES);
        }
        assert_eq!(
            cache.bytes,
            recount(&cache),
            "the byte count follows every change"
        );
        assert!(
            (0..100).all(|n| cache.get(&key(n)).is_none()),
            "expiring tokens went first"
        );
        assert!(
            cache.get(&key(fresh - 1)).is_some(),
            "the newest token is kept"
        );
        assert!(
            cache.tokens.len() > 1_000,
            "eviction keeps half, not nothing"
        );
        cache.remove(&key(fresh - 1));
        assert!(cache.get(&key(fresh - 1)).is_none());
        assert_eq!(cache.bytes, recount(&cache));
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        map
    }

    #[test]
    fn retry_after_prefers_millisecond_headers() {
        assert_eq!(
            retry_after(&headers(&[("retry-after", "3")])),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            retry_after(&headers(&[
                ("retry-after", "3"),
                ("x-ms-retry-after-ms", "1500")
            ])),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            retry_after(&headers(&[("retry-after-ms", "250")])),
            Some(Duration::from_millis(250))
        );
        assert_eq!(retry_after(&headers(&[("retry-after", "soon")])), None);
        // Absurd values saturate instead of panicking.
        assert_eq!(
            retry_after(&headers(&[("retry-after", "1e300")])),
            Some(Duration::MAX)
        );
        assert_eq!(
            retry_after(&headers(&[("retry-after-ms", "1e300")])),
            Some(Duration::MAX)
        );
        assert_eq!(retry_after(&headers(&[])), None);
    }

    fn token_error(status: u16, error: &str, code: u64) -> PalError {
        classify_token_error(
            StatusCode::from_u16(status).unwrap(),
            &TokenErrorBody {
                error: Some(error.into()),
                error_description: Some(format!("AADSTS{code}: something\r\nTrace ID: x")),
                error_codes: vec![code],
            },
            None,
        )
    }

    #[test]
    fn token_errors_are_classified_by_code() {
        for code in [
            700016, 700011, 90002, 7000222, 700027, 50012, 7000112, 70001, 65001, 90094, 650056,
            53003,
        ] {
            match token_error(400, "invalid_client", code) {
                PalError::Permanent { code: c, .. } => assert_eq!(c, format!("AADSTS{code}")),
                other => panic!("{code} should be permanent, got {other:?}"),
            }
        }
        for code in [50033, 90006, 90024, 90033, 90090, 50196, 90055] {
            assert!(
                matches!(
                    token_error(400, "invalid_request", code),
                    PalError::Transient { budget: None, .. }
                ),
                "{code} should be transient"
            );
        }
        assert!(matches!(
            token_error(401, "invalid_client", 7000215),
            PalError::Transient { budget: Some(b), .. } if b == SECRET_ROTATION_GRACE
        ));
        assert!(matches!(
            token_error(400, "temporarily_unavailable", 1),
            PalError::Transient { .. }
        ));
    }

    #[test]
    fn arm_errors_parse_both_shapes() {
        assert_eq!(
            arm_error(br#"{"error":{"code":"A","message":"m"},"code":"A","message":"m"}"#),
            ("A".into(), "m".into())
        );
        assert_eq!(
            arm_error(br#"{"code":"B","message":"n"}"#),
            ("B".into(), "n".into())
        );
    }

    #[test]
    fn partner_response_accepts_integer_and_string_versions() {
        let link = parse_link(
            br#"{"name":"123","properties":{"partnerId":"123","tenantId":"T","objectId":"O","version":"3","state":"Active"}}"#,
        )
        .unwrap();
        assert_eq!(link.partner_id, "123");
        assert_eq!(link.tenant_id.as_deref(), Some("t"));
        let link = parse_link(br#"{"name":"77","etag":5,"properties":{"version":5}}"#).unwrap();
        assert_eq!(link.partner_id, "77");
    }
}
