//! Tokens of the Microsoft identity platform: client credentials (a secret
//! or a certificate's signed client assertion), cached per (credential,
//! tenant) until [`TOKEN_RENEWAL_MARGIN`] before they expire, within
//! [`TOKEN_CACHE_BYTES`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use palworker_config::{CredentialSecret, CredentialSettings};
use palworker_core::RetryReason;
use palworker_events::{CredentialName, ObjectId, TenantId};
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::PalClient;
use super::body::{BodyError, read_body, redirect_refused};
use super::error::{PalError, Transient, one_line, retry_after, transport_message};

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
/// The token lifetime assumed when the endpoint does not say (`expires_in`).
const DEFAULT_LIFETIME_SECS: u64 = 3599;
/// The longest lifetime believed (Entra ID issues 60–90 minutes): an absurd
/// `expires_in` neither overflows the clock nor keeps a token forever.
const MAX_LIFETIME_SECS: u64 = 24 * 3600;

/// An access token of one identity in one tenant: the identity is the
/// token's `tid` and `oid` claims, read (not verified: ARM verifies it).
#[derive(Clone)]
pub struct AccessToken {
    secret: SecretString,
    pub tenant_id: TenantId,
    pub object_id: ObjectId,
    pub expires_at: DateTime<Utc>,
}

impl AccessToken {
    /// The bearer credential, for the `Authorization` header only.
    pub(super) fn bearer(&self) -> &str {
        self.secret.expose_secret()
    }
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

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: Option<serde_json::Value>,
}

#[derive(Deserialize, Default)]
pub(super) struct TokenErrorBody {
    error: Option<String>,
    error_description: Option<String>,
    #[serde(default)]
    error_codes: Vec<u64>,
}

#[derive(Deserialize)]
pub(super) struct TokenClaims {
    tid: Option<String>,
    oid: Option<String>,
}

