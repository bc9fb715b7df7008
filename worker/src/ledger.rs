//! The sled ledger: inventory, accepted events, plans and actions in one database.
//!
//! Only this module imports sled. Every state change of an event or an action
//! is one sled transaction over the trees it touches, so a crash leaves either
//! the old or the new state. Durability is explicit: callers `flush()` (group
//! commit) before acknowledging a delivery.
//!
//! Trees and keys (all tenant-scoped data is keyed by tenant first):
//! - `inventory`: `{tenant}/{object}` → [`InventoryEntry`]
//! - `index`: `emp:{employee}\0{tenant}/{object}` → ();
//!   `eid:{id}\0{source}` → seq, the deduplication marker and the lookup by id
//!   (a source holds no NUL, so the last NUL separates the two; older ledgers
//!   also hold `key:{source}\0{id}` → seq, no longer read); `held:{seq}` → ();
//!   `approving:{seq}` → () while a held plan is being released;
//!   `meta:inventory_accounts` → u64, the number of accounts in `inventory`
//!   (kept in the transactions that add one)
//! - `events`: seq → [`EventRecord`]; a plan written in one transaction (every
//!   plan but a large one) keeps its action ids and, once accepted, its count of
//!   non-terminal actions in the record itself (one insert less each per event)
//! - `actions`: action id → [`ActionRecord`]
//! - `event_actions`: seq ++ action id → () (large plans, older ledgers)
//! - `due`: due-millis (rounded up) ++ action id → tenant (pending and scheduled actions)
//! - `in_flight`: action id → ()
//! - `open_events`: seq → remaining non-terminal actions (large and approved
//!   plans, older ledgers); `open_events` → u64, the number of open events
//!   wherever their count is kept

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, TimeZone, Utc};
use palworker_events::{
    Account, AccountKey, ContractId, CredentialName, DesiredLink, EmployeeId, Event, EventData,
    EventType, ObjectId, PartnerId, TenantId,
};
use serde::{Deserialize, Serialize};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};

use crate::planner::{self, FanOut, InventoryView, Plan, PlannedChange, Scope};

pub type ActionId = u64;
pub type EventSeq = u64;

/// Errors of the ledger. All of them are internal failures (disk, corruption):
/// a delivery that meets one is not acked and comes back later.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// sled reported an IO or corruption error.
    #[error("ledger storage error: {0}")]
    Storage(#[from] sled::Error),
    /// A stored record could not be decoded.
    #[error("ledger record `{key}` is corrupt: {source}")]
    Corrupt {
        key: String,
        source: serde_json::Error,
    },
    /// The ledger directory is used by another process (a running worker).
    #[error("the ledger at `{0}` is in use by another process (is the worker running?)")]
    Locked(String),
    /// An operator command referred to something that does not exist or is in the wrong state.
    #[error("{0}")]
    Rejected(String),
}

pub type Result<T> = std::result::Result<T, LedgerError>;

/// The state of an account in the inventory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryEntry {
    pub account: Account,
    pub desired: DesiredLink,
    /// False once an assignment ended (the account keeps its place in the inventory).
    pub assignment_active: bool,
    /// The latest accepted event that targeted this account.
    pub last_event_seq: Option<EventSeq>,
    /// The action of that event: older unfinished actions are superseded by it.
    pub current_action: Option<ActionId>,
    #[serde(serialize_with = "same_instant::serialize")]
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventState {
    Accepted,
    Held,
    Approved,
    Rejected,
}

impl EventState {
    pub fn as_str(self) -> &'static str {
        match self {
            EventState::Accepted => "accepted",
            EventState::Held => "held",
            EventState::Approved => "approved",
            EventState::Rejected => "rejected",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    pub seq: EventSeq,
    pub event: Event,
    pub state: EventState,
    #[serde(serialize_with = "same_instant::serialize")]
    pub accepted_at: DateTime<Utc>,
    pub action_count: u64,
    /// Tenants where a departed employee's link had no successor account.
    pub unassigned: Vec<TenantId>,
    pub completed_at: Option<DateTime<Utc>>,
    /// The AMQP `user_id` of the publisher, when the broker provided one.
    pub publisher: Option<String>,
    /// The plan's action ids, in creation order, when the plan was written in
    /// one transaction; `None`: they are in `event_actions`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action_ids: Option<Vec<ActionId>>,
    /// The number of non-terminal actions of an event accepted in one
    /// transaction; `None`: it is in `open_events` (held, approved and large
    /// plans, older ledgers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_actions: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionState {
    Pending,
    Scheduled,
    Held,
    InFlight,
    Done,
    Noop,
    Failed,
    Cancelled,
    Manual,
}

impl ActionState {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionState::Pending => "pending",
            ActionState::Scheduled => "scheduled",
            ActionState::Held => "held",
            ActionState::InFlight => "in_flight",
            ActionState::Done => "done",
            ActionState::Noop => "noop",
            ActionState::Failed => "failed",
            ActionState::Cancelled => "cancelled",
            ActionState::Manual => "manual",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            ActionState::Done
                | ActionState::Noop
                | ActionState::Failed
                | ActionState::Cancelled
                | ActionState::Manual
        )
    }
}

/// The kind of change an action makes (the `op` metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Desired `Absent`.
    Remove,
    /// Desired `Linked(p)` where the account was not desired linked to another ID.
    Link,
    /// Desired `Linked(p)` replacing a desired link to another ID.
    Update,
}

impl Op {
    pub const ALL: [Op; 3] = [Op::Remove, Op::Link, Op::Update];

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Remove => "remove",
            Op::Link => "link",
            Op::Update => "update",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionRecord {
    pub action_id: ActionId,
    pub event_seq: EventSeq,
    pub event_id: String,
    pub event_source: String,
    pub event_type: EventType,
    pub tenant_id: TenantId,
    pub object_id: ObjectId,
    pub employee_id: EmployeeId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<CredentialName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contract_id: Option<ContractId>,
    pub op: Op,
    pub desired: DesiredLink,
    pub state: ActionState,
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(serialize_with = "same_instant::serialize")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "same_instant::serialize")]
    pub updated_at: DateTime<Utc>,
    /// `effective_at` of the event: the action does not run before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_attempt_at: Option<DateTime<Utc>>,
    /// The partner ID PAL showed before the action (None: no link).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before_partner_id: Option<PartnerId>,
    /// The partner ID after the action (None: no link).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_partner_id: Option<PartnerId>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    /// Free text for operators: why manual, what a dry run would have done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<DateTime<Utc>>,
}

impl ActionRecord {
    pub fn account_key(&self) -> AccountKey {
        AccountKey {
            tenant_id: self.tenant_id.clone(),
            object_id: self.object_id.clone(),
        }
    }

    /// When the action may run next.
    pub fn due_at(&self) -> DateTime<Utc> {
        let mut due = self.created_at;
        if let Some(at) = self.not_before {
            due = due.max(at);
        }
        if let Some(at) = self.next_attempt_at {
            due = due.max(at);
        }
        due
    }
}

/// What accepting an event did.
#[derive(Debug, Clone, PartialEq)]
pub enum AcceptOutcome {
    /// `(source, id)` was accepted before: nothing changed.
    Duplicate,
    /// The plan was stored and its actions are pending.
    Accepted {
        seq: EventSeq,
        actions: u64,
        unassigned: Vec<TenantId>,
        /// Older unfinished actions that this event superseded.
        cancelled: Vec<Superseded>,
        /// Set when every action of a large plan finished while its later
        /// chunks were still being written.
        completed: Option<Box<EventRecord>>,
    },
    /// The plan was stored and held for approval.
    Held { seq: EventSeq, actions: u64 },
}

/// An older unfinished action that a newer event cancelled.
#[derive(Debug, Clone, PartialEq)]
pub struct Superseded {
    pub action: ActionRecord,
    /// Whether it was counted as pending (pending or scheduled; not held).
    pub was_pending: bool,
    /// Set when it was its event's last non-terminal action.
    pub event_completed: Option<EventRecord>,
}

/// What approving a held plan did.
#[derive(Debug, Clone)]
pub struct Approval {
    /// How many of the plan's actions are now pending (or scheduled).
    pub released: u64,
    /// The plan's actions whose account a later event had already targeted.
    pub cancelled: Vec<ActionRecord>,
    /// Older unfinished actions that the released ones superseded.
    pub superseded: Vec<Superseded>,
    /// Set when the approval completed the event (nothing was released, or
    /// every released action already finished).
    pub completed: Option<EventRecord>,
}

/// A terminal transition's effect on its event.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub record: ActionRecord,
    /// Set when this was the event's last non-terminal action.
    pub event_completed: Option<EventRecord>,
}

/// What [`Ledger::reschedule`] did.
#[derive(Debug, Clone)]
pub enum Rescheduled {
    /// The action waits for its next attempt.
    Scheduled,
    /// A later event superseded the action while it was in flight: it ended `cancelled`.
    Superseded(Box<Completion>),
}

/// Filters of `status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct StatusFilter {
    pub event_id: Option<String>,
    pub event_source: Option<String>,
    pub employee_id: Option<String>,
    pub tenant_id: Option<String>,
    pub failed: bool,
    pub manual: bool,
}

impl StatusFilter {
    fn matches(&self, action: &ActionRecord) -> bool {
        if let Some(id) = &self.event_id
            && &action.event_id != id
        {
            return false;
        }
        if let Some(source) = &self.event_source
            && &action.event_source != source
        {
            return false;
        }
        if let Some(employee) = &self.employee_id
            && action.employee_id.as_str() != employee
        {
            return false;
        }
        if let Some(tenant) = &self.tenant_id
            && !action.tenant_id.as_str().eq_ignore_ascii_case(tenant)
        {
            return false;
        }
        if self.failed || self.manual {
            let wanted = (self.failed && action.state == ActionState::Failed)
                || (self.manual && action.state == ActionState::Manual);
            if !wanted {
                return false;
            }
        }
        true
    }
}

