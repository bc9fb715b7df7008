//! Operator transitions: approving or rejecting a held plan, retrying a
//! failed action.

use chrono::{DateTime, Utc};
use palworker_core::{
    ActionId, ActionRecord, ActionState, Approval, AuditWhat, EventRecord, EventSeq, EventState,
    InventoryEntry, StatusFilter, Superseded,
};
use palworker_events::{Account, DesiredLink, EventType};
use sled::Transactional;
use sled::transaction::ConflictableTransactionError;

use super::accept::ACCEPT_CHUNK;
use super::audit;
use super::bookkeeping::{EventEnd, EventOpening, decrement_open, increment_open, supersede};
use super::codec::{
    account_key_bytes, add_inventory_size, approving_key, due_key, encode, held_key, tx_decode,
    tx_error,
};
use super::inventory::write_inventory;
use super::{Ledger, LedgerError, Result, outbox};
/// A failed action queued again.
#[derive(Debug, Clone)]
pub struct Requeued {
    pub action: ActionRecord,
    /// Whether its event, completed before, is open again.
    pub opening: EventOpening,
}

/// What approving one held action did.
enum HeldAction {
    /// It is pending (or scheduled), superseding its account's older action, if any.
    Released { superseded: Option<Box<Superseded>> },
    /// A later event targeted its account before the approval: it ended `cancelled`.
    Cancelled(Box<ActionRecord>),
}

impl Ledger {
    /// The record of a held event; refused when there is none or it is not
    /// held (already approved or rejected: a second operator was first).
    fn held_event(&self, seq: EventSeq) -> Result<EventRecord> {
        let record = self
            .event(seq)?
            .ok_or_else(|| LedgerError::Rejected(format!("no event with sequence {seq}")))?;
        if record.state != EventState::Held {
            return Err(LedgerError::Rejected(format!(
                "event `{}` is {}, not held",
                record.event.id,
                record.state.as_str()
            )));
        }
        Ok(record)
    }
}

