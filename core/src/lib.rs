//! palworker-core: *what* palworker does, with no IO.
//!
//! Responsibility: the domain model (the inventory's entries, accepted
//! events, actions and their states and outcomes), the planner — the pure
//! function (event, inventory) → plan of SPEC §3 — and the durable retry
//! schedule — the pure function (attempt, error, Retry-After) → next attempt
//! of SPEC §5 — plus the views operators see of the records.
//!
//! Architecture invariant: this crate does no IO (no async runtime, broker,
//! network, storage or clock): its manifest names no IO crate, so the
//! compiler enforces it. The worker stores what it computes; the planner
//! reads the inventory only through [`planner::InventoryView`].

#![forbid(unsafe_code)]

pub mod drift;
pub mod ids;
mod instant;
pub mod model;
pub mod outcome;
pub mod planner;
pub mod reason;
pub mod retry;
pub mod views;

pub use drift::{DriftKind, Finding, FindingKind, ReconcileReport};
pub use ids::{ActionId, EventSeq};
pub use model::{ActionRecord, ActionState, EventRecord, EventState, InventoryEntry, Op};
pub use outcome::{AcceptOutcome, Approval, Completion, Rescheduled, Superseded};
pub use reason::{EventOutcome, RetryReason};
pub use views::{
    ActionFacts, AuditEntry, AuditRecord, AuditWhat, ReleaseSummary, StatusFilter, StatusRow,
};
