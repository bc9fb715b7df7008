//! The main path on real parts: CloudEvents published to the local RabbitMQ,
//! the real worker with a sled ledger in a temp dir, and the PAL simulator
//! over HTTP. Each test has its own topology, ledger and simulator.

use std::time::Duration;

use palworker::local::identities::{credential, employee, object, principals, tenant};
use palworker::local::{Harness, HarnessOptions, events, sample};
use palworker::operators::{Attached, LedgerOperations, Operator};

const SETTLE: Duration = Duration::from_secs(60);

/// Employees 0..3, each a service principal with an identity in tenants 0..3.
async fn harness() -> Harness {
    Harness::start(HarnessOptions {
        principals: principals(3, 3),
        extra_toml: "[retry]\ninitial_interval = \"100ms\"\n".into(),
        ..HarnessOptions::default()
    })
    .await
    .expect("harness starts")
}

/// Assigns employee `e` to tenant `t` with `partner` (and contract).
async fn assign(h: &mut Harness, e: usize, t: usize, partner: &str, contract: Option<&str>) {
    h.publish(&events::assignment_started(
        &format!("start-{e}-{t}-{partner}"),
        &employee(e),
        &tenant(t),
        &object(e, t),
        partner,
        Some(&credential(e)),
        contract,
    ))
    .await
    .unwrap();
}

#[tokio::test]
async fn assignment_started_links_the_account_in_its_tenant() {
    let mut h = harness().await;
    assign(&mut h, 0, 0, "111111", None).await;
    assign(&mut h, 0, 1, "111111", None).await;
    h.wait_until_settled(SETTLE).await.unwrap();
    assert_eq!(h.linked(0, 0).as_deref(), Some("111111"));
    assert_eq!(h.linked(0, 1).as_deref(), Some("111111"));
    assert_eq!(h.linked(0, 2), None);
    let puts = h
        .simulator
        .requests()
        .iter()
        .filter(|r| r.method == "PUT")
        .count();
    assert_eq!(puts, 2);
    h.shutdown().await.unwrap();
}

#[tokio::test]
async fn assignment_ended_removes_only_that_tenants_link() {
    let mut h = harness().await;
    assign(&mut h, 0, 0, "111111", None).await;
    assign(&mut h, 0, 1, "111111", None).await;
    h.wait_until_settled(SETTLE).await.unwrap();
    h.publish(&events::assignment_ended("end-1-1", "E-0", &tenant(0)))
        .await
        .unwrap();
    h.wait_until_settled(SETTLE).await.unwrap();
    assert_eq!(h.linked(0, 0), None);
    assert_eq!(h.linked(0, 1).as_deref(), Some("111111"));
    h.shutdown().await.unwrap();
}

#[tokio::test]
async fn contract_ended_removes_the_links_of_that_contract_in_that_tenant() {
    let mut h = harness().await;
    assign(&mut h, 0, 0, "111111", Some("C-1")).await;
    assign(&mut h, 1, 0, "111111", Some("C-2")).await;
    assign(&mut h, 2, 1, "111111", Some("C-1")).await;
    h.wait_until_settled(SETTLE).await.unwrap();
    h.publish(&events::contract_ended(
        "contract-end",
        &tenant(0),
        Some("C-1"),
    ))
    .await
    .unwrap();
    h.wait_until_settled(SETTLE).await.unwrap();
    assert_eq!(h.linked(0, 0), None, "C-1 in T0 removed");
    assert_eq!(h.linked(1, 0).as_deref(), Some("111111"), "C-2 in T0 kept");
    assert_eq!(h.linked(2, 1).as_deref(), Some("111111"), "C-1 in T1 kept");

    // Without a contract: every account in the tenant.
    h.publish(&events::contract_ended("tenant-end", &tenant(0), None))
        .await
        .unwrap();
    h.wait_until_settled(SETTLE).await.unwrap();
    assert_eq!(h.linked(1, 0), None);
    assert_eq!(h.linked(2, 1).as_deref(), Some("111111"));
    h.shutdown().await.unwrap();
}

