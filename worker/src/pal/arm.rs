//! Azure Resource Manager's `Microsoft.ManagementPartner` calls (PAL-API.md):
//! read, create, move and remove the caller's link, rate-limited per tenant,
//! never sent to an identity before a `Retry-After` it received has passed.

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use governor::Quota;
use palworker_core::RetryReason;
use palworker_events::{ObjectId, PartnerId, TenantId};
use reqwest::{Method, StatusCode};
use serde::Deserialize;

use super::PalClient;
use super::body::{BodyError, read_body, redirect_refused};
use super::error::{PalError, one_line, retry_after, transport_message, transport_reason};
use super::slots::Priority;
use super::token::AccessToken;
use crate::telemetry::ApiRequestCompleted;

/// The link PAL reports for the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub partner_id: PartnerId,
    /// `properties.tenantId`, when PAL sent it.
    pub tenant_id: Option<TenantId>,
    /// `properties.objectId`, when PAL sent it.
    pub object_id: Option<ObjectId>,
    /// `properties.state`: `Active` or `Deleted`.
    pub state: Option<String>,
}

impl Link {
    /// Whether the link is in force (a `Deleted` link is no link).
    pub fn is_active(&self) -> bool {
        self.state.as_deref() != Some("Deleted")
    }
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

/// What a DELETE found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Deleted {
    /// The link was removed.
    Removed,
    /// PAL answered 404: the link was already gone.
    AlreadyGone,
}

/// An ARM answer palworker reads on: 200 with a body, or 404.
enum Answer {
    Ok(Vec<u8>),
    NotFound,
}

impl PalClient {
    /// `GET /providers/Microsoft.ManagementPartner/partners`: the caller's link, if any.
    pub(super) async fn get_link(&self, token: &AccessToken) -> Result<Option<Link>, PalError> {
        self.get_link_as(token, Priority::Action).await
    }

    /// [`PalClient::get_link`], waiting for its slot as `priority`.
    pub(super) async fn get_link_as(
        &self,
        token: &AccessToken,
        priority: Priority,
    ) -> Result<Option<Link>, PalError> {
        match self.arm(Method::GET, None, token, priority).await? {
            Answer::Ok(body) => parse_link(&body).map(Some),
            Answer::NotFound => Ok(None),
        }
    }

    /// `PUT .../partners/{partner}`: create the link.
    pub(super) async fn put_link(
        &self,
        token: &AccessToken,
        partner: &PartnerId,
    ) -> Result<Option<Link>, PalError> {
        self.write(Method::PUT, partner, token).await
    }

    /// `PATCH .../partners/{partner}`: move the caller's link to `partner`.
    pub(super) async fn patch_link(
        &self,
        token: &AccessToken,
        partner: &PartnerId,
    ) -> Result<Option<Link>, PalError> {
        self.write(Method::PATCH, partner, token).await
    }

    /// `DELETE .../partners/{partner}`: remove the link.
    pub(super) async fn delete_link(
        &self,
        token: &AccessToken,
        partner: &PartnerId,
    ) -> Result<Deleted, PalError> {
        Ok(
            match self
                .arm(Method::DELETE, Some(partner), token, Priority::Action)
                .await?
            {
                Answer::Ok(_) => Deleted::Removed,
                Answer::NotFound => Deleted::AlreadyGone,
            },
        )
    }

    async fn write(
        &self,
        method: Method,
        partner: &PartnerId,
        token: &AccessToken,
    ) -> Result<Option<Link>, PalError> {
        match self
            .arm(method.clone(), Some(partner), token, Priority::Action)
            .await?
        {
            Answer::NotFound => Err(PalError::permanent(
                "ManagementPartnerNotFound",
                format!("{method} answered 404: the caller has no link"),
            )),
            Answer::Ok(body) if body.iter().all(u8::is_ascii_whitespace) => Ok(None),
            Answer::Ok(body) => parse_link(&body).map(Some),
        }
    }

