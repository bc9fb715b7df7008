//! Closed sets of reasons and outcomes: metric labels come from their
//! `as_str()`, never from free text, so label cardinality is bounded by
//! construction.

/// Why an action is retried (the `reason` label of `palworker_action_retries_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryReason {
    /// 429 from PAL.
    Throttled,
    /// 408 or 5xx from PAL.
    ServerError,
    /// No response within `pal.request_timeout`.
    Timeout,
    /// Connection refused, reset, DNS, TLS.
    Connection,
    /// A transient error of the token endpoint.
    Token,
    /// 401 from PAL: the token was refreshed.
    Unauthorized,
    /// A write answered 200 but reading it back never showed it (SPEC §11.3).
    Unverified,
}

impl RetryReason {
    pub const ALL: [RetryReason; 7] = [
        RetryReason::Throttled,
        RetryReason::ServerError,
        RetryReason::Timeout,
        RetryReason::Connection,
        RetryReason::Token,
        RetryReason::Unauthorized,
        RetryReason::Unverified,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RetryReason::Throttled => "throttled",
            RetryReason::ServerError => "server_error",
            RetryReason::Timeout => "timeout",
            RetryReason::Connection => "connection",
            RetryReason::Token => "token",
            RetryReason::Unauthorized => "unauthorized",
            RetryReason::Unverified => "unverified",
        }
    }
}

/// Outcome label of `palworker_events_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventOutcome {
    Accepted,
    Duplicate,
    DeadLettered,
    Held,
}

impl EventOutcome {
    pub const ALL: [EventOutcome; 4] = [
        EventOutcome::Accepted,
        EventOutcome::Duplicate,
        EventOutcome::DeadLettered,
        EventOutcome::Held,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventOutcome::Accepted => "accepted",
            EventOutcome::Duplicate => "duplicate",
            EventOutcome::DeadLettered => "dead_lettered",
            EventOutcome::Held => "held",
        }
    }
}
