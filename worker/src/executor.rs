//! The executor: runs due actions against PAL, at most `limits.concurrency` at
//! a time, one at a time per account, at most `ceil(limits.per_tenant_rps)`
//! per tenant (so a tenant queueing behind its rate limit never holds every
//! slot), and records every outcome in the ledger.
//!
//! Architecture invariant: the executor never runs more than
//! `limits.concurrency` actions at once, and holds no more than those and the
//! outcomes of the tasks that ended since its loop's last ledger transaction;
//! everything else waits in the ledger's `due` tree, ordered by due time.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use palworker_config::RetrySettings;
use palworker_events::{AccountKey, DesiredLink, Escaped, PartnerId};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::availability::LedgerAvailability;
use crate::clock::Clock;
use crate::health::panic_message;
use crate::ledger::{Ledger, LedgerError};
use crate::pal::{
    Checkpoint, PalClient, PalError, Proceed, Reconcile, ReconcileError, Reconciled, Transient,
    WriteMode,
};
use crate::telemetry::{
    ActionFinished, ActionRetryScheduled, EventCompleted, LinkRevoked, Metrics, ScheduledActionsDue,
};
use palworker_core::retry::{self, RetryDecision};
use palworker_core::{ActionId, ActionRecord, ActionState, Completion, EventSeq, Op, Rescheduled};

/// How the executor behaves.
#[derive(Debug, Clone)]
pub struct ExecutorSettings {
    pub concurrency: usize,
    /// At most this many actions of one tenant in flight at once, so that a
    /// tenant whose requests wait on its rate limit (`limits.per_tenant_rps`)
    /// never occupies every slot and stalls the other tenants; fewer while
    /// PAL answers fast enough that fewer keep the tenant at its rate
    /// ([`PalClient::tenant_concurrency`]).
    pub per_tenant_concurrency: usize,
    pub retry: RetrySettings,
    pub dry_run: bool,
    /// How long a shutdown waits for in-flight actions before leaving them to
    /// the next start (they are recovered from the ledger).
    pub shutdown_grace: Duration,
}

pub use crate::control::ExecutorControl;

pub struct Executor {
    ledger: Arc<Ledger>,
    pal: PalClient,
    metrics: Metrics,
    clock: Arc<dyn Clock>,
    settings: ExecutorSettings,
    control: ExecutorControl,
    availability: LedgerAvailability,
    /// The revocation due time of the event whose removal ended last: a
    /// plan's removals end one after another, so its record is read once,
    /// not once per removal.
    last_revocation_due: std::sync::Mutex<Option<(EventSeq, chrono::DateTime<chrono::Utc>)>>,
}

/// How one attempt ended.
enum Attempt {
    /// The action is finished: this state, these links, this note.
    Terminal(Terminal),
    /// It failed transiently: the retry schedule decides what next.
    Retry(Transient),
    /// Writes are paused: it goes back to pending, the attempt not counted.
    PutBack,
}

/// A terminal attempt: the action's new state and what it saw and did.
struct Terminal {
    state: ActionState,
    before: Option<PartnerId>,
    after: Option<PartnerId>,
    detail: Option<String>,
    error: Option<String>,
    verified_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl Terminal {
    fn failed(error: String) -> Self {
        Terminal {
            state: ActionState::Failed,
            before: None,
            after: None,
            detail: None,
            error: Some(error),
            verified_at: None,
        }
    }

    /// How PAL's answer ends the action.
    fn of(reconciled: Reconciled) -> Self {
        let mut verified_at = None;
        let (state, before, after, detail) = match reconciled {
            Reconciled::AlreadyAsDesired {
                link,
                verified_at: at,
            } => {
                verified_at = Some(at);
                (ActionState::Noop, link.clone(), link, None)
            }
            Reconciled::Written {
                before,
                after,
                write,
                verified_at: at,
            } => {
                verified_at = at;
                (ActionState::Done, before, after, Some(write.to_string()))
            }
            Reconciled::AlreadyRemoved {
                before,
                write,
                verified_at: at,
            } => {
                verified_at = at;
                (ActionState::Noop, before, None, Some(write.to_string()))
            }
            Reconciled::WouldWrite {
                before,
                after,
                write,
            } => (
                ActionState::Skipped,
                before,
                after,
                Some(format!("dry run: would {write}; nothing was written")),
            ),
            Reconciled::Superseded { link } => (
                ActionState::Cancelled,
                link.clone(),
                link,
                Some("superseded by a later event for the same account".to_owned()),
            ),
            // Not an end: the executor puts such an attempt back (`Attempt::PutBack`).
            Reconciled::Paused { link } => (
                ActionState::Pending,
                link.clone(),
                link,
                Some("writes are paused".to_owned()),
            ),
        };
        Terminal {
            state,
            before,
            after,
            detail,
            error: None,
            verified_at,
        }
    }
}

/// The executor's checkpoint: whether an action is still its account's
/// latest, and writes are not paused.
struct StillCurrent<'a> {
    ledger: &'a Ledger,
    action: &'a ActionRecord,
    control: &'a ExecutorControl,
}

