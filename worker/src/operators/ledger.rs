//! Operator commands on a ledger: the CLI's on a stopped worker, and the
//! admin API's inside a running one (where they also report to its metrics
//! and wake its executor). Blocking: the admin API calls them from
//! `spawn_blocking`.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use palworker_core::{
    ActionId, ActionState, AuditEntry, Finding, InventoryEntry, ReconcileReport, ReleaseSummary,
    StatusFilter, StatusRow,
};
use palworker_events::{Event, ImportedAccount};

use super::{
    AuditCheck, AuditCheckBreak, Decision, EventRef, Operations, Operator, OperatorError,
    PauseAnswer, RetryTarget,
};
use crate::executor::ExecutorControl;
use crate::ledger::{EventOpening, Ledger, LedgerError, PauseState, RevocationRow};
use crate::reconcile::{ReconcileError, ReconcileRequest, Reconciler};
use crate::telemetry::{
    ActionFinished, ActionsRequeued, Metrics, PlanApproved, PlanRejected, WritesPaused,
    WritesResumed,
};

/// Findings queued between a reconcile and the operator's output.
const RECONCILE_QUEUE: usize = 256;

/// The worker a ledger belongs to, as far as operator commands care.
#[derive(Clone)]
pub enum Attached {
    /// No worker runs on the ledger (the CLI opened it).
    Stopped,
    /// Inside a running worker: report to its metrics, wake its executor.
    Running {
        metrics: Metrics,
        executor: ExecutorControl,
    },
}

/// Operator commands bound to a ledger, run by one operator.
#[derive(Clone)]
pub struct LedgerOperations {
    ledger: Arc<Ledger>,
    attached: Attached,
    operator: Operator,
    /// What reads PAL for `reconcile` (it needs the PAL client and its
    /// credentials); `None`: `reconcile` is refused.
    reconciler: Option<Reconciler>,
}

impl From<LedgerError> for OperatorError {
    fn from(error: LedgerError) -> Self {
        match error {
            LedgerError::Rejected(message) => OperatorError::Refused(message),
            other => OperatorError::Failed(other.into()),
        }
    }
}

impl LedgerOperations {
    pub fn new(ledger: Arc<Ledger>, attached: Attached, operator: Operator) -> Self {
        LedgerOperations {
            ledger,
            attached,
            operator,
            reconciler: None,
        }
    }

    /// The same commands, `reconcile` too.
    pub fn with_reconciler(self, reconciler: Reconciler) -> Self {
        LedgerOperations {
            reconciler: Some(reconciler),
            ..self
        }
    }

    /// What runs `reconcile`, if it can run here.
    pub fn reconciler(&self) -> Option<&Reconciler> {
        self.reconciler.as_ref()
    }

    /// The operator who runs the commands.
    pub fn operator(&self) -> &Operator {
        &self.operator
    }

    /// The same commands, run by `operator` (the admin API's per request).
    pub fn acting_as(&self, operator: Operator) -> Self {
        LedgerOperations {
            operator,
            ..self.clone()
        }
    }

    /// The ledger the commands work on.
    pub fn ledger(&self) -> &Arc<Ledger> {
        &self.ledger
    }

    fn metrics(&self) -> Option<&Metrics> {
        match &self.attached {
            Attached::Stopped => None,
            Attached::Running { metrics, .. } => Some(metrics),
        }
    }

    fn wake(&self) {
        if let Attached::Running { executor, .. } = &self.attached {
            executor.wake();
        }
    }

