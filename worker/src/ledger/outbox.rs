//! The results outbox (SPEC §11.3): what the worker owes the systems that
//! publish events — an event completed, an action that needs a person, a
//! plan held — written in the same transaction as what it reports, so a
//! crash can never complete an event without its result. The results
//! publisher (`results.rs`) reads it, publishes with confirms, and deletes
//! an entry only once the broker confirmed it (at least once).
//!
//! Tree `outbox`: the reported record's 8-byte id (the event's sequence, or
//! the action's id: both from one sequence, so entries sort roughly in the
//! order they happened) ++ one kind byte → [`Outgoing`] JSON. One entry per
//! record and kind: a newer report of the same (an event completing again
//! after a retry) replaces one not yet published, and deleting compares the
//! bytes read, so the newer one is never lost.
//!
//! An entry holds the facts of what happened, never the event's actions: a
//! completion lists them from the ledger when it is published, so an event
//! of 100,000 actions costs the outbox a few hundred bytes.

use chrono::{DateTime, Utc};
use palworker_core::{ActionRecord, ActionState, EventRecord, EventSeq};
use palworker_events::EventType;
use serde::{Deserialize, Serialize};
use sled::transaction::TransactionalTree;

use super::codec::{TxResult, decode, encode};
use super::queries::evicting;
use super::{Ledger, Result};

/// A result owed to the publishers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outgoing {
    /// Every action of the event is terminal (or it was rejected, or it had
    /// none).
    EventCompleted {
        seq: EventSeq,
        event_id: String,
        event_source: String,
        event_type: EventType,
        completed_at: DateTime<Utc>,
        /// It had completed before and an operator's retry reopened it: a
        /// new result, not a repeat of the first.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        again: bool,
    },
    /// An action ended `failed`, `manual` or `orphaned`: as it ended.
    ActionAttention { action: Box<ActionRecord> },
    /// A plan was held for approval (more than
    /// `limits.max_actions_per_event` actions).
    PlanHeld {
        seq: EventSeq,
        event_id: String,
        event_source: String,
        event_type: EventType,
        actions: u64,
        held_at: DateTime<Utc>,
    },
}

/// The kind byte of each entry's key.
const COMPLETED: u8 = b'c';
const ATTENTION: u8 = b'a';
const HELD: u8 = b'h';

fn key(id: u64, kind: u8) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[..8].copy_from_slice(&id.to_be_bytes());
    key[8] = kind;
    key
}

/// The key of an event's completion.
pub(super) fn completed_key(seq: EventSeq) -> [u8; 9] {
    key(seq.get(), COMPLETED)
}

/// Whether an action ending in `state` is reported to the publishers.
pub fn needs_attention(state: ActionState) -> bool {
    matches!(
        state,
        ActionState::Failed | ActionState::Manual | ActionState::Orphaned
    )
}

/// Whether an event completes for the first time, or again after an
/// operator's retry reopened it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Completing {
    First,
    Again,
}

/// Owes the publishers the completion of `record` (which shows its
/// `completed_at`).
pub(super) fn event_completed(
    outbox: &TransactionalTree,
    record: &EventRecord,
    completing: Completing,
) -> TxResult<()> {
    let again = completing == Completing::Again;
    let outgoing = Outgoing::EventCompleted {
        seq: record.seq,
        event_id: record.event.id.clone(),
        event_source: record.event.source.clone(),
        event_type: record.event.event_type,
        completed_at: record.completed_at.unwrap_or(record.accepted_at),
        again,
    };
    outbox.insert(&completed_key(record.seq), encode(&outgoing))?;
    Ok(())
}

/// Owes the publishers the end of `action` when it needs a person.
pub(super) fn action_ended(outbox: &TransactionalTree, action: &ActionRecord) -> TxResult<()> {
    if needs_attention(action.state) {
        let outgoing = Outgoing::ActionAttention {
            action: Box::new(action.clone()),
        };
        outbox.insert(&key(action.action_id.get(), ATTENTION), encode(&outgoing))?;
    }
    Ok(())
}

/// Owes the publishers the news that `record`'s plan is held.
pub(super) fn plan_held(outbox: &TransactionalTree, record: &EventRecord) -> TxResult<()> {
    let outgoing = Outgoing::PlanHeld {
        seq: record.seq,
        event_id: record.event.id.clone(),
        event_source: record.event.source.clone(),
        event_type: record.event.event_type,
        actions: record.action_count,
        held_at: record.accepted_at,
    };
    outbox.insert(&key(record.seq.get(), HELD), encode(&outgoing))?;
    Ok(())
}

/// A result read from the outbox: publish it, then hand it back to
/// [`Ledger::result_published`].
#[derive(Debug, Clone)]
pub struct PendingResult {
    key: Vec<u8>,
    /// The entry's bytes as read: deleting compares them.
    stored: Vec<u8>,
    pub outgoing: Outgoing,
}

impl Ledger {
    /// The first `max` results owed to the publishers, oldest first.
    pub fn pending_results(&self, max: usize) -> Result<Vec<PendingResult>> {
        let store = self.store()?;
        evicting(&store.outbox, store.outbox.iter())
            .take(max)
            .map(|entry| {
                let (key, stored) = entry?;
                Ok(PendingResult {
                    outgoing: decode(&key, &stored)?,
                    key: key.to_vec(),
                    stored: stored.to_vec(),
                })
            })
            .collect()
    }

    /// Whether any result is owed (one lookup).
    pub fn has_pending_results(&self) -> Result<bool> {
        Ok(self.store()?.outbox.first()?.is_some())
    }

    /// How many results are owed (reads the whole outbox: for gauges).
    pub fn pending_result_count(&self) -> u64 {
        self.store().map_or(0, |store| store.outbox.len() as u64)
    }

    /// Deletes a published result, unless a newer one replaced it since it
    /// was read (that one stays, to be published in turn). Whether it was
    /// deleted. Not flushed: a crash before the next flush publishes it
    /// once more, with the same id.
    pub fn result_published(&self, result: &PendingResult) -> Result<bool> {
        let _writing = self.writing();
        let store = self.store()?;
        Ok(store
            .outbox
            .compare_and_swap(
                &result.key,
                Some(result.stored.as_slice()),
                None as Option<&[u8]>,
            )?
            .is_ok())
    }
}
