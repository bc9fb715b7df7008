//! The executor's side of the ledger: due actions, claims, outcomes and
//! durable retries.

use chrono::{DateTime, TimeZone, Utc};
use palworker_core::{
    ActionId, ActionRecord, ActionState, Completion, InventoryEntry, Rescheduled,
};
use sled::Transactional;

use super::bookkeeping::{EventEnd, decrement_open};
use super::codec::{
    account_key_bytes, due_key, encode, millis_ceil, pair_key, read_u64, tx_decode, tx_error,
};
use super::{Ledger, LedgerError, Result, audit, outbox};
/// What one pass of the executor recorded and claimed
/// ([`Ledger::finish_and_claim`]).
#[derive(Debug, Default)]
pub struct Pass {
    /// One per finished action, in order.
    pub completions: Vec<Completion>,
    /// One per id to claim, in order: the claimed action, or `None` when it
    /// was no longer claimable.
    pub claimed: Vec<Option<ActionRecord>>,
}

impl Ledger {
    /// The due time of the earliest pending or scheduled action.
    pub fn next_due(&self) -> Result<Option<DateTime<Utc>>> {
        let store = self.store()?;
        Ok(store.due.first()?.map(|(key, _)| {
            Utc.timestamp_millis_opt(read_u64(&key[..8]) as i64)
                .single()
                .unwrap_or_else(Utc::now)
        }))
    }

    /// Pending or scheduled actions due at `now`, earliest first, skipping
    /// those for which `skip` is true (accounts already busy). At most `limit`.
    pub fn due_actions(
        &self,
        now: DateTime<Utc>,
        limit: usize,
        skip: impl FnMut(&ActionRecord) -> bool,
    ) -> Result<Vec<ActionRecord>> {
        self.due_actions_in(now, limit, |_| false, skip)
    }

    /// [`Ledger::due_actions`], also skipping every action of the tenants for
    /// which `skip_tenant` is true — decided from the due index alone, without
    /// reading the actions, so a long backlog of a tenant at its limit is
    /// cheap to pass over.
    pub fn due_actions_in(
        &self,
        now: DateTime<Utc>,
        limit: usize,
        mut skip_tenant: impl FnMut(&str) -> bool,
        mut skip: impl FnMut(&ActionRecord) -> bool,
    ) -> Result<Vec<ActionRecord>> {
        let store = self.store()?;
        let mut out = Vec::new();
        let end = pair_key(millis_ceil(now), u64::MAX);
        for item in store.due.range(..=end) {
            if out.len() >= limit {
                break;
            }
            let (key, tenant) = item?;
            if std::str::from_utf8(&tenant).is_ok_and(|t| !t.is_empty() && skip_tenant(t)) {
                continue;
            }
            let Some(action) = self.action(ActionId::new(read_u64(&key[8..])))? else {
                store.due.remove(key)?;
                continue;
            };
            // Keys are whole milliseconds: the last one may hold actions due
            // a fraction of a millisecond from now, which must wait.
            if action.due_at() > now || skip_tenant(action.tenant_id.as_str()) || skip(&action) {
                continue;
            }
            out.push(action);
        }
        Ok(out)
    }

    /// Moves a pending or scheduled action to in flight and counts the attempt.
    /// Returns None when the action is no longer claimable (cancelled meanwhile).
    pub fn claim(&self, id: ActionId, now: DateTime<Utc>) -> Result<Option<ActionRecord>> {
        Ok(self
            .finish_and_claim(&[], &[id], now)?
            .claimed
            .pop()
            .flatten())
    }

    /// Whether the action is still the latest one for its account.
    pub fn is_current(&self, action: &ActionRecord) -> Result<bool> {
        Ok(self
            .inventory_entry(&action.account_key())?
            .is_none_or(|entry| entry.current_action == Some(action.action_id)))
    }

    /// Records the end of an in-flight action.
    pub fn finish(&self, action: &ActionRecord) -> Result<Completion> {
        self.finish_and_claim(std::slice::from_ref(action), &[], action.updated_at)?
            .completions
            .pop()
            .ok_or_else(|| {
                LedgerError::Rejected(format!("action {} was not recorded", action.action_id))
            })
    }

