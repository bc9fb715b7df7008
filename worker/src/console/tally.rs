//! What the console counts without reading every action on every page: the
//! ids of the actions that need a person (failed, manual, orphaned) and the
//! last 24 hours of outcomes, kept in memory and brought up to date from the
//! audit trail.
//!
//! The ledger keeps no count of actions by terminal state, and a page must
//! not read 100,000 actions to find the few that failed. So the tally reads
//! every action once — a page at a time, in the background when the worker
//! starts — and from then on follows the audit trail, which records every
//! action outcome and every retry in the transaction that made it: each new
//! record moves one action id between the sets. Reading the trail's head
//! *before* the first scan makes any change that races the scan show up in
//! the records followed afterwards; applying a record twice changes nothing.
//! Retention removes actions without an audit record, so a listed id whose
//! action is gone is dropped when a page looks it up, and the whole tally
//! is recounted hourly in the background.
//!
//! What is kept is bounded: three sets of 8-byte ids (as many as actions in
//! those states) and 25 hourly buckets.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Duration, DurationRound, Utc};
use palworker_core::{
    ActionId, ActionState, AuditEntry, AuditRecord, AuditWhat, Op, StatusFilter,
    drift::ReconcileReport,
};

use crate::clock::Clock;
use crate::ledger::{Ledger, LedgerError};

/// Audit records read per visit of the ledger while catching up.
const FOLLOW_PAGE: usize = 4_096;
/// How long a tally is trusted before it is recounted from the actions.
const RECOUNT_AFTER: Duration = Duration::hours(1);
/// The window of the charts.
pub const WINDOW_HOURS: i64 = 24;

/// Upper bounds (seconds) of the time-to-revocation buckets: those of
/// `palworker_revocation_seconds`, so the two tell the same story.
pub const REVOCATION_BOUNDS: [f64; 17] = [
    1.0, 10.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 43200.0, 86400.0,
    172800.0, 259200.0, 604800.0, 1209600.0, 2592000.0,
];

/// Outcomes within one hour.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Hour {
    /// Links written or found as desired (`done`, `noop`).
    pub succeeded: u64,
    pub failed: u64,
    /// Everything else that ended: cancelled, manual, skipped, orphaned.
    pub other: u64,
    /// Removed links verified gone this hour, by time to revocation
    /// (counts per [`REVOCATION_BOUNDS`] bucket, the last one beyond).
    pub revocations: [u64; REVOCATION_BOUNDS.len() + 1],
    /// The longest time to revocation this hour, in seconds.
    pub revocation_max: f64,
}

impl Hour {
    pub fn finished(&self) -> u64 {
        self.succeeded + self.failed + self.other
    }

    pub fn revoked(&self) -> u64 {
        self.revocations.iter().sum()
    }

    /// The median time to revocation, as the upper bound of the bucket it
    /// falls in (the longest one seen, when beyond the last bound).
    pub fn revocation_median(&self) -> Option<f64> {
        let total = self.revoked();
        if total == 0 {
            return None;
        }
        let mut seen = 0;
        for (index, count) in self.revocations.iter().enumerate() {
            seen += count;
            if seen * 2 >= total {
                return Some(
                    REVOCATION_BOUNDS
                        .get(index)
                        .copied()
                        .unwrap_or(self.revocation_max)
                        .min(self.revocation_max),
                );
            }
        }
        Some(self.revocation_max)
    }
}

/// A moment's tally.
#[derive(Debug, Clone, Default)]
pub struct Counts {
    pub failed: BTreeSet<ActionId>,
    pub manual: BTreeSet<ActionId>,
    pub orphaned: BTreeSet<ActionId>,
    /// Hour start → outcomes, the last [`WINDOW_HOURS`] + 1 hours.
    pub hours: BTreeMap<DateTime<Utc>, Hour>,
    /// The last reconcile recorded in the window, with who ran it.
    pub last_reconcile: Option<(DateTime<Utc>, String, ReconcileReport)>,
    /// The next audit record to read.
    next_seq: u64,
    counted_at: Option<DateTime<Utc>>,
}

/// The console's tally of one ledger.
#[derive(Clone)]
pub struct Tally {
    ledger: Arc<Ledger>,
    clock: Arc<dyn Clock>,
    counts: Arc<Mutex<Option<Counts>>>,
    /// Set while a background recount runs.
    recounting: Arc<std::sync::atomic::AtomicBool>,
}

