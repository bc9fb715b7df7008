//! Drift (SPEC §11.3, issue 17): `palworker reconcile` and the periodic
//! `reconcile.interval` read PAL, compare it with the desired links and plan
//! one `palworker.reconcile` event that fixes each difference. Real
//! RabbitMQ, real sled, the simulator over HTTP; links changed behind
//! palworker's back through the simulator itself.

use std::time::Duration;

use palworker::local::identities::{assignment, employee, object, principal, principals, tenant};
use palworker::local::process::CliOutput;
use palworker::local::{Harness, HarnessOptions, events, principal_secret, sample};
use palworker_core::{AuditWhat, ReconcileReport, StatusFilter};
use palworker_sim::RequestRecord;

use crate::worker_binary;

const SETTLE: Duration = Duration::from_secs(60);

/// Employees 0..`employees` linked to `111111` in tenant 0, and employee
/// `employees` — an account without a credential — assigned there too
/// (its action ends `manual`).
async fn linked_harness(employees: usize, extra_toml: &str) -> Harness {
    let mut h = Harness::start(HarnessOptions {
        principals: principals(employees, 1),
        extra_toml: extra_toml.to_owned(),
        ..HarnessOptions::default()
    })
    .await
    .expect("harness starts");
    for e in 0..employees {
        h.publish(&assignment(&format!("start-{e}"), e, 0, "111111"))
            .await
            .unwrap();
    }
    h.publish(&events::assignment_started(
        "start-no-credential",
        &employee(employees),
        &tenant(0),
        &object(employees, 0),
        "111111",
        None,
        None,
    ))
    .await
    .unwrap();
    h.wait_until_settled(SETTLE).await.unwrap();
    for e in 0..employees {
        assert_eq!(h.linked(e, 0).as_deref(), Some("111111"));
    }
    h
}

async fn cli(h: &Harness, args: &[&str]) -> CliOutput {
    let dir = tempfile::tempdir().unwrap();
    let output = h.cli(worker_binary(), dir.path(), args, &[]).await.unwrap();
    assert_eq!(output.code, 0, "{}{}", output.stdout, output.stderr);
    output
}

/// The JSON objects of a command's standard output, one per line.
fn json_lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

/// PUT, PATCH and DELETE requests for employee `e`'s identity in tenant 0.
fn writes_of(h: &Harness, e: usize) -> Vec<RequestRecord> {
    h.requests_of(&tenant(0), &object(e, 0))
        .into_iter()
        .filter(|request| request.method != "GET")
        .collect()
}

fn all_writes(h: &Harness) -> usize {
    h.simulator
        .requests()
        .iter()
        .filter(|request| request.method != "GET")
        .count()
}

