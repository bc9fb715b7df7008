//! Results to the publishers (SPEC §11.3): when an event completes, the
//! worker publishes a `palworker.event.completed` CloudEvent; an action that
//! ends `failed`, `manual` or `orphaned`, and a held plan, publish
//! `palworker.action.attention`. Both go to `amqp.results_exchange` with the
//! type as routing key, so the HR or project system that sent an event can
//! bind a queue and hear what became of it.
//!
//! Architecture invariant: a result is written to the ledger's outbox in the
//! same transaction as what it reports (`ledger::outbox`), and deleted only
//! after the broker confirmed it — a crash at any instant publishes it later
//! (at least once). Its `id` is derived from what it reports (SHA-256 of a
//! canonical encoding, [`result_id`]), so a repeat is a duplicate a
//! consumer can drop.
//!
//! The publisher loop reads the outbox a batch at a time, flushes the
//! ledger first (nothing is published that a crash could still undo),
//! publishes the batch with confirms and deletes what was confirmed. It
//! connects when there is something to publish and reconnects with the
//! consumer's backoff (`amqp.reconnect_initial` … `amqp.reconnect_max`)
//! after any failure: a broker that is down, a results exchange that does
//! not exist (in passive mode), a refused message.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use palworker_config::AmqpSettings;
use palworker_core::{ActionId, ActionRecord, ActionState, EventSeq, Op};
use palworker_events::{EmployeeId, EventType, ObjectId, PartnerId, TenantId};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::amqp::{PublishError, ResultMessage, ResultsChannel, reconnect_schedule};
use crate::availability::LedgerAvailability;
use crate::ledger::{Ledger, LedgerError, Outgoing, PendingResult};
use crate::telemetry::{Metrics, ResultKind, ResultPublished, ResultsPublishFailed};

/// The `source` of every result.
pub const RESULT_SOURCE: &str = "urn:palworker";

/// Results read, published and confirmed together.
const BATCH: usize = 64;

/// At most this many bytes of a completion's `actions` (the broker's
/// `max_message_size` is 1 MiB in the shipped configuration): about 1,800
/// actions. Past it, `actions_omitted` says how many were left out; the
/// counts are always complete, and each action that needs a person has its
/// own `palworker.action.attention` besides.
pub const ACTIONS_BUDGET_BYTES: usize = 512 * 1024;

/// How often an idle publisher looks at the outbox.
const IDLE_POLL: Duration = Duration::from_millis(100);

/// Why a batch of results was not published (it stays in the outbox).
#[derive(Debug, thiserror::Error)]
pub enum ResultsError {
    #[error(transparent)]
    Broker(#[from] PublishError),
    #[error("reading the outbox: {0}")]
    Ledger(#[from] LedgerError),
    /// A blocking task reading the ledger panicked or was cancelled.
    #[error("internal: {0}")]
    Internal(String),
}

/// The CloudEvent `id` of a result: the lower-case hex SHA-256 of the JSON
/// array of `parts` (serde_json's encoding of a string array: no spaces).
/// A result's parts are its type and what identifies what it reports —
/// never the time it was published — so a repeat has the same id.
pub fn result_id(parts: &[&str]) -> String {
    let canonical = serde_json::to_vec(parts).expect("strings serialise");
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &canonical);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The id of the `palworker.event.completed` of the event `(source, id)`:
/// `result_id(["palworker.event.completed", source, id])`. (An event that
/// completes again after an operator's retry adds its new completion time:
/// a new result, not a repeat.)
pub fn completed_id(event_source: &str, event_id: &str) -> String {
    result_id(&[ResultKind::EventCompleted.as_str(), event_source, event_id])
}

/// An instant as it goes into an id: RFC 3339, milliseconds, `Z`.
fn instant(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A CloudEvent 1.0 in structured mode.
#[derive(Serialize)]
struct CloudEvent<'a, D> {
    specversion: &'static str,
    id: &'a str,
    source: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
    time: DateTime<Utc>,
    /// The `id` of the event the result reports on.
    subject: &'a str,
    datacontenttype: &'static str,
    data: D,
}

/// One action of a completed event.
#[derive(Serialize)]
struct ActionResult<'a> {
    tenant_id: &'a TenantId,
    object_id: &'a ObjectId,
    employee_id: &'a EmployeeId,
    op: Op,
    outcome: ActionState,
    partner_id_before: Option<&'a PartnerId>,
    partner_id_after: Option<&'a PartnerId>,
    verified_at: Option<DateTime<Utc>>,
}

impl<'a> From<&'a ActionRecord> for ActionResult<'a> {
    fn from(action: &'a ActionRecord) -> Self {
        ActionResult {
            tenant_id: &action.tenant_id,
            object_id: &action.object_id,
            employee_id: &action.employee_id,
            op: action.op,
            outcome: action.state,
            partner_id_before: action.before_partner_id.as_ref(),
            partner_id_after: action.after_partner_id.as_ref(),
            verified_at: action.verified_at,
        }
    }
}