/// The palworker ledger.
pub struct Ledger {
    db: sled::Db,
    inventory: sled::Tree,
    index: sled::Tree,
    events: sled::Tree,
    actions: sled::Tree,
    event_actions: sled::Tree,
    due: sled::Tree,
    in_flight: sled::Tree,
    open_events: sled::Tree,
    /// Serialises planning: plans read the inventory outside the transaction
    /// that writes them, so only one plan may be computed and stored at a time.
    planning: Mutex<()>,
    /// Set while a plan larger than one chunk is being written (see
    /// [`Ledger::is_storing_large_plan`]).
    storing_large_plan: AtomicBool,
}

/// Clears [`Ledger::storing_large_plan`] however the write ends.
struct StoringLargePlan<'a>(&'a AtomicBool);

impl<'a> StoringLargePlan<'a> {
    fn start(flag: &'a AtomicBool) -> Self {
        flag.store(true, Ordering::Release);
        StoringLargePlan(flag)
    }
}

impl Drop for StoringLargePlan<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

type TxResult<T> = std::result::Result<T, ConflictableTransactionError<LedgerError>>;

fn tx_error(error: TransactionError<LedgerError>) -> LedgerError {
    match error {
        TransactionError::Abort(error) => error,
        TransactionError::Storage(error) => LedgerError::Storage(error),
    }
}

/// Serialises a UTC instant exactly as chrono does (RFC 3339 with `Z` and
/// as many fraction digits as needed), remembering the last instant each
/// thread wrote: an intake batch writes the same `now` into four fields of
/// every event's records, and chrono's formatting was 7 % of storing one.
mod same_instant {
    use std::cell::RefCell;

    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::Serializer;

    thread_local! {
        static LAST: RefCell<Option<(DateTime<Utc>, String)>> = const { RefCell::new(None) };
    }

    pub fn serialize<S: Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
        LAST.with(|last| {
            let mut last = last.borrow_mut();
            let (_, text) = match &mut *last {
                Some(cached) if cached.0 == *at => cached,
                slot => slot.insert((*at, at.to_rfc3339_opts(SecondsFormat::AutoSi, true))),
            };
            serializer.serialize_str(text)
        })
    }
}

/// Room for a typical record (events, actions and inventory entries are
/// 300 to 600 bytes), so encoding one does not grow its buffer seven times.
const RECORD_CAPACITY: usize = 640;

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(RECORD_CAPACITY);
    serde_json::to_writer(&mut bytes, value).expect("ledger records serialise");
    bytes
}

fn decode<T: for<'de> Deserialize<'de>>(key: &[u8], bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|source| LedgerError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        source,
    })
}

fn tx_decode<T: for<'de> Deserialize<'de>>(key: &[u8], bytes: &[u8]) -> TxResult<T> {
    decode(key, bytes).map_err(ConflictableTransactionError::Abort)
}

fn account_key_bytes(tenant: &TenantId, object: &ObjectId) -> Vec<u8> {
    format!("{}/{}", tenant.as_str(), object.as_str()).into_bytes()
}

fn employee_index_key(employee: &EmployeeId, tenant: &TenantId, object: &ObjectId) -> Vec<u8> {
    format!(
        "emp:{}\0{}/{}",
        employee.as_str(),
        tenant.as_str(),
        object.as_str()
    )
    .into_bytes()
}

fn event_id_key(source: &str, id: &str) -> Vec<u8> {
    format!("eid:{id}\0{source}").into_bytes()
}

