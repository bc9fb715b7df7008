//! Metrics and the notable happenings that are both logged and counted.
//!
//! One `prometheus::Registry` is built at start-up ([`Metrics::new`]) and passed
//! down. Every label value comes from a closed enum's `as_str()`, and every
//! combination of the closed label sets is exported at 0 from start-up so that
//! alerts see the series before the first increment.
//!
//! Architecture invariant: a metric changes only through a happening's
//! `emit()`, which logs and counts together, so a log line and its metric
//! cannot drift apart. [`Metrics`]' fields are private to this module; the
//! rest of the worker emits happenings and reads a few values back.
//!
//! | file | happenings of |
//! | --- | --- |
//! | `intake.rs` | deliveries: accepted, duplicate, held, dead-lettered, routed to partitions; events completed |
//! | `actions.rs` | actions: finished, retried, superseded; operators' approvals, rejections, retries; PAL requests |
//! | `system.rs` | the broker connection, the ledger's gauges |
//! | `results.rs` | results to the publishers: published, failing |
//! | `reconcile.rs` | reconciles: finished (drift found), failed |

mod actions;
mod intake;
mod reconcile;
mod results;
mod system;

pub use actions::{
    ActionFinished, ActionRetryScheduled, ActionsRequeued, ApiRequestCompleted, LinkRevoked,
    PlanApproved, PlanRejected, ScheduledActionsDue, TokenRefreshed, Verification,
    VerificationFinished, emit_superseded,
};
pub use intake::{
    EventAccepted, EventCompleted, EventDeadLettered, EventDuplicate, EventHeld, EventRouted,
    RouterStarted,
};
pub use reconcile::{ReconcileFailed, ReconcileFinished};
pub use results::{ResultKind, ResultPublished, ResultsPublishFailed};
pub use system::{
    BrokerConnectionChanged, ConsumerStopped, LedgerGauges, LedgerGaugesRead, LedgerRecovered,
    LedgerReopenFailed, LedgerSizeMeasured, LedgerSwept, LedgerUnavailable, LoopEnded,
    WritesPaused, WritesResumed,
};

use std::sync::Arc;

use palworker_core::{ActionState, EventOutcome, Op, RetryReason};
use palworker_events::{EventType, RejectReason};
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    Opts, Registry, TextEncoder,
};

/// Every metric palworker exports, registered in one registry. Cheap to
/// clone: the clones share one [`MetricSet`].
#[derive(Clone)]
pub struct Metrics(Arc<MetricSet>);

impl std::ops::Deref for Metrics {
    type Target = MetricSet;

    fn deref(&self) -> &MetricSet {
        &self.0
    }
}

/// The metrics behind [`Metrics`]; their fields are private to this module.
pub struct MetricSet {
    registry: Registry,
    events_total: IntCounterVec,
    actions_total: IntCounterVec,
    action_retries_total: IntCounterVec,
    actions_pending: IntGauge,
    api_requests_total: IntCounterVec,
    api_request_duration_seconds: HistogramVec,
    event_completion_seconds: Histogram,
    amqp_connected: IntGauge,
    dead_letters_total: IntCounterVec,
    held_plans: IntGauge,
    ledger_size_bytes: Gauge,
    events_in_flight: IntGauge,
    ledger_available: IntGauge,
    actions_scheduled: IntGauge,
    ledger_disk_free_bytes: Gauge,
    ledger_pruned_total: IntCounterVec,
    paused: IntGauge,
    verifications_total: IntCounterVec,
    ledger_errors_total: IntCounter,
    revocation_seconds: Histogram,
    oldest_open_removal_seconds: Gauge,
    results_pending: IntGauge,
    results_published_total: IntCounterVec,
    drift_total: IntCounterVec,
    routed_total: IntCounterVec,
}

