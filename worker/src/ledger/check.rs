//! `palworker ledger check [--repair]` (SPEC §11.1): every counter and index
//! the ledger keeps beside its records, recomputed from the records.
//!
//! The records — inventory entries, events, actions — are the truth; what
//! is derived from them is checked against them, both ways:
//! - `meta:inventory_accounts` = the number of inventory entries;
//! - `emp:{employee}\0{tenant}/{object}` ⇔ the inventory entries, by employee;
//! - `held:{seq}` ⇔ events in state held; an `approving:{seq}` marker only
//!   for a held event (an approval a crash interrupted; approving again
//!   finishes it);
//! - `eid:{id}\0{source}` → seq for every event (the deduplication marker);
//! - `due` ⇔ pending and scheduled actions, keyed by their due time, valued
//!   by their tenant;
//! - `in_flight` ⇔ in-flight actions (on a stopped worker's ledger,
//!   [`Ledger::open`] has made them pending already);
//! - per event, its count of non-terminal actions where it keeps it (its
//!   `open_events` entry or its record): held actions are not counted, and
//!   an approval under way holds one more; an event with none left is
//!   marked completed. A sequence number with actions but no event record
//!   (a large plan whose writing a crash interrupted: the redelivered event
//!   was planned again under a new one) keeps only its actions' count;
//! - the `open_events` counter = the number of events with a non-zero count.
//!
//! Memory stays bounded: every tree is scanned with `queries::evicting` (so
//! sled's cache evicts as it goes), every check is a point lookup, and the
//! count of open actions per event is kept only for events that have some.
//! Repairing rewrites the derived entry from the records.
//!
//! A check recounts a ledger nobody writes meanwhile: under a running worker
//! an action may end between reading it and reading its index entry, which
//! would be reported as a difference (and "repaired" wrongly). The CLI runs
//! it only on a stopped worker's ledger.

use std::collections::BTreeMap;
use std::fmt;

use chrono::Utc;
use palworker_core::{ActionRecord, ActionState, EventRecord, EventState, InventoryEntry};
use serde::Serialize;

use super::codec::{
    INVENTORY_SIZE_KEY, OPEN_COUNT_KEY, approving_key, decode, due_key, employee_index_key, encode,
    event_id_key, held_key, read_counter, read_u64,
};
use super::queries::evicting;
use super::{Ledger, Result, Store};

/// Whether [`Ledger::check`] only reports differences or also rewrites them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckMode {
    Report,
    Repair,
}

