//! How a PAL or token call fails: [`PalError::Transient`] (retry later),
//! [`PalError::Permanent`] (the action fails) or [`PalError::IdentityGone`]
//! (the identity no longer exists in its tenant: a removal is finished, a
//! link or update fails). That decides an action's fate, so it is a type,
//! never a string match.

use std::time::Duration;

use chrono::{DateTime, Utc};
use palworker_core::RetryReason;

/// A failure of a PAL or token call.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PalError {
    /// Worth retrying later (429, 5xx, timeouts, connection errors, transient token errors).
    #[error("{0}")]
    Transient(Transient),
    /// Retrying cannot help: the action fails with this code and message.
    #[error("{code}: {message}")]
    Permanent { code: String, message: String },
    /// The identity behind the credential no longer exists in the tenant
    /// (token error AADSTS700016: the application is not in that
    /// directory). Retrying cannot help either; a removal of its link is
    /// `orphaned` (the link ended with the identity, SPEC §11.3), anything
    /// else fails. `code` and `message` are the token error, the evidence.
    #[error("{code}: {message}")]
    IdentityGone { code: String, message: String },
}

/// A failure worth retrying, with what the retry schedule needs to know.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct Transient {
    pub reason: RetryReason,
    /// The server's `Retry-After`, counted from when the response arrived.
    pub retry_after: Option<Duration>,
    /// A retry budget shorter than `retry.max_elapsed`, when the error has one.
    pub budget: Option<Duration>,
    pub message: String,
}

impl PalError {
    pub(super) fn permanent(code: impl Into<String>, message: impl Into<String>) -> Self {
        PalError::Permanent {
            code: code.into(),
            message: message.into(),
        }
    }

    pub(super) fn transient(reason: RetryReason, message: impl Into<String>) -> Self {
        PalError::Transient(Transient {
            reason,
            retry_after: None,
            budget: None,
            message: message.into(),
        })
    }

    /// The same transient error, with the server's `Retry-After`.
    pub(super) fn waiting(mut self, retry_after: Option<Duration>) -> Self {
        if let PalError::Transient(transient) = &mut self {
            transient.retry_after = retry_after;
        }
        self
    }

    /// Whether PAL answered 401 (the token is refreshed once, then retried).
    pub(super) fn is_unauthorized(&self) -> bool {
        matches!(
            self,
            PalError::Transient(Transient {
                reason: RetryReason::Unauthorized,
                ..
            })
        )
    }
}

/// The delay a server asks for: `retry-after-ms`, `x-ms-retry-after-ms`, or
/// `Retry-After` in seconds (or an HTTP date, counted from `now`).
pub fn retry_after(headers: &reqwest::header::HeaderMap, now: DateTime<Utc>) -> Option<Duration> {
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
    (at - now).to_std().ok()
}

/// Text from an answer (an error code, a message), made fit for a log line
/// and the action's `last_error`: its first line, control characters
/// replaced, at most `max_chars` characters. An answer's text is PAL's or
/// whatever stands in between, so it may be as long as the body and may
/// try to forge log lines.
pub(super) fn one_line(text: &str, max_chars: usize) -> String {
    let first = text.lines().next().unwrap_or("");
    let mut out: String = first
        .chars()
        .take(max_chars)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if first.chars().nth(max_chars).is_some() {
        out.push('…');
    }
    out
}

/// A transport error with its causes, on one line.
pub(super) fn transport_message(error: &reqwest::Error) -> String {
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

/// The retry reason of a request that got no (whole) answer.
pub(super) fn transport_reason(error: &reqwest::Error) -> RetryReason {
    if error.is_timeout() {
        RetryReason::Timeout
    } else {
        RetryReason::Connection
    }
}

#[cfg(test)]
mod tests {
    use reqwest::header::{HeaderMap, HeaderValue};

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        map
    }

    #[test]
    fn retry_after_prefers_millisecond_headers() {
        let now = Utc::now();
        let retry_after = |pairs: &[(&'static str, &str)]| retry_after(&headers(pairs), now);
        assert_eq!(
            retry_after(&[("retry-after", "3")]),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            retry_after(&[("retry-after", "3"), ("x-ms-retry-after-ms", "1500")]),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            retry_after(&[("retry-after-ms", "250")]),
            Some(Duration::from_millis(250))
        );
        assert_eq!(retry_after(&[("retry-after", "soon")]), None);
        // Absurd values saturate instead of panicking.
        assert_eq!(
            retry_after(&[("retry-after", "1e300")]),
            Some(Duration::MAX)
        );
        assert_eq!(
            retry_after(&[("retry-after-ms", "1e300")]),
            Some(Duration::MAX)
        );
        assert_eq!(retry_after(&[]), None);
    }
}
