//! Proof, not hope (SPEC §11.3): every write is read back. Real RabbitMQ,
//! real sled, the simulator over HTTP with its eventual consistency and
//! lost writes.

use std::time::Duration;

use palworker::local::identities::{assignment, employee, object, principals, tenant};
use palworker::local::process::CliOutput;
use palworker::local::{Harness, HarnessOptions, events, sample};
use palworker_core::{ActionState, AuditWhat};
use palworker_sim::{FaultProfile, Faults};

use crate::worker_binary;

const SETTLE: Duration = Duration::from_secs(60);
const FAST: &str = "[retry]\ninitial_interval = \"50ms\"\nmax_interval = \"200ms\"\n";

fn metric(h: &Harness, series: &str) -> f64 {
    sample(&h.metrics_text(), series).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_visible_only_after_a_delay_is_confirmed_by_reading_it_again() {
    let mut faults = Faults::default();
    faults.per_tenant.insert(
        tenant(0),
        FaultProfile {
            write_visibility_ms: 400,
            ..FaultProfile::default()
        },
    );
    let mut h = Harness::start(HarnessOptions {
        principals: principals(1, 1),
        faults,
        extra_toml: FAST.into(),
        ..HarnessOptions::default()
    })
    .await
    .unwrap();
    h.publish(&assignment("start", 0, 0, "111111"))
        .await
        .unwrap();
    h.wait_until_settled(SETTLE).await.unwrap();
    let action = h.action_of("start");
    assert_eq!(action.state, ActionState::Done, "{action:#?}");
    assert_eq!(action.attempts, 1, "confirmed within the attempt");
    assert!(action.verified_at.is_some());
    assert_eq!(
        metric(&h, r#"palworker_verifications_total{result="confirmed"}"#),
        1.0
    );
    assert_eq!(
        metric(&h, r#"palworker_verifications_total{result="mismatch"}"#),
        0.0
    );
    let gets = h
        .simulator
        .requests()
        .iter()
        .filter(|r| r.method == "GET")
        .count();
    assert!(
        gets >= 3,
        "the first reads back still showed no link ({gets} GETs)"
    );
    h.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_answered_200_but_lost_is_found_by_reading_it_back_and_made_again() {
    let mut faults = Faults::default();
    faults.per_tenant.insert(
        tenant(0),
        FaultProfile {
            rate_lost_write: 1.0,
            ..FaultProfile::default()
        },
    );
    let mut h = Harness::start(HarnessOptions {
        principals: principals(1, 1),
        faults,
        extra_toml: FAST.into(),
        ..HarnessOptions::default()
    })
    .await
    .unwrap();
    h.publish(&assignment("start", 0, 0, "111111"))
        .await
        .unwrap();
    h.wait_for(SETTLE, "a retry because the write was not confirmed", |h| {
        sample(
            &h.metrics_text(),
            r#"palworker_action_retries_total{reason="unverified"}"#,
        )
        .unwrap_or(0.0)
            >= 1.0
    })
    .await
    .unwrap();
    assert_eq!(h.linked(0, 0), None, "the write was lost");
    assert!(!h.simulator.lost_writes().is_empty());
    assert_ne!(h.action_of("start").state, ActionState::Done);

    h.simulator.set_faults(Faults::default());
    h.wait_until_settled(SETTLE).await.unwrap();
    let action = h.action_of("start");
    assert_eq!(action.state, ActionState::Done, "{action:#?}");
    assert!(action.verified_at.is_some());
    assert_eq!(h.linked(0, 0).as_deref(), Some("111111"));
    assert!(metric(&h, r#"palworker_verifications_total{result="mismatch"}"#) >= 1.0);
    assert_eq!(
        metric(&h, r#"palworker_verifications_total{result="confirmed"}"#),
        1.0
    );
    h.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_whose_identity_was_deleted_from_its_tenant_ends_orphaned_and_a_link_for_it_fails()
 {
    let mut h = Harness::start(HarnessOptions {
        principals: principals(1, 2),
        extra_toml: FAST.into(),
        ..HarnessOptions::default()
    })
    .await
    .unwrap();
    for t in 0..2 {
        h.publish(&assignment(&format!("start-{t}"), 0, t, "111111"))
            .await
            .unwrap();
    }
    h.wait_until_settled(SETTLE).await.unwrap();
    // E-0's service principal is deleted from tenant 1; a fresh worker holds
    // no token for it (a cached one would keep working until it expires).
    h.stop_worker().await.unwrap();
    assert_eq!(
        h.simulator.delete_identity(&tenant(1), &object(0, 1)).len(),
        1
    );
    h.start_worker().await.unwrap();

    h.publish(&events::employee_departed(
        "leaves",
        &employee(0),
        None,
        None,
    ))
    .await
    .unwrap();
    h.wait_until_settled(SETTLE).await.unwrap();
    let actions = h.actions_of("leaves");
    assert_eq!(actions.len(), 2);
    let in_tenant = |t: usize| {
        actions
            .iter()
            .find(|a| a.tenant_id.as_str() == tenant(t))
            .unwrap()
            .clone()
    };
    let removed = in_tenant(0);
    assert_eq!(removed.state, ActionState::Done, "{removed:#?}");
    assert_eq!(h.linked(0, 0), None);
    let orphaned = in_tenant(1);
    assert_eq!(orphaned.state, ActionState::Orphaned, "{orphaned:#?}");
    let evidence = orphaned.last_error.as_deref().unwrap_or_default();
    assert!(
        evidence.contains("AADSTS700016"),
        "the token error is kept: {evidence:?}"
    );
    assert!(
        orphaned
            .detail
            .as_deref()
            .is_some_and(|d| d.contains("no longer exists")),
        "{orphaned:#?}"
    );
    let metrics = h.metrics_text();
    let actions_total = |op: &str, outcome: &str| {
        sample(
            &metrics,
            &format!(r#"palworker_actions_total{{op="{op}",outcome="{outcome}"}}"#),
        )
        .unwrap_or(0.0)
    };
    assert_eq!(actions_total("remove", "orphaned"), 1.0);
    assert_eq!(actions_total("remove", "done"), 1.0);
    assert_eq!(actions_total("remove", "failed"), 0.0);

    // The audit trail keeps the evidence.
    let mut audited = Vec::new();
    h.app()
        .ledger
        .for_each_audit_entry(None, None, |entry| {
            if let AuditWhat::ActionOutcome(record) = entry.what
                && record.outcome == ActionState::Orphaned
            {
                audited.push(record);
            }
            true
        })
        .unwrap();
    assert_eq!(audited.len(), 1);
    assert_eq!(audited[0].action.action_id, orphaned.action_id);
    assert!(
        audited[0]
            .action
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("AADSTS700016"))
    );

    // Linking that identity again cannot be done: failed, not orphaned.
    h.publish(&assignment("again", 0, 1, "222222"))
        .await
        .unwrap();
    h.wait_until_settled(SETTLE).await.unwrap();
    let link = h.action_of("again");
    assert_eq!(link.state, ActionState::Failed, "{link:#?}");
    assert!(
        link.last_error
            .as_deref()
            .is_some_and(|e| e.contains("AADSTS700016")),
        "{link:#?}"
    );
    assert_eq!(
        sample(
            &h.metrics_text(),
            r#"palworker_actions_total{op="link",outcome="failed"}"#
        ),
        Some(1.0)
    );
    h.shutdown().await.unwrap();
}

fn ok(output: &CliOutput) -> &str {
    assert_eq!(output.code, 0, "{}{}", output.stdout, output.stderr);
    &output.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_time_to_revocation_of_a_departure_is_measured_and_reported_running_or_not() {
    let mut h = Harness::start(HarnessOptions {
        principals: principals(2, 2),
        extra_toml: FAST.into(),
        ..HarnessOptions::default()
    })
    .await
    .unwrap();
    for e in 0..2 {
        for t in 0..2 {
            h.publish(&assignment(&format!("start-{e}-{t}"), e, t, "111111"))
                .await
                .unwrap();
        }
    }
    h.wait_until_settled(SETTLE).await.unwrap();
    // E-0 leaves now; E-1 leaves next month (scheduled: not open, not late).
    h.publish(&events::employee_departed(
        "leaves",
        &employee(0),
        None,
        None,
    ))
    .await
    .unwrap();
    h.publish(&events::employee_departed(
        "leaves-later",
        &employee(1),
        None,
        Some("2099-01-01T00:00:00Z"),
    ))
    .await
    .unwrap();
    // The later one stays scheduled: wait for the first one's removals,
    // one observation of the time to revocation per removed link.
    h.wait_for(SETTLE, "the departure's two links revoked", |h| {
        h.deliveries_seen() >= h.published
            && sample(&h.metrics_text(), "palworker_revocation_seconds_count") == Some(2.0)
    })
    .await
    .unwrap();
    assert!(
        h.actions_of("leaves")
            .iter()
            .all(|a| a.state == ActionState::Done)
    );

    let dir = tempfile::tempdir().unwrap();
    let json = ["report", "revocations", "--format", "json"];
    let running = ok(&h
        .cli(worker_binary(), dir.path(), &json, &[])
        .await
        .unwrap())
    .to_owned();
    let rows: Vec<serde_json::Value> = running
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(rows.len(), 2, "{running}");
    let now = &rows[0];
    assert_eq!(now["event_id"], "leaves");
    assert_eq!(now["event_type"], "hr.employee.departed");
    assert_eq!(now["employee_ids"], serde_json::json!([employee(0)]));
    assert_eq!(now["tenant_ids"], serde_json::json!([tenant(0), tenant(1)]));
    assert_eq!(
        (now["links_removed"].as_u64(), now["links_open"].as_u64()),
        (Some(2), Some(0))
    );
    assert!(now["last_removed_at"].is_string(), "{now}");
    assert!(now["seconds"].as_f64().is_some_and(|s| s >= 0.0), "{now}");
    let later = &rows[1];
    assert_eq!(later["event_id"], "leaves-later");
    assert_eq!(later["effective_at"], "2099-01-01T00:00:00Z");
    assert_eq!(
        (
            later["links_removed"].as_u64(),
            later["links_open"].as_u64()
        ),
        (Some(0), Some(2))
    );
    assert!(later["last_removed_at"].is_null());

    let csv = ["report", "revocations", "--since", "2098-12-31T00:00:00Z"];
    let output = h.cli(worker_binary(), dir.path(), &csv, &[]).await.unwrap();
    let lines: Vec<&str> = ok(&output).lines().collect();
    assert_eq!(
        lines.len(),
        2,
        "a header and the later departure: {lines:?}"
    );
    assert!(lines[0].starts_with("employee_ids,event_id,event_source,event_type,effective_at"));
    assert!(lines[1].contains(",leaves-later,"), "{}", lines[1]);

    // The stopped worker's ledger gives the same report.
    h.stop_worker().await.unwrap();
    let stopped = h
        .cli(worker_binary(), dir.path(), &json, &[])
        .await
        .unwrap();
    assert_eq!(ok(&stopped), running);
    h.shutdown().await.unwrap();
}
