//! The records palworker keeps: the inventory's entries, accepted events and
//! their actions, with the states they move through.
//!
//! These are the ledger's stored values (JSON in sled), the admin API's
//! answers and the telemetry's inputs alike; they carry no storage detail.

use chrono::{DateTime, Utc};
use palworker_events::{
    Account, AccountKey, ContractId, CredentialName, DesiredLink, EmployeeId, Event, EventType,
    ObjectId, PartnerId, TenantId,
};
use serde::{Deserialize, Serialize};

use crate::ids::{ActionId, EventSeq};
use crate::instant;

/// The state of an account in the inventory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryEntry {
    pub account: Account,
    pub desired: DesiredLink,
    /// False once an assignment ended (the account keeps its place in the inventory).
    pub assignment_active: bool,
    /// The latest accepted event that targeted this account.
    pub last_event_seq: Option<EventSeq>,
    /// The action of that event: older unfinished actions are superseded by it.
    pub current_action: Option<ActionId>,
    #[serde(serialize_with = "instant::serialize")]
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventState {
    Accepted,
    Held,
    Approved,
    Rejected,
}

impl EventState {
    pub fn as_str(self) -> &'static str {
        match self {
            EventState::Accepted => "accepted",
            EventState::Held => "held",
            EventState::Approved => "approved",
            EventState::Rejected => "rejected",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    pub seq: EventSeq,
    pub event: Event,
    pub state: EventState,
    #[serde(serialize_with = "instant::serialize")]
    pub accepted_at: DateTime<Utc>,
    pub action_count: u64,
    /// Tenants where a departed employee's link had no successor account.
    pub unassigned: Vec<TenantId>,
    pub completed_at: Option<DateTime<Utc>>,
    /// The AMQP `user_id` of the publisher, when the broker provided one.
    pub publisher: Option<String>,
    /// The plan's action ids, in creation order, when the plan was written in
    /// one transaction; `None`: they are in `event_actions`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action_ids: Option<Vec<ActionId>>,
    /// The number of non-terminal actions of an event accepted in one
    /// transaction; `None`: it is in `open_events` (held, approved and large
    /// plans, older ledgers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_actions: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionState {
    Pending,
    Scheduled,
    Held,
    InFlight,
    Done,
    Noop,
    Failed,
    Cancelled,
    Manual,
    /// Dry run: what it would have changed is in its detail; nothing was written.
    Skipped,
    /// A removal whose identity no longer exists in its tenant: the link
    /// ended with the identity.
    Orphaned,
}

impl ActionState {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionState::Pending => "pending",
            ActionState::Scheduled => "scheduled",
            ActionState::Held => "held",
            ActionState::InFlight => "in_flight",
            ActionState::Done => "done",
            ActionState::Noop => "noop",
            ActionState::Failed => "failed",
            ActionState::Cancelled => "cancelled",
            ActionState::Manual => "manual",
            ActionState::Skipped => "skipped",
            ActionState::Orphaned => "orphaned",
        }
    }

    /// Every state an action can end in (see [`ActionState::is_terminal`]).
    pub const TERMINAL: [ActionState; 7] = [
        ActionState::Done,
        ActionState::Noop,
        ActionState::Failed,
        ActionState::Cancelled,
        ActionState::Manual,
        ActionState::Skipped,
        ActionState::Orphaned,
    ];

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            ActionState::Done
                | ActionState::Noop
                | ActionState::Failed
                | ActionState::Cancelled
                | ActionState::Manual
                | ActionState::Skipped
                | ActionState::Orphaned
        )
    }
}

/// The kind of change an action makes (the `op` metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Desired `Absent`.
    Remove,
    /// Desired `Linked(p)` where the account was not desired linked to another ID.
    Link,
    /// Desired `Linked(p)` replacing a desired link to another ID.
    Update,
}

impl Op {
    pub const ALL: [Op; 3] = [Op::Remove, Op::Link, Op::Update];

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Remove => "remove",
            Op::Link => "link",
            Op::Update => "update",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionRecord {
    pub action_id: ActionId,
    pub event_seq: EventSeq,
    pub event_id: String,
    pub event_source: String,
    pub event_type: EventType,
    pub tenant_id: TenantId,
    pub object_id: ObjectId,
    pub employee_id: EmployeeId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<CredentialName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contract_id: Option<ContractId>,
    pub op: Op,
    pub desired: DesiredLink,
    pub state: ActionState,
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(serialize_with = "instant::serialize")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "instant::serialize")]
    pub updated_at: DateTime<Utc>,
    /// `effective_at` of the event: the action does not run before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_attempt_at: Option<DateTime<Utc>>,
    /// The partner ID PAL showed before the action (None: no link).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before_partner_id: Option<PartnerId>,
    /// The partner ID after the action (None: no link).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_partner_id: Option<PartnerId>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    /// Free text for operators: why manual, what a dry run would have done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<DateTime<Utc>>,
    /// When PAL was read and showed the desired state: after the write, or
    /// the read that found nothing to do (SPEC §11.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified_at: Option<DateTime<Utc>>,
}

impl EventRecord {
    /// When its removals were to happen: the event's `effective_at`, else
    /// its acceptance (SPEC §11.3: where the time to revocation starts).
    pub fn revocation_due(&self) -> DateTime<Utc> {
        self.event.effective_at().unwrap_or(self.accepted_at)
    }
}

impl ActionRecord {
    pub fn account_key(&self) -> AccountKey {
        AccountKey {
            tenant_id: self.tenant_id.clone(),
            object_id: self.object_id.clone(),
        }
    }

    /// When the action was first due (a retry's later attempts do not move
    /// it): its event's `effective_at` as the action keeps it, else its
    /// creation.
    pub fn first_due(&self) -> DateTime<Utc> {
        self.not_before
            .map_or(self.created_at, |at| at.max(self.created_at))
    }

    /// When its link was seen as it ended: verified, else completed, else
    /// last updated (a removal's end, for the time to revocation).
    pub fn removed_at(&self) -> DateTime<Utc> {
        self.verified_at
            .or(self.completed_at)
            .unwrap_or(self.updated_at)
    }

    /// When the action may run next.
    pub fn due_at(&self) -> DateTime<Utc> {
        let mut due = self.created_at;
        if let Some(at) = self.not_before {
            due = due.max(at);
        }
        if let Some(at) = self.next_attempt_at {
            due = due.max(at);
        }
        due
    }
}
