//! Intake: one delivery in, one disposition out (ack, dead-letter, or retry).
//!
//! Validation happens once, here, at the edge: bytes become a validated
//! `Event` or a dead-letter reason. Accepted plans of a whole batch share one
//! ledger flush (group commit) before any of them is acknowledged.
//!
//! Architecture invariant: a delivery is acknowledged only after its plan is
//! flushed to the ledger, or after its dead-letter copy was confirmed by the broker.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use palworker_config::SecuritySettings;
use palworker_events::{Event, EventType, RejectReason};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::clock::Clock;
use crate::executor::ExecutorControl;
use crate::health::{Health, panic_message};
use palworker_core::AcceptOutcome;
use palworker_core::planner::Assignment;

use crate::ledger::{Ledger, LedgerError};
use crate::telemetry::{
    EventAccepted, EventCompleted, EventDeadLettered, EventDuplicate, EventHeld, Metrics,
    emit_superseded,
};

/// A delivery as the intake sees it (no broker types), borrowed from it.
#[derive(Debug, Clone, Copy)]
pub struct Incoming<'a> {
    pub body: &'a [u8],
    pub content_type: Option<&'a str>,
    /// The AMQP `user_id` property, validated by RabbitMQ against the connection's user.
    pub user_id: Option<&'a str>,
}

/// A delivery after validation: the event and its publisher, or why it is
/// dead-lettered. Validation needs no ledger, so the consumer checks the next
/// deliveries while the ledger stores the previous batch.
// The large variant is the usual one: boxing it would cost an allocation per
// delivery to save bytes on the rare rejected one.
#[allow(clippy::large_enum_variant)]
pub enum Checked {
    /// A valid event from an allowed publisher (its AMQP `user_id`, if any).
    Valid {
        event: Event,
        publisher: Option<String>,
    },
    /// Bad input: dead-lettered.
    Rejected(Box<Rejection>),
}

/// Why a delivery is dead-lettered.
pub struct Rejection {
    /// The event, when the message parsed as one.
    event: Option<Event>,
    reason: RejectReason,
    detail: String,
    /// The catalogue type the message declared, when it had one (the `type`
    /// label of `palworker_events_total`), even if its data was bad.
    declared: Option<EventType>,
}

/// Where a consumer session hands checked deliveries to its intake thread.
pub struct IntakeQueue(std::sync::mpsc::Sender<Checked>);

impl IntakeQueue {
    /// Queues a delivery; `false` when the intake thread has stopped.
    pub fn push(&self, checked: Checked) -> bool {
        self.0.send(checked).is_ok()
    }
}

/// What to do with a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Stored (or a duplicate): acknowledge.
    Ack,
    /// Bad input: publish to the dead-letter exchange with this reason, then acknowledge.
    DeadLetter {
        reason: RejectReason,
        detail: String,
    },
    /// An internal failure (ledger IO): reject with requeue, so it comes back.
    Requeue,
}

#[derive(Debug, Clone)]
pub struct IntakeSettings {
    pub max_message_bytes: usize,
    pub max_actions_per_event: usize,
    pub security: SecuritySettings,
}

/// Validates, plans and stores deliveries.
#[derive(Clone)]
pub struct Intake {
    ledger: Arc<Ledger>,
    metrics: Metrics,
    clock: Arc<dyn Clock>,
    settings: Arc<IntakeSettings>,
    executor: ExecutorControl,
    health: Health,
}

/// What became of one delivery of a batch.
#[allow(clippy::large_enum_variant)] // As `Checked`: the large variant is the usual one.
enum Processed {
    Stored(Event, AcceptOutcome),
    Rejected(Box<Rejection>),
    Failed(LedgerError),
}

impl Intake {
    pub fn new(
        ledger: Arc<Ledger>,
        metrics: Metrics,
        clock: Arc<dyn Clock>,
        settings: IntakeSettings,
        executor: ExecutorControl,
        health: Health,
    ) -> Self {
        Intake {
            ledger,
            metrics,
            clock,
            settings: Arc::new(settings),
            executor,
            health,
        }
    }

    /// Validates one delivery (see [`Checked`]).
    pub fn check(&self, message: Incoming<'_>) -> Checked {
        match self.validate(message) {
            Ok(event) => Checked::Valid {
                event,
                publisher: message.user_id.map(str::to_owned),
            },
            Err(rejection) => Checked::Rejected(rejection),
        }
    }