impl Checkpoint for StillCurrent<'_> {
    type Error = LedgerError;

    fn before_write(&self) -> Result<Proceed, LedgerError> {
        if !self.ledger.is_current(self.action)? {
            return Ok(Proceed::Superseded);
        }
        Ok(if self.control.is_paused() {
            Proceed::Paused
        } else {
            Proceed::Write
        })
    }
}

impl Executor {
    pub fn new(
        ledger: Arc<Ledger>,
        pal: PalClient,
        metrics: Metrics,
        clock: Arc<dyn Clock>,
        settings: ExecutorSettings,
        control: ExecutorControl,
        availability: LedgerAvailability,
    ) -> Self {
        Executor {
            ledger,
            pal,
            metrics,
            clock,
            settings,
            control,
            availability,
            last_revocation_due: std::sync::Mutex::new(None),
        }
    }

    /// Runs until `shutdown` is cancelled, then lets in-flight actions finish
    /// within the grace period; those still running are left in flight in the
    /// ledger and resumed by the next start.
    ///
    /// Group commit: a task that ends hands its outcome back to this loop,
    /// which records the outcomes of every task that ended since its last
    /// pass and claims the actions that take their slots in one ledger
    /// transaction (sled writes and syncs a log buffer around each). An
    /// account is free again once its task has ended: its next action may be
    /// claimed in the transaction that records the previous one's outcome.
    pub async fn run(self, shutdown: CancellationToken) {
        let this = Arc::new(self);
        let mut busy: HashSet<AccountKey> = HashSet::new();
        let mut tasks: JoinSet<(AccountKey, Option<ActionRecord>)> = JoinSet::new();
        let mut ended: Vec<ActionRecord> = Vec::new();
        let concurrency = this.settings.concurrency.max(1);
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            let paused = this.control.is_paused()
                || !this.availability.is_available()
                || this.ledger.is_storing_large_plan();
            let free = concurrency.saturating_sub(tasks.len());
            let now = this.clock.now();
            let mut keys = Vec::new();
            let mut ids = Vec::new();
            if free > 0 && !paused {
                for candidate in this.candidates(&busy, free, now) {
                    let key = candidate.account_key();
                    if busy.insert(key.clone()) {
                        keys.push(key);
                        ids.push(candidate.action_id);
                    }
                }
            }
            let claimed = this.commit(std::mem::take(&mut ended), &ids, now);
            // Claimed for the first time after waiting for their event's
            // effective_at: from scheduled to pending.
            let due = claimed
                .iter()
                .flatten()
                .filter(|action| action.attempts == 1 && action.not_before.is_some())
                .count();
            ScheduledActionsDue { count: due }.emit(&this.metrics);
            for (key, action) in keys.into_iter().zip(claimed) {
                let Some(action) = action else {
                    busy.remove(&key);
                    continue;
                };
                let this = this.clone();
                let span = action_span(&action);
                tasks.spawn(async move { (key, this.run_guarded(action).await) }.instrument(span));
            }
            let wait = this.idle_wait(tasks.len(), concurrency);
            tokio::select! {
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    // Every task that has finished by now, so that one pass
                    // records all their outcomes and refills all their slots.
                    let mut done = Some(done);
                    while let Some(result) = done.take().or_else(|| tasks.try_join_next()) {
                        if let Some((key, outcome)) = ended_task(result) {
                            busy.remove(&key);
                            ended.extend(outcome);
                        }
                    }
                }
                _ = this.control.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => {}
            }
        }
        if !tasks.is_empty() {
            tracing::info!(
                in_flight = tasks.len(),
                grace_ms = this.settings.shutdown_grace.as_millis() as u64,
                "Draining in-flight actions."
            );
            let drained = tokio::time::timeout(this.settings.shutdown_grace, async {
                while let Some(result) = tasks.join_next().await {
                    ended.extend(ended_task(result).and_then(|(_, outcome)| outcome));
                }
            })
            .await;
            if drained.is_err() {
                tracing::warn!(
                    in_flight = tasks.len(),
                    "Grace period over; the remaining in-flight actions resume at the next start."
                );
                tasks.abort_all();
                // A task may have ended just before it was aborted.
                while let Some(result) = tasks.join_next().await {
                    if !matches!(&result, Err(error) if error.is_cancelled()) {
                        ended.extend(ended_task(result).and_then(|(_, outcome)| outcome));
                    }
                }
            }
        }
        this.commit(ended, &[], this.clock.now());
    }

    /// Due actions for up to `free` slots: not of a busy account, and at most
    /// as many in flight per tenant as its rate limit can serve at PAL's
    /// current answer time ([`PalClient::tenant_concurrency`], never above
    /// `per_tenant_concurrency`), counting the candidates taken so far as
    /// well as the running actions. More would wait on the tenant's rate
    /// limit holding slots that other tenants' actions could use.
    fn candidates(
        &self,
        busy: &HashSet<AccountKey>,
        free: usize,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Vec<ActionRecord> {
        let cap = self
            .pal
            .tenant_concurrency()
            .min(self.settings.per_tenant_concurrency)
            .max(1);
        let mut in_flight: HashMap<String, usize> = HashMap::new();
        for key in busy {
            *in_flight
                .entry(key.tenant_id.as_str().to_owned())
                .or_default() += 1;
        }
        let in_flight = RefCell::new(in_flight);
        self.ledger
            .due_actions_in(
                now,
                free,
                |tenant| in_flight.borrow().get(tenant).is_some_and(|n| *n >= cap),
                |action| {
                    if busy.contains(&action.account_key()) {
                        return true;
                    }
                    *in_flight
                        .borrow_mut()
                        .entry(action.tenant_id.as_str().to_owned())
                        .or_default() += 1;
                    false
                },
            )
            .unwrap_or_else(|error| {
                tracing::error!(error = %error, "Reading due actions failed.");
                Vec::new()
            })
    }

    /// Records the outcomes of the tasks that ended and claims `ids`, in one
    /// transaction, and reports the outcomes. One entry per id: the claimed
    /// action, or `None` when it is no longer claimable or claiming failed.
    fn commit(
        &self,
        ended: Vec<ActionRecord>,
        ids: &[ActionId],
        now: chrono::DateTime<chrono::Utc>,
    ) -> Vec<Option<ActionRecord>> {
        let error = match self.ledger.finish_and_claim(&ended, ids, now) {
            Ok(pass) => {
                for completion in pass.completions {
                    self.report_ended(completion);
                }
                return pass.claimed;
            }
            Err(error) => error,
        };
        if self.availability.report(&error) {
            // Nothing more can be written until the ledger is reopened;
            // reopening recovers these actions as pending.
            return vec![None; ids.len()];
        }
        tracing::warn!(error = %error, "Recording outcomes and claims together failed; recording them apart.");
        // One at a time, so that each outcome meets its own error (and one
        // bad record does not fail the others).
        for record in &ended {
            match self.ledger.finish(record) {
                Ok(completion) => self.report_ended(completion),
                Err(error) => {
                    let _span = action_span(record).entered();
                    tracing::error!(error = %error, "Recording an action outcome failed; it resumes at the next start.");
                }
            }
        }
        match self.ledger.finish_and_claim(&[], ids, now) {
            Ok(pass) => pass.claimed,
            Err(error) => {
                tracing::error!(error = %error, "Claiming actions failed.");
                vec![None; ids.len()]
            }
        }
    }

    /// How long to wait when nothing more can be started right now.
    fn idle_wait(&self, running: usize, concurrency: usize) -> Duration {
        const MAX_IDLE: Duration = Duration::from_secs(1);
        if running >= concurrency {
            return MAX_IDLE;
        }
        if self.ledger.is_storing_large_plan() {
            // The intake wakes us once the plan is stored and flushed; this
            // only bounds the wait should that wake-up be missed.
            return Duration::from_millis(100);
        }
        match self.ledger.next_due() {
            Ok(Some(due)) => {
                let now = self.clock.now();
                if due <= now {
                    // Due but blocked behind a busy account: a task finishing wakes us.
                    if running == 0 {
                        Duration::from_millis(50)
                    } else {
                        MAX_IDLE
                    }
                } else {
                    (due - now).to_std().unwrap_or(MAX_IDLE).min(MAX_IDLE)
                }
            }
            _ => MAX_IDLE,
        }
    }

    /// [`Executor::run_action`], where a panic — a bug, never an answer of
    /// PAL — ends the action `failed` instead of losing it and its account.
    async fn run_guarded(&self, action: ActionRecord) -> Option<ActionRecord> {
        let claimed = action.clone();
        guarded(claimed, self.clock.as_ref(), self.run_action(action)).await
    }

    /// Runs one claimed action; returns its outcome for the run loop to
    /// record, or `None` when a retry was scheduled (recorded here).
    async fn run_action(&self, mut action: ActionRecord) -> Option<ActionRecord> {
        let attempt = self.attempt(&action).await;
        let now = self.clock.now();
        action.updated_at = now;
        let error = match attempt {
            Attempt::Terminal(terminal) => {
                action.state = terminal.state;
                action.before_partner_id = terminal.before;
                action.after_partner_id = terminal.after;
                action.detail = terminal.detail;
                if terminal.error.is_some() {
                    action.last_error = terminal.error;
                }
                action.next_attempt_at = None;
                action.completed_at = Some(now);
                action.dry_run = self.settings.dry_run;
                action.verified_at = terminal.verified_at;
                return Some(action);
            }
            Attempt::Retry(error) => error,
            Attempt::PutBack => {
                // Writes were paused while it read PAL: it waits for
                // `resume` as if it had not started.
                action.state = ActionState::Pending;
                action.attempts = action.attempts.saturating_sub(1);
                if action.attempts == 0 {
                    action.first_attempt_at = None;
                }
                match self.ledger.reschedule(&action) {
                    Ok(Rescheduled::Scheduled) => {
                        tracing::info!("Writes are paused: the action waits for resume.");
                    }
                    Ok(Rescheduled::Superseded(completion)) => self.report(*completion),
                    Err(e) => {
                        if !self.availability.report(&e) {
                            tracing::error!(error = %e, "Putting an action back failed; it resumes at the next start.");
                        }
                    }
                }
                return None;
            }
        };
        let decision = retry::decide(
            &self.settings.retry,
            action.attempts,
            error.retry_after,
            rand::random::<f64>(),
            action.first_attempt_at.unwrap_or(now),
            now,
            error.budget,
        );
        action.last_error = Some(error.message.clone());
        let at = match decision {
            RetryDecision::RetryAt(at) => at,
            RetryDecision::GiveUp => {
                action.state = ActionState::Failed;
                action.last_error = Some(format!(
                    "retry budget exhausted after {} attempts; last error: {}",
                    action.attempts, error.message
                ));
                action.next_attempt_at = None;
                action.completed_at = Some(now);
                return Some(action);
            }
        };
        action.state = ActionState::Scheduled;
        action.next_attempt_at = Some(at);
        let delay = (at - now).to_std().unwrap_or_default();
        match self.ledger.reschedule(&action) {
            Ok(Rescheduled::Scheduled) => {}
            Ok(Rescheduled::Superseded(completion)) => {
                self.report(*completion);
                return None;
            }
            Err(e) => {
                if !self.availability.report(&e) {
                    tracing::error!(error = %e, "Recording a retry failed; the action resumes at the next start.");
                }
                return None;
            }
        }
        ActionRetryScheduled {
            action: &action,
            reason: error.reason,
            delay,
            error: &error.message,
        }
        .emit(&self.metrics);
        None
    }

    /// [`Executor::report`] for an action whose task has ended, in the
    /// action's span as if its task reported it.
    fn report_ended(&self, completion: Completion) {
        action_span(&completion.record).in_scope(|| self.report(completion));
    }

    /// Logs and counts a terminal transition recorded in the ledger.
    fn report(&self, completion: Completion) {
        ActionFinished::of(&completion.record, ActionState::InFlight).emit(&self.metrics);
        if completion.record.op == Op::Remove && completion.record.state == ActionState::Done {
            self.report_revoked(&completion.record);
        }
        if let Some(record) = &completion.event_completed {
            EventCompleted { record }.emit(&self.metrics);
        }
    }

    /// Observes a removed link's time to revocation: from its event's
    /// `effective_at` (or acceptance), which the action itself does not keep
    /// when it was already past at acceptance.
    fn report_revoked(&self, action: &ActionRecord) {
        let mut last = self
            .last_revocation_due
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let due = match *last {
            Some((seq, due)) if seq == action.event_seq => due,
            _ => match self.ledger.event(action.event_seq) {
                Ok(Some(record)) => {
                    let due = record.revocation_due();
                    *last = Some((action.event_seq, due));
                    due
                }
                // Unreadable (the ledger failing): the action's own due time.
                _ => action.not_before.unwrap_or(action.created_at),
            },
        };
        drop(last);
        LinkRevoked { action, due }.emit(&self.metrics);
    }

    /// One attempt of SPEC §5 steps 1–4.
    async fn attempt(&self, action: &ActionRecord) -> Attempt {
        let Some(credential) = action.credential.as_ref() else {
            return Attempt::Terminal(Terminal {
                state: ActionState::Manual,
                before: None,
                after: None,
                detail: Some(format!(
                    "account {}/{} has no credential: only that identity can change its link — \
                     remove it signed in as that user, or disable the identity",
                    action.tenant_id, action.object_id
                )),
                error: None,
                verified_at: None,
            });
        };
        let request = Reconcile {
            credential,
            tenant_id: &action.tenant_id,
            object_id: &action.object_id,
            desired: &action.desired,
            mode: if self.settings.dry_run {
                WriteMode::DryRun
            } else {
                WriteMode::Write
            },
        };
        let checkpoint = StillCurrent {
            ledger: &self.ledger,
            action,
            control: &self.control,
        };
        match self.pal.reconcile(&request, &checkpoint).await {
            Ok(Reconciled::Paused { .. }) => Attempt::PutBack,
            Ok(reconciled) => Attempt::Terminal(Terminal::of(reconciled)),
            Err(ReconcileError::Pal(PalError::Transient(error))) => Attempt::Retry(error),
            Err(ReconcileError::Pal(PalError::Permanent { code, message })) => {
                Attempt::Terminal(Terminal::failed(error_text(&code, message)))
            }
            // The identity was deleted from its tenant: its link ended with
            // it, so a removal is finished (`orphaned`, the token error kept
            // as evidence); a link or an update cannot be made (SPEC §11.3).
            Err(ReconcileError::Pal(PalError::IdentityGone { code, message })) => {
                let error = error_text(&code, message);
                if matches!(action.desired, DesiredLink::Linked(_)) {
                    return Attempt::Terminal(Terminal::failed(error));
                }
                Attempt::Terminal(Terminal {
                    state: ActionState::Orphaned,
                    before: None,
                    after: None,
                    detail: Some(format!(
                        "identity {} no longer exists in tenant {}: its link ended with it",
                        action.object_id, action.tenant_id
                    )),
                    error: Some(error),
                    verified_at: None,
                })
            }
            // The ledger could not say whether the action is still current:
            // nothing was written, and the action fails with the ledger's error.
            Err(ReconcileError::Checkpoint(error)) => {
                Attempt::Terminal(Terminal::failed(format!("ledger: {error}")))
            }
        }
    }
}