impl Ledger {
    /// Releases a held plan. Actions whose account a later accepted event
    /// already targeted end `cancelled`; the rest become pending.
    /// Returns the actions released and the ones cancelled.
    /// `who` (an operator's name) is recorded in the audit trail.
    pub fn approve(&self, seq: EventSeq, who: &str, now: DateTime<Utc>) -> Result<Approval> {
        let _writing = self.writing();
        let store = self.store()?;
        let _planning = self.planning();
        let mut record = self.held_event(seq)?;
        let not_before = record.event.effective_at().filter(|at| *at > now);
        let mut released = 0u64;
        // Released actions share the event's `effective_at`: all wait for it or none.
        let scheduled_share = u64::from(not_before.is_some());
        let mut scheduled = 0u64;
        let mut cancelled = Vec::new();
        let mut superseded = Vec::new();
        // The approval's own share of the event's open-action count: released
        // actions may finish while later ones are still being released, and
        // the event must not complete before the last is. Taken once, even if
        // an approval interrupted by a crash is repeated.
        (&store.index, &store.open_events, &store.events)
            .transaction(|(index, open_events, events)| {
                if index.insert(approving_key(seq), &[])?.is_none() {
                    increment_open(open_events, events, seq, 1)?;
                }
                Ok(())
            })
            .map_err(tx_error)?;
        // One action at a time, read from the plan's key range: a large held
        // plan is never loaded whole.
        for action in self.iter_event_actions(seq) {
            let action = action?;
            if action.state != ActionState::Held {
                // Released (or cancelled) by an approval that a crash
                // interrupted; already counted.
                if action.state != ActionState::Cancelled {
                    released += 1;
                    scheduled += scheduled_share;
                }
                continue;
            }
            let key = account_key_bytes(&action.tenant_id, &action.object_id);
            let result = (
                &store.inventory,
                &store.index,
                &store.actions,
                &store.due,
                &store.open_events,
                &store.events,
                &store.audit,
                &store.outbox,
            )
                .transaction(
                    |(inventory, index, actions, due, open_events, events, audit, outbox)| {
                        let before: Option<InventoryEntry> = match inventory.get(&key)? {
                            Some(bytes) => Some(tx_decode(&key, &bytes)?),
                            None => None,
                        };
                        let mut action = action.clone();
                        action.updated_at = now;
                        if before
                            .as_ref()
                            .and_then(|entry| entry.last_event_seq)
                            .is_some_and(|later| later > seq)
                        {
                            action.state = ActionState::Cancelled;
                            action.detail = Some(
                                "superseded: a later event targeted this account before approval"
                                    .into(),
                            );
                            action.completed_at = Some(now);
                            actions.insert(&action.action_id.to_be_bytes(), encode(&action))?;
                            audit::append(audit, who, [audit::outcome(&action)])?;
                            return Ok(HeldAction::Cancelled(Box::new(action)));
                        }
                        let superseded = match before.as_ref().and_then(|e| e.current_action) {
                            Some(previous) => {
                                let end = EventEnd {
                                    open_events,
                                    events,
                                    outbox,
                                };
                                supersede(actions, due, audit, end, previous, now)?
                            }
                            None => None,
                        };
                        let mut account = before
                            .as_ref()
                            .map(|e| e.account.clone())
                            .unwrap_or_else(|| Account {
                                tenant_id: action.tenant_id.clone(),
                                object_id: action.object_id.clone(),
                                employee_id: action.employee_id.clone(),
                                credential: action.credential.clone(),
                                contract_id: action.contract_id.clone(),
                            });
                        if record.event.event_type == EventType::AssignmentStarted {
                            account.employee_id = action.employee_id.clone();
                            account.credential = action.credential.clone();
                            account.contract_id = action.contract_id.clone();
                        }
                        let entry = InventoryEntry {
                            account,
                            desired: action.desired.clone(),
                            assignment_active: match action.desired {
                                DesiredLink::Absent => {
                                    // A successor link keeps the assignment; removals end it.
                                    false
                                }
                                DesiredLink::Linked(_) => true,
                            },
                            last_event_seq: Some(seq),
                            current_action: Some(action.action_id),
                            updated_at: now,
                        };
                        let added = write_inventory(
                            inventory,
                            index,
                            before.as_ref().map(|b| &b.account.employee_id),
                            &entry,
                        )?;
                        add_inventory_size(index, u64::from(added))?;
                        action.state = if not_before.is_some() {
                            ActionState::Scheduled
                        } else {
                            ActionState::Pending
                        };
                        action.not_before = not_before;
                        actions.insert(&action.action_id.to_be_bytes(), encode(&action))?;
                        increment_open(open_events, events, seq, 1)?;
                        due.insert(
                            &due_key(action.due_at(), action.action_id),
                            action.tenant_id.as_str().as_bytes(),
                        )?;
                        Ok(HeldAction::Released {
                            superseded: superseded.map(Box::new),
                        })
                    },
                )
                .map_err(tx_error)?;
            match result {
                HeldAction::Released {
                    superseded: previous,
                } => {
                    released += 1;
                    scheduled += scheduled_share;
                    superseded.extend(previous.map(|boxed| *boxed));
                }
                HeldAction::Cancelled(action) => cancelled.push(*action),
            }
        }
        record.state = EventState::Approved;
        let approval = AuditWhat::Approval {
            event_id: record.event.id.clone(),
            event_source: record.event.source.clone(),
            released,
            cancelled: cancelled.len() as u64,
        };
        let completed = (
            &store.events,
            &store.index,
            &store.open_events,
            &store.audit,
            &store.outbox,
        )
            .transaction(|(events, index, open_events, audit, outbox)| {
                events.insert(&seq.to_be_bytes(), encode(&record))?;
                index.remove(held_key(seq))?;
                index.remove(approving_key(seq))?;
                audit::append(audit, who, [(now, approval.clone())])?;
                // Gives back the approval's share: completes the event if
                // nothing was released or everything released already finished.
                let end = EventEnd {
                    open_events,
                    events,
                    outbox,
                };
                decrement_open(end, seq, now)
            })
            .map_err(tx_error)?;
        Ok(Approval {
            released,
            scheduled,
            cancelled,
            superseded,
            completed,
        })
    }

    /// Discards a held plan: its actions end `cancelled` and nothing is
    /// written to PAL. The actions are read from the plan's key range a chunk
    /// at a time (one transaction each), so a large plan is never loaded
    /// whole; repeating a rejection that a crash interrupted finishes it.
    /// Returns how many actions this call cancelled.
    /// `who` (an operator's name) is recorded in the audit trail.
    pub fn reject(&self, seq: EventSeq, who: &str, now: DateTime<Utc>) -> Result<u64> {
        let _writing = self.writing();
        let store = self.store()?;
        let _planning = self.planning();
        let mut record = self.held_event(seq)?;
        if store.index.contains_key(approving_key(seq))? {
            // Part of the plan may be released and written already: a
            // rejection cannot take that back. Approving again finishes it.
            return Err(LedgerError::Rejected(format!(
                "event `{}` was being approved when the worker stopped; approve it again to finish the approval",
                record.event.id
            )));
        }
        let mut cancelled = 0u64;
        let mut ids = self.event_action_ids(seq);
        let mut batch: Vec<ActionId> = Vec::with_capacity(ACCEPT_CHUNK);
        loop {
            batch.clear();
            for id in ids.by_ref().take(ACCEPT_CHUNK) {
                batch.push(id?);
            }
            if batch.is_empty() {
                break;
            }
            cancelled += (&store.actions, &store.audit)
                .transaction(|(actions, audit)| {
                    let mut count = 0u64;
                    for id in &batch {
                        let key = id.to_be_bytes();
                        let Some(bytes) = actions.get(key)? else {
                            continue;
                        };
                        let mut action: ActionRecord = tx_decode(&key, &bytes)?;
                        if action.state != ActionState::Held {
                            continue;
                        }
                        action.state = ActionState::Cancelled;
                        action.detail = Some("plan rejected by an operator".into());
                        action.updated_at = now;
                        action.completed_at = Some(now);
                        actions.insert(&key, encode(&action))?;
                        audit::append(audit, who, [audit::outcome(&action)])?;
                        count += 1;
                    }
                    Ok(count)
                })
                .map_err(tx_error)?;
        }
        record.state = EventState::Rejected;
        record.completed_at = Some(now);
        let rejection = AuditWhat::Rejection {
            event_id: record.event.id.clone(),
            event_source: record.event.source.clone(),
            cancelled,
        };
        (&store.events, &store.index, &store.audit, &store.outbox)
            .transaction(|(events, index, audit, outbox)| {
                events.insert(&seq.to_be_bytes(), encode(&record))?;
                index.remove(held_key(seq))?;
                audit::append(audit, who, [(now, rejection.clone())])?;
                // Every action ended (cancelled): its publisher hears so.
                outbox::event_completed(outbox, &record, outbox::Completing::First)?;
                Ok(())
            })
            .map_err(tx_error)?;
        Ok(cancelled)
    }