/// The `data` of `palworker.event.completed`.
#[derive(Serialize)]
struct Completed<'a> {
    event_id: &'a str,
    event_source: &'a str,
    event_type: EventType,
    completed_at: DateTime<Utc>,
    /// Actions per outcome (every outcome, zeros included).
    counts: BTreeMap<&'static str, u64>,
    actions: Vec<serde_json::Value>,
    /// Actions left out of `actions` ([`ACTIONS_BUDGET_BYTES`]).
    #[serde(skip_serializing_if = "is_zero")]
    actions_omitted: u64,
    /// Tenants where a departed employee's link had no successor account.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    unassigned_tenants: &'a [TenantId],
}

fn is_zero(count: &u64) -> bool {
    *count == 0
}

/// The `data` of `palworker.action.attention` for an action.
#[derive(Serialize)]
struct ActionAttention<'a> {
    /// `failed`, `manual` or `orphaned`.
    reason: &'static str,
    event_id: &'a str,
    event_source: &'a str,
    event_type: EventType,
    action_id: ActionId,
    #[serde(flatten)]
    action: ActionResult<'a>,
    /// Why it failed; for `orphaned`, the token error that shows the
    /// identity is gone.
    error: Option<&'a str>,
    /// What a person must do (`manual`), what happened (`orphaned`).
    detail: Option<&'a str>,
    completed_at: Option<DateTime<Utc>>,
}

/// The `data` of `palworker.action.attention` for a held plan.
#[derive(Serialize)]
struct PlanHeld<'a> {
    /// `held`.
    reason: &'static str,
    event_id: &'a str,
    event_source: &'a str,
    event_type: EventType,
    /// The plan's size, above `limits.max_actions_per_event`.
    actions: u64,
    held_at: DateTime<Utc>,
}

/// The message of one outbox entry. Blocking: a completion reads its
/// event's actions from the ledger, one at a time.
pub fn message(ledger: &Ledger, outgoing: &Outgoing) -> Result<ResultMessage, LedgerError> {
    match outgoing {
        Outgoing::EventCompleted {
            seq,
            event_id,
            event_source,
            event_type,
            completed_at,
            again,
        } => {
            let id = if *again {
                result_id(&[
                    ResultKind::EventCompleted.as_str(),
                    event_source,
                    event_id,
                    &instant(*completed_at),
                ])
            } else {
                completed_id(event_source, event_id)
            };
            let unassigned = ledger
                .event(*seq)?
                .map(|record| record.unassigned)
                .unwrap_or_default();
            let (counts, actions, actions_omitted) = completed_actions(ledger, *seq)?;
            let data = Completed {
                event_id,
                event_source,
                event_type: *event_type,
                completed_at: *completed_at,
                counts,
                actions,
                actions_omitted,
                unassigned_tenants: &unassigned,
            };
            Ok(envelope(
                ResultKind::EventCompleted,
                id,
                *completed_at,
                event_id,
                data,
            ))
        }
        Outgoing::ActionAttention { action } => {
            let completed_at = action.completed_at.unwrap_or(action.updated_at);
            let id = result_id(&[
                ResultKind::ActionAttention.as_str(),
                &action.event_source,
                &action.event_id,
                action.tenant_id.as_str(),
                action.object_id.as_str(),
                action.state.as_str(),
                &instant(completed_at),
            ]);
            let data = ActionAttention {
                reason: action.state.as_str(),
                event_id: &action.event_id,
                event_source: &action.event_source,
                event_type: action.event_type,
                action_id: action.action_id,
                action: ActionResult::from(action.as_ref()),
                error: action.last_error.as_deref(),
                detail: action.detail.as_deref(),
                completed_at: action.completed_at,
            };
            Ok(envelope(
                ResultKind::ActionAttention,
                id,
                completed_at,
                &action.event_id,
                data,
            ))
        }
        Outgoing::PlanHeld {
            event_id,
            event_source,
            event_type,
            actions,
            held_at,
            ..
        } => {
            let id = result_id(&[
                ResultKind::ActionAttention.as_str(),
                event_source,
                event_id,
                "held",
            ]);
            let data = PlanHeld {
                reason: "held",
                event_id,
                event_source,
                event_type: *event_type,
                actions: *actions,
                held_at: *held_at,
            };
            Ok(envelope(
                ResultKind::ActionAttention,
                id,
                *held_at,
                event_id,
                data,
            ))
        }
    }
}

