//! Planning: the pure function (event, inventory) → plan of SPEC §3.
//!
//! Planning reads only the inventory's *desired* links, never PAL. It is a
//! function of the event and the partition's inventory (SPEC §10), so the same
//! code serves one process or many partitions.

use std::collections::BTreeMap;

use palworker_events::{
    Account, AccountKey, ContractId, CredentialName, DesiredLink, EmployeeId, Event, EventData,
    ObjectId, PartnerId, TenantId,
};
use serde::Serialize;

use crate::drift::DriftKind;
use crate::ids::ActionId;
use crate::model::{InventoryEntry, Op};

/// Read access to the inventory: the narrow interface through which the
/// planner reads whatever stores it (the ledger, or a test's memory).
pub trait InventoryView {
    /// Why the store could not be read.
    type Error;
    /// The entry of one account.
    fn get(&self, key: &AccountKey) -> Result<Option<InventoryEntry>, Self::Error>;
    /// Every entry of one employee.
    fn by_employee(&self, employee: &EmployeeId) -> Result<Vec<InventoryEntry>, Self::Error>;
    /// Every entry of one tenant.
    fn by_tenant(&self, tenant: &TenantId) -> Result<Vec<InventoryEntry>, Self::Error>;
    /// Visits every entry.
    fn for_each(&self, visit: &mut dyn FnMut(InventoryEntry)) -> Result<(), Self::Error>;
}

/// What the ledger needs to know of an account's entry before the event
/// (kept small: a fan-out holds one per account).
#[derive(Debug, Clone, PartialEq)]
pub struct Previous {
    /// The account's latest action, which the new one supersedes.
    pub current_action: Option<ActionId>,
    /// The employee the account belonged to (the index is kept in step).
    pub employee_id: EmployeeId,
}

/// Whether an account's assignment runs. An ended one keeps its account in
/// the inventory (desired `Absent`); a successor is linked only through a
/// running one (SPEC §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AssignmentStatus {
    Active,
    Ended,
}

impl AssignmentStatus {
    /// The status an inventory entry records.
    pub fn of(entry: &InventoryEntry) -> Self {
        if entry.assignment_active {
            AssignmentStatus::Active
        } else {
            AssignmentStatus::Ended
        }
    }

    pub fn is_active(self) -> bool {
        self == AssignmentStatus::Active
    }
}

/// One account's new desired state, and the action that reconciles towards it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlannedChange {
    /// The account's entry before the event (None: a new account).
    #[serde(skip)]
    pub previous: Option<Previous>,
    pub account: Account,
    pub desired: DesiredLink,
    /// Whether the account's assignment runs after the change.
    pub assignment: AssignmentStatus,
    pub op: Op,
}

/// The actions one event implies.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Plan {
    pub changes: Vec<PlannedChange>,
    /// Tenants where a departed employee had a link but the successor has no
    /// (active) account: reported, not failed.
    pub unassigned: Vec<TenantId>,
}

fn op_for(before: Option<&InventoryEntry>, desired: &DesiredLink) -> Op {
    match desired {
        DesiredLink::Absent => Op::Remove,
        DesiredLink::Linked(partner) => match before.map(|e| &e.desired) {
            Some(DesiredLink::Linked(previous)) if previous != partner => Op::Update,
            _ => Op::Link,
        },
    }
}

/// The change that reconciles `entry` towards `desired`.
fn change_of(
    entry: InventoryEntry,
    desired: DesiredLink,
    assignment: AssignmentStatus,
) -> PlannedChange {
    let op = op_for(Some(&entry), &desired);
    PlannedChange {
        previous: Some(Previous {
            current_action: entry.current_action,
            employee_id: entry.account.employee_id.clone(),
        }),
        account: entry.account,
        desired,
        assignment,
        op,
    }
}

/// Collects changes; one plan never holds two actions for the same account
/// (the later rule wins), and they come out ordered by account.
#[derive(Default)]
struct Changes(Vec<PlannedChange>);

impl Changes {
    fn set(&mut self, entry: InventoryEntry, desired: DesiredLink, assignment: AssignmentStatus) {
        self.0.push(change_of(entry, desired, assignment));
    }

