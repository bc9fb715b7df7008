//! Happenings of actions: their ends, their retries, operators' decisions
//! about them, and the PAL requests they send.

use std::time::Duration;

use chrono::{DateTime, Utc};
use palworker_core::{ActionRecord, ActionState, Approval, EventRecord, RetryReason, Superseded};
use palworker_events::{Escaped, TenantId};

use super::{EventCompleted, Metrics};

/// An action reached a terminal state.
pub struct ActionFinished<'a> {
    pub action: &'a ActionRecord,
    /// The state it left: a held action was never counted as pending.
    pub left: ActionState,
}

impl<'a> ActionFinished<'a> {
    /// The terminal transition `action` shows, from the state it `left`.
    pub fn of(action: &'a ActionRecord, left: ActionState) -> Self {
        ActionFinished { action, left }
    }
}

impl ActionFinished<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        let action = self.action;
        // For `failed` and `manual` the last error says why; else the detail.
        let detail = match action.state {
            ActionState::Failed | ActionState::Manual => {
                action.last_error.as_deref().or(action.detail.as_deref())
            }
            _ => action.detail.as_deref(),
        }
        .unwrap_or("");
        match action.state {
            ActionState::Failed => tracing::error!(
                action_id = action.action_id.get(),
                event_id = %Escaped::new(&action.event_id),
                tenant_id = %action.tenant_id,
                employee_id = %action.employee_id,
                op = action.op.as_str(),
                error = %detail,
                "Action failed."
            ),
            ActionState::Orphaned => tracing::warn!(
                action_id = action.action_id.get(),
                event_id = %Escaped::new(&action.event_id),
                tenant_id = %action.tenant_id,
                employee_id = %action.employee_id,
                op = action.op.as_str(),
                error = %action.last_error.as_deref().unwrap_or(""),
                "Removal orphaned: the identity no longer exists in its tenant, so its link ended with it."
            ),
            ActionState::Manual => tracing::warn!(
                action_id = action.action_id.get(),
                event_id = %Escaped::new(&action.event_id),
                tenant_id = %action.tenant_id,
                employee_id = %action.employee_id,
                op = action.op.as_str(),
                reason = %detail,
                "Action needs a manual change."
            ),
            outcome => tracing::info!(
                action_id = action.action_id.get(),
                event_id = %Escaped::new(&action.event_id),
                tenant_id = %action.tenant_id,
                employee_id = %action.employee_id,
                op = action.op.as_str(),
                outcome = outcome.as_str(),
                detail = %detail,
                "Action finished."
            ),
        }
        metrics
            .actions_total
            .with_label_values(&[action.op.as_str(), action.state.as_str()])
            .inc();
        match Counted::as_left(action, self.left) {
            Counted::Pending => metrics.actions_pending.dec(),
            Counted::Scheduled => metrics.actions_scheduled.dec(),
            Counted::Neither => {}
        }
    }
}

/// Which gauge an action was counted in before it ended.
enum Counted {
    Pending,
    Scheduled,
    Neither,
}

impl Counted {
    fn as_left(action: &ActionRecord, left: ActionState) -> Self {
        match left {
            ActionState::Held => Counted::Neither,
            // Never claimed yet, waiting for its event's effective_at (a
            // scheduled retry has been claimed before: it is pending).
            ActionState::Scheduled if action.attempts == 0 && action.not_before.is_some() => {
                Counted::Scheduled
            }
            _ => Counted::Pending,
        }
    }
}

/// A removal ended `done`: its link is gone, verified (SPEC §11.3).
pub struct LinkRevoked<'a> {
    pub action: &'a ActionRecord,
    /// When the link was to go: the event's `effective_at`, else its acceptance.
    pub due: DateTime<Utc>,
}

impl LinkRevoked<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        let removed_at = self.action.removed_at();
        let seconds = ((removed_at - self.due).num_milliseconds().max(0) as f64) / 1000.0;
        tracing::debug!(
            action_id = self.action.action_id.get(),
            event_id = %Escaped::new(&self.action.event_id),
            tenant_id = %self.action.tenant_id,
            employee_id = %self.action.employee_id,
            seconds,
            "Link revoked."
        );
        metrics.revocation_seconds.observe(seconds);
    }
}

/// Actions that waited for their event's `effective_at` were claimed: they
/// count as pending from now on.
pub struct ScheduledActionsDue {
    pub count: usize,
}

