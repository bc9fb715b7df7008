//! Happenings of deliveries and events.

use palworker_core::{EventOutcome, EventRecord};
use palworker_events::{Escaped, Event, EventType, PartitionIndex, RejectReason};

use super::Metrics;

/// A delivery was accepted and its plan stored (or a reconcile's plan).
pub struct EventAccepted<'a> {
    pub event: &'a Event,
    pub actions: u64,
    /// How many of them wait for a future `effective_at`.
    pub scheduled: u64,
    pub unassigned: usize,
}

impl EventAccepted<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        let event = self.event;
        tracing::info!(
            event_id = %event.escaped_id(),
            event_source = %event.source,
            event_type = event.event_type.as_str(),
            actions = self.actions,
            scheduled = self.scheduled,
            unassigned_tenants = self.unassigned,
            "Plan stored."
        );
        // `events_total` counts deliveries: palworker's own events (a
        // reconcile's plan) were never delivered.
        if !event.event_type.is_internal() {
            metrics
                .events_total
                .with_label_values(&[event.event_type.as_str(), EventOutcome::Accepted.as_str()])
                .inc();
        }
        metrics
            .actions_pending
            .add(self.actions.saturating_sub(self.scheduled) as i64);
        metrics.actions_scheduled.add(self.scheduled as i64);
        if self.actions > 0 {
            metrics.events_in_flight.inc();
        }
    }
}

/// A delivery whose `(source, id)` was already accepted.
pub struct EventDuplicate<'a> {
    pub event: &'a Event,
}

impl EventDuplicate<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        let event = self.event;
        tracing::info!(
            event_id = %event.escaped_id(),
            event_source = %event.source,
            event_type = event.event_type.as_str(),
            "Duplicate event ignored."
        );
        metrics
            .events_total
            .with_label_values(&[event.event_type.as_str(), EventOutcome::Duplicate.as_str()])
            .inc();
    }
}

/// A plan larger than `limits.max_actions_per_event` was stored and held
/// (an event's or a reconcile's).
pub struct EventHeld<'a> {
    pub event: &'a Event,
    pub actions: u64,
    pub limit: usize,
}

impl EventHeld<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        let event = self.event;
        tracing::warn!(
            event_id = %event.escaped_id(),
            event_source = %event.source,
            event_type = event.event_type.as_str(),
            actions = self.actions,
            limit = self.limit,
            "Plan held for approval: it has more actions than limits.max_actions_per_event. \
             Run `palworker approve {}` or `palworker reject {}`.",
            event.escaped_id(),
            event.escaped_id()
        );
        if !event.event_type.is_internal() {
            metrics
                .events_total
                .with_label_values(&[event.event_type.as_str(), EventOutcome::Held.as_str()])
                .inc();
        }
        metrics.held_plans.inc();
    }
}

/// A message was moved to the dead-letter queue.
pub struct EventDeadLettered<'a> {
    /// The event type when the message had a valid one.
    pub event_type: Option<EventType>,
    pub event_id: Option<&'a str>,
    pub reason: RejectReason,
    pub detail: &'a str,
}

impl EventDeadLettered<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        tracing::warn!(
            event_id = %Escaped::new(self.event_id.unwrap_or("")),
            reason = self.reason.as_str(),
            detail = %self.detail,
            "Message dead-lettered."
        );
        let event_type = self.event_type.map(|t| t.as_str()).unwrap_or("unknown");
        metrics
            .events_total
            .with_label_values(&[event_type, EventOutcome::DeadLettered.as_str()])
            .inc();
        metrics
            .dead_letters_total
            .with_label_values(&[self.reason.as_str()])
            .inc();
    }
}

/// Every action of an event is terminal.
pub struct EventCompleted<'a> {
    pub record: &'a EventRecord,
}

impl EventCompleted<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        let completed_at = self.record.completed_at.unwrap_or_else(chrono::Utc::now);
        // From when the event's work was due: a departure announced a month
        // ahead completes in minutes, not in a month.
        let due = self
            .record
            .event
            .effective_at()
            .map_or(self.record.accepted_at, |at| {
                at.max(self.record.accepted_at)
            });
        let seconds = (completed_at - due)
            .to_std()
            .unwrap_or_default()
            .as_secs_f64();
        metrics.event_completion_seconds.observe(seconds);
        metrics.events_in_flight.dec();
        tracing::info!(
            event_id = %self.record.event.escaped_id(),
            event_source = %self.record.event.source,
            seconds,
            "Event completed: every action is terminal."
        );
    }
}

/// The router published an event's copies to its partitions and the
/// broker confirmed every one (SPEC §10).
pub struct EventRouted<'a> {
    pub event: &'a Event,
    pub partitions: &'a [PartitionIndex],
}

impl EventRouted<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        tracing::debug!(
            event_id = %self.event.escaped_id(),
            event_type = self.event.event_type.as_str(),
            partitions = ?self.partitions.iter().map(|p| p.get()).collect::<Vec<_>>(),
            "Event routed."
        );
        for partition in self.partitions {
            metrics
                .routed_total
                .with_label_values(&[partition.routing_key().as_str()])
                .inc();
        }
    }
}

/// `palworker route` started for this many partitions: each partition's
/// series of `palworker_routed_total` is exported from 0.
pub struct RouterStarted {
    pub count: palworker_events::PartitionCount,
}

impl RouterStarted {
    pub fn emit(&self, metrics: &Metrics) {
        tracing::info!(
            partitions = self.count.get(),
            "The router is running: events go to their tenants' partitions."
        );
        for partition in self.count.all() {
            metrics
                .routed_total
                .with_label_values(&[partition.routing_key().as_str()]);
        }
    }
}