    fn into_vec(mut self) -> Vec<PlannedChange> {
        // Stable: of two changes for one account the later stays last.
        self.0.sort_by(|a, b| {
            (&a.account.tenant_id, &a.account.object_id)
                .cmp(&(&b.account.tenant_id, &b.account.object_id))
        });
        let mut out: Vec<PlannedChange> = Vec::with_capacity(self.0.len());
        for change in self.0 {
            match out.last_mut() {
                Some(last) if last.account.key() == change.account.key() => *last = change,
                _ => out.push(change),
            }
        }
        out
    }
}

/// The accounts a fan-out event reads.
#[derive(Debug, Clone, PartialEq)]
pub enum Scope {
    /// Every account in the inventory.
    All,
    /// The accounts of these tenants, sorted and without repeats (so that
    /// visiting them tenant by tenant is visiting them in key order).
    Tenants(Vec<TenantId>),
}

/// An event whose every change depends on one inventory entry alone
/// (`project.contract.ended`, `partner.id.changed`): the events that can touch
/// tens of thousands of accounts. The ledger plans them as a stream over the
/// inventory in key order, a chunk at a time, never holding the whole plan.
#[derive(Debug)]
pub struct FanOut<'a> {
    pub scope: Scope,
    rule: FanOutRule<'a>,
}

#[derive(Debug)]
enum FanOutRule<'a> {
    /// Remove the links of the contract's accounts (all of the tenant's
    /// accounts without a contract ID).
    ContractEnded { contract_id: Option<&'a ContractId> },
    /// Move every account desired linked to `old` to `new`.
    PartnerIdChanged {
        old: &'a PartnerId,
        new: &'a PartnerId,
    },
}

impl FanOut<'_> {
    /// Whether the event changes this account of its scope.
    pub fn applies(&self, entry: &InventoryEntry) -> bool {
        self.applies_to(entry.account.contract_id.as_ref(), &entry.desired)
    }

    /// [`FanOut::applies`] from the two fields it reads.
    pub fn applies_to(&self, contract: Option<&ContractId>, desired: &DesiredLink) -> bool {
        match self.rule {
            FanOutRule::ContractEnded { contract_id } => {
                contract_id.is_none() || contract == contract_id
            }
            FanOutRule::PartnerIdChanged { old, .. } => desired.partner_id() == Some(old),
        }
    }

    /// The change the event implies for one account of its scope, if any.
    pub fn change(&self, entry: InventoryEntry) -> Option<PlannedChange> {
        if !self.applies(&entry) {
            return None;
        }
        Some(match self.rule {
            FanOutRule::ContractEnded { .. } => {
                change_of(entry, DesiredLink::Absent, AssignmentStatus::Ended)
            }
            FanOutRule::PartnerIdChanged { new, .. } => {
                let assignment = AssignmentStatus::of(&entry);
                change_of(entry, DesiredLink::Linked(new.clone()), assignment)
            }
        })
    }
}

impl<'a> FanOut<'a> {
    /// `project.contract.ended`: the contract's accounts in the tenant (all
    /// of the tenant's accounts without a contract ID).
    fn contract_ended(tenant_id: &TenantId, contract_id: Option<&'a ContractId>) -> Self {
        FanOut {
            scope: Scope::Tenants(vec![tenant_id.clone()]),
            rule: FanOutRule::ContractEnded { contract_id },
        }
    }

    /// `partner.id.changed`: every account desired linked to `old`, in the
    /// named tenants or everywhere.
    fn partner_id_changed(
        old: &'a PartnerId,
        new: &'a PartnerId,
        tenant_ids: Option<&[TenantId]>,
    ) -> Self {
        FanOut {
            scope: match tenant_ids {
                Some(tenants) => {
                    let mut tenants = tenants.to_vec();
                    tenants.sort();
                    tenants.dedup();
                    Scope::Tenants(tenants)
                }
                None => Scope::All,
            },
            rule: FanOutRule::PartnerIdChanged { old, new },
        }
    }

    /// Visits the scope's entries through `inventory`, collecting the changes.
    fn collect<V: InventoryView + ?Sized>(
        &self,
        inventory: &V,
        changes: &mut Changes,
    ) -> Result<(), V::Error> {
        let mut visit = |entry: InventoryEntry| {
            if let Some(change) = self.change(entry) {
                changes.0.push(change);
            }
        };
        match &self.scope {
            Scope::Tenants(tenants) => {
                for tenant in tenants {
                    for entry in inventory.by_tenant(tenant)? {
                        visit(entry);
                    }
                }
                Ok(())
            }
            Scope::All => inventory.for_each(&mut visit),
        }
    }
}

