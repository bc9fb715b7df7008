//! Metrics and the notable happenings that are both logged and counted.
//!
//! One `prometheus::Registry` is built at start-up ([`Metrics::new`]) and passed
//! down. Every label value comes from a closed enum's `as_str()`, and every
//! combination of the closed label sets is exported at 0 from start-up so that
//! alerts see the series before the first increment.

use std::time::Duration;

use palworker_events::{EventType, RejectReason};
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

use crate::ledger::{ActionState, Op};

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
}

impl RetryReason {
    pub const ALL: [RetryReason; 6] = [
        RetryReason::Throttled,
        RetryReason::ServerError,
        RetryReason::Timeout,
        RetryReason::Connection,
        RetryReason::Token,
        RetryReason::Unauthorized,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RetryReason::Throttled => "throttled",
            RetryReason::ServerError => "server_error",
            RetryReason::Timeout => "timeout",
            RetryReason::Connection => "connection",
            RetryReason::Token => "token",
            RetryReason::Unauthorized => "unauthorized",
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

/// Every metric palworker exports, registered in one registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub events_total: IntCounterVec,
    pub actions_total: IntCounterVec,
    pub action_retries_total: IntCounterVec,
    pub actions_pending: IntGauge,
    pub api_requests_total: IntCounterVec,
    pub api_request_duration_seconds: HistogramVec,
    pub event_completion_seconds: Histogram,
    pub amqp_connected: IntGauge,
    pub dead_letters_total: IntCounterVec,
    pub held_plans: IntGauge,
    pub ledger_size_bytes: Gauge,
    pub events_in_flight: IntGauge,
}

/// HTTP methods palworker sends to PAL (the `method` label).
pub const API_METHODS: [&str; 4] = ["GET", "PUT", "PATCH", "DELETE"];

const TERMINAL_OUTCOMES: [ActionState; 5] = [
    ActionState::Done,
    ActionState::Noop,
    ActionState::Failed,
    ActionState::Cancelled,
    ActionState::Manual,
];

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let events_total = IntCounterVec::new(
            Opts::new(
                "palworker_events_total",
                "Event deliveries by type and outcome.",
            ),
            &["type", "outcome"],
        )
        .expect("valid metric");
        let actions_total = IntCounterVec::new(
            Opts::new(
                "palworker_actions_total",
                "Actions that reached a terminal state, by operation and outcome.",
            ),
            &["op", "outcome"],
        )
        .expect("valid metric");
        let action_retries_total = IntCounterVec::new(
            Opts::new(
                "palworker_action_retries_total",
                "Action attempts that were rescheduled, by reason.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let actions_pending = IntGauge::new(
            "palworker_actions_pending",
            "Actions not yet terminal (pending, scheduled or in flight).",
        )
        .expect("valid metric");
        let api_requests_total = IntCounterVec::new(
            Opts::new(
                "palworker_api_requests_total",
                "HTTP requests to the PAL API by method and status code (or transport_error).",
            ),
            &["method", "status"],
        )
        .expect("valid metric");
        let api_request_duration_seconds = HistogramVec::new(
            HistogramOpts::new(
                "palworker_api_request_duration_seconds",
                "Duration of HTTP requests to the PAL API.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["method"],
        )
        .expect("valid metric");
        let event_completion_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "palworker_event_completion_seconds",
                "Time from an event's acceptance until all its actions are terminal.",
            )
            .buckets(vec![
                0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
                21600.0, 86400.0,
            ]),
        )
        .expect("valid metric");
        let amqp_connected = IntGauge::new(
            "palworker_amqp_connected",
            "1 while the worker is connected to the broker and consuming, else 0.",
        )
        .expect("valid metric");
        let dead_letters_total = IntCounterVec::new(
            Opts::new(
                "palworker_dead_letters_total",
                "Messages moved to the dead-letter queue, by reason.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let held_plans = IntGauge::new(
            "palworker_held_plans",
            "Plans held for approval (larger than limits.max_actions_per_event).",
        )
        .expect("valid metric");
        let ledger_size_bytes = Gauge::new(
            "palworker_ledger_size_bytes",
            "Size of the sled ledger on disk.",
        )
        .expect("valid metric");
        let events_in_flight = IntGauge::new(
            "palworker_events_in_flight",
            "Accepted events whose actions are not all terminal yet.",
        )
        .expect("valid metric");

        for collector in [
            Box::new(events_total.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(actions_total.clone()),
            Box::new(action_retries_total.clone()),
            Box::new(actions_pending.clone()),
            Box::new(api_requests_total.clone()),
            Box::new(api_request_duration_seconds.clone()),
            Box::new(event_completion_seconds.clone()),
            Box::new(amqp_connected.clone()),
            Box::new(dead_letters_total.clone()),
            Box::new(held_plans.clone()),
            Box::new(ledger_size_bytes.clone()),
            Box::new(events_in_flight.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric registered once");
        }
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("process collector registered once");

        // Closed label sets start at zero.
        for event_type in EventType::ALL.iter().map(|t| t.as_str()).chain(["unknown"]) {
            for outcome in EventOutcome::ALL {
                events_total.with_label_values(&[event_type, outcome.as_str()]);
            }
        }
        for op in Op::ALL {
            for outcome in TERMINAL_OUTCOMES {
                actions_total.with_label_values(&[op.as_str(), outcome.as_str()]);
            }
        }
        for reason in RetryReason::ALL {
            action_retries_total.with_label_values(&[reason.as_str()]);
        }
        // The methods are a closed set; the status is open, so only the
        // success and no-response series are created up front (error ratios
        // then have a denominator from the first scrape).
        for method in API_METHODS {
            api_request_duration_seconds.with_label_values(&[method]);
            for status in ["200", "transport_error"] {
                api_requests_total.with_label_values(&[method, status]);
            }
        }
        for reason in RejectReason::ALL {
            dead_letters_total.with_label_values(&[reason.as_str()]);
        }

        Metrics {
            registry,
            events_total,
            actions_total,
            action_retries_total,
            actions_pending,
            api_requests_total,
            api_request_duration_seconds,
            event_completion_seconds,
            amqp_connected,
            dead_letters_total,
            held_plans,
            ledger_size_bytes,
            events_in_flight,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8(buffer).expect("prometheus text is UTF-8")
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

// ---- notable happenings: each logs and counts together -------------------

/// A delivery was accepted and its plan stored.
pub struct EventAccepted<'a> {
    pub event_type: EventType,
    pub event_id: &'a str,
    pub event_source: &'a str,
    pub actions: u64,
    pub unassigned: usize,
}

impl EventAccepted<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        tracing::info!(
            event_id = %self.event_id,
            event_source = %self.event_source,
            event_type = self.event_type.as_str(),
            actions = self.actions,
            unassigned_tenants = self.unassigned,
            "Plan stored."
        );
        metrics
            .events_total
            .with_label_values(&[self.event_type.as_str(), EventOutcome::Accepted.as_str()])
            .inc();
        metrics.actions_pending.add(self.actions as i64);
        if self.actions > 0 {
            metrics.events_in_flight.inc();
        }
    }
}

/// A delivery whose `(source, id)` was already accepted.
pub struct EventDuplicate<'a> {
    pub event_type: EventType,
    pub event_id: &'a str,
    pub event_source: &'a str,
}

impl EventDuplicate<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        tracing::info!(
            event_id = %self.event_id,
            event_source = %self.event_source,
            event_type = self.event_type.as_str(),
            "Duplicate event ignored."
        );
        metrics
            .events_total
            .with_label_values(&[self.event_type.as_str(), EventOutcome::Duplicate.as_str()])
            .inc();
    }
}

