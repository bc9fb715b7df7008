//! A reconcile's side of the ledger (SPEC §11.3): the accounts in its scope
//! a page at a time (and whether each has an unfinished action), and its
//! plan — one `palworker.reconcile` event whose actions fix the differences
//! it found, stored like any plan ([`Ledger::store_plan`]: in chunks, held
//! above `limits.max_actions_per_event`) with its record in the audit trail,
//! in the transaction that writes the event.

use std::ops::Bound;

use chrono::{DateTime, Utc};
use palworker_core::drift::{DriftKind, ReconcileReport};
use palworker_core::{AcceptOutcome, ActionId, ActionRecord, AuditWhat, EventSeq, InventoryEntry};
use palworker_events::{AccountKey, DesiredLink, EmployeeId, Event, TenantId};

use super::accept::PlanToStore;
use super::chunks::PlanChunks;
use super::codec::{account_key_bytes, decode, tx_error};
use super::queries::evicting;
use super::{Ledger, Result, audit};

/// An account in a reconcile's scope, as the ledger has it.
#[derive(Debug, Clone)]
pub struct ScannedAccount {
    pub entry: InventoryEntry,
    /// Its latest action has not ended: the action reads PAL itself and
    /// makes the link the desired one, so the reconcile leaves it alone.
    pub busy: bool,
}

/// What a reconcile saw of an account's entry when it read PAL: a
/// difference is planned only if the entry is still so when the plan is
/// stored (otherwise an event, or an import, came in between).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    last_event_seq: Option<EventSeq>,
    current_action: Option<ActionId>,
    desired: DesiredLink,
}

impl Seen {
    pub fn of(entry: &InventoryEntry) -> Self {
        Seen {
            last_event_seq: entry.last_event_seq,
            current_action: entry.current_action,
            desired: entry.desired.clone(),
        }
    }
}

/// A difference a reconcile found between PAL and an account's desired link.
#[derive(Debug, Clone)]
pub struct Drifted {
    pub key: AccountKey,
    pub kind: DriftKind,
    pub seen: Seen,
}

impl Ledger {
    /// Up to `max` accounts of the scope (one tenant's, one employee's,
    /// both, or every account) after the account `after`, in key order
    /// (`{tenant}/{object}`); fewer than `max` at the end. Each value is
    /// read by point lookup ([`evicting`]), so a scan of the whole
    /// inventory leaves no more resident than the cache allows.
    pub fn reconcile_page(
        &self,
        tenant: Option<&TenantId>,
        employee: Option<&EmployeeId>,
        after: Option<&AccountKey>,
        max: usize,
    ) -> Result<Vec<ScannedAccount>> {
        let store = self.store()?;
        let after = after.map(|key| account_key_bytes(&key.tenant_id, &key.object_id));
        let mut page = Vec::new();
        let mut visit = |key: &[u8], bytes: &[u8]| -> Result<bool> {
            let entry: InventoryEntry = decode(key, bytes)?;
            let busy = match entry.current_action {
                Some(id) => match store.actions.get(id.to_be_bytes())? {
                    Some(bytes) => {
                        let action: ActionRecord = decode(&id.to_be_bytes(), &bytes)?;
                        !action.state.is_terminal()
                    }
                    None => false,
                },
                None => false,
            };
            page.push(ScannedAccount { entry, busy });
            Ok(page.len() < max)
        };
        match employee {
            Some(employee) => {
                // The employee's index entries, `emp:{employee}\0{account}`,
                // in account key order.
                let prefix = format!("emp:{}\0", employee.as_str()).into_bytes();
                let start = match &after {
                    Some(after) => Bound::Excluded([prefix.as_slice(), after].concat()),
                    None => Bound::Included(prefix.clone()),
                };
                for item in store.index.range((start, Bound::Unbounded)).keys() {
                    let index_key = item?;
                    if !index_key.starts_with(&prefix) {
                        break;
                    }
                    let account = &index_key[prefix.len()..];
                    if tenant.is_some_and(|tenant| {
                        !account.starts_with(format!("{}/", tenant.as_str()).as_bytes())
                    }) {
                        continue;
                    }
                    if let Some(bytes) = store.inventory.get(account)?
                        && !visit(account, &bytes)?
                    {
                        break;
                    }
                }
            }
            None => {
                let prefix = tenant
                    .map(|tenant| format!("{}/", tenant.as_str()).into_bytes())
                    .unwrap_or_default();
                let start = match &after {
                    Some(after) if after.as_slice() >= prefix.as_slice() => {
                        Bound::Excluded(after.clone())
                    }
                    _ => Bound::Included(prefix.clone()),
                };
                let entries = store.inventory.range((start, Bound::Unbounded));
                for item in evicting(&store.inventory, entries) {
                    let (key, bytes) = item?;
                    if !key.starts_with(&prefix) || !visit(&key, &bytes)? {
                        break;
                    }
                }
            }
        }
        Ok(page)
    }

