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
//!   `storing:{seq}` → () while a large plan is being written in chunks;
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
//! - `audit`: the audit trail (see `audit.rs`)
//! - `outbox`: results owed to the publishers (see `outbox.rs`)
//!
//! # Files
//!
//! | file | holds |
//! | --- | --- |
//! | `mod.rs` | [`Ledger`]: opening (and recovering in-flight actions and cut-off plans), flushing, sizes and counts |
//! | `codec.rs` | record encoding, key layouts, stored counters |
//! | `inventory.rs` | accounts: import, lookups, the planner's [`InventoryView`] |
//! | `accept.rs` | accepting an event: dedup, plan, store (one transaction, or chunks) |
//! | `chunks.rs` | a large plan handed out a chunk at a time (streamed fan-outs) |
//! | `bookkeeping.rs` | what every transition keeps in step: supersession, open-action counts |
//! | `execution.rs` | the executor's side: due actions, claims, outcomes, durable retries |
//! | `operators.rs` | approve, reject, retry — operator transitions |
//! | `retention.rs` | pruning what ended long ago, in bounded steps |
//! | `export.rs` | every record as JSON Lines, and back: backup, restore, migration |
//! | `repartition.rs` | exports of N partitions split or merged into M by the tenant's partition |
//! | `audit.rs` | the hash-chained audit trail, appended in the transactions it records |
//! | `outbox.rs` | results owed to the publishers, written in the transactions they report |
//! | `reconcile.rs` | a reconcile's scan of the inventory and its plan, stored like an event's with its audit record |
//! | `report.rs` | time to revocation: `report revocations`, the oldest open removal |
//! | `check.rs` | `ledger check`: every counter and index recomputed from the records |
//! | `events.rs`, `queries.rs` | reading events and actions back |
//! | `pages.rs` | reading back a page at a time, newest first, with a cursor (the console) |

mod accept;
mod audit;
mod bookkeeping;
mod check;
mod chunks;
mod codec;
mod events;
mod execution;
mod export;
mod inventory;
mod operators;
mod outbox;
mod pages;
#[cfg(test)]
mod proof_tests;
mod queries;
mod reconcile;
mod repartition;
mod report;
mod retention;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

#[cfg(doc)]
use palworker_core::planner::InventoryView;
#[cfg(doc)]
use palworker_core::{EventRecord, InventoryEntry};
use sled::Transactional;

pub use accept::ACCEPT_CHUNK;
pub use audit::{AuditBreak, AuditVerified, WORKER};
pub use bookkeeping::EventOpening;
use bookkeeping::{EventEnd, decrement_open};
pub use check::{CheckMode, Difference};
use codec::{
    INVENTORY_SIZE_KEY, OPEN_COUNT_KEY, STORING_PREFIX, due_key, encode, read_counter, read_u64,
    recount_if_missing, tx_decode, tx_error,
};
pub use execution::Pass;
pub use export::Transferred;
pub use operators::{PauseState, Requeued};
pub use outbox::{Outgoing, PendingResult, needs_attention};
pub use pages::Page;
pub use reconcile::{Drifted, ScannedAccount, Seen};
pub use repartition::{Repartitioned, export_file_name, repartition};
pub use report::{OpenWork, RevocationRow};
pub use retention::{Retention, SweepCursor, Swept};

/// How long opening waits for a file lock this process may still hold (a
/// ledger it just closed); a running worker's lock is held for good.
const LOCK_WAIT_AT_OPEN: Duration = Duration::from_millis(250);
/// How long reopening waits for the closed database to be released.
const LOCK_WAIT_AT_REOPEN: Duration = Duration::from_secs(30);

/// Index key the ledger writes and flushes to prove it can, after reopening.
const PROBE_KEY: &[u8] = b"meta:probe";
use palworker_core::{ActionId, ActionRecord, ActionState, EventSeq};

