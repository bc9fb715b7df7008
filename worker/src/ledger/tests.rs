use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};
use palworker_core::planner::Assignment;
use palworker_core::{
    AcceptOutcome, ActionRecord, ActionState, Completion, EventSeq, EventState, Rescheduled,
};
use palworker_events::{
    Account, AccountKey, ContractId, EmployeeId, Event, ObjectId, PartnerId, TenantId,
};

use super::codec::{INVENTORY_SIZE_KEY, OPEN_COUNT_KEY, approving_key, encode, pair_key, read_u64};
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
    let Pass {
        completions,
        claimed,
    } = ledger
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
    assert_eq!(ledger.store().unwrap().event_actions.len(), 0);
    assert!(
        ledger
            .store()
            .unwrap()
            .open_events
            .get(seq.to_be_bytes())
            .unwrap()
            .is_none()
    );
    assert_eq!(ledger.open_event_count().unwrap(), 1);
    assert_eq!(ledger.event_actions(seq).unwrap()[0].action_id, action_id);

    // Fails: the event completes; a retry reopens it until the action ends again.
    let completion = end_due_action(&ledger, now, ActionState::Failed);
    let completed = completion.event_completed.expect("the event completed");
    assert_eq!(completed.open_actions, Some(0));
    assert_eq!(ledger.open_event_count().unwrap(), 0);
    ledger.retry_action(action_id, "operator", now).unwrap();
    assert_eq!(ledger.event(seq).unwrap().unwrap().open_actions, Some(1));
    assert_eq!(ledger.open_event_count().unwrap(), 1);
    let completion = end_due_action(&ledger, now, ActionState::Done);
    assert!(completion.event_completed.is_some());
    assert_eq!(ledger.open_event_count().unwrap(), 0);
    assert!(
        ledger
            .store()
            .unwrap()
            .open_events
            .get(seq.to_be_bytes())
            .unwrap()
            .is_none()
    );

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
        .store()
        .unwrap()
        .events
        .insert(seq.to_be_bytes(), encode(&record))
        .unwrap();
    ledger
        .store()
        .unwrap()
        .event_actions
        .insert(pair_key(seq.get(), action_id.get()), &[])
        .unwrap();
    ledger
        .store()
        .unwrap()
        .open_events
        .insert(seq.to_be_bytes(), &1u64.to_be_bytes())
        .unwrap();
    ledger
        .store()
        .unwrap()
        .open_events
        .remove(OPEN_COUNT_KEY)
        .unwrap();
    drop(ledger);

    let ledger = Ledger::open(&dir.path().join("ledger"), 1 << 20).unwrap();
    assert_eq!(ledger.open_event_count().unwrap(), 1, "recounted at open");
    assert_eq!(ledger.event_actions(seq).unwrap()[0].action_id, action_id);
    let completion = end_due_action(&ledger, now, ActionState::Done);
    let completed = completion.event_completed.expect("the event completed");
    assert_eq!(completed.open_actions, None);
    assert!(
        ledger
            .store()
            .unwrap()
            .open_events
            .get(seq.to_be_bytes())
            .unwrap()
            .is_none()
    );
    assert_eq!(ledger.open_event_count().unwrap(), 0);
}