/// The fan-out form of `event`, for the event types planned as a stream.
pub fn fan_out(event: &Event) -> Option<FanOut<'_>> {
    match &event.data {
        EventData::ContractEnded {
            tenant_id,
            contract_id,
        } => Some(FanOut::contract_ended(tenant_id, contract_id.as_ref())),
        EventData::PartnerIdChanged {
            old_partner_id,
            new_partner_id,
            tenant_ids,
        } => Some(FanOut::partner_id_changed(
            old_partner_id,
            new_partner_id,
            tenant_ids.as_deref(),
        )),
        _ => None,
    }
}

fn linked_to(entry: &InventoryEntry) -> Option<&PartnerId> {
    match &entry.desired {
        DesiredLink::Linked(partner) => Some(partner),
        DesiredLink::Absent => None,
    }
}

/// A `project.assignment.started` event: the one type whose plan reads
/// nothing but its own account's entry, so a run of them can be planned
/// inside one ledger transaction.
#[derive(Debug, Clone, Copy)]
pub struct Assignment<'a> {
    event: &'a Event,
    account: AccountRef<'a>,
}

#[derive(Debug, Clone, Copy)]
struct AccountRef<'a> {
    employee_id: &'a EmployeeId,
    tenant_id: &'a TenantId,
    object_id: &'a ObjectId,
    partner_id: &'a PartnerId,
    credential: Option<&'a CredentialName>,
    contract_id: Option<&'a ContractId>,
}

impl<'a> Assignment<'a> {
    /// The assignment `event` is, if it is one.
    pub fn of(event: &'a Event) -> Option<Self> {
        let EventData::AssignmentStarted {
            employee_id,
            tenant_id,
            object_id,
            partner_id,
            credential,
            contract_id,
        } = &event.data
        else {
            return None;
        };
        Some(Assignment {
            event,
            account: AccountRef {
                employee_id,
                tenant_id,
                object_id,
                partner_id,
                credential: credential.as_ref(),
                contract_id: contract_id.as_ref(),
            },
        })
    }

    /// The event.
    pub fn event(&self) -> &'a Event {
        self.event
    }

    /// The account it assigns.
    pub fn key(&self) -> AccountKey {
        AccountKey {
            tenant_id: self.account.tenant_id.clone(),
            object_id: self.account.object_id.clone(),
        }
    }

    /// The one change it implies, given its account's entry before it.
    pub fn change(&self, before: Option<InventoryEntry>) -> PlannedChange {
        let account = self.account;
        let desired = DesiredLink::Linked(account.partner_id.clone());
        let op = op_for(before.as_ref(), &desired);
        PlannedChange {
            previous: before.map(|entry| Previous {
                current_action: entry.current_action,
                employee_id: entry.account.employee_id,
            }),
            account: Account {
                tenant_id: account.tenant_id.clone(),
                object_id: account.object_id.clone(),
                employee_id: account.employee_id.clone(),
                credential: account.credential.cloned(),
                contract_id: account.contract_id.cloned(),
            },
            desired,
            assignment: AssignmentStatus::Active,
            op,
        }
    }
}

/// The change that fixes a difference a reconcile found between PAL and
/// `entry`'s desired link (SPEC §11.3): the desired link and the
/// assignment stay as they are; the action makes PAL show them.
pub fn reconcile_change(entry: InventoryEntry, kind: DriftKind) -> PlannedChange {
    let assignment = AssignmentStatus::of(&entry);
    let desired = entry.desired.clone();
    PlannedChange {
        op: kind.op(),
        ..change_of(entry, desired, assignment)
    }
}

