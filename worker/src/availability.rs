//! Whether the ledger can be written, and how the worker gets it back after
//! a storage failure (SPEC §11.1).
//!
//! A write or flush that fails underneath (disk full, I/O error) is
//! [`LedgerAvailability::report`]ed by whoever met it. From then on the
//! consumer takes no deliveries (its session ends; the un-acked deliveries
//! return to the queue once), the executor claims nothing, `/readyz` answers
//! 503 with the reason and `palworker_ledger_available` is 0. [`keep`] closes
//! and reopens the ledger with backoff (1 s doubling to 30 s, one log line per
//! attempt) until a probe write is flushed, then everything resumes by
//! itself. Nothing accepted before is lost — an event is acked only after its
//! flush — and nothing is dead-lettered because of it.

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::control::ExecutorControl;
use crate::ledger::{Ledger, LedgerError};
use crate::telemetry::{
    LedgerGauges, LedgerGaugesRead, LedgerRecovered, LedgerReopenFailed, LedgerUnavailable, Metrics,
};

/// The first wait before reopening, doubled after each failed attempt.
const REOPEN_FIRST: Duration = Duration::from_secs(1);
/// The longest wait between two attempts.
const REOPEN_MAX: Duration = Duration::from_secs(30);

/// Whether the ledger can be written; shared by the consumer, the executor,
/// `/readyz` and [`keep`]. Cheap to clone.
#[derive(Clone)]
pub struct LedgerAvailability {
    state: Arc<watch::Sender<Option<String>>>,
    metrics: Metrics,
}

impl LedgerAvailability {
    /// Available.
    pub fn new(metrics: Metrics) -> Self {
        LedgerAvailability {
            state: Arc::new(watch::Sender::new(None)),
            metrics,
        }
    }

    /// Whether the ledger can be written.
    pub fn is_available(&self) -> bool {
        self.state.borrow().is_none()
    }

    /// Why it cannot, when it cannot.
    pub fn reason(&self) -> Option<String> {
        self.state.borrow().clone()
    }

    /// Records `error` when it is a storage failure (the ledger then counts
    /// as unavailable until [`keep`] reopens it); returns whether it was.
    pub fn report(&self, error: &LedgerError) -> bool {
        if !error.is_storage_failure() {
            return false;
        }
        let reason = error.to_string();
        let first = self.state.send_if_modified(|state| {
            if state.is_some() {
                return false;
            }
            *state = Some(reason.clone());
            true
        });
        if first {
            LedgerUnavailable { reason: &reason }.emit(&self.metrics);
        }
        true
    }

    /// Resolves once the ledger is available (at once if it is).
    pub async fn available(&self) {
        let mut state = self.state.subscribe();
        let _ = state.wait_for(Option::is_none).await;
    }

    /// Resolves once the ledger is unavailable (at once if it is).
    async fn unavailable(&self) {
        let mut state = self.state.subscribe();
        let _ = state.wait_for(Option::is_some).await;
    }

    fn set_available(&self) {
        self.state.send_replace(None);
    }
}

/// Keeps the ledger available: whenever it becomes unavailable, reopens it
/// with backoff until a probe write is flushed; then reports the ledger's
/// counts again (actions that were in flight are pending again) and wakes
/// the executor. Runs until `shutdown`.
pub async fn keep(
    ledger: Arc<Ledger>,
    availability: LedgerAvailability,
    executor: ExecutorControl,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = availability.unavailable() => {}
            _ = shutdown.cancelled() => return,
        }
        let mut delays = ExponentialBuilder::new()
            .with_min_delay(REOPEN_FIRST)
            .with_max_delay(REOPEN_MAX)
            .with_factor(2.0)
            .without_max_times()
            .build();
        let mut attempt = 0u32;
        let mut delay = delays.next().unwrap_or(REOPEN_MAX);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.cancelled() => return,
            }
            attempt += 1;
            let reopening = ledger.clone();
            let reopened = tokio::task::spawn_blocking(move || {
                reopening.reopen()?;
                read_gauges(&reopening, chrono::Utc::now())
            })
            .await;
            let error = match reopened {
                Ok(Ok(gauges)) => {
                    gauges.emit(&availability.metrics, LedgerGaugesRead::Periodically);
                    LedgerRecovered { attempts: attempt }.emit(&availability.metrics);
                    availability.set_available();
                    executor.wake();
                    break;
                }
                Ok(Err(error)) => error.to_string(),
                Err(panicked) => panicked.to_string(),
            };
            delay = delays.next().unwrap_or(REOPEN_MAX);
            LedgerReopenFailed {
                attempt,
                error: &error,
                retry_in: delay,
            }
            .emit(&availability.metrics);
        }
    }
}

/// The ledger's counts, as of `now`. Blocking.
pub fn read_gauges(
    ledger: &Ledger,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<LedgerGauges, LedgerError> {
    let open = ledger.open_work(now)?;
    Ok(LedgerGauges {
        open_actions: ledger.pending_count(),
        scheduled_actions: open.scheduled,
        held_plans: ledger.held_plan_count(),
        open_events: ledger.open_event_count()?,
        size_bytes: ledger.size_on_disk(),
        disk_free_bytes: ledger.disk_free(),
        oldest_open_removal: open
            .oldest_open_removal_due
            .and_then(|due| (now - due).to_std().ok())
            .unwrap_or_default(),
        results_pending: ledger.pending_result_count(),
    })
}

/// How often the gauges are read again from the ledger.
const GAUGES_EVERY: Duration = Duration::from_secs(15);

/// Sets the ledger's gauges from the ledger every [`GAUGES_EVERY`] while it
/// is available: the happenings keep them current in between, and this puts
/// a scheduled action whose `effective_at` passed among the pending ones and
/// reports the ledger's size and free disk, the oldest open removal's age
/// and the results not yet published. Runs until `shutdown`.
pub async fn refresh_gauges(
    ledger: Arc<Ledger>,
    availability: LedgerAvailability,
    clock: Arc<dyn crate::clock::Clock>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(GAUGES_EVERY) => {}
            _ = shutdown.cancelled() => return,
        }
        if !availability.is_available() {
            continue;
        }
        let reading = ledger.clone();
        let now = clock.now();
        match tokio::task::spawn_blocking(move || read_gauges(&reading, now)).await {
            Ok(Ok(gauges)) => gauges.emit(&availability.metrics, LedgerGaugesRead::Periodically),
            Ok(Err(error)) => {
                availability.report(&error);
            }
            Err(panicked) => {
                tracing::warn!(error = %panicked, "Reading the ledger's gauges failed.")
            }
        }
    }
}
