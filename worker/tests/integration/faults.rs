//! Failures and time: PAL faults (5xx, 429 with Retry-After), supersession,
//! `effective_at`, identity checks, manual accounts, permanent token errors,
//! the retry budget, and a pending retry that outlives a restart. Real
//! RabbitMQ, real sled, the simulator over HTTP; time is an injected clock
//! wherever the behaviour depends on it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DurationRound, TimeDelta, Utc};
use palworker::clock::{Clock, ManualClock};
use palworker::ledger::Ledger;
use palworker::local::identities::{assignment, employee, object, principals, tenant};
use palworker::local::{Harness, HarnessOptions, events, is_write};
use palworker::operators::{Attached, LedgerOperations, Operator};
use palworker_core::{ActionState, StatusFilter};
use palworker_sim::{FaultProfile, Faults};

const SETTLE: Duration = Duration::from_secs(60);
/// Short retry intervals and a generous per-tenant rate, so fault tests finish quickly.
const FAST: &str = r#"
[retry]
initial_interval = "50ms"
max_interval = "500ms"

[limits]
per_tenant_rps = 500.0
"#;

async fn start(employees: usize, tenants: usize, faults: Faults, extra_toml: &str) -> Harness {
    Harness::start(HarnessOptions {
        principals: principals(employees, tenants),
        faults,
        extra_toml: extra_toml.to_owned(),
        ..HarnessOptions::default()
    })
    .await
    .expect("harness starts")
}

fn manual_clock() -> Arc<ManualClock> {
    let now = Utc::now()
        .duration_trunc(TimeDelta::seconds(1))
        .expect("truncates");
    Arc::new(ManualClock::new(now))
}

