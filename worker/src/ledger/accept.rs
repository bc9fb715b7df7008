//! Accepting an event: deduplicate by `(source, id)`, plan against the
//! inventory, store the plan, the inventory changes and the actions.

use chrono::{DateTime, Utc};
use palworker_core::planner::{self, Assignment, Plan, PlannedChange};
use palworker_core::{
    AcceptOutcome, ActionId, ActionRecord, ActionState, AuditWhat, EventRecord, EventSeq,
    EventState, InventoryEntry, Superseded,
};
use palworker_events::{Event, TenantId};
use sled::Transactional;
use sled::transaction::TransactionalTree;

use super::bookkeeping::{EventEnd, count_open_events, decrement_open, increment_open, supersede};
use super::chunks::PlanChunks;
use super::codec::{
    TxResult, account_key_bytes, add_inventory_size, due_key, encode, event_id_key, held_key,
    pair_key, storing_key, tx_decode, tx_error,
};
use super::inventory::{LedgerView, write_inventory};
use super::{Ledger, Result, Store, StoringLargePlan, audit, outbox};

/// Plans with more actions than this are written in several transactions.
pub const ACCEPT_CHUNK: usize = 256;

/// Whether a plan's actions may run, or wait for an operator's approval
/// (the plan has more than `limits.max_actions_per_event` actions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Release {
    Now,
    Held,
}

impl Release {
    fn of_plan(actions: usize, max_actions_per_event: usize) -> Self {
        if actions > max_actions_per_event {
            Release::Held
        } else {
            Release::Now
        }
    }

    fn event_state(self) -> EventState {
        match self {
            Release::Now => EventState::Accepted,
            Release::Held => EventState::Held,
        }
    }
}

/// A plan [`Ledger::store_plan`] writes.
pub(super) struct PlanToStore<'e, 'w> {
    pub(super) event: &'e Event,
    pub(super) publisher: Option<&'e str>,
    pub(super) chunks: PlanChunks<'e>,
    pub(super) unassigned: Vec<TenantId>,
    /// A record for the audit trail, by whom, written with the event's
    /// record (a reconcile's).
    pub(super) audit: Option<(&'w str, AuditWhat)>,
}

/// Where a plan's action ids are kept: in its event record (a plan written
/// in one transaction), or in `event_actions` (a plan written in chunks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IdsKept {
    InRecord,
    InTree,
}

/// The trees an acceptance writes, by name, inside one transaction.
struct AcceptTx<'a> {
    inventory: &'a TransactionalTree,
    index: &'a TransactionalTree,
    events: &'a TransactionalTree,
    actions: &'a TransactionalTree,
    event_actions: &'a TransactionalTree,
    due: &'a TransactionalTree,
    open_events: &'a TransactionalTree,
    audit: &'a TransactionalTree,
    outbox: &'a TransactionalTree,
}

/// The trees of [`AcceptTx`] as sled hands them to a transaction.
type AcceptTrees = (
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
);

impl<'a> AcceptTx<'a> {
    fn of(
        (inventory, index, events, actions, event_actions, due, open_events, audit, outbox): &'a AcceptTrees,
    ) -> Self {
        AcceptTx {
            inventory,
            index,
            events,
            actions,
            event_actions,
            due,
            open_events,
            audit,
            outbox,
        }
    }

    /// Where an event's end is kept.
    fn end(&self) -> EventEnd<'a> {
        EventEnd {
            open_events: self.open_events,
            events: self.events,
            outbox: self.outbox,
        }
    }
}

/// What the event's record says, given the plan's size and where its ids are.
struct RecordTemplate<'e> {
    seq: EventSeq,
    event: &'e Event,
    publisher: Option<&'e str>,
    release: Release,
    now: DateTime<Utc>,
    unassigned: &'e [TenantId],
}

impl RecordTemplate<'_> {
    fn record(&self, total: usize, action_ids: Option<Vec<ActionId>>) -> EventRecord {
        EventRecord {
            seq: self.seq,
            event: self.event.clone(),
            state: self.release.event_state(),
            accepted_at: self.now,
            action_count: total as u64,
            unassigned: self.unassigned.to_vec(),
            completed_at: (total == 0).then_some(self.now),
            publisher: self.publisher.map(str::to_owned),
            // Kept in the record when the plan is written in one transaction.
            open_actions: (action_ids.is_some() && self.release == Release::Now)
                .then_some(total as u64),
            action_ids,
        }
    }
}

