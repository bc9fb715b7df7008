//! The ledger's side of SPEC §11.3: the results it owes the publishers (the
//! outbox, written in the transactions they report) and time to revocation
//! (`report revocations`, the oldest open removal).

use chrono::{DateTime, Duration, TimeZone, Utc};
use palworker_core::{AcceptOutcome, ActionRecord, ActionState, Completion};
use palworker_events::{Account, EmployeeId, Event, ObjectId, PartnerId, TenantId};

use super::*;

fn ledger() -> (tempfile::TempDir, Ledger) {
    let dir = tempfile::tempdir().expect("temp dir");
    let ledger = Ledger::open(&dir.path().join("ledger"), 1 << 20).expect("ledger opens");
    (dir, ledger)
}

fn at(seconds: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_800_000_000 + seconds, 0).unwrap()
}

fn tenant(t: usize) -> String {
    format!("{t:08x}-0000-4000-8000-000000000000")
}

fn event(id: &str, kind: &str, data: serde_json::Value) -> Event {
    let json = serde_json::json!({
        "specversion": "1.0", "id": id, "source": "urn:test", "type": kind,
        "time": "2026-11-29T09:00:00Z", "data": data
    });
    Event::from_json_slice(&serde_json::to_vec(&json).unwrap()).expect("valid event")
}

fn departure(id: &str, employee: &str, effective_at: Option<DateTime<Utc>>) -> Event {
    let mut data = serde_json::json!({ "employee_id": employee });
    if let Some(at) = effective_at {
        data["effective_at"] = serde_json::json!(at.to_rfc3339());
    }
    event(id, "hr.employee.departed", data)
}

/// Employee `employee`'s accounts in `tenants`, desired linked to `111`.
fn import(ledger: &Ledger, employee: &str, tenants: &[usize], now: DateTime<Utc>) {
    let rows = tenants.iter().map(|&t| {
        let account = Account {
            tenant_id: TenantId::parse(&tenant(t)).unwrap(),
            object_id: ObjectId::parse(&format!(
                "{:08x}-1111-4111-8111-{t:012x}",
                employee.bytes().fold(0u32, |hash, b| hash
                    .wrapping_mul(31)
                    .wrapping_add(u32::from(b)))
            ))
            .unwrap(),
            employee_id: EmployeeId::parse(employee).unwrap(),
            credential: None,
            contract_id: None,
        };
        (account, Some(PartnerId::parse("111").unwrap()))
    });
    ledger.import_accounts(rows, now).unwrap();
}

fn accept(ledger: &Ledger, event: &Event, now: DateTime<Utc>, limit: usize) -> AcceptOutcome {
    ledger.accept(event, None, now, limit).unwrap()
}

/// Claims every action due at `now` and ends it as `end` says (verified
/// at `now` when it ends `done`).
fn run_due(
    ledger: &Ledger,
    now: DateTime<Utc>,
    end: impl Fn(&ActionRecord) -> ActionState,
) -> Vec<Completion> {
    let mut completions = Vec::new();
    for due in ledger.due_actions(now, 100, |_| false).unwrap() {
        let mut action = ledger.claim(due.action_id, now).unwrap().unwrap();
        action.state = end(&action);
        action.updated_at = now;
        action.completed_at = Some(now);
        if action.state == ActionState::Done {
            action.verified_at = Some(now);
        } else {
            action.last_error = Some("AADSTS7000222: the secret expired".into());
        }
        completions.push(ledger.finish(&action).unwrap());
    }
    completions
}

fn pending(ledger: &Ledger) -> Vec<Outgoing> {
    ledger
        .pending_results(usize::MAX)
        .unwrap()
        .into_iter()
        .map(|result| result.outgoing)
        .collect()
}

#[test]
fn a_completed_event_owes_its_publisher_one_result_until_it_is_published() {
    let (_dir, ledger) = ledger();
    import(&ledger, "E-1", &[0, 1], at(0));
    accept(&ledger, &departure("leaves", "E-1", None), at(0), 10);
    assert!(pending(&ledger).is_empty(), "nothing completed yet");
    assert!(!ledger.has_pending_results().unwrap());

    let completions = run_due(&ledger, at(5), |_| ActionState::Done);
    let completed = completions
        .iter()
        .find_map(|c| c.event_completed.as_ref())
        .expect("the event completes");
    let owed = ledger.pending_results(usize::MAX).unwrap();
    assert_eq!(owed.len(), 1, "{owed:?}");
    assert_eq!(
        owed[0].outgoing,
        Outgoing::EventCompleted {
            seq: completed.seq,
            event_id: "leaves".into(),
            event_source: "urn:test".into(),
            event_type: palworker_events::EventType::EmployeeDeparted,
            completed_at: at(5),
            again: false,
        }
    );
    assert_eq!(ledger.pending_result_count(), 1);

    assert!(ledger.result_published(&owed[0]).unwrap());
    assert!(pending(&ledger).is_empty());
    assert!(
        !ledger.result_published(&owed[0]).unwrap(),
        "deleting twice deletes nothing"
    );
}

