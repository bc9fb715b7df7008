//! Drift (SPEC §11.3): `palworker reconcile` and the periodic
//! `reconcile.interval` read PAL for every inventory account in scope that
//! has a credential, compare it with the account's desired link, and plan
//! ONE `palworker.reconcile` event whose actions fix each difference —
//! stored like any plan (held above `limits.max_actions_per_event`), run by
//! the executor like any action (a GET first, so a link fixed meanwhile is
//! a no-op).
//!
//! The inventory is read a page of [`PAGE`] accounts at a time, up to
//! [`INTERLEAVE`] accounts ahead, dealt out one tenant after another so the
//! reads spread over every tenant in that stretch, and PAL with at most
//! [`READ_CONCURRENCY`] reads in flight; the per-tenant rate limit paces them, and a reconcile's read takes a tenant's slot only when no
//! action request waits for one (`pal::slots`). What a reconcile holds
//! beyond that is one small record per difference found, until its plan is
//! stored (a chunk of actions at a time, `ledger::ACCEPT_CHUNK`).
//!
//! An account whose latest action has not ended is not read (`busy`): the
//! action reads PAL itself. A difference whose account got an event (or
//! whose desired link changed) after PAL was read is left out of the plan
//! (`superseded`). An account without a credential cannot be read by
//! palworker (only its own identity can): it is reported `manual`. A read
//! that fails (after a few tries for transient errors) is reported
//! `unreadable` with the error, which never holds a secret.
//!
//! The run is recorded in the audit trail with who ran it (`palworker` for
//! the periodic run); a dry run only reports, stores and counts nothing.
//!
//! | file | holds |
//! | --- | --- |
//! | `mod.rs` | [`Reconciler`]: one run, its request, its lines |
//! | `periodic.rs` | [`periodic::run`]: a reconcile every `reconcile.interval` |
//! | `tests.rs` | unit tests of the pure parts |

pub mod periodic;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use palworker_core::ReconcileReport;
use palworker_core::{AcceptOutcome, DriftKind, Finding, FindingKind, InventoryEntry};
use palworker_events::{
    AccountKey, CredentialName, EmployeeId, Event, EventData, EventType, PartnerId, TenantId,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::clock::Clock;
use crate::executor::ExecutorControl;
use crate::ledger::{Drifted, Ledger, LedgerError, ScannedAccount, Seen};
use crate::pal::{PalClient, PalError, ReadLink};
use crate::telemetry::{EventAccepted, EventHeld, Metrics, ReconcileFinished, emit_superseded};

/// Accounts read from the inventory at a time.
pub const PAGE: usize = 256;

/// Accounts read ahead and dealt out tenant by tenant ([`interleave`]): the
/// inventory is in tenant order, and reading it in that order would keep
/// only the two or three tenants inside the window of reads in flight busy,
/// each at its `per_tenant_rps`. About 8,192 small entries are held at once.
pub const INTERLEAVE: usize = 32 * PAGE;

/// PAL reads in flight at most. The per-tenant rate limit does the pacing;
/// this bounds what one reconcile holds across many tenants.
pub const READ_CONCURRENCY: usize = 256;

/// Tries of one read that fails transiently (429, 5xx, a timeout).
const READ_ATTEMPTS: u32 = 3;

/// The longest a read waits before trying again (a longer `Retry-After`
/// is waited for only this long; the read then reports `unreadable`).
const READ_RETRY_WAIT_MAX: Duration = Duration::from_secs(30);

/// The CloudEvent `source` of palworker's own events.
pub const SOURCE: &str = "urn:palworker";

/// What to reconcile: the scope, and whether to plan.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconcileRequest {
    /// Only this tenant's accounts (`--tenant`).
    #[serde(default)]
    pub tenant_id: Option<TenantId>,
    /// Only this employee's accounts (`--employee`).
    #[serde(default)]
    pub employee_id: Option<EmployeeId>,
    /// Report the differences, plan nothing (`--dry-run`).
    #[serde(default)]
    pub dry_run: bool,
}

/// One line of a reconcile's streamed answer (admin API, JSON Lines): a
/// finding per account, then the report last.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ReconcileLine {
    Finding(Finding),
    Report(Box<ReconcileReport>),
}

/// Why a reconcile stopped before it was stored.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// Reading the inventory or storing the plan failed; nothing was planned.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// A task of the reconcile ended abnormally.
    #[error("internal: {0}")]
    Internal(String),
}

/// Runs reconciles on one ledger with one PAL client. Cheap to clone.
#[derive(Clone)]
pub struct Reconciler {
    inner: Arc<Inner>,
}

struct Inner {
    ledger: Arc<Ledger>,
    pal: PalClient,
    metrics: Metrics,
    clock: Arc<dyn Clock>,
    max_actions_per_event: usize,
    /// The running worker's executor, woken once a plan is stored.
    executor: Option<ExecutorControl>,
}

