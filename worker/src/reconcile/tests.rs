use chrono::TimeZone;
use palworker_core::{DriftKind, Finding, FindingKind, ReconcileReport};
use palworker_events::{EventData, EventType, ObjectId, PartnerId, TenantId};

use super::{ReconcileLine, ReconcileRequest, SOURCE, reconcile_event};

#[test]
fn a_reconcile_event_is_palworkers_own_names_its_start_and_carries_the_counts() {
    let started = chrono::Utc.with_ymd_and_hms(2026, 12, 4, 5, 6, 7).unwrap();
    let report = ReconcileReport {
        tenant_id: Some(TenantId::parse("11111111-1111-4111-8111-111111111111").unwrap()),
        missing: 2,
        unexpected: 1,
        different: 3,
        ..ReconcileReport::default()
    };
    let event = reconcile_event(&report, started, started);
    let other = reconcile_event(&report, started, started);
    assert!(
        event.id.starts_with("reconcile-20261204T050607.000Z-"),
        "{}",
        event.id
    );
    assert_ne!(event.id, other.id, "two reconciles never share an id");
    assert_eq!(event.source, SOURCE);
    assert_eq!(event.event_type, EventType::Reconcile);
    assert_eq!(event.data.event_type(), EventType::Reconcile);
    assert_eq!(
        event.data,
        EventData::Reconcile {
            tenant_id: report.tenant_id.clone(),
            employee_id: None,
            missing: 2,
            unexpected: 1,
            different: 3,
        }
    );
}

#[test]
fn a_streamed_line_is_told_apart_as_a_finding_or_the_report() {
    let finding = Finding {
        tenant_id: TenantId::parse("11111111-1111-4111-8111-111111111111").unwrap(),
        object_id: ObjectId::parse("22222222-2222-4222-8222-222222222222").unwrap(),
        employee_id: palworker_events::EmployeeId::parse("E-1").unwrap(),
        desired: Some(PartnerId::parse("111").unwrap()),
        actual: None,
        kind: FindingKind::Drift(DriftKind::Missing),
        error: None,
    };
    let report = ReconcileReport {
        accounts: 4,
        missing: 1,
        ..ReconcileReport::default()
    };
    for line in [
        ReconcileLine::Finding(finding),
        ReconcileLine::Report(Box::new(report)),
    ] {
        let json = serde_json::to_string(&line).unwrap();
        assert_eq!(serde_json::from_str::<ReconcileLine>(&json).unwrap(), line);
    }
}

#[test]
fn a_request_without_fields_reconciles_everything_for_real() {
    let request: ReconcileRequest = serde_json::from_str("{}").unwrap();
    assert_eq!(request, ReconcileRequest::default());
    assert!(!request.dry_run);
    assert!(serde_json::from_str::<ReconcileRequest>(r#"{"tenant_id":"not a tenant"}"#).is_err());
}

#[test]
fn accounts_are_dealt_out_one_tenant_at_a_time_each_tenant_in_its_order() {
    use crate::ledger::ScannedAccount;
    use crate::local::identities::{employee, object, tenant};
    use palworker_core::InventoryEntry;
    use palworker_events::{Account, DesiredLink, EmployeeId};

    let scanned = |t: usize, e: usize| ScannedAccount {
        entry: InventoryEntry {
            account: Account {
                tenant_id: TenantId::parse(&tenant(t)).unwrap(),
                object_id: ObjectId::parse(&object(e, t)).unwrap(),
                employee_id: EmployeeId::parse(&employee(e)).unwrap(),
                credential: None,
                contract_id: None,
            },
            desired: DesiredLink::Absent,
            assignment_active: true,
            last_event_seq: None,
            current_action: None,
            updated_at: chrono::Utc::now(),
        },
        busy: false,
    };
    // Tenant order, as the inventory is read: 0 has three, 1 one, 2 two.
    let accounts = vec![
        scanned(0, 0),
        scanned(0, 1),
        scanned(0, 2),
        scanned(1, 0),
        scanned(2, 0),
        scanned(2, 1),
    ];
    let dealt: Vec<(usize, usize)> = super::interleave(accounts)
        .iter()
        .map(|account| {
            let key = &account.entry.account;
            let t = (0..3)
                .position(|t| key.tenant_id.as_str() == tenant(t))
                .unwrap();
            let e = (0..3)
                .position(|e| key.employee_id.as_str() == employee(e))
                .unwrap();
            (t, e)
        })
        .collect();
    assert_eq!(dealt, [(0, 0), (1, 0), (2, 0), (0, 1), (2, 1), (0, 2)]);
    assert!(super::interleave(Vec::new()).is_empty());
}
