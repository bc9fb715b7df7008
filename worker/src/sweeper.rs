//! The retention sweeper (SPEC §11.2): runs at least every
//! `ledger.retention / 2` and at least hourly, and prunes what ended longer
//! than `ledger.retention` ago in bounded steps, each its own blocking task,
//! so the intake and the executor never wait behind more than one step.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::availability::LedgerAvailability;
use crate::clock::Clock;
use crate::ledger::{Ledger, Retention, SweepCursor, Swept};
use crate::telemetry::{LedgerSwept, Metrics};

/// Records one step removes at most.
pub const STEP: usize = 256;

/// The longest pause between two sweeps.
const AT_LEAST_HOURLY: Duration = Duration::from_secs(3600);

/// How often to sweep for `retention`: half of it, at most an hour, at
/// least a second.
pub fn interval(retention: &Retention) -> Duration {
    (retention.records / 2)
        .to_std()
        .unwrap_or(AT_LEAST_HOURLY)
        .clamp(Duration::from_secs(1), AT_LEAST_HOURLY)
}

/// Sweeps every [`interval`] until `shutdown`.
pub async fn run(
    ledger: Arc<Ledger>,
    availability: LedgerAvailability,
    retention: Retention,
    clock: Arc<dyn Clock>,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let every = interval(&retention);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => return,
        }
        if !availability.is_available() {
            continue;
        }
        let mut cursor = SweepCursor::default();
        let mut total = Swept::default();
        let now = clock.now();
        while !cursor.is_done() && !shutdown.is_cancelled() {
            let sweeping = ledger.clone();
            let step = tokio::task::spawn_blocking(move || {
                let swept = sweeping.sweep(now, retention, STEP, &mut cursor);
                (swept, cursor)
            })
            .await;
            let (swept, next) = match step {
                Ok(step) => step,
                Err(panicked) => {
                    tracing::warn!(error = %panicked, "A retention step failed.");
                    break;
                }
            };
            cursor = next;
            match swept {
                Ok(swept) => total.add(swept),
                Err(error) => {
                    if !availability.report(&error) {
                        tracing::warn!(error = %error, "A retention step failed; the next sweep tries again.");
                    }
                    break;
                }
            }
        }
        LedgerSwept {
            events: total.events,
            actions: total.actions,
            markers: total.markers,
            audit: total.audit,
        }
        .emit(&metrics);
    }
}