    /// Starts the intake thread of a consumer session: it stores what the
    /// returned [`IntakeQueue`] is given — every delivery waiting when it
    /// is free, up to `max_batch`, in one batch with one flush — and sends
    /// each batch's dispositions, in order, to the returned receiver. The
    /// thread ends, after storing what it was given, when the queue is
    /// dropped. A thread of its own rather than a task per batch: the next
    /// batch starts the moment the last is flushed, with no hand-off between
    /// threads in between.
    pub fn start_thread(
        &self,
        max_batch: usize,
    ) -> std::io::Result<(IntakeQueue, UnboundedReceiver<Vec<Disposition>>)> {
        let (queue, input) = std::sync::mpsc::channel::<Checked>();
        let (results, output) = tokio::sync::mpsc::unbounded_channel();
        let this = self.clone();
        std::thread::Builder::new()
            .name("palworker-intake".into())
            .spawn(move || {
                while let Ok(first) = input.recv() {
                    let mut batch = vec![first];
                    while batch.len() < max_batch {
                        match input.try_recv() {
                            Ok(next) => batch.push(next),
                            Err(_) => break,
                        }
                    }
                    // A panic here is a bug, not bad input: the worker is
                    // no longer alive (the orchestrator restarts it); the
                    // batch is not acked and comes back.
                    let handled =
                        std::panic::catch_unwind(AssertUnwindSafe(|| this.handle_batch(batch)));
                    let dispositions = match handled {
                        Ok(dispositions) => dispositions,
                        Err(panic) => {
                            this.health
                                .loop_ended("intake", &panic_message(panic.as_ref()));
                            break;
                        }
                    };
                    if results.send(dispositions).is_err() {
                        break;
                    }
                }
            })?;
        Ok((IntakeQueue(queue), output))
    }

    /// Stores a batch of checked deliveries and flushes the ledger once for
    /// all of it; one disposition per delivery, in order. Blocking. (Flushing
    /// while the next batch is stored was measured slower: sled's flush and a
    /// concurrent transaction slow each other down.)
    fn handle_batch(&self, batch: Vec<Checked>) -> Vec<Disposition> {
        let processed = self.process_batch(batch);
        let stored_any = processed.iter().any(|p| matches!(p, Processed::Stored(..)));
        let flushed = if stored_any {
            self.ledger.flush()
        } else {
            Ok(())
        };
        if let Err(error) = &flushed
            && !self.health.ledger.report(error)
        {
            tracing::error!(error = %error, "Flushing the ledger failed; the batch will be redelivered.");
        }
        let mut woke = false;
        processed
            .into_iter()
            .map(|p| match p {
                Processed::Stored(_, _) if flushed.is_err() => Disposition::Requeue,
                Processed::Stored(event, outcome) => {
                    self.emit_stored(&event, &outcome);
                    if matches!(outcome, AcceptOutcome::Accepted { actions, .. } if actions > 0)
                        && !woke
                    {
                        self.executor.wake();
                        woke = true;
                    }
                    Disposition::Ack
                }
                Processed::Rejected(rejection) => {
                    let Rejection {
                        event,
                        reason,
                        detail,
                        declared,
                    } = *rejection;
                    EventDeadLettered {
                        event_type: event.as_ref().map(|e| e.event_type).or(declared),
                        event_id: event.as_ref().map(|e| e.id.as_str()),
                        reason,
                        detail: &detail,
                    }
                    .emit(&self.metrics);
                    Disposition::DeadLetter { reason, detail }
                }
                Processed::Failed(error) => {
                    if !self.health.ledger.report(&error) {
                        tracing::error!(error = %error, "Storing an event failed; it will be redelivered.");
                    }
                    Disposition::Requeue
                }
            })
            .collect()
    }

    fn emit_stored(&self, event: &Event, outcome: &AcceptOutcome) {
        match outcome {
            AcceptOutcome::Duplicate => EventDuplicate { event }.emit(&self.metrics),
            AcceptOutcome::Held { actions, .. } => EventHeld {
                event,
                actions: *actions,
                limit: self.settings.max_actions_per_event,
            }
            .emit(&self.metrics),
            AcceptOutcome::Accepted {
                actions,
                unassigned,
                cancelled,
                completed,
                ..
            } => {
                EventAccepted {
                    event,
                    actions: *actions,
                    unassigned: unassigned.len(),
                }
                .emit(&self.metrics);
                for tenant in unassigned {
                    tracing::warn!(
                        event_id = %event.id,
                        tenant_id = %tenant,
                        "Successor has no active account in this tenant: the link is unassigned."
                    );
                }
                emit_superseded(cancelled, &self.metrics);
                if let Some(record) = completed {
                    EventCompleted { record }.emit(&self.metrics);
                }
            }
        }
    }