fn held_key(seq: EventSeq) -> Vec<u8> {
    let mut key = b"held:".to_vec();
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn approving_key(seq: EventSeq) -> Vec<u8> {
    let mut key = b"approving:".to_vec();
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn pair_key(a: u64, b: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&a.to_be_bytes());
    key[8..].copy_from_slice(&b.to_be_bytes());
    key
}

fn millis(at: DateTime<Utc>) -> u64 {
    at.timestamp_millis().max(0) as u64
}

/// `at` in milliseconds, rounded up: a due key never names an instant
/// before the action's due time.
fn millis_ceil(at: DateTime<Utc>) -> u64 {
    let floor = millis(at);
    if at.timestamp_subsec_nanos().is_multiple_of(1_000_000) {
        floor
    } else {
        floor + 1
    }
}

/// Due keys round the due time up, so the executor, sleeping until the
/// earliest key, never wakes before an action's due time; and
/// [`Ledger::due_actions`] compares the exact due time, so an action is never
/// claimed early — not even by the fraction of a millisecond that would let a
/// retry arrive before a `Retry-After` expired.
fn due_key(at: DateTime<Utc>, action: ActionId) -> [u8; 16] {
    pair_key(millis_ceil(at), action)
}

fn read_u64(bytes: &[u8]) -> u64 {
    let mut buffer = [0u8; 8];
    let len = bytes.len().min(8);
    buffer[..len].copy_from_slice(&bytes[..len]);
    u64::from_be_bytes(buffer)
}

impl Ledger {
    /// Opens (or creates) the ledger and recovers actions that were in flight
    /// when the previous process stopped: they become pending again.
    pub fn open(path: &Path, cache_capacity_bytes: u64) -> Result<Ledger> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(cache_capacity_bytes)
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(|error| match error {
                sled::Error::Io(ref io) if io.kind() == std::io::ErrorKind::WouldBlock => {
                    LedgerError::Locked(path.display().to_string())
                }
                sled::Error::Io(ref io) if io.to_string().contains("lock") => {
                    LedgerError::Locked(path.display().to_string())
                }
                other => LedgerError::Storage(other),
            })?;
        let ledger = Ledger {
            inventory: db.open_tree("inventory")?,
            index: db.open_tree("index")?,
            events: db.open_tree("events")?,
            actions: db.open_tree("actions")?,
            event_actions: db.open_tree("event_actions")?,
            due: db.open_tree("due")?,
            in_flight: db.open_tree("in_flight")?,
            open_events: db.open_tree("open_events")?,
            db,
            planning: Mutex::new(()),
            storing_large_plan: AtomicBool::new(false),
        };
        ledger.recover_in_flight()?;
        // A ledger from before these counts were kept is counted once (in
        // such a ledger every open event has an `open_events` entry).
        recount_if_missing(&ledger.index, INVENTORY_SIZE_KEY, || ledger.inventory.len())?;
        recount_if_missing(&ledger.open_events, OPEN_COUNT_KEY, || {
            ledger.open_events.len()
        })?;
        Ok(ledger)
    }

    /// The number of accounts in the inventory: an upper bound of any
    /// fan-out's size, so a large plan is counted against
    /// `limits.max_actions_per_event` only when it could exceed it.
    pub fn inventory_size(&self) -> Result<u64> {
        read_counter(&self.index, INVENTORY_SIZE_KEY)
    }

    fn recover_in_flight(&self) -> Result<()> {
        for entry in self.in_flight.iter() {
            let (key, _) = entry?;
            let action_id = read_u64(&key);
            (&self.actions, &self.due, &self.in_flight)
                .transaction(|(actions, due, in_flight)| {
                    in_flight.remove(&key)?;
                    let Some(bytes) = actions.get(action_id.to_be_bytes())? else {
                        return Ok(());
                    };
                    let mut action: ActionRecord = tx_decode(&key, &bytes)?;
                    if action.state == ActionState::InFlight {
                        action.state = ActionState::Pending;
                        actions.insert(&action_id.to_be_bytes(), encode(&action))?;
                        due.insert(
                            &due_key(action.due_at(), action_id),
                            action.tenant_id.as_str().as_bytes(),
                        )?;
                    }
                    Ok(())
                })
                .map_err(tx_error)?;
        }
        Ok(())
    }

    /// Whether a plan larger than one chunk is being written. The executor
    /// starts no action meanwhile: sled runs one transaction at a time, and
    /// a fan-out's chunks (and the acknowledgement of its event) should not
    /// wait behind claims of the actions its first chunks just created.
    pub fn is_storing_large_plan(&self) -> bool {
        self.storing_large_plan.load(Ordering::Acquire)
    }

    /// Makes every write so far durable. One flush covers every plan written
    /// since the previous one (group commit). Blocking: call it from
    /// `spawn_blocking` in async code.
    pub fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }

    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    /// Non-terminal, non-held actions (pending, scheduled, in flight).
    pub fn pending_count(&self) -> u64 {
        (self.due.len() + self.in_flight.len()) as u64
    }

    pub fn held_plan_count(&self) -> u64 {
        self.index.scan_prefix(b"held:").count() as u64
    }

    /// Accepted (or approved) events whose actions are not all terminal yet.
    pub fn open_event_count(&self) -> Result<u64> {
        read_counter(&self.open_events, OPEN_COUNT_KEY)
    }

    // ---- inventory -------------------------------------------------------

    pub fn inventory_entry(&self, key: &AccountKey) -> Result<Option<InventoryEntry>> {
        let k = account_key_bytes(&key.tenant_id, &key.object_id);
        self.inventory
            .get(&k)?
            .map(|bytes| decode(&k, &bytes))
            .transpose()
    }

    /// Inserts or updates accounts without planning any action (an import
    /// declares what is known, it is not an event). `linked` sets the desired link.
    pub fn import_accounts(
        &self,
        rows: impl IntoIterator<Item = (Account, Option<PartnerId>)>,
        now: DateTime<Utc>,
    ) -> Result<u64> {
        let _planning = self.planning.lock().expect("planning lock");
        let mut count = 0;
        for (account, partner) in rows {
            let key = account_key_bytes(&account.tenant_id, &account.object_id);
            let previous: Option<InventoryEntry> = self
                .inventory
                .get(&key)?
                .map(|bytes| decode(&key, &bytes))
                .transpose()?;
            let entry = match previous.clone() {
                Some(mut entry) => {
                    entry.account = account;
                    entry.assignment_active = true;
                    if let Some(partner) = partner {
                        entry.desired = DesiredLink::Linked(partner);
                    }
                    entry.updated_at = now;
                    entry
                }
                None => InventoryEntry {
                    account,
                    desired: partner
                        .map(DesiredLink::Linked)
                        .unwrap_or(DesiredLink::Absent),
                    assignment_active: true,
                    last_event_seq: None,
                    current_action: None,
                    updated_at: now,
                },
            };
            (&self.inventory, &self.index)
                .transaction(|(inventory, index)| {
                    let added = write_inventory(
                        inventory,
                        index,
                        previous.as_ref().map(|p| &p.account.employee_id),
                        &entry,
                    )?;
                    add_inventory_size(index, u64::from(added))
                })
                .map_err(tx_error)?;
            count += 1;
        }
        Ok(count)
    }

    /// Inventory entries, optionally filtered.
    pub fn inventory_list(
        &self,
        employee: Option<&str>,
        tenant: Option<&str>,
    ) -> Result<Vec<InventoryEntry>> {
        let mut out = Vec::new();
        if let Some(employee) = employee {
            let employee = EmployeeId::parse(employee)
                .map_err(|e| LedgerError::Rejected(format!("--employee: {e}")))?;
            for entry in self.by_employee(&employee)? {
                if tenant.is_none_or(|t| entry.account.tenant_id.as_str().eq_ignore_ascii_case(t)) {
                    out.push(entry);
                }
            }
            return Ok(out);
        }
        let prefix = tenant.map(|t| format!("{}/", t.to_ascii_lowercase()));
        let iter = match &prefix {
            Some(prefix) => self.inventory.scan_prefix(prefix.as_bytes()),
            None => self.inventory.iter(),
        };
        for item in iter {
            let (key, value) = item?;
            out.push(decode(&key, &value)?);
        }
        Ok(out)
    }

    // ---- events ----------------------------------------------------------

    pub fn is_duplicate(&self, source: &str, id: &str) -> Result<bool> {
        Ok(self.index.contains_key(event_id_key(source, id))?)
    }

    /// Computes the plan an event would produce, changing nothing.
    pub fn preview(&self, event: &Event) -> Result<Plan> {
        let _planning = self.planning.lock().expect("planning lock");
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
        let _planning = self.planning.lock().expect("planning lock");
        if self.is_duplicate(&event.source, &event.id)? {
            return Ok(AcceptOutcome::Duplicate);
        }
        let (mut chunks, unassigned) = match planner::fan_out(event) {
            Some(fan_out) => (PlanChunks::streamed(fan_out), Vec::new()),
            None => {
                let plan = planner::plan(event, &LedgerView(self))?;
                (PlanChunks::planned(plan.changes), plan.unassigned)
            }
        };
        let first = chunks.next_chunk(self)?;
        let single = chunks.is_done();
        // Whether the plan is held is known before anything is written: from
        // its size when it fits one chunk, else see `PlanChunks::exceeds`.
        let held = if single {
            first.len() > max_actions_per_event
        } else {
            chunks.exceeds(self, max_actions_per_event)?
        };
        let seq = self.db.generate_id()?;
        let (state, not_before) = initial_state(event, held, now);
        let record = |total: usize, action_ids: Option<Vec<ActionId>>| EventRecord {
            seq,
            event: event.clone(),
            state: if held {
                EventState::Held
            } else {
                EventState::Accepted
            },
            accepted_at: now,
            action_count: total as u64,
            unassigned: unassigned.clone(),
            completed_at: (total == 0).then_some(now),
            publisher: publisher.map(str::to_owned),
            // Kept in the record when the plan is written in one transaction.
            open_actions: (action_ids.is_some() && !held).then_some(total as u64),
            action_ids,
        };
        let trees = self.accept_trees();

        if single {
            // The usual case: plan, inventory changes, actions and the
            // deduplication marker in one transaction.
            let total = first.len();
            let new_actions = self.new_actions(event, seq, &first, state, now, not_before)?;
            let record = record(
                total,
                Some(new_actions.iter().map(|a| a.action_id).collect()),
            );
            let cancelled = trees
                .transaction(|trees| {
                    let (cancelled, added) =
                        write_changes(trees, seq, &first, &new_actions, held, true, now)?;
                    add_inventory_size(&trees.1, added)?;
                    let (_, index, events, _, _, _, open_events) = trees;
                    if !held && total > 0 {
                        count_open_events(open_events, 1)?;
                    }
                    write_event_marker(index, events, event, &record)?;
                    Ok(cancelled)
                })
                .map_err(tx_error)?;
            return Ok(accept_outcome(
                seq, total, held, unassigned, cancelled, None,
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
                    if !held {
                        // The first chunk also adds the marker's share.
                        increment_open(&trees.6, &trees.2, seq, chunk.len() as u64 + marker_share)?;
                    }
                    let (cancelled, added) =
                        write_changes(trees, seq, &chunk, &new_actions, held, false, now)?;
                    add_inventory_size(&trees.1, added)?;
                    Ok(cancelled)
                })
                .map_err(tx_error)?;
            total += chunk.len();
            cancelled.extend(chunk_cancelled);
            if chunks.is_done() {
                break;
            }
            chunk = chunks.next_chunk(self)?;
        }
        let record = record(total, None);
        let completed = (&self.index, &self.events, &self.open_events)
            .transaction(|(index, events, open_events)| {
                write_event_marker(index, events, event, &record)?;
                if held {
                    return Ok(None);
                }
                decrement_open(open_events, events, seq, now)
            })
            .map_err(tx_error)?;
        Ok(accept_outcome(
            seq, total, held, unassigned, cancelled, completed,
        ))
    }

    /// Accepts a run of `project.assignment.started` events in ONE
    /// transaction (each reads only its own account, so each is planned
    /// inside the transaction and sees the writes of those before it). Same
    /// outcome, event by event, as calling [`Ledger::accept`] in order.
    pub fn accept_assignments(
        &self,
        events: &[(&Event, Option<&str>)],
        now: DateTime<Utc>,
        max_actions_per_event: usize,
    ) -> Result<Vec<AcceptOutcome>> {
        let _planning = self.planning.lock().expect("planning lock");
        // Two ids per event (sequence, action), drawn outside the closure,
        // which sled may run more than once.
        let mut ids = Vec::with_capacity(events.len());
        for _ in events {
            ids.push((self.db.generate_id()?, self.db.generate_id()?));
        }
        let held = max_actions_per_event < 1;
        let trees = self.accept_trees();
        trees
            .transaction(|trees| {
                let (inventory, index, events_tree, _, _, _, open_events) = trees;
                let mut outcomes = Vec::with_capacity(events.len());
                let mut added = 0;
                let mut opened = 0;
                for ((event, publisher), (seq, action_id)) in events.iter().zip(&ids) {
                    if index.get(event_id_key(&event.source, &event.id))?.is_some() {
                        outcomes.push(AcceptOutcome::Duplicate);
                        continue;
                    }
                    let EventData::AssignmentStarted {
                        tenant_id,
                        object_id,
                        ..
                    } = &event.data
                    else {
                        return Err(ConflictableTransactionError::Abort(LedgerError::Rejected(
                            "accept_assignments takes project.assignment.started events only"
                                .into(),
                        )));
                    };
                    let key = account_key_bytes(tenant_id, object_id);
                    let before: Option<InventoryEntry> = match inventory.get(&key)? {
                        Some(bytes) => Some(tx_decode(&key, &bytes)?),
                        None => None,
                    };
                    let change = planner::assignment_started(event, before).expect("an assignment");
                    let (state, not_before) = initial_state(event, held, now);
                    let action =
                        new_action(event, *seq, *action_id, &change, state, now, not_before);
                    let changes = [change];
                    let (cancelled, new_accounts) = write_changes(
                        trees,
                        *seq,
                        &changes,
                        std::slice::from_ref(&action),
                        held,
                        true,
                        now,
                    )?;
                    added += new_accounts;
                    if !held {
                        opened += 1;
                    }
                    let record = EventRecord {
                        seq: *seq,
                        event: (*event).clone(),
                        state: if held {
                            EventState::Held
                        } else {
                            EventState::Accepted
                        },
                        accepted_at: now,
                        action_count: 1,
                        unassigned: Vec::new(),
                        completed_at: None,
                        publisher: publisher.map(str::to_owned),
                        action_ids: Some(vec![*action_id]),
                        open_actions: (!held).then_some(1),
                    };
                    write_event_marker(index, events_tree, event, &record)?;
                    outcomes.push(accept_outcome(*seq, 1, held, Vec::new(), cancelled, None));
                }
                add_inventory_size(index, added)?;
                count_open_events(open_events, opened)?;
                Ok(outcomes)
            })
            .map_err(tx_error)
    }

    /// The trees an acceptance writes, in the order of [`AcceptTrees`].
    #[allow(clippy::type_complexity)]
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
    ) {
        (
            &self.inventory,
            &self.index,
            &self.events,
            &self.actions,
            &self.event_actions,
            &self.due,
            &self.open_events,
        )
    }

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
        changes
            .iter()
            .map(|change| {
                let action_id = self.db.generate_id()?;
                Ok(new_action(
                    event, seq, action_id, change, state, now, not_before,
                ))
            })
            .collect()
    }

    pub fn event(&self, seq: EventSeq) -> Result<Option<EventRecord>> {
        let key = seq.to_be_bytes();
        self.events
            .get(key)?
            .map(|bytes| decode(&key, &bytes))
            .transpose()
    }

    /// Finds accepted events by CloudEvent `id` (and `source` when given).
    pub fn find_events(&self, id: &str, source: Option<&str>) -> Result<Vec<EventRecord>> {
        let mut out = Vec::new();
        let prefix = format!("eid:{id}\0");
        for item in self.index.scan_prefix(prefix.as_bytes()) {
            let (key, value) = item?;
            let found_source = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
            if source.is_some_and(|s| s != found_source) {
                continue;
            }
            if let Some(record) = self.event(read_u64(&value))? {
                out.push(record);
            }
        }
        Ok(out)
    }

    /// Resolves the `EVENT` argument of `approve`/`reject`/`status --event`.
    pub fn resolve_event(&self, id: &str, source: Option<&str>) -> Result<EventRecord> {
        let mut found = self.find_events(id, source)?;
        match found.len() {
            0 => Err(LedgerError::Rejected(format!(
                "no accepted event has id `{id}`"
            ))),
            1 => Ok(found.remove(0)),
            _ => Err(LedgerError::Rejected(format!(
                "{} accepted events have id `{id}`; add --source (one of: {})",
                found.len(),
                found
                    .iter()
                    .map(|r| r.event.source.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    pub fn event_actions(&self, seq: EventSeq) -> Result<Vec<ActionRecord>> {
        self.iter_event_actions(seq).collect()
    }

    /// The actions of an event one at a time, in creation order (a large
    /// plan is never loaded whole).
    pub fn iter_event_actions(
        &self,
        seq: EventSeq,
    ) -> impl Iterator<Item = Result<ActionRecord>> + '_ {
        self.event_action_ids(seq)
            .filter_map(move |id| id.and_then(|id| self.action(id)).transpose())
    }

    /// The ids of an event's actions, in creation order: from its record,
    /// or from `event_actions` (large plans, older ledgers).
    fn event_action_ids(&self, seq: EventSeq) -> Box<dyn Iterator<Item = Result<ActionId>> + '_> {
        match self.event(seq) {
            Ok(Some(EventRecord {
                action_ids: Some(ids),
                ..
            })) => Box::new(ids.into_iter().map(Ok)),
            Ok(_) => Box::new(
                self.event_actions
                    .scan_prefix(seq.to_be_bytes())
                    .map(|item| Ok(read_u64(&item?.0[8..]))),
            ),
            Err(error) => Box::new(std::iter::once(Err(error))),
        }
    }

    /// Releases a held plan. Actions whose account a later accepted event
    /// already targeted end `cancelled`; the rest become pending.
    /// Returns the actions released and the ones cancelled.
    pub fn approve(&self, seq: EventSeq, now: DateTime<Utc>) -> Result<Approval> {
        let _planning = self.planning.lock().expect("planning lock");
        let mut record = self
            .event(seq)?
            .ok_or_else(|| LedgerError::Rejected(format!("no event with sequence {seq}")))?;
        if record.state != EventState::Held {
            return Err(LedgerError::Rejected(format!(
                "event `{}` is {}, not held",
                record.event.id,
                record.state.as_str()
            )));
        }
        let not_before = record.event.effective_at().filter(|at| *at > now);
        let mut released = 0u64;
        let mut cancelled = Vec::new();
        let mut superseded = Vec::new();
        // The approval's own share of the event's open-action count: released
        // actions may finish while later ones are still being released, and
        // the event must not complete before the last is. Taken once, even if
        // an approval interrupted by a crash is repeated.
        (&self.index, &self.open_events, &self.events)
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
                }
                continue;
            }
            let key = account_key_bytes(&action.tenant_id, &action.object_id);
            let result = (
                &self.inventory,
                &self.index,
                &self.actions,
                &self.due,
                &self.open_events,
                &self.events,
            )
                .transaction(|(inventory, index, actions, due, open_events, events)| {
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
                        return Ok((action, false, None));
                    }
                    let superseded = match before.as_ref().and_then(|e| e.current_action) {
                        Some(previous) => {
                            supersede(actions, due, open_events, events, previous, now)?
                        }
                        None => None,
                    };
                    let mut account =
                        before
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
                    Ok((action, true, superseded))
                })
                .map_err(tx_error)?;
            match result {
                (_, true, previous) => {
                    released += 1;
                    superseded.extend(previous);
                }
                (action, false, _) => cancelled.push(action),
            }
        }
        record.state = EventState::Approved;
        let completed = (&self.events, &self.index, &self.open_events)
            .transaction(|(events, index, open_events)| {
                events.insert(&seq.to_be_bytes(), encode(&record))?;
                index.remove(held_key(seq))?;
                index.remove(approving_key(seq))?;
                // Gives back the approval's share: completes the event if
                // nothing was released or everything released already finished.
                decrement_open(open_events, events, seq, now)
            })
            .map_err(tx_error)?;
        Ok(Approval {
            released,
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
    pub fn reject(&self, seq: EventSeq, now: DateTime<Utc>) -> Result<u64> {
        let _planning = self.planning.lock().expect("planning lock");
        let mut record = self
            .event(seq)?
            .ok_or_else(|| LedgerError::Rejected(format!("no event with sequence {seq}")))?;
        if record.state != EventState::Held {
            return Err(LedgerError::Rejected(format!(
                "event `{}` is {}, not held",
                record.event.id,
                record.state.as_str()
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
            cancelled += self
                .actions
                .transaction(|actions| {
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
                        count += 1;
                    }
                    Ok(count)
                })
                .map_err(tx_error)?;
        }
        record.state = EventState::Rejected;
        record.completed_at = Some(now);
        (&self.events, &self.index)
            .transaction(|(events, index)| {
                events.insert(&seq.to_be_bytes(), encode(&record))?;
                index.remove(held_key(seq))?;
                Ok(())
            })
            .map_err(tx_error)?;
        Ok(cancelled)
    }

    pub fn held_events(&self) -> Result<Vec<EventRecord>> {
        let mut out = Vec::new();
        for item in self.index.scan_prefix(b"held:") {
            let (key, _) = item?;
            if let Some(record) = self.event(read_u64(&key[5..]))? {
                out.push(record);
            }
        }
        Ok(out)
    }

    // ---- actions ---------------------------------------------------------

    pub fn action(&self, id: ActionId) -> Result<Option<ActionRecord>> {
        let key = id.to_be_bytes();
        self.actions
            .get(key)?
            .map(|bytes| decode(&key, &bytes))
            .transpose()
    }

    /// Actions matching a filter, in creation order.
    pub fn actions(&self, filter: &StatusFilter) -> Result<Vec<ActionRecord>> {
        let mut out = Vec::new();
        if let Some(id) = &filter.event_id {
            for record in self.find_events(id, filter.event_source.as_deref())? {
                for action in self.event_actions(record.seq)? {
                    if filter.matches(&action) {
                        out.push(action);
                    }
                }
            }
            out.sort_by_key(|a| a.action_id);
            return Ok(out);
        }
        for item in self.actions.iter() {
            let (key, value) = item?;
            let action: ActionRecord = decode(&key, &value)?;
            if filter.matches(&action) {
                out.push(action);
            }
        }
        Ok(out)
    }

    /// Visits every action (for audit export) without collecting them.
    pub fn for_each_action(&self, mut visit: impl FnMut(ActionRecord)) -> Result<()> {
        for item in self.actions.iter() {
            let (key, value) = item?;
            visit(decode(&key, &value)?);
        }
        Ok(())
    }

    /// The due time of the earliest pending or scheduled action.
    pub fn next_due(&self) -> Result<Option<DateTime<Utc>>> {
        Ok(self.due.first()?.map(|(key, _)| {
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
        let mut out = Vec::new();
        let end = pair_key(millis_ceil(now), u64::MAX);
        for item in self.due.range(..=end) {
            if out.len() >= limit {
                break;
            }
            let (key, tenant) = item?;
            if std::str::from_utf8(&tenant).is_ok_and(|t| !t.is_empty() && skip_tenant(t)) {
                continue;
            }
            let Some(action) = self.action(read_u64(&key[8..]))? else {
                self.due.remove(key)?;
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
        Ok(self.finish_and_claim(&[], &[id], now)?.1.pop().flatten())
    }

    /// Whether the action is still the latest one for its account.
    pub fn is_current(&self, action: &ActionRecord) -> Result<bool> {
        Ok(self
            .inventory_entry(&action.account_key())?
            .is_none_or(|entry| entry.current_action == Some(action.action_id)))
    }

    /// Records the end of an in-flight action.
    pub fn finish(&self, action: &ActionRecord) -> Result<Completion> {
        let (mut completions, _) =
            self.finish_and_claim(std::slice::from_ref(action), &[], action.updated_at)?;
        Ok(completions.pop().expect("one completion per action"))
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
    ) -> Result<(Vec<Completion>, Vec<Option<ActionRecord>>)> {
        debug_assert!(finished.iter().all(|action| action.state.is_terminal()));
        if finished.is_empty() && claim.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        (
            &self.actions,
            &self.due,
            &self.in_flight,
            &self.open_events,
            &self.events,
        )
            .transaction(|(actions, due, in_flight, open_events, events)| {
                let mut completions = Vec::with_capacity(finished.len());
                for action in finished {
                    let key = action.action_id.to_be_bytes();
                    actions.insert(&key, encode(action))?;
                    in_flight.remove(&key)?;
                    let event_completed =
                        decrement_open(open_events, events, action.event_seq, action.updated_at)?;
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
                Ok((completions, claimed))
            })
            .map_err(tx_error)
    }

    /// Records a failed attempt that will be retried at `action.next_attempt_at`
    /// — unless a later event superseded the action while it was in flight:
    /// then it ends `cancelled` instead (checked in the same transaction that
    /// a superseding plan writes the inventory in, so no retry of a
    /// superseded action is ever scheduled).
    pub fn reschedule(&self, action: &ActionRecord) -> Result<Rescheduled> {
        let id = action.action_id;
        let account = account_key_bytes(&action.tenant_id, &action.object_id);
        (
            &self.actions,
            &self.in_flight,
            &self.due,
            &self.inventory,
            &self.open_events,
            &self.events,
        )
            .transaction(
                |(actions, in_flight, due, inventory, open_events, events)| {
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
                        let event_completed = decrement_open(
                            open_events,
                            events,
                            action.event_seq,
                            action.updated_at,
                        )?;
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

    /// Puts a failed action back in the queue with a fresh retry budget.
    pub fn retry_action(&self, id: ActionId, now: DateTime<Utc>) -> Result<ActionRecord> {
        let action = self
            .action(id)?
            .ok_or_else(|| LedgerError::Rejected(format!("no action {id}")))?;
        if action.state != ActionState::Failed {
            return Err(LedgerError::Rejected(format!(
                "action {id} is {}, only failed actions can be retried",
                action.state.as_str()
            )));
        }
        if !self.is_current(&action)? {
            return Err(LedgerError::Rejected(format!(
                "action {id} was superseded by a later event for the same account"
            )));
        }
        (&self.actions, &self.due, &self.open_events, &self.events)
            .transaction(|(actions, due, open_events, events)| {
                let mut action = action.clone();
                action.state = ActionState::Pending;
                action.first_attempt_at = None;
                action.next_attempt_at = Some(now);
                action.completed_at = None;
                action.updated_at = now;
                actions.insert(&id.to_be_bytes(), encode(&action))?;
                due.insert(
                    &due_key(action.due_at(), id),
                    action.tenant_id.as_str().as_bytes(),
                )?;
                increment_open(open_events, events, action.event_seq, 1)?;
                Ok(action)
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

    /// Counts of actions by state (for summaries and `wait_until_settled`).
    pub fn action_state_counts(&self) -> Result<BTreeMap<&'static str, u64>> {
        let mut counts = BTreeMap::new();
        self.for_each_action(|action| *counts.entry(action.state.as_str()).or_insert(0) += 1)?;
        Ok(counts)
    }
}

/// The state a new action of `event` starts in, and the `effective_at` it
/// waits for, if that is still ahead.
fn initial_state(
    event: &Event,
    held: bool,
    now: DateTime<Utc>,
) -> (ActionState, Option<DateTime<Utc>>) {
    let not_before = event.effective_at().filter(|at| *at > now);
    let state = if held {
        ActionState::Held
    } else if not_before.is_some() {
        ActionState::Scheduled
    } else {
        ActionState::Pending
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
    }
}

/// Plans with more actions than this are written in several transactions.
pub const ACCEPT_CHUNK: usize = 256;

/// The two fields of an [`InventoryEntry`] a fan-out's count reads (the rest
/// of the record is skipped, not decoded).
#[derive(Deserialize)]
struct EntryProbe {
    account: AccountProbe,
    desired: DesiredLink,
}

#[derive(Deserialize)]
struct AccountProbe {
    #[serde(default)]
    contract_id: Option<ContractId>,
}

/// A plan handed to [`Ledger::accept`] a chunk of at most [`ACCEPT_CHUNK`]
/// changes at a time, so a large plan is never held in memory whole.
enum PlanChunks<'e> {
    /// Planned in memory: the event types that read one account's or one
    /// employee's entries. Links come before removals, so that if the worker
    /// dies between chunks of a departure, "where the departed employee had a
    /// link" survives the re-plan of the redelivered event.
    Planned {
        changes: std::vec::IntoIter<PlannedChange>,
        taken: usize,
    },
    /// A fan-out streamed over the inventory in key order. `cursor` is the
    /// key of the last entry read; `next` the one change read past the last
    /// chunk (how the end of the plan is known when a chunk fills up).
    Streamed {
        fan_out: FanOut<'e>,
        next: Option<Box<PlannedChange>>,
        cursor: Option<Vec<u8>>,
        done: bool,
    },
}

impl<'e> PlanChunks<'e> {
    fn planned(mut changes: Vec<PlannedChange>) -> Self {
        if changes.len() > ACCEPT_CHUNK {
            changes.sort_by_key(|change| matches!(change.desired, DesiredLink::Absent));
        }
        PlanChunks::Planned {
            changes: changes.into_iter(),
            taken: 0,
        }
    }

    fn streamed(fan_out: FanOut<'e>) -> Self {
        PlanChunks::Streamed {
            fan_out,
            next: None,
            cursor: None,
            done: false,
        }
    }

    /// Whether every change has been handed out.
    fn is_done(&self) -> bool {
        match self {
            PlanChunks::Planned { changes, .. } => changes.len() == 0,
            PlanChunks::Streamed { next, done, .. } => *done && next.is_none(),
        }
    }

    /// The next chunk (empty once done).
    fn next_chunk(&mut self, ledger: &Ledger) -> Result<Vec<PlannedChange>> {
        match self {
            PlanChunks::Planned { changes, taken } => {
                let chunk: Vec<PlannedChange> = changes.by_ref().take(ACCEPT_CHUNK).collect();
                *taken += chunk.len();
                Ok(chunk)
            }
            PlanChunks::Streamed {
                fan_out,
                next,
                cursor,
                done,
            } => {
                let mut chunk = Vec::with_capacity(ACCEPT_CHUNK);
                chunk.extend(next.take().map(|change| *change));
                if *done {
                    return Ok(chunk);
                }
                let after = cursor.take();
                let finished =
                    ledger.scan_scope(&fan_out.scope, after.as_deref(), |key, entry| {
                        let Some(change) = fan_out.change(entry) else {
                            return true;
                        };
                        if chunk.len() < ACCEPT_CHUNK {
                            chunk.push(change);
                            return true;
                        }
                        *next = Some(Box::new(change));
                        *cursor = Some(key.to_vec());
                        false
                    })?;
                *done = finished;
                Ok(chunk)
            }
        }
    }

    /// Whether the whole plan has more than `limit` actions. A fan-out
    /// cannot be larger than the inventory, so it is counted only when the
    /// inventory is larger than the limit — and then no further than the
    /// limit, without keeping what is counted (a scan that brings every
    /// inventory page it reads through sled's cache, which costs memory).
    fn exceeds(&self, ledger: &Ledger, limit: usize) -> Result<bool> {
        match self {
            PlanChunks::Planned { changes, taken } => Ok(taken + changes.len() > limit),
            PlanChunks::Streamed { fan_out, .. } => {
                if ledger.inventory_size()? <= limit as u64 {
                    return Ok(false);
                }
                let mut count = 0usize;
                ledger.scan_scope(&fan_out.scope, None, |_, entry: EntryProbe| {
                    if fan_out.applies_to(entry.account.contract_id.as_ref(), &entry.desired) {
                        count += 1;
                    }
                    count <= limit
                })?;
                Ok(count > limit)
            }
        }
    }
}

type AcceptTrees = (
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
);

/// Writes planned changes and their actions; supersedes older unfinished
/// actions of the same accounts. Held plans store their actions only.
/// Returns the superseded actions and the number of new accounts (the caller
/// adds them to the inventory's size once per transaction).
#[allow(clippy::too_many_arguments)]
fn write_changes(
    (inventory, index, events, actions, event_actions, due, open_events): &AcceptTrees,
    seq: EventSeq,
    changes: &[PlannedChange],
    new_actions: &[ActionRecord],
    held: bool,
    ids_in_record: bool,
    now: DateTime<Utc>,
) -> TxResult<(Vec<Superseded>, u64)> {
    let mut cancelled = Vec::new();
    let mut added = 0u64;
    for (change, action) in changes.iter().zip(new_actions) {
        actions.insert(&action.action_id.to_be_bytes(), encode(action))?;
        if !ids_in_record {
            event_actions.insert(&pair_key(seq, action.action_id), &[])?;
        }
        if held {
            continue;
        }
        due.insert(
            &due_key(action.due_at(), action.action_id),
            action.tenant_id.as_str().as_bytes(),
        )?;
        let entry = InventoryEntry {
            account: change.account.clone(),
            desired: change.desired.clone(),
            assignment_active: change.assignment_active,
            last_event_seq: Some(seq),
            current_action: Some(action.action_id),
            updated_at: now,
        };
        if let Some(previous) = change.previous.as_ref()
            && let Some(previous_action) = previous.current_action
            && let Some(c) = supersede(actions, due, open_events, events, previous_action, now)?
        {
            cancelled.push(c);
        }
        added += u64::from(write_inventory(
            inventory,
            index,
            change.previous.as_ref().map(|p| &p.employee_id),
            &entry,
        )?);
    }
    Ok((cancelled, added))
}

/// The event record and its deduplication keys: once these are written, a
/// redelivery of `(source, id)` is a duplicate.
fn write_event_marker(
    index: &TransactionalTree,
    events: &TransactionalTree,
    event: &Event,
    record: &EventRecord,
) -> TxResult<()> {
    let seq = record.seq;
    index.insert(event_id_key(&event.source, &event.id), &seq.to_be_bytes())?;
    events.insert(&seq.to_be_bytes(), encode(record))?;
    if record.state == EventState::Held {
        index.insert(held_key(seq), &[])?;
    }
    Ok(())
}

fn accept_outcome(
    seq: EventSeq,
    total: usize,
    held: bool,
    unassigned: Vec<TenantId>,
    cancelled: Vec<Superseded>,
    completed: Option<EventRecord>,
) -> AcceptOutcome {
    let actions = total as u64;
    if held {
        AcceptOutcome::Held { seq, actions }
    } else {
        AcceptOutcome::Accepted {
            seq,
            actions,
            unassigned,
            cancelled,
            completed: completed.map(Box::new),
        }
    }
}

/// Index key of the number of accounts in the inventory.
const INVENTORY_SIZE_KEY: &[u8] = b"meta:inventory_accounts";

/// Adds `added` new accounts to the inventory's size.
fn add_inventory_size(index: &TransactionalTree, added: u64) -> TxResult<()> {
    add_to_counter(index, INVENTORY_SIZE_KEY, added as i64)
}

/// Adds `delta` to the big-endian u64 at `key` (absent: zero; never below zero).
fn add_to_counter(tree: &TransactionalTree, key: &[u8], delta: i64) -> TxResult<()> {
    if delta != 0 {
        let value = tree.get(key)?.map_or(0, |bytes| read_u64(&bytes));
        tree.insert(key, &value.saturating_add_signed(delta).to_be_bytes())?;
    }
    Ok(())
}

/// The big-endian u64 at `key` (absent: zero).
fn read_counter(tree: &sled::Tree, key: &[u8]) -> Result<u64> {
    Ok(tree.get(key)?.map_or(0, |bytes| read_u64(&bytes)))
}

/// Writes `count()` at `key` unless a count is stored there already.
fn recount_if_missing(tree: &sled::Tree, key: &[u8], count: impl FnOnce() -> usize) -> Result<()> {
    if tree.get(key)?.is_none() {
        tree.insert(key, &(count() as u64).to_be_bytes())?;
    }
    Ok(())
}

/// Writes an inventory entry and keeps the employee index in step. Returns
/// whether the account is new (the caller adds it to the inventory's size,
/// once per transaction).
fn write_inventory(
    inventory: &TransactionalTree,
    index: &TransactionalTree,
    previous_employee: Option<&EmployeeId>,
    entry: &InventoryEntry,
) -> TxResult<bool> {
    let account = &entry.account;
    // The employee index changes only when the account is new or changes
    // hands (most writes — every fan-out — leave it as it is).
    if previous_employee != Some(&account.employee_id) {
        if let Some(previous) = previous_employee {
            index.remove(employee_index_key(
                previous,
                &account.tenant_id,
                &account.object_id,
            ))?;
        }
        index.insert(
            employee_index_key(&account.employee_id, &account.tenant_id, &account.object_id),
            &[],
        )?;
    }
    let previous = inventory.insert(
        account_key_bytes(&account.tenant_id, &account.object_id),
        encode(entry),
    )?;
    Ok(previous.is_none())
}

/// Cancels an older unfinished action that a newer event superseded. In-flight
/// actions are left alone: the executor sees at its next checkpoint that the
/// action is no longer current and cancels it itself.
fn supersede(
    actions: &TransactionalTree,
    due: &TransactionalTree,
    open_events: &TransactionalTree,
    events: &TransactionalTree,
    previous: ActionId,
    now: DateTime<Utc>,
) -> TxResult<Option<Superseded>> {
    let key = previous.to_be_bytes();
    let Some(bytes) = actions.get(key)? else {
        return Ok(None);
    };
    let mut action: ActionRecord = tx_decode(&key, &bytes)?;
    let was_pending = match action.state {
        ActionState::Pending | ActionState::Scheduled => true,
        ActionState::Held => false,
        _ => return Ok(None),
    };
    if was_pending {
        due.remove(&due_key(action.due_at(), previous))?;
    }
    action.state = ActionState::Cancelled;
    action.detail = Some("superseded by a later event for the same account".into());
    action.updated_at = now;
    action.completed_at = Some(now);
    actions.insert(&key, encode(&action))?;
    let event_completed = if was_pending {
        decrement_open(open_events, events, action.event_seq, now)?
    } else {
        None
    };
    Ok(Some(Superseded {
        action,
        was_pending,
        event_completed,
    }))
}

/// `open_events` key of the number of open events (an event's own key is
/// its 8-byte sequence number, so the two never meet).
const OPEN_COUNT_KEY: &[u8] = b"open_events";

/// Adds `delta` to the number of open events.
fn count_open_events(open_events: &TransactionalTree, delta: i64) -> TxResult<()> {
    add_to_counter(open_events, OPEN_COUNT_KEY, delta)
}

/// Adds `by` to an event's count of non-terminal actions, where the event
/// keeps it: its `open_events` entry, or else its record; an event with
/// neither (a large plan's first chunk, an approval, a retry after the
/// event completed) gets an entry.
fn increment_open(
    open_events: &TransactionalTree,
    events: &TransactionalTree,
    seq: EventSeq,
    by: u64,
) -> TxResult<()> {
    let key = seq.to_be_bytes();
    if let Some(bytes) = open_events.get(key)? {
        open_events.insert(&key, &(read_u64(&bytes) + by).to_be_bytes())?;
        return Ok(());
    }
    if let Some(bytes) = events.get(key)? {
        let mut record: EventRecord = tx_decode(&key, &bytes)?;
        if let Some(open) = record.open_actions {
            record.open_actions = Some(open + by);
            events.insert(&key, encode(&record))?;
            if open == 0 && by > 0 {
                count_open_events(open_events, 1)?;
            }
            return Ok(());
        }
    }
    if by > 0 {
        open_events.insert(&key, &by.to_be_bytes())?;
        count_open_events(open_events, 1)?;
    }
    Ok(())
}

/// Takes one from an event's count of non-terminal actions; returns the
/// event, completed, when that was the last.
fn decrement_open(
    open_events: &TransactionalTree,
    events: &TransactionalTree,
    seq: EventSeq,
    now: DateTime<Utc>,
) -> TxResult<Option<EventRecord>> {
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
    record.completed_at = Some(now);
    events.insert(&key, encode(&record))?;
    Ok(Some(record))
}

/// The planner's read-only view of the ledger's inventory.
struct LedgerView<'a>(&'a Ledger);

impl Ledger {
    fn by_employee(&self, employee: &EmployeeId) -> Result<Vec<InventoryEntry>> {
        let prefix = format!("emp:{}\0", employee.as_str());
        let mut out = Vec::new();
        for item in self.index.scan_prefix(prefix.as_bytes()) {
            let (key, _) = item?;
            let account_key = &key[prefix.len()..];
            if let Some(bytes) = self.inventory.get(account_key)? {
                out.push(decode(account_key, &bytes)?);
            }
        }
        Ok(out)
    }
}

impl Ledger {
    /// Visits the inventory entries of `scope` in key order, starting after
    /// the key `after`, until `visit` returns false. Returns whether the scan
    /// reached the end of the scope.
    fn scan_scope<T: for<'de> Deserialize<'de>>(
        &self,
        scope: &Scope,
        after: Option<&[u8]>,
        mut visit: impl FnMut(&[u8], T) -> bool,
    ) -> Result<bool> {
        let start = |floor: &[u8]| match after {
            Some(after) if after >= floor => Bound::Excluded(after.to_vec()),
            _ => Bound::Included(floor.to_vec()),
        };
        match scope {
            Scope::All => {
                for item in self.inventory.range((start(b""), Bound::Unbounded)) {
                    let (key, value) = item?;
                    if !visit(&key, decode(&key, &value)?) {
                        return Ok(false);
                    }
                }
            }
            Scope::Tenants(tenants) => {
                for tenant in tenants {
                    let prefix = format!("{}/", tenant.as_str()).into_bytes();
                    for item in self.inventory.range((start(&prefix), Bound::Unbounded)) {
                        let (key, value) = item?;
                        if !key.starts_with(&prefix) {
                            break;
                        }
                        if !visit(&key, decode(&key, &value)?) {
                            return Ok(false);
                        }
                    }
                }
            }
        }
        Ok(true)
    }
}

impl InventoryView for LedgerView<'_> {
    fn get(&self, key: &AccountKey) -> Result<Option<InventoryEntry>> {
        self.0.inventory_entry(key)
    }

    fn by_employee(&self, employee: &EmployeeId) -> Result<Vec<InventoryEntry>> {
        self.0.by_employee(employee)
    }

    fn by_tenant(&self, tenant: &TenantId) -> Result<Vec<InventoryEntry>> {
        let prefix = format!("{}/", tenant.as_str());
        let mut out = Vec::new();
        for item in self.0.inventory.scan_prefix(prefix.as_bytes()) {
            let (key, value) = item?;
            out.push(decode(&key, &value)?);
        }
        Ok(out)
    }

    fn for_each(&self, visit: &mut dyn FnMut(InventoryEntry)) -> Result<()> {
        for item in self.0.inventory.iter() {
            let (key, value) = item?;
            visit(decode(&key, &value)?);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger() -> (tempfile::TempDir, Ledger) {
        let dir = tempfile::tempdir().expect("temp dir");
        let ledger = Ledger::open(&dir.path().join("ledger"), 1 << 20).expect("ledger opens");
        (dir, ledger)
    }

    fn assignment(id: &str) -> Event {
        let json = serde_json::json!({
            "specversion": "1.0", "id": id, "source": "urn:test", "type": "project.assignment.started",
            "time": "2026-11-29T09:00:00Z",
            "data": {"employee_id": "E-1", "tenant_id": "11111111-1111-4111-8111-111111111111",
                     "object_id": "22222222-2222-4222-8222-222222222222", "partner_id": "123",
                     "credential": "sp"}
        });
        Event::from_json_slice(&serde_json::to_vec(&json).unwrap()).expect("valid event")
    }

    #[test]
    fn record_instants_serialise_exactly_as_chrono_writes_them() {
        #[derive(Serialize)]
        struct Cached(#[serde(serialize_with = "same_instant::serialize")] DateTime<Utc>);
        let base = Utc.timestamp_millis_opt(1_800_000_000_000).unwrap();
        for nanos in [0, 120_000_000, 123_456_000, 123_456_789, 1] {
            let at = base + chrono::Duration::nanoseconds(nanos);
            for _ in 0..2 {
                // Twice: formatted, then from the thread's cache.
                assert_eq!(
                    serde_json::to_string(&Cached(at)).unwrap(),
                    serde_json::to_string(&at).unwrap()
                );
            }
        }
    }

    #[test]
    fn an_action_is_never_due_before_its_exact_due_time() {
        let (_dir, ledger) = ledger();
        let base = Utc.timestamp_millis_opt(1_800_000_000_000).unwrap();
        let created = base + chrono::Duration::microseconds(600);
        ledger.accept(&assignment("a"), None, created, 10).unwrap();

        // Same millisecond, 0.4 ms early: not due, and the executor's wake-up
        // time (the earliest due key) is not before the due time either.
        let early = base + chrono::Duration::microseconds(200);
        assert!(ledger.due_actions(early, 10, |_| false).unwrap().is_empty());
        assert!(ledger.next_due().unwrap().unwrap() >= created);
        // At the due time and after: due.
        assert_eq!(ledger.due_actions(created, 10, |_| false).unwrap().len(), 1);
        let later = base + chrono::Duration::milliseconds(5);
        assert_eq!(ledger.due_actions(later, 10, |_| false).unwrap().len(), 1);
    }

    #[test]
    fn a_retry_of_an_action_superseded_in_flight_is_not_scheduled() {
        let (_dir, ledger) = ledger();
        let now = Utc.timestamp_millis_opt(1_800_000_000_000).unwrap();
        ledger.accept(&assignment("old"), None, now, 10).unwrap();
        let old = ledger.due_actions(now, 10, |_| false).unwrap().remove(0);
        let mut old = ledger.claim(old.action_id, now).unwrap().unwrap();
        ledger.accept(&assignment("new"), None, now, 10).unwrap();

        old.state = ActionState::Scheduled;
        old.next_attempt_at = Some(now + chrono::Duration::seconds(1));
        match ledger.reschedule(&old).unwrap() {
            Rescheduled::Superseded(completion) => {
                assert_eq!(completion.record.state, ActionState::Cancelled);
                assert!(completion.event_completed.is_some());
            }
            Rescheduled::Scheduled => panic!("a superseded action was rescheduled"),
        }
        let stored = ledger.action(old.action_id).unwrap().unwrap();
        assert_eq!(stored.state, ActionState::Cancelled);
        let due = ledger
            .due_actions(now + chrono::Duration::hours(1), 10, |_| false)
            .unwrap();
        assert_eq!(due.len(), 1, "only the newer action remains");
        assert_ne!(due[0].action_id, old.action_id);
        assert_eq!(ledger.pending_count(), 1);
    }

    #[test]
    fn one_transaction_records_an_outcome_and_claims_the_accounts_next_action() {
        let (_dir, ledger) = ledger();
        let now = Utc.timestamp_millis_opt(1_800_000_000_000).unwrap();
        let first = accept_pending(&ledger, &assignment("first"), now);
        let due = ledger.due_actions(now, 10, |_| false).unwrap().remove(0);
        let mut running = ledger.claim(due.action_id, now).unwrap().unwrap();
        accept_pending(&ledger, &assignment("second"), now);
        let next = ledger.due_actions(now, 10, |_| false).unwrap();
        assert_eq!(next.len(), 1, "the second event's action is due");
        assert_eq!(next[0].account_key(), running.account_key());

        running.state = ActionState::Done;
        running.completed_at = Some(now);
        let later = now + chrono::Duration::seconds(1);
        let (completions, claimed) = ledger
            .finish_and_claim(
                std::slice::from_ref(&running),
                &[next[0].action_id, running.action_id],
                later,
            )
            .unwrap();

        assert_eq!(completions.len(), 1);
        assert_eq!(completions[0].record.action_id, running.action_id);
        let completed = completions[0].event_completed.as_ref().map(|r| r.seq);
        assert_eq!(completed, Some(first), "the first event completes");
        let [Some(claimed), None] = claimed.as_slice() else {
            panic!("the next action is claimed, the ended one is not: {claimed:?}");
        };
        assert_eq!(claimed.action_id, next[0].action_id);
        assert_eq!(claimed.state, ActionState::InFlight);
        assert_eq!(
            (claimed.attempts, claimed.first_attempt_at),
            (1, Some(later))
        );
        let stored = ledger.action(running.action_id).unwrap().unwrap();
        assert_eq!(stored.state, ActionState::Done);
        let stored = ledger.action(claimed.action_id).unwrap().unwrap();
        assert_eq!(stored.state, ActionState::InFlight);
        assert!(ledger.due_actions(later, 10, |_| false).unwrap().is_empty());
        assert_eq!(
            ledger.pending_count(),
            1,
            "only the claimed action is in flight"
        );
    }

    /// Accepts an event that is not held; its sequence number.
    fn accept_pending(ledger: &Ledger, event: &Event, now: DateTime<Utc>) -> EventSeq {
        match ledger.accept(event, None, now, 10).unwrap() {
            AcceptOutcome::Accepted { seq, .. } => seq,
            other => panic!("not accepted: {other:?}"),
        }
    }

    /// Claims and ends an event's only due action with `state`.
    fn end_due_action(ledger: &Ledger, now: DateTime<Utc>, state: ActionState) -> Completion {
        let due = ledger.due_actions(now, 10, |_| false).unwrap();
        assert_eq!(due.len(), 1, "one due action");
        let mut action = ledger.claim(due[0].action_id, now).unwrap().unwrap();
        action.state = state;
        action.completed_at = Some(now);
        ledger.finish(&action).unwrap()
    }

    #[test]
    fn a_plan_written_at_once_keeps_its_actions_and_open_count_in_its_record() {
        let (dir, ledger) = ledger();
        let now = Utc.timestamp_millis_opt(1_800_000_000_000).unwrap();
        let seq = accept_pending(&ledger, &assignment("single"), now);
        let record = ledger.event(seq).unwrap().unwrap();
        let action_id = record.action_ids.as_ref().expect("ids in the record")[0];
        assert_eq!(record.open_actions, Some(1));
        assert_eq!(ledger.event_actions.len(), 0);
        assert!(ledger.open_events.get(seq.to_be_bytes()).unwrap().is_none());
        assert_eq!(ledger.open_event_count().unwrap(), 1);
        assert_eq!(ledger.event_actions(seq).unwrap()[0].action_id, action_id);

        // Fails: the event completes; a retry reopens it until the action ends again.
        let completion = end_due_action(&ledger, now, ActionState::Failed);
        let completed = completion.event_completed.expect("the event completed");
        assert_eq!(completed.open_actions, Some(0));
        assert_eq!(ledger.open_event_count().unwrap(), 0);
        ledger.retry_action(action_id, now).unwrap();
        assert_eq!(ledger.event(seq).unwrap().unwrap().open_actions, Some(1));
        assert_eq!(ledger.open_event_count().unwrap(), 1);
        let completion = end_due_action(&ledger, now, ActionState::Done);
        assert!(completion.event_completed.is_some());
        assert_eq!(ledger.open_event_count().unwrap(), 0);
        assert!(ledger.open_events.get(seq.to_be_bytes()).unwrap().is_none());

        // The count survives a restart.
        ledger
            .accept(&assignment_for("second", "222"), None, now, 10)
            .unwrap();
        drop(ledger);
        let ledger = Ledger::open(&dir.path().join("ledger"), 1 << 20).unwrap();
        assert_eq!(ledger.open_event_count().unwrap(), 1);
    }

    #[test]
    fn an_older_ledger_keeps_working_with_its_event_actions_and_open_events() {
        let (dir, ledger) = ledger();
        let now = Utc.timestamp_millis_opt(1_800_000_000_000).unwrap();
        let seq = accept_pending(&ledger, &assignment("older"), now);
        // Rewrite the event as an older ledger stored it: ids and count in
        // their own trees, no count of open events.
        let mut record = ledger.event(seq).unwrap().unwrap();
        let action_id = record.action_ids.take().unwrap()[0];
        record.open_actions = None;
        ledger
            .events
            .insert(seq.to_be_bytes(), encode(&record))
            .unwrap();
        ledger
            .event_actions
            .insert(pair_key(seq, action_id), &[])
            .unwrap();
        ledger
            .open_events
            .insert(seq.to_be_bytes(), &1u64.to_be_bytes())
            .unwrap();
        ledger.open_events.remove(OPEN_COUNT_KEY).unwrap();
        drop(ledger);

        let ledger = Ledger::open(&dir.path().join("ledger"), 1 << 20).unwrap();
        assert_eq!(ledger.open_event_count().unwrap(), 1, "recounted at open");
        assert_eq!(ledger.event_actions(seq).unwrap()[0].action_id, action_id);
        let completion = end_due_action(&ledger, now, ActionState::Done);
        let completed = completion.event_completed.expect("the event completed");
        assert_eq!(completed.open_actions, None);
        assert!(ledger.open_events.get(seq.to_be_bytes()).unwrap().is_none());
        assert_eq!(ledger.open_event_count().unwrap(), 0);
    }

    fn import_linked(ledger: &Ledger, count: usize) {
        let rows = (0..count).map(|n| {
            let account = Account {
                tenant_id: TenantId::parse(&format!("{:08x}-0000-4000-8000-000000000000", n % 7))
                    .unwrap(),
                object_id: ObjectId::parse(&format!("{n:08x}-1111-4111-8111-111111111111"))
                    .unwrap(),
                employee_id: EmployeeId::parse(&format!("E-{n}")).unwrap(),
                credential: None,
                contract_id: None,
            };
            (account, Some(PartnerId::parse("111").unwrap()))
        });
        ledger.import_accounts(rows, Utc::now()).unwrap();
    }

    fn partner_change(id: &str) -> Event {
        let json = serde_json::json!({
            "specversion": "1.0", "id": id, "source": "urn:test", "type": "partner.id.changed",
            "time": "2026-11-29T09:00:00Z",
            "data": {"old_partner_id": "111", "new_partner_id": "222"}
        });
        Event::from_json_slice(&serde_json::to_vec(&json).unwrap()).expect("valid event")
    }

    #[test]
    fn the_inventory_size_counts_each_account_once_and_is_recounted_when_missing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("ledger");
        {
            let ledger = Ledger::open(&path, 1 << 20).unwrap();
            assert_eq!(ledger.inventory_size().unwrap(), 0);
            import_linked(&ledger, 10);
            import_linked(&ledger, 10);
            assert_eq!(
                ledger.inventory_size().unwrap(),
                10,
                "re-imports add nothing"
            );
            ledger
                .accept(&assignment("new-account"), None, Utc::now(), 10)
                .unwrap();
            assert_eq!(ledger.inventory_size().unwrap(), 11);
            ledger
                .accept(&partner_change("fan-out"), None, Utc::now(), 100)
                .unwrap();
            assert_eq!(
                ledger.inventory_size().unwrap(),
                11,
                "a fan-out adds nothing"
            );
            // As in a ledger written before the size was kept.
            ledger.index.remove(INVENTORY_SIZE_KEY).unwrap();
            ledger.flush().unwrap();
        }
        let ledger = Ledger::open(&path, 1 << 20).unwrap();
        assert_eq!(ledger.inventory_size().unwrap(), 11);
    }

    #[test]
    fn a_plan_larger_than_a_chunk_is_stored_whole_and_marked_last() {
        let (_dir, ledger) = ledger();
        let count = ACCEPT_CHUNK * 2 + 10;
        import_linked(&ledger, count);
        let outcome = ledger
            .accept(&partner_change("big"), None, Utc::now(), count)
            .unwrap();
        let AcceptOutcome::Accepted {
            seq,
            actions,
            completed,
            ..
        } = outcome
        else {
            panic!("accepted expected, got {outcome:?}");
        };
        assert_eq!(actions, count as u64);
        assert!(completed.is_none());
        assert_eq!(ledger.pending_count(), count as u64);
        // The marker's own decrement left exactly one per action.
        assert_eq!(
            read_u64(&ledger.open_events.get(seq.to_be_bytes()).unwrap().unwrap()),
            count as u64
        );
        assert!(ledger.is_duplicate("urn:test", "big").unwrap());
        let linked_new = ledger
            .inventory_list(None, None)
            .unwrap()
            .into_iter()
            .filter(|e| e.desired.partner_id().map(|p| p.as_str()) == Some("222"))
            .count();
        assert_eq!(linked_new, count);
        assert_eq!(ledger.event_actions(seq).unwrap().len(), count);
    }

    #[test]
    fn a_large_held_plan_changes_no_inventory_and_schedules_nothing() {
        let (_dir, ledger) = ledger();
        let count = ACCEPT_CHUNK + 1;
        import_linked(&ledger, count);
        let outcome = ledger
            .accept(&partner_change("held"), None, Utc::now(), 10)
            .unwrap();
        assert!(matches!(outcome, AcceptOutcome::Held { actions, .. } if actions == count as u64));
        assert_eq!(ledger.pending_count(), 0);
        assert_eq!(ledger.held_plan_count(), 1);
        assert!(
            ledger.inventory_list(None, None).unwrap().iter().all(|e| e
                .desired
                .partner_id()
                .map(|p| p.as_str())
                == Some("111"))
        );
    }

    /// Accepts `event` with a limit that holds it; its sequence.
    fn accept_held(ledger: &Ledger, event: &Event, now: DateTime<Utc>, limit: usize) -> EventSeq {
        match ledger.accept(event, None, now, limit).unwrap() {
            AcceptOutcome::Held { seq, .. } => seq,
            other => panic!("held expected, got {other:?}"),
        }
    }

    fn tenant(n: usize) -> String {
        format!("{n:08x}-0000-4000-8000-000000000000")
    }

    #[test]
    fn a_tenant_scoped_fan_out_streams_exactly_its_tenants_accounts_across_chunks() {
        let (_dir, ledger) = ledger();
        // Seven tenants; the two in scope hold more than a chunk together.
        let count = 7 * (ACCEPT_CHUNK / 2 + 3);
        import_linked(&ledger, count);
        let json = serde_json::json!({
            "specversion": "1.0", "id": "scoped", "source": "urn:test",
            "type": "partner.id.changed", "time": "2026-11-29T09:00:00Z",
            // Unsorted, with a repeat: still each account once.
            "data": {"old_partner_id": "111", "new_partner_id": "222",
                     "tenant_ids": [tenant(5), tenant(2), tenant(5)]}
        });
        let event = Event::from_json_slice(&serde_json::to_vec(&json).unwrap()).unwrap();
        let outcome = ledger.accept(&event, None, Utc::now(), count).unwrap();
        let in_scope = 2 * (ACCEPT_CHUNK / 2 + 3);
        assert!(in_scope > ACCEPT_CHUNK);
        let AcceptOutcome::Accepted { seq, actions, .. } = outcome else {
            panic!("accepted expected, got {outcome:?}");
        };
        assert_eq!(actions, in_scope as u64);
        let mut accounts: Vec<AccountKey> = ledger
            .event_actions(seq)
            .unwrap()
            .iter()
            .map(ActionRecord::account_key)
            .collect();
        accounts.sort();
        accounts.dedup();
        assert_eq!(accounts.len(), in_scope, "one action per account");
        for entry in ledger.inventory_list(None, None).unwrap() {
            let scoped =
                [tenant(2), tenant(5)].contains(&entry.account.tenant_id.as_str().to_owned());
            let partner = entry.desired.partner_id().map(|p| p.as_str().to_owned());
            assert_eq!(partner.as_deref(), Some(if scoped { "222" } else { "111" }));
        }
        assert_eq!(
            ledger.event(seq).unwrap().unwrap().action_count,
            in_scope as u64
        );
    }

    #[test]
    fn a_contract_end_streams_only_the_contracts_accounts() {
        let (_dir, ledger) = ledger();
        let t = TenantId::parse(&tenant(1)).unwrap();
        let rows = (0..ACCEPT_CHUNK * 2 + 1).map(|n| {
            let account = Account {
                tenant_id: t.clone(),
                object_id: ObjectId::parse(&format!("{n:08x}-1111-4111-8111-111111111111"))
                    .unwrap(),
                employee_id: EmployeeId::parse(&format!("E-{n}")).unwrap(),
                credential: None,
                contract_id: Some(
                    ContractId::parse(if n % 2 == 0 { "C-1" } else { "C-2" }).unwrap(),
                ),
            };
            (account, Some(PartnerId::parse("111").unwrap()))
        });
        ledger.import_accounts(rows, Utc::now()).unwrap();
        let json = serde_json::json!({
            "specversion": "1.0", "id": "contract", "source": "urn:test",
            "type": "project.contract.ended", "time": "2026-11-29T09:00:00Z",
            "data": {"tenant_id": tenant(1), "contract_id": "C-1"}
        });
        let event = Event::from_json_slice(&serde_json::to_vec(&json).unwrap()).unwrap();
        let outcome = ledger.accept(&event, None, Utc::now(), usize::MAX).unwrap();
        assert!(
            matches!(outcome, AcceptOutcome::Accepted { actions, .. } if actions == ACCEPT_CHUNK as u64 + 1),
            "{outcome:?}"
        );
        for entry in ledger.inventory_list(None, None).unwrap() {
            let ended = entry.account.contract_id.as_ref().map(|c| c.as_str()) == Some("C-1");
            assert_eq!(entry.desired.partner_id().is_none(), ended);
            assert_eq!(entry.assignment_active, !ended);
        }
    }

    #[test]
    fn an_approved_large_plan_completes_once_when_its_last_action_ends() {
        let (_dir, ledger) = ledger();
        let count = ACCEPT_CHUNK + 5;
        import_linked(&ledger, count);
        let now = Utc::now();
        let seq = accept_held(&ledger, &partner_change("approve-me"), now, 10);
        let approval = ledger.approve(seq, now).unwrap();
        assert_eq!(approval.released, count as u64);
        assert!(approval.completed.is_none());
        assert!(!ledger.index.contains_key(approving_key(seq)).unwrap());
        assert_eq!(ledger.open_event_count().unwrap(), 1);
        let due = ledger.due_actions(now, count * 2, |_| false).unwrap();
        assert_eq!(due.len(), count);
        let mut completions = 0;
        for (index, action) in due.into_iter().enumerate() {
            let mut action = ledger.claim(action.action_id, now).unwrap().unwrap();
            action.state = ActionState::Done;
            let completion = ledger.finish(&action).unwrap();
            if completion.event_completed.is_some() {
                completions += 1;
                assert_eq!(index, count - 1, "completed before its last action");
            }
        }
        assert_eq!(completions, 1);
        assert!(ledger.event(seq).unwrap().unwrap().completed_at.is_some());
        assert_eq!(ledger.open_event_count().unwrap(), 0);
    }

    #[test]
    fn approving_a_plan_whose_accounts_were_all_retargeted_completes_it_at_once() {
        let (_dir, ledger) = ledger();
        let now = Utc::now();
        let seq = accept_held(&ledger, &assignment_for("held", "111"), now, 0);
        // A later event for the same account is accepted while the plan waits.
        ledger
            .accept(&assignment_for("later", "222"), None, now, 10)
            .unwrap();
        let approval = ledger.approve(seq, now).unwrap();
        assert_eq!(approval.released, 0);
        assert_eq!(approval.cancelled.len(), 1);
        let completed = approval.completed.expect("completed by the approval");
        assert_eq!(completed.state, EventState::Approved);
        assert!(completed.completed_at.is_some());
        assert!(ledger.open_events.get(seq.to_be_bytes()).unwrap().is_none());
    }

    #[test]
    fn rejecting_a_large_held_plan_cancels_every_action_chunk_by_chunk() {
        let (_dir, ledger) = ledger();
        let count = ACCEPT_CHUNK * 2 + 3;
        import_linked(&ledger, count);
        let now = Utc::now();
        let seq = accept_held(&ledger, &partner_change("reject-me"), now, 10);
        assert_eq!(ledger.reject(seq, now).unwrap(), count as u64);
        let mut states = BTreeMap::new();
        for action in ledger.iter_event_actions(seq) {
            *states.entry(action.unwrap().state.as_str()).or_insert(0) += 1;
        }
        assert_eq!(states, BTreeMap::from([("cancelled", count)]));
        assert_eq!(ledger.held_plan_count(), 0);
        assert_eq!(ledger.pending_count(), 0);
        assert!(matches!(
            ledger.reject(seq, now),
            Err(LedgerError::Rejected(_))
        ));
    }

    fn assignment_for(id: &str, partner: &str) -> Event {
        let mut json: serde_json::Value = serde_json::from_slice(
            &serde_json::to_vec(&assignment(id).to_cloudevent_json()).unwrap(),
        )
        .unwrap();
        json["data"]["partner_id"] = partner.into();
        Event::from_json_slice(&serde_json::to_vec(&json).unwrap()).expect("valid event")
    }

    #[test]
    fn a_run_of_assignments_in_one_transaction_behaves_like_accepting_them_in_order() {
        let (_dir, ledger) = ledger();
        let first = assignment_for("first", "111");
        let second = assignment_for("second", "222");
        let now = Utc::now();
        let outcomes = ledger
            .accept_assignments(
                &[(&first, None), (&second, Some("hr")), (&first, None)],
                now,
                10,
            )
            .unwrap();
        assert!(
            matches!(outcomes[0], AcceptOutcome::Accepted { actions: 1, ref cancelled, .. } if cancelled.is_empty())
        );
        let AcceptOutcome::Accepted { ref cancelled, .. } = outcomes[1] else {
            panic!("{outcomes:?}");
        };
        assert_eq!(
            cancelled.len(),
            1,
            "the second supersedes the first (same account)"
        );
        assert_eq!(cancelled[0].action.event_id, "first");
        assert_eq!(outcomes[2], AcceptOutcome::Duplicate);
        assert_eq!(ledger.pending_count(), 1);
        let entry = ledger.inventory_list(None, None).unwrap().pop().unwrap();
        assert_eq!(entry.desired.partner_id().map(|p| p.as_str()), Some("222"));
        assert_eq!(
            ledger
                .resolve_event("second", None)
                .unwrap()
                .publisher
                .as_deref(),
            Some("hr")
        );
        // A later single accept sees the run's writes.
        assert_eq!(
            ledger.accept(&second, None, now, 10).unwrap(),
            AcceptOutcome::Duplicate
        );
    }
}
