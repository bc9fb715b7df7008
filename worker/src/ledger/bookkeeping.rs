//! What every transition keeps in step: superseding an account's older
//! action, and each event's count of non-terminal actions (in its
//! `open_events` entry or its record) with the number of open events, and
//! the result an event owes its publisher once it completes (`outbox`).

use chrono::{DateTime, Utc};
use palworker_core::{ActionId, ActionRecord, ActionState, EventRecord, EventSeq, Superseded};
use sled::transaction::TransactionalTree;

use super::codec::{
    OPEN_COUNT_KEY, TxResult, add_to_counter, due_key, encode, read_u64, tx_decode,
};
use super::{audit, outbox};

/// The trees an event's end is kept in: its count of open actions (its
/// `open_events` entry, or its record in `events`) and, once it completes,
/// the result it owes its publisher (`outbox`).
#[derive(Clone, Copy)]
pub(super) struct EventEnd<'a> {
    pub open_events: &'a TransactionalTree,
    pub events: &'a TransactionalTree,
    pub outbox: &'a TransactionalTree,
}

/// Cancels an older unfinished action that a newer event superseded. In-flight
/// actions are left alone: the executor sees at its next checkpoint that the
/// action is no longer current and cancels it itself.
pub(super) fn supersede(
    actions: &TransactionalTree,
    due: &TransactionalTree,
    audit: &TransactionalTree,
    end: EventEnd<'_>,
    previous: ActionId,
    now: DateTime<Utc>,
) -> TxResult<Option<Superseded>> {
    let key = previous.to_be_bytes();
    let Some(bytes) = actions.get(key)? else {
        return Ok(None);
    };
    let mut action: ActionRecord = tx_decode(&key, &bytes)?;
    let previous_state = action.state;
    match previous_state {
        ActionState::Pending | ActionState::Scheduled => {
            due.remove(&due_key(action.due_at(), previous))?;
        }
        ActionState::Held => {}
        _ => return Ok(None),
    }
    action.state = ActionState::Cancelled;
    action.detail = Some("superseded by a later event for the same account".into());
    action.updated_at = now;
    action.completed_at = Some(now);
    actions.insert(&key, encode(&action))?;
    audit::append(audit, audit::WORKER, [audit::outcome(&action)])?;
    // A held action was never counted among its event's open actions.
    let event_completed = if previous_state == ActionState::Held {
        None
    } else {
        decrement_open(end, action.event_seq, now)?
    };
    Ok(Some(Superseded {
        action,
        previous_state,
        event_completed,
    }))
}

/// Adds `delta` to the number of open events.
pub(super) fn count_open_events(open_events: &TransactionalTree, delta: i64) -> TxResult<()> {
    add_to_counter(open_events, OPEN_COUNT_KEY, delta)
}

/// Adds `by` to an event's count of non-terminal actions, where the event
/// keeps it: its `open_events` entry, or else its record; an event with
/// neither (a large plan's first chunk, an approval, a retry after the
/// event completed) gets an entry.
pub(super) fn increment_open(
    open_events: &TransactionalTree,
    events: &TransactionalTree,
    seq: EventSeq,
    by: u64,
) -> TxResult<EventOpening> {
    let key = seq.to_be_bytes();
    if let Some(bytes) = open_events.get(key)? {
        open_events.insert(&key, &(read_u64(&bytes) + by).to_be_bytes())?;
        return Ok(EventOpening::WasOpen);
    }
    if let Some(bytes) = events.get(key)? {
        let mut record: EventRecord = tx_decode(&key, &bytes)?;
        if let Some(open) = record.open_actions {
            record.open_actions = Some(open + by);
            events.insert(&key, encode(&record))?;
            if open == 0 && by > 0 {
                count_open_events(open_events, 1)?;
                return Ok(EventOpening::Opened);
            }
            return Ok(EventOpening::WasOpen);
        }
    }
    if by > 0 {
        open_events.insert(&key, &by.to_be_bytes())?;
        count_open_events(open_events, 1)?;
        return Ok(EventOpening::Opened);
    }
    Ok(EventOpening::WasOpen)
}

/// Whether adding to an event's open actions opened it (it had none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventOpening {
    WasOpen,
    /// It had no open action (new, or completed before: a retry reopens it).
    Opened,
}

/// Takes one from an event's count of non-terminal actions; returns the
/// event, completed, when that was the last (and owes its publisher the
/// result).
pub(super) fn decrement_open(
    end: EventEnd<'_>,
    seq: EventSeq,
    now: DateTime<Utc>,
) -> TxResult<Option<EventRecord>> {
    let EventEnd {
        open_events,
        events,
        outbox,
    } = end;
    let key = seq.to_be_bytes();
    let in_record = match open_events.get(key)? {
        Some(remaining) => {
            let remaining = read_u64(&remaining).saturating_sub(1);
            if remaining > 0 {
                open_events.insert(&key, &remaining.to_be_bytes())?;
                return Ok(None);
            }
            open_events.remove(&key)?;
            count_open_events(open_events, -1)?;
            false
        }
        None => true,
    };
    let Some(bytes) = events.get(key)? else {
        return Ok(None);
    };
    let mut record: EventRecord = tx_decode(&key, &bytes)?;
    if in_record {
        let remaining = match record.open_actions {
            Some(open) if open > 0 => open - 1,
            _ => return Ok(None),
        };
        record.open_actions = Some(remaining);
        if remaining > 0 {
            events.insert(&key, encode(&record))?;
            return Ok(None);
        }
        count_open_events(open_events, -1)?;
    }
    // Completed before: an operator's retry reopened it.
    let completing = if record.completed_at.is_some() {
        outbox::Completing::Again
    } else {
        outbox::Completing::First
    };
    record.completed_at = Some(now);
    events.insert(&key, encode(&record))?;
    outbox::event_completed(outbox, &record, completing)?;
    Ok(Some(record))
}
