//! What storing an event or an action's end did: the results the ledger
//! returns and the telemetry reports.

use palworker_events::TenantId;

use crate::ids::EventSeq;
use crate::model::{ActionRecord, ActionState, EventRecord};

/// What accepting an event did.
#[derive(Debug, Clone, PartialEq)]
pub enum AcceptOutcome {
    /// `(source, id)` was accepted before: nothing changed.
    Duplicate,
    /// The plan was stored and its actions are pending.
    Accepted {
        seq: EventSeq,
        actions: u64,
        /// How many of them wait for the event's future `effective_at`
        /// (all or none: they share it).
        scheduled: u64,
        unassigned: Vec<TenantId>,
        /// Older unfinished actions that this event superseded.
        cancelled: Vec<Superseded>,
        /// Set when every action of a large plan finished while its later
        /// chunks were still being written.
        completed: Option<Box<EventRecord>>,
    },
    /// The plan was stored and held for approval.
    Held { seq: EventSeq, actions: u64 },
}

/// An older unfinished action that a newer event cancelled.
#[derive(Debug, Clone, PartialEq)]
pub struct Superseded {
    /// The action, now `cancelled`.
    pub action: ActionRecord,
    /// The state it was cancelled from (pending, scheduled or held).
    pub previous_state: ActionState,
    /// Set when it was its event's last non-terminal action.
    pub event_completed: Option<EventRecord>,
}

/// What approving a held plan did.
#[derive(Debug, Clone)]
pub struct Approval {
    /// How many of the plan's actions are now pending (or scheduled).
    pub released: u64,
    /// How many of the released wait for the event's future `effective_at`.
    pub scheduled: u64,
    /// The plan's actions whose account a later event had already targeted.
    pub cancelled: Vec<ActionRecord>,
    /// Older unfinished actions that the released ones superseded.
    pub superseded: Vec<Superseded>,
    /// Set when the approval completed the event (nothing was released, or
    /// every released action already finished).
    pub completed: Option<EventRecord>,
}

/// A terminal transition's effect on its event.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// The action, in its terminal state.
    pub record: ActionRecord,
    /// Set when this was the event's last non-terminal action.
    pub event_completed: Option<EventRecord>,
}

/// What recording a failed attempt for a later retry did.
#[derive(Debug, Clone)]
pub enum Rescheduled {
    /// The action waits for its next attempt.
    Scheduled,
    /// A later event superseded the action while it was in flight: it ended `cancelled`.
    Superseded(Box<Completion>),
}
