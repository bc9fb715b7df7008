//! Operator commands (SPEC §8, §11.2): status, retry, approve, reject,
//! pause and resume, audit export and verify, ledger export, inventory
//! import and list, plan preview, reconcile.
//! [`Partitions`] sends them to every partition of a partitioned
//! deployment and puts the answers together (SPEC §10).
//!
//! The CLI talks to one trait, [`Operations`], whether the worker runs or not:
//! [`LedgerOperations`] works on a ledger directly (a stopped worker's, or —
//! inside a running worker — behind its admin API), and [`AdminApiClient`]
//! sends the same commands to a running worker's admin API. Both answer with
//! the same types, so a local and a remote answer are the same output.
//!
//! Nothing here holds a whole answer in memory: `status` and `audit export`
//! hand their rows to a visitor one at a time (the ledger reads them a page
//! at a time; the admin API streams them as JSON Lines, which the client
//! reads line by line), and `inventory import` sends a running worker the
//! accounts a batch at a time ([`IMPORT_BATCH_ACCOUNTS`]).

mod client;
mod ledger;
mod operator;
mod partitioned;

use chrono::{DateTime, Utc};
use palworker_core::{
    ActionId, AuditEntry, Finding, InventoryEntry, ReconcileReport, ReleaseSummary, StatusFilter,
    StatusRow,
};
use palworker_events::ImportedAccount;
use serde::{Deserialize, Serialize};

use crate::ledger::PauseState;
use crate::ledger::RevocationRow;
use crate::reconcile::ReconcileRequest;

#[cfg(test)]
pub(crate) use client::read_lines;
pub use client::{AdminApiClient, Reached};
pub use ledger::{Attached, LedgerOperations};
pub use operator::Operator;
pub use partitioned::{Partitions, split_accounts};

/// Accounts per admin API request of `inventory import`: one request
/// imports them in transactions of 256 (`Ledger::import_accounts`) and
/// answers within seconds, and a large file never meets a body limit.
pub const IMPORT_BATCH_ACCOUNTS: usize = 5_000;

/// Bytes per admin API request of `inventory import` at most (a batch ends
/// early when its accounts are long): well inside
/// [`IMPORT_REQUEST_LIMIT`].
pub const IMPORT_BATCH_BYTES: usize = 1024 * 1024;

/// The largest body the admin API's import takes. Twice a batch: room for a
/// client with other batch sizes, and a bound on what one request makes the
/// worker hold.
pub const IMPORT_REQUEST_LIMIT: usize = 2 * IMPORT_BATCH_BYTES;

/// The last line of a streamed admin API answer (JSON Lines) that failed
/// after its first line was sent, when the status code can no longer say
/// so: `{"error":"…"}`. Rows never start this way (their first field is
/// another), so the client tells the two apart by the line's start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamFailure {
    pub error: String,
}

impl StreamFailure {
    /// How a failure line starts.
    pub const LINE_START: &'static [u8] = b"{\"error\":";
}

/// Which actions `retry` queues again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryTarget {
    /// One failed action.
    Action(ActionId),
    /// Every failed action that is still its account's latest.
    AllFailed,
}

/// What an operator decides about a held plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Approve,
    Reject,
}

impl Decision {
    /// The admin API's path segment and the CLI's verb.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Approve => "approve",
            Decision::Reject => "reject",
        }
    }
}

/// The `EVENT` argument: a CloudEvent id, and its source when two accepted
/// events share the id.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventRef {
    pub event: String,
    pub source: Option<String>,
}

/// What `pause` or `resume` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PauseAnswer {
    /// Whether writes to PAL are paused now.
    pub paused: bool,
    /// Whether they were before the command.
    pub was_paused: bool,
}

/// What `audit verify` found: the records checked and the first broken
/// one, if any.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditCheck {
    pub records: u64,
    pub broken: Option<AuditCheckBreak>,
}

/// The first record where the audit trail's chain breaks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditCheckBreak {
    pub seq: u64,
    pub reason: String,
}

/// Why an operator command did not happen.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// The command refers to something that does not exist, is in the wrong
    /// state, or its input is malformed: nothing was changed.
    #[error("{0}")]
    Refused(String),
    /// The ledger, the network or the worker failed.
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

/// The operator commands, the same whether the worker runs or not.
#[allow(async_fn_in_trait)]
pub trait Operations {
    /// Every action matching `filter`, in creation order, handed to `visit`.
    async fn status(
        &self,
        filter: &StatusFilter,
        visit: &mut dyn FnMut(StatusRow) -> anyhow::Result<()>,
    ) -> Result<(), OperatorError>;

    /// Queues failed actions again; the ids queued.
    async fn retry(&self, target: RetryTarget) -> Result<Vec<ActionId>, OperatorError>;

    /// Approves or rejects a held plan.
    async fn decide(
        &self,
        decision: Decision,
        event: &EventRef,
    ) -> Result<ReleaseSummary, OperatorError>;

    /// The audit trail's records within `[since, until)`, in order, handed
    /// to `visit` (outcomes of actions retention pruned included).
    async fn audit(
        &self,
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
        visit: &mut dyn FnMut(AuditEntry) -> anyhow::Result<()>,
    ) -> Result<(), OperatorError>;

    /// Checks the audit trail's whole hash chain.
    async fn verify_audit(&self) -> Result<AuditCheck, OperatorError>;

    /// Pauses writes to PAL (`PauseState::Paused`) or resumes them.
    async fn set_pause(&self, state: PauseState) -> Result<PauseAnswer, OperatorError>;

    /// Writes a consistent snapshot of the whole ledger (JSON Lines, see
    /// `ledger::export`) to `out`; how many records.
    async fn export_ledger(
        &self,
        out: &mut (dyn std::io::Write + Send),
    ) -> Result<u64, OperatorError>;

    /// Inventory entries, optionally of one employee and/or tenant.
    async fn inventory(
        &self,
        employee: Option<&str>,
        tenant: Option<&str>,
    ) -> Result<Vec<InventoryEntry>, OperatorError>;

    /// Loads accounts parsed and validated from an import file (JSON Lines
    /// or CSV, `palworker_events::parse_import`); how many.
    async fn import(&self, accounts: Vec<ImportedAccount>) -> Result<u64, OperatorError>;

    /// The plan an event (its JSON bytes) would produce; changes nothing.
    async fn plan(&self, event: Vec<u8>) -> Result<serde_json::Value, OperatorError>;

    /// Compares PAL with the desired links (`reconcile`, SPEC §11.3): each
    /// finding handed to `visit` as it is made; the report once the plan
    /// (unless a dry run) is stored.
    async fn reconcile(
        &self,
        request: &ReconcileRequest,
        visit: &mut dyn FnMut(Finding) -> anyhow::Result<()>,
    ) -> Result<ReconcileReport, OperatorError>;

    /// Time to revocation (`report revocations`, SPEC §11.3): one row per
    /// event that removes links, those due at or after `since`, in
    /// acceptance order, handed to `visit`.
    async fn revocations(
        &self,
        since: Option<DateTime<Utc>>,
        visit: &mut dyn FnMut(RevocationRow) -> anyhow::Result<()>,
    ) -> Result<(), OperatorError>;
}