/// A plan larger than `limits.max_actions_per_event` was stored and held.
pub struct EventHeld<'a> {
    pub event_type: EventType,
    pub event_id: &'a str,
    pub event_source: &'a str,
    pub actions: u64,
    pub limit: usize,
}

impl EventHeld<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        tracing::warn!(
            event_id = %self.event_id,
            event_source = %self.event_source,
            event_type = self.event_type.as_str(),
            actions = self.actions,
            limit = self.limit,
            "Plan held for approval: it has more actions than limits.max_actions_per_event. \
             Run `palworker approve {}` or `palworker reject {}`.",
            self.event_id,
            self.event_id
        );
        metrics
            .events_total
            .with_label_values(&[self.event_type.as_str(), EventOutcome::Held.as_str()])
            .inc();
        metrics.held_plans.inc();
    }
}

/// A message was moved to the dead-letter queue.
pub struct EventDeadLettered<'a> {
    /// The event type when the message had a valid one.
    pub event_type: Option<EventType>,
    pub event_id: Option<&'a str>,
    pub reason: RejectReason,
    pub detail: &'a str,
}

impl EventDeadLettered<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        tracing::warn!(
            event_id = self.event_id.unwrap_or(""),
            reason = self.reason.as_str(),
            detail = %self.detail,
            "Message dead-lettered."
        );
        let event_type = self.event_type.map(|t| t.as_str()).unwrap_or("unknown");
        metrics
            .events_total
            .with_label_values(&[event_type, EventOutcome::DeadLettered.as_str()])
            .inc();
        metrics
            .dead_letters_total
            .with_label_values(&[self.reason.as_str()])
            .inc();
    }
}

/// An action reached a terminal state.
pub struct ActionFinished<'a> {
    pub action_id: u64,
    pub event_id: &'a str,
    pub tenant_id: &'a str,
    pub employee_id: &'a str,
    pub op: Op,
    pub outcome: ActionState,
    pub detail: Option<&'a str>,
    /// Whether the action was counted in `palworker_actions_pending`.
    pub was_pending: bool,
}

impl<'a> ActionFinished<'a> {
    /// The terminal transition an action record shows: its state, and for
    /// `failed` and `manual` the last error (else its detail).
    pub fn of(action: &'a crate::ledger::ActionRecord, was_pending: bool) -> Self {
        let detail = match action.state {
            ActionState::Failed | ActionState::Manual => {
                action.last_error.as_deref().or(action.detail.as_deref())
            }
            _ => action.detail.as_deref(),
        };
        ActionFinished {
            action_id: action.action_id,
            event_id: &action.event_id,
            tenant_id: action.tenant_id.as_str(),
            employee_id: action.employee_id.as_str(),
            op: action.op,
            outcome: action.state,
            detail,
            was_pending,
        }
    }
}