/// Computes the plan of `event` against `inventory`.
pub fn plan<V: InventoryView + ?Sized>(event: &Event, inventory: &V) -> Result<Plan, V::Error> {
    let mut changes = Changes::default();
    let mut unassigned = Vec::new();
    match &event.data {
        EventData::AssignmentStarted { .. } => {
            if let Some(assignment) = Assignment::of(event) {
                let before = inventory.get(&assignment.key())?;
                changes.0.push(assignment.change(before));
            }
        }
        EventData::AssignmentEnded {
            employee_id,
            tenant_id,
            contract_id,
        } => {
            for entry in inventory.by_employee(employee_id)? {
                if &entry.account.tenant_id != tenant_id {
                    continue;
                }
                if contract_id.is_some()
                    && entry.account.contract_id.as_ref() != contract_id.as_ref()
                {
                    continue;
                }
                changes.set(entry, DesiredLink::Absent, AssignmentStatus::Ended);
            }
        }
        EventData::EmployeeDeparted {
            employee_id,
            successor_employee_id,
            ..
        } => {
            let departed = inventory.by_employee(employee_id)?;
            // Tenant → partner IDs the departed employee was linked with there.
            let mut linked_tenants: BTreeMap<TenantId, PartnerId> = BTreeMap::new();
            for entry in departed {
                if let Some(partner) = linked_to(&entry) {
                    linked_tenants
                        .entry(entry.account.tenant_id.clone())
                        .or_insert_with(|| partner.clone());
                }
                changes.set(entry, DesiredLink::Absent, AssignmentStatus::Ended);
            }
            if let Some(successor) = successor_employee_id {
                let successor_accounts = inventory.by_employee(successor)?;
                for (tenant, partner) in linked_tenants {
                    let mut found = false;
                    for entry in successor_accounts.iter().filter(|e| {
                        e.account.tenant_id == tenant && AssignmentStatus::of(e).is_active()
                    }) {
                        found = true;
                        changes.set(
                            entry.clone(),
                            DesiredLink::Linked(partner.clone()),
                            AssignmentStatus::Active,
                        );
                    }
                    if !found {
                        unassigned.push(tenant);
                    }
                }
            }
        }
        EventData::EmployeeTransferred {
            employee_id,
            new_partner_id,
            ..
        } => {
            for entry in inventory.by_employee(employee_id)? {
                if linked_to(&entry).is_some() {
                    let assignment = AssignmentStatus::of(&entry);
                    changes.set(
                        entry,
                        DesiredLink::Linked(new_partner_id.clone()),
                        assignment,
                    );
                }
            }
        }
        EventData::ContractEnded {
            tenant_id,
            contract_id,
        } => FanOut::contract_ended(tenant_id, contract_id.as_ref())
            .collect(inventory, &mut changes)?,
        EventData::PartnerIdChanged {
            old_partner_id,
            new_partner_id,
            tenant_ids,
        } => FanOut::partner_id_changed(old_partner_id, new_partner_id, tenant_ids.as_deref())
            .collect(inventory, &mut changes)?,
        // Its changes come from what PAL showed, not from the inventory: the
        // ledger stores them through `reconcile_change`.
        EventData::Reconcile { .. } => {}
    }
    Ok(Plan {
        changes: changes.into_vec(),
        unassigned,
    })
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use chrono::Utc;
    use palworker_events::{ContractId, ObjectId};

    use super::*;

    const T1: &str = "11111111-1111-4111-8111-111111111111";
    const T2: &str = "22222222-2222-4222-8222-222222222222";

    /// An in-memory inventory for pure planner tests (the ledger's own tests
    /// and the integration tests use real sled).
    #[derive(Default)]
    struct Memory(RefCell<Vec<InventoryEntry>>);

    impl Memory {
        fn add(
            &self,
            tenant: &str,
            object: u8,
            employee: &str,
            desired: Option<&str>,
            active: bool,
            contract: Option<&str>,
        ) {
            self.0.borrow_mut().push(InventoryEntry {
                account: Account {
                    tenant_id: TenantId::parse(tenant).unwrap(),
                    object_id: ObjectId::parse(&format!(
                        "aaaaaaaa-aaaa-4aaa-8aaa-0000000000{object:02x}"
                    ))
                    .unwrap(),
                    employee_id: EmployeeId::parse(employee).unwrap(),
                    credential: None,
                    contract_id: contract.map(|c| ContractId::parse(c).unwrap()),
                },
                desired: desired
                    .map(|p| DesiredLink::Linked(PartnerId::parse(p).unwrap()))
                    .unwrap_or(DesiredLink::Absent),
                assignment_active: active,
                last_event_seq: None,
                current_action: None,
                updated_at: Utc::now(),
            });
        }
    }

    impl InventoryView for Memory {
        type Error = std::convert::Infallible;

        fn get(&self, key: &AccountKey) -> Result<Option<InventoryEntry>, Self::Error> {
            Ok(self
                .0
                .borrow()
                .iter()
                .find(|e| e.account.key() == *key)
                .cloned())
        }
        fn by_employee(&self, employee: &EmployeeId) -> Result<Vec<InventoryEntry>, Self::Error> {
            Ok(self
                .0
                .borrow()
                .iter()
                .filter(|e| &e.account.employee_id == employee)
                .cloned()
                .collect())
        }
        fn by_tenant(&self, tenant: &TenantId) -> Result<Vec<InventoryEntry>, Self::Error> {
            Ok(self
                .0
                .borrow()
                .iter()
                .filter(|e| &e.account.tenant_id == tenant)
                .cloned()
                .collect())
        }
        fn for_each(&self, visit: &mut dyn FnMut(InventoryEntry)) -> Result<(), Self::Error> {
            self.0.borrow().iter().cloned().for_each(visit);
            Ok(())
        }
    }

    fn event(kind: &str, data: serde_json::Value) -> Event {
        let body = serde_json::json!({
            "specversion": "1.0", "id": "e-1", "source": "urn:test", "type": kind,
            "time": "2026-11-29T09:00:00Z", "data": data,
        });
        Event::from_json_slice(body.to_string().as_bytes()).unwrap()
    }

    fn summary(plan: &Plan) -> Vec<(String, String, String, &'static str)> {
        plan.changes
            .iter()
            .map(|c| {
                (
                    c.account.tenant_id.as_str()[..2].to_owned(),
                    c.account.employee_id.as_str().to_owned(),
                    c.desired
                        .partner_id()
                        .map(|p| p.as_str().to_owned())
                        .unwrap_or_else(|| "-".into()),
                    c.op.as_str(),
                )
            })
            .collect()
    }

    #[test]
    fn departure_removes_every_link_and_links_the_successor_where_it_has_an_active_account() {
        let inv = Memory::default();
        inv.add(T1, 1, "E-1", Some("111"), true, None);
        inv.add(T2, 2, "E-1", Some("222"), true, None);
        inv.add(T1, 3, "E-2", None, true, None);
        let plan = plan(
            &event(
                "hr.employee.departed",
                serde_json::json!({"employee_id": "E-1", "successor_employee_id": "E-2"}),
            ),
            &inv,
        )
        .unwrap();
        assert_eq!(
            summary(&plan),
            vec![
                ("11".into(), "E-1".into(), "-".into(), "remove"),
                ("11".into(), "E-2".into(), "111".into(), "link"),
                ("22".into(), "E-1".into(), "-".into(), "remove"),
            ]
        );
        assert_eq!(plan.unassigned, vec![TenantId::parse(T2).unwrap()]);
    }

    #[test]
    fn a_successor_whose_assignment_ended_is_not_linked() {
        let inv = Memory::default();
        inv.add(T1, 1, "E-1", Some("111"), true, None);
        inv.add(T1, 3, "E-2", None, false, None);
        let plan = plan(
            &event(
                "hr.employee.departed",
                serde_json::json!({"employee_id": "E-1", "successor_employee_id": "E-2"}),
            ),
            &inv,
        )
        .unwrap();
        assert_eq!(plan.changes.len(), 1);
        assert_eq!(plan.unassigned, vec![TenantId::parse(T1).unwrap()]);
    }

    #[test]
    fn contract_end_touches_only_that_contract_in_that_tenant() {
        let inv = Memory::default();
        inv.add(T1, 1, "E-1", Some("111"), true, Some("C-1"));
        inv.add(T1, 2, "E-2", Some("111"), true, Some("C-2"));
        inv.add(T2, 3, "E-3", Some("111"), true, Some("C-1"));
        let plan = plan(
            &event(
                "project.contract.ended",
                serde_json::json!({"tenant_id": T1, "contract_id": "C-1"}),
            ),
            &inv,
        )
        .unwrap();
        assert_eq!(
            summary(&plan),
            vec![("11".into(), "E-1".into(), "-".into(), "remove")]
        );
        assert_eq!(plan.changes[0].assignment, AssignmentStatus::Ended);
    }

    #[test]
    fn partner_id_change_moves_only_accounts_desired_linked_to_the_old_id() {
        let inv = Memory::default();
        inv.add(T1, 1, "E-1", Some("111"), true, None);
        inv.add(T1, 2, "E-2", Some("999"), true, None);
        inv.add(T2, 3, "E-3", Some("111"), true, None);
        inv.add(T2, 4, "E-4", None, false, None);
        let all = plan(
            &event(
                "partner.id.changed",
                serde_json::json!({"old_partner_id": "111", "new_partner_id": "333"}),
            ),
            &inv,
        )
        .unwrap();
        assert_eq!(
            summary(&all),
            vec![
                ("11".into(), "E-1".into(), "333".into(), "update"),
                ("22".into(), "E-3".into(), "333".into(), "update"),
            ]
        );
        let scoped = plan(
            &event(
                "partner.id.changed",
                serde_json::json!({"old_partner_id": "111", "new_partner_id": "333", "tenant_ids": [T2]}),
            ),
            &inv,
        )
        .unwrap();
        assert_eq!(
            summary(&scoped),
            vec![("22".into(), "E-3".into(), "333".into(), "update")]
        );
    }

    #[test]
    fn transfer_relinks_only_linked_accounts() {
        let inv = Memory::default();
        inv.add(T1, 1, "E-1", Some("111"), true, None);
        inv.add(T2, 2, "E-1", None, false, None);
        let plan = plan(
            &event(
                "hr.employee.transferred",
                serde_json::json!({"employee_id": "E-1", "new_partner_id": "444"}),
            ),
            &inv,
        )
        .unwrap();
        assert_eq!(
            summary(&plan),
            vec![("11".into(), "E-1".into(), "444".into(), "update")]
        );
    }

    #[test]
    fn assignment_start_upserts_and_links() {
        let inv = Memory::default();
        let plan = plan(
            &event(
                "project.assignment.started",
                serde_json::json!({"employee_id": "E-9", "tenant_id": T1,
                    "object_id": "aaaaaaaa-aaaa-4aaa-8aaa-000000000009", "partner_id": "555"}),
            ),
            &inv,
        )
        .unwrap();
        assert_eq!(
            summary(&plan),
            vec![("11".into(), "E-9".into(), "555".into(), "link")]
        );
        assert!(plan.changes[0].previous.is_none());
    }

    #[test]
    fn a_reconcile_change_keeps_the_desired_link_and_the_assignment() {
        let inv = Memory::default();
        inv.add(T1, 1, "E-1", Some("111"), true, None);
        inv.add(T1, 2, "E-2", None, false, None);
        let entries = inv.by_tenant(&TenantId::parse(T1).unwrap()).unwrap();
        let relink = reconcile_change(entries[0].clone(), DriftKind::Different);
        assert_eq!(relink.op, Op::Update);
        assert_eq!(relink.desired, entries[0].desired);
        assert_eq!(relink.assignment, AssignmentStatus::Active);
        let remove = reconcile_change(entries[1].clone(), DriftKind::Unexpected);
        assert_eq!(remove.op, Op::Remove);
        assert_eq!(remove.desired, DesiredLink::Absent);
        assert_eq!(remove.assignment, AssignmentStatus::Ended);
        // Planned from the inventory alone, a reconcile event has no changes.
        let event = Event {
            id: "r".into(),
            source: "urn:palworker".into(),
            event_type: palworker_events::EventType::Reconcile,
            time: Utc::now(),
            data: EventData::Reconcile {
                tenant_id: None,
                employee_id: None,
                missing: 0,
                unexpected: 1,
                different: 1,
            },
        };
        assert!(plan(&event, &inv).unwrap().changes.is_empty());
    }

    #[test]
    fn assignment_end_without_an_account_plans_nothing() {
        let inv = Memory::default();
        inv.add(T1, 1, "E-1", Some("111"), true, None);
        let plan = plan(
            &event(
                "project.assignment.ended",
                serde_json::json!({"employee_id": "E-1", "tenant_id": T2}),
            ),
            &inv,
        )
        .unwrap();
        assert!(plan.changes.is_empty());
    }
}