    /// Every action matching `filter` as a status row, one at a time (the
    /// ledger reads a page of actions at a time): what the CLI prints and
    /// the admin API streams.
    pub fn status_iter(
        &self,
        filter: StatusFilter,
    ) -> impl Iterator<Item = Result<StatusRow, OperatorError>> + '_ {
        self.ledger
            .iter_actions(filter)
            .map(|action| Ok(StatusRow::from(&action?)))
    }

    /// [`LedgerOperations::status_iter`], collected: for tests and answers
    /// known to be small.
    pub fn status_rows(&self, filter: &StatusFilter) -> Result<Vec<StatusRow>, OperatorError> {
        self.status_iter(filter.clone()).collect()
    }

    pub fn retry_now(&self, target: RetryTarget) -> Result<Vec<ActionId>, OperatorError> {
        let ids = match target {
            RetryTarget::Action(id) => vec![id],
            RetryTarget::AllFailed => self.ledger.failed_action_ids()?,
        };
        let now = Utc::now();
        let mut retried = Vec::new();
        let mut events_reopened = 0;
        for id in ids {
            match self.ledger.retry_action(id, self.operator.as_str(), now) {
                Ok(requeued) => {
                    retried.push(id);
                    if requeued.opening == EventOpening::Opened {
                        events_reopened += 1;
                    }
                }
                Err(error) if target != RetryTarget::AllFailed => return Err(error.into()),
                Err(error) => {
                    tracing::warn!(action_id = id.get(), error = %error, "Not retried.")
                }
            }
        }
        self.ledger.flush()?;
        let requeued = ActionsRequeued {
            count: retried.len(),
            events_reopened,
        };
        match self.metrics() {
            Some(metrics) => requeued.emit(metrics),
            None => tracing::info!(
                actions = retried.len(),
                "Failed actions queued again by an operator."
            ),
        }
        self.wake();
        Ok(retried)
    }

    pub fn decide_now(
        &self,
        decision: Decision,
        event: &EventRef,
    ) -> Result<ReleaseSummary, OperatorError> {
        let record = self
            .ledger
            .resolve_event(&event.event, event.source.as_deref())?;
        let now = Utc::now();
        let (released, cancelled) = match decision {
            Decision::Approve => {
                let approval = self
                    .ledger
                    .approve(record.seq, self.operator.as_str(), now)?;
                self.ledger.flush()?;
                if let Some(metrics) = self.metrics() {
                    PlanApproved {
                        record: &record,
                        approval: &approval,
                    }
                    .emit(metrics);
                }
                self.wake();
                (approval.released, approval.cancelled.len() as u64)
            }
            Decision::Reject => {
                let cancelled = self
                    .ledger
                    .reject(record.seq, self.operator.as_str(), now)?;
                self.ledger.flush()?;
                if let Some(metrics) = self.metrics() {
                    PlanRejected {
                        record: &record,
                        cancelled,
                    }
                    .emit(metrics);
                    // Read back one at a time once durable: a large plan is
                    // never held in memory whole.
                    for action in self.ledger.iter_event_actions(record.seq) {
                        let action = action?;
                        if action.state == ActionState::Cancelled {
                            ActionFinished::of(&action, ActionState::Held).emit(metrics);
                        }
                    }
                }
                (0, cancelled)
            }
        };
        if self.metrics().is_none() {
            tracing::info!(
                event_id = %record.event.id,
                released,
                cancelled,
                "Held plan {}d by an operator.",
                decision.as_str()
            );
        }
        Ok(ReleaseSummary {
            event_id: record.event.id,
            event_source: record.event.source,
            released,
            cancelled,
        })
    }

    /// The audit trail's records within `[since, until)`, in order, handed
    /// to `visit` one at a time until it returns false.
    pub fn audit_entries(
        &self,
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
        visit: impl FnMut(AuditEntry) -> bool,
    ) -> Result<(), OperatorError> {
        Ok(self.ledger.for_each_audit_entry(since, until, visit)?)
    }

    pub fn verify_audit_now(&self) -> Result<AuditCheck, OperatorError> {
        let verified = self.ledger.verify_audit()?;
        Ok(AuditCheck {
            records: verified.records,
            broken: verified.broken.map(|broken| AuditCheckBreak {
                seq: broken.seq,
                reason: broken.reason,
            }),
        })
    }

    /// Pauses or resumes writes to PAL: recorded in the ledger (a restart
    /// keeps it) and the audit trail, and applied to the running executor.
    pub fn set_pause_now(&self, state: PauseState) -> Result<PauseAnswer, OperatorError> {
        let paused = state == PauseState::Paused;
        let before = self
            .ledger
            .set_pause(state, self.operator.as_str(), Utc::now())?;
        self.ledger.flush()?;
        let by = self.operator.as_str();
        match &self.attached {
            Attached::Running { metrics, executor } => {
                if paused {
                    executor.pause();
                    WritesPaused { by }.emit(metrics);
                } else {
                    executor.resume();
                    WritesResumed { by }.emit(metrics);
                }
            }
            Attached::Stopped if paused => tracing::info!(
                by,
                "Writes to PAL paused: the worker will start paused until `palworker resume`."
            ),
            Attached::Stopped => tracing::info!(by, "Writes to PAL resumed."),
        }
        Ok(PauseAnswer {
            paused,
            was_paused: before == PauseState::Paused,
        })
    }

    /// A consistent snapshot of the ledger as JSON Lines; how many records.
    pub fn export_now(&self, out: &mut dyn std::io::Write) -> Result<u64, OperatorError> {
        Ok(self.ledger.export(out)?.records)
    }

    pub fn inventory_entries(
        &self,
        employee: Option<&str>,
        tenant: Option<&str>,
    ) -> Result<Vec<InventoryEntry>, OperatorError> {
        Ok(self.ledger.inventory_list(employee, tenant)?)
    }

    /// Parses an import file's text (JSON Lines or CSV) and loads it: the
    /// admin API's import of one batch, and the demo's.
    pub fn import_text(&self, text: &str) -> Result<u64, OperatorError> {
        let rows = palworker_events::parse_import(text)
            .map_err(|e| OperatorError::Refused(e.to_string()))?;
        self.import_accounts(rows)
    }

    /// Loads parsed accounts (in transactions of 256) and flushes.
    pub fn import_accounts(&self, rows: Vec<ImportedAccount>) -> Result<u64, OperatorError> {
        let count = self.ledger.import_accounts(
            rows.into_iter().map(|row| (row.account, row.partner_id)),
            Utc::now(),
        )?;
        self.ledger.flush()?;
        Ok(count)
    }

    pub fn plan_event(&self, event: &Event) -> Result<serde_json::Value, OperatorError> {
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

/// The CLI on a stopped worker: the same commands, called in place.
impl Operations for LedgerOperations {
    async fn status(
        &self,
        filter: &StatusFilter,
        visit: &mut dyn FnMut(StatusRow) -> anyhow::Result<()>,
    ) -> Result<(), OperatorError> {
        for row in self.status_iter(filter.clone()) {
            visit(row?)?;
        }
        Ok(())
    }

    async fn retry(&self, target: RetryTarget) -> Result<Vec<ActionId>, OperatorError> {
        self.retry_now(target)
    }

    async fn decide(
        &self,
        decision: Decision,
        event: &EventRef,
    ) -> Result<ReleaseSummary, OperatorError> {
        self.decide_now(decision, event)
    }

    async fn audit(
        &self,
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
        visit: &mut dyn FnMut(AuditEntry) -> anyhow::Result<()>,
    ) -> Result<(), OperatorError> {
        forward(visit, |each| self.audit_entries(since, until, each))
    }

    async fn verify_audit(&self) -> Result<AuditCheck, OperatorError> {
        self.verify_audit_now()
    }

    async fn set_pause(&self, state: PauseState) -> Result<PauseAnswer, OperatorError> {
        self.set_pause_now(state)
    }

    async fn export_ledger(
        &self,
        out: &mut (dyn std::io::Write + Send),
    ) -> Result<u64, OperatorError> {
        self.export_now(out)
    }

    async fn inventory(
        &self,
        employee: Option<&str>,
        tenant: Option<&str>,
    ) -> Result<Vec<InventoryEntry>, OperatorError> {
        self.inventory_entries(employee, tenant)
    }

    async fn import(&self, accounts: Vec<ImportedAccount>) -> Result<u64, OperatorError> {
        self.import_accounts(accounts)
    }

    async fn plan(&self, event: Vec<u8>) -> Result<serde_json::Value, OperatorError> {
        let event = Event::from_json_slice(&event)
            .map_err(|error| OperatorError::Refused(error.to_string()))?;
        self.plan_event(&event)
    }

    async fn reconcile(
        &self,
        request: &ReconcileRequest,
        visit: &mut dyn FnMut(Finding) -> anyhow::Result<()>,
    ) -> Result<ReconcileReport, OperatorError> {
        let reconciler = self.reconciler.as_ref().ok_or_else(|| {
            OperatorError::Refused(
                "reconcile needs the PAL client, which is not set up here".into(),
            )
        })?;
        let (found, mut findings) = tokio::sync::mpsc::channel(RECONCILE_QUEUE);
        let run = async {
            let report = reconciler
                .run(request, self.operator.as_str(), &found)
                .await;
            drop(found);
            report
        };
        let mut failed = None;
        let print = async {
            while let Some(finding) = findings.recv().await {
                if failed.is_none()
                    && let Err(error) = visit(finding)
                {
                    failed = Some(error);
                }
            }
        };
        let (report, ()) = tokio::join!(run, print);
        let report = report.map_err(|error| match error {
            ReconcileError::Ledger(error) => OperatorError::from(error),
            other => OperatorError::Failed(other.into()),
        })?;
        match failed {
            Some(error) => Err(OperatorError::Failed(error)),
            None => Ok(report),
        }
    }

    async fn revocations(
        &self,
        since: Option<DateTime<Utc>>,
        visit: &mut dyn FnMut(RevocationRow) -> anyhow::Result<()>,
    ) -> Result<(), OperatorError> {
        forward(visit, |each| self.revocation_rows(since, each))
    }
}

impl LedgerOperations {
    /// The rows of `report revocations` (see [`Operations::revocations`]),
    /// handed to `visit` one at a time until it returns false.
    pub fn revocation_rows(
        &self,
        since: Option<DateTime<Utc>>,
        visit: impl FnMut(RevocationRow) -> bool,
    ) -> Result<(), OperatorError> {
        Ok(self.ledger.for_each_revocation(since, visit)?)
    }
}

/// Runs `scan`, handing each row it visits to `visit` until `visit` fails:
/// the scan then stops and that failure is the answer.
fn forward<T>(
    visit: &mut dyn FnMut(T) -> anyhow::Result<()>,
    scan: impl FnOnce(&mut dyn FnMut(T) -> bool) -> Result<(), OperatorError>,
) -> Result<(), OperatorError> {
    let mut failed = None;
    scan(&mut |row| match visit(row) {
        Ok(()) => true,
        Err(error) => {
            failed = Some(error);
            false
        }
    })?;
    failed.map_or(Ok(()), |error| Err(OperatorError::Failed(error)))
}
