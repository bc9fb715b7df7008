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

/// Validates deliveries: the part of the intake that needs no ledger (the
/// router's too, SPEC §10).
#[derive(Clone)]
pub struct Validator {
    settings: Arc<IntakeSettings>,
}

impl Validator {
    pub fn new(settings: IntakeSettings) -> Self {
        Validator {
            settings: Arc::new(settings),
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
                        truncate(&content_type.escape_debug().to_string(), 64)
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
                    truncate(&user.escape_debug().to_string(), 64),
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

impl Rejection {
    /// Logs and counts the rejection; the disposition that dead-letters it.
    pub fn dead_lettered(self, metrics: &Metrics) -> Disposition {
        let Rejection {
            event,
            reason,
            detail,
            declared,
        } = self;
        EventDeadLettered {
            event_type: event.as_ref().map(|e| e.event_type).or(declared),
            event_id: event.as_ref().map(|e| e.id.as_str()),
            reason,
            detail: &detail,
        }
        .emit(metrics);
        Disposition::DeadLetter { reason, detail }
    }
}

/// Validates, plans and stores deliveries.
#[derive(Clone)]
pub struct Intake {
    ledger: Arc<Ledger>,
    metrics: Metrics,
    clock: Arc<dyn Clock>,
    settings: Arc<IntakeSettings>,
    validator: Validator,
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
        let validator = Validator::new(settings);
        Intake {
            ledger,
            metrics,
            clock,
            settings: validator.settings.clone(),
            validator,
            executor,
            health,
        }
    }

    /// Validates one delivery (see [`Checked`]).
    pub fn check(&self, message: Incoming<'_>) -> Checked {
        self.validator.check(message)
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
                Processed::Rejected(rejection) => rejection.dead_lettered(&self.metrics),
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
                scheduled,
                unassigned,
                cancelled,
                completed,
                ..
            } => {
                EventAccepted {
                    event,
                    actions: *actions,
                    scheduled: *scheduled,
                    unassigned: unassigned.len(),
                }
                .emit(&self.metrics);
                for tenant in unassigned {
                    tracing::warn!(
                        event_id = %event.escaped_id(),
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
            event_id = %event.escaped_id(),
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

#[cfg(test)]
mod proptests {
    //! Property tests: whatever a delivery holds — body, `content_type`,
    //! `user_id` — `Intake::check` does not panic and gives either a valid
    //! event, consistent with the parser and the allow-list, or a rejection
    //! whose reason is the first check that failed (SPEC §3, §11.1).

    use std::collections::BTreeMap;
    use std::sync::Arc;

    use palworker_config::SecuritySettings;
    use palworker_events::{Event, RejectReason};
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    use serde_json::Value;

    use super::{Checked, Incoming, Intake, IntakeSettings};
    use crate::availability::LedgerAvailability;
    use crate::clock::SystemClock;
    use crate::executor::ExecutorControl;
    use crate::health::Health;
    use crate::ledger::Ledger;
    use crate::local::{events, identities};
    use crate::telemetry::Metrics;

    /// Small, so generated bodies reach it.
    const MAX_MESSAGE_BYTES: usize = 2048;

    /// An intake on a real ledger in a temp dir (never written: `check`
    /// only validates).
    fn intake(security: SecuritySettings) -> (tempfile::TempDir, Intake) {
        let dir = tempfile::tempdir().expect("temp dir");
        let ledger = Ledger::open(&dir.path().join("ledger"), 1 << 20).expect("ledger opens");
        let metrics = Metrics::new();
        let health = Health::new(LedgerAvailability::new(metrics.clone()), metrics.clone());
        let intake = Intake::new(
            Arc::new(ledger),
            metrics,
            Arc::new(SystemClock),
            IntakeSettings {
                max_message_bytes: MAX_MESSAGE_BYTES,
                max_actions_per_event: 100,
                security,
            },
            ExecutorControl::default(),
            health,
        );
        (dir, intake)
    }

    fn restricted() -> SecuritySettings {
        SecuritySettings {
            publishers: BTreeMap::from([
                ("hr-system".to_owned(), vec!["hr.".to_owned()]),
                (
                    "projects".to_owned(),
                    vec!["project.".to_owned(), "partner.".to_owned()],
                ),
            ]),
        }
    }

    /// One valid event of each type.
    fn seeds() -> Vec<Value> {
        let (tenant, object) = (identities::tenant(1), identities::object(2, 1));
        let employee = identities::employee(2);
        vec![
            identities::assignment("seed-1", 2, 1, "1234567"),
            events::assignment_started(
                "seed-2",
                &employee,
                &tenant,
                &object,
                "7654321",
                None,
                Some("C-9"),
            ),
            events::assignment_ended("seed-3", &employee, &tenant),
            events::contract_ended("seed-4", &tenant, Some("C-9")),
            events::employee_departed(
                "seed-5",
                &employee,
                Some("E-3"),
                Some("2026-12-01T00:00:00Z"),
            ),
            events::employee_transferred("seed-6", &employee, "1111111"),
            events::partner_id_changed("seed-7", "1234567", "7654321", Some(&[tenant.as_str()])),
        ]
    }

    /// Any text, control characters and line breaks included (proptest's
    /// own `String` leaves control characters out).
    fn text() -> impl Strategy<Value = String> {
        "(?s).{0,64}"
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            text().prop_map(Value::String),
            "[0-9a-f-]{0,40}|E-[0-9]{1,5}|[0-9]{1,12}|1\\.0|2026-1[0-2]-[0-3][0-9]T[0-2][0-9]:00:00(Z|\\+01:00)"
                .prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-z_]{0,12}", inner, 0..4)
                    .prop_map(|map| Value::Object(map.into_iter().collect())),
            ]
        })
    }

    const ATTRIBUTES: &[&str] = &[
        "specversion",
        "id",
        "source",
        "type",
        "time",
        "datacontenttype",
        "data",
        "data_base64",
        "subject",
        "extension",
    ];
    const FIELDS: &[&str] = &[
        "employee_id",
        "tenant_id",
        "object_id",
        "partner_id",
        "credential",
        "contract_id",
        "successor_employee_id",
        "effective_at",
        "new_partner_id",
        "old_partner_id",
        "tenant_ids",
    ];

    /// How a valid event is damaged.
    #[derive(Debug, Clone)]
    enum Damage {
        None,
        SetAttribute(&'static str, Value),
        RemoveAttribute(&'static str),
        SetField(&'static str, Value),
        RemoveField(&'static str),
        Truncate(prop::sample::Index),
        Pad(usize),
    }

    fn damage() -> impl Strategy<Value = Damage> {
        let attribute = prop::sample::select(ATTRIBUTES);
        let field = prop::sample::select(FIELDS);
        prop_oneof![
            Just(Damage::None),
            (attribute.clone(), json_value()).prop_map(|(a, v)| Damage::SetAttribute(a, v)),
            attribute.prop_map(Damage::RemoveAttribute),
            (field.clone(), json_value()).prop_map(|(f, v)| Damage::SetField(f, v)),
            field.prop_map(Damage::RemoveField),
            any::<prop::sample::Index>().prop_map(Damage::Truncate),
            (0..2 * MAX_MESSAGE_BYTES).prop_map(Damage::Pad),
        ]
    }

    fn damaged(mut event: Value, damages: Vec<Damage>) -> Vec<u8> {
        let mut truncate = None;
        for damage in damages {
            match damage {
                Damage::None => {}
                Damage::SetAttribute(name, value) => event[name] = value,
                Damage::RemoveAttribute(name) => {
                    event.as_object_mut().map(|o| o.remove(name));
                }
                Damage::SetField(name, value) => {
                    if let Some(data) = event.get_mut("data").and_then(Value::as_object_mut) {
                        data.insert(name.to_owned(), value);
                    }
                }
                Damage::RemoveField(name) => {
                    if let Some(data) = event.get_mut("data").and_then(Value::as_object_mut) {
                        data.remove(name);
                    }
                }
                Damage::Truncate(at) => truncate = Some(at),
                Damage::Pad(length) => event["padding"] = Value::String("x".repeat(length)),
            }
        }
        let mut bytes = serde_json::to_vec(&event).expect("a JSON value serialises");
        if let Some(at) = truncate {
            bytes.truncate(at.index(bytes.len() + 1));
        }
        bytes
    }

    fn body() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..512),
            json_value().prop_map(|value| value.to_string().into_bytes()),
            (
                prop::sample::select(seeds()),
                prop::collection::vec(damage(), 0..3)
            )
                .prop_map(|(event, damages)| damaged(event, damages)),
        ]
    }

    fn content_type() -> impl Strategy<Value = Option<String>> {
        prop_oneof![
            Just(None),
            prop::sample::select(vec![
                "application/cloudevents+json",
                "application/json; charset=utf-8",
                " Application/CloudEvents+JSON ;x=y",
                "application/json;",
                "text/plain",
                "",
                ";",
            ])
            .prop_map(|text| Some(text.to_owned())),
            text().prop_map(Some),
            "[a-zA-Z/+;= -]{0,30}".prop_map(Some),
        ]
    }

    fn user_id() -> impl Strategy<Value = Option<String>> {
        prop_oneof![
            Just(None),
            prop::sample::select(vec!["hr-system", "projects"]).prop_map(|u| Some(u.to_owned())),
            text().prop_map(Some),
        ]
    }

    /// Whether `check` accepts this AMQP `content_type` (the structured
    /// mode's two JSON types, parameters and case aside).
    fn is_json(content_type: Option<&str>) -> bool {
        content_type.is_none_or(|content_type| {
            let essence = content_type.split(';').next().unwrap_or("").trim();
            essence.eq_ignore_ascii_case("application/cloudevents+json")
                || essence.eq_ignore_ascii_case("application/json")
        })
    }

    /// What `check` must have answered (see the module docs).
    fn consistent(
        security: &SecuritySettings,
        message: Incoming<'_>,
        checked: Checked,
    ) -> Result<(), TestCaseError> {
        let parsed = Event::from_json_slice(message.body);
        match checked {
            Checked::Valid { event, publisher } => {
                prop_assert!(message.body.len() <= MAX_MESSAGE_BYTES);
                prop_assert!(is_json(message.content_type));
                prop_assert_eq!(parsed.as_ref().ok(), Some(&event));
                prop_assert_eq!(publisher.as_deref(), message.user_id);
                prop_assert!(security.allows(message.user_id, event.event_type.as_str()));
            }
            Checked::Rejected(rejection) => {
                prop_assert!(!rejection.detail.is_empty());
                let expected = if message.body.len() > MAX_MESSAGE_BYTES {
                    RejectReason::TooLarge
                } else if !is_json(message.content_type) {
                    RejectReason::UnsupportedContentType
                } else {
                    match &parsed {
                        Err(error) => error.reason(),
                        Ok(_) => RejectReason::PublisherNotAllowed,
                    }
                };
                prop_assert_eq!(rejection.reason, expected, "{}", rejection.detail);
                if expected == RejectReason::PublisherNotAllowed {
                    prop_assert_eq!(rejection.event.as_ref(), parsed.as_ref().ok());
                }
            }
        }
        Ok(())
    }

    #[test]
    fn check_gives_a_valid_event_or_the_first_failed_check_for_any_delivery() {
        let (_open_dir, open) = intake(SecuritySettings::default());
        let (_restricted_dir, allow_listed) = intake(restricted());
        let mut runner = TestRunner::new(ProptestConfig {
            cases: 512,
            failure_persistence: None,
            ..ProptestConfig::default()
        });
        let outcome = runner.run(
            &(body(), content_type(), user_id()),
            |(body, content_type, user_id)| {
                let message = Incoming {
                    body: &body,
                    content_type: content_type.as_deref(),
                    user_id: user_id.as_deref(),
                };
                consistent(&SecuritySettings::default(), message, open.check(message))?;
                consistent(&restricted(), message, allow_listed.check(message))
            },
        );
        if let Err(error) = outcome {
            panic!("{error}");
        }
    }

    #[test]
    fn the_damaged_seeds_reach_every_verdict() {
        // The generator is worth its cases only if it reaches past the JSON
        // parser: every seed is valid as it is, and damaged ones are rejected
        // for reasons beyond "not JSON".
        let (_dir, open) = intake(SecuritySettings::default());
        for seed in seeds() {
            let body = serde_json::to_vec(&seed).unwrap();
            let message = Incoming {
                body: &body,
                content_type: Some("application/cloudevents+json"),
                user_id: None,
            };
            assert!(
                matches!(open.check(message), Checked::Valid { .. }),
                "{seed}"
            );
        }
        let mut runner = TestRunner::deterministic();
        let strategy = (
            prop::sample::select(seeds()),
            prop::collection::vec(damage(), 1..3),
        );
        let mut reasons = std::collections::BTreeSet::new();
        for _ in 0..2_000 {
            let (seed, damages) = strategy.new_tree(&mut runner).expect("a value").current();
            let body = damaged(seed, damages);
            let message = Incoming {
                body: &body,
                content_type: None,
                user_id: None,
            };
            if let Checked::Rejected(rejection) = open.check(message) {
                reasons.insert(rejection.reason);
            }
        }
        for reason in [
            RejectReason::InvalidJson,
            RejectReason::MissingAttribute,
            RejectReason::InvalidAttribute,
            RejectReason::MissingField,
            RejectReason::InvalidField,
            RejectReason::TooLarge,
        ] {
            assert!(
                reasons.contains(&reason),
                "{reason:?} never reached: {reasons:?}"
            );
        }
    }
}