    /// Stores a reconcile: `event` (a `palworker.reconcile`) with one action
    /// per difference in `drifted` whose account is still as the reconcile
    /// saw it (the others count as `superseded` in `report`), and `report`
    /// — completed here: actions, held, event, end — in the audit trail as
    /// `who`'s. With no action left, only the audit record is written.
    /// Not durable until [`Ledger::flush`].
    pub fn store_reconcile(
        &self,
        event: &Event,
        drifted: Vec<Drifted>,
        report: &mut ReconcileReport,
        who: &str,
        now: DateTime<Utc>,
        max_actions_per_event: usize,
    ) -> Result<Option<AcceptOutcome>> {
        let _writing = self.writing();
        let store = self.store()?;
        let _planning = self.planning();
        let mut kept = Vec::with_capacity(drifted.len());
        for drift in drifted {
            match self.inventory_entry(&drift.key)? {
                Some(entry) if Seen::of(&entry) == drift.seen => kept.push(drift),
                _ => report.superseded += 1,
            }
        }
        report.actions = kept.len() as u64;
        report.held = kept.len() > max_actions_per_event;
        report.finished_at = Some(now);
        if kept.is_empty() {
            report.event_id = None;
            let what = AuditWhat::Reconcile(Box::new(report.clone()));
            store
                .audit
                .transaction(|audit| audit::append(audit, who, [(now, what.clone())]))
                .map_err(tx_error)?;
            return Ok(None);
        }
        report.event_id = Some(event.id.clone());
        let what = AuditWhat::Reconcile(Box::new(report.clone()));
        let outcome = self.store_plan(
            &store,
            PlanToStore {
                event,
                publisher: None,
                chunks: PlanChunks::reconciled(kept),
                unassigned: Vec::new(),
                audit: Some((who, what)),
            },
            now,
            max_actions_per_event,
        )?;
        Ok(Some(outcome))
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use palworker_core::{ActionState, AuditWhat, EventState, Op};
    use palworker_events::{Account, CredentialName, EventData, EventType, ObjectId, PartnerId};

    use super::*;
    use crate::ledger::ACCEPT_CHUNK;

    fn ledger() -> (tempfile::TempDir, Ledger) {
        let dir = tempfile::tempdir().expect("temp dir");
        let ledger = Ledger::open(&dir.path().join("ledger"), 1 << 20).expect("ledger opens");
        (dir, ledger)
    }

    fn tenant(t: usize) -> TenantId {
        TenantId::parse(&format!("a0000000-0000-4000-8000-{t:012x}")).unwrap()
    }

    fn account(e: usize, t: usize) -> Account {
        Account {
            tenant_id: tenant(t),
            object_id: ObjectId::parse(&format!("b{e:07x}-{t:04x}-4000-8000-000000000000"))
                .unwrap(),
            employee_id: EmployeeId::parse(&format!("E-{e}")).unwrap(),
            credential: Some(CredentialName::parse("sp").unwrap()),
            contract_id: None,
        }
    }

    fn now() -> DateTime<Utc> {
        Utc.timestamp_millis_opt(1_800_000_000_000).unwrap()
    }

    /// Employees `0..employees` linked to `111` in tenants `0..tenants`.
    fn import(ledger: &Ledger, employees: usize, tenants: usize) {
        let partner = PartnerId::parse("111").unwrap();
        let rows = (0..employees)
            .flat_map(|e| (0..tenants).map(move |t| (e, t)))
            .map(|(e, t)| (account(e, t), Some(partner.clone())));
        ledger.import_accounts(rows, now()).unwrap();
    }

    fn event(id: &str) -> Event {
        Event {
            id: id.to_owned(),
            source: "urn:palworker".to_owned(),
            event_type: EventType::Reconcile,
            time: now(),
            data: EventData::Reconcile {
                tenant_id: None,
                employee_id: None,
                missing: 0,
                unexpected: 0,
                different: 0,
            },
        }
    }

    /// Every account of the scope, read `page` at a time.
    fn scan(
        ledger: &Ledger,
        tenant: Option<&TenantId>,
        employee: Option<&EmployeeId>,
        page: usize,
    ) -> Vec<ScannedAccount> {
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let got = ledger
                .reconcile_page(tenant, employee, after.as_ref(), page)
                .unwrap();
            assert!(got.len() <= page);
            let done = got.len() < page;
            after = got.last().map(|scanned| scanned.entry.account.key());
            all.extend(got);
            if done {
                return all;
            }
        }
    }