/// A permanent error's text for the action's `last_error`: its message,
/// headed by its code unless the message starts with it.
fn error_text(code: &str, message: String) -> String {
    if message.starts_with(code) {
        message
    } else {
        format!("{code}: {message}")
    }
}

/// Runs `attempt` of the `claimed` action; if it panics, the action ends
/// `failed` with `internal: …` (and its task frees its account as usual).
async fn guarded(
    claimed: ActionRecord,
    clock: &dyn Clock,
    attempt: impl std::future::Future<Output = Option<ActionRecord>>,
) -> Option<ActionRecord> {
    match AssertUnwindSafe(attempt).catch_unwind().await {
        Ok(outcome) => outcome,
        Err(panic) => {
            let now = clock.now();
            let mut failed = claimed;
            failed.state = ActionState::Failed;
            failed.last_error = Some(format!("internal: {}", panic_message(panic.as_ref())));
            failed.next_attempt_at = None;
            failed.updated_at = now;
            failed.completed_at = Some(now);
            Some(failed)
        }
    }
}

/// The span of everything logged about one action.
fn action_span(action: &ActionRecord) -> tracing::Span {
    tracing::info_span!(
        "action",
        action_id = action.action_id.get(),
        event_id = %Escaped::new(&action.event_id),
        tenant_id = %action.tenant_id,
        employee_id = %action.employee_id,
    )
}

