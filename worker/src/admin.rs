//! Operator commands over the ledger: status, retry, approve, reject, audit
//! export, inventory import/list and plan preview.
//!
//! The same functions serve the CLI on a stopped worker's ledger and the admin
//! API of a running worker, so both give identical answers.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use palworker_events::Event;
use serde::{Deserialize, Serialize};

use crate::ledger::{ActionRecord, ActionState, Ledger, LedgerError, StatusFilter};
use crate::telemetry::Metrics;

/// One line of `status --json` (SPEC §8).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StatusRow {
    pub action_id: u64,
    pub event_id: String,
    pub event_source: String,
    pub event_type: String,
    pub tenant_id: String,
    pub object_id: String,
    pub employee_id: String,
    pub op: String,
    pub desired_partner_id: Option<String>,
    pub state: String,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub detail: Option<String>,
    pub before_partner_id: Option<String>,
    pub after_partner_id: Option<String>,
    pub dry_run: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub next_attempt_at: Option<DateTime<Utc>>,
}

impl From<&ActionRecord> for StatusRow {
    fn from(action: &ActionRecord) -> Self {
        let next_attempt_at = match action.state {
            ActionState::Pending | ActionState::Scheduled => Some(action.due_at()),
            _ => None,
        };
        StatusRow {
            action_id: action.action_id,
            event_id: action.event_id.clone(),
            event_source: action.event_source.clone(),
            event_type: action.event_type.as_str().to_owned(),
            tenant_id: action.tenant_id.as_str().to_owned(),
            object_id: action.object_id.as_str().to_owned(),
            employee_id: action.employee_id.as_str().to_owned(),
            op: action.op.as_str().to_owned(),
            desired_partner_id: action.desired.partner_id().map(|p| p.as_str().to_owned()),
            state: action.state.as_str().to_owned(),
            attempts: action.attempts,
            last_error: action.last_error.clone(),
            detail: action.detail.clone(),
            before_partner_id: action
                .before_partner_id
                .as_ref()
                .map(|p| p.as_str().to_owned()),
            after_partner_id: action
                .after_partner_id
                .as_ref()
                .map(|p| p.as_str().to_owned()),
            dry_run: action.dry_run,
            created_at: action.created_at,
            updated_at: action.updated_at,
            next_attempt_at,
        }
    }
}

/// One line of `audit export`: who, what, where, before/after, when.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuditRecord {
    pub action_id: u64,
    pub event_id: String,
    pub event_source: String,
    pub event_type: String,
    pub tenant_id: String,
    pub object_id: String,
    pub employee_id: String,
    pub op: String,
    pub outcome: String,
    pub before_partner_id: Option<String>,
    pub after_partner_id: Option<String>,
    pub desired_partner_id: Option<String>,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub detail: Option<String>,
    pub dry_run: bool,
    pub created_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
}

impl From<&ActionRecord> for AuditRecord {
    fn from(action: &ActionRecord) -> Self {
        AuditRecord {
            action_id: action.action_id,
            event_id: action.event_id.clone(),
            event_source: action.event_source.clone(),
            event_type: action.event_type.as_str().to_owned(),
            tenant_id: action.tenant_id.as_str().to_owned(),
            object_id: action.object_id.as_str().to_owned(),
            employee_id: action.employee_id.as_str().to_owned(),
            op: action.op.as_str().to_owned(),
            outcome: action.state.as_str().to_owned(),
            before_partner_id: action
                .before_partner_id
                .as_ref()
                .map(|p| p.as_str().to_owned()),
            after_partner_id: action
                .after_partner_id
                .as_ref()
                .map(|p| p.as_str().to_owned()),
            desired_partner_id: action.desired.partner_id().map(|p| p.as_str().to_owned()),
            attempts: action.attempts,
            last_error: action.last_error.clone(),
            detail: action.detail.clone(),
            dry_run: action.dry_run,
            created_at: action.created_at,
            completed_at: action.completed_at,
        }
    }
}

/// The answer of `approve` / `reject`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReleaseSummary {
    pub event_id: String,
    pub event_source: String,
    pub released: u64,
    pub cancelled: u64,
}

/// Operator commands bound to a ledger (and, in a running worker, its metrics
/// and executor).
#[derive(Clone)]
pub struct Admin {
    pub ledger: Arc<Ledger>,
    metrics: Option<Metrics>,
    wake: Option<crate::executor::ExecutorWake>,
}

impl Admin {
    pub fn new(ledger: Arc<Ledger>) -> Self {
        Admin {
            ledger,
            metrics: None,
            wake: None,
        }
    }

    pub fn running(
        ledger: Arc<Ledger>,
        metrics: Metrics,
        wake: crate::executor::ExecutorWake,
    ) -> Self {
        Admin {
            ledger,
            metrics: Some(metrics),
            wake: Some(wake),
        }
    }

    fn wake(&self) {
        if let Some(wake) = &self.wake {
            wake.wake();
        }
    }