    /// One ARM call, rate-limited per tenant (a slot taken as `priority`).
    /// Returns 200 or 404 with the body; every other outcome is classified
    /// into a [`PalError`].
    async fn arm(
        &self,
        method: Method,
        partner: Option<&PartnerId>,
        token: &AccessToken,
        priority: Priority,
    ) -> Result<Answer, PalError> {
        let path = match partner {
            Some(partner) => format!("/providers/Microsoft.ManagementPartner/partners/{partner}"),
            None => "/providers/Microsoft.ManagementPartner/partners".to_owned(),
        };
        let url = format!("{}{}", self.inner.arm_endpoint, path);
        self.take_slot(&token.tenant_id, priority).await;
        if let Some(wait) = self.throttled_for(token) {
            return Err(PalError::transient(
                RetryReason::Throttled,
                format!(
                    "{method} {path}: not sent: PAL throttled this identity, its Retry-After runs for another {} ms",
                    wait.as_millis()
                ),
            )
            .waiting(Some(wait)));
        }
        let method_label = method_label(&method);
        let started = Instant::now();
        let mut request = self
            .inner
            .http
            .request(method.clone(), &url)
            .query(&[("api-version", self.inner.api_version.as_str())])
            .bearer_auth(token.bearer());
        if method == Method::PUT || method == Method::DELETE {
            request = request.header(reqwest::header::CONTENT_LENGTH, "0");
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(error) => {
                self.inner.latency.observe(started.elapsed());
                ApiRequestCompleted {
                    method: method_label,
                    status: None,
                    elapsed: started.elapsed(),
                }
                .emit(&self.inner.metrics);
                return Err(PalError::transient(
                    transport_reason(&error),
                    format!("{method} {path}: {}", transport_message(&error)),
                ));
            }
        };
        let status = response.status();
        let headers = response.headers().clone();
        let retry_after = retry_after(&headers, self.inner.clock.now());
        if (status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error())
            && let Some(wait) = retry_after
        {
            self.throttle(token, wait);
        }
        // A redirect is refused unread (body.rs); any other body is read
        // within the bound.
        let body = if status.is_redirection() {
            Ok(Vec::new())
        } else {
            read_body(response).await
        };
        self.inner.latency.observe(started.elapsed());
        ApiRequestCompleted {
            method: method_label,
            status: Some(status.as_u16()),
            elapsed: started.elapsed(),
        }
        .emit(&self.inner.metrics);
        if status.is_redirection() {
            return Err(redirect_refused(
                &format!("{method} {path}"),
                status,
                &headers,
            ));
        }
        let body = match body {
            Ok(body) => Ok(body),
            Err(BodyError::TooLarge(too_large)) => Err(too_large),
            Err(BodyError::Transport(error)) => {
                return Err(PalError::transient(
                    transport_reason(&error),
                    format!(
                        "{method} {path}: reading the response failed: {}",
                        transport_message(&error)
                    ),
                ));
            }
        };
        match status {
            StatusCode::OK => {
                return body.map(Answer::Ok).map_err(|too_large| {
                    too_large.into_error(&format!("{method} {path} answered 200"))
                });
            }
            // The status says it all; the body is not looked at.
            StatusCode::NOT_FOUND => return Ok(Answer::NotFound),
            _ => {}
        }
        // Elsewhere the body is only the error's detail: an oversized one
        // leaves the classification to the status.
        let (code, message) = match &body {
            Ok(body) => arm_error(body),
            Err(too_large) => (String::new(), too_large.to_string()),
        };
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
            401 => PalError::transient(RetryReason::Unauthorized, text),
            429 => PalError::transient(RetryReason::Throttled, text).waiting(retry_after),
            408 | 500 | 502 | 503 | 504 => {
                PalError::transient(RetryReason::ServerError, text).waiting(retry_after)
            }
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

/// `limits.per_tenant_rps`, or 1 when it is not a positive number.
fn usable_rps(per_tenant_rps: f64) -> f64 {
    if per_tenant_rps.is_finite() && per_tenant_rps > 0.0 {
        per_tenant_rps
    } else {
        1.0
    }
}

/// The time between two requests to one tenant at `limits.per_tenant_rps`.
pub(super) fn slot_period(per_tenant_rps: f64) -> Duration {
    Duration::from_secs_f64(1.0 / usable_rps(per_tenant_rps))
}

/// The share of a tenant's rate a reconcile's reads may take: a little
/// under all of it, so the tenant's bucket refills while a reconcile reads
/// it and an action that arrives finds its requests' slots waiting.
pub(super) const RECONCILE_SHARE: f64 = 0.95;

/// The reconcile reads' own pace per tenant: [`RECONCILE_SHARE`] of
/// `limits.per_tenant_rps`, one at a time (no burst).
pub(super) fn reconcile_quota(per_tenant_rps: f64) -> Quota {
    let period = slot_period(usable_rps(per_tenant_rps) * RECONCILE_SHARE);
    Quota::with_period(period).unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
}

/// `limits.per_tenant_rps` as a quota: that many requests a second, in a
/// burst of at most as many.
pub(super) fn tenant_quota(per_tenant_rps: f64) -> Quota {
    let rps = usable_rps(per_tenant_rps);
    let period = slot_period(rps);
    let burst = NonZeroU32::new(rps.ceil().max(1.0) as u32).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(burst)
}

/// The code and message of an ARM error body (either shape), each one
/// bounded line (see [`one_line`]); without them, the body's start.
pub(super) fn arm_error(body: &[u8]) -> (String, String) {
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
    (one_line(&code, 100), one_line(&message, 300))
}

/// A `PartnerResponse`, its identifiers parsed: an answer PAL could not
/// have meant is an `invalid_response`, never a silently dropped field.
pub(super) fn parse_link(body: &[u8]) -> Result<Link, PalError> {
    let invalid = |detail: String| {
        PalError::permanent(
            "invalid_response",
            format!("PAL answered 200 with an unreadable PartnerResponse: {detail}"),
        )
    };
    let parsed: PartnerResponse =
        serde_json::from_slice(body).map_err(|e| invalid(e.to_string()))?;
    let properties = parsed.properties;
    let partner_id = properties
        .as_ref()
        .and_then(|p| p.partner_id.clone())
        .or(parsed.name)
        .ok_or_else(|| {
            PalError::permanent("invalid_response", "PartnerResponse without partnerId")
        })?;
    let partner_id =
        PartnerId::parse(&partner_id).map_err(|e| invalid(format!("partnerId {e}")))?;
    let tenant_id = properties
        .as_ref()
        .and_then(|p| p.tenant_id.as_deref())
        .map(TenantId::parse)
        .transpose()
        .map_err(|e| invalid(format!("tenantId {e}")))?;
    let object_id = properties
        .as_ref()
        .and_then(|p| p.object_id.as_deref())
        .map(ObjectId::parse)
        .transpose()
        .map_err(|e| invalid(format!("objectId {e}")))?;
    Ok(Link {
        partner_id,
        tenant_id,
        object_id,
        state: properties.and_then(|p| p.state),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
            br#"{"name":"123","properties":{"partnerId":"123","tenantId":"0000000A-0000-4000-8000-000000000000","objectId":"0000000b-0000-4000-8000-000000000000","version":"3","state":"Active"}}"#,
        )
        .unwrap();
        assert_eq!(link.partner_id.as_str(), "123");
        assert_eq!(
            link.tenant_id.as_ref().map(TenantId::as_str),
            Some("0000000a-0000-4000-8000-000000000000")
        );
        let link = parse_link(br#"{"name":"77","etag":5,"properties":{"version":5}}"#).unwrap();
        assert_eq!(link.partner_id.as_str(), "77");
    }

    #[test]
    fn a_partner_response_with_a_malformed_identifier_is_an_invalid_response() {
        for body in [
            br#"{"name":"12x"}"#.as_slice(),
            br#"{"name":"1","properties":{"tenantId":"T"}}"#.as_slice(),
        ] {
            assert!(matches!(
                parse_link(body),
                Err(PalError::Permanent { code, .. }) if code == "invalid_response"
            ));
        }
    }
}