/// One difference between what the records say and a counter or index.
/// Serialised (`ledger check --json`) with its kind in `difference`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "difference", rename_all = "snake_case")]
pub enum Difference {
    /// `meta:inventory_accounts` differs from the number of accounts.
    InventorySize { stored: u64, actual: u64 },
    /// An account is missing from the employee index (lookups by employee
    /// — departures, transfers, `inventory list --employee` — miss it).
    EmployeeIndexMissing {
        employee_id: String,
        account: String,
    },
    /// An employee index entry names no account of that employee.
    EmployeeIndexStale {
        employee_id: String,
        account: String,
    },
    /// A held event has no `held:` marker.
    HeldMarkerMissing { seq: u64, event_id: String },
    /// A `held:` marker of an event that is not held.
    HeldMarkerStale { seq: u64 },
    /// An `approving:` marker of an event that is not held any more.
    ApprovingMarkerLeftover { seq: u64 },
    /// An event's deduplication marker is missing or names another event.
    EventIdMarker {
        seq: u64,
        event_id: String,
        event_source: String,
    },
    /// A pending or scheduled action is not in the due index at its due time.
    DueEntryMissing { action_id: u64, state: ActionState },
    /// A due entry of an action that is not pending or scheduled, or not due then.
    DueEntryStale { action_id: u64, due_millis: u64 },
    /// A due entry names another tenant than its action's.
    DueEntryTenant {
        action_id: u64,
        stored: String,
        actual: String,
    },
    /// An in-flight action is not in the `in_flight` index.
    InFlightEntryMissing { action_id: u64 },
    /// An `in_flight` entry of an action that is not in flight.
    InFlightEntryStale { action_id: u64 },
    /// An event's count of open actions is wrong (`event_id` is `None` for
    /// a sequence number without an event record).
    EventOpenActions {
        seq: u64,
        event_id: Option<String>,
        stored: u64,
        actual: u64,
    },
    /// An event with no open action left is not marked completed.
    EventNotCompleted { seq: u64, event_id: String },
    /// The number of open events is wrong.
    OpenEvents { stored: u64, actual: u64 },
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Difference::InventorySize { stored, actual } => write!(
                f,
                "inventory size: the counter says {stored} account(s), the inventory holds {actual}"
            ),
            Difference::EmployeeIndexMissing {
                employee_id,
                account,
            } => write!(
                f,
                "employee index: account {account} of employee {employee_id} is missing"
            ),
            Difference::EmployeeIndexStale {
                employee_id,
                account,
            } => write!(
                f,
                "employee index: lists account {account} under employee {employee_id}, the inventory does not"
            ),
            Difference::HeldMarkerMissing { seq, event_id } => write!(
                f,
                "held plans: event `{event_id}` (seq {seq}) is held but not marked held"
            ),
            Difference::HeldMarkerStale { seq } => {
                write!(
                    f,
                    "held plans: seq {seq} is marked held but is no held event"
                )
            }
            Difference::ApprovingMarkerLeftover { seq } => write!(
                f,
                "approvals: seq {seq} is marked as being approved but is no held event"
            ),
            Difference::EventIdMarker {
                seq,
                event_id,
                event_source,
            } => write!(
                f,
                "deduplication: event `{event_id}` from `{event_source}` (seq {seq}) has no marker naming it; a redelivery would be processed again"
            ),
            Difference::DueEntryMissing { action_id, state } => write!(
                f,
                "due index: action {action_id} is {} but not due at its due time; it would never run",
                state.as_str()
            ),
            Difference::DueEntryStale {
                action_id,
                due_millis,
            } => write!(
                f,
                "due index: action {action_id} is due at {due_millis} ms but is not a pending or scheduled action due then"
            ),
            Difference::DueEntryTenant {
                action_id,
                stored,
                actual,
            } => write!(
                f,
                "due index: action {action_id} is due under tenant `{stored}`, its tenant is `{actual}`"
            ),
            Difference::InFlightEntryMissing { action_id } => write!(
                f,
                "in-flight index: action {action_id} is in flight but not listed; a restart would not run it again"
            ),
            Difference::InFlightEntryStale { action_id } => write!(
                f,
                "in-flight index: lists action {action_id}, which is not in flight"
            ),
            Difference::EventOpenActions {
                seq,
                event_id: Some(event_id),
                stored,
                actual,
            } => write!(
                f,
                "open actions: event `{event_id}` (seq {seq}) counts {stored}, it has {actual}"
            ),
            Difference::EventOpenActions {
                seq,
                event_id: None,
                stored,
                actual,
            } => write!(
                f,
                "open actions: seq {seq} (no event record: a large plan cut off by a crash) counts {stored}, it has {actual}"
            ),
            Difference::EventNotCompleted { seq, event_id } => write!(
                f,
                "open actions: event `{event_id}` (seq {seq}) has none left but is not marked completed"
            ),
            Difference::OpenEvents { stored, actual } => write!(
                f,
                "open events: the counter says {stored}, {actual} event(s) have open actions"
            ),
        }
    }
}

/// Where an event keeps its count of open actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CountKept {
    /// Its `open_events` entry.
    Entry,
    /// Its record's `open_actions`.
    Record,
    /// Nowhere: zero.
    Nowhere,
}

impl Ledger {
    /// Recomputes every counter and index from the records and hands each
    /// difference to `report`; with [`CheckMode::Repair`] rewrites each one
    /// from the records (and flushes). Returns how many differences there
    /// were. Only on a ledger no worker writes meanwhile (see the module
    /// docs). Blocking, and it reads the whole ledger.
    pub fn check(&self, mode: CheckMode, report: &mut dyn FnMut(&Difference)) -> Result<u64> {
        let store = self.store()?;
        let mut check = Check {
            store: &store,
            mode,
            report,
            found: 0,
        };
        check.inventory()?;
        check.employee_index()?;
        let open = check.actions()?;
        check.due()?;
        check.in_flight()?;
        check.approving()?;
        check.held()?;
        let open = check.events(open)?;
        check.open_events(open)?;
        if mode == CheckMode::Repair && check.found > 0 {
            store.db.flush()?;
        }
        Ok(check.found)
    }
}

/// One run of [`Ledger::check`].
struct Check<'a> {
    store: &'a Store,
    mode: CheckMode,
    report: &'a mut dyn FnMut(&Difference),
    found: u64,
}

/// Open actions per sequence number (only those that have some), and the
/// number of events with open actions counted so far.
struct OpenCounts {
    by_seq: BTreeMap<u64, u64>,
    events: u64,
}