    pub fn status(&self, filter: &StatusFilter) -> Result<Vec<StatusRow>, LedgerError> {
        Ok(self
            .ledger
            .actions(filter)?
            .iter()
            .map(StatusRow::from)
            .collect())
    }

    pub fn retry(&self, action: Option<u64>, all_failed: bool) -> Result<Vec<u64>, LedgerError> {
        let ids = match (action, all_failed) {
            (Some(id), _) => vec![id],
            (None, true) => self.ledger.failed_action_ids()?,
            (None, false) => {
                return Err(LedgerError::Rejected(
                    "retry needs --action ID or --failed".into(),
                ));
            }
        };
        let now = Utc::now();
        let mut retried = Vec::new();
        for id in ids {
            match self.ledger.retry_action(id, now) {
                Ok(_) => retried.push(id),
                Err(error) if action.is_some() => return Err(error),
                Err(error) => tracing::warn!(action_id = id, error = %error, "Not retried."),
            }
        }
        self.ledger.flush()?;
        if let Some(metrics) = &self.metrics {
            metrics.actions_pending.add(retried.len() as i64);
        }
        tracing::info!(
            actions = retried.len(),
            "Failed actions queued again by an operator."
        );
        self.wake();
        Ok(retried)
    }

    pub fn approve(
        &self,
        event_id: &str,
        source: Option<&str>,
    ) -> Result<ReleaseSummary, LedgerError> {
        let record = self.ledger.resolve_event(event_id, source)?;
        let approval = self.ledger.approve(record.seq, Utc::now())?;
        let (released, cancelled) = (approval.released, &approval.cancelled);
        self.ledger.flush()?;
        if let Some(metrics) = &self.metrics {
            metrics.held_plans.dec();
            metrics.actions_pending.add(released as i64);
            // The event is open from its approval until its last action ends
            // (at once when nothing was released).
            metrics.events_in_flight.inc();
            crate::telemetry::emit_cancelled_held(cancelled, metrics);
            crate::telemetry::emit_superseded(&approval.superseded, metrics);
            if let Some(record) = &approval.completed {
                crate::telemetry::EventCompleted { record }.emit(metrics);
            }
        }
        tracing::info!(
            event_id = %record.event.id,
            released,
            cancelled = cancelled.len(),
            "Held plan approved by an operator."
        );
        self.wake();
        Ok(ReleaseSummary {
            event_id: record.event.id,
            event_source: record.event.source,
            released,
            cancelled: cancelled.len() as u64,
        })
    }

    pub fn reject(
        &self,
        event_id: &str,
        source: Option<&str>,
    ) -> Result<ReleaseSummary, LedgerError> {
        let record = self.ledger.resolve_event(event_id, source)?;
        let cancelled = self.ledger.reject(record.seq, Utc::now())?;
        self.ledger.flush()?;
        if let Some(metrics) = &self.metrics {
            metrics.held_plans.dec();
            // Read back one at a time once durable: a large plan is never
            // held in memory whole.
            for action in self.ledger.iter_event_actions(record.seq) {
                crate::telemetry::emit_cancelled_held(std::slice::from_ref(&action?), metrics);
            }
        }
        tracing::info!(event_id = %record.event.id, cancelled, "Held plan rejected by an operator.");
        Ok(ReleaseSummary {
            event_id: record.event.id,
            event_source: record.event.source,
            released: 0,
            cancelled,
        })
    }

    /// Every terminal action outcome completed at or after `since`.
    pub fn audit(
        &self,
        since: Option<DateTime<Utc>>,
        mut visit: impl FnMut(AuditRecord),
    ) -> Result<(), LedgerError> {
        self.ledger.for_each_action(|action| {
            if !action.state.is_terminal() {
                return;
            }
            if since.is_some_and(|since| action.completed_at.is_none_or(|at| at < since)) {
                return;
            }
            visit(AuditRecord::from(&action));
        })
    }

    pub fn import(&self, text: &str) -> Result<u64, LedgerError> {
        let rows = palworker_events::parse_import(text)
            .map_err(|e| LedgerError::Rejected(e.to_string()))?;
        let count = self.ledger.import_accounts(
            rows.into_iter().map(|row| (row.account, row.partner_id)),
            Utc::now(),
        )?;
        self.ledger.flush()?;
        Ok(count)
    }

    pub fn plan(&self, event: &Event) -> Result<serde_json::Value, LedgerError> {
        let plan = self.ledger.preview(event)?;
        Ok(serde_json::json!({
            "event_id": event.id,
            "event_source": event.source,
            "event_type": event.event_type.as_str(),
            "effective_at": event.effective_at(),
            "duplicate": self.ledger.is_duplicate(&event.source, &event.id)?,
            "actions": plan.changes.iter().map(|c| serde_json::json!({
                "tenant_id": c.account.tenant_id,
                "object_id": c.account.object_id,
                "employee_id": c.account.employee_id,
                "credential": c.account.credential,
                "op": c.op.as_str(),
                "desired_partner_id": c.desired.partner_id(),
                "manual": c.account.credential.is_none(),
            })).collect::<Vec<_>>(),
            "unassigned_tenants": plan.unassigned,
        }))
    }
}