    /// The executor's group commit: records the end of the `finished`
    /// in-flight actions and claims the actions `claim` ([`Ledger::claim`]
    /// for each) in ONE transaction — sled writes and syncs a log buffer
    /// around every transaction, so the outcomes of the tasks that ended
    /// and the claims of the actions that take their slots share one.
    /// Outcomes are written first: an account's next action may be claimed
    /// in the transaction that ends its previous one. One completion per
    /// finished action and one entry per claimed id, in order; an event whose
    /// last actions are among the finished completes once. `now` is the
    /// claims' time (an outcome carries its own).
    pub fn finish_and_claim(
        &self,
        finished: &[ActionRecord],
        claim: &[ActionId],
        now: DateTime<Utc>,
    ) -> Result<Pass> {
        let _writing = self.writing();
        let store = self.store()?;
        debug_assert!(finished.iter().all(|action| action.state.is_terminal()));
        if finished.is_empty() && claim.is_empty() {
            return Ok(Pass::default());
        }
        (
            &store.actions,
            &store.due,
            &store.in_flight,
            &store.open_events,
            &store.events,
            &store.audit,
            &store.outbox,
        )
            .transaction(
                |(actions, due, in_flight, open_events, events, audit, outbox)| {
                    audit::append(audit, audit::WORKER, finished.iter().map(audit::outcome))?;
                    let end = EventEnd {
                        open_events,
                        events,
                        outbox,
                    };
                    let mut completions = Vec::with_capacity(finished.len());
                    for action in finished {
                        let key = action.action_id.to_be_bytes();
                        actions.insert(&key, encode(action))?;
                        in_flight.remove(&key)?;
                        outbox::action_ended(outbox, action)?;
                        let event_completed =
                            decrement_open(end, action.event_seq, action.updated_at)?;
                        completions.push(Completion {
                            record: action.clone(),
                            event_completed,
                        });
                    }
                    let mut claimed = Vec::with_capacity(claim.len());
                    for id in claim {
                        let key = id.to_be_bytes();
                        let Some(bytes) = actions.get(key)? else {
                            claimed.push(None);
                            continue;
                        };
                        let mut action: ActionRecord = tx_decode(&key, &bytes)?;
                        if !matches!(action.state, ActionState::Pending | ActionState::Scheduled) {
                            claimed.push(None);
                            continue;
                        }
                        due.remove(&due_key(action.due_at(), *id))?;
                        action.state = ActionState::InFlight;
                        action.attempts += 1;
                        action.first_attempt_at.get_or_insert(now);
                        action.updated_at = now;
                        actions.insert(&key, encode(&action))?;
                        in_flight.insert(&key, &[])?;
                        claimed.push(Some(action));
                    }
                    Ok(Pass {
                        completions,
                        claimed,
                    })
                },
            )
            .map_err(tx_error)
    }

    /// Records a failed attempt that will be retried at `action.next_attempt_at`
    /// — unless a later event superseded the action while it was in flight:
    /// then it ends `cancelled` instead (checked in the same transaction that
    /// a superseding plan writes the inventory in, so no retry of a
    /// superseded action is ever scheduled).
    pub fn reschedule(&self, action: &ActionRecord) -> Result<Rescheduled> {
        let _writing = self.writing();
        let store = self.store()?;
        let id = action.action_id;
        let account = account_key_bytes(&action.tenant_id, &action.object_id);
        (
            &store.actions,
            &store.in_flight,
            &store.due,
            &store.inventory,
            &store.open_events,
            &store.events,
            &store.audit,
            &store.outbox,
        )
            .transaction(
                |(actions, in_flight, due, inventory, open_events, events, audit, outbox)| {
                    let superseded = match inventory.get(&account)? {
                        Some(bytes) => {
                            let entry: InventoryEntry = tx_decode(&account, &bytes)?;
                            entry.current_action != Some(id)
                        }
                        None => false,
                    };
                    in_flight.remove(&id.to_be_bytes())?;
                    if superseded {
                        let mut cancelled = action.clone();
                        cancelled.state = ActionState::Cancelled;
                        cancelled.detail =
                            Some("superseded by a later event for the same account".into());
                        cancelled.next_attempt_at = None;
                        cancelled.completed_at = Some(action.updated_at);
                        actions.insert(&id.to_be_bytes(), encode(&cancelled))?;
                        audit::append(audit, audit::WORKER, [audit::outcome(&cancelled)])?;
                        let end = EventEnd {
                            open_events,
                            events,
                            outbox,
                        };
                        let event_completed =
                            decrement_open(end, action.event_seq, action.updated_at)?;
                        return Ok(Rescheduled::Superseded(Box::new(Completion {
                            record: cancelled,
                            event_completed,
                        })));
                    }
                    actions.insert(&id.to_be_bytes(), encode(action))?;
                    due.insert(
                        &due_key(action.due_at(), id),
                        action.tenant_id.as_str().as_bytes(),
                    )?;
                    Ok(Rescheduled::Scheduled)
                },
            )
            .map_err(tx_error)
    }
}