/// Errors of the ledger. All of them are internal failures (disk, corruption)
/// but [`LedgerError::Rejected`]: a delivery that meets one is not acked and
/// comes back later.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// sled reported an IO or corruption error.
    #[error("ledger storage error: {0}")]
    Storage(#[from] sled::Error),
    /// The ledger is closed after a storage error and not reopened yet.
    #[error("the ledger is unavailable: {0}")]
    Unavailable(String),
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

impl LedgerError {
    /// Whether the storage underneath failed (disk full, I/O error) or is
    /// closed because it did: the ledger must be reopened before it is used
    /// again, and what failed is retried then, never given up on.
    pub fn is_storage_failure(&self) -> bool {
        matches!(
            self,
            LedgerError::Storage(sled::Error::Io(_)) | LedgerError::Unavailable(_)
        )
    }
}

/// The ledger's result type.
pub type Result<T> = std::result::Result<T, LedgerError>;

/// The palworker ledger: a sled database that can be closed and reopened
/// under its users (sled keeps an I/O error for good once it met one, so
/// recovering from a full disk takes a new database handle).
pub struct Ledger {
    path: PathBuf,
    cache_capacity_bytes: u64,
    /// The open database; `None` while it is closed after a storage failure.
    store: RwLock<Option<Arc<Store>>>,
    /// Serialises planning: plans read the inventory outside the transaction
    /// that writes them, so only one plan may be computed and stored at a time.
    planning: Mutex<()>,
    /// Set while a plan larger than one chunk is being written (see
    /// [`Ledger::is_storing_large_plan`]).
    storing_large_plan: AtomicBool,
    /// Every writer holds it shared; an export holds it alone, so what it
    /// reads is one consistent state.
    writes: RwLock<()>,
}

/// The trees of one open database (see the module docs for their keys).
struct Store {
    db: sled::Db,
    inventory: sled::Tree,
    index: sled::Tree,
    events: sled::Tree,
    actions: sled::Tree,
    event_actions: sled::Tree,
    due: sled::Tree,
    in_flight: sled::Tree,
    open_events: sled::Tree,
    audit: sled::Tree,
    outbox: sled::Tree,
}

impl Store {
    /// Opens (or creates) the database at `path` and recovers actions that
    /// were in flight when it was last used: they become pending again.
    fn open(path: &Path, cache_capacity_bytes: u64) -> Result<Store> {
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
        let store = Store {
            inventory: db.open_tree("inventory")?,
            index: db.open_tree("index")?,
            events: db.open_tree("events")?,
            actions: db.open_tree("actions")?,
            event_actions: db.open_tree("event_actions")?,
            due: db.open_tree("due")?,
            in_flight: db.open_tree("in_flight")?,
            open_events: db.open_tree("open_events")?,
            audit: db.open_tree("audit")?,
            outbox: db.open_tree("outbox")?,
            db,
        };
        store.recover_in_flight()?;
        store.release_cut_off_plans()?;
        // A ledger from before these counts were kept is counted once (in
        // such a ledger every open event has an `open_events` entry).
        recount_if_missing(&store.index, INVENTORY_SIZE_KEY, || store.inventory.len())?;
        recount_if_missing(&store.open_events, OPEN_COUNT_KEY, || {
            store.open_events.len()
        })?;
        Ok(store)
    }

    /// [`Store::open`], waiting up to `wait` for the file lock: sled
    /// releases it when its last handle is gone, which its I/O threads may
    /// hold a moment after a database of this process was dropped.
    fn open_when_free(path: &Path, cache_capacity_bytes: u64, wait: Duration) -> Result<Store> {
        let deadline = Instant::now() + wait;
        loop {
            match Store::open(path, cache_capacity_bytes) {
                Err(LedgerError::Locked(_)) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                opened => return opened,
            }
        }
    }

    /// Gives back the event-marker share of every large plan a crash cut
    /// off between chunks (see `codec::storing_key`): the event was not
    /// acknowledged and is planned again under a new sequence number, while
    /// the actions already written run as stored and can now end it.
    fn release_cut_off_plans(&self) -> Result<()> {
        for entry in self.index.scan_prefix(STORING_PREFIX) {
            let (key, _) = entry?;
            let seq = EventSeq::new(read_u64(&key[STORING_PREFIX.len()..]));
            let now = chrono::Utc::now();
            (&self.index, &self.open_events, &self.events, &self.outbox)
                .transaction(|(index, open_events, events, outbox)| {
                    index.remove(&key)?;
                    let end = EventEnd {
                        open_events,
                        events,
                        outbox,
                    };
                    decrement_open(end, seq, now)?;
                    Ok(())
                })
                .map_err(tx_error)?;
        }
        Ok(())
    }

    fn recover_in_flight(&self) -> Result<()> {
        for entry in self.in_flight.iter() {
            let (key, _) = entry?;
            let action_id = ActionId::new(read_u64(&key));
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

impl Ledger {
    /// Opens (or creates) the ledger and recovers actions that were in flight
    /// when the previous process stopped: they become pending again.
    pub fn open(path: &Path, cache_capacity_bytes: u64) -> Result<Ledger> {
        let store = Store::open_when_free(path, cache_capacity_bytes, LOCK_WAIT_AT_OPEN)?;
        Ok(Ledger {
            path: path.to_owned(),
            cache_capacity_bytes,
            store: RwLock::new(Some(Arc::new(store))),
            planning: Mutex::new(()),
            storing_large_plan: AtomicBool::new(false),
            writes: RwLock::new(()),
        })
    }

    /// The open database, or [`LedgerError::Unavailable`] while it is closed.
    fn store(&self) -> Result<Arc<Store>> {
        self.store
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| LedgerError::Unavailable("closed after a storage error".into()))
    }

    /// Whether the database is open (it is closed while being reopened).
    pub fn is_open(&self) -> bool {
        self.store
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    /// Closes the database and opens it again — how the ledger recovers
    /// from a storage failure, since sled keeps an I/O error for good — then
    /// proves it can write: a probe record is written and flushed. Blocking.
    /// On failure the ledger stays closed (every call answers
    /// [`LedgerError::Unavailable`]) and `reopen` may be tried again later.
    /// Actions that were in flight become pending again, as after a restart.
    pub fn reopen(&self) -> Result<()> {
        let old = self
            .store
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(old) = old {
            // Calls in progress still hold the old database; sled's file
            // lock is released only when the last handle is dropped.
            let deadline = Instant::now() + LOCK_WAIT_AT_REOPEN;
            while Arc::strong_count(&old) > 1 {
                if Instant::now() >= deadline {
                    return Err(LedgerError::Unavailable(
                        "the closed database is still in use".into(),
                    ));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            drop(old);
        }
        let store =
            Store::open_when_free(&self.path, self.cache_capacity_bytes, LOCK_WAIT_AT_REOPEN)?;
        store.index.insert(
            PROBE_KEY,
            &chrono::Utc::now().timestamp_millis().to_be_bytes(),
        )?;
        store.db.flush()?;
        *self.store.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(store));
        Ok(())
    }

    /// The write gate, shared: held by every method that writes (never by
    /// one that calls another writer: std's lock is not re-entrant).
    fn writing(&self) -> RwLockReadGuard<'_, ()> {
        self.writes.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The write gate, alone: no transaction runs while it is held.
    fn snapshot(&self) -> RwLockWriteGuard<'_, ()> {
        self.writes.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// The planning lock: plans read the inventory outside the transaction
    /// that writes them, so one plan at a time. A panic while it was held
    /// leaves nothing half-written (every write is a transaction), so a
    /// poisoned lock is taken over, not fatal.
    fn planning(&self) -> MutexGuard<'_, ()> {
        self.planning.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The number of accounts in the inventory: an upper bound of any
    /// fan-out's size, so a large plan is counted against
    /// `limits.max_actions_per_event` only when it could exceed it.
    pub fn inventory_size(&self) -> Result<u64> {
        let store = self.store()?;
        read_counter(&store.index, INVENTORY_SIZE_KEY)
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
        let store = self.store()?;
        store.db.flush()?;
        Ok(())
    }

    /// The size of the ledger's files.
    pub fn size_on_disk(&self) -> u64 {
        self.store()
            .map_or(0, |store| store.db.size_on_disk().unwrap_or(0))
    }

    /// Non-terminal, non-held actions (pending, scheduled, in flight).
    pub fn pending_count(&self) -> u64 {
        self.store()
            .map_or(0, |store| (store.due.len() + store.in_flight.len()) as u64)
    }

    /// Actions waiting for their event's future `effective_at` at `now`:
    /// never claimed, with a due time after `now`. Reads only the actions
    /// due after `now`.
    pub fn scheduled_count(&self, now: chrono::DateTime<chrono::Utc>) -> Result<u64> {
        let store = self.store()?;
        let mut count = 0;
        let after = codec::pair_key(codec::millis_ceil(now).saturating_add(1), 0);
        for item in store.due.range(after..) {
            let (key, _) = item?;
            let id = ActionId::new(read_u64(&key[8..]));
            let Some(bytes) = store.actions.get(id.to_be_bytes())? else {
                continue;
            };
            let action: ActionRecord = codec::decode(&key, &bytes)?;
            if action.attempts == 0 && action.not_before.is_some_and(|at| at > now) {
                count += 1;
            }
        }
        Ok(count)
    }

    /// Free space of the file system the ledger is on, for an unprivileged
    /// writer (`None` when it cannot be read).
    pub fn disk_free(&self) -> Option<u64> {
        let stats = rustix::fs::statvfs(&self.path).ok()?;
        Some(stats.f_bavail.saturating_mul(stats.f_frsize))
    }

    /// Plans held for approval.
    pub fn held_plan_count(&self) -> u64 {
        self.store()
            .map_or(0, |store| store.index.scan_prefix(b"held:").count() as u64)
    }

    /// Accepted (or approved) events whose actions are not all terminal yet.
    pub fn open_event_count(&self) -> Result<u64> {
        let store = self.store()?;
        read_counter(&store.open_events, OPEN_COUNT_KEY)
    }
}