/// The account and outcome of a task that ended; `None` if it panicked.
fn ended_task(
    result: Result<(AccountKey, Option<ActionRecord>), tokio::task::JoinError>,
) -> Option<(AccountKey, Option<ActionRecord>)> {
    result
        .inspect_err(|error| tracing::error!(error = %error, "An action task panicked."))
        .ok()
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use palworker_core::{ActionId, EventSeq, Op};
    use palworker_events::{DesiredLink, EmployeeId, EventType, ObjectId, TenantId};

    use super::*;
    use crate::clock::ManualClock;

    fn claimed() -> ActionRecord {
        let at = Utc.timestamp_millis_opt(1_800_000_000_000).unwrap();
        ActionRecord {
            action_id: ActionId::new(7),
            event_seq: EventSeq::new(3),
            event_id: "e".into(),
            event_source: "urn:test".into(),
            event_type: EventType::AssignmentEnded,
            tenant_id: TenantId::parse("11111111-1111-4111-8111-111111111111").unwrap(),
            object_id: ObjectId::parse("22222222-2222-4222-8222-222222222222").unwrap(),
            employee_id: EmployeeId::parse("E-1").unwrap(),
            credential: None,
            contract_id: None,
            op: Op::Remove,
            desired: DesiredLink::Absent,
            state: ActionState::InFlight,
            attempts: 1,
            last_error: None,
            created_at: at,
            updated_at: at,
            not_before: None,
            next_attempt_at: None,
            first_attempt_at: Some(at),
            before_partner_id: None,
            after_partner_id: None,
            dry_run: false,
            detail: None,
            completed_at: None,
            verified_at: None,
        }
    }

    #[tokio::test]
    async fn a_panicking_attempt_ends_the_action_failed_as_internal() {
        let clock = ManualClock::new(Utc.timestamp_millis_opt(1_800_000_060_000).unwrap());
        let outcome = guarded(claimed(), &clock, async { panic!("index out of bounds") })
            .await
            .expect("an outcome to record");
        assert_eq!(outcome.state, ActionState::Failed);
        assert_eq!(
            outcome.last_error.as_deref(),
            Some("internal: index out of bounds")
        );
        assert_eq!(outcome.completed_at, Some(clock.now()));
        let fine = guarded(claimed(), &clock, async { None }).await;
        assert!(fine.is_none(), "an attempt that returns is left as it is");
    }
}
