//! What the PAL and token clients accept of an answer (SPEC §11.1): no
//! redirect is followed and no body over [`MAX_RESPONSE_BYTES`] is read.
//!
//! Neither Azure Resource Manager nor the identity platform redirect these
//! calls (PAL-API.md), so a 3xx means a misconfigured endpoint or something
//! in between; following it could send the bearer token, or re-send the
//! token request's form with the client secret (a 307 keeps the body), to
//! wherever it points, over plain HTTP too. Their answers are a few hundred
//! bytes, so a larger body is PAL misbehaving, and is never buffered whole.
//!
//! Both are permanent failures (`redirect_refused`, `response_too_large`):
//! the same request to the same endpoint gets the same answer, so retrying
//! for hours would only delay the operator's look; once the endpoint is
//! fixed, `palworker retry --failed` runs the actions again. Where the
//! status alone already says "retry" (429, 5xx, 408, 401) an oversized body
//! does not change that: the body is only the error's detail there.

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, LOCATION};

use super::error::PalError;

/// The most bytes of a response body the PAL client reads (SPEC §11.1).
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// Why a response body was not read.
#[derive(Debug)]
pub(super) enum BodyError {
    /// More than [`MAX_RESPONSE_BYTES`]: announced, or arrived. The rest is
    /// not read; dropping the response closes its connection.
    TooLarge(TooLarge),
    /// The connection failed while the body arrived.
    Transport(reqwest::Error),
}

/// A body over [`MAX_RESPONSE_BYTES`]: its announced length, when it had one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct TooLarge {
    pub(super) announced: Option<u64>,
}

impl std::fmt::Display for TooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the response body is over {MAX_RESPONSE_BYTES} bytes")?;
        match self.announced {
            Some(length) => write!(f, " (Content-Length {length}); it was not read"),
            None => write!(f, "; the rest was not read"),
        }
    }
}

impl TooLarge {
    /// The permanent failure of an answer whose body palworker needs.
    pub(super) fn into_error(self, what: &str) -> PalError {
        PalError::permanent("response_too_large", format!("{what}: {self}"))
    }
}

/// Reads a response body, a chunk at a time, failing as soon as more than
/// [`MAX_RESPONSE_BYTES`] are announced or have arrived (never holding more
/// than that and the chunk that crossed it).
pub(super) async fn read_body(mut response: reqwest::Response) -> Result<Vec<u8>, BodyError> {
    let announced = response.content_length();
    if let Some(length) = announced
        && length > MAX_RESPONSE_BYTES as u64
    {
        return Err(BodyError::TooLarge(TooLarge {
            announced: Some(length),
        }));
    }
    // At most the bound: a lying Content-Length must not size the buffer.
    let capacity = announced.map_or(0, |length| length as usize);
    let mut body = Vec::with_capacity(capacity.min(MAX_RESPONSE_BYTES));
    while let Some(chunk) = response.chunk().await.map_err(BodyError::Transport)? {
        if chunk.len() > MAX_RESPONSE_BYTES - body.len() {
            return Err(BodyError::TooLarge(TooLarge { announced: None }));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The permanent failure of a 3xx answer: `what` (e.g. `GET /providers/…`)
/// was redirected, and the redirect was not followed.
pub(super) fn redirect_refused(what: &str, status: StatusCode, headers: &HeaderMap) -> PalError {
    // `to_str` admits visible ASCII only: no control character reaches a log line.
    let location = headers
        .get(LOCATION)
        .and_then(|value| value.to_str().ok())
        .map_or_else(
            || "-".to_owned(),
            |location| location.chars().take(200).collect(),
        );
    PalError::permanent(
        "redirect_refused",
        format!(
            "{what} answered {} with a redirect to {location}; palworker follows no redirect (check pal.arm_endpoint and pal.authority)",
            status.as_u16()
        ),
    )
}
