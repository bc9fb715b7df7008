//! The periodic reconcile (`reconcile.interval`, SPEC §11.3): every account
//! of the inventory, as the worker itself (`palworker` in the audit trail),
//! the first run one interval after start. `0s` turns it off. It also runs
//! while writes are paused: reading PAL is not writing, and the plan waits
//! like any other until `palworker resume`.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{ReconcileError, ReconcileRequest, Reconciler};
use crate::availability::LedgerAvailability;
use crate::ledger::WORKER;
use crate::telemetry::ReconcileFailed;

/// Findings queued between the run and the task that drops them (the
/// report and the log carry the counts).
const FINDINGS_QUEUE: usize = 64;

/// Reconciles every `interval` until `shutdown` (with `interval` zero,
/// only waits for it: the loop must not end early, see `Health::supervise`).
pub async fn run(
    reconciler: Reconciler,
    interval: Duration,
    availability: LedgerAvailability,
    shutdown: CancellationToken,
) {
    if interval.is_zero() {
        shutdown.cancelled().await;
        return;
    }
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.cancelled() => return,
        }
        if !availability.is_available() {
            continue;
        }
        let (found, mut findings) = mpsc::channel(FINDINGS_QUEUE);
        let run = async {
            let report = reconciler
                .run(&ReconcileRequest::default(), WORKER, &found)
                .await;
            drop(found);
            report
        };
        let drain = async { while findings.recv().await.is_some() {} };
        let outcome = tokio::select! {
            (outcome, ()) = async { tokio::join!(run, drain) } => outcome,
            _ = shutdown.cancelled() => return,
        };
        match outcome {
            Ok(_) => {}
            Err(ReconcileError::Ledger(error)) if availability.report(&error) => {}
            Err(error) => ReconcileFailed {
                by: WORKER,
                error: &error,
            }
            .emit(&reconciler.inner.metrics),
        }
    }
}