/// HTTP methods palworker sends to PAL (the `method` label).
pub const API_METHODS: [&str; 4] = ["GET", "PUT", "PATCH", "DELETE"];

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let events_total = IntCounterVec::new(
            Opts::new(
                "palworker_events_total",
                "Event deliveries by type and outcome.",
            ),
            &["type", "outcome"],
        )
        .expect("valid metric");
        let actions_total = IntCounterVec::new(
            Opts::new(
                "palworker_actions_total",
                "Actions that reached a terminal state, by operation and outcome.",
            ),
            &["op", "outcome"],
        )
        .expect("valid metric");
        let action_retries_total = IntCounterVec::new(
            Opts::new(
                "palworker_action_retries_total",
                "Action attempts that were rescheduled, by reason.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let actions_pending = IntGauge::new(
            "palworker_actions_pending",
            "Actions due now or in flight (retries waiting included; those waiting for a future effective_at are palworker_actions_scheduled).",
        )
        .expect("valid metric");
        let api_requests_total = IntCounterVec::new(
            Opts::new(
                "palworker_api_requests_total",
                "HTTP requests to the PAL API by method and status code (or transport_error).",
            ),
            &["method", "status"],
        )
        .expect("valid metric");
        let api_request_duration_seconds = HistogramVec::new(
            HistogramOpts::new(
                "palworker_api_request_duration_seconds",
                "Duration of HTTP requests to the PAL API.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["method"],
        )
        .expect("valid metric");
        let event_completion_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "palworker_event_completion_seconds",
                "Time from an event's acceptance until all its actions are terminal.",
            )
            .buckets(vec![
                0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
                21600.0, 86400.0,
            ]),
        )
        .expect("valid metric");
        let amqp_connected = IntGauge::new(
            "palworker_amqp_connected",
            "1 while the worker is connected to the broker and consuming, else 0.",
        )
        .expect("valid metric");
        let dead_letters_total = IntCounterVec::new(
            Opts::new(
                "palworker_dead_letters_total",
                "Messages moved to the dead-letter queue, by reason.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let held_plans = IntGauge::new(
            "palworker_held_plans",
            "Plans held for approval (larger than limits.max_actions_per_event).",
        )
        .expect("valid metric");
        let ledger_size_bytes = Gauge::new(
            "palworker_ledger_size_bytes",
            "Size of the sled ledger on disk.",
        )
        .expect("valid metric");
        let events_in_flight = IntGauge::new(
            "palworker_events_in_flight",
            "Accepted events whose actions are not all terminal yet.",
        )
        .expect("valid metric");

        let ledger_available = IntGauge::new(
            "palworker_ledger_available",
            "1 while the ledger can be written, 0 while it is being reopened after a storage failure.",
        )
        .expect("valid metric");
        ledger_available.set(1);
        let ledger_errors_total = IntCounter::new(
            "palworker_ledger_errors_total",
            "Storage failures of the ledger: the first write or flush that failed, and each failed attempt to reopen it.",
        )
        .expect("valid metric");

        let actions_scheduled = IntGauge::new(
            "palworker_actions_scheduled",
            "Actions waiting for their event's future effective_at (not yet due).",
        )
        .expect("valid metric");
        let ledger_disk_free_bytes = Gauge::new(
            "palworker_ledger_disk_free_bytes",
            "Free space of the file system the ledger is on, for unprivileged writers.",
        )
        .expect("valid metric");

        let ledger_pruned_total = IntCounterVec::new(
            Opts::new(
                "palworker_ledger_pruned_total",
                "Records removed by retention: events, actions, deduplication markers, audit records.",
            ),
            &["kind"],
        )
        .expect("valid metric");
        for kind in ["event", "action", "marker", "audit"] {
            ledger_pruned_total.with_label_values(&[kind]);
        }

        let paused = IntGauge::new(
            "palworker_paused",
            "1 while writes to PAL are paused (palworker pause, worker.paused), else 0.",
        )
        .expect("valid metric");

        let verifications_total = IntCounterVec::new(
            Opts::new(
                "palworker_verifications_total",
                "Writes read back: confirmed, or still not as written after a few reads (mismatch).",
            ),
            &["result"],
        )
        .expect("valid metric");
        for result in actions::Verification::ALL {
            verifications_total.with_label_values(&[result.as_str()]);
        }

        let revocation_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "palworker_revocation_seconds",
                "Time to revocation: per removed link, from its event's effective_at (or acceptance) to the verified removal.",
            )
            .buckets(vec![
                1.0, 10.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 43200.0,
                86400.0, 172800.0, 259200.0, 604800.0, 1209600.0, 2592000.0,
            ]),
        )
        .expect("valid metric");
        let oldest_open_removal_seconds = Gauge::new(
            "palworker_oldest_open_removal_seconds",
            "How long the removal open longest has been due (pending, retrying or in flight; not scheduled for a future effective_at, not held); 0 when none.",
        )
        .expect("valid metric");
        let results_pending = IntGauge::new(
            "palworker_results_pending",
            "Results owed to the publishers (palworker.event.completed, palworker.action.attention) not yet confirmed by the broker.",
        )
        .expect("valid metric");
        let results_published_total = IntCounterVec::new(
            Opts::new(
                "palworker_results_published_total",
                "Results published to amqp.results_exchange and confirmed by the broker, by CloudEvent type.",
            ),
            &["type"],
        )
        .expect("valid metric");
        for kind in ResultKind::ALL {
            results_published_total.with_label_values(&[kind.as_str()]);
        }

        let routed_total = IntCounterVec::new(
            Opts::new(
                "palworker_routed_total",
                "Copies of events the router published to a partition and the broker confirmed, by partition (p0, p1, …).",
            ),
            &["partition"],
        )
        .expect("valid metric");

        let drift_total = IntCounterVec::new(
            Opts::new(
                "palworker_drift_total",
                "Differences between PAL and the desired links found by reconciles that planned their fix (not dry runs), by kind.",
            ),
            &["kind"],
        )
        .expect("valid metric");
        for kind in palworker_core::DriftKind::ALL {
            drift_total.with_label_values(&[kind.as_str()]);
        }

        for collector in [
            Box::new(events_total.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(actions_total.clone()),
            Box::new(action_retries_total.clone()),
            Box::new(actions_pending.clone()),
            Box::new(api_requests_total.clone()),
            Box::new(api_request_duration_seconds.clone()),
            Box::new(event_completion_seconds.clone()),
            Box::new(amqp_connected.clone()),
            Box::new(dead_letters_total.clone()),
            Box::new(held_plans.clone()),
            Box::new(ledger_size_bytes.clone()),
            Box::new(events_in_flight.clone()),
            Box::new(ledger_available.clone()),
            Box::new(actions_scheduled.clone()),
            Box::new(ledger_disk_free_bytes.clone()),
            Box::new(ledger_pruned_total.clone()),
            Box::new(paused.clone()),
            Box::new(verifications_total.clone()),
            Box::new(ledger_errors_total.clone()),
            Box::new(revocation_seconds.clone()),
            Box::new(oldest_open_removal_seconds.clone()),
            Box::new(results_pending.clone()),
            Box::new(drift_total.clone()),
            Box::new(results_published_total.clone()),
            Box::new(routed_total.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric registered once");
        }
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("process collector registered once");

        // Closed label sets start at zero.
        for event_type in EventType::ALL.iter().map(|t| t.as_str()).chain(["unknown"]) {
            for outcome in EventOutcome::ALL {
                events_total.with_label_values(&[event_type, outcome.as_str()]);
            }
        }
        for op in Op::ALL {
            for outcome in ActionState::TERMINAL {
                actions_total.with_label_values(&[op.as_str(), outcome.as_str()]);
            }
        }
        for reason in RetryReason::ALL {
            action_retries_total.with_label_values(&[reason.as_str()]);
        }
        // The methods are a closed set; the status is open, so only the
        // success and no-response series are created up front (error ratios
        // then have a denominator from the first scrape).
        for method in API_METHODS {
            api_request_duration_seconds.with_label_values(&[method]);
            for status in ["200", "transport_error"] {
                api_requests_total.with_label_values(&[method, status]);
            }
        }
        for reason in RejectReason::ALL {
            dead_letters_total.with_label_values(&[reason.as_str()]);
        }

        Metrics(Arc::new(MetricSet {
            registry,
            events_total,
            actions_total,
            action_retries_total,
            actions_pending,
            api_requests_total,
            api_request_duration_seconds,
            event_completion_seconds,
            amqp_connected,
            dead_letters_total,
            held_plans,
            ledger_size_bytes,
            events_in_flight,
            ledger_available,
            actions_scheduled,
            ledger_disk_free_bytes,
            ledger_pruned_total,
            paused,
            verifications_total,
            ledger_errors_total,
            revocation_seconds,
            oldest_open_removal_seconds,
            results_pending,
            results_published_total,
            drift_total,
            routed_total,
        }))
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8(buffer).expect("prometheus text is UTF-8")
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Deliveries counted so far, whatever their outcome.
    pub fn deliveries_counted(&self) -> u64 {
        counter_sum(&self.events_total)
    }

    /// Deliveries counted so far with this outcome, over every event type.
    pub fn deliveries(&self, outcome: EventOutcome) -> u64 {
        counter_sum_where(&self.events_total, "outcome", outcome.as_str())
    }

    /// Actions that reached a terminal state so far.
    pub fn actions_finished(&self) -> u64 {
        counter_sum(&self.actions_total)
    }

    /// Actions that ended in `outcome` so far, over every operation.
    pub fn actions_ended(&self, outcome: ActionState) -> u64 {
        counter_sum_where(&self.actions_total, "outcome", outcome.as_str())
    }

    /// `palworker_actions_pending` now.
    pub fn actions_pending(&self) -> i64 {
        self.actions_pending.get()
    }

    /// `palworker_actions_scheduled` now.
    pub fn actions_scheduled(&self) -> i64 {
        self.actions_scheduled.get()
    }

    /// `palworker_amqp_connected` now.
    pub fn amqp_connected(&self) -> i64 {
        self.amqp_connected.get()
    }

    /// PAL requests answered or failed so far, and their total seconds.
    pub fn api_requests(&self) -> (u64, f64) {
        prometheus::core::Collector::collect(&self.api_request_duration_seconds)
            .iter()
            .flat_map(|family| family.get_metric())
            .map(|metric| {
                let histogram = metric.get_histogram();
                (histogram.get_sample_count(), histogram.get_sample_sum())
            })
            .fold((0, 0.0), |(count, sum), (c, s)| (count + c, sum + s))
    }
}

/// The sum of a counter's series.
fn counter_sum(counter: &IntCounterVec) -> u64 {
    counter_sum_of(counter, |_| true)
}

/// The sum of a counter's series whose `label` is `value`.
fn counter_sum_where(counter: &IntCounterVec, label: &str, value: &str) -> u64 {
    counter_sum_of(counter, |metric| {
        metric
            .get_label()
            .iter()
            .any(|pair| pair.name() == label && pair.value() == value)
    })
}

fn counter_sum_of(
    counter: &IntCounterVec,
    mut include: impl FnMut(&prometheus::proto::Metric) -> bool,
) -> u64 {
    prometheus::core::Collector::collect(counter)
        .iter()
        .flat_map(|family| family.get_metric())
        .filter(|metric| include(metric))
        .map(|metric| metric.get_counter().get_value() as u64)
        .sum()
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
