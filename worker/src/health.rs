//! What `/healthz` and `/readyz` answer (SPEC §9, §11.1): alive unless one
//! of the worker's loops ended while it was meant to run (the orchestrator
//! then restarts the process); ready while connected to the broker with the
//! ledger writable.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use futures::FutureExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::availability::LedgerAvailability;
use crate::telemetry::{LoopEnded, Metrics};

/// The worker's health, shared by its parts and the HTTP endpoints.
#[derive(Clone)]
pub struct Health {
    /// Set while consuming (the consumer owns it).
    pub broker_connected: Arc<AtomicBool>,
    /// Whether the ledger can be written.
    pub ledger: LedgerAvailability,
    /// The first loop that ended unexpectedly, and why.
    ended: Arc<Mutex<Option<String>>>,
    metrics: Metrics,
}

impl Health {
    pub fn new(ledger: LedgerAvailability, metrics: Metrics) -> Self {
        Health {
            broker_connected: Arc::default(),
            ledger,
            ended: Arc::default(),
            metrics,
        }
    }

    /// `Ok` while every loop runs; else which one ended and why.
    pub fn liveness(&self) -> Result<(), String> {
        match &*self.ended.lock().unwrap_or_else(PoisonError::into_inner) {
            None => Ok(()),
            Some(why) => Err(why.clone()),
        }
    }

    /// `Ok` when the worker can take deliveries; else why not.
    pub fn readiness(&self) -> Result<(), String> {
        self.liveness()?;
        if let Some(reason) = self.ledger.reason() {
            return Err(format!("ledger unavailable: {reason}"));
        }
        if !self.broker_connected.load(Ordering::SeqCst) {
            return Err("broker disconnected".into());
        }
        Ok(())
    }

    /// Records that the loop `name` ended (the first one is kept).
    pub fn loop_ended(&self, name: &str, detail: &str) {
        LoopEnded { name, detail }.emit(&self.metrics);
        let mut ended = self.ended.lock().unwrap_or_else(PoisonError::into_inner);
        ended.get_or_insert_with(|| format!("the {name} loop ended: {detail}"));
    }

    /// Spawns the loop `name`; if it returns or panics before `stop` is
    /// cancelled, the worker is no longer alive.
    pub fn supervise(
        &self,
        name: &'static str,
        stop: CancellationToken,
        work: impl Future<Output = ()> + Send + 'static,
    ) -> JoinHandle<()> {
        let health = self.clone();
        tokio::spawn(async move {
            let outcome = AssertUnwindSafe(work).catch_unwind().await;
            if stop.is_cancelled() {
                return;
            }
            let detail = match outcome {
                Ok(()) => "it returned".to_owned(),
                Err(panic) => format!("it panicked: {}", panic_message(panic.as_ref())),
            };
            health.loop_ended(name, &detail);
        })
    }
}

/// The message of a panic payload, when it has one.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|message| (*message).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_loop_that_panics_or_returns_before_its_stop_makes_the_worker_not_alive() {
        let metrics = Metrics::new();
        let health = Health::new(LedgerAvailability::new(metrics.clone()), metrics);
        let stop = CancellationToken::new();
        health
            .supervise("quiet", stop.clone(), async {})
            .await
            .unwrap();
        assert!(health.liveness().is_err(), "a loop that returned early");

        let health = Health::new(LedgerAvailability::new(Metrics::new()), Metrics::new());
        health
            .supervise("executor", CancellationToken::new(), async {
                panic!("boom")
            })
            .await
            .unwrap();
        let why = health.liveness().unwrap_err();
        assert!(why.contains("executor") && why.contains("boom"), "{why}");

        let health = Health::new(LedgerAvailability::new(Metrics::new()), Metrics::new());
        let stop = CancellationToken::new();
        stop.cancel();
        health.supervise("stopping", stop, async {}).await.unwrap();
        assert!(health.liveness().is_ok(), "ending after the stop is normal");
    }
}