impl ActionFinished<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        let detail = self.detail.unwrap_or("");
        match self.outcome {
            ActionState::Failed => tracing::error!(
                action_id = self.action_id,
                event_id = %self.event_id,
                tenant_id = %self.tenant_id,
                employee_id = %self.employee_id,
                op = self.op.as_str(),
                error = %detail,
                "Action failed."
            ),
            ActionState::Manual => tracing::warn!(
                action_id = self.action_id,
                event_id = %self.event_id,
                tenant_id = %self.tenant_id,
                employee_id = %self.employee_id,
                op = self.op.as_str(),
                reason = %detail,
                "Action needs a manual change."
            ),
            outcome => tracing::info!(
                action_id = self.action_id,
                event_id = %self.event_id,
                tenant_id = %self.tenant_id,
                employee_id = %self.employee_id,
                op = self.op.as_str(),
                outcome = outcome.as_str(),
                detail = %detail,
                "Action finished."
            ),
        }
        metrics
            .actions_total
            .with_label_values(&[self.op.as_str(), self.outcome.as_str()])
            .inc();
        if self.was_pending {
            metrics.actions_pending.dec();
        }
    }
}

/// Every action of an event is terminal.
pub struct EventCompleted<'a> {
    pub record: &'a crate::ledger::EventRecord,
}

impl EventCompleted<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        let completed_at = self.record.completed_at.unwrap_or_else(chrono::Utc::now);
        let seconds = (completed_at - self.record.accepted_at)
            .to_std()
            .unwrap_or_default()
            .as_secs_f64();
        metrics.event_completion_seconds.observe(seconds);
        metrics.events_in_flight.dec();
        tracing::info!(
            event_id = %self.record.event.id,
            event_source = %self.record.event.source,
            seconds,
            "Event completed: every action is terminal."
        );
    }
}

fn emit_cancelled(action: &crate::ledger::ActionRecord, was_pending: bool, metrics: &Metrics) {
    debug_assert_eq!(action.state, ActionState::Cancelled);
    ActionFinished::of(action, was_pending).emit(metrics);
}

/// Held actions that ended `cancelled` (rejected, or superseded before approval).
pub fn emit_cancelled_held(cancelled: &[crate::ledger::ActionRecord], metrics: &Metrics) {
    for action in cancelled {
        emit_cancelled(action, false, metrics);
    }
}

/// Older unfinished actions a newer event cancelled (and the events that
/// completed because of it).
pub fn emit_superseded(superseded: &[crate::ledger::Superseded], metrics: &Metrics) {
    for cancelled in superseded {
        emit_cancelled(&cancelled.action, cancelled.was_pending, metrics);
        if let Some(record) = &cancelled.event_completed {
            EventCompleted { record }.emit(metrics);
        }
    }
}

/// An action attempt failed transiently and was rescheduled.
pub struct ActionRetryScheduled<'a> {
    pub action_id: u64,
    pub event_id: &'a str,
    pub tenant_id: &'a str,
    pub employee_id: &'a str,
    pub reason: RetryReason,
    pub attempts: u32,
    pub delay: Duration,
    pub error: &'a str,
}

impl ActionRetryScheduled<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        tracing::warn!(
            action_id = self.action_id,
            event_id = %self.event_id,
            tenant_id = %self.tenant_id,
            employee_id = %self.employee_id,
            reason = self.reason.as_str(),
            attempts = self.attempts,
            delay_ms = self.delay.as_millis() as u64,
            error = %self.error,
            "Action attempt failed; retry scheduled."
        );
        metrics
            .action_retries_total
            .with_label_values(&[self.reason.as_str()])
            .inc();
    }
}

/// One HTTP request to PAL completed (or failed without a response).
pub struct ApiRequestCompleted {
    pub method: &'static str,
    /// The status code, or `None` when no response arrived.
    pub status: Option<u16>,
    pub elapsed: Duration,
}

impl ApiRequestCompleted {
    pub fn emit(&self, metrics: &Metrics) {
        let status = self
            .status
            .map(|code| code.to_string())
            .unwrap_or_else(|| "transport_error".to_owned());
        metrics
            .api_requests_total
            .with_label_values(&[self.method, status.as_str()])
            .inc();
        metrics
            .api_request_duration_seconds
            .with_label_values(&[self.method])
            .observe(self.elapsed.as_secs_f64());
    }
}

/// The broker connection came up or went down.
pub struct BrokerConnectionChanged<'a> {
    pub connected: bool,
    pub detail: &'a str,
}

impl BrokerConnectionChanged<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        if self.connected {
            tracing::info!("Connected to the broker; consuming.");
        } else {
            tracing::warn!(error = %self.detail, "Broker connection lost; reconnecting with backoff.");
        }
        metrics.amqp_connected.set(i64::from(self.connected));
    }
}