/// Client-credential material, resolved once from the configuration.
pub(super) enum Credential {
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
    pub(super) fn from_settings(
        name: &str,
        settings: &CredentialSettings,
    ) -> anyhow::Result<Credential> {
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

/// Which token: a credential's, in a tenant.
pub(super) type TokenKey = (CredentialName, TenantId);

/// Tokens by (credential, tenant), within [`TOKEN_CACHE_BYTES`].
#[derive(Default)]
pub(super) struct TokenCache {
    tokens: HashMap<TokenKey, AccessToken>,
    bytes: usize,
}

impl TokenCache {
    fn weight(key: &TokenKey, token: &AccessToken) -> usize {
        key.0.as_str().len()
            + key.1.as_str().len()
            + token.secret.expose_secret().len()
            + token.tenant_id.as_str().len()
            + token.object_id.as_str().len()
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

impl PalClient {
    /// A token of `credential` in `tenant`, from the cache unless it expires
    /// within [`TOKEN_RENEWAL_MARGIN`].
    pub(super) async fn token(
        &self,
        credential: &CredentialName,
        tenant: &TenantId,
    ) -> Result<AccessToken, PalError> {
        let key = (credential.clone(), tenant.clone());
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

    /// Drops a cached token (after a 401).
    pub(super) fn invalidate(&self, credential: &CredentialName, tenant: &TenantId) {
        self.inner
            .tokens
            .lock()
            .expect("token lock")
            .remove(&(credential.clone(), tenant.clone()));
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
                return Err(PalError::transient(
                    RetryReason::Token,
                    format!("token request failed: {}", transport_message(&error)),
                ));
            }
        };
        let status = response.status();
        if status.is_redirection() {
            // Not followed (body.rs): a 307 would re-send the secret's form.
            return Err(redirect_refused(
                "the token request",
                status,
                response.headers(),
            ));
        }
        let retry_after = retry_after(response.headers(), received_at);
        let body = read_body(response).await;
        if status.is_success() {
            return match body {
                Ok(body) => issued_token(&body, received_at),
                Err(BodyError::TooLarge(too_large)) => Err(too_large
                    .into_error(&format!("the token endpoint answered {}", status.as_u16()))),
                // The token was issued but did not arrive whole: asking again helps.
                Err(BodyError::Transport(error)) => Err(PalError::transient(
                    RetryReason::Token,
                    format!(
                        "reading the token response failed: {}",
                        transport_message(&error)
                    ),
                )),
            };
        }
        // An error's body only refines the status; without one (unreadable,
        // oversized, not JSON) the status decides.
        let error: TokenErrorBody = body
            .ok()
            .and_then(|body| serde_json::from_slice(&body).ok())
            .unwrap_or_default();
        Err(classify_token_error(status, &error, retry_after))
    }
}

/// The token of a 200 answer of the token endpoint, received at `received_at`.
pub(super) fn issued_token(
    body: &[u8],
    received_at: DateTime<Utc>,
) -> Result<AccessToken, PalError> {
    let parsed: TokenResponse = serde_json::from_slice(body).map_err(|e| {
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
        .unwrap_or(DEFAULT_LIFETIME_SECS);
    let claims = token_claims(&parsed.access_token)?;
    let claim = |name: &str, value: Option<String>| {
        value.ok_or_else(|| {
            PalError::permanent(
                "invalid_token",
                format!("the access token has no `{name}` claim"),
            )
        })
    };
    let tenant_id = TenantId::parse(&claim("tid", claims.tid)?).map_err(|e| {
        PalError::permanent("invalid_token", format!("the token's `tid` claim {e}"))
    })?;
    let object_id = ObjectId::parse(&claim("oid", claims.oid)?).map_err(|e| {
        PalError::permanent("invalid_token", format!("the token's `oid` claim {e}"))
    })?;
    Ok(AccessToken {
        secret: SecretString::from(parsed.access_token),
        tenant_id,
        object_id,
        // Saturating: `received_at` is the clock's, but no answer should
        // be able to make a panic out of it.
        expires_at: received_at
            .checked_add_signed(chrono::Duration::seconds(
                expires_in.min(MAX_LIFETIME_SECS) as i64
            ))
            .unwrap_or(DateTime::<Utc>::MAX_UTC),
    })
}

/// The `tid` and `oid` claims of an access token (read, not verified: the
/// token is verified by ARM; palworker only checks it names the expected identity).
pub(super) fn token_claims(token: &str) -> Result<TokenClaims, PalError> {
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

/// AADSTS700016: the application (the identity's service principal) is
/// not in that directory — deleted from the tenant, or never there.
const IDENTITY_NOT_IN_TENANT: u64 = 700016;

/// Decides retry vs failure from the identity platform's error codes, never from the description.
pub(super) fn classify_token_error(
    status: StatusCode,
    body: &TokenErrorBody,
    retry_after: Option<Duration>,
) -> PalError {
    const TRANSIENT: [u64; 7] = [50033, 90006, 90024, 90033, 90090, 50196, 90055];
    let code = body.error_codes.first().copied();
    // The error becomes the failure's code when there is no numeric one.
    let error = body
        .error
        .as_deref()
        .map(|error| one_line(error, 100))
        .unwrap_or_else(|| format!("http_{}", status.as_u16()));
    // The description starts with "AADSTSnnnn: text"; keep its first line only.
    let description = one_line(body.error_description.as_deref().unwrap_or(""), 300);
    let message = format!(
        "token request answered {}: {error}: {description}",
        status.as_u16()
    );
    let transient = |budget| {
        PalError::Transient(Transient {
            reason: RetryReason::Token,
            retry_after,
            budget,
            message: message.clone(),
        })
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
    if code == Some(IDENTITY_NOT_IN_TENANT) {
        return PalError::IdentityGone {
            code: format!("AADSTS{IDENTITY_NOT_IN_TENANT}"),
            message,
        };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_cache_stays_within_its_bytes_and_drops_expiring_tokens_first() {
        let now = Utc::now();
        let tenant = |n: usize| TenantId::parse(&format!("{n:08x}-0000-4000-8000-000000000000"));
        let token = |n: usize, expires_in_secs: i64| AccessToken {
            secret: SecretString::from("x".repeat(2_000 + n % 7)),
            tenant_id: tenant(n).unwrap(),
            object_id: ObjectId::parse(&format!("{n:08x}-1111-4111-8111-111111111111")).unwrap(),
            expires_at: now + chrono::Duration::seconds(expires_in_secs),
        };
        let key = |n: usize| (CredentialName::parse("sp").unwrap(), tenant(n).unwrap());
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

    fn jwt(claims: &str) -> String {
        format!("e30.{}.sig", URL_SAFE_NO_PAD.encode(claims))
    }

    #[test]
    fn an_absurd_or_missing_lifetime_is_bounded_and_bad_claims_are_invalid_tokens() {
        let now = Utc::now();
        let token = jwt(
            r#"{"tid":"11111111-1111-4111-8111-111111111111","oid":"22222222-2222-4222-8222-222222222222"}"#,
        );
        for (expires_in, lifetime) in [
            (
                serde_json::json!(18446744073709551615u64),
                MAX_LIFETIME_SECS,
            ),
            (
                serde_json::json!("99999999999999999999"),
                DEFAULT_LIFETIME_SECS,
            ),
            (serde_json::json!(3600), 3600),
        ] {
            let body = serde_json::json!({"access_token": token, "expires_in": expires_in});
            let issued = issued_token(body.to_string().as_bytes(), now).unwrap();
            assert_eq!(
                issued.expires_at,
                now + chrono::Duration::seconds(lifetime as i64)
            );
        }
        for claims in [
            r#"{"tid":"x","oid":"22222222-2222-4222-8222-222222222222"}"#,
            r#"{}"#,
        ] {
            let body = serde_json::json!({"access_token": jwt(claims)});
            assert!(matches!(
                issued_token(body.to_string().as_bytes(), now),
                Err(PalError::Permanent { code, .. }) if code == "invalid_token"
            ));
        }
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
            700011, 90002, 7000222, 700027, 50012, 7000112, 70001, 65001, 90094, 650056, 53003,
        ] {
            match token_error(400, "invalid_client", code) {
                PalError::Permanent { code: c, .. } => assert_eq!(c, format!("AADSTS{code}")),
                other => panic!("{code} should be permanent, got {other:?}"),
            }
        }
        match token_error(400, "unauthorized_client", 700016) {
            PalError::IdentityGone { code, message } => {
                assert_eq!(code, "AADSTS700016");
                assert!(message.contains("AADSTS700016: something"), "{message}");
            }
            other => panic!("700016 means the identity is gone, got {other:?}"),
        }
        for code in [50033, 90006, 90024, 90033, 90090, 50196, 90055] {
            assert!(
                matches!(
                    token_error(400, "invalid_request", code),
                    PalError::Transient(Transient { budget: None, .. })
                ),
                "{code} should be transient"
            );
        }
        assert!(matches!(
            token_error(401, "invalid_client", 7000215),
            PalError::Transient(Transient { budget: Some(b), .. }) if b == SECRET_ROTATION_GRACE
        ));
        assert!(matches!(
            token_error(400, "temporarily_unavailable", 1),
            PalError::Transient(Transient { .. })
        ));
    }
}
