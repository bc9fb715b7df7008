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

/// The ledger's counts, read when the worker starts.
pub struct LedgerGauges {
    pub pending_actions: u64,
    pub held_plans: u64,
    pub open_events: u64,
    pub size_bytes: u64,
}

impl LedgerGauges {
    pub fn emit(&self, metrics: &Metrics) {
        tracing::info!(
            pending_actions = self.pending_actions,
            held_plans = self.held_plans,
            open_events = self.open_events,
            size_bytes = self.size_bytes,
            "Ledger opened."
        );
        metrics.actions_pending.set(self.pending_actions as i64);
        metrics.held_plans.set(self.held_plans as i64);
        metrics.events_in_flight.set(self.open_events as i64);
        metrics.ledger_size_bytes.set(self.size_bytes as f64);
    }
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
