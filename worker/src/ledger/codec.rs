//! How records and keys are laid out in sled, and the stored counters.

use chrono::{DateTime, Utc};
use palworker_core::{ActionId, EventSeq};
use palworker_events::{EmployeeId, ObjectId, TenantId};
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};

use super::{LedgerError, Result};
pub(super) type TxResult<T> = std::result::Result<T, ConflictableTransactionError<LedgerError>>;

pub(super) fn tx_error(error: TransactionError<LedgerError>) -> LedgerError {
    match error {
        TransactionError::Abort(error) => error,
        TransactionError::Storage(error) => LedgerError::Storage(error),
    }
}

/// Room for a typical record (events, actions and inventory entries are
/// 300 to 600 bytes), so encoding one does not grow its buffer seven times.
pub(super) const RECORD_CAPACITY: usize = 640;

pub(super) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(RECORD_CAPACITY);
    serde_json::to_writer(&mut bytes, value).expect("ledger records serialise");
    bytes
}

pub(super) fn decode<T: for<'de> Deserialize<'de>>(key: &[u8], bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|source| LedgerError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        source,
    })
}

pub(super) fn tx_decode<T: for<'de> Deserialize<'de>>(key: &[u8], bytes: &[u8]) -> TxResult<T> {
    decode(key, bytes).map_err(ConflictableTransactionError::Abort)
}

pub(super) fn account_key_bytes(tenant: &TenantId, object: &ObjectId) -> Vec<u8> {
    format!("{}/{}", tenant.as_str(), object.as_str()).into_bytes()
}

pub(super) fn employee_index_key(
    employee: &EmployeeId,
    tenant: &TenantId,
    object: &ObjectId,
) -> Vec<u8> {
    format!(
        "emp:{}\0{}/{}",
        employee.as_str(),
        tenant.as_str(),
        object.as_str()
    )
    .into_bytes()
}

pub(super) fn event_id_key(source: &str, id: &str) -> Vec<u8> {
    format!("eid:{id}\0{source}").into_bytes()
}

pub(super) fn held_key(seq: EventSeq) -> Vec<u8> {
    let mut key = b"held:".to_vec();
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

pub(super) fn approving_key(seq: EventSeq) -> Vec<u8> {
    let mut key = b"approving:".to_vec();
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// Present while a large plan is being written a chunk at a time: its
/// event's open-action count holds one share for the event marker that is
/// written last. Left behind by a crash, it tells the next open to give that
/// share back (the event is redelivered and planned under a new sequence).
pub(super) fn storing_key(seq: EventSeq) -> Vec<u8> {
    let mut key = STORING_PREFIX.to_vec();
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

pub(super) const STORING_PREFIX: &[u8] = b"storing:";

pub(super) fn pair_key(a: u64, b: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&a.to_be_bytes());
    key[8..].copy_from_slice(&b.to_be_bytes());
    key
}

pub(super) fn millis(at: DateTime<Utc>) -> u64 {
    at.timestamp_millis().max(0) as u64
}

/// `at` in milliseconds, rounded up: a due key never names an instant
/// before the action's due time.
pub(super) fn millis_ceil(at: DateTime<Utc>) -> u64 {
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
pub(super) fn due_key(at: DateTime<Utc>, action: ActionId) -> [u8; 16] {
    pair_key(millis_ceil(at), action.get())
}

pub(super) fn read_u64(bytes: &[u8]) -> u64 {
    let mut buffer = [0u8; 8];
    let len = bytes.len().min(8);
    buffer[..len].copy_from_slice(&bytes[..len]);
    u64::from_be_bytes(buffer)
}

/// Index key of the number of accounts in the inventory.
pub(super) const INVENTORY_SIZE_KEY: &[u8] = b"meta:inventory_accounts";

/// Adds `added` new accounts to the inventory's size.
pub(super) fn add_inventory_size(index: &TransactionalTree, added: u64) -> TxResult<()> {
    add_to_counter(index, INVENTORY_SIZE_KEY, added as i64)
}

/// Adds `delta` to the big-endian u64 at `key` (absent: zero; never below zero).
pub(super) fn add_to_counter(tree: &TransactionalTree, key: &[u8], delta: i64) -> TxResult<()> {
    if delta != 0 {
        let value = tree.get(key)?.map_or(0, |bytes| read_u64(&bytes));
        tree.insert(key, &value.saturating_add_signed(delta).to_be_bytes())?;
    }
    Ok(())
}

/// The big-endian u64 at `key` (absent: zero).
pub(super) fn read_counter(tree: &sled::Tree, key: &[u8]) -> Result<u64> {
    Ok(tree.get(key)?.map_or(0, |bytes| read_u64(&bytes)))
}

/// Writes `count()` at `key` unless a count is stored there already.
pub(super) fn recount_if_missing(
    tree: &sled::Tree,
    key: &[u8],
    count: impl FnOnce() -> usize,
) -> Result<()> {
    if tree.get(key)?.is_none() {
        tree.insert(key, &(count() as u64).to_be_bytes())?;
    }
    Ok(())
}

/// `open_events` key of the number of open events (an event's own key is
/// its 8-byte sequence number, so the two never meet).
pub(super) const OPEN_COUNT_KEY: &[u8] = b"open_events";