#[tokio::test]
async fn departure_removes_every_link_and_hands_them_to_the_successor() {
    let mut h = harness().await;
    for t in 0..3 {
        assign(&mut h, 0, t, "111111", None).await;
    }
    // The successor works in T0 and T1 only (already linked, to another partner ID, in T0).
    assign(&mut h, 1, 0, "222222", None).await;
    h.wait_until_settled(SETTLE).await.unwrap();
    // E-1 in T1 is known (imported), not linked.
    let import = format!(
        "{{\"tenant_id\":\"{}\",\"object_id\":\"{}\",\"employee_id\":\"{}\",\"credential\":\"{}\"}}\n",
        tenant(1),
        object(1, 1),
        employee(1),
        credential(1),
    );
    LedgerOperations::new(
        h.app().ledger.clone(),
        Attached::Stopped,
        Operator::local_user(),
    )
    .import_text(&import)
    .unwrap();

    h.publish(&events::employee_departed(
        "departure",
        "E-0",
        Some("E-1"),
        None,
    ))
    .await
    .unwrap();
    h.wait_until_settled(SETTLE).await.unwrap();
    for t in 0..3 {
        assert_eq!(h.linked(0, t), None, "E-0 in T{t} removed");
    }
    assert_eq!(
        h.linked(1, 0).as_deref(),
        Some("111111"),
        "successor re-pointed in T0"
    );
    assert_eq!(
        h.linked(1, 1).as_deref(),
        Some("111111"),
        "successor linked in T1"
    );
    assert_eq!(h.linked(1, 2), None, "no successor account in T2");
    let record = h.app().ledger.resolve_event("departure", None).unwrap();
    assert_eq!(
        record
            .unassigned
            .iter()
            .map(|t| t.as_str())
            .collect::<Vec<_>>(),
        vec![tenant(2)]
    );
    h.shutdown().await.unwrap();
}

#[tokio::test]
async fn transfer_moves_every_linked_account_to_the_new_partner_id() {
    let mut h = harness().await;
    assign(&mut h, 0, 0, "111111", None).await;
    assign(&mut h, 0, 1, "111111", None).await;
    assign(&mut h, 1, 0, "111111", None).await;
    h.wait_until_settled(SETTLE).await.unwrap();
    h.publish(&events::employee_transferred("transfer", "E-0", "333333"))
        .await
        .unwrap();
    h.wait_until_settled(SETTLE).await.unwrap();
    assert_eq!(h.linked(0, 0).as_deref(), Some("333333"));
    assert_eq!(h.linked(0, 1).as_deref(), Some("333333"));
    assert_eq!(
        h.linked(1, 0).as_deref(),
        Some("111111"),
        "other employees untouched"
    );
    let patches = h
        .simulator
        .requests()
        .iter()
        .filter(|r| r.method == "PATCH")
        .count();
    assert_eq!(patches, 2);
    h.shutdown().await.unwrap();
}