    fn drifted(ledger: &Ledger, account: &Account, kind: DriftKind) -> Drifted {
        let entry = ledger.inventory_entry(&account.key()).unwrap().unwrap();
        Drifted {
            key: account.key(),
            kind,
            seen: Seen::of(&entry),
        }
    }

    #[test]
    fn the_scope_is_read_a_page_at_a_time_in_key_order_by_tenant_and_employee() {
        let (_dir, ledger) = ledger();
        import(&ledger, 3, 3);
        for page in [1, 2, 4, 100] {
            let all = scan(&ledger, None, None, page);
            assert_eq!(all.len(), 9, "page {page}");
            let keys: Vec<_> = all.iter().map(|s| s.entry.account.key()).collect();
            let mut sorted = keys.clone();
            sorted.sort_by_key(|key| format!("{}/{}", key.tenant_id, key.object_id));
            assert_eq!(keys, sorted);
            assert!(all.iter().all(|scanned| !scanned.busy));

            let one_tenant = scan(&ledger, Some(&tenant(1)), None, page);
            assert_eq!(one_tenant.len(), 3);
            assert!(
                one_tenant
                    .iter()
                    .all(|s| s.entry.account.tenant_id == tenant(1))
            );

            let employee = EmployeeId::parse("E-2").unwrap();
            let one_employee = scan(&ledger, None, Some(&employee), page);
            assert_eq!(one_employee.len(), 3);
            assert!(
                one_employee
                    .iter()
                    .all(|s| s.entry.account.employee_id == employee)
            );

            let both = scan(&ledger, Some(&tenant(2)), Some(&employee), page);
            assert_eq!(both.len(), 1);
            assert_eq!(both[0].entry.account, account(2, 2));
        }
    }

    #[test]
    fn an_account_whose_latest_action_has_not_ended_is_busy() {
        let (_dir, ledger) = ledger();
        import(&ledger, 2, 1);
        let mut report = ReconcileReport::default();
        let first = drifted(&ledger, &account(0, 0), DriftKind::Missing);
        ledger
            .store_reconcile(&event("r-1"), vec![first], &mut report, "alice", now(), 10)
            .unwrap();
        let scanned = scan(&ledger, None, None, 10);
        let busy: Vec<_> = scanned
            .iter()
            .map(|s| (s.entry.account.employee_id.as_str().to_owned(), s.busy))
            .collect();
        assert_eq!(busy, vec![("E-0".into(), true), ("E-1".into(), false)]);
    }