/// A completion's counts per outcome, its actions (within
/// [`ACTIONS_BUDGET_BYTES`], in plan order), and how many were left out.
type CompletedActions = (BTreeMap<&'static str, u64>, Vec<serde_json::Value>, u64);

/// [`CompletedActions`] of the event `seq`, read one action at a time.
fn completed_actions(ledger: &Ledger, seq: EventSeq) -> Result<CompletedActions, LedgerError> {
    let mut counts: BTreeMap<&'static str, u64> = ActionState::TERMINAL
        .iter()
        .map(|state| (state.as_str(), 0))
        .collect();
    let mut actions = Vec::new();
    let mut bytes = 0usize;
    let mut omitted = 0u64;
    for action in ledger.iter_event_actions(seq) {
        let action = action?;
        *counts.entry(action.state.as_str()).or_insert(0) += 1;
        let value = serde_json::to_value(ActionResult::from(&action)).expect("actions serialise");
        // Its JSON text: each action is a few hundred bytes.
        let size = value.to_string().len() + 1;
        if bytes + size > ACTIONS_BUDGET_BYTES {
            omitted += 1;
            continue;
        }
        bytes += size;
        actions.push(value);
    }
    Ok((counts, actions, omitted))
}

fn envelope(
    kind: ResultKind,
    id: String,
    time: DateTime<Utc>,
    subject: &str,
    data: impl Serialize,
) -> ResultMessage {
    let event = CloudEvent {
        specversion: "1.0",
        id: &id,
        source: RESULT_SOURCE,
        kind: kind.as_str(),
        time,
        subject,
        datacontenttype: "application/json",
        data,
    };
    let body = serde_json::to_vec(&event).expect("results serialise");
    ResultMessage {
        routing_key: kind.as_str(),
        id,
        body,
    }
}

/// The kind of a result, for its metric label.
fn kind_of(outgoing: &Outgoing) -> ResultKind {
    match outgoing {
        Outgoing::EventCompleted { .. } => ResultKind::EventCompleted,
        Outgoing::ActionAttention { .. } | Outgoing::PlanHeld { .. } => ResultKind::ActionAttention,
    }
}

/// The event a result reports on.
fn event_id_of(outgoing: &Outgoing) -> &str {
    match outgoing {
        Outgoing::EventCompleted { event_id, .. } | Outgoing::PlanHeld { event_id, .. } => event_id,
        Outgoing::ActionAttention { action } => &action.event_id,
    }
}

/// The loop that publishes the outbox.
pub struct ResultsPublisher {
    ledger: Arc<Ledger>,
    settings: AmqpSettings,
    metrics: Metrics,
    availability: LedgerAvailability,
}

/// What one pass of the loop did.
enum Pass {
    /// Published a batch: there may be more.
    Published,
    /// Nothing to publish (or the ledger is unavailable): wait a little.
    Idle,
}

impl ResultsPublisher {
    pub fn new(
        ledger: Arc<Ledger>,
        settings: AmqpSettings,
        metrics: Metrics,
        availability: LedgerAvailability,
    ) -> Self {
        ResultsPublisher {
            ledger,
            settings,
            metrics,
            availability,
        }
    }

    /// Publishes the outbox until `shutdown` is cancelled. A pass cut off
    /// by the shutdown leaves its results in the outbox (those already
    /// published go out once more at the next start, with the same ids).
    pub async fn run(self, shutdown: CancellationToken) {
        let schedule = || reconnect_schedule(&self.settings);
        let mut delays = schedule();
        let mut channel: Option<ResultsChannel> = None;
        loop {
            let pass = tokio::select! {
                pass = self.pass(&mut channel) => pass,
                _ = shutdown.cancelled() => break,
            };
            let wait = match pass {
                Ok(Pass::Published) => {
                    delays = schedule();
                    continue;
                }
                Ok(Pass::Idle) => IDLE_POLL,
                Err(error) => {
                    if let ResultsError::Ledger(error) = &error {
                        self.availability.report(error);
                    }
                    if let Some(open) = channel.take() {
                        open.close().await;
                    }
                    let delay = delays.next().unwrap_or(self.settings.reconnect_max);
                    ResultsPublishFailed {
                        error: &error.to_string(),
                        retry_in: delay,
                    }
                    .emit(&self.metrics);
                    delay
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        if let Some(open) = channel {
            open.close().await;
        }
    }

    /// Reads a batch from the outbox, publishes it with confirms, deletes
    /// what the broker confirmed.
    async fn pass(&self, channel: &mut Option<ResultsChannel>) -> Result<Pass, ResultsError> {
        if !self.availability.is_available() {
            return Ok(Pass::Idle);
        }
        let ledger = self.ledger.clone();
        let batch = blocking(move || -> Result<_, ResultsError> {
            let pending = ledger.pending_results(BATCH)?;
            if pending.is_empty() {
                return Ok(Vec::new());
            }
            // What is published must survive a crash: its outcome, and
            // the outbox entry itself, are made durable first.
            ledger.flush()?;
            let mut batch = Vec::with_capacity(pending.len());
            for result in pending {
                let message = message(&ledger, &result.outgoing)?;
                batch.push((result, message));
            }
            Ok(batch)
        })
        .await?;
        if batch.is_empty() {
            return Ok(Pass::Idle);
        }
        let (results, messages): (Vec<PendingResult>, Vec<ResultMessage>) =
            batch.into_iter().unzip();
        let open = match channel {
            Some(open) => open,
            None => channel.insert(ResultsChannel::open(&self.settings).await?),
        };
        open.publish(&messages).await?;
        let ledger = self.ledger.clone();
        let results = blocking(move || -> Result<_, ResultsError> {
            for result in &results {
                ledger.result_published(result)?;
            }
            Ok(results)
        })
        .await?;
        for (result, message) in results.iter().zip(&messages) {
            ResultPublished {
                kind: kind_of(&result.outgoing),
                id: &message.id,
                event_id: event_id_of(&result.outgoing),
            }
            .emit(&self.metrics);
        }
        Ok(Pass::Published)
    }
}

/// Runs blocking ledger work on a worker thread.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ResultsError> + Send + 'static,
) -> Result<T, ResultsError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| ResultsError::Internal(error.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amqp::EVENT_BINDINGS;

    #[test]
    fn the_id_of_a_completion_is_the_sha256_of_its_canonical_parts() {
        // sha256 of `["palworker.event.completed","urn:hr","e-1"]`.
        let id = completed_id("urn:hr", "e-1");
        assert_eq!(id.len(), 64);
        assert_eq!(
            id,
            result_id(&["palworker.event.completed", "urn:hr", "e-1"])
        );
        assert_eq!(id, completed_id("urn:hr", "e-1"), "the same on a repeat");
        assert_ne!(id, completed_id("urn:hr", "e-2"));
        // The parts are delimited: moving text across them changes the id.
        assert_ne!(
            completed_id("urn:hr", "e-1"),
            completed_id("urn:hr\",\"e", "-1")
        );
        let expected = {
            let digest = aws_lc_rs::digest::digest(
                &aws_lc_rs::digest::SHA256,
                br#"["palworker.event.completed","urn:hr","e-1"]"#,
            );
            digest
                .as_ref()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        };
        assert_eq!(id, expected);
    }

    #[test]
    fn the_events_queue_binds_no_routing_key_of_a_result() {
        for kind in ResultKind::ALL {
            for binding in EVENT_BINDINGS {
                let prefix = binding.trim_end_matches('#');
                assert!(
                    !kind.as_str().starts_with(prefix),
                    "the events queue's binding {binding} would route {} back to the worker",
                    kind.as_str()
                );
            }
        }
    }
}