impl Ledger {
    /// Whether `(source, id)` was accepted before.
    pub fn is_duplicate(&self, source: &str, id: &str) -> Result<bool> {
        let store = self.store()?;
        Ok(store.index.contains_key(event_id_key(source, id))?)
    }

    /// Computes the plan an event would produce, changing nothing.
    pub fn preview(&self, event: &Event) -> Result<Plan> {
        let _planning = self.planning();
        planner::plan(event, &LedgerView(self))
    }

    /// Accepts an event: deduplicates it by `(source, id)`, plans it against
    /// the inventory, and stores the plan, the inventory changes and the
    /// actions. A plan of up to [`ACCEPT_CHUNK`] actions is one transaction;
    /// a larger one is written a chunk at a time, the deduplication marker
    /// last (see [`PlanChunks`]). Not durable until [`Ledger::flush`].
    pub fn accept(
        &self,
        event: &Event,
        publisher: Option<&str>,
        now: DateTime<Utc>,
        max_actions_per_event: usize,
    ) -> Result<AcceptOutcome> {
        let _writing = self.writing();
        let store = self.store()?;
        let _planning = self.planning();
        if self.is_duplicate(&event.source, &event.id)? {
            return Ok(AcceptOutcome::Duplicate);
        }
        let (chunks, unassigned) = match planner::fan_out(event) {
            Some(fan_out) => (PlanChunks::streamed(fan_out), Vec::new()),
            None => {
                let plan = planner::plan(event, &LedgerView(self))?;
                (PlanChunks::planned(plan.changes), plan.unassigned)
            }
        };
        self.store_plan(
            &store,
            PlanToStore {
                event,
                publisher,
                chunks,
                unassigned,
                audit: None,
            },
            now,
            max_actions_per_event,
        )
    }