    /// Puts a failed action back in the queue with a fresh retry budget.
    /// The check (failed, and still its account's latest) and the write are
    /// one transaction, so concurrent retries of one action queue it once.
    /// `who` (an operator's name) is recorded in the audit trail.
    pub fn retry_action(&self, id: ActionId, who: &str, now: DateTime<Utc>) -> Result<Requeued> {
        let _writing = self.writing();
        let store = self.store()?;
        let key = id.to_be_bytes();
        (
            &store.actions,
            &store.due,
            &store.open_events,
            &store.events,
            &store.inventory,
            &store.audit,
        )
            .transaction(|(actions, due, open_events, events, inventory, audit)| {
                let Some(bytes) = actions.get(key)? else {
                    return Err(ConflictableTransactionError::Abort(LedgerError::Rejected(
                        format!("no action {id}"),
                    )));
                };
                let mut action: ActionRecord = tx_decode(&key, &bytes)?;
                if action.state != ActionState::Failed {
                    return Err(ConflictableTransactionError::Abort(LedgerError::Rejected(
                        format!(
                            "action {id} is {}, only failed actions can be retried",
                            action.state.as_str()
                        ),
                    )));
                }
                let account = account_key_bytes(&action.tenant_id, &action.object_id);
                if let Some(bytes) = inventory.get(&account)? {
                    let entry: InventoryEntry = tx_decode(&account, &bytes)?;
                    if entry.current_action != Some(id) {
                        return Err(ConflictableTransactionError::Abort(LedgerError::Rejected(
                            format!(
                                "action {id} was superseded by a later event for the same account"
                            ),
                        )));
                    }
                }
                action.state = ActionState::Pending;
                action.first_attempt_at = None;
                action.next_attempt_at = Some(now);
                action.completed_at = None;
                action.updated_at = now;
                actions.insert(&key, encode(&action))?;
                due.insert(
                    &due_key(action.due_at(), id),
                    action.tenant_id.as_str().as_bytes(),
                )?;
                let opening = increment_open(open_events, events, action.event_seq, 1)?;
                audit::append(
                    audit,
                    who,
                    [(
                        now,
                        AuditWhat::Retry {
                            action_id: id,
                            event_id: action.event_id.clone(),
                        },
                    )],
                )?;
                Ok(Requeued { action, opening })
            })
            .map_err(tx_error)
    }

    pub fn failed_action_ids(&self) -> Result<Vec<ActionId>> {
        Ok(self
            .actions(&StatusFilter {
                failed: true,
                ..StatusFilter::default()
            })?
            .into_iter()
            .map(|a| a.action_id)
            .collect())
    }
}

/// Index key of the operators' pause (`palworker pause` survives a restart).
const PAUSED_KEY: &[u8] = b"meta:paused";

/// Whether writes to PAL are paused by an operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseState {
    Paused,
    Running,
}

impl Ledger {
    /// Records that an operator paused or resumed writes to PAL, with who
    /// did it, in the audit trail; returns the state before.
    pub fn set_pause(
        &self,
        state: PauseState,
        who: &str,
        now: DateTime<Utc>,
    ) -> Result<PauseState> {
        let _writing = self.writing();
        let store = self.store()?;
        (&store.index, &store.audit)
            .transaction(|(index, audit)| {
                let before = match index.get(PAUSED_KEY)? {
                    Some(_) => PauseState::Paused,
                    None => PauseState::Running,
                };
                match state {
                    PauseState::Paused => {
                        index.insert(PAUSED_KEY, &[1u8])?;
                        audit::append(audit, who, [(now, AuditWhat::Pause)])?;
                    }
                    PauseState::Running => {
                        index.remove(PAUSED_KEY)?;
                        audit::append(audit, who, [(now, AuditWhat::Resume)])?;
                    }
                }
                Ok(before)
            })
            .map_err(tx_error)
    }

    /// Whether an operator's pause is in force.
    pub fn pause_state(&self) -> Result<PauseState> {
        Ok(if self.store()?.index.contains_key(PAUSED_KEY)? {
            PauseState::Paused
        } else {
            PauseState::Running
        })
    }
}
