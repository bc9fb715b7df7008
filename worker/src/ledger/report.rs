//! Time to revocation (SPEC §11.3): `report revocations`, one row per event
//! that removes links, and the oldest removal still open (the gauge its
//! alert reads).
//!
//! Both stream: events are read a page at a time and each event's actions
//! one at a time (point lookups, like every scan here: see
//! `queries::evicting`), so neither ever holds the ledger in memory, nor a
//! database handle while a slow reader of the report waits.

use std::collections::BTreeSet;
use std::ops::Bound;

use chrono::{DateTime, Utc};
use palworker_core::{ActionId, ActionState, EventRecord, EventSeq, Op};
use palworker_events::{EmployeeId, EventData, EventType, TenantId};
use serde::{Deserialize, Serialize};

use super::codec::{decode, read_u64};
use super::queries::evicting;
use super::{Ledger, Result};

/// Events read per visit of the database.
const EVENT_PAGE: usize = 64;

/// One row of `report revocations`: an event whose plan removes links, and
/// how long they took to go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RevocationRow {
    /// The employee the event is about (a departure, an ended assignment),
    /// else every employee whose link it removes (a contract's end).
    pub employee_ids: Vec<EmployeeId>,
    pub event_id: String,
    pub event_source: String,
    pub event_type: EventType,
    /// When the links were to go: the event's `effective_at`, else its
    /// acceptance.
    pub effective_at: DateTime<Utc>,
    pub accepted_at: DateTime<Utc>,
    /// The tenants of its removals.
    pub tenant_ids: Vec<TenantId>,
    /// Links it removed (removals that ended `done`).
    pub links_removed: u64,
    /// Removals whose identity no longer existed in its tenant: the link
    /// ended with it (`orphaned`).
    pub links_orphaned: u64,
    /// Removals whose link may still be there: not run yet (pending,
    /// scheduled, held, in flight), `failed`, `manual`, or a dry run's
    /// `skipped`.
    pub links_open: u64,
    /// When the last of its removed links was verified gone (`verified_at`;
    /// when writes are not verified, when its action completed).
    pub last_removed_at: Option<DateTime<Utc>>,
    /// From `effective_at` to `last_removed_at`.
    pub seconds: Option<f64>,
}

/// What is open in the ledger at an instant, for the gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OpenWork {
    /// Actions waiting for their event's future `effective_at`.
    pub scheduled: u64,
    /// When the removal open longest was due: of the removals due and not
    /// finished (pending, retrying or in flight; not those waiting for a
    /// future `effective_at`, nor held plans), the earliest due time.
    pub oldest_open_removal_due: Option<DateTime<Utc>>,
}

/// Whether a plan of this type can remove a link (the planner links and
/// moves links for the others, never removes one).
fn may_remove(event_type: EventType) -> bool {
    !matches!(
        event_type,
        EventType::AssignmentStarted | EventType::EmployeeTransferred | EventType::PartnerIdChanged
    )
}

/// The employee an event names, if it names one.
fn named_employee(record: &EventRecord) -> Option<&EmployeeId> {
    match &record.event.data {
        EventData::EmployeeDeparted { employee_id, .. }
        | EventData::AssignmentEnded { employee_id, .. } => Some(employee_id),
        _ => None,
    }
}

impl Ledger {
    /// Visits one [`RevocationRow`] per event whose plan removes links, in
    /// acceptance order, those due at or after `since` (all without), until
    /// `visit` returns false.
    pub fn for_each_revocation(
        &self,
        since: Option<DateTime<Utc>>,
        mut visit: impl FnMut(RevocationRow) -> bool,
    ) -> Result<()> {
        let mut after: Option<EventSeq> = None;
        loop {
            let page = self.events_page(after, EVENT_PAGE)?;
            let Some(last) = page.last() else {
                return Ok(());
            };
            after = Some(last.seq);
            let exhausted = page.len() < EVENT_PAGE;
            for record in page {
                if !may_remove(record.event.event_type)
                    || since.is_some_and(|since| record.revocation_due() < since)
                {
                    continue;
                }
                if let Some(row) = self.revocation_row(&record)?
                    && !visit(row)
                {
                    return Ok(());
                }
            }
            if exhausted {
                return Ok(());
            }
        }
    }

