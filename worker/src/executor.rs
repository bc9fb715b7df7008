//! The executor: runs due actions against PAL, at most `limits.concurrency` at
//! a time, one at a time per account, at most `ceil(limits.per_tenant_rps)`
//! per tenant (so a tenant queueing behind its rate limit never holds every
//! slot), and records every outcome in the ledger.
//!
//! Architecture invariant: the executor never holds more than
//! `limits.concurrency` actions in memory; everything else waits in the
//! ledger's `due` tree, ordered by due time.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use palworker_config::RetrySettings;
use palworker_events::{AccountKey, DesiredLink};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::clock::Clock;
use crate::ledger::{ActionRecord, ActionState, Completion, Ledger, Rescheduled};
use crate::pal::{AccessToken, PalClient, PalError, check_identity};
use crate::retry::{self, RetryDecision};
use crate::telemetry::{
    ActionFinished, ActionRetryScheduled, EventCompleted, Metrics, RetryReason,
};

/// How the executor behaves.
#[derive(Debug, Clone)]
pub struct ExecutorSettings {
    pub concurrency: usize,
    /// At most this many actions of one tenant in flight at once, so that a
    /// tenant whose requests wait on its rate limit (`limits.per_tenant_rps`)
    /// never occupies every slot and stalls the other tenants.
    pub per_tenant_concurrency: usize,
    pub retry: RetrySettings,
    pub dry_run: bool,
    /// How long a shutdown waits for in-flight actions before leaving them to
    /// the next start (they are recovered from the ledger).
    pub shutdown_grace: Duration,
}

/// Shared handle to wake the executor (new plan stored, approval, retry).
#[derive(Clone, Default)]
pub struct ExecutorWake(Arc<Notify>);

impl ExecutorWake {
    pub fn wake(&self) {
        self.0.notify_one();
    }

    async fn notified(&self) {
        self.0.notified().await
    }
}

pub struct Executor {
    ledger: Arc<Ledger>,
    pal: PalClient,
    metrics: Metrics,
    clock: Arc<dyn Clock>,
    settings: ExecutorSettings,
    wake: ExecutorWake,
    /// When set, nothing is claimed (the benchmark measures ingest alone).
    paused: Arc<std::sync::atomic::AtomicBool>,
    /// Outcomes on their way to the ledger: see [`Finisher`].
    finishing: mpsc::UnboundedSender<Finishing>,
    finisher: Mutex<Option<Finisher>>,
}

/// An outcome to record, and where to say that it is recorded.
type Finishing = (
    ActionRecord,
    oneshot::Sender<Result<Completion, crate::ledger::LedgerError>>,
);

/// Group commit of outcomes: every sled transaction writes (and syncs) its
/// own log buffer, so the outcomes that arrive while one transaction commits
/// are recorded together in the next. A task keeps its slot and its account
/// until its outcome is recorded.
struct Finisher {
    ledger: Arc<Ledger>,
    queue: mpsc::UnboundedReceiver<Finishing>,
}

impl Finisher {
    async fn run(mut self) {
        let mut batch = Vec::new();
        while self.queue.recv_many(&mut batch, usize::MAX).await > 0 {
            let (records, replies): (Vec<ActionRecord>, Vec<_>) = batch.drain(..).unzip();
            match self.ledger.finish_many(&records) {
                Ok(completions) => {
                    for (reply, completion) in replies.into_iter().zip(completions) {
                        let _ = reply.send(Ok(completion));
                    }
                }
                // One at a time, so that each outcome meets its own error
                // (and one bad record does not fail the others).
                Err(_) => {
                    for (reply, record) in replies.into_iter().zip(&records) {
                        let _ = reply.send(self.ledger.finish(record));
                    }
                }
            }
        }
    }
}

/// How one attempt ended.
enum Attempt {
    Terminal {
        state: ActionState,
        before: Option<String>,
        after: Option<String>,
        detail: Option<String>,
        error: Option<String>,
    },
    Retry(PalError),
}

impl Executor {
    pub fn new(
        ledger: Arc<Ledger>,
        pal: PalClient,
        metrics: Metrics,
        clock: Arc<dyn Clock>,
        settings: ExecutorSettings,
        wake: ExecutorWake,
    ) -> Self {
        let (finishing, queue) = mpsc::unbounded_channel();
        let finisher = Finisher {
            ledger: ledger.clone(),
            queue,
        };
        Executor {
            ledger,
            pal,
            metrics,
            clock,
            settings,
            wake,
            paused: Arc::default(),
            finishing,
            finisher: Mutex::new(Some(finisher)),
        }
    }

