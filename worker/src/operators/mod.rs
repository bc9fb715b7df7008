//! Operator commands (SPEC §8): status, retry, approve, reject, audit
//! export, inventory import and list, plan preview.
//!
//! The CLI talks to one trait, [`Operations`], whether the worker runs or not:
//! [`LedgerOperations`] works on a ledger directly (a stopped worker's, or —
//! inside a running worker — behind its admin API), and [`AdminApiClient`]
//! sends the same commands to a running worker's admin API. Both answer with
//! the same types, so a local and a remote answer are the same output.

mod client;
mod ledger;

use chrono::{DateTime, Utc};
use palworker_core::{
    ActionId, AuditRecord, InventoryEntry, ReleaseSummary, StatusFilter, StatusRow,
};
use serde::{Deserialize, Serialize};

pub use client::AdminApiClient;
pub use ledger::{Attached, LedgerOperations};

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

    /// Every terminal action outcome at or after `since`, handed to `visit`.
    async fn audit(
        &self,
        since: Option<DateTime<Utc>>,
        visit: &mut dyn FnMut(AuditRecord) -> anyhow::Result<()>,
    ) -> Result<(), OperatorError>;

    /// Inventory entries, optionally of one employee and/or tenant.
    async fn inventory(
        &self,
        employee: Option<&str>,
        tenant: Option<&str>,
    ) -> Result<Vec<InventoryEntry>, OperatorError>;

    /// Loads accounts (JSON Lines or CSV); how many.
    async fn import(&self, text: String) -> Result<u64, OperatorError>;

    /// The plan an event (its JSON bytes) would produce; changes nothing.
    async fn plan(&self, event: Vec<u8>) -> Result<serde_json::Value, OperatorError>;
}