/// What the reconcile learned of one account.
enum Looked {
    Busy,
    Manual(InventoryEntry),
    Read(InventoryEntry, Result<Option<PartnerId>, PalError>),
}

impl Reconciler {
    pub fn new(
        ledger: Arc<Ledger>,
        pal: PalClient,
        metrics: Metrics,
        clock: Arc<dyn Clock>,
        max_actions_per_event: usize,
        executor: Option<ExecutorControl>,
    ) -> Self {
        Reconciler {
            inner: Arc::new(Inner {
                ledger,
                pal,
                metrics,
                clock,
                max_actions_per_event,
                executor,
            }),
        }
    }

    /// Runs one reconcile of `request`'s scope as `who`. Every finding
    /// (difference, `manual`, `unreadable`) is sent to `found` as it is made
    /// (a closed receiver does not stop the run); the report, once the plan
    /// is stored and flushed, is the answer.
    pub async fn run(
        &self,
        request: &ReconcileRequest,
        who: &str,
        found: &mpsc::Sender<Finding>,
    ) -> Result<ReconcileReport, ReconcileError> {
        let inner = &self.inner;
        let started_at = inner.clock.now();
        let mut report = ReconcileReport {
            tenant_id: request.tenant_id.clone(),
            employee_id: request.employee_id.clone(),
            dry_run: request.dry_run,
            started_at: Some(started_at),
            ..ReconcileReport::default()
        };
        let mut drifted = Vec::new();
        let mut looks = std::pin::pin!(
            self.accounts(request)
                .map_ok(|account| self.look(account))
                .try_buffer_unordered(READ_CONCURRENCY)
        );
        while let Some(looked) = looks.try_next().await? {
            report.accounts += 1;
            let finding = match looked {
                Looked::Busy => {
                    report.busy += 1;
                    continue;
                }
                Looked::Manual(entry) => finding(&entry, None, FindingKind::Manual, None),
                Looked::Read(entry, Ok(actual)) => {
                    report.read += 1;
                    let Some(kind) = DriftKind::of(&entry.desired, actual.as_ref()) else {
                        continue;
                    };
                    drifted.push(Drifted {
                        key: entry.account.key(),
                        kind,
                        seen: Seen::of(&entry),
                    });
                    finding(&entry, actual, FindingKind::Drift(kind), None)
                }
                Looked::Read(entry, Err(error)) => finding(
                    &entry,
                    None,
                    FindingKind::Unreadable,
                    Some(error.to_string()),
                ),
            };
            report.count(finding.kind);
            // The receiver may be gone (a client that went away): the run
            // still plans what it found.
            let _ = found.send(finding).await;
        }
        if request.dry_run {
            report.finished_at = Some(inner.clock.now());
            ReconcileFinished {
                report: &report,
                by: who,
            }
            .emit(&inner.metrics);
            return Ok(report);
        }
        let event = reconcile_event(&report, started_at, inner.clock.now());
        let now = event.time;
        let ledger = inner.ledger.clone();
        let who_owned = who.to_owned();
        let max = inner.max_actions_per_event;
        let (report, outcome) = tokio::task::spawn_blocking(move || {
            let mut report = report;
            let outcome =
                ledger.store_reconcile(&event, drifted, &mut report, &who_owned, now, max)?;
            ledger.flush()?;
            Ok::<_, LedgerError>((report, outcome.map(|outcome| (event, outcome))))
        })
        .await
        .map_err(|error| ReconcileError::Internal(error.to_string()))??;
        if let Some((event, outcome)) = &outcome {
            self.emit_stored(event, outcome);
            if let Some(executor) = &inner.executor {
                executor.wake();
            }
        }
        ReconcileFinished {
            report: &report,
            by: who,
        }
        .emit(&inner.metrics);
        Ok(report)
    }