impl ScheduledActionsDue {
    pub fn emit(&self, metrics: &Metrics) {
        if self.count > 0 {
            tracing::debug!(actions = self.count, "Scheduled actions are due.");
            metrics.actions_scheduled.sub(self.count as i64);
            metrics.actions_pending.add(self.count as i64);
        }
    }
}

/// Older unfinished actions a newer event cancelled (and the events that
/// completed because of it).
pub fn emit_superseded(superseded: &[Superseded], metrics: &Metrics) {
    for cancelled in superseded {
        ActionFinished::of(&cancelled.action, cancelled.previous_state).emit(metrics);
        if let Some(record) = &cancelled.event_completed {
            EventCompleted { record }.emit(metrics);
        }
    }
}

/// An action attempt failed transiently and was rescheduled.
pub struct ActionRetryScheduled<'a> {
    pub action: &'a ActionRecord,
    pub reason: RetryReason,
    pub delay: Duration,
    pub error: &'a str,
}

impl ActionRetryScheduled<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        let action = self.action;
        tracing::warn!(
            action_id = action.action_id.get(),
            event_id = %Escaped::new(&action.event_id),
            tenant_id = %action.tenant_id,
            employee_id = %action.employee_id,
            reason = self.reason.as_str(),
            attempts = action.attempts,
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

/// PAL answered 401: the token was dropped and fetched again (once per attempt).
pub struct TokenRefreshed<'a> {
    pub tenant_id: &'a TenantId,
}

impl TokenRefreshed<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        tracing::info!(
            tenant_id = %self.tenant_id,
            "PAL answered 401; refreshing the token."
        );
        metrics
            .action_retries_total
            .with_label_values(&[RetryReason::Unauthorized.as_str()])
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

/// An operator queued failed actions again.
pub struct ActionsRequeued {
    pub count: usize,
    /// Events that had completed and are open again.
    pub events_reopened: usize,
}

impl ActionsRequeued {
    pub fn emit(&self, metrics: &Metrics) {
        tracing::info!(
            actions = self.count,
            "Failed actions queued again by an operator."
        );
        metrics.actions_pending.add(self.count as i64);
        metrics.events_in_flight.add(self.events_reopened as i64);
    }
}

/// An operator approved a held plan.
pub struct PlanApproved<'a> {
    pub record: &'a EventRecord,
    pub approval: &'a Approval,
}

impl PlanApproved<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        let approval = self.approval;
        tracing::info!(
            event_id = %self.record.event.escaped_id(),
            released = approval.released,
            cancelled = approval.cancelled.len(),
            "Held plan approved by an operator."
        );
        metrics.held_plans.dec();
        metrics
            .actions_pending
            .add(approval.released.saturating_sub(approval.scheduled) as i64);
        metrics.actions_scheduled.add(approval.scheduled as i64);
        // The event is open from its approval until its last action ends
        // (at once when nothing was released).
        metrics.events_in_flight.inc();
        for action in &approval.cancelled {
            ActionFinished::of(action, ActionState::Held).emit(metrics);
        }
        emit_superseded(&approval.superseded, metrics);
        if let Some(record) = &approval.completed {
            EventCompleted { record }.emit(metrics);
        }
    }
}

/// An operator rejected a held plan (its actions are reported one by one,
/// as [`ActionFinished`] from `held`).
pub struct PlanRejected<'a> {
    pub record: &'a EventRecord,
    pub cancelled: u64,
}

impl PlanRejected<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        tracing::info!(
            event_id = %self.record.event.escaped_id(),
            cancelled = self.cancelled,
            "Held plan rejected by an operator."
        );
        metrics.held_plans.dec();
    }
}

/// How reading a write back ended (`palworker_verifications_total{result}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
    Confirmed,
    Mismatch,
}

impl Verification {
    pub const ALL: [Verification; 2] = [Verification::Confirmed, Verification::Mismatch];

    pub fn as_str(self) -> &'static str {
        match self {
            Verification::Confirmed => "confirmed",
            Verification::Mismatch => "mismatch",
        }
    }
}

/// A write was read back (SPEC §11.3).
pub struct VerificationFinished<'a> {
    pub result: Verification,
    pub tenant_id: &'a TenantId,
}

impl VerificationFinished<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        if self.result == Verification::Mismatch {
            tracing::warn!(
                tenant_id = %self.tenant_id,
                "A write was not confirmed by reading it back; the action will be tried again."
            );
        }
        metrics
            .verifications_total
            .with_label_values(&[self.result.as_str()])
            .inc();
    }
}