impl Tally {
    pub fn new(ledger: Arc<Ledger>, clock: Arc<dyn Clock>) -> Self {
        Tally {
            ledger,
            clock,
            counts: Arc::new(Mutex::new(None)),
            recounting: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        }
    }

    /// Counts in the background now, so the first page finds it done (a
    /// page asked for meanwhile waits for this count).
    pub fn start_counting(&self) {
        let tally = self.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn_blocking(move || {
                if let Err(error) = tally.current() {
                    tracing::warn!(error = %error, "The console could not count the ledger's actions.");
                }
            });
        }
    }

    /// The tally, brought up to date with the audit trail (blocking: it
    /// reads the ledger). The first call waits for the first count.
    pub fn current(&self) -> Result<Counts, LedgerError> {
        let mut guard = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let counts = match guard.as_mut() {
            Some(counts) => counts,
            None => guard.insert(count(&self.ledger, self.clock.now())?),
        };
        let now = self.clock.now();
        follow(&self.ledger, counts, now)?;
        let stale = counts.counted_at.is_none_or(|at| now - at > RECOUNT_AFTER);
        let snapshot = counts.clone();
        drop(guard);
        if stale {
            self.recount_in_background();
        }
        Ok(snapshot)
    }

    /// Forgets an id whose action is gone (pruned by retention).
    pub fn forget(&self, id: ActionId) {
        if let Some(counts) = self
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
        {
            counts.failed.remove(&id);
            counts.manual.remove(&id);
            counts.orphaned.remove(&id);
        }
    }

    /// Recounts from the actions on a blocking thread, then takes the new
    /// count's place (caught up with what happened meanwhile).
    fn recount_in_background(&self) {
        use std::sync::atomic::Ordering;
        if self.recounting.swap(true, Ordering::AcqRel) {
            return;
        }
        let tally = self.clone();
        let spawned = tokio::runtime::Handle::try_current().map(|runtime| {
            runtime.spawn_blocking(move || {
                let fresh = count(&tally.ledger, tally.clock.now());
                match fresh {
                    Ok(mut fresh) => {
                        let mut guard =
                            tally.counts.lock().unwrap_or_else(PoisonError::into_inner);
                        if follow(&tally.ledger, &mut fresh, tally.clock.now()).is_ok() {
                            *guard = Some(fresh);
                        }
                    }
                    Err(error) => {
                        tracing::warn!(error = %error, "The console could not count the ledger's actions.")
                    }
                }
                tally.recounting.store(false, Ordering::Release);
            })
        });
        if spawned.is_err() {
            self.recounting.store(false, Ordering::Release);
        }
    }
}

/// A fresh count: the audit trail's head first, then every action (a page
/// at a time), then the last 24 hours of the trail, newest first.
fn count(ledger: &Ledger, now: DateTime<Utc>) -> Result<Counts, LedgerError> {
    let head = ledger.audit_next_seq()?;
    let mut counts = Counts {
        next_seq: head,
        counted_at: Some(now),
        ..Counts::default()
    };
    for action in ledger.iter_actions(StatusFilter::default()) {
        let action = action?;
        place(&mut counts, action.action_id, action.state);
    }
    let since = window_start(now);
    let mut before = Some(head);
    while let Some(cursor) = before {
        let page = ledger.audit_newest_first(Some(cursor), FOLLOW_PAGE, FOLLOW_PAGE, |_| true)?;
        for entry in &page.items {
            if entry.at >= since {
                record_history(ledger, &mut counts, entry, since)?;
            }
        }
        // The trail is in time order but for the instants of one pass of
        // the executor: a record an hour older than the window ends it.
        let past_the_window = page
            .items
            .last()
            .is_some_and(|oldest| oldest.at < since - Duration::hours(1));
        before = if past_the_window { None } else { page.next };
    }
    Ok(counts)
}

/// Applies the audit records appended since the tally last looked.
fn follow(ledger: &Ledger, counts: &mut Counts, now: DateTime<Utc>) -> Result<(), LedgerError> {
    let since = window_start(now);
    loop {
        let entries = ledger.audit_entries_from(counts.next_seq, FOLLOW_PAGE)?;
        let Some(last) = entries.last() else {
            break;
        };
        counts.next_seq = last.seq + 1;
        let full = entries.len() == FOLLOW_PAGE;
        for entry in &entries {
            match &entry.what {
                AuditWhat::ActionOutcome(record) => {
                    place(counts, record.action.action_id, record.outcome);
                }
                AuditWhat::Retry { action_id, .. } => {
                    counts.failed.remove(action_id);
                }
                _ => {}
            }
            if entry.at >= since {
                record_history(ledger, counts, entry, since)?;
            }
        }
        if !full {
            break;
        }
    }
    counts.hours.retain(|hour, _| *hour >= since);
    Ok(())
}