impl Check<'_> {
    /// Reports a difference; whether to repair it.
    fn found(&mut self, difference: Difference) -> bool {
        self.found += 1;
        (self.report)(&difference);
        self.mode == CheckMode::Repair
    }

    fn inventory(&mut self) -> Result<()> {
        let store = self.store;
        let mut accounts = 0u64;
        for item in evicting(&store.inventory, store.inventory.iter()) {
            let (key, value) = item?;
            let entry: InventoryEntry = decode(&key, &value)?;
            accounts += 1;
            let account = &entry.account;
            let index_key =
                employee_index_key(&account.employee_id, &account.tenant_id, &account.object_id);
            if !store.index.contains_key(&index_key)?
                && self.found(Difference::EmployeeIndexMissing {
                    employee_id: account.employee_id.as_str().to_owned(),
                    account: String::from_utf8_lossy(&key).into_owned(),
                })
            {
                store.index.insert(index_key, &[])?;
            }
        }
        let stored = read_counter(&store.index, INVENTORY_SIZE_KEY)?;
        if stored != accounts
            && self.found(Difference::InventorySize {
                stored,
                actual: accounts,
            })
        {
            store
                .index
                .insert(INVENTORY_SIZE_KEY, &accounts.to_be_bytes())?;
        }
        Ok(())
    }

    fn employee_index(&mut self) -> Result<()> {
        let store = self.store;
        const PREFIX: &[u8] = b"emp:";
        for item in evicting(&store.index, store.index.scan_prefix(PREFIX)) {
            let (key, _) = item?;
            let rest = &key[PREFIX.len()..];
            let (employee, account) = match rest.iter().position(|&b| b == 0) {
                Some(nul) => (&rest[..nul], &rest[nul + 1..]),
                None => (rest, &[][..]),
            };
            let listed = match store.inventory.get(account)? {
                Some(bytes) => {
                    let entry: InventoryEntry = decode(account, &bytes)?;
                    entry.account.employee_id.as_str().as_bytes() == employee
                }
                None => false,
            };
            if !listed
                && self.found(Difference::EmployeeIndexStale {
                    employee_id: String::from_utf8_lossy(employee).into_owned(),
                    account: String::from_utf8_lossy(account).into_owned(),
                })
            {
                store.index.remove(&key)?;
            }
        }
        Ok(())
    }

    /// Checks that each action is in the index its state needs, and counts
    /// the open actions of each event.
    fn actions(&mut self) -> Result<OpenCounts> {
        let store = self.store;
        let mut by_seq = BTreeMap::new();
        for item in evicting(&store.actions, store.actions.iter()) {
            let (key, value) = item?;
            let action: ActionRecord = decode(&key, &value)?;
            match action.state {
                ActionState::Pending | ActionState::Scheduled => {
                    let due = due_key(action.due_at(), action.action_id);
                    if !store.due.contains_key(due)?
                        && self.found(Difference::DueEntryMissing {
                            action_id: action.action_id.get(),
                            state: action.state,
                        })
                    {
                        store
                            .due
                            .insert(due, action.tenant_id.as_str().as_bytes())?;
                    }
                }
                ActionState::InFlight
                    if !store.in_flight.contains_key(&key)?
                        && self.found(Difference::InFlightEntryMissing {
                            action_id: action.action_id.get(),
                        }) =>
                {
                    store.in_flight.insert(&key, &[])?;
                }
                _ => {}
            }
            // A held action was never counted among its event's open actions.
            if !action.state.is_terminal() && action.state != ActionState::Held {
                *by_seq.entry(action.event_seq.get()).or_insert(0) += 1;
            }
        }
        Ok(OpenCounts { by_seq, events: 0 })
    }

    fn due(&mut self) -> Result<()> {
        let store = self.store;
        for item in evicting(&store.due, store.due.iter()) {
            let (key, tenant) = item?;
            let action_id = read_u64(key.get(8..).unwrap_or_default());
            let action_key = action_id.to_be_bytes();
            let action: Option<ActionRecord> = match store.actions.get(action_key)? {
                Some(bytes) => Some(decode(&action_key, &bytes)?),
                None => None,
            };
            let due_here = action.as_ref().filter(|action| {
                matches!(action.state, ActionState::Pending | ActionState::Scheduled)
                    && due_key(action.due_at(), action.action_id)[..] == key[..]
            });
            match due_here {
                None => {
                    if self.found(Difference::DueEntryStale {
                        action_id,
                        due_millis: read_u64(&key[..key.len().min(8)]),
                    }) {
                        store.due.remove(&key)?;
                    }
                }
                Some(action) if action.tenant_id.as_str().as_bytes() != &tenant[..] => {
                    if self.found(Difference::DueEntryTenant {
                        action_id,
                        stored: String::from_utf8_lossy(&tenant).into_owned(),
                        actual: action.tenant_id.as_str().to_owned(),
                    }) {
                        store
                            .due
                            .insert(&key, action.tenant_id.as_str().as_bytes())?;
                    }
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    fn in_flight(&mut self) -> Result<()> {
        let store = self.store;
        for item in evicting(&store.in_flight, store.in_flight.iter()) {
            let (key, _) = item?;
            let in_flight = match store.actions.get(&key)? {
                Some(bytes) => decode::<ActionRecord>(&key, &bytes)?.state == ActionState::InFlight,
                None => false,
            };
            if !in_flight
                && self.found(Difference::InFlightEntryStale {
                    action_id: read_u64(&key),
                })
            {
                store.in_flight.remove(&key)?;
            }
        }
        Ok(())
    }

    /// Whether the event with sequence number `seq` exists and is held.
    fn is_held(&self, seq: &[u8]) -> Result<bool> {
        Ok(match self.store.events.get(seq)? {
            Some(bytes) => decode::<EventRecord>(seq, &bytes)?.state == EventState::Held,
            None => false,
        })
    }

    fn approving(&mut self) -> Result<()> {
        let store = self.store;
        const PREFIX: &[u8] = b"approving:";
        for item in evicting(&store.index, store.index.scan_prefix(PREFIX)) {
            let (key, _) = item?;
            let seq = &key[PREFIX.len()..];
            if !self.is_held(seq)?
                && self.found(Difference::ApprovingMarkerLeftover { seq: read_u64(seq) })
            {
                store.index.remove(&key)?;
            }
        }
        Ok(())
    }

    fn held(&mut self) -> Result<()> {
        let store = self.store;
        const PREFIX: &[u8] = b"held:";
        for item in evicting(&store.index, store.index.scan_prefix(PREFIX)) {
            let (key, _) = item?;
            let seq = &key[PREFIX.len()..];
            if !self.is_held(seq)? && self.found(Difference::HeldMarkerStale { seq: read_u64(seq) })
            {
                store.index.remove(&key)?;
            }
        }
        Ok(())
    }

    /// Each event's markers, count of open actions and completion.
    fn events(&mut self, mut open: OpenCounts) -> Result<OpenCounts> {
        let store = self.store;
        for item in evicting(&store.events, store.events.iter()) {
            let (key, value) = item?;
            let mut record: EventRecord = decode(&key, &value)?;
            let seq = record.seq;
            let held = record.state == EventState::Held;
            if held
                && !store.index.contains_key(held_key(seq))?
                && self.found(Difference::HeldMarkerMissing {
                    seq: seq.get(),
                    event_id: record.event.id.clone(),
                })
            {
                store.index.insert(held_key(seq), &[])?;
            }
            let marker = event_id_key(&record.event.source, &record.event.id);
            let marked = store
                .index
                .get(&marker)?
                .is_some_and(|value| read_u64(&value) == seq.get());
            if !marked
                && self.found(Difference::EventIdMarker {
                    seq: seq.get(),
                    event_id: record.event.id.clone(),
                    event_source: record.event.source.clone(),
                })
            {
                store.index.insert(marker, &seq.to_be_bytes())?;
            }

            // An approval under way holds one share of the count.
            let approving = held && store.index.contains_key(approving_key(seq))?;
            let actual = open.by_seq.remove(&seq.get()).unwrap_or(0) + u64::from(approving);
            let entry = store.open_events.get(key.as_ref())?;
            let (stored, kept) = match (&entry, record.open_actions) {
                (Some(bytes), _) => (read_u64(bytes), CountKept::Entry),
                (None, Some(count)) => (count, CountKept::Record),
                (None, None) => (0, CountKept::Nowhere),
            };
            let mut rewrite = false;
            if stored != actual
                && self.found(Difference::EventOpenActions {
                    seq: seq.get(),
                    event_id: Some(record.event.id.clone()),
                    stored,
                    actual,
                })
            {
                match kept {
                    CountKept::Record => {
                        record.open_actions = Some(actual);
                        rewrite = true;
                    }
                    CountKept::Entry | CountKept::Nowhere if actual > 0 => {
                        store.open_events.insert(&key, &actual.to_be_bytes())?;
                    }
                    CountKept::Entry | CountKept::Nowhere => {
                        store.open_events.remove(&key)?;
                    }
                }
            }
            if actual > 0 {
                open.events += 1;
            } else if !held
                && record.completed_at.is_none()
                && self.found(Difference::EventNotCompleted {
                    seq: seq.get(),
                    event_id: record.event.id.clone(),
                })
            {
                record.completed_at = Some(Utc::now());
                rewrite = true;
            }
            if rewrite {
                store.events.insert(&key, encode(&record))?;
            }
        }
        Ok(open)
    }

    /// The counts of sequence numbers without an event record, and the
    /// number of open events.
    fn open_events(&mut self, mut open: OpenCounts) -> Result<()> {
        let store = self.store;
        for item in evicting(&store.open_events, store.open_events.iter()) {
            let (key, value) = item?;
            // The counter's own key; every event's key is its 8-byte seq.
            if key.len() != 8 || store.events.contains_key(&key)? {
                continue;
            }
            let seq = read_u64(&key);
            let stored = read_u64(&value);
            let actual = open.by_seq.remove(&seq).unwrap_or(0);
            if actual > 0 {
                open.events += 1;
            }
            if stored != actual
                && self.found(Difference::EventOpenActions {
                    seq,
                    event_id: None,
                    stored,
                    actual,
                })
            {
                if actual > 0 {
                    store.open_events.insert(&key, &actual.to_be_bytes())?;
                } else {
                    store.open_events.remove(&key)?;
                }
            }
        }
        // Open actions of a sequence number with neither record nor count.
        for (seq, actual) in std::mem::take(&mut open.by_seq) {
            open.events += 1;
            if self.found(Difference::EventOpenActions {
                seq,
                event_id: None,
                stored: 0,
                actual,
            }) {
                store
                    .open_events
                    .insert(seq.to_be_bytes(), &actual.to_be_bytes())?;
            }
        }
        let stored = read_counter(&store.open_events, OPEN_COUNT_KEY)?;
        if stored != open.events
            && self.found(Difference::OpenEvents {
                stored,
                actual: open.events,
            })
        {
            store
                .open_events
                .insert(OPEN_COUNT_KEY, &open.events.to_be_bytes())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Duration, TimeZone};
    use palworker_core::{ActionId, EventSeq, StatusFilter};
    use palworker_events::{Account, Event, PartnerId};

    use super::*;
    use crate::local::events;
    use crate::local::identities::{employee, object, tenant};

    fn event(value: serde_json::Value) -> Event {
        Event::from_json_slice(&serde_json::to_vec(&value).unwrap()).expect("a valid event")
    }

    fn account(e: usize) -> Account {
        serde_json::from_value(serde_json::json!({
            "tenant_id": tenant(0),
            "object_id": object(e, 0),
            "employee_id": employee(e),
            "credential": format!("sp-{e}"),
        }))
        .unwrap()
    }

    fn at(seconds: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + seconds, 0).unwrap()
    }

    /// A ledger in every state the check reads, by the ledger's own
    /// transitions: accounts 0..7; `pending` (a pending action, its count in
    /// its record), `in-flight` (claimed), `done` (finished, completed),
    /// `held` (a held plan over accounts 3 and 4) and `approved` (a held
    /// plan over accounts 5 and 6, approved: its count in `open_events`).
    struct Fixture {
        _dir: tempfile::TempDir,
        ledger: Ledger,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let ledger = Ledger::open(&dir.path().join("ledger"), 1 << 20).unwrap();
            let partner = |p: &str| Some(PartnerId::parse(p).unwrap());
            let rows = (0..7).map(|e| {
                let linked = match e {
                    3 | 4 => partner("333333"),
                    5 | 6 => partner("555555"),
                    _ => None,
                };
                (account(e), linked)
            });
            ledger.import_accounts(rows, at(0)).unwrap();
            for (id, e) in [("pending", 0), ("in-flight", 1), ("done", 2)] {
                let started = events::assignment_started(
                    id,
                    &employee(e),
                    &tenant(0),
                    &object(e, 0),
                    "111111",
                    Some(&format!("sp-{e}")),
                    None,
                );
                ledger.accept(&event(started), None, at(1), 10).unwrap();
            }
            let fixture = Fixture { _dir: dir, ledger };
            let in_flight = fixture.action_of("in-flight");
            fixture.ledger.claim(in_flight.action_id, at(2)).unwrap();
            let done = fixture.action_of("done");
            let mut done = fixture
                .ledger
                .claim(done.action_id, at(2))
                .unwrap()
                .unwrap();
            done.state = ActionState::Done;
            done.updated_at = at(3);
            done.completed_at = Some(at(3));
            fixture.ledger.finish(&done).unwrap();
            for (id, old, new) in [
                ("held", "333333", "444444"),
                ("approved", "555555", "666666"),
            ] {
                let change = events::partner_id_changed(id, old, new, None);
                fixture
                    .ledger
                    .accept(&event(change), None, at(4), 1)
                    .unwrap();
            }
            let approved = fixture.seq_of("approved");
            fixture.ledger.approve(approved, "operator", at(5)).unwrap();
            fixture
        }

        fn store(&self) -> std::sync::Arc<Store> {
            self.ledger.store().unwrap()
        }

        fn action_of(&self, event_id: &str) -> ActionRecord {
            self.ledger
                .actions(&StatusFilter {
                    event_id: Some(event_id.into()),
                    ..StatusFilter::default()
                })
                .unwrap()
                .remove(0)
        }

        fn seq_of(&self, event_id: &str) -> EventSeq {
            self.ledger.resolve_event(event_id, None).unwrap().seq
        }

        fn record(&self, event_id: &str) -> EventRecord {
            self.ledger.resolve_event(event_id, None).unwrap()
        }

        fn check(&self, mode: CheckMode) -> Vec<Difference> {
            let mut found = Vec::new();
            let count = self
                .ledger
                .check(mode, &mut |difference| found.push(difference.clone()))
                .unwrap();
            assert_eq!(count, found.len() as u64);
            found
        }
    }

    /// Corrupts a fresh fixture with `corrupt`; the check must find exactly
    /// `expected`, a repair must fix it, and a check after must be clean.
    fn check(
        corrupt: impl FnOnce(&Fixture, &Store),
        expected: impl FnOnce(&Fixture) -> Difference,
    ) {
        let fixture = Fixture::new();
        assert_eq!(
            fixture.check(CheckMode::Report),
            vec![],
            "the fixture is consistent"
        );
        corrupt(&fixture, &fixture.store());
        let expected = vec![expected(&fixture)];
        assert_eq!(fixture.check(CheckMode::Report), expected);
        assert_eq!(
            fixture.check(CheckMode::Report),
            expected,
            "a check changes nothing"
        );
        assert_eq!(fixture.check(CheckMode::Repair), expected);
        assert_eq!(fixture.check(CheckMode::Report), vec![], "repaired");
    }

    #[test]
    fn the_inventory_size_counter() {
        check(
            |_, store| {
                store
                    .index
                    .insert(INVENTORY_SIZE_KEY, &99u64.to_be_bytes())
                    .unwrap();
            },
            |_| Difference::InventorySize {
                stored: 99,
                actual: 7,
            },
        );
    }

    #[test]
    fn an_account_missing_from_the_employee_index() {
        check(
            |_, store| {
                let account = account(4);
                let key = employee_index_key(
                    &account.employee_id,
                    &account.tenant_id,
                    &account.object_id,
                );
                store.index.remove(key).unwrap();
            },
            |_| Difference::EmployeeIndexMissing {
                employee_id: employee(4),
                account: format!("{}/{}", tenant(0), object(4, 0)),
            },
        );
    }

    #[test]
    fn an_employee_index_entry_of_another_employee() {
        check(
            |_, store| {
                let key = format!("emp:E-99\0{}/{}", tenant(0), object(4, 0));
                store.index.insert(key.as_bytes(), &[]).unwrap();
            },
            |_| Difference::EmployeeIndexStale {
                employee_id: "E-99".into(),
                account: format!("{}/{}", tenant(0), object(4, 0)),
            },
        );
    }

    #[test]
    fn a_held_event_without_its_marker() {
        check(
            |f, store| {
                store.index.remove(held_key(f.seq_of("held"))).unwrap();
            },
            |f| Difference::HeldMarkerMissing {
                seq: f.seq_of("held").get(),
                event_id: "held".into(),
            },
        );
    }

    #[test]
    fn a_held_marker_of_an_event_that_is_not_held() {
        check(
            |f, store| {
                store
                    .index
                    .insert(held_key(f.seq_of("approved")), &[])
                    .unwrap();
            },
            |f| Difference::HeldMarkerStale {
                seq: f.seq_of("approved").get(),
            },
        );
    }

    #[test]
    fn an_approving_marker_left_over_after_the_approval() {
        check(
            |f, store| {
                store
                    .index
                    .insert(approving_key(f.seq_of("approved")), &[])
                    .unwrap();
            },
            |f| Difference::ApprovingMarkerLeftover {
                seq: f.seq_of("approved").get(),
            },
        );
    }

    #[test]
    fn an_event_without_its_deduplication_marker() {
        check(
            |f, store| {
                let record = f.record("done");
                store
                    .index
                    .remove(event_id_key(&record.event.source, &record.event.id))
                    .unwrap();
            },
            |f| {
                // Found by a scan: the lookup by id reads the marker removed.
                let seq = f
                    .ledger
                    .iter_actions(StatusFilter::default())
                    .map(Result::unwrap)
                    .find(|action| action.event_id == "done")
                    .unwrap()
                    .event_seq;
                Difference::EventIdMarker {
                    seq: seq.get(),
                    event_id: "done".into(),
                    event_source: f.ledger.event(seq).unwrap().unwrap().event.source,
                }
            },
        );
    }

    #[test]
    fn a_pending_action_missing_from_the_due_index() {
        check(
            |f, store| {
                let action = f.action_of("pending");
                store
                    .due
                    .remove(due_key(action.due_at(), action.action_id))
                    .unwrap();
            },
            |f| Difference::DueEntryMissing {
                action_id: f.action_of("pending").action_id.get(),
                state: ActionState::Pending,
            },
        );
    }

    #[test]
    fn a_due_entry_of_a_finished_action() {
        check(
            |f, store| {
                let action = f.action_of("done");
                store
                    .due
                    .insert(due_key(at(9), action.action_id), tenant(0).as_bytes())
                    .unwrap();
            },
            |f| Difference::DueEntryStale {
                action_id: f.action_of("done").action_id.get(),
                due_millis: at(9).timestamp_millis() as u64,
            },
        );
    }

    #[test]
    fn a_due_entry_at_another_time_than_its_actions() {
        check(
            |f, store| {
                let action = f.action_of("pending");
                let early = action.due_at() - Duration::seconds(1);
                store
                    .due
                    .insert(due_key(early, action.action_id), tenant(0).as_bytes())
                    .unwrap();
            },
            |f| {
                let action = f.action_of("pending");
                Difference::DueEntryStale {
                    action_id: action.action_id.get(),
                    due_millis: (action.due_at() - Duration::seconds(1)).timestamp_millis() as u64,
                }
            },
        );
    }

    #[test]
    fn a_due_entry_under_the_wrong_tenant() {
        check(
            |f, store| {
                let action = f.action_of("pending");
                store
                    .due
                    .insert(
                        due_key(action.due_at(), action.action_id),
                        tenant(7).as_bytes(),
                    )
                    .unwrap();
            },
            |f| Difference::DueEntryTenant {
                action_id: f.action_of("pending").action_id.get(),
                stored: tenant(7),
                actual: tenant(0),
            },
        );
    }

    #[test]
    fn an_in_flight_action_missing_from_the_in_flight_index() {
        check(
            |f, store| {
                let action = f.action_of("in-flight");
                store
                    .in_flight
                    .remove(action.action_id.to_be_bytes())
                    .unwrap();
            },
            |f| Difference::InFlightEntryMissing {
                action_id: f.action_of("in-flight").action_id.get(),
            },
        );
    }

    #[test]
    fn an_in_flight_entry_of_a_pending_action() {
        check(
            |f, store| {
                let action = f.action_of("pending");
                store
                    .in_flight
                    .insert(action.action_id.to_be_bytes(), &[])
                    .unwrap();
            },
            |f| Difference::InFlightEntryStale {
                action_id: f.action_of("pending").action_id.get(),
            },
        );
    }

    #[test]
    fn an_open_action_count_kept_in_the_record() {
        check(
            |f, store| {
                let mut record = f.record("pending");
                assert_eq!(record.open_actions, Some(1), "kept in the record");
                record.open_actions = Some(5);
                store
                    .events
                    .insert(record.seq.to_be_bytes(), encode(&record))
                    .unwrap();
            },
            |f| Difference::EventOpenActions {
                seq: f.seq_of("pending").get(),
                event_id: Some("pending".into()),
                stored: 5,
                actual: 1,
            },
        );
    }

    #[test]
    fn an_open_action_count_kept_in_open_events() {
        check(
            |f, store| {
                let key = f.seq_of("approved").to_be_bytes();
                assert_eq!(
                    store.open_events.get(key).unwrap().map(|v| read_u64(&v)),
                    Some(2),
                    "kept in open_events"
                );
                store.open_events.insert(key, &7u64.to_be_bytes()).unwrap();
            },
            |f| Difference::EventOpenActions {
                seq: f.seq_of("approved").get(),
                event_id: Some("approved".into()),
                stored: 7,
                actual: 2,
            },
        );
    }

    #[test]
    fn a_finished_event_not_marked_completed() {
        check(
            |f, store| {
                let mut record = f.record("done");
                record.completed_at = None;
                store
                    .events
                    .insert(record.seq.to_be_bytes(), encode(&record))
                    .unwrap();
            },
            |f| Difference::EventNotCompleted {
                seq: f.seq_of("done").get(),
                event_id: "done".into(),
            },
        );
    }

    #[test]
    fn the_open_events_counter() {
        check(
            |_, store| {
                store
                    .open_events
                    .insert(OPEN_COUNT_KEY, &0u64.to_be_bytes())
                    .unwrap();
            },
            // pending, in-flight, approved.
            |_| Difference::OpenEvents {
                stored: 0,
                actual: 3,
            },
        );
    }

    #[test]
    fn the_count_of_a_large_plan_cut_off_before_its_record() {
        check(
            |f, store| {
                // What a crash between the chunks of a large plan leaves: an
                // action and a count (one more: the record's share) under a
                // sequence number without a record.
                let mut orphan = f.action_of("pending");
                orphan.action_id = ActionId::new(1 << 40);
                orphan.event_seq = EventSeq::new(1 << 41);
                store
                    .actions
                    .insert(orphan.action_id.to_be_bytes(), encode(&orphan))
                    .unwrap();
                store
                    .due
                    .insert(
                        due_key(orphan.due_at(), orphan.action_id),
                        tenant(0).as_bytes(),
                    )
                    .unwrap();
                store
                    .open_events
                    .insert(orphan.event_seq.to_be_bytes(), &2u64.to_be_bytes())
                    .unwrap();
                let open = read_counter(&store.open_events, OPEN_COUNT_KEY).unwrap();
                store
                    .open_events
                    .insert(OPEN_COUNT_KEY, &(open + 1).to_be_bytes())
                    .unwrap();
            },
            |_| Difference::EventOpenActions {
                seq: 1 << 41,
                event_id: None,
                stored: 2,
                actual: 1,
            },
        );
    }

    #[test]
    fn a_ledger_after_large_plans_supersession_retries_and_rejections_is_consistent() {
        let fixture = Fixture::new();
        let ledger = &fixture.ledger;
        // A plan of more than one chunk (written a chunk at a time).
        let rows = (100..100 + 2 * crate::ledger::ACCEPT_CHUNK + 10)
            .map(|e| (account(e), Some(PartnerId::parse("777777").unwrap())));
        ledger.import_accounts(rows, at(6)).unwrap();
        let big = events::partner_id_changed("big", "777777", "888888", None);
        ledger.accept(&event(big), None, at(7), usize::MAX).unwrap();
        // A later event superseding a pending action.
        let again = events::assignment_started(
            "pending-again",
            &employee(0),
            &tenant(0),
            &object(0, 0),
            "222222",
            Some("sp-0"),
            None,
        );
        ledger.accept(&event(again), None, at(8), 10).unwrap();
        // A failed action retried (its event reopened), and a rejected plan.
        let in_flight = fixture.action_of("in-flight");
        let mut failed = ledger.action(in_flight.action_id).unwrap().unwrap();
        failed.state = ActionState::Failed;
        failed.updated_at = at(9);
        failed.completed_at = Some(at(9));
        ledger.finish(&failed).unwrap();
        ledger
            .retry_action(failed.action_id, "operator", at(10))
            .unwrap();
        ledger
            .reject(fixture.seq_of("held"), "operator", at(11))
            .unwrap();
        // Half of the large plan finished.
        let due = ledger
            .due_actions(at(12), crate::ledger::ACCEPT_CHUNK, |_| false)
            .unwrap();
        for action in due {
            let mut action = ledger.claim(action.action_id, at(12)).unwrap().unwrap();
            action.state = ActionState::Done;
            action.updated_at = at(13);
            action.completed_at = Some(at(13));
            ledger.finish(&action).unwrap();
        }
        assert_eq!(fixture.check(CheckMode::Report), vec![]);
    }
}