    pub fn pause_handle(&self) -> Arc<std::sync::atomic::AtomicBool> {
        self.paused.clone()
    }

    /// Runs until `shutdown` is cancelled, then lets in-flight actions finish
    /// within the grace period; those still running are left in flight in the
    /// ledger and resumed by the next start.
    pub async fn run(self, shutdown: CancellationToken) {
        // Ends when the last sender, held by `this`, is dropped at the end.
        if let Some(finisher) = self.finisher.lock().expect("finisher lock").take() {
            tokio::spawn(finisher.run());
        }
        let this = Arc::new(self);
        let busy: Arc<Mutex<HashSet<AccountKey>>> = Arc::default();
        let mut tasks: JoinSet<AccountKey> = JoinSet::new();
        let concurrency = this.settings.concurrency.max(1);
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            let paused = this.paused.load(std::sync::atomic::Ordering::Relaxed)
                || this.ledger.is_storing_large_plan();
            let free = concurrency.saturating_sub(tasks.len());
            if free > 0 && !paused {
                let now = this.clock.now();
                let candidates = {
                    let busy = busy.lock().expect("busy lock");
                    let cap = this.settings.per_tenant_concurrency.max(1);
                    let mut in_flight: HashMap<String, usize> = HashMap::new();
                    for key in busy.iter() {
                        *in_flight
                            .entry(key.tenant_id.as_str().to_owned())
                            .or_default() += 1;
                    }
                    // Counts the candidates taken so far as well as the running actions.
                    let in_flight = RefCell::new(in_flight);
                    this.ledger.due_actions_in(
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
                };
                match candidates {
                    Ok(candidates) => {
                        let mut keys = Vec::with_capacity(candidates.len());
                        let mut ids = Vec::with_capacity(candidates.len());
                        {
                            let mut busy = busy.lock().expect("busy lock");
                            for candidate in candidates {
                                let key = candidate.account_key();
                                if busy.insert(key.clone()) {
                                    keys.push(key);
                                    ids.push(candidate.action_id);
                                }
                            }
                        }
                        // One transaction claims every slot this scan fills.
                        match this.ledger.claim_many(&ids, now) {
                            Ok(claimed) => {
                                for (key, action) in keys.into_iter().zip(claimed) {
                                    let Some(action) = action else {
                                        busy.lock().expect("busy lock").remove(&key);
                                        continue;
                                    };
                                    let this = this.clone();
                                    let span = tracing::info_span!(
                                        "action",
                                        action_id = action.action_id,
                                        event_id = %action.event_id,
                                        tenant_id = %action.tenant_id,
                                        employee_id = %action.employee_id,
                                    );
                                    tasks.spawn(
                                        async move {
                                            this.run_action(action).await;
                                            key
                                        }
                                        .instrument(span),
                                    );
                                }
                            }
                            Err(error) => {
                                let mut busy = busy.lock().expect("busy lock");
                                for key in &keys {
                                    busy.remove(key);
                                }
                                tracing::error!(error = %error, "Claiming actions failed.");
                            }
                        }
                    }
                    Err(error) => tracing::error!(error = %error, "Reading due actions failed."),
                }
            }
            let wait = this.idle_wait(&tasks, concurrency);
            tokio::select! {
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    // Every task that has finished by now, so that one scan of
                    // the due schedule refills all their slots.
                    let mut done = Some(done);
                    while let Some(result) = done.take().or_else(|| tasks.try_join_next()) {
                        match result {
                            Ok(key) => { busy.lock().expect("busy lock").remove(&key); }
                            Err(error) => tracing::error!(error = %error, "An action task panicked."),
                        }
                    }
                }
                _ = this.wake.notified() => {}
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
                while tasks.join_next().await.is_some() {}
            })
            .await;
            if drained.is_err() {
                tracing::warn!(
                    in_flight = tasks.len(),
                    "Grace period over; the remaining in-flight actions resume at the next start."
                );
                tasks.abort_all();
                while tasks.join_next().await.is_some() {}
            }
        }
    }

    /// How long to wait when nothing more can be started right now.
    fn idle_wait(&self, tasks: &JoinSet<AccountKey>, concurrency: usize) -> Duration {
        const MAX_IDLE: Duration = Duration::from_secs(1);
        if tasks.len() >= concurrency {
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
                    if tasks.is_empty() {
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

    async fn run_action(&self, mut action: ActionRecord) {
        let attempt = self.attempt(&action).await;
        let now = self.clock.now();
        action.updated_at = now;
        match attempt {
            Attempt::Terminal {
                state,
                before,
                after,
                detail,
                error,
            } => {
                action.state = state;
                action.before_partner_id =
                    before.and_then(|p| palworker_events::PartnerId::parse(&p).ok());
                action.after_partner_id =
                    after.and_then(|p| palworker_events::PartnerId::parse(&p).ok());
                action.detail = detail;
                if error.is_some() {
                    action.last_error = error;
                }
                action.next_attempt_at = None;
                action.completed_at = Some(now);
                action.dry_run = self.settings.dry_run;
                self.finish(action).await;
            }
            Attempt::Retry(error) => {
                let PalError::Transient {
                    reason,
                    retry_after,
                    budget,
                    message,
                } = &error
                else {
                    unreachable!("only transient errors are retried")
                };
                let decision = retry::decide(
                    &self.settings.retry,
                    action.attempts,
                    *retry_after,
                    rand::random::<f64>(),
                    action.first_attempt_at.unwrap_or(now),
                    now,
                    *budget,
                );
                action.last_error = Some(message.clone());
                match decision {
                    RetryDecision::RetryAt(at) => {
                        action.state = ActionState::Scheduled;
                        action.next_attempt_at = Some(at);
                        let delay = (at - now).to_std().unwrap_or_default();
                        match self.ledger.reschedule(&action) {
                            Ok(Rescheduled::Scheduled) => {}
                            Ok(Rescheduled::Superseded(completion)) => {
                                self.report(*completion);
                                return;
                            }
                            Err(e) => {
                                tracing::error!(error = %e, "Recording a retry failed; the action resumes at the next start.");
                                return;
                            }
                        }
                        ActionRetryScheduled {
                            action_id: action.action_id,
                            event_id: &action.event_id,
                            tenant_id: action.tenant_id.as_str(),
                            employee_id: action.employee_id.as_str(),
                            reason: *reason,
                            attempts: action.attempts,
                            delay,
                            error: message,
                        }
                        .emit(&self.metrics);
                    }
                    RetryDecision::GiveUp => {
                        action.state = ActionState::Failed;
                        action.last_error = Some(format!(
                            "retry budget exhausted after {} attempts; last error: {message}",
                            action.attempts
                        ));
                        action.next_attempt_at = None;
                        action.completed_at = Some(now);
                        self.finish(action).await;
                    }
                }
            }
        }
    }

    async fn finish(&self, action: ActionRecord) {
        let (reply, recorded) = oneshot::channel();
        let recorded = match self.finishing.send((action, reply)) {
            Ok(()) => recorded.await,
            // Not running (never, while a task runs): record it directly.
            Err(mpsc::error::SendError((action, _))) => Ok(self.ledger.finish(&action)),
        };
        let recorded = recorded.unwrap_or_else(|_| {
            Err(crate::ledger::LedgerError::Rejected(
                "the executor stopped before the outcome was recorded".into(),
            ))
        });
        match recorded {
            Ok(completion) => self.report(completion),
            Err(error) => {
                tracing::error!(error = %error, "Recording an action outcome failed; it resumes at the next start.");
            }
        }
    }

    /// Logs and counts a terminal transition recorded in the ledger.
    fn report(&self, completion: Completion) {
        ActionFinished::of(&completion.record, true).emit(&self.metrics);
        if let Some(record) = &completion.event_completed {
            EventCompleted { record }.emit(&self.metrics);
        }
    }

    /// One attempt of SPEC §5 steps 1–4.
    async fn attempt(&self, action: &ActionRecord) -> Attempt {
        let Some(credential) = action.credential.as_ref() else {
            return Attempt::Terminal {
                state: ActionState::Manual,
                before: None,
                after: None,
                detail: Some(format!(
                    "account {}/{} has no credential: only that identity can change its link — \
                     remove it signed in as that user, or disable the identity",
                    action.tenant_id, action.object_id
                )),
                error: None,
            };
        };
        match self.reconcile(action, credential).await {
            Ok(terminal) => terminal,
            Err(error @ PalError::Transient { .. }) => Attempt::Retry(error),
            Err(PalError::Permanent { code, message }) => Attempt::Terminal {
                state: ActionState::Failed,
                before: None,
                after: None,
                detail: None,
                error: Some(if message.starts_with(&code) {
                    message
                } else {
                    format!("{code}: {message}")
                }),
            },
        }
    }

    async fn reconcile(
        &self,
        action: &ActionRecord,
        credential: &palworker_events::CredentialName,
    ) -> Result<Attempt, PalError> {
        let tenant = &action.tenant_id;
        let object = &action.object_id;
        let mut token = self.pal.token(credential, tenant).await?;
        check_identity(&token, None, tenant, object)?;
        let mut refreshed = false;

        let link = loop {
            match self.pal.get_link(&token).await {
                Err(e) if is_unauthorized(&e) => {
                    token = self.refresh(credential, action, &mut refreshed, e).await?;
                }
                other => break other?,
            }
        };
        check_identity(&token, link.as_ref(), tenant, object)?;
        let current = link
            .filter(|l| l.state.as_deref() != Some("Deleted"))
            .map(|l| l.partner_id);

        enum Write<'a> {
            Delete(String),
            Patch(&'a palworker_events::PartnerId),
            Put(&'a palworker_events::PartnerId),
        }
        let write = match (&action.desired, &current) {
            (DesiredLink::Absent, None) => None,
            (DesiredLink::Absent, Some(existing)) => Some(Write::Delete(existing.clone())),
            (DesiredLink::Linked(p), Some(existing)) if existing == p.as_str() => None,
            (DesiredLink::Linked(p), Some(_)) => Some(Write::Patch(p)),
            (DesiredLink::Linked(p), None) => Some(Write::Put(p)),
        };
        let desired = action.desired.partner_id().map(|p| p.as_str().to_owned());
        let Some(write) = write else {
            return Ok(Attempt::Terminal {
                state: ActionState::Noop,
                before: current.clone(),
                after: current,
                detail: None,
                error: None,
            });
        };
        let verb = match &write {
            Write::Delete(p) => format!("DELETE {p}"),
            Write::Patch(p) => format!("PATCH {p}"),
            Write::Put(p) => format!("PUT {p}"),
        };
        if self.settings.dry_run {
            return Ok(Attempt::Terminal {
                state: ActionState::Done,
                before: current,
                after: desired,
                detail: Some(format!("dry run: would {verb}; nothing was written")),
                error: None,
            });
        }
        // Checkpoint: a later event may have superseded this action while it read PAL.
        match self.ledger.is_current(action) {
            Ok(true) => {}
            Ok(false) => {
                return Ok(Attempt::Terminal {
                    state: ActionState::Cancelled,
                    before: current.clone(),
                    after: current,
                    detail: Some("superseded by a later event for the same account".into()),
                    error: None,
                });
            }
            Err(error) => {
                return Err(PalError::Permanent {
                    code: "ledger".into(),
                    message: error.to_string(),
                });
            }
        }
        loop {
            let result = match &write {
                Write::Delete(p) => self
                    .pal
                    .delete_link(&token, p)
                    .await
                    .map(|removed| (removed, None)),
                Write::Patch(p) => self.pal.patch_link(&token, p).await.map(|l| (true, l)),
                Write::Put(p) => self.pal.put_link(&token, p).await.map(|l| (true, l)),
            };
            match result {
                Err(e) if is_unauthorized(&e) => {
                    token = self.refresh(credential, action, &mut refreshed, e).await?;
                }
                Err(e) => return Err(e),
                Ok((changed, link)) => {
                    if let Some(link) = &link {
                        check_identity(&token, Some(link), tenant, object)?;
                    }
                    return Ok(Attempt::Terminal {
                        state: if changed {
                            ActionState::Done
                        } else {
                            ActionState::Noop
                        },
                        before: current,
                        after: desired,
                        detail: Some(verb),
                        error: None,
                    });
                }
            }
        }
    }

    /// After a 401: drop the cached token and fetch a new one, once per attempt.
    async fn refresh(
        &self,
        credential: &palworker_events::CredentialName,
        action: &ActionRecord,
        refreshed: &mut bool,
        error: PalError,
    ) -> Result<AccessToken, PalError> {
        if *refreshed {
            return Err(PalError::Permanent {
                code: "unauthorized".into(),
                message: format!("still unauthorized after refreshing the token: {error}"),
            });
        }
        *refreshed = true;
        self.metrics
            .action_retries_total
            .with_label_values(&[RetryReason::Unauthorized.as_str()])
            .inc();
        self.pal.invalidate(credential, &action.tenant_id);
        let token = self.pal.token(credential, &action.tenant_id).await?;
        check_identity(&token, None, &action.tenant_id, &action.object_id)?;
        Ok(token)
    }
}

fn is_unauthorized(error: &PalError) -> bool {
    matches!(
        error,
        PalError::Transient {
            reason: RetryReason::Unauthorized,
            ..
        }
    )
}