    /// Stores the valid deliveries in order (not yet flushed). Runs of
    /// consecutive `project.assignment.started` events — each touches only
    /// its own account — share one ledger transaction.
    fn process_batch(&self, batch: Vec<Checked>) -> Vec<Processed> {
        let mut out: Vec<Option<Processed>> = Vec::with_capacity(batch.len());
        let mut valid: Vec<(usize, Option<String>, Event)> = Vec::new();
        for (index, checked) in batch.into_iter().enumerate() {
            match checked {
                Checked::Valid { event, publisher } => {
                    out.push(None);
                    valid.push((index, publisher, event));
                }
                Checked::Rejected(rejection) => out.push(Some(Processed::Rejected(rejection))),
            }
        }
        let is_assignment = |event: &Event| Assignment::of(event).is_some();
        let mut rest = valid.into_iter().peekable();
        while let Some((index, publisher, event)) = rest.next() {
            if !is_assignment(&event) {
                out[index] = Some(self.store(publisher.as_deref(), event));
                continue;
            }
            let mut run = vec![(index, publisher, event)];
            while let Some((_, _, next)) = rest.peek()
                && is_assignment(next)
            {
                run.extend(rest.next());
            }
            if run.len() == 1 {
                for (index, publisher, event) in run {
                    out[index] = Some(self.store(publisher.as_deref(), event));
                }
                continue;
            }
            let items: Vec<(Assignment<'_>, Option<&str>)> = run
                .iter()
                .filter_map(|(_, publisher, event)| {
                    Assignment::of(event).map(|assignment| (assignment, publisher.as_deref()))
                })
                .collect();
            match self.ledger.accept_assignments(
                &items,
                self.clock.now(),
                self.settings.max_actions_per_event,
            ) {
                Ok(outcomes) => {
                    for ((index, _, event), outcome) in run.into_iter().zip(outcomes) {
                        out[index] = Some(Processed::Stored(event, outcome));
                    }
                }
                Err(error) => {
                    tracing::warn!(error = %error, "Storing a run of assignments together failed; storing them one by one.");
                    for (index, publisher, event) in run {
                        out[index] = Some(self.store(publisher.as_deref(), event));
                    }
                }
            }
        }
        out.into_iter()
            .map(|processed| processed.expect("every delivery of the batch is processed"))
            .collect()
    }

    /// Stores one validated event's plan (not yet flushed).
    fn store(&self, publisher: Option<&str>, event: Event) -> Processed {
        let span = tracing::info_span!(
            "event",
            event_id = %event.id,
            event_source = %event.source,
            event_type = event.event_type.as_str()
        );
        let _entered = span.enter();
        match self.ledger.accept(
            &event,
            publisher,
            self.clock.now(),
            self.settings.max_actions_per_event,
        ) {
            Ok(outcome) => Processed::Stored(event, outcome),
            Err(error) => Processed::Failed(error),
        }
    }

    /// Validates one delivery: the event, or why it is dead-lettered.
    fn validate(&self, message: Incoming<'_>) -> Result<Event, Box<Rejection>> {
        if message.body.len() > self.settings.max_message_bytes {
            return Err(Box::new(Rejection {
                event: None,
                reason: RejectReason::TooLarge,
                detail: format!(
                    "too_large: the message has {} bytes, more than amqp.max_message_bytes ({})",
                    message.body.len(),
                    self.settings.max_message_bytes
                ),
                declared: None,
            }));
        }
        if let Some(content_type) = message.content_type {
            let essence = content_type
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            if essence != "application/cloudevents+json" && essence != "application/json" {
                return Err(Box::new(Rejection {
                    event: None,
                    reason: RejectReason::UnsupportedContentType,
                    detail: format!(
                        "unsupported_content_type: `{}` (expected application/cloudevents+json or application/json, structured mode)",
                        truncate(content_type, 64)
                    ),
                    declared: None,
                }));
            }
        }
        let event = match Event::from_json_slice(message.body) {
            Ok(event) => event,
            Err(error) => {
                return Err(Box::new(Rejection {
                    event: None,
                    reason: error.reason(),
                    detail: error.to_string(),
                    declared: declared_type(message.body),
                }));
            }
        };
        if !self
            .settings
            .security
            .allows(message.user_id, event.event_type.as_str())
        {
            let detail = match message.user_id {
                Some(user) => format!(
                    "publisher_not_allowed: AMQP user_id `{}` may not publish `{}`",
                    truncate(user, 64),
                    event.event_type.as_str()
                ),
                None => format!(
                    "publisher_not_allowed: no AMQP user_id on a `{}` event and security.publishers is set",
                    event.event_type.as_str()
                ),
            };
            return Err(Box::new(Rejection {
                event: Some(event),
                reason: RejectReason::PublisherNotAllowed,
                detail,
                declared: None,
            }));
        }
        Ok(event)
    }
}

/// The catalogue type a rejected message declared, if any: the `type` label
/// of `palworker_events_total` is the event type whenever the message had a
/// valid one, even if its data was bad.
fn declared_type(body: &[u8]) -> Option<EventType> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value.get("type")?.as_str()?.parse().ok()
}

fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let mut out: String = text.chars().take(max).collect();
        out.push('…');
        out
    }
}