#[tokio::test]
async fn partner_id_change_relinks_every_account_or_only_the_named_tenants() {
    let mut h = harness().await;
    for e in 0..2 {
        for t in 0..3 {
            assign(&mut h, e, t, "444444", None).await;
        }
    }
    assign(&mut h, 2, 0, "999999", None).await;
    h.wait_until_settled(SETTLE).await.unwrap();
    h.publish(&events::partner_id_changed(
        "change-scoped",
        "444444",
        "555555",
        Some(&[tenant(2).as_str()]),
    ))
    .await
    .unwrap();
    h.wait_until_settled(SETTLE).await.unwrap();
    assert_eq!(h.linked(0, 2).as_deref(), Some("555555"));
    assert_eq!(
        h.linked(0, 0).as_deref(),
        Some("444444"),
        "outside tenant_ids untouched"
    );

    h.publish(&events::partner_id_changed(
        "change-all",
        "444444",
        "555555",
        None,
    ))
    .await
    .unwrap();
    h.wait_until_settled(SETTLE).await.unwrap();
    for e in 0..2 {
        for t in 0..3 {
            assert_eq!(h.linked(e, t).as_deref(), Some("555555"), "E-{e} T{t}");
        }
    }
    assert_eq!(
        h.linked(2, 0).as_deref(),
        Some("999999"),
        "other partner IDs untouched"
    );
    h.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_same_event_twice_has_no_further_effect() {
    let mut h = harness().await;
    let event = events::assignment_started(
        "once",
        "E-0",
        &tenant(0),
        &object(0, 0),
        "111111",
        Some("sp-0"),
        None,
    );
    h.publish(&event).await.unwrap();
    h.wait_until_settled(SETTLE).await.unwrap();
    let requests_after_first = h.simulator.requests().len();
    let version_after_first = h
        .simulator
        .active_link(&tenant(0), &object(0, 0))
        .unwrap()
        .version;

    h.publish(&event).await.unwrap();
    h.wait_until_settled(SETTLE).await.unwrap();
    assert_eq!(
        h.simulator.requests().len(),
        requests_after_first,
        "no PAL request for the duplicate"
    );
    assert_eq!(
        h.simulator
            .active_link(&tenant(0), &object(0, 0))
            .unwrap()
            .version,
        version_after_first
    );
    let metrics = h.metrics_text();
    assert!(
        metrics.contains(
            r#"palworker_events_total{outcome="duplicate",type="project.assignment.started"} 1"#
        ),
        "{metrics}"
    );
    assert!(metrics.contains(
        r#"palworker_events_total{outcome="accepted",type="project.assignment.started"} 1"#
    ));
    assert_eq!(
        h.app().ledger.actions(&Default::default()).unwrap().len(),
        1
    );
    h.shutdown().await.unwrap();
}

#[tokio::test]
async fn malformed_messages_are_dead_lettered_with_their_reason_and_the_worker_goes_on() {
    let mut h = harness().await;
    let valid = events::assignment_started(
        "ok",
        "E-0",
        &tenant(0),
        &object(0, 0),
        "111111",
        Some("sp-0"),
        None,
    );
    let mut unknown_type = valid.clone();
    unknown_type["type"] = "hr.employee.promoted".into();
    let mut missing_field = valid.clone();
    missing_field["id"] = "missing".into();
    missing_field["data"]
        .as_object_mut()
        .unwrap()
        .remove("tenant_id");
    let mut bad_guid = valid.clone();
    bad_guid["id"] = "bad-guid".into();
    bad_guid["data"]["tenant_id"] = "not-a-guid".into();
    let mut bad_partner = valid.clone();
    bad_partner["id"] = "bad-partner".into();
    bad_partner["data"]["partner_id"] = "12ab56".into();
    let mut too_large = valid.clone();
    too_large["id"] = "too-large".into();
    too_large["data"]["padding"] = "x".repeat(300 * 1024).into();

    h.publish_raw(
        "hr.employee.departed",
        b"{\"specversion\": \"1.0\", oops",
        "application/cloudevents+json",
    )
    .await
    .unwrap();
    for event in [
        &unknown_type,
        &missing_field,
        &bad_guid,
        &bad_partner,
        &too_large,
    ] {
        let body = serde_json::to_vec(event).unwrap();
        h.publish_raw(
            "project.assignment.started",
            &body,
            "application/cloudevents+json",
        )
        .await
        .unwrap();
    }
    h.publish(&valid).await.unwrap();
    h.wait_until_settled(SETTLE).await.unwrap();

    assert_eq!(
        h.linked(0, 0).as_deref(),
        Some("111111"),
        "the valid event after them was processed"
    );
    let dead_letters = h.dead_letters().await.unwrap();
    // The copy of the oversized event keeps its whole body, byte for byte.
    let oversized = serde_json::to_vec(&too_large).unwrap();
    let copy = dead_letters
        .iter()
        .find(|m| {
            m.reason
                .as_deref()
                .is_some_and(|r| r.starts_with("too_large:"))
        })
        .expect("the oversized event's dead-letter copy");
    assert_eq!(copy.body.len(), oversized.len());
    assert!(
        copy.body == oversized,
        "the dead-letter copy differs from what was sent"
    );
    let mut reasons: Vec<String> = dead_letters
        .into_iter()
        .map(|m| m.reason.expect("x-palworker-reason header"))
        .collect();
    reasons.sort();
    assert_eq!(reasons.len(), 6, "{reasons:#?}");
    let expected_prefixes = [
        "invalid_field: data.partner_id",
        "invalid_field: data.tenant_id",
        "invalid_json:",
        "missing_field: data.tenant_id",
        "too_large:",
        "unknown_type: hr.employee.promoted",
    ];
    for (reason, prefix) in reasons.iter().zip(expected_prefixes) {
        assert!(
            reason.starts_with(prefix),
            "{reason:?} should start with {prefix:?}"
        );
    }
    let metrics = h.metrics_text();
    assert!(
        metrics.contains(r#"palworker_events_total{outcome="dead_lettered",type="unknown"} 3"#),
        "{metrics}"
    );
    assert!(metrics.contains(
        r#"palworker_events_total{outcome="dead_lettered",type="project.assignment.started"} 3"#
    ));
    assert!(metrics.contains(r#"palworker_dead_letters_total{reason="too_large"} 1"#));
    // Dead-lettered events are not recorded as accepted: a corrected re-send is processed.
    let mut corrected = bad_guid.clone();
    corrected["data"]["tenant_id"] = tenant(1).into();
    corrected["data"]["object_id"] = object(0, 1).into();
    h.publish(&corrected).await.unwrap();
    h.wait_until_settled(SETTLE).await.unwrap();
    assert_eq!(h.linked(0, 1).as_deref(), Some("111111"));
    h.shutdown().await.unwrap();
}

#[tokio::test]
async fn metrics_export_every_contract_name_and_count_what_happened() {
    let mut h = harness().await;
    let fresh = h.metrics_text();
    for name in [
        "palworker_events_total",
        "palworker_actions_total",
        "palworker_action_retries_total",
        "palworker_actions_pending",
        "palworker_api_requests_total",
        "palworker_api_request_duration_seconds",
        "palworker_event_completion_seconds",
        "palworker_amqp_connected",
    ] {
        assert!(
            fresh.contains(&format!("# TYPE {name} ")),
            "{name} missing at start-up"
        );
    }
    // Closed label sets start at zero.
    assert_eq!(
        sample(
            &fresh,
            r#"palworker_actions_total{op="update",outcome="cancelled"}"#
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &fresh,
            r#"palworker_action_retries_total{reason="unauthorized"}"#
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &fresh,
            r#"palworker_events_total{outcome="held",type="partner.id.changed"}"#
        ),
        Some(0.0)
    );

    for t in 0..2 {
        assign(&mut h, 0, t, "111111", None).await;
    }
    h.wait_until_settled(SETTLE).await.unwrap();
    h.publish(&events::employee_departed("departure", "E-0", None, None))
        .await
        .unwrap();
    h.publish(&events::employee_departed("departure", "E-0", None, None))
        .await
        .unwrap();
    h.publish_raw("hr.employee.departed", b"[]", "application/json")
        .await
        .unwrap();
    h.wait_until_settled(SETTLE).await.unwrap();

    let metrics = h.metrics_text();
    let events = |kind: &str, outcome: &str| {
        sample(
            &metrics,
            &format!(r#"palworker_events_total{{outcome="{outcome}",type="{kind}"}}"#),
        )
    };
    assert_eq!(events("project.assignment.started", "accepted"), Some(2.0));
    assert_eq!(events("hr.employee.departed", "accepted"), Some(1.0));
    assert_eq!(events("hr.employee.departed", "duplicate"), Some(1.0));
    assert_eq!(events("unknown", "dead_lettered"), Some(1.0));
    let actions = |op: &str, outcome: &str| {
        sample(
            &metrics,
            &format!(r#"palworker_actions_total{{op="{op}",outcome="{outcome}"}}"#),
        )
    };
    assert_eq!(actions("link", "done"), Some(2.0));
    assert_eq!(actions("remove", "done"), Some(2.0));
    assert_eq!(actions("remove", "noop"), Some(0.0));
    assert_eq!(sample(&metrics, "palworker_actions_pending"), Some(0.0));
    assert_eq!(sample(&metrics, "palworker_amqp_connected"), Some(1.0));
    // Each action: one GET, one write and one GET reading it back; one
    // token per (credential, tenant).
    assert_eq!(
        sample(
            &metrics,
            r#"palworker_api_requests_total{method="GET",status="404"}"#
        ),
        Some(4.0)
    );
    assert_eq!(
        sample(
            &metrics,
            r#"palworker_api_requests_total{method="GET",status="200"}"#
        ),
        Some(4.0)
    );
    assert_eq!(
        sample(
            &metrics,
            r#"palworker_verifications_total{result="confirmed"}"#
        ),
        Some(4.0)
    );
    assert_eq!(
        sample(
            &metrics,
            r#"palworker_api_requests_total{method="PUT",status="200"}"#
        ),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &metrics,
            r#"palworker_api_requests_total{method="DELETE",status="200"}"#
        ),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &metrics,
            r#"palworker_api_request_duration_seconds_count{method="GET"}"#
        ),
        Some(8.0)
    );
    assert_eq!(
        sample(&metrics, "palworker_event_completion_seconds_count"),
        Some(3.0)
    );
    assert_eq!(h.simulator.requests().len(), 12);
    assert!(metrics.contains("process_resident_memory_bytes"));
    h.shutdown().await.unwrap();
}
