//! The main path on real parts: CloudEvents published to the local RabbitMQ,
//! the real worker with a sled ledger in a temp dir, and the PAL simulator
//! over HTTP. Each test has its own topology, ledger and simulator.

use std::time::Duration;

use palworker::harness::{Harness, HarnessOptions, ServicePrincipal, events};

const T1: &str = "11111111-1111-4111-8111-111111111111";
const T2: &str = "22222222-2222-4222-8222-222222222222";
const T3: &str = "33333333-3333-4333-8333-333333333333";
const SETTLE: Duration = Duration::from_secs(60);

fn object(employee: u8, tenant: u8) -> String {
    format!("0000{employee:02x}{tenant:02x}-0000-4000-8000-000000000000")
}

fn tenant(n: u8) -> &'static str {
    [T1, T2, T3][n as usize - 1]
}

/// Employees 1..=3, each a service principal with an identity in every tenant.
fn principals() -> Vec<ServicePrincipal> {
    (1..=3u8)
        .map(|e| ServicePrincipal {
            credential: format!("sp-{e}"),
            client_id: format!("c0000000-0000-4000-8000-0000000000{e:02}"),
            identities: (1..=3u8)
                .map(|t| (tenant(t).to_owned(), object(e, t)))
                .collect(),
        })
        .collect()
}

async fn harness() -> Harness {
    Harness::start(HarnessOptions {
        principals: principals(),
        extra_toml: "[retry]\ninitial_interval = \"100ms\"\n".into(),
        ..HarnessOptions::default()
    })
    .await
    .expect("harness starts")
}

/// Assigns employee `e` to tenant `t` with `partner` (and contract).
async fn assign(h: &mut Harness, e: u8, t: u8, partner: &str, contract: Option<&str>) {
    h.publish(&events::assignment_started(
        &format!("start-{e}-{t}-{partner}"),
        &format!("E-{e}"),
        tenant(t),
        &object(e, t),
        partner,
        Some(&format!("sp-{e}")),
        contract,
    ))
    .await
    .unwrap();
}

fn linked(h: &Harness, e: u8, t: u8) -> Option<String> {
    h.simulator
        .active_link(tenant(t), &object(e, t))
        .map(|l| l.partner_id)
}

#[tokio::test]
async fn assignment_started_links_the_account_in_its_tenant() {
    let mut h = harness().await;
    assign(&mut h, 1, 1, "111111", None).await;
    assign(&mut h, 1, 2, "111111", None).await;
    h.wait_until_settled(SETTLE).await.unwrap();
    assert_eq!(linked(&h, 1, 1).as_deref(), Some("111111"));
    assert_eq!(linked(&h, 1, 2).as_deref(), Some("111111"));
    assert_eq!(linked(&h, 1, 3), None);
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
    assign(&mut h, 1, 1, "111111", None).await;
    assign(&mut h, 1, 2, "111111", None).await;
    h.wait_until_settled(SETTLE).await.unwrap();
    h.publish(&events::assignment_ended("end-1-1", "E-1", T1))
        .await
        .unwrap();
    h.wait_until_settled(SETTLE).await.unwrap();
    assert_eq!(linked(&h, 1, 1), None);
    assert_eq!(linked(&h, 1, 2).as_deref(), Some("111111"));
    h.shutdown().await.unwrap();
}

#[tokio::test]
async fn contract_ended_removes_the_links_of_that_contract_in_that_tenant() {
    let mut h = harness().await;
    assign(&mut h, 1, 1, "111111", Some("C-1")).await;
    assign(&mut h, 2, 1, "111111", Some("C-2")).await;
    assign(&mut h, 3, 2, "111111", Some("C-1")).await;
    h.wait_until_settled(SETTLE).await.unwrap();
    h.publish(&events::contract_ended("contract-end", T1, Some("C-1")))
        .await
        .unwrap();
    h.wait_until_settled(SETTLE).await.unwrap();
    assert_eq!(linked(&h, 1, 1), None, "C-1 in T1 removed");
    assert_eq!(
        linked(&h, 2, 1).as_deref(),
        Some("111111"),
        "C-2 in T1 kept"
    );
    assert_eq!(
        linked(&h, 3, 2).as_deref(),
        Some("111111"),
        "C-1 in T2 kept"
    );

    // Without a contract: every account in the tenant.
    h.publish(&events::contract_ended("tenant-end", T1, None))
        .await
        .unwrap();
    h.wait_until_settled(SETTLE).await.unwrap();
    assert_eq!(linked(&h, 2, 1), None);
    assert_eq!(linked(&h, 3, 2).as_deref(), Some("111111"));
    h.shutdown().await.unwrap();
}