/// Publishes an unrelated event for account (`e`, `t`) and waits until its
/// action is terminal: the executor has looked at the due actions since
/// the clock was last moved, so anything that was due has been claimed.
async fn barrier(h: &mut Harness, id: &str, e: usize, t: usize, partner: &str) {
    h.publish(&assignment(id, e, t, partner)).await.unwrap();
    let id = id.to_owned();
    h.wait_for(SETTLE, "the barrier event's action is terminal", |h| {
        let actions = h.actions_of(&id);
        actions.len() == 1 && actions[0].state.is_terminal()
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_30_percent_5xx_and_10_percent_429_every_link_converges_and_no_retry_after_is_undercut()
 {
    const EMPLOYEES: usize = 40;
    const TENANTS: usize = 5;
    let faults = Faults::everywhere(FaultProfile {
        rate_5xx: 0.3,
        rate_429: 0.1,
        retry_after_secs: 1,
        ..FaultProfile::default()
    });
    let mut h = start(EMPLOYEES, TENANTS, faults, FAST).await;

    for e in 0..EMPLOYEES {
        for t in 0..TENANTS {
            h.publish(&assignment(&format!("start-{e}-{t}"), e, t, "111111"))
                .await
                .unwrap();
        }
    }
    // While those retry: employees 0..8 move to another partner ID, 8..16 leave.
    for e in 0..8 {
        h.publish(&events::employee_transferred(
            &format!("transfer-{e}"),
            &employee(e),
            "222222",
        ))
        .await
        .unwrap();
    }
    for e in 8..16 {
        h.publish(&events::employee_departed(
            &format!("departure-{e}"),
            &employee(e),
            None,
            None,
        ))
        .await
        .unwrap();
    }
    h.wait_until_settled(Duration::from_secs(180))
        .await
        .unwrap();

    for e in 0..EMPLOYEES {
        for t in 0..TENANTS {
            let expected = match e {
                0..8 => Some("222222"),
                8..16 => None,
                _ => Some("111111"),
            };
            assert_eq!(h.linked(e, t).as_deref(), expected, "E-{e} in T{t}");
        }
    }
    let violations = h.simulator.throttle_violations();
    assert!(
        violations.is_empty(),
        "{} request(s) arrived before their Retry-After expired: {violations:#?}",
        violations.len()
    );
    let actions = h.app().ledger.actions(&StatusFilter::default()).unwrap();
    let mut by_state: BTreeMap<&str, usize> = BTreeMap::new();
    for action in &actions {
        *by_state.entry(action.state.as_str()).or_default() += 1;
        assert!(
            matches!(
                action.state,
                ActionState::Done | ActionState::Noop | ActionState::Cancelled
            ),
            "{action:#?}"
        );
    }
    assert_eq!(actions.len(), EMPLOYEES * TENANTS + 16 * TENANTS);

    let requests = h.simulator.requests();
    let injected_5xx = requests
        .iter()
        .filter(|r| r.fault_injected && r.status >= 500)
        .count();
    let throttled = requests.iter().filter(|r| r.status == 429).count();
    let attempts: u32 = actions.iter().map(|a| a.attempts).sum();
    eprintln!(
        "faults: {} actions {by_state:?}; {} ARM requests ({:.2} per action; {injected_5xx} injected 5xx, \
         {throttled} throttled); {attempts} attempts; {} token requests",
        actions.len(),
        requests.len(),
        requests.len() as f64 / actions.len() as f64,
        h.simulator.token_requests().len()
    );
    assert!(
        injected_5xx > 0 && throttled > 0,
        "the faults were injected"
    );
    h.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_held_back_by_its_rate_limit_does_not_stall_the_other_tenants() {
    // T0 has a backlog that its rate limit (2 requests/s) lets through only
    // slowly; T1's actions, accepted after that backlog, must not wait behind it.
    const BACKLOG: usize = 30;
    let extra = "[limits]\nconcurrency = 8\nper_tenant_rps = 2.0\n";
    let mut h = start(BACKLOG, 2, Faults::none(), extra).await;
    for e in 0..BACKLOG {
        h.publish(&assignment(&format!("start-{e}-0"), e, 0, "111111"))
            .await
            .unwrap();
    }
    for e in 0..4 {
        h.publish(&assignment(&format!("start-{e}-1"), e, 1, "111111"))
            .await
            .unwrap();
    }
    h.wait_for(SETTLE, "T1's actions are terminal", |h| {
        (0..4).all(|e| {
            let actions = h.actions_of(&format!("start-{e}-1"));
            actions.len() == 1 && actions[0].state.is_terminal()
        })
    })
    .await
    .unwrap();
    let backlog_done = (0..BACKLOG)
        .filter(|e| h.action_of(&format!("start-{e}-0")).state.is_terminal())
        .count();
    // Both tenants move at the same rate: when T1's 4 actions are done, T0
    // has done about as many, far from its whole backlog.
    assert!(
        backlog_done <= BACKLOG / 2,
        "T1 waited behind T0's backlog ({backlog_done} of {BACKLOG} done first)"
    );
    for e in 0..4 {
        assert_eq!(h.linked(e, 1).as_deref(), Some("111111"));
    }
    eprintln!("rate limit: T1 done while T0 had {backlog_done} of {BACKLOG} actions done");
    h.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_newer_event_cancels_an_older_action_still_scheduled_for_the_same_account() {
    let clock = manual_clock();
    let mut h = Harness::start_with_clock(
        HarnessOptions {
            principals: principals(2, 1),
            extra_toml: FAST.into(),
            ..HarnessOptions::default()
        },
        clock.clone(),
    )
    .await
    .unwrap();
    h.publish(&assignment("start", 0, 0, "111111"))
        .await
        .unwrap();
    h.wait_until_settled(SETTLE).await.unwrap();

    let later = clock.now() + TimeDelta::hours(2);
    let mut transfer_later = events::employee_transferred("transfer-later", "E-0", "222222");
    transfer_later["data"]["effective_at"] = later.to_rfc3339().into();
    h.publish(&transfer_later).await.unwrap();
    h.wait_for(SETTLE, "the scheduled transfer is accepted", |h| {
        h.deliveries_seen() >= h.published
    })
    .await
    .unwrap();
    assert_eq!(h.action_of("transfer-later").state, ActionState::Scheduled);

    h.publish(&events::employee_transferred(
        "transfer-now",
        "E-0",
        "333333",
    ))
    .await
    .unwrap();
    h.wait_until_settled(SETTLE).await.unwrap();

    let older = h.action_of("transfer-later");
    assert_eq!(older.state, ActionState::Cancelled, "{older:#?}");
    assert_eq!(older.attempts, 0);
    assert!(
        older.detail.as_deref().unwrap_or("").contains("superseded"),
        "{older:#?}"
    );
    let newer = h.action_of("transfer-now");
    assert_eq!(newer.state, ActionState::Done, "{newer:#?}");
    assert_eq!(h.linked(0, 0).as_deref(), Some("333333"));

    // Once its instant has passed, the cancelled action still does nothing.
    clock.set(later + TimeDelta::seconds(1));
    h.app().executor.wake();
    barrier(&mut h, "barrier", 1, 0, "111111").await;
    assert_eq!(h.action_of("transfer-later").state, ActionState::Cancelled);
    let requests = h.requests_of(&tenant(0), &object(0, 0));
    let log: Vec<(&str, Option<&str>)> = requests
        .iter()
        .map(|r| (r.method.as_str(), r.partner_id.as_deref()))
        .collect();
    assert_eq!(
        log,
        vec![
            ("GET", None),
            ("PUT", Some("111111")),
            ("GET", None),
            ("GET", None),
            ("PATCH", Some("333333")),
            ("GET", None),
        ],
        "no request ever carried the superseded partner ID (each write is read back)"
    );
    assert_eq!(h.linked(0, 0).as_deref(), Some("333333"));
    // The superseded event completed through its cancellation: nothing is
    // left in flight, and every event's completion was observed once.
    let metrics = h.metrics_text();
    assert!(
        metrics.contains("\npalworker_events_in_flight 0\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("\npalworker_event_completion_seconds_count 4\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"palworker_actions_total{op="update",outcome="cancelled"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("\npalworker_actions_pending 0\n"),
        "{metrics}"
    );
    h.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_newer_event_cancels_an_older_action_waiting_out_a_retry_after_and_the_wait_is_honoured()
{
    const RETRY_AFTER: u64 = 2;
    let mut faults = Faults::none();
    faults.per_tenant.insert(
        tenant(0),
        FaultProfile {
            rate_429: 1.0,
            retry_after_secs: RETRY_AFTER,
            ..FaultProfile::default()
        },
    );
    let mut h = start(1, 1, faults, FAST).await;
    h.publish(&assignment("first", 0, 0, "111111"))
        .await
        .unwrap();
    h.wait_for(SETTLE, "the first action is throttled and scheduled", |h| {
        let actions = h.actions_of("first");
        actions.len() == 1 && actions[0].state == ActionState::Scheduled
    })
    .await
    .unwrap();
    h.simulator.set_faults(Faults::none());
    h.publish(&assignment("second", 0, 0, "222222"))
        .await
        .unwrap();
    h.wait_until_settled(SETTLE).await.unwrap();

    let first = h.action_of("first");
    assert_eq!(first.state, ActionState::Cancelled, "{first:#?}");
    assert_eq!(first.attempts, 1);
    assert!(
        first.last_error.as_deref().unwrap_or("").contains("429"),
        "{first:#?}"
    );
    let second = h.action_of("second");
    assert_eq!(second.state, ActionState::Done, "{second:#?}");
    assert_eq!(h.linked(0, 0).as_deref(), Some("222222"));

    let requests = h.requests_of(&tenant(0), &object(0, 0));
    assert_eq!(requests[0].status, 429);
    assert!(
        !requests
            .iter()
            .any(|r| r.partner_id.as_deref() == Some("111111")),
        "the superseded partner ID was never written: {requests:#?}"
    );
    let violations = h.simulator.throttle_violations();
    assert!(
        violations.is_empty(),
        "the newer action must wait out the identity's Retry-After too: {violations:#?}"
    );
    let first_after = requests
        .iter()
        .find(|r| r.status != 429)
        .expect("a request after the throttle");
    assert!(
        first_after.at - requests[0].at >= TimeDelta::seconds(RETRY_AFTER as i64),
        "{requests:#?}"
    );
    h.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_action_superseded_while_in_flight_ends_cancelled_instead_of_retrying() {
    // Slow and failing: the first action is still waiting for its GET when
    // the newer event arrives, and that GET then fails with a 503.
    let mut faults = Faults::none();
    faults.per_tenant.insert(
        tenant(0),
        FaultProfile {
            latency_ms: 500,
            rate_5xx: 1.0,
            ..FaultProfile::default()
        },
    );
    let mut h = start(1, 1, faults, FAST).await;
    h.publish(&assignment("first", 0, 0, "111111"))
        .await
        .unwrap();
    h.wait_for(SETTLE, "the first action is in flight", |h| {
        let actions = h.actions_of("first");
        actions.len() == 1 && actions[0].state == ActionState::InFlight
    })
    .await
    .unwrap();
    h.publish(&assignment("second", 0, 0, "222222"))
        .await
        .unwrap();
    h.wait_for(SETTLE, "the first action's GET failed", |h| {
        !h.requests_of(&tenant(0), &object(0, 0)).is_empty()
    })
    .await
    .unwrap();
    h.simulator.set_faults(Faults::none());
    h.wait_until_settled(SETTLE).await.unwrap();

    let first = h.action_of("first");
    assert_eq!(first.state, ActionState::Cancelled, "{first:#?}");
    assert_eq!(
        first.attempts, 1,
        "a superseded action is not retried: {first:#?}"
    );
    assert_eq!(h.action_of("second").state, ActionState::Done);
    let log: Vec<(String, u16, Option<String>)> = h
        .requests_of(&tenant(0), &object(0, 0))
        .into_iter()
        .map(|r| (r.method, r.status, r.partner_id))
        .collect();
    assert_eq!(
        log,
        vec![
            ("GET".to_owned(), 503, None),
            ("GET".to_owned(), 404, None),
            ("PUT".to_owned(), 200, Some("222222".to_owned())),
            ("GET".to_owned(), 200, None),
        ]
    );
    assert_eq!(h.linked(0, 0).as_deref(), Some("222222"));
    h.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_effective_at_in_the_future_holds_the_action_until_that_instant_across_a_restart() {
    let clock = manual_clock();
    let mut h = Harness::start_with_clock(
        HarnessOptions {
            principals: principals(2, 1),
            extra_toml: FAST.into(),
            ..HarnessOptions::default()
        },
        clock.clone(),
    )
    .await
    .unwrap();
    h.publish(&assignment("start-0", 0, 0, "111111"))
        .await
        .unwrap();
    h.wait_until_settled(SETTLE).await.unwrap();
    let requests_before = h.requests_of(&tenant(0), &object(0, 0)).len();

    let effective = clock.now() + TimeDelta::days(30);
    h.publish(&events::employee_departed(
        "departure",
        "E-0",
        None,
        Some(&effective.to_rfc3339()),
    ))
    .await
    .unwrap();
    h.wait_for(SETTLE, "the departure is accepted", |h| {
        h.deliveries_seen() >= h.published
    })
    .await
    .unwrap();
    let rows = LedgerOperations::new(
        h.app().ledger.clone(),
        Attached::Stopped,
        Operator::local_user(),
    )
    .status_rows(&StatusFilter {
        event_id: Some("departure".into()),
        ..StatusFilter::default()
    })
    .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].state, ActionState::Scheduled, "{rows:#?}");
    assert_eq!(rows[0].next_attempt_at, Some(effective), "{rows:#?}");
    assert_eq!(rows[0].action.attempts, 0);

    // The schedule is durable: a restarted worker, one second before the
    // instant, passes the action over.
    h.stop_worker().await.unwrap();
    clock.set(effective - TimeDelta::seconds(1));
    h.start_worker().await.unwrap();
    barrier(&mut h, "barrier", 1, 0, "111111").await;
    assert_eq!(h.action_of("departure").state, ActionState::Scheduled);
    assert_eq!(
        h.requests_of(&tenant(0), &object(0, 0)).len(),
        requests_before,
        "no PAL request before effective_at"
    );
    assert_eq!(h.linked(0, 0).as_deref(), Some("111111"));

    clock.set(effective);
    h.app().executor.wake();
    h.wait_until_settled(SETTLE).await.unwrap();
    let departure = h.action_of("departure");
    assert_eq!(departure.state, ActionState::Done, "{departure:#?}");
    assert_eq!(h.linked(0, 0), None);
    let after: Vec<String> = h.requests_of(&tenant(0), &object(0, 0))[requests_before..]
        .iter()
        .map(|r| r.method.clone())
        .collect();
    assert_eq!(
        after,
        vec!["GET", "DELETE", "GET"],
        "the removal is read back"
    );
    h.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_credential_for_another_identity_fails_as_identity_mismatch_without_writing() {
    // sp-0's identity in T0 is object(0, 0); the account says object(9, 0).
    let mut h = start(1, 1, Faults::none(), FAST).await;
    h.simulator.seed_link(&tenant(0), &object(0, 0), "555555");
    h.publish(&events::assignment_started(
        "mismatch",
        "E-9",
        &tenant(0),
        &object(9, 0),
        "111111",
        Some("sp-0"),
        None,
    ))
    .await
    .unwrap();
    h.wait_until_settled(SETTLE).await.unwrap();

    let action = h.action_of("mismatch");
    assert_eq!(action.state, ActionState::Failed, "{action:#?}");
    let error = action.last_error.clone().unwrap_or_default();
    assert!(error.contains("identity_mismatch"), "{error}");
    assert!(
        error.contains(&object(0, 0)) && error.contains(&object(9, 0)),
        "{error}"
    );
    assert_eq!(action.attempts, 1, "permanent: not retried");
    assert!(
        h.simulator
            .token_requests()
            .iter()
            .any(|t| t.status == 200 && t.tenant == tenant(0)),
        "the token was obtained"
    );
    let writes: Vec<_> = h
        .simulator
        .requests()
        .into_iter()
        .filter(is_write)
        .collect();
    assert!(writes.is_empty(), "nothing was written: {writes:#?}");
    assert_eq!(
        h.linked(0, 0).as_deref(),
        Some("555555"),
        "the other identity's link is untouched"
    );
    assert_eq!(h.linked(9, 0), None);
    h.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_account_without_a_credential_ends_manual_without_any_pal_request() {
    let mut h = start(1, 1, Faults::none(), FAST).await;
    h.publish(&events::assignment_started(
        "human",
        "E-5",
        &tenant(0),
        &object(5, 0),
        "111111",
        None,
        None,
    ))
    .await
    .unwrap();
    h.wait_until_settled(SETTLE).await.unwrap();

    let action = h.action_of("human");
    assert_eq!(action.state, ActionState::Manual, "{action:#?}");
    assert!(
        action
            .detail
            .as_deref()
            .unwrap_or("")
            .contains("no credential"),
        "{action:#?}"
    );
    let manual = LedgerOperations::new(
        h.app().ledger.clone(),
        Attached::Stopped,
        Operator::local_user(),
    )
    .status_rows(&StatusFilter {
        manual: true,
        ..StatusFilter::default()
    })
    .unwrap();
    assert_eq!(manual.len(), 1);
    assert_eq!(manual[0].action.object_id.as_str(), object(5, 0));
    assert!(h.simulator.requests().is_empty(), "no ARM request");
    assert!(h.simulator.token_requests().is_empty(), "no token request");
    h.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_unknown_client_fails_at_once_with_its_aadsts_code_and_no_arm_request() {
    let secret_dir = tempfile::tempdir().unwrap();
    let secret = secret_dir.path().join("ghost-secret");
    std::fs::write(&secret, "not-registered-anywhere").unwrap();
    let extra = format!(
        "{FAST}\n[credentials.ghost]\nclient_id = \"d0000000-0000-4000-8000-00000000dead\"\nclient_secret_file = \"{}\"\n",
        secret.display()
    );
    let mut h = start(1, 1, Faults::none(), &extra).await;
    h.publish(&events::assignment_started(
        "ghost",
        "E-7",
        &tenant(0),
        &object(7, 0),
        "111111",
        Some("ghost"),
        None,
    ))
    .await
    .unwrap();
    h.wait_until_settled(SETTLE).await.unwrap();

    let action = h.action_of("ghost");
    assert_eq!(action.state, ActionState::Failed, "{action:#?}");
    assert_eq!(action.attempts, 1, "permanent: failed at once");
    let error = action.last_error.clone().unwrap_or_default();
    assert!(error.starts_with("AADSTS700016"), "{error}");
    let tokens = h.simulator.token_requests();
    assert_eq!(tokens.len(), 1, "{tokens:#?}");
    assert_eq!(tokens[0].error_code, Some(700016));
    assert_eq!(
        tokens[0].client_id.as_deref(),
        Some("d0000000-0000-4000-8000-00000000dead")
    );
    assert!(h.simulator.requests().is_empty(), "no ARM request");
    h.shutdown().await.unwrap();
}

#[tokio::test]
async fn when_the_retry_budget_is_spent_the_action_fails_with_the_last_error() {
    let faults = Faults::everywhere(FaultProfile {
        rate_5xx: 1.0,
        status_5xx: 503,
        ..FaultProfile::default()
    });
    let extra = r#"
[retry]
initial_interval = "50ms"
max_interval = "2s"
max_elapsed = "1s"
"#;
    let mut h = start(1, 1, faults, extra).await;
    h.publish(&assignment("doomed", 0, 0, "111111"))
        .await
        .unwrap();
    h.wait_until_settled(SETTLE).await.unwrap();

    let action = h.action_of("doomed");
    assert_eq!(action.state, ActionState::Failed, "{action:#?}");
    let error = action.last_error.clone().unwrap_or_default();
    assert!(
        error.starts_with(&format!(
            "retry budget exhausted after {} attempts; last error: ",
            action.attempts
        )),
        "{error}"
    );
    assert!(
        error.contains("503") && error.contains("ServiceUnavailable"),
        "{error}"
    );
    let requests = h.requests_of(&tenant(0), &object(0, 0));
    assert!(requests.len() >= 3, "several attempts: {requests:#?}");
    assert_eq!(
        requests.len() as u32,
        action.attempts,
        "one GET per attempt"
    );
    assert!(
        requests
            .iter()
            .all(|r| r.method == "GET" && r.status == 503 && r.fault_injected)
    );
    let span = requests.last().unwrap().at - requests[0].at;
    assert!(span <= TimeDelta::seconds(1), "within the budget: {span}");
    h.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_pending_retry_survives_a_restart_and_fires_at_its_due_time() {
    let clock = manual_clock();
    let mut faults = Faults::none();
    faults.per_tenant.insert(
        tenant(0),
        FaultProfile {
            rate_5xx: 1.0,
            ..FaultProfile::default()
        },
    );
    let mut h = Harness::start_with_clock(
        HarnessOptions {
            principals: principals(2, 2),
            faults,
            extra_toml: "[retry]\ninitial_interval = \"10m\"\nmax_interval = \"1h\"\n".into(),
            ..HarnessOptions::default()
        },
        clock.clone(),
    )
    .await
    .unwrap();
    h.publish(&assignment("retried", 0, 0, "111111"))
        .await
        .unwrap();
    h.wait_for(SETTLE, "the action waits for its retry", |h| {
        let actions = h.actions_of("retried");
        actions.len() == 1 && actions[0].state == ActionState::Scheduled
    })
    .await
    .unwrap();
    let scheduled = h.action_of("retried");
    let due = scheduled.next_attempt_at.expect("a due time");
    assert!(
        due >= clock.now() + TimeDelta::minutes(10),
        "{scheduled:#?}"
    );
    assert_eq!(scheduled.attempts, 1);

    h.stop_worker().await.unwrap();
    {
        let ledger = Ledger::open(
            &h.settings.ledger.path,
            h.settings.ledger.cache_capacity_bytes,
        )
        .unwrap();
        let stored = ledger.action(scheduled.action_id).unwrap().unwrap();
        assert_eq!(stored.state, ActionState::Scheduled);
        assert_eq!(stored.next_attempt_at, Some(due));
        assert_eq!(stored.attempts, 1);
        assert!(stored.last_error.as_deref().unwrap_or("").contains("503"));
    }
    h.simulator.set_faults(Faults::none());
    h.start_worker().await.unwrap();

    // Restarted, one second before the due time: nothing for that account.
    clock.set(due - TimeDelta::seconds(1));
    h.app().executor.wake();
    barrier(&mut h, "barrier", 1, 1, "111111").await;
    assert_eq!(h.action_of("retried").state, ActionState::Scheduled);
    assert_eq!(
        h.requests_of(&tenant(0), &object(0, 0)).len(),
        1,
        "no request before the due time"
    );

    clock.set(due);
    h.app().executor.wake();
    h.wait_until_settled(SETTLE).await.unwrap();
    let done = h.action_of("retried");
    assert_eq!(done.state, ActionState::Done, "{done:#?}");
    assert_eq!(done.attempts, 2);
    let log: Vec<(String, u16)> = h
        .requests_of(&tenant(0), &object(0, 0))
        .iter()
        .map(|r| (r.method.clone(), r.status))
        .collect();
    assert_eq!(
        log,
        vec![
            ("GET".to_owned(), 503),
            ("GET".to_owned(), 404),
            ("PUT".to_owned(), 200),
            ("GET".to_owned(), 200)
        ]
    );
    assert_eq!(h.linked(0, 0).as_deref(), Some("111111"));
    h.shutdown().await.unwrap();
}
