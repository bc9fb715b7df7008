//! Intake: one delivery in, one disposition out (ack, dead-letter, or retry).
//!
//! Validation happens once, here, at the edge: bytes become a validated
//! `Event` or a dead-letter reason. Accepted plans of a whole batch share one
//! ledger flush (group commit) before any of them is acknowledged.
//!
//! Architecture invariant: a delivery is acknowledged only after its plan is
//! flushed to the ledger, or after its dead-letter copy was confirmed by the broker.

use std::sync::Arc;

use palworker_config::SecuritySettings;
use palworker_events::{Event, EventType, RejectReason};

use crate::clock::Clock;
use crate::executor::ExecutorWake;
use crate::ledger::{AcceptOutcome, Ledger, LedgerError};
use crate::telemetry::{EventAccepted, EventDeadLettered, EventDuplicate, EventHeld, Metrics};

/// A delivery as the intake sees it (no broker types).
#[derive(Debug, Clone)]
pub struct Incoming {
    pub body: Vec<u8>,
    pub content_type: Option<String>,
    /// The AMQP `user_id` property, validated by RabbitMQ against the connection's user.
    pub user_id: Option<String>,
    pub routing_key: String,
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
    wake: ExecutorWake,
}

enum Processed {
    Stored(Event, AcceptOutcome),
    /// The event (when it parsed), why, the detail, and the catalogue type it
    /// declared (for the metric label) when it had one.
    Rejected(Option<Event>, RejectReason, String, Option<EventType>),
    Failed(LedgerError),
}

impl Intake {
    pub fn new(
        ledger: Arc<Ledger>,
        metrics: Metrics,
        clock: Arc<dyn Clock>,
        settings: IntakeSettings,
        wake: ExecutorWake,
    ) -> Self {
        Intake {
            ledger,
            metrics,
            clock,
            settings: Arc::new(settings),
            wake,
        }
    }

    /// Processes a batch and flushes the ledger once for all of it.
    pub async fn handle_batch(&self, batch: Vec<Incoming>) -> Vec<Disposition> {
        let this = self.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let processed: Vec<Processed> = batch.iter().map(|m| this.process(m)).collect();
            let stored_any = processed.iter().any(|p| matches!(p, Processed::Stored(..)));
            let flushed = if stored_any {
                this.ledger.flush()
            } else {
                Ok(())
            };
            (processed, flushed)
        })
        .await;
        let (processed, flushed) = match joined {
            Ok(result) => result,
            Err(error) => {
                tracing::error!(error = %error, "Intake task failed; the batch will be redelivered.");
                return vec![];
            }
        };
        if let Err(error) = &flushed {
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
                        self.wake.wake();
                        woke = true;
                    }
                    Disposition::Ack
                }
                Processed::Rejected(event, reason, detail, declared) => {
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
                    tracing::error!(error = %error, "Storing an event failed; it will be redelivered.");
                    Disposition::Requeue
                }
            })
            .collect()
    }

    fn emit_stored(&self, event: &Event, outcome: &AcceptOutcome) {
        match outcome {
            AcceptOutcome::Duplicate => EventDuplicate {
                event_type: event.event_type,
                event_id: &event.id,
                event_source: &event.source,
            }
            .emit(&self.metrics),
            AcceptOutcome::Held { actions, .. } => EventHeld {
                event_type: event.event_type,
                event_id: &event.id,
                event_source: &event.source,
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
                    event_type: event.event_type,
                    event_id: &event.id,
                    event_source: &event.source,
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
                crate::telemetry::emit_superseded(cancelled, &self.metrics);
                if let Some(record) = completed {
                    crate::telemetry::EventCompleted { record }.emit(&self.metrics);
                }
            }
        }
    }

    /// Validates one delivery and stores its plan (not yet flushed).
    fn process(&self, message: &Incoming) -> Processed {
        if message.body.len() > self.settings.max_message_bytes {
            return Processed::Rejected(
                None,
                RejectReason::TooLarge,
                format!(
                    "too_large: the message has {} bytes, more than amqp.max_message_bytes ({})",
                    message.body.len(),
                    self.settings.max_message_bytes
                ),
                None,
            );
        }
        if let Some(content_type) = message.content_type.as_deref() {
            let essence = content_type
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            if essence != "application/cloudevents+json" && essence != "application/json" {
                return Processed::Rejected(
                    None,
                    RejectReason::UnsupportedContentType,
                    format!(
                        "unsupported_content_type: `{}` (expected application/cloudevents+json or application/json, structured mode)",
                        truncate(content_type, 64)
                    ),
                    None,
                );
            }
        }
        let event = match Event::from_json_slice(&message.body) {
            Ok(event) => event,
            Err(error) => {
                return Processed::Rejected(
                    None,
                    error.reason(),
                    error.to_string(),
                    declared_type(&message.body),
                );
            }
        };
        if !self
            .settings
            .security
            .allows(message.user_id.as_deref(), event.event_type.as_str())
        {
            let detail = match &message.user_id {
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
            return Processed::Rejected(
                Some(event),
                RejectReason::PublisherNotAllowed,
                detail,
                None,
            );
        }
        let span = tracing::info_span!(
            "event",
            event_id = %event.id,
            event_source = %event.source,
            event_type = event.event_type.as_str()
        );
        let _entered = span.enter();
        match self.ledger.accept(
            &event,
            message.user_id.as_deref(),
            self.clock.now(),
            self.settings.max_actions_per_event,
        ) {
            Ok(outcome) => Processed::Stored(event, outcome),
            Err(error) => Processed::Failed(error),
        }
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