#[tokio::test]
async fn departure_removes_every_link_and_hands_them_to_the_successor() {
    let mut h = harness().await;
    for t in 1..=3 {
        assign(&mut h, 1, t, "111111", None).await;
    }
    // The successor works in T1 and T2 only (already linked elsewhere in T2).
    assign(&mut h, 2, 1, "222222", None).await;
    h.wait_until_settled(SETTLE).await.unwrap();
    // E-2 in T2 is known (imported), not linked.
    let import = format!(
        "{{\"tenant_id\":\"{T2}\",\"object_id\":\"{}\",\"employee_id\":\"E-2\",\"credential\":\"sp-2\"}}\n",
        object(2, 2)
    );
    palworker::admin::Admin::new(h.app().ledger.clone())
        .import(&import)
        .unwrap();

    h.publish(&events::employee_departed(
        "departure",
        "E-1",
        Some("E-2"),
        None,
    ))
    .await
    .unwrap();
    h.wait_until_settled(SETTLE).await.unwrap();
    for t in 1..=3 {
        assert_eq!(linked(&h, 1, t), None, "E-1 in T{t} removed");
    }
    assert_eq!(
        linked(&h, 2, 1).as_deref(),
        Some("111111"),
        "successor re-pointed in T1"
    );
    assert_eq!(
        linked(&h, 2, 2).as_deref(),
        Some("111111"),
        "successor linked in T2"
    );
    assert_eq!(linked(&h, 2, 3), None, "no successor account in T3");
    let record = h.app().ledger.resolve_event("departure", None).unwrap();
    assert_eq!(
        record
            .unassigned
            .iter()
            .map(|t| t.as_str())
            .collect::<Vec<_>>(),
        vec![T3]
    );
    h.shutdown().await.unwrap();
}

