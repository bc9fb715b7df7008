//! Happenings of the worker's surroundings: the broker connection and the
//! ledger's size and counts.

use super::Metrics;

/// The broker connection came up, or went down and is being reopened.
pub enum BrokerConnectionChanged<'a> {
    Up,
    Down { detail: &'a str },
}

impl BrokerConnectionChanged<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        match self {
            BrokerConnectionChanged::Up => {
                tracing::info!("Connected to the broker; consuming.");
                metrics.amqp_connected.set(1);
            }
            BrokerConnectionChanged::Down { detail } => {
                tracing::warn!(error = %detail, "Broker connection lost; reconnecting with backoff.");
                metrics.amqp_connected.set(0);
            }
        }
    }
}

/// The consumer stopped: shutting down, or its session ended (the
/// reconnect loop reports why, if it is to be reopened).
pub struct ConsumerStopped;

impl ConsumerStopped {
    pub fn emit(&self, metrics: &Metrics) {
        tracing::debug!("Not consuming.");
        metrics.amqp_connected.set(0);
    }
}

/// The ledger's counts, read when it is opened and every few seconds after
/// (they set the gauges the happenings keep up to date in between, so a
/// scheduled action whose `effective_at` passed counts as pending).
pub struct LedgerGauges {
    /// Non-terminal, non-held actions (scheduled ones included).
    pub open_actions: u64,
    /// Of those, the ones waiting for a future `effective_at`.
    pub scheduled_actions: u64,
    pub held_plans: u64,
    pub open_events: u64,
    pub size_bytes: u64,
    /// Free space of the ledger's file system, when it could be read.
    pub disk_free_bytes: Option<u64>,
    /// How long the removal open longest has been due (zero: none open).
    pub oldest_open_removal: std::time::Duration,
    /// Results owed to the publishers, not yet confirmed.
    pub results_pending: u64,
}

impl LedgerGauges {
    /// Sets the gauges and logs them (`opened`: at `info`, as the ledger is
    /// opened; otherwise quietly).
    pub fn emit(&self, metrics: &Metrics, opened: LedgerGaugesRead) {
        let pending = self.open_actions.saturating_sub(self.scheduled_actions);
        if opened == LedgerGaugesRead::AtOpen {
            tracing::info!(
                pending_actions = pending,
                scheduled_actions = self.scheduled_actions,
                held_plans = self.held_plans,
                open_events = self.open_events,
                size_bytes = self.size_bytes,
                disk_free_bytes = self.disk_free_bytes,
                "Ledger opened."
            );
        }
        metrics.actions_pending.set(pending as i64);
        metrics.actions_scheduled.set(self.scheduled_actions as i64);
        metrics.held_plans.set(self.held_plans as i64);
        metrics.events_in_flight.set(self.open_events as i64);
        metrics.ledger_size_bytes.set(self.size_bytes as f64);
        if let Some(free) = self.disk_free_bytes {
            metrics.ledger_disk_free_bytes.set(free as f64);
        }
        metrics
            .oldest_open_removal_seconds
            .set(self.oldest_open_removal.as_secs_f64());
        metrics.results_pending.set(self.results_pending as i64);
    }
}

/// When [`LedgerGauges`] were read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerGaugesRead {
    AtOpen,
    Periodically,
}

/// The ledger's size on disk, measured for a scrape.
pub struct LedgerSizeMeasured {
    pub bytes: u64,
}

impl LedgerSizeMeasured {
    pub fn emit(&self, metrics: &Metrics) {
        metrics.ledger_size_bytes.set(self.bytes as f64);
    }
}

/// A ledger write or flush failed underneath: the worker stops taking
/// deliveries and claiming actions until the ledger is reopened.
pub struct LedgerUnavailable<'a> {
    pub reason: &'a str,
}

impl LedgerUnavailable<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        tracing::error!(
            error = %self.reason,
            "The ledger cannot be written: taking no deliveries and claiming no actions until it is reopened."
        );
        metrics.ledger_available.set(0);
        metrics.ledger_errors_total.inc();
    }
}

/// An attempt to reopen the ledger failed; the next one follows after `retry_in`.
pub struct LedgerReopenFailed<'a> {
    pub attempt: u32,
    pub error: &'a str,
    pub retry_in: std::time::Duration,
}

impl LedgerReopenFailed<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        tracing::warn!(
            attempt = self.attempt,
            error = %self.error,
            retry_in_ms = self.retry_in.as_millis() as u64,
            "Reopening the ledger failed; trying again."
        );
        metrics.ledger_errors_total.inc();
    }
}

/// The ledger was reopened and a probe write flushed: work resumes.
pub struct LedgerRecovered {
    pub attempts: u32,
}

impl LedgerRecovered {
    pub fn emit(&self, metrics: &Metrics) {
        tracing::info!(
            attempts = self.attempts,
            "The ledger is writable again; resuming deliveries and actions."
        );
        metrics.ledger_available.set(1);
    }
}

/// One of the worker's loops (consumer, executor, ledger keeper) ended
/// while the worker was meant to run: `/healthz` answers 503 from now on,
/// so the orchestrator restarts the process.
pub struct LoopEnded<'a> {
    pub name: &'a str,
    pub detail: &'a str,
}

impl LoopEnded<'_> {
    pub fn emit(&self, _metrics: &Metrics) {
        tracing::error!(
            task = self.name,
            error = %self.detail,
            "A worker loop ended unexpectedly; /healthz now answers 503."
        );
    }
}

/// A retention sweep removed what ended long ago: how many of each.
pub struct LedgerSwept {
    pub events: u64,
    pub actions: u64,
    pub markers: u64,
    pub audit: u64,
}

impl LedgerSwept {
    pub fn emit(&self, metrics: &Metrics) {
        let counts = [
            ("event", self.events),
            ("action", self.actions),
            ("marker", self.markers),
            ("audit", self.audit),
        ];
        if counts.iter().all(|(_, n)| *n == 0) {
            return;
        }
        tracing::info!(
            events = self.events,
            actions = self.actions,
            markers = self.markers,
            audit = self.audit,
            "Retention: removed what ended longer ago than ledger.retention (audit records: audit.retention)."
        );
        for (kind, n) in counts {
            metrics
                .ledger_pruned_total
                .with_label_values(&[kind])
                .inc_by(n);
        }
    }
}

/// Writes to PAL are paused: nothing is claimed, actions stay pending.
pub struct WritesPaused<'a> {
    /// Who or what paused them.
    pub by: &'a str,
}

impl WritesPaused<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        tracing::warn!(
            by = %self.by,
            "Writes to PAL are paused: events are accepted and planned, no action runs until `palworker resume`."
        );
        metrics.paused.set(1);
    }
}

/// Writes to PAL resumed.
pub struct WritesResumed<'a> {
    pub by: &'a str,
}

impl WritesResumed<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        tracing::info!(by = %self.by, "Writes to PAL resumed.");
        metrics.paused.set(0);
    }
}