fn drift(h: &Harness, kind: &str) -> f64 {
    sample(
        &h.metrics_text(),
        &format!(r#"palworker_drift_total{{kind="{kind}"}}"#),
    )
    .expect("exported from start-up")
}

/// The reconciles in the audit trail: who, and what they found and did.
fn reconciles(h: &Harness) -> Vec<(String, ReconcileReport)> {
    let mut found = Vec::new();
    h.app()
        .ledger
        .for_each_audit_entry(None, None, |entry| {
            if let AuditWhat::Reconcile(report) = entry.what {
                found.push((entry.who, *report));
            }
            true
        })
        .unwrap();
    found
}

fn reconcile_actions(h: &Harness, event_id: &str) -> usize {
    h.app()
        .ledger
        .actions(&StatusFilter {
            event_id: Some(event_id.to_owned()),
            ..Default::default()
        })
        .unwrap()
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_removed_behind_palworkers_back_comes_back_and_an_account_without_credential_is_reported_manual()
 {
    let h = linked_harness(2, "").await;
    for kind in ["missing", "unexpected", "different"] {
        assert_eq!(drift(&h, kind), 0.0, "exported at 0 from start-up");
    }
    assert!(h.simulator.remove_link(&tenant(0), &object(0, 0)));
    let writes_before = all_writes(&h);

    // A dry run prints the differences and changes nothing.
    let dry = cli(&h, &["reconcile", "--dry-run"]).await;
    let mut lines = json_lines(&dry.stdout);
    lines.sort_by_key(|line| line["kind"].as_str().unwrap_or("").to_owned());
    assert_eq!(
        lines,
        vec![
            serde_json::json!({
                "tenant_id": tenant(0),
                "object_id": object(2, 0),
                "employee_id": employee(2),
                "desired": "111111",
                "actual": null,
                "kind": "manual",
            }),
            serde_json::json!({
                "tenant_id": tenant(0),
                "object_id": object(0, 0),
                "employee_id": employee(0),
                "desired": "111111",
                "actual": null,
                "kind": "missing",
            }),
        ],
        "{}",
        dry.stderr
    );
    assert!(
        dry.stderr.contains("Dry run: nothing planned."),
        "{}",
        dry.stderr
    );
    assert_eq!(all_writes(&h), writes_before);
    assert_eq!(h.linked(0, 0), None, "a dry run fixes nothing");
    assert!(reconciles(&h).is_empty(), "a dry run is not recorded");
    assert_eq!(drift(&h, "missing"), 0.0, "a dry run counts nothing");

    // The reconcile plans one event that puts the link back.
    let run = cli(&h, &["reconcile"]).await;
    assert!(run.stdout.contains("manual"), "{}", run.stdout);
    assert!(run.stdout.contains(&object(2, 0)), "{}", run.stdout);
    assert!(run.stdout.contains("Planned event"), "{}", run.stdout);
    h.wait_until_settled(SETTLE).await.unwrap();
    assert_eq!(
        h.linked(0, 0).as_deref(),
        Some("111111"),
        "the link is back"
    );
    let restored = writes_of(&h, 0);
    assert_eq!(
        restored.iter().filter(|r| r.method == "PUT").count(),
        2,
        "the first link and its restoration: one write each ({restored:?})"
    );
    assert_eq!(all_writes(&h), writes_before + 1, "one write in all");
    assert_eq!(drift(&h, "missing"), 1.0);
    assert_eq!(drift(&h, "unexpected"), 0.0);
    assert_eq!(drift(&h, "different"), 0.0);

    let recorded = reconciles(&h);
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    let (who, report) = &recorded[0];
    assert_ne!(who, "palworker", "the operator who ran it");
    assert_eq!(
        (report.accounts, report.read, report.missing, report.manual),
        (3, 2, 1, 1)
    );
    assert_eq!(report.actions, 1);
    assert!(!report.held);
    let event_id = report.event_id.clone().expect("a plan was stored");
    assert!(event_id.starts_with("reconcile-"), "{event_id}");
    assert_eq!(reconcile_actions(&h, &event_id), 1);

    // Nothing differs any more: the next reconcile plans nothing.
    let again = cli(&h, &["reconcile", "--json"]).await;
    let lines = json_lines(&again.stdout);
    assert_eq!(lines.len(), 2, "the manual finding and the report");
    let last: ReconcileReport = serde_json::from_value(lines[1].clone()).unwrap();
    assert_eq!((last.differences(), last.event_id), (0, None));
    assert_eq!(all_writes(&h), writes_before + 1);
    h.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_added_again_by_hand_for_a_departed_employee_goes_away() {
    let mut h = linked_harness(2, "").await;
    h.publish(&events::employee_departed(
        "leaves",
        &employee(1),
        None,
        None,
    ))
    .await
    .unwrap();
    h.wait_until_settled(SETTLE).await.unwrap();
    assert_eq!(h.linked(1, 0), None);
    h.simulator.seed_link(&tenant(0), &object(1, 0), "111111");
    let deletes_before = writes_of(&h, 1)
        .iter()
        .filter(|r| r.method == "DELETE")
        .count();

    let run = cli(&h, &["reconcile", "--json"]).await;
    let lines = json_lines(&run.stdout);
    let unexpected: Vec<_> = lines
        .iter()
        .filter(|line| line["kind"] == "unexpected")
        .collect();
    assert_eq!(unexpected.len(), 1, "{lines:?}");
    assert_eq!(unexpected[0]["object_id"], object(1, 0));
    assert_eq!(unexpected[0]["desired"], serde_json::Value::Null);
    assert_eq!(unexpected[0]["actual"], "111111");
    let report: ReconcileReport = serde_json::from_value(lines.last().unwrap().clone()).unwrap();
    assert_eq!((report.unexpected, report.actions), (1, 1));

    h.wait_until_settled(SETTLE).await.unwrap();
    assert_eq!(h.linked(1, 0), None, "the link is gone again");
    assert_eq!(h.linked(0, 0).as_deref(), Some("111111"), "E-0 untouched");
    let deletes_after = writes_of(&h, 1)
        .iter()
        .filter(|r| r.method == "DELETE")
        .count();
    assert_eq!(deletes_after, deletes_before + 1, "one DELETE");
    assert_eq!(drift(&h, "unexpected"), 1.0);
    h.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_linked_to_another_partner_id_is_corrected_within_the_scope_asked_for() {
    let h = linked_harness(2, "").await;
    h.simulator.seed_link(&tenant(0), &object(0, 0), "999999");
    h.simulator.seed_link(&tenant(0), &object(1, 0), "888888");

    // Only employee 0's accounts in tenant 0.
    let run = cli(
        &h,
        &[
            "reconcile",
            "--tenant",
            &tenant(0),
            "--employee",
            &employee(0),
        ],
    )
    .await;
    assert!(run.stdout.contains("different"), "{}", run.stdout);
    assert!(!run.stdout.contains(&object(1, 0)), "{}", run.stdout);
    h.wait_until_settled(SETTLE).await.unwrap();
    assert_eq!(h.linked(0, 0).as_deref(), Some("111111"), "corrected");
    assert_eq!(
        writes_of(&h, 0)
            .iter()
            .filter(|r| r.method == "PATCH")
            .count(),
        1,
        "one PATCH"
    );
    assert_eq!(
        h.linked(1, 0).as_deref(),
        Some("888888"),
        "outside the scope: left as it is"
    );
    assert_eq!(drift(&h, "different"), 1.0);
    let recorded = reconciles(&h);
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].1.employee_id.as_ref().unwrap().as_str(), "E-0");
    assert_eq!(recorded[0].1.accounts, 1);
    h.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconcile_plan_above_the_limit_waits_for_approval() {
    let h = linked_harness(2, "[limits]\nmax_actions_per_event = 1\n").await;
    assert!(h.simulator.remove_link(&tenant(0), &object(0, 0)));
    assert!(h.simulator.remove_link(&tenant(0), &object(1, 0)));
    let writes_before = all_writes(&h);

    let run = cli(&h, &["reconcile", "--json"]).await;
    let lines = json_lines(&run.stdout);
    let report: ReconcileReport = serde_json::from_value(lines.last().unwrap().clone()).unwrap();
    assert_eq!((report.missing, report.actions, report.held), (2, 2, true));
    let event_id = report.event_id.expect("a plan was stored");
    h.wait_until_settled(SETTLE).await.unwrap();
    assert_eq!(all_writes(&h), writes_before, "nothing written while held");
    assert!(h.metrics_text().contains("palworker_held_plans 1"));

    cli(&h, &["approve", &event_id]).await;
    h.wait_until_settled(SETTLE).await.unwrap();
    assert_eq!(h.linked(0, 0).as_deref(), Some("111111"));
    assert_eq!(h.linked(1, 0).as_deref(), Some("111111"));
    assert_eq!(all_writes(&h), writes_before + 2);
    assert!(h.metrics_text().contains("palworker_held_plans 0"));
    h.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconcile_on_a_stopped_workers_ledger_plans_what_the_worker_then_runs() {
    let mut h = linked_harness(1, "").await;
    h.stop_worker().await.unwrap();
    assert!(h.simulator.remove_link(&tenant(0), &object(0, 0)));
    let run = cli(&h, &["reconcile"]).await;
    assert!(run.stdout.contains("Planned event"), "{}", run.stdout);
    h.start_worker().await.unwrap();
    h.wait_until_settled(SETTLE).await.unwrap();
    assert_eq!(h.linked(0, 0).as_deref(), Some("111111"));
    let recorded = reconciles(&h);
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].1.missing, 1);
    h.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_periodic_reconcile_restores_a_removed_link_as_the_worker() {
    let h = linked_harness(1, "[reconcile]\ninterval = \"1s\"\n").await;
    assert!(h.simulator.remove_link(&tenant(0), &object(0, 0)));
    h.wait_for(SETTLE, "the link restored", |h| {
        h.linked(0, 0).as_deref() == Some("111111")
    })
    .await
    .unwrap();
    let recorded = reconciles(&h);
    assert!(
        recorded
            .iter()
            .any(|(who, report)| who == "palworker" && report.missing == 1),
        "{recorded:?}"
    );
    h.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_whose_link_cannot_be_read_is_reported_unreadable_without_its_secret() {
    let mut h = linked_harness(2, "").await;
    // Employee 0's service principal is deleted from the tenant: its token
    // request fails (AADSTS700016). A stopped worker's ledger, so the
    // reconcile's PAL client holds no token from before.
    h.stop_worker().await.unwrap();
    assert_eq!(
        h.simulator.delete_identity(&tenant(0), &object(0, 0)).len(),
        1
    );
    assert!(h.simulator.remove_link(&tenant(0), &object(1, 0)));
    let run = cli(&h, &["reconcile", "--json"]).await;
    let lines = json_lines(&run.stdout);
    let unreadable: Vec<_> = lines
        .iter()
        .filter(|line| line["kind"] == "unreadable")
        .collect();
    assert_eq!(unreadable.len(), 1, "{lines:?}");
    assert_eq!(unreadable[0]["object_id"], object(0, 0));
    let error = unreadable[0]["error"].as_str().unwrap();
    assert!(error.contains("AADSTS700016"), "{error}");
    let secret = principal_secret(&principal(0, 1));
    assert!(!run.stdout.contains(&secret) && !run.stderr.contains(&secret));
    let report: ReconcileReport = serde_json::from_value(lines.last().unwrap().clone()).unwrap();
    assert_eq!(
        (
            report.read,
            report.unreadable,
            report.missing,
            report.actions
        ),
        (1, 1, 1, 1),
        "what could be read is still fixed"
    );
    h.start_worker().await.unwrap();
    h.wait_until_settled(SETTLE).await.unwrap();
    assert_eq!(h.linked(1, 0).as_deref(), Some("111111"));
    h.shutdown().await.unwrap();
}