#[tokio::test]
async fn transfer_moves_every_linked_account_to_the_new_partner_id() {
    let mut h = harness().await;
    assign(&mut h, 1, 1, "111111", None).await;
    assign(&mut h, 1, 2, "111111", None).await;
    assign(&mut h, 2, 1, "111111", None).await;
    h.wait_until_settled(SETTLE).await.unwrap();
    h.publish(&events::employee_transferred("transfer", "E-1", "333333"))
        .await
        .unwrap();
    h.wait_until_settled(SETTLE).await.unwrap();
    assert_eq!(linked(&h, 1, 1).as_deref(), Some("333333"));
    assert_eq!(linked(&h, 1, 2).as_deref(), Some("333333"));
    assert_eq!(
        linked(&h, 2, 1).as_deref(),
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
    for e in 1..=2 {
        for t in 1..=3 {
            assign(&mut h, e, t, "444444", None).await;
        }
    }
    assign(&mut h, 3, 1, "999999", None).await;
    h.wait_until_settled(SETTLE).await.unwrap();
    h.publish(&events::partner_id_changed(
        "change-scoped",
        "444444",
        "555555",
        Some(&[T3]),
    ))
    .await
    .unwrap();
    h.wait_until_settled(SETTLE).await.unwrap();
    assert_eq!(linked(&h, 1, 3).as_deref(), Some("555555"));
    assert_eq!(
        linked(&h, 1, 1).as_deref(),
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
    for e in 1..=2 {
        for t in 1..=3 {
            assert_eq!(linked(&h, e, t).as_deref(), Some("555555"), "E-{e} T{t}");
        }
    }
    assert_eq!(
        linked(&h, 3, 1).as_deref(),
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
        "E-1",
        T1,
        &object(1, 1),
        "111111",
        Some("sp-1"),
        None,
    );
    h.publish(&event).await.unwrap();
    h.wait_until_settled(SETTLE).await.unwrap();
    let requests_after_first = h.simulator.requests().len();
    let version_after_first = h.simulator.active_link(T1, &object(1, 1)).unwrap().version;

    h.publish(&event).await.unwrap();
    h.wait_until_settled(SETTLE).await.unwrap();
    assert_eq!(
        h.simulator.requests().len(),
        requests_after_first,
        "no PAL request for the duplicate"
    );
    assert_eq!(
        h.simulator.active_link(T1, &object(1, 1)).unwrap().version,
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
    let valid =
        events::assignment_started("ok", "E-1", T1, &object(1, 1), "111111", Some("sp-1"), None);
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
        linked(&h, 1, 1).as_deref(),
        Some("111111"),
        "the valid event after them was processed"
    );
    let mut reasons: Vec<String> = h
        .dead_letters()
        .await
        .unwrap()
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
    corrected["data"]["tenant_id"] = T2.into();
    corrected["data"]["object_id"] = object(1, 2).into();
    h.publish(&corrected).await.unwrap();
    h.wait_until_settled(SETTLE).await.unwrap();
    assert_eq!(linked(&h, 1, 2).as_deref(), Some("111111"));
    h.shutdown().await.unwrap();
}

/// The value of one sample line of the Prometheus text (`name{labels} value`).
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| {
            line.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .unwrap_or_else(|| panic!("no series {series} in\n{metrics}"))
        .parse()
        .unwrap()
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
        0.0
    );
    assert_eq!(
        sample(
            &fresh,
            r#"palworker_action_retries_total{reason="unauthorized"}"#
        ),
        0.0
    );
    assert_eq!(
        sample(
            &fresh,
            r#"palworker_events_total{outcome="held",type="partner.id.changed"}"#
        ),
        0.0
    );

    for t in 1..=2 {
        assign(&mut h, 1, t, "111111", None).await;
    }
    h.wait_until_settled(SETTLE).await.unwrap();
    h.publish(&events::employee_departed("departure", "E-1", None, None))
        .await
        .unwrap();
    h.publish(&events::employee_departed("departure", "E-1", None, None))
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
    assert_eq!(events("project.assignment.started", "accepted"), 2.0);
    assert_eq!(events("hr.employee.departed", "accepted"), 1.0);
    assert_eq!(events("hr.employee.departed", "duplicate"), 1.0);
    assert_eq!(events("unknown", "dead_lettered"), 1.0);
    let actions = |op: &str, outcome: &str| {
        sample(
            &metrics,
            &format!(r#"palworker_actions_total{{op="{op}",outcome="{outcome}"}}"#),
        )
    };
    assert_eq!(actions("link", "done"), 2.0);
    assert_eq!(actions("remove", "done"), 2.0);
    assert_eq!(actions("remove", "noop"), 0.0);
    assert_eq!(sample(&metrics, "palworker_actions_pending"), 0.0);
    assert_eq!(sample(&metrics, "palworker_amqp_connected"), 1.0);
    // Each action: one GET and one write, one token per (credential, tenant).
    assert_eq!(
        sample(
            &metrics,
            r#"palworker_api_requests_total{method="GET",status="404"}"#
        ),
        2.0
    );
    assert_eq!(
        sample(
            &metrics,
            r#"palworker_api_requests_total{method="GET",status="200"}"#
        ),
        2.0
    );
    assert_eq!(
        sample(
            &metrics,
            r#"palworker_api_requests_total{method="PUT",status="200"}"#
        ),
        2.0
    );
    assert_eq!(
        sample(
            &metrics,
            r#"palworker_api_requests_total{method="DELETE",status="200"}"#
        ),
        2.0
    );
    assert_eq!(
        sample(
            &metrics,
            r#"palworker_api_request_duration_seconds_count{method="GET"}"#
        ),
        4.0
    );
    assert_eq!(
        sample(&metrics, "palworker_event_completion_seconds_count"),
        3.0
    );
    assert_eq!(h.simulator.requests().len(), 8);
    assert!(metrics.contains("process_resident_memory_bytes"));
    h.shutdown().await.unwrap();
}