    /// The accounts of `request`'s scope, [`INTERLEAVE`] at a time from the
    /// ledger (a page per blocking read), each stretch [`interleave`]d.
    fn accounts(
        &self,
        request: &ReconcileRequest,
    ) -> impl futures::Stream<Item = Result<ScannedAccount, ReconcileError>> + Send + 'static {
        let ledger = self.inner.ledger.clone();
        let tenant = request.tenant_id.clone();
        let employee = request.employee_id.clone();
        futures::stream::try_unfold((None::<AccountKey>, false), move |(after, done)| {
            let ledger = ledger.clone();
            let tenant = tenant.clone();
            let employee = employee.clone();
            async move {
                if done {
                    return Ok::<_, ReconcileError>(None);
                }
                let (stretch, next, done) = tokio::task::spawn_blocking(move || {
                    let mut stretch = Vec::new();
                    let mut after = after;
                    loop {
                        let page = ledger.reconcile_page(
                            tenant.as_ref(),
                            employee.as_ref(),
                            after.as_ref(),
                            PAGE,
                        )?;
                        let done = page.len() < PAGE;
                        if let Some(last) = page.last() {
                            after = Some(last.entry.account.key());
                        }
                        stretch.extend(page);
                        if done || stretch.len() >= INTERLEAVE {
                            return Ok::<_, LedgerError>((stretch, after, done));
                        }
                    }
                })
                .await
                .map_err(|error| ReconcileError::Internal(error.to_string()))??;
                if stretch.is_empty() {
                    return Ok(None);
                }
                let stretch = futures::stream::iter(interleave(stretch).into_iter().map(Ok));
                Ok(Some((stretch, (next, done))))
            }
        })
        .try_flatten()
    }

    /// Reads one account's link, unless it is busy or has no credential.
    async fn look(&self, account: ScannedAccount) -> Result<Looked, ReconcileError> {
        if account.busy {
            return Ok(Looked::Busy);
        }
        let entry = account.entry;
        let Some(credential) = entry.account.credential.clone() else {
            return Ok(Looked::Manual(entry));
        };
        let read = self.read(&entry, &credential).await;
        Ok(Looked::Read(entry, read))
    }

    /// [`PalClient::read_link`], tried again after a transient failure.
    async fn read(
        &self,
        entry: &InventoryEntry,
        credential: &CredentialName,
    ) -> Result<Option<PartnerId>, PalError> {
        let request = ReadLink {
            credential,
            tenant_id: &entry.account.tenant_id,
            object_id: &entry.account.object_id,
        };
        let mut attempt = 1;
        loop {
            match self.inner.pal.read_link(&request).await {
                Err(PalError::Transient(transient)) if attempt < READ_ATTEMPTS => {
                    let wait = transient
                        .retry_after
                        .unwrap_or(Duration::from_secs(u64::from(attempt)))
                        .min(READ_RETRY_WAIT_MAX);
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                answer => return answer,
            }
        }
    }

    /// Counts the stored plan as the intake counts an event's.
    fn emit_stored(&self, event: &Event, outcome: &AcceptOutcome) {
        let metrics = &self.inner.metrics;
        match outcome {
            AcceptOutcome::Duplicate => {}
            AcceptOutcome::Held { actions, .. } => EventHeld {
                event,
                actions: *actions,
                limit: self.inner.max_actions_per_event,
            }
            .emit(metrics),
            AcceptOutcome::Accepted {
                actions,
                scheduled,
                cancelled,
                ..
            } => {
                EventAccepted {
                    event,
                    actions: *actions,
                    scheduled: *scheduled,
                    unassigned: 0,
                }
                .emit(metrics);
                emit_superseded(cancelled, metrics);
            }
        }
    }
}

/// The finding line of one account.
fn finding(
    entry: &InventoryEntry,
    actual: Option<PartnerId>,
    kind: FindingKind,
    error: Option<String>,
) -> Finding {
    Finding {
        tenant_id: entry.account.tenant_id.clone(),
        object_id: entry.account.object_id.clone(),
        employee_id: entry.account.employee_id.clone(),
        desired: entry.desired.partner_id().cloned(),
        actual,
        kind,
        error,
    }
}

/// Accounts in tenant order dealt out one tenant at a time — the first of
/// each tenant, then the second of each, … — keeping each tenant's own
/// order, so consecutive reads go to different tenants.
pub fn interleave(accounts: Vec<ScannedAccount>) -> Vec<ScannedAccount> {
    let mut tenants: Vec<std::collections::VecDeque<ScannedAccount>> = Vec::new();
    for account in accounts {
        match tenants.last_mut() {
            Some(run) if run[0].entry.account.tenant_id == account.entry.account.tenant_id => {
                run.push_back(account)
            }
            _ => tenants.push(std::collections::VecDeque::from([account])),
        }
    }
    let mut dealt = Vec::with_capacity(tenants.iter().map(|run| run.len()).sum());
    while !tenants.is_empty() {
        tenants.retain_mut(|run| match run.pop_front() {
            Some(account) => {
                dealt.push(account);
                true
            }
            None => false,
        });
    }
    dealt
}

/// The `palworker.reconcile` event of a reconcile that started at
/// `started_at`: its id names the start and a random suffix, so two
/// reconciles never share one.
pub(crate) fn reconcile_event(
    report: &ReconcileReport,
    started_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Event {
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    Event {
        id: format!(
            "reconcile-{}-{}",
            started_at.format("%Y%m%dT%H%M%S%.3fZ"),
            &suffix[..8]
        ),
        source: SOURCE.to_owned(),
        event_type: EventType::Reconcile,
        time: now,
        data: EventData::Reconcile {
            tenant_id: report.tenant_id.clone(),
            employee_id: report.employee_id.clone(),
            missing: report.missing,
            unexpected: report.unexpected,
            different: report.different,
        },
    }
}
