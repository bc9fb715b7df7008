//! The inventory: accounts by `{tenant}/{object}`, the employee index, and
//! the planner's read-only view of both.

use std::ops::Bound;

use chrono::{DateTime, Utc};
use palworker_core::InventoryEntry;
use palworker_core::planner::{InventoryView, Scope};
use palworker_events::{Account, AccountKey, DesiredLink, EmployeeId, PartnerId, TenantId};
use serde::Deserialize;
use sled::Transactional;
use sled::transaction::TransactionalTree;

use super::codec::{
    TxResult, account_key_bytes, add_inventory_size, decode, employee_index_key, encode, tx_decode,
    tx_error,
};
use super::{Ledger, LedgerError, Result};

/// Accounts imported per transaction.
const IMPORT_CHUNK: usize = 256;
impl Ledger {
    // ---- inventory -------------------------------------------------------

    pub fn inventory_entry(&self, key: &AccountKey) -> Result<Option<InventoryEntry>> {
        let store = self.store()?;
        let k = account_key_bytes(&key.tenant_id, &key.object_id);
        store
            .inventory
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
        let _writing = self.writing();
        let store = self.store()?;
        let _planning = self.planning();
        let mut count = 0;
        let mut rows = rows.into_iter().peekable();
        let mut chunk = Vec::with_capacity(IMPORT_CHUNK);
        while rows.peek().is_some() {
            chunk.clear();
            chunk.extend(rows.by_ref().take(IMPORT_CHUNK));
            // Each account is read and written in the same transaction, a
            // chunk of accounts per transaction.
            (&store.inventory, &store.index)
                .transaction(|(inventory, index)| {
                    let mut added = 0u64;
                    for (account, partner) in &chunk {
                        let key = account_key_bytes(&account.tenant_id, &account.object_id);
                        let previous: Option<InventoryEntry> = match inventory.get(&key)? {
                            Some(bytes) => Some(tx_decode(&key, &bytes)?),
                            None => None,
                        };
                        let previous_employee =
                            previous.as_ref().map(|p| p.account.employee_id.clone());
                        let entry = match previous {
                            Some(mut entry) => {
                                entry.account = account.clone();
                                entry.assignment_active = true;
                                if let Some(partner) = partner {
                                    entry.desired = DesiredLink::Linked(partner.clone());
                                }
                                entry.updated_at = now;
                                entry
                            }
                            None => InventoryEntry {
                                account: account.clone(),
                                desired: partner
                                    .clone()
                                    .map(DesiredLink::Linked)
                                    .unwrap_or(DesiredLink::Absent),
                                assignment_active: true,
                                last_event_seq: None,
                                current_action: None,
                                updated_at: now,
                            },
                        };
                        added += u64::from(write_inventory(
                            inventory,
                            index,
                            previous_employee.as_ref(),
                            &entry,
                        )?);
                    }
                    add_inventory_size(index, added)
                })
                .map_err(tx_error)?;
            count += chunk.len() as u64;
        }
        Ok(count)
    }

    /// Inventory entries, optionally filtered.
    pub fn inventory_list(
        &self,
        employee: Option<&str>,
        tenant: Option<&str>,
    ) -> Result<Vec<InventoryEntry>> {
        let store = self.store()?;
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
            Some(prefix) => store.inventory.scan_prefix(prefix.as_bytes()),
            None => store.inventory.iter(),
        };
        for item in iter {
            let (key, value) = item?;
            out.push(decode(&key, &value)?);
        }
        Ok(out)
    }
}

/// Writes an inventory entry and keeps the employee index in step. Returns
/// whether the account is new (the caller adds it to the inventory's size,
/// once per transaction).
pub(super) fn write_inventory(
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

/// The planner's read-only view of the ledger's inventory.
pub(super) struct LedgerView<'a>(pub(super) &'a Ledger);

impl Ledger {
    fn by_employee(&self, employee: &EmployeeId) -> Result<Vec<InventoryEntry>> {
        let store = self.store()?;
        let prefix = format!("emp:{}\0", employee.as_str());
        let mut out = Vec::new();
        for item in store.index.scan_prefix(prefix.as_bytes()) {
            let (key, _) = item?;
            let account_key = &key[prefix.len()..];
            if let Some(bytes) = store.inventory.get(account_key)? {
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
    pub(super) fn scan_scope<T: for<'de> Deserialize<'de>>(
        &self,
        scope: &Scope,
        after: Option<&[u8]>,
        mut visit: impl FnMut(&[u8], T) -> bool,
    ) -> Result<bool> {
        let store = self.store()?;
        let start = |floor: &[u8]| match after {
            Some(after) if after >= floor => Bound::Excluded(after.to_vec()),
            _ => Bound::Included(floor.to_vec()),
        };
        match scope {
            Scope::All => {
                for item in store.inventory.range((start(b""), Bound::Unbounded)) {
                    let (key, value) = item?;
                    if !visit(&key, decode(&key, &value)?) {
                        return Ok(false);
                    }
                }
            }
            Scope::Tenants(tenants) => {
                for tenant in tenants {
                    let prefix = format!("{}/", tenant.as_str()).into_bytes();
                    for item in store.inventory.range((start(&prefix), Bound::Unbounded)) {
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
    type Error = LedgerError;

    fn get(&self, key: &AccountKey) -> Result<Option<InventoryEntry>> {
        self.0.inventory_entry(key)
    }

    fn by_employee(&self, employee: &EmployeeId) -> Result<Vec<InventoryEntry>> {
        self.0.by_employee(employee)
    }

    fn by_tenant(&self, tenant: &TenantId) -> Result<Vec<InventoryEntry>> {
        let prefix = format!("{}/", tenant.as_str());
        let mut out = Vec::new();
        for item in self.0.store()?.inventory.scan_prefix(prefix.as_bytes()) {
            let (key, value) = item?;
            out.push(decode(&key, &value)?);
        }
        Ok(out)
    }

    fn for_each(&self, visit: &mut dyn FnMut(InventoryEntry)) -> Result<()> {
        for item in self.0.store()?.inventory.iter() {
            let (key, value) = item?;
            visit(decode(&key, &value)?);
        }
        Ok(())
    }
}