    #[test]
    fn a_difference_whose_account_changed_after_the_read_is_left_out_and_the_rest_planned_with_its_audit_record()
     {
        let (_dir, ledger) = ledger();
        import(&ledger, 3, 1);
        let found = vec![
            drifted(&ledger, &account(0, 0), DriftKind::Missing),
            drifted(&ledger, &account(1, 0), DriftKind::Different),
            drifted(&ledger, &account(2, 0), DriftKind::Missing),
        ];
        // Employee 2's desired link changes after PAL was read.
        ledger
            .import_accounts(
                [(account(2, 0), Some(PartnerId::parse("222").unwrap()))],
                now(),
            )
            .unwrap();
        let mut report = ReconcileReport {
            missing: 2,
            different: 1,
            ..ReconcileReport::default()
        };
        let outcome = ledger
            .store_reconcile(&event("r-1"), found, &mut report, "alice", now(), 10)
            .unwrap();
        assert!(matches!(
            outcome,
            Some(AcceptOutcome::Accepted { actions: 2, .. })
        ));
        assert_eq!(
            (report.actions, report.superseded, report.held),
            (2, 1, false)
        );
        assert_eq!(report.event_id.as_deref(), Some("r-1"));
        assert_eq!(report.finished_at, Some(now()));

        let record = ledger.resolve_event("r-1", Some("urn:palworker")).unwrap();
        assert_eq!(record.event.event_type, EventType::Reconcile);
        let actions: Vec<_> = ledger
            .iter_event_actions(record.seq)
            .map(|action| action.unwrap())
            .collect();
        let ops: Vec<_> = actions
            .iter()
            .map(|a| (a.employee_id.as_str().to_owned(), a.op, a.state))
            .collect();
        assert_eq!(
            ops,
            vec![
                ("E-0".into(), Op::Link, ActionState::Pending),
                ("E-1".into(), Op::Update, ActionState::Pending),
            ]
        );
        let mut audited = Vec::new();
        ledger
            .for_each_audit_entry(None, None, |entry| {
                if let AuditWhat::Reconcile(report) = entry.what {
                    audited.push((entry.who, *report));
                }
                true
            })
            .unwrap();
        assert_eq!(audited, vec![("alice".to_owned(), report)]);
        assert_eq!(
            ledger
                .check(crate::ledger::CheckMode::Report, &mut |_| {})
                .unwrap(),
            0
        );
    }

    #[test]
    fn a_reconcile_with_nothing_to_plan_is_recorded_without_an_event() {
        let (_dir, ledger) = ledger();
        import(&ledger, 1, 1);
        let mut report = ReconcileReport {
            accounts: 1,
            read: 1,
            ..ReconcileReport::default()
        };
        let outcome = ledger
            .store_reconcile(
                &event("r-1"),
                Vec::new(),
                &mut report,
                crate::ledger::WORKER,
                now(),
                10,
            )
            .unwrap();
        assert!(outcome.is_none());
        assert_eq!(report.event_id, None);
        assert!(ledger.find_events("r-1", None).unwrap().is_empty());
        let mut audited = 0;
        ledger
            .for_each_audit_entry(None, None, |entry| {
                audited += usize::from(matches!(entry.what, AuditWhat::Reconcile(_)));
                true
            })
            .unwrap();
        assert_eq!(audited, 1);
    }

    #[test]
    fn a_plan_larger_than_a_chunk_is_stored_whole_and_held_above_the_limit() {
        let (_dir, ledger) = ledger();
        let employees = ACCEPT_CHUNK + 44;
        import(&ledger, employees, 1);
        let found: Vec<_> = (0..employees)
            .map(|e| {
                let kind = if e % 2 == 0 {
                    DriftKind::Missing
                } else {
                    DriftKind::Unexpected
                };
                drifted(&ledger, &account(e, 0), kind)
            })
            .collect();
        let mut report = ReconcileReport::default();
        let outcome = ledger
            .store_reconcile(&event("big"), found, &mut report, "alice", now(), 100)
            .unwrap();
        assert!(
            matches!(outcome, Some(AcceptOutcome::Held { actions, .. }) if actions == employees as u64)
        );
        assert!(report.held);
        let record = ledger.resolve_event("big", None).unwrap();
        assert_eq!(record.state, EventState::Held);
        let actions: Vec<_> = ledger
            .iter_event_actions(record.seq)
            .map(|action| action.unwrap())
            .collect();
        assert_eq!(actions.len(), employees);
        assert!(actions.iter().all(|a| a.state == ActionState::Held));
        // Links before removals.
        let first_removal = actions.iter().position(|a| a.op == Op::Remove).unwrap();
        assert!(actions[first_removal..].iter().all(|a| a.op == Op::Remove));
        assert_eq!(
            ledger
                .check(crate::ledger::CheckMode::Report, &mut |_| {})
                .unwrap(),
            0
        );
    }
}