#[test]
fn an_action_that_needs_a_person_owes_an_attention_with_its_end() {
    let (_dir, ledger) = ledger();
    import(&ledger, "E-1", &[0, 1, 2], at(0));
    accept(&ledger, &departure("leaves", "E-1", None), at(0), 10);
    let t0 = TenantId::parse(&tenant(0)).unwrap();
    let t1 = TenantId::parse(&tenant(1)).unwrap();
    run_due(&ledger, at(5), |action| {
        if action.tenant_id == t0 {
            ActionState::Failed
        } else if action.tenant_id == t1 {
            ActionState::Orphaned
        } else {
            ActionState::Done
        }
    });
    let owed = pending(&ledger);
    let attention: Vec<(String, ActionState)> = owed
        .iter()
        .filter_map(|outgoing| match outgoing {
            Outgoing::ActionAttention { action } => {
                Some((action.tenant_id.to_string(), action.state))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        attention,
        vec![
            (tenant(0), ActionState::Failed),
            (tenant(1), ActionState::Orphaned)
        ],
        "{owed:?}"
    );
    assert_eq!(
        owed.iter()
            .filter(|o| matches!(o, Outgoing::EventCompleted { .. }))
            .count(),
        1
    );
    for state in [
        ActionState::Failed,
        ActionState::Manual,
        ActionState::Orphaned,
    ] {
        assert!(needs_attention(state));
    }
    for state in [
        ActionState::Done,
        ActionState::Noop,
        ActionState::Cancelled,
        ActionState::Skipped,
    ] {
        assert!(!needs_attention(state));
    }
}

#[test]
fn a_completion_after_a_retry_replaces_an_unpublished_one_which_then_is_not_deleted() {
    let (_dir, ledger) = ledger();
    import(&ledger, "E-1", &[0], at(0));
    accept(&ledger, &departure("leaves", "E-1", None), at(0), 10);
    let failed = run_due(&ledger, at(5), |_| ActionState::Failed)
        .remove(0)
        .record;
    let first = ledger.pending_results(usize::MAX).unwrap();
    assert_eq!(first.len(), 2, "the completion and the attention");

    ledger
        .retry_action(failed.action_id, "operator", at(10))
        .unwrap();
    run_due(&ledger, at(20), |_| ActionState::Done);
    for result in &first {
        let deleted = ledger.result_published(result).unwrap();
        match result.outgoing {
            Outgoing::EventCompleted { .. } => {
                assert!(!deleted, "replaced since it was read: the newer one stays")
            }
            _ => assert!(deleted),
        }
    }
    match pending(&ledger).as_slice() {
        [
            Outgoing::EventCompleted {
                completed_at,
                again: true,
                ..
            },
        ] => assert_eq!(*completed_at, at(20)),
        other => panic!("expected the second completion, got {other:?}"),
    }
}

#[test]
fn a_held_plan_an_empty_plan_and_a_rejection_owe_their_results_as_they_happen() {
    let (_dir, ledger) = ledger();
    import(&ledger, "E-1", &[0, 1], at(0));
    let AcceptOutcome::Held { seq, actions } =
        accept(&ledger, &departure("big", "E-1", None), at(1), 1)
    else {
        panic!("two actions over a limit of one are held");
    };
    assert_eq!(actions, 2);
    match pending(&ledger).as_slice() {
        [
            Outgoing::PlanHeld {
                event_id,
                actions: 2,
                held_at,
                ..
            },
        ] => {
            assert_eq!(event_id, "big");
            assert_eq!(*held_at, at(1));
        }
        other => panic!("expected the held plan, got {other:?}"),
    }
    for result in ledger.pending_results(usize::MAX).unwrap() {
        ledger.result_published(&result).unwrap();
    }

    // Nobody to remove: complete as accepted.
    accept(&ledger, &departure("nobody", "E-9", None), at(2), 10);
    match pending(&ledger).as_slice() {
        [
            Outgoing::EventCompleted {
                event_id,
                completed_at,
                ..
            },
        ] => {
            assert_eq!(event_id, "nobody");
            assert_eq!(*completed_at, at(2));
        }
        other => panic!("expected the empty plan's completion, got {other:?}"),
    }
    for result in ledger.pending_results(usize::MAX).unwrap() {
        ledger.result_published(&result).unwrap();
    }

    ledger.reject(seq, "operator", at(3)).unwrap();
    match pending(&ledger).as_slice() {
        [
            Outgoing::EventCompleted {
                event_id,
                completed_at,
                ..
            },
        ] => {
            assert_eq!(event_id, "big");
            assert_eq!(*completed_at, at(3));
        }
        other => panic!("expected the rejected plan's completion, got {other:?}"),
    }
}

fn rows(ledger: &Ledger, since: Option<DateTime<Utc>>) -> Vec<RevocationRow> {
    let mut rows = Vec::new();
    ledger
        .for_each_revocation(since, |row| {
            rows.push(row);
            true
        })
        .unwrap();
    rows
}

#[test]
fn a_revocation_row_runs_from_the_effective_time_to_the_last_verified_removal() {
    let (_dir, ledger) = ledger();
    import(&ledger, "E-1", &[0, 1], at(0));
    import(&ledger, "E-2", &[2], at(0));
    // Announced late: effective an hour before it arrived.
    accept(
        &ledger,
        &departure("late", "E-1", Some(at(100) - Duration::hours(1))),
        at(100),
        10,
    );
    let t0 = TenantId::parse(&tenant(0)).unwrap();
    for due in ledger.due_actions(at(100), 10, |_| false).unwrap() {
        let mut action = ledger.claim(due.action_id, at(110)).unwrap().unwrap();
        let when = if action.tenant_id == t0 { 110 } else { 130 };
        action.state = ActionState::Done;
        action.verified_at = Some(at(when));
        action.completed_at = Some(at(when + 1));
        action.updated_at = at(when + 1);
        ledger.finish(&action).unwrap();
    }
    accept(&ledger, &departure("open", "E-2", None), at(200), 10);
    // Links nothing away: no row.
    accept(
        &ledger,
        &event(
            "moves",
            "hr.employee.transferred",
            serde_json::json!({"employee_id": "E-2", "new_partner_id": "222"}),
        ),
        at(300),
        10,
    );

    let all = rows(&ledger, None);
    assert_eq!(all.len(), 2, "{all:#?}");
    let late = &all[0];
    assert_eq!(late.event_id, "late");
    assert_eq!(late.employee_ids, vec![EmployeeId::parse("E-1").unwrap()]);
    assert_eq!(late.effective_at, at(100) - Duration::hours(1));
    assert_eq!(late.accepted_at, at(100));
    assert_eq!(late.tenant_ids.len(), 2);
    assert_eq!((late.links_removed, late.links_open), (2, 0));
    assert_eq!(
        late.last_removed_at,
        Some(at(130)),
        "the last verification, not its completion"
    );
    assert_eq!(late.seconds, Some(3600.0 + 30.0));
    let open = &all[1];
    assert_eq!(open.event_id, "open");
    assert_eq!(
        open.effective_at,
        at(200),
        "no effective_at: its acceptance"
    );
    assert_eq!((open.links_removed, open.links_open), (0, 1));
    assert_eq!((open.last_removed_at, open.seconds), (None, None));

    let since = rows(&ledger, Some(at(100)));
    assert_eq!(since.len(), 1, "due before: left out");
    assert_eq!(since[0].event_id, "open");
}

#[test]
fn the_oldest_open_removal_is_the_earliest_due_one_and_never_a_scheduled_one() {
    let (_dir, ledger) = ledger();
    import(&ledger, "E-1", &[0], at(0));
    import(&ledger, "E-2", &[1, 2], at(0));
    let nothing = ledger.open_work(at(0)).unwrap();
    assert_eq!(nothing, OpenWork::default());

    // Announced a month ahead: scheduled, not open.
    accept(
        &ledger,
        &departure("ahead", "E-2", Some(at(0) + Duration::days(30))),
        at(0),
        10,
    );
    let work = ledger.open_work(at(3600)).unwrap();
    assert_eq!(work.scheduled, 2);
    assert_eq!(work.oldest_open_removal_due, None);

    accept(&ledger, &departure("now", "E-1", None), at(60), 10);
    let work = ledger.open_work(at(3600)).unwrap();
    assert_eq!(work.oldest_open_removal_due, Some(at(60)));

    // Retrying later does not make it younger.
    let due = ledger
        .due_actions(at(3600), 10, |_| false)
        .unwrap()
        .remove(0);
    let mut action = ledger.claim(due.action_id, at(3600)).unwrap().unwrap();
    assert_eq!(
        ledger.open_work(at(3600)).unwrap().oldest_open_removal_due,
        Some(at(60)),
        "in flight"
    );
    action.state = ActionState::Scheduled;
    action.next_attempt_at = Some(at(7200));
    ledger.reschedule(&action).unwrap();
    assert_eq!(
        ledger.open_work(at(3600)).unwrap().oldest_open_removal_due,
        Some(at(60)),
        "retrying"
    );
}