fn import_linked(ledger: &Ledger, count: usize) {
    let rows = (0..count).map(|n| {
        let account = Account {
            tenant_id: TenantId::parse(&format!("{:08x}-0000-4000-8000-000000000000", n % 7))
                .unwrap(),
            object_id: ObjectId::parse(&format!("{n:08x}-1111-4111-8111-111111111111")).unwrap(),
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
        ledger
            .store()
            .unwrap()
            .index
            .remove(INVENTORY_SIZE_KEY)
            .unwrap();
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
        read_u64(
            &ledger
                .store()
                .unwrap()
                .open_events
                .get(seq.to_be_bytes())
                .unwrap()
                .unwrap()
        ),
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
        let scoped = [tenant(2), tenant(5)].contains(&entry.account.tenant_id.as_str().to_owned());
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
            object_id: ObjectId::parse(&format!("{n:08x}-1111-4111-8111-111111111111")).unwrap(),
            employee_id: EmployeeId::parse(&format!("E-{n}")).unwrap(),
            credential: None,
            contract_id: Some(ContractId::parse(if n % 2 == 0 { "C-1" } else { "C-2" }).unwrap()),
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
    let approval = ledger.approve(seq, "operator", now).unwrap();
    assert_eq!(approval.released, count as u64);
    assert!(approval.completed.is_none());
    assert!(
        !ledger
            .store()
            .unwrap()
            .index
            .contains_key(approving_key(seq))
            .unwrap()
    );
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
    let approval = ledger.approve(seq, "operator", now).unwrap();
    assert_eq!(approval.released, 0);
    assert_eq!(approval.cancelled.len(), 1);
    let completed = approval.completed.expect("completed by the approval");
    assert_eq!(completed.state, EventState::Approved);
    assert!(completed.completed_at.is_some());
    assert!(
        ledger
            .store()
            .unwrap()
            .open_events
            .get(seq.to_be_bytes())
            .unwrap()
            .is_none()
    );
}

#[test]
fn rejecting_a_large_held_plan_cancels_every_action_chunk_by_chunk() {
    let (_dir, ledger) = ledger();
    let count = ACCEPT_CHUNK * 2 + 3;
    import_linked(&ledger, count);
    let now = Utc::now();
    let seq = accept_held(&ledger, &partner_change("reject-me"), now, 10);
    assert_eq!(ledger.reject(seq, "operator", now).unwrap(), count as u64);
    let mut states = BTreeMap::new();
    for action in ledger.iter_event_actions(seq) {
        *states.entry(action.unwrap().state.as_str()).or_insert(0) += 1;
    }
    assert_eq!(states, BTreeMap::from([("cancelled", count)]));
    assert_eq!(ledger.held_plan_count(), 0);
    assert_eq!(ledger.pending_count(), 0);
    assert!(matches!(
        ledger.reject(seq, "operator", now),
        Err(LedgerError::Rejected(_))
    ));
}

fn assignment_for(id: &str, partner: &str) -> Event {
    let mut json: serde_json::Value =
        serde_json::from_slice(&serde_json::to_vec(&assignment(id).to_cloudevent_json()).unwrap())
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
            &[
                (Assignment::of(&first).unwrap(), None),
                (Assignment::of(&second).unwrap(), Some("hr")),
                (Assignment::of(&first).unwrap(), None),
            ],
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

#[test]
fn every_outcome_is_in_the_audit_trail_and_an_edited_byte_breaks_the_chain_there() {
    let (_dir, ledger) = ledger();
    let now = Utc.timestamp_millis_opt(1_800_000_000_000).unwrap();
    for (id, partner) in [("one", "111"), ("two", "222"), ("three", "333")] {
        accept_pending(&ledger, &assignment_for(id, partner), now);
    }
    // "two" superseded "one" (cancelled), "three" superseded "two": two
    // outcomes so far; ending "three" makes the third.
    end_due_action(&ledger, now, ActionState::Done);
    let mut entries = Vec::new();
    ledger
        .for_each_audit_entry(None, None, |entry| {
            entries.push(entry);
            true
        })
        .unwrap();
    let outcomes: Vec<(String, ActionState)> = entries
        .iter()
        .map(|entry| match &entry.what {
            palworker_core::AuditWhat::ActionOutcome(record) => {
                (record.action.event_id.clone(), record.outcome)
            }
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            ("one".to_owned(), ActionState::Cancelled),
            ("two".to_owned(), ActionState::Cancelled),
            ("three".to_owned(), ActionState::Done)
        ]
    );
    assert!(entries.iter().all(|entry| entry.who == WORKER));
    let verified = ledger.verify_audit().unwrap();
    assert_eq!((verified.records, verified.broken), (3, None));

    // One byte of the middle record changed: the chain breaks there.
    let audit = ledger.store().unwrap().audit.clone();
    let key = 1u64.to_be_bytes();
    let mut bytes = audit.get(key).unwrap().unwrap().to_vec();
    let at = bytes.iter().position(|b| *b == b'c').unwrap();
    bytes[at] = b'C';
    audit.insert(key, bytes).unwrap();
    let verified = ledger.verify_audit().unwrap();
    assert_eq!(
        verified.broken.as_ref().map(|b| b.seq),
        Some(1),
        "{verified:?}"
    );

    // The last record edited: the head says so.
    let (_dir, ledger) = self::ledger();
    accept_pending(&ledger, &assignment_for("only", "111"), now);
    end_due_action(&ledger, now, ActionState::Done);
    let audit = ledger.store().unwrap().audit.clone();
    let key = 0u64.to_be_bytes();
    let mut bytes = audit.get(key).unwrap().unwrap().to_vec();
    bytes.push(b' ');
    audit.insert(key, bytes).unwrap();
    assert_eq!(
        ledger.verify_audit().unwrap().broken.map(|b| b.seq),
        Some(0)
    );
}

#[test]
fn audit_retention_prunes_the_oldest_records_and_the_rest_still_verifies() {
    let (_dir, ledger) = ledger();
    let then = Utc.timestamp_millis_opt(1_800_000_000_000).unwrap();
    // Five outcomes at `then` (four superseded, one done), two a day later.
    for n in 0..5 {
        accept_pending(&ledger, &assignment_for(&format!("old-{n}"), "111"), then);
    }
    end_due_action(&ledger, then, ActionState::Done);
    let day_later = then + chrono::Duration::days(1);
    for n in 0..2 {
        accept_pending(
            &ledger,
            &assignment_for(&format!("new-{n}"), "222"),
            day_later,
        );
    }
    end_due_action(&ledger, day_later, ActionState::Done);
    let before = ledger.verify_audit().unwrap();
    assert_eq!(before.broken, None);
    let kept_before: Vec<u64> = audit_seqs(&ledger);

    // Forever (`audit: None`): nothing of the trail goes.
    let forever = Retention {
        records: chrono::Duration::days(90),
        markers: chrono::Duration::days(400),
        audit: None,
    };
    let now = day_later + chrono::Duration::hours(1);
    let mut cursor = SweepCursor::default();
    while !cursor.is_done() {
        let swept = ledger.sweep(now, forever, 2, &mut cursor).unwrap();
        assert_eq!(swept.audit, 0);
    }
    assert_eq!(audit_seqs(&ledger), kept_before);

    // Kept for 12 hours: the records of `then` go, two per step, and the
    // younger ones still verify from the new anchor.
    let half_day = Retention {
        audit: Some(chrono::Duration::hours(12)),
        ..forever
    };
    let mut cursor = SweepCursor::default();
    let mut pruned = 0;
    while !cursor.is_done() {
        let swept = ledger.sweep(now, half_day, 2, &mut cursor).unwrap();
        assert!(swept.audit <= 2, "{swept:?}");
        pruned += swept.audit;
    }
    let kept = audit_seqs(&ledger);
    assert_eq!(pruned as usize + kept.len(), kept_before.len());
    assert!(pruned >= 5, "every record of `then` went: {pruned}");
    let mut at = Vec::new();
    ledger
        .for_each_audit_entry(None, None, |entry| {
            at.push(entry.at);
            true
        })
        .unwrap();
    assert!(at.iter().all(|at| *at >= day_later), "{at:?}");
    let after = ledger.verify_audit().unwrap();
    assert_eq!((after.records, after.broken), (kept.len() as u64, None));

    // The chain goes on from there, and an edit after the anchor is found.
    accept_pending(&ledger, &assignment_for("newest", "333"), now);
    end_due_action(&ledger, now, ActionState::Done);
    assert_eq!(ledger.verify_audit().unwrap().broken, None);
    let audit = ledger.store().unwrap().audit.clone();
    let first = kept[0].to_be_bytes();
    let mut bytes = audit.get(first).unwrap().unwrap().to_vec();
    bytes.push(b' ');
    audit.insert(first, bytes).unwrap();
    assert_eq!(
        ledger.verify_audit().unwrap().broken.map(|b| b.seq),
        Some(kept[0])
    );
}

/// The `seq`s of the audit records the ledger holds, in order.
fn audit_seqs(ledger: &Ledger) -> Vec<u64> {
    let mut seqs = Vec::new();
    ledger
        .for_each_audit_entry(None, None, |entry| {
            seqs.push(entry.seq);
            true
        })
        .unwrap();
    seqs
}

#[test]
fn retention_prunes_ended_events_in_bounded_steps_and_keeps_their_dedup_markers() {
    let (_dir, ledger) = ledger();
    let then = Utc.timestamp_millis_opt(1_800_000_000_000).unwrap();
    let count = ACCEPT_CHUNK + 10;
    import_linked(&ledger, count);
    ledger
        .accept(&partner_change("big"), None, then, usize::MAX)
        .unwrap();
    accept_pending(&ledger, &assignment("small"), then);
    // Everything ends, at `then`.
    loop {
        let due = ledger.due_actions(then, 64, |_| false).unwrap();
        if due.is_empty() {
            break;
        }
        for action in due {
            let mut action = ledger.claim(action.action_id, then).unwrap().unwrap();
            action.state = ActionState::Done;
            action.completed_at = Some(then);
            action.updated_at = then;
            ledger.finish(&action).unwrap();
        }
    }
    // A fresh event stays: not ended long enough ago.
    let later = then + chrono::Duration::days(100);
    accept_pending(&ledger, &assignment_for("fresh", "999"), later);
    let actions_before = ledger.store().unwrap().actions.len();
    assert_eq!(actions_before, count + 2);

    let retention = Retention {
        records: chrono::Duration::days(90),
        markers: chrono::Duration::days(400),
        audit: None,
    };
    // An event whose result is not published yet stays (its result lists
    // its actions when it is published).
    let mut cursor = SweepCursor::default();
    while !cursor.is_done() {
        let swept = ledger.sweep(later, retention, 100, &mut cursor).unwrap();
        assert_eq!(swept.events, 0, "no result was published yet");
    }
    for result in ledger.pending_results(usize::MAX).unwrap() {
        assert!(ledger.result_published(&result).unwrap());
    }
    let mut cursor = SweepCursor::default();
    let mut total = Swept::default();
    let mut steps = 0;
    while !cursor.is_done() {
        let swept = ledger.sweep(later, retention, 100, &mut cursor).unwrap();
        assert!(
            swept.actions <= 100 && swept.events <= 100,
            "a bounded step: {swept:?}"
        );
        total.events += swept.events;
        total.actions += swept.actions;
        steps += 1;
        assert!(steps < 100, "the sweep ends");
    }
    assert_eq!((total.events, total.actions), (2, count as u64 + 1));
    assert_eq!(
        ledger.store().unwrap().actions.len(),
        1,
        "the fresh action stays"
    );
    assert!(ledger.find_events("big", None).unwrap().is_empty());
    assert!(
        ledger.is_duplicate("urn:test", "big").unwrap(),
        "still a duplicate"
    );
    assert_eq!(
        ledger
            .accept(&partner_change("big"), None, later, usize::MAX)
            .unwrap(),
        AcceptOutcome::Duplicate
    );
    // The outcomes stay in the audit trail.
    let mut outcomes = 0;
    ledger
        .for_each_audit_entry(None, None, |_| {
            outcomes += 1;
            true
        })
        .unwrap();
    assert_eq!(outcomes, count + 1);

    // After the dedup retention the marker goes too.
    let much_later = then + chrono::Duration::days(401);
    let mut cursor = SweepCursor::default();
    let mut markers = 0;
    while !cursor.is_done() {
        markers += ledger
            .sweep(much_later, retention, 100, &mut cursor)
            .unwrap()
            .markers;
    }
    assert_eq!(markers, 2);
    assert!(!ledger.is_duplicate("urn:test", "big").unwrap());
}

#[test]
fn an_export_imported_into_an_empty_ledger_is_the_same_ledger() {
    let (_dir, ledger) = ledger();
    let now = Utc.timestamp_millis_opt(1_800_000_000_000).unwrap();
    import_linked(&ledger, 20);
    accept_pending(&ledger, &assignment_for("one", "111"), now);
    accept_pending(&ledger, &assignment_for("two", "222"), now);
    end_due_action(&ledger, now, ActionState::Done);
    let mut export = Vec::new();
    let exported = ledger.export(&mut export).unwrap();
    assert!(exported.records > 20);

    // An export cut off anywhere (here: without its end line) is refused.
    let text = String::from_utf8(export.clone()).unwrap();
    let cut_off: String = text
        .lines()
        .take(text.lines().count() - 1)
        .collect::<Vec<_>>()
        .join("\n");
    let (_cut_dir, cut) = self::ledger();
    assert!(matches!(
        cut.import(cut_off.as_bytes()),
        Err(LedgerError::Rejected(message)) if message.contains("cut off")
    ));

    let (_other_dir, copy) = self::ledger();
    let imported = copy.import(export.as_slice()).unwrap();
    assert_eq!(imported, exported);
    let dump = |ledger: &Ledger| {
        let mut out = Vec::new();
        ledger.export(&mut out).unwrap();
        String::from_utf8(out)
            .unwrap()
            .lines()
            .skip(1)
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(dump(&ledger), dump(&copy));
    assert_eq!(copy.verify_audit().unwrap().broken, None);
    assert!(matches!(
        copy.import(export.as_slice()),
        Err(LedgerError::Rejected(message)) if message.contains("not empty")
    ));
}

#[test]
fn events_accepted_after_an_import_never_reuse_an_imported_sequence_or_action_id() {
    let (_dir, ledger) = ledger();
    let now = Utc.timestamp_millis_opt(1_800_000_000_000).unwrap();
    import_linked(&ledger, 5);
    for n in 0..5 {
        accept_pending(&ledger, &assignment_for(&format!("old-{n}"), "111"), now);
    }
    let mut export = Vec::new();
    ledger.export(&mut export).unwrap();
    let (_other_dir, copy) = self::ledger();
    copy.import(export.as_slice()).unwrap();
    accept_pending(&copy, &assignment_for("new", "222"), now);
    // Every imported event is still itself, and the new one is new.
    for n in 0..5 {
        let id = format!("old-{n}");
        let found = copy.find_events(&id, None).unwrap();
        assert_eq!(found.len(), 1, "{id}");
        assert_eq!(found[0].event.id, id);
    }
    let new = copy.find_events("new", None).unwrap();
    assert_eq!(new.len(), 1);
    let old_seqs: Vec<EventSeq> = (0..5)
        .map(|n| copy.find_events(&format!("old-{n}"), None).unwrap()[0].seq)
        .collect();
    assert!(!old_seqs.contains(&new[0].seq));
    assert_eq!(
        copy.actions(&palworker_core::StatusFilter::default())
            .unwrap()
            .len(),
        6
    );
}

#[test]
fn a_large_plan_cut_off_between_chunks_lets_its_written_actions_end_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("ledger");
    let count = ACCEPT_CHUNK * 2 + 10;
    let now = Utc::now();
    {
        let ledger = Ledger::open(&path, 1 << 20).unwrap();
        import_linked(&ledger, count);
        super::accept::tests::cut_off_after(Some(1));
        let cut_off = ledger.accept(&partner_change("big"), None, now, count);
        super::accept::tests::cut_off_after(None);
        assert!(cut_off.is_err(), "{cut_off:?}");
        assert!(!ledger.is_duplicate("urn:test", "big").unwrap());
        ledger.flush().unwrap();
    }
    // The worker restarts; the event is redelivered and planned again.
    let ledger = Ledger::open(&path, 1 << 20).unwrap();
    ledger
        .accept(&partner_change("big"), None, now, count)
        .unwrap();
    let due = ledger.due_actions(now, count * 4, |_| false).unwrap();
    // The written chunk's actions, and the re-plan of the accounts it had
    // not reached yet.
    assert_eq!(due.len(), count);
    for action in due {
        let Some(mut action) = ledger.claim(action.action_id, now).unwrap() else {
            continue;
        };
        action.state = ActionState::Done;
        ledger.finish(&action).unwrap();
    }
    assert_eq!(ledger.pending_count(), 0);
    assert_eq!(ledger.open_event_count().unwrap(), 0);
    let mut differences = Vec::new();
    ledger
        .check(CheckMode::Report, &mut |d| differences.push(d.to_string()))
        .unwrap();
    assert_eq!(differences, Vec::<String>::new());
}

#[test]
fn a_plan_whose_approval_was_interrupted_cannot_be_rejected_only_approved_again() {
    let (_dir, ledger) = ledger();
    let count = ACCEPT_CHUNK + 5;
    import_linked(&ledger, count);
    let now = Utc::now();
    let seq = accept_held(&ledger, &partner_change("half-approved"), now, 10);
    // As an approval a crash interrupted leaves it: marked, its share taken.
    let store = ledger.store().unwrap();
    (&store.index, &store.open_events, &store.events)
        .transaction(|(index, open_events, events)| {
            index.insert(approving_key(seq), &[])?;
            super::bookkeeping::increment_open(open_events, events, seq, 1)?;
            Ok(())
        })
        .map_err(super::codec::tx_error)
        .unwrap();
    drop(store);
    let refused = ledger.reject(seq, "operator", now).unwrap_err().to_string();
    assert!(refused.contains("approve it again"), "{refused}");
    let approval = ledger.approve(seq, "operator", now).unwrap();
    assert_eq!(approval.released, count as u64);
    for action in ledger.due_actions(now, count * 2, |_| false).unwrap() {
        let mut action = ledger.claim(action.action_id, now).unwrap().unwrap();
        action.state = ActionState::Done;
        ledger.finish(&action).unwrap();
    }
    assert_eq!(ledger.open_event_count().unwrap(), 0);
    assert!(ledger.event(seq).unwrap().unwrap().completed_at.is_some());
}
