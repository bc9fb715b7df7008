//! What operators see of the records: the rows of `status --json` and
//! `audit export` (SPEC §8), the filters of `status`, and the answer of
//! `approve` / `reject`. The CLI and the admin API exchange these types, so a
//! local and a remote answer are the same JSON.

use chrono::{DateTime, Utc};
use palworker_events::{EmployeeId, EventType, ObjectId, PartnerId, TenantId};
use serde::{Deserialize, Serialize};

use crate::drift::ReconcileReport;
use crate::ids::ActionId;
use crate::model::{ActionRecord, ActionState, Op};

/// Filters of `status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct StatusFilter {
    pub event_id: Option<String>,
    pub event_source: Option<String>,
    pub employee_id: Option<String>,
    pub tenant_id: Option<String>,
    /// Only failed actions (with `manual`: failed or manual ones).
    pub failed: bool,
    /// Only manual actions (with `failed`: failed or manual ones).
    pub manual: bool,
    /// Only actions updated at or after this instant (`status --since`):
    /// what changed lately, without reading every row out.
    pub since: Option<DateTime<Utc>>,
    /// At most this many actions, the first in creation order (`status
    /// --limit`); applied after every other filter.
    pub limit: Option<u64>,
}

impl StatusFilter {
    /// Whether `action` passes every filter that is set (`limit` is the
    /// reader's to apply: it counts rows, not one action).
    pub fn matches(&self, action: &ActionRecord) -> bool {
        if let Some(id) = &self.event_id
            && &action.event_id != id
        {
            return false;
        }
        if let Some(source) = &self.event_source
            && &action.event_source != source
        {
            return false;
        }
        if let Some(employee) = &self.employee_id
            && action.employee_id.as_str() != employee
        {
            return false;
        }
        if let Some(tenant) = &self.tenant_id
            && !action.tenant_id.as_str().eq_ignore_ascii_case(tenant)
        {
            return false;
        }
        if self.failed || self.manual {
            let wanted = (self.failed && action.state == ActionState::Failed)
                || (self.manual && action.state == ActionState::Manual);
            if !wanted {
                return false;
            }
        }
        if self.since.is_some_and(|since| action.updated_at < since) {
            return false;
        }
        true
    }
}

/// What `status` and `audit export` both say of an action: who, what,
/// where, before and after.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ActionFacts {
    pub action_id: ActionId,
    pub event_id: String,
    pub event_source: String,
    pub event_type: EventType,
    pub tenant_id: TenantId,
    pub object_id: ObjectId,
    pub employee_id: EmployeeId,
    pub op: Op,
    /// `None` for a removal.
    pub desired_partner_id: Option<PartnerId>,
    /// The link PAL showed before the action (`None`: no link).
    pub before_partner_id: Option<PartnerId>,
    /// The link after the action (`None`: no link).
    pub after_partner_id: Option<PartnerId>,
    pub attempts: u32,
    pub last_error: Option<String>,
    /// Why manual, what a dry run would have done, what was written.
    pub detail: Option<String>,
    pub dry_run: bool,
    pub created_at: DateTime<Utc>,
    /// When PAL showed the desired state (SPEC §11.3); `None` until then.
    pub verified_at: Option<DateTime<Utc>>,
}

impl From<&ActionRecord> for ActionFacts {
    fn from(action: &ActionRecord) -> Self {
        ActionFacts {
            action_id: action.action_id,
            event_id: action.event_id.clone(),
            event_source: action.event_source.clone(),
            event_type: action.event_type,
            tenant_id: action.tenant_id.clone(),
            object_id: action.object_id.clone(),
            employee_id: action.employee_id.clone(),
            op: action.op,
            desired_partner_id: action.desired.partner_id().cloned(),
            before_partner_id: action.before_partner_id.clone(),
            after_partner_id: action.after_partner_id.clone(),
            attempts: action.attempts,
            last_error: action.last_error.clone(),
            detail: action.detail.clone(),
            dry_run: action.dry_run,
            created_at: action.created_at,
            verified_at: action.verified_at,
        }
    }
}

/// One line of `status --json` (SPEC §8).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StatusRow {
    #[serde(flatten)]
    pub action: ActionFacts,
    pub state: ActionState,
    pub updated_at: DateTime<Utc>,
    /// When a pending or scheduled action runs next.
    pub next_attempt_at: Option<DateTime<Utc>>,
}

impl From<&ActionRecord> for StatusRow {
    fn from(action: &ActionRecord) -> Self {
        let next_attempt_at = match action.state {
            ActionState::Pending | ActionState::Scheduled => Some(action.due_at()),
            _ => None,
        };
        StatusRow {
            action: ActionFacts::from(action),
            state: action.state,
            updated_at: action.updated_at,
            next_attempt_at,
        }
    }
}

/// One line of `audit export`: an action's terminal outcome.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuditRecord {
    #[serde(flatten)]
    pub action: ActionFacts,
    pub outcome: ActionState,
    pub completed_at: Option<DateTime<Utc>>,
}

impl From<&ActionRecord> for AuditRecord {
    fn from(action: &ActionRecord) -> Self {
        AuditRecord {
            action: ActionFacts::from(action),
            outcome: action.state,
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

/// One record of the audit trail (`audit export`, SPEC §11.2): what
/// happened, who did it and when, chained to the record before it by the
/// SHA-256 of that record's stored bytes (`prev_hash`, lower-case hex), so
/// any edit of a stored record breaks the chain at the record after it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuditEntry {
    /// Position in the trail, from 0, without gaps.
    pub seq: u64,
    pub at: DateTime<Utc>,
    /// `palworker` for what the worker did by itself; the admin token's name
    /// or the local OS user for an operator's command.
    pub who: String,
    #[serde(flatten)]
    pub what: AuditWhat,
    pub prev_hash: String,
}

/// What an audit record records (`kind`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AuditWhat {
    /// An action reached a terminal state.
    ActionOutcome(Box<AuditRecord>),
    /// An operator released a held plan.
    Approval {
        event_id: String,
        event_source: String,
        released: u64,
        cancelled: u64,
    },
    /// An operator discarded a held plan.
    Rejection {
        event_id: String,
        event_source: String,
        cancelled: u64,
    },
    /// An operator queued a failed action again.
    Retry {
        action_id: ActionId,
        event_id: String,
    },
    /// An operator paused writes to PAL.
    Pause,
    /// An operator resumed them.
    Resume,
    /// PAL was compared with the desired links (SPEC §11.3): by an operator,
    /// or by the worker's periodic reconcile (`who` = `palworker`).
    Reconcile(Box<ReconcileReport>),
}

/// `text` cut to at most `max` characters for a table cell or a column,
/// ending in `…` when it was cut.
pub fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}