    /// The row of one event, or `None` when its plan removes nothing.
    fn revocation_row(&self, record: &EventRecord) -> Result<Option<RevocationRow>> {
        let mut employees: BTreeSet<EmployeeId> =
            named_employee(record).cloned().into_iter().collect();
        let mut tenants: BTreeSet<TenantId> = BTreeSet::new();
        let (mut removed, mut orphaned, mut open) = (0u64, 0u64, 0u64);
        let mut last_removed_at: Option<DateTime<Utc>> = None;
        let mut removals = 0u64;
        for action in self.iter_event_actions(record.seq) {
            let action = action?;
            if action.op != Op::Remove {
                continue;
            }
            removals += 1;
            tenants.insert(action.tenant_id.clone());
            if named_employee(record).is_none() {
                employees.insert(action.employee_id.clone());
            }
            match action.state {
                ActionState::Done => {
                    removed += 1;
                    let at = action.removed_at();
                    last_removed_at = Some(last_removed_at.map_or(at, |last| last.max(at)));
                }
                ActionState::Orphaned => orphaned += 1,
                // Already without a link, or superseded by a later event
                // for the same account (whose own row tells of it).
                ActionState::Noop | ActionState::Cancelled => {}
                ActionState::Pending
                | ActionState::Scheduled
                | ActionState::Held
                | ActionState::InFlight
                | ActionState::Failed
                | ActionState::Manual
                | ActionState::Skipped => open += 1,
            }
        }
        if removals == 0 {
            return Ok(None);
        }
        let effective_at = record.revocation_due();
        Ok(Some(RevocationRow {
            employee_ids: employees.into_iter().collect(),
            event_id: record.event.id.clone(),
            event_source: record.event.source.clone(),
            event_type: record.event.event_type,
            effective_at,
            accepted_at: record.accepted_at,
            tenant_ids: tenants.into_iter().collect(),
            links_removed: removed,
            links_orphaned: orphaned,
            links_open: open,
            last_removed_at,
            seconds: last_removed_at
                .map(|at| ((at - effective_at).num_milliseconds().max(0) as f64) / 1000.0),
        }))
    }

    /// Up to `max` events after `after` (from the first when `None`).
    fn events_page(&self, after: Option<EventSeq>, max: usize) -> Result<Vec<EventRecord>> {
        let store = self.store()?;
        let start = match after {
            Some(seq) => Bound::Excluded(seq.to_be_bytes()),
            None => Bound::Unbounded,
        };
        let entries = store.events.range((start, Bound::Unbounded));
        evicting(&store.events, entries)
            .take(max)
            .map(|entry| {
                let (key, value) = entry?;
                decode(&key, &value)
            })
            .collect()
    }

    /// What is open at `now` ([`OpenWork`]): reads every action that is
    /// pending, scheduled or in flight, one at a time.
    pub fn open_work(&self, now: DateTime<Utc>) -> Result<OpenWork> {
        let store = self.store()?;
        let mut work = OpenWork::default();
        let due = evicting(&store.due, store.due.iter()).map(|entry| {
            entry.map(|(key, _)| ActionId::new(read_u64(key.get(8..).unwrap_or_default())))
        });
        let in_flight = evicting(&store.in_flight, store.in_flight.iter())
            .map(|entry| entry.map(|(key, _)| ActionId::new(read_u64(&key))));
        for id in due.chain(in_flight) {
            let Some(action) = self.action(id?)? else {
                continue;
            };
            if action.attempts == 0 && action.not_before.is_some_and(|at| at > now) {
                work.scheduled += 1;
                continue;
            }
            if action.op == Op::Remove && !action.state.is_terminal() {
                let due = action.first_due();
                work.oldest_open_removal_due = Some(
                    work.oldest_open_removal_due
                        .map_or(due, |oldest| oldest.min(due)),
                );
            }
        }
        Ok(work)
    }
}