    /// Stores a plan: its inventory changes, its actions and its event
    /// record (with `plan.audit` appended to the trail in the transaction
    /// that writes the record). A plan of up to [`ACCEPT_CHUNK`] actions is
    /// one transaction; a larger one is written a chunk at a time, the
    /// deduplication marker last. The caller holds the write gate and the
    /// planning lock.
    pub(super) fn store_plan(
        &self,
        store: &Store,
        plan: PlanToStore<'_, '_>,
        now: DateTime<Utc>,
        max_actions_per_event: usize,
    ) -> Result<AcceptOutcome> {
        let PlanToStore {
            event,
            publisher,
            mut chunks,
            unassigned,
            audit: audited,
        } = plan;
        let first = chunks.next_chunk(self)?;
        let single = chunks.is_done();
        // Whether the plan is held is known before anything is written: from
        // its size when it fits one chunk, else see `PlanChunks::exceeds`.
        let release = if single {
            Release::of_plan(first.len(), max_actions_per_event)
        } else if chunks.exceeds(self, max_actions_per_event)? {
            Release::Held
        } else {
            Release::Now
        };
        let seq = EventSeq::new(store.db.generate_id()?);
        let (state, not_before) = initial_state(event, release, now);
        let template = RecordTemplate {
            seq,
            event,
            publisher,
            release,
            now,
            unassigned: &unassigned,
        };
        let trees = store.accept_trees();

        if single {
            // The usual case: plan, inventory changes, actions and the
            // deduplication marker in one transaction.
            let total = first.len();
            let new_actions = self.new_actions(event, seq, &first, state, now, not_before)?;
            let record = template.record(
                total,
                Some(new_actions.iter().map(|a| a.action_id).collect()),
            );
            let cancelled = trees
                .transaction(|trees| {
                    let tx = AcceptTx::of(trees);
                    let written = write_changes(
                        &tx,
                        seq,
                        &first,
                        &new_actions,
                        release,
                        IdsKept::InRecord,
                        now,
                    )?;
                    add_inventory_size(tx.index, written.new_accounts)?;
                    if release == Release::Now && total > 0 {
                        count_open_events(tx.open_events, 1)?;
                    }
                    write_event_marker(&tx, event, &record)?;
                    if let Some((who, what)) = &audited {
                        audit::append(tx.audit, who, [(now, what.clone())])?;
                    }
                    Ok(written.superseded)
                })
                .map_err(tx_error)?;
            return Ok(accept_outcome(
                seq, total, state, release, unassigned, cancelled, None,
            ));
        }

        // A large plan (a partner-ID change, a contract end at a big
        // customer) is written a chunk at a time. The event's open-action
        // count starts at one more than its first chunk — the marker's own
        // decrement, so the event cannot complete while chunks are still being
        // written — and grows with each chunk. If the worker dies in between,
        // the event was not acknowledged: it is redelivered and re-planned
        // against the inventory the written chunks already changed, while
        // their actions run as stored.
        let _storing = StoringLargePlan::start(&self.storing_large_plan);
        let mut cancelled = Vec::new();
        let mut total = 0usize;
        let mut chunk = first;
        loop {
            let new_actions = self.new_actions(event, seq, &chunk, state, now, not_before)?;
            let marker_share = u64::from(total == 0);
            let chunk_cancelled = trees
                .transaction(|trees| {
                    let tx = AcceptTx::of(trees);
                    if release == Release::Now {
                        // The first chunk also adds the marker's share, and
                        // notes it for the next open should this plan be cut
                        // off (see `storing_key`).
                        if marker_share == 1 {
                            tx.index.insert(storing_key(seq), &[])?;
                        }
                        increment_open(
                            tx.open_events,
                            tx.events,
                            seq,
                            chunk.len() as u64 + marker_share,
                        )?;
                    }
                    let written = write_changes(
                        &tx,
                        seq,
                        &chunk,
                        &new_actions,
                        release,
                        IdsKept::InTree,
                        now,
                    )?;
                    add_inventory_size(tx.index, written.new_accounts)?;
                    Ok(written.superseded)
                })
                .map_err(tx_error)?;
            total += chunk.len();
            cancelled.extend(chunk_cancelled);
            if chunks.is_done() {
                break;
            }
            #[cfg(test)]
            tests::cut_off_point()?;
            chunk = chunks.next_chunk(self)?;
        }
        let record = template.record(total, None);
        let completed = (
            &store.index,
            &store.events,
            &store.open_events,
            &store.outbox,
            &store.audit,
        )
            .transaction(|(index, events, open_events, outbox, audit)| {
                write_marker(index, events, outbox, event, &record)?;
                index.remove(storing_key(seq))?;
                if let Some((who, what)) = &audited {
                    audit::append(audit, who, [(now, what.clone())])?;
                }
                let end = EventEnd {
                    open_events,
                    events,
                    outbox,
                };
                match release {
                    Release::Held => Ok(None),
                    Release::Now => decrement_open(end, seq, now),
                }
            })
            .map_err(tx_error)?;
        Ok(accept_outcome(
            seq, total, state, release, unassigned, cancelled, completed,
        ))
    }

