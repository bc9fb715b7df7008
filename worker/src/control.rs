//! The running executor's controls: wake it, pause it. A module of their
//! own so that what holds them (the intake, the operators, the ledger's
//! availability) does not depend on the executor.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

/// The running executor's controls, shared with the intake and the operator
/// commands: wake it (a new plan, an approval, a retry), or pause it — a
/// paused executor claims nothing; actions stay pending in the ledger and
/// run once it is resumed, and what is in flight finishes. (The benchmarks
/// measure ingest alone this way; the operators' pause of SPEC §11.2 builds
/// on it.)
#[derive(Clone, Default)]
pub struct ExecutorControl {
    wake: Arc<Notify>,
    paused: Arc<AtomicBool>,
}

impl ExecutorControl {
    /// Makes the executor look for due actions now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// From now on, claims nothing.
    pub fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
    }

    /// Claims again, at once.
    pub fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
        self.wake();
    }

    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    pub(crate) async fn notified(&self) {
        self.wake.notified().await
    }
}