/// The first hour of the window ending at `now` (its partial hour included).
fn window_start(now: DateTime<Utc>) -> DateTime<Utc> {
    hour_of(now) - Duration::hours(WINDOW_HOURS)
}

pub fn hour_of(at: DateTime<Utc>) -> DateTime<Utc> {
    at.duration_trunc(Duration::hours(1)).unwrap_or(at)
}

/// Puts an action's id in the set of its state, and in no other.
fn place(counts: &mut Counts, id: ActionId, state: ActionState) {
    counts.failed.remove(&id);
    counts.manual.remove(&id);
    counts.orphaned.remove(&id);
    match state {
        ActionState::Failed => counts.failed.insert(id),
        ActionState::Manual => counts.manual.insert(id),
        ActionState::Orphaned => counts.orphaned.insert(id),
        _ => false,
    };
}

/// Adds one audit record within the window to the hourly history.
fn record_history(
    ledger: &Ledger,
    counts: &mut Counts,
    entry: &AuditEntry,
    since: DateTime<Utc>,
) -> Result<(), LedgerError> {
    match &entry.what {
        AuditWhat::ActionOutcome(record) => {
            let hour = counts.hours.entry(hour_of(entry.at)).or_default();
            match record.outcome {
                ActionState::Done | ActionState::Noop => hour.succeeded += 1,
                ActionState::Failed => hour.failed += 1,
                _ => hour.other += 1,
            }
            if let Some(seconds) = revocation_seconds(ledger, record)?
                && let Some(removed) = removed_at(record)
                && removed >= since
            {
                let hour = counts.hours.entry(hour_of(removed)).or_default();
                let bucket = REVOCATION_BOUNDS
                    .iter()
                    .position(|bound| seconds <= *bound)
                    .unwrap_or(REVOCATION_BOUNDS.len());
                hour.revocations[bucket] += 1;
                hour.revocation_max = hour.revocation_max.max(seconds);
            }
        }
        AuditWhat::Reconcile(report)
            if counts
                .last_reconcile
                .as_ref()
                .is_none_or(|(at, _, _)| *at <= entry.at) =>
        {
            counts.last_reconcile = Some((entry.at, entry.who.clone(), (**report).clone()));
        }
        _ => {}
    }
    Ok(())
}

/// When a removal's link was seen gone: verified, else completed.
fn removed_at(record: &AuditRecord) -> Option<DateTime<Utc>> {
    record.action.verified_at.or(record.completed_at)
}

/// Time to revocation of a removal that ended `done` (SPEC §11.3): from its
/// event's `effective_at` (the action's `not_before`), else its acceptance
/// (the action's creation), to the verified removal. Needs the action
/// record for `not_before`: `None` once it was pruned.
fn revocation_seconds(ledger: &Ledger, record: &AuditRecord) -> Result<Option<f64>, LedgerError> {
    if record.action.op != Op::Remove || record.outcome != ActionState::Done {
        return Ok(None);
    }
    let Some(removed) = removed_at(record) else {
        return Ok(None);
    };
    let due = match ledger.action(record.action.action_id)? {
        Some(action) => action.first_due(),
        None => return Ok(None),
    };
    Ok(Some(
        (removed - due).num_milliseconds().max(0) as f64 / 1000.0,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_is_the_bound_of_the_middle_bucket_never_above_the_longest() {
        let mut hour = Hour::default();
        assert_eq!(hour.revocation_median(), None);
        hour.revocations[1] = 3; // ≤ 10 s
        hour.revocations[4] = 1; // ≤ 900 s
        hour.revocation_max = 700.0;
        assert_eq!(hour.revocation_median(), Some(10.0));
        hour.revocations[4] = 5;
        assert_eq!(hour.revocation_median(), Some(700.0));
    }

    #[test]
    fn an_id_is_in_the_set_of_its_last_state_only() {
        let mut counts = Counts::default();
        let id = ActionId::new(7);
        place(&mut counts, id, ActionState::Failed);
        assert!(counts.failed.contains(&id));
        place(&mut counts, id, ActionState::Done);
        assert!(counts.failed.is_empty());
        place(&mut counts, id, ActionState::Manual);
        place(&mut counts, id, ActionState::Manual);
        assert_eq!(counts.manual.len(), 1);
        assert!(counts.failed.is_empty() && counts.orphaned.is_empty());
    }
}