    /// Accepts a run of `project.assignment.started` events in ONE
    /// transaction (each reads only its own account, so each is planned
    /// inside the transaction and sees the writes of those before it). Same
    /// outcome, event by event, as calling [`Ledger::accept`] in order.
    pub fn accept_assignments(
        &self,
        assignments: &[(Assignment<'_>, Option<&str>)],
        now: DateTime<Utc>,
        max_actions_per_event: usize,
    ) -> Result<Vec<AcceptOutcome>> {
        let _writing = self.writing();
        let store = self.store()?;
        let _planning = self.planning();
        // Two ids per event (sequence, action), drawn outside the closure,
        // which sled may run more than once.
        let mut ids = Vec::with_capacity(assignments.len());
        for _ in assignments {
            ids.push((
                EventSeq::new(store.db.generate_id()?),
                ActionId::new(store.db.generate_id()?),
            ));
        }
        let release = Release::of_plan(1, max_actions_per_event);
        let trees = store.accept_trees();
        trees
            .transaction(|trees| {
                let tx = AcceptTx::of(trees);
                let mut outcomes = Vec::with_capacity(assignments.len());
                let mut added = 0;
                let mut opened = 0;
                for ((assignment, publisher), (seq, action_id)) in assignments.iter().zip(&ids) {
                    let event = assignment.event();
                    if tx
                        .index
                        .get(event_id_key(&event.source, &event.id))?
                        .is_some()
                    {
                        outcomes.push(AcceptOutcome::Duplicate);
                        continue;
                    }
                    let key = assignment.key();
                    let key = account_key_bytes(&key.tenant_id, &key.object_id);
                    let before: Option<InventoryEntry> = match tx.inventory.get(&key)? {
                        Some(bytes) => Some(tx_decode(&key, &bytes)?),
                        None => None,
                    };
                    let change = assignment.change(before);
                    let (state, not_before) = initial_state(event, release, now);
                    let action =
                        new_action(event, *seq, *action_id, &change, state, now, not_before);
                    let written = write_changes(
                        &tx,
                        *seq,
                        std::slice::from_ref(&change),
                        std::slice::from_ref(&action),
                        release,
                        IdsKept::InRecord,
                        now,
                    )?;
                    added += written.new_accounts;
                    if release == Release::Now {
                        opened += 1;
                    }
                    let template = RecordTemplate {
                        seq: *seq,
                        event,
                        publisher: *publisher,
                        release,
                        now,
                        unassigned: &[],
                    };
                    let record = template.record(1, Some(vec![*action_id]));
                    write_event_marker(&tx, event, &record)?;
                    outcomes.push(accept_outcome(
                        *seq,
                        1,
                        state,
                        release,
                        Vec::new(),
                        written.superseded,
                        None,
                    ));
                }
                add_inventory_size(tx.index, added)?;
                count_open_events(tx.open_events, opened)?;
                Ok(outcomes)
            })
            .map_err(tx_error)
    }
}

impl Store {
    /// The trees an acceptance writes, in the order of [`AcceptTx`].
    fn accept_trees(
        &self,
    ) -> (
        &sled::Tree,
        &sled::Tree,
        &sled::Tree,
        &sled::Tree,
        &sled::Tree,
        &sled::Tree,
        &sled::Tree,
        &sled::Tree,
        &sled::Tree,
    ) {
        (
            &self.inventory,
            &self.index,
            &self.events,
            &self.actions,
            &self.event_actions,
            &self.due,
            &self.open_events,
            &self.audit,
            &self.outbox,
        )
    }
}

impl Ledger {
    /// The action records of a chunk of planned changes.
    fn new_actions(
        &self,
        event: &Event,
        seq: EventSeq,
        changes: &[PlannedChange],
        state: ActionState,
        now: DateTime<Utc>,
        not_before: Option<DateTime<Utc>>,
    ) -> Result<Vec<ActionRecord>> {
        let store = self.store()?;
        changes
            .iter()
            .map(|change| {
                let action_id = ActionId::new(store.db.generate_id()?);
                Ok(new_action(
                    event, seq, action_id, change, state, now, not_before,
                ))
            })
            .collect()
    }
}

/// The state a new action of `event` starts in, and the `effective_at` it
/// waits for, if that is still ahead.
fn initial_state(
    event: &Event,
    release: Release,
    now: DateTime<Utc>,
) -> (ActionState, Option<DateTime<Utc>>) {
    let not_before = event.effective_at().filter(|at| *at > now);
    let state = match release {
        Release::Held => ActionState::Held,
        Release::Now if not_before.is_some() => ActionState::Scheduled,
        Release::Now => ActionState::Pending,
    };
    (state, not_before)
}

/// The pending (or scheduled, or held) action of a planned change.
fn new_action(
    event: &Event,
    seq: EventSeq,
    action_id: ActionId,
    change: &PlannedChange,
    state: ActionState,
    now: DateTime<Utc>,
    not_before: Option<DateTime<Utc>>,
) -> ActionRecord {
    ActionRecord {
        action_id,
        event_seq: seq,
        event_id: event.id.clone(),
        event_source: event.source.clone(),
        event_type: event.event_type,
        tenant_id: change.account.tenant_id.clone(),
        object_id: change.account.object_id.clone(),
        employee_id: change.account.employee_id.clone(),
        credential: change.account.credential.clone(),
        contract_id: change.account.contract_id.clone(),
        op: change.op,
        desired: change.desired.clone(),
        state,
        attempts: 0,
        last_error: None,
        created_at: now,
        updated_at: now,
        not_before,
        next_attempt_at: None,
        first_attempt_at: None,
        before_partner_id: None,
        after_partner_id: None,
        dry_run: false,
        detail: None,
        completed_at: None,
        verified_at: None,
    }
}

/// What [`write_changes`] did.
struct Written {
    /// Older unfinished actions of the same accounts, now cancelled.
    superseded: Vec<Superseded>,
    /// Accounts new to the inventory (the caller adds them to the inventory's
    /// size once per transaction).
    new_accounts: u64,
}

/// Writes planned changes and their actions; supersedes older unfinished
/// actions of the same accounts. Held plans store their actions only.
fn write_changes(
    tx: &AcceptTx<'_>,
    seq: EventSeq,
    changes: &[PlannedChange],
    new_actions: &[ActionRecord],
    release: Release,
    ids: IdsKept,
    now: DateTime<Utc>,
) -> TxResult<Written> {
    let mut cancelled = Vec::new();
    let mut added = 0u64;
    for (change, action) in changes.iter().zip(new_actions) {
        tx.actions
            .insert(&action.action_id.to_be_bytes(), encode(action))?;
        if ids == IdsKept::InTree {
            tx.event_actions
                .insert(&pair_key(seq.get(), action.action_id.get()), &[])?;
        }
        if release == Release::Held {
            continue;
        }
        tx.due.insert(
            &due_key(action.due_at(), action.action_id),
            action.tenant_id.as_str().as_bytes(),
        )?;
        let entry = InventoryEntry {
            account: change.account.clone(),
            desired: change.desired.clone(),
            assignment_active: change.assignment.is_active(),
            last_event_seq: Some(seq),
            current_action: Some(action.action_id),
            updated_at: now,
        };
        if let Some(previous) = change.previous.as_ref()
            && let Some(previous_action) = previous.current_action
            && let Some(c) =
                supersede(tx.actions, tx.due, tx.audit, tx.end(), previous_action, now)?
        {
            cancelled.push(c);
        }
        added += u64::from(write_inventory(
            tx.inventory,
            tx.index,
            change.previous.as_ref().map(|p| &p.employee_id),
            &entry,
        )?);
    }
    Ok(Written {
        superseded: cancelled,
        new_accounts: added,
    })
}

/// The event record and its deduplication keys: once these are written, a
/// redelivery of `(source, id)` is a duplicate.
fn write_event_marker(tx: &AcceptTx<'_>, event: &Event, record: &EventRecord) -> TxResult<()> {
    write_marker(tx.index, tx.events, tx.outbox, event, record)
}

/// [`write_event_marker`] on the trees it writes; with the result its
/// publisher is owed when the plan is held, or has no action at all (the
/// event completes as it is accepted).
fn write_marker(
    index: &TransactionalTree,
    events: &TransactionalTree,
    outbox: &TransactionalTree,
    event: &Event,
    record: &EventRecord,
) -> TxResult<()> {
    let seq = record.seq;
    index.insert(event_id_key(&event.source, &event.id), &seq.to_be_bytes())?;
    events.insert(&seq.to_be_bytes(), encode(record))?;
    if record.state == EventState::Held {
        index.insert(held_key(seq), &[])?;
        outbox::plan_held(outbox, record)?;
    }
    if record.completed_at.is_some() {
        outbox::event_completed(outbox, record, outbox::Completing::First)?;
    }
    Ok(())
}

fn accept_outcome(
    seq: EventSeq,
    total: usize,
    state: ActionState,
    release: Release,
    unassigned: Vec<TenantId>,
    cancelled: Vec<Superseded>,
    completed: Option<EventRecord>,
) -> AcceptOutcome {
    let actions = total as u64;
    match release {
        Release::Held => AcceptOutcome::Held { seq, actions },
        Release::Now => AcceptOutcome::Accepted {
            seq,
            actions,
            scheduled: if state == ActionState::Scheduled {
                actions
            } else {
                0
            },
            unassigned,
            cancelled,
            completed: completed.map(Box::new),
        },
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::cell::Cell;

    use super::super::LedgerError;

    thread_local! {
        /// Chunks a large plan may still write on this thread before its
        /// accept fails as a crash would cut it off; `None`: never.
        static CUT_OFF_AFTER: Cell<Option<usize>> = const { Cell::new(None) };
    }

    /// Makes the next large plans on this thread stop after `chunks` chunks.
    pub fn cut_off_after(chunks: Option<usize>) {
        CUT_OFF_AFTER.with(|cell| cell.set(chunks));
    }

    pub(super) fn cut_off_point() -> Result<(), LedgerError> {
        CUT_OFF_AFTER.with(|cell| match cell.get() {
            Some(0) | Some(1) => Err(LedgerError::Unavailable("cut off by a test".into())),
            Some(n) => {
                cell.set(Some(n - 1));
                Ok(())
            }
            None => Ok(()),
        })
    }
}
