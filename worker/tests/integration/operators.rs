//! Operators in control (SPEC §7, §8): held plans, dry run, the publisher
//! allow-list, the admin API and CLI against a running worker, certificate
//! credentials. Real RabbitMQ, real sled, the simulator over HTTP.

use std::path::Path;
use std::time::Duration;

use palworker::amqp::Publisher;
use palworker::local::broker::BrokerUser;
use palworker::local::identities::{credential, employee, object, principals, tenant};
use palworker::local::process::CliOutput;
use palworker::local::{ADMIN_TOKEN_ENV, Harness, HarnessOptions, events};
use palworker_core::{ActionState, StatusFilter};
use palworker_sim::{FaultProfile, Faults, SimClient};

use crate::worker_binary;

const SETTLE: Duration = Duration::from_secs(60);

/// Employees 0..3, each a service principal with an identity in tenants 0..2.
async fn harness(extra_toml: &str) -> Harness {
    Harness::start(HarnessOptions {
        principals: principals(3, 2),
        extra_toml: extra_toml.to_owned(),
        ..HarnessOptions::default()
    })
    .await
    .expect("harness starts")
}

/// Links employees 0..3 in tenant 0 to `partner`.
async fn link_everyone(h: &mut Harness, partner: &str) {
    for e in 0..3 {
        h.publish(&events::assignment_started(
            &format!("start-{e}"),
            &employee(e),
            &tenant(0),
            &object(e, 0),
            partner,
            Some(&credential(e)),
            None,
        ))
        .await
        .unwrap();
    }
    h.wait_until_settled(SETTLE).await.unwrap();
}

fn writes(h: &Harness) -> usize {
    h.simulator
        .requests()
        .iter()
        .filter(|r| r.method != "GET")
        .count()
}

#[tokio::test]
async fn a_held_plan_writes_nothing_until_approved_and_a_rejected_one_never() {
    let mut h = harness("[limits]\nmax_actions_per_event = 1\n").await;
    link_everyone(&mut h, "111111").await;
    let before = writes(&h);

    h.publish(&events::partner_id_changed(
        "big-change",
        "111111",
        "222222",
        None,
    ))
    .await
    .unwrap();
    h.wait_until_settled(SETTLE).await.unwrap();
    assert_eq!(writes(&h), before, "nothing written while held");
    let metrics = h.metrics_text();
    assert!(
        metrics.contains(r#"palworker_events_total{outcome="held",type="partner.id.changed"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics
            .contains(r#"palworker_events_total{outcome="accepted",type="partner.id.changed"} 0"#)
    );
    assert!(metrics.contains("palworker_held_plans 1"));
    let held = h
        .app()
        .ledger
        .actions(&StatusFilter {
            event_id: Some("big-change".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(held.len(), 3);
    assert!(held.iter().all(|a| a.state == ActionState::Held));

    // A later event is not blocked by the held plan.
    h.publish(&events::assignment_ended("end-2", "E-2", &tenant(0)))
        .await
        .unwrap();
    h.wait_until_settled(SETTLE).await.unwrap();
    assert_eq!(h.linked(2, 0), None);

    // Approve through the running worker's admin API, via the CLI.
    let dir = tempfile::tempdir().unwrap();
    let CliOutput {
        code,
        stdout,
        stderr,
    } = h
        .cli(worker_binary(), dir.path(), &["approve", "big-change"], &[])
        .await
        .unwrap();
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("2 action(s) released, 1 cancelled"),
        "{stdout}"
    );
    h.wait_until_settled(SETTLE).await.unwrap();
    assert_eq!(h.linked(0, 0).as_deref(), Some("222222"));
    assert_eq!(h.linked(1, 0).as_deref(), Some("222222"));
    assert_eq!(h.linked(2, 0), None, "the later event won for E-2");
    assert!(h.metrics_text().contains("palworker_held_plans 0"));

    // A rejected plan writes nothing, ever.
    h.publish(&events::partner_id_changed(
        "rejected-change",
        "222222",
        "333333",
        None,
    ))
    .await
    .unwrap();
    h.wait_until_settled(SETTLE).await.unwrap();
    let before_reject = writes(&h);
    let CliOutput {
        code,
        stdout,
        stderr,
    } = h
        .cli(
            worker_binary(),
            dir.path(),
            &["reject", "rejected-change"],
            &[],
        )
        .await
        .unwrap();
    assert_eq!(code, 0, "{stdout}{stderr}");
    // Approving after rejecting is refused.
    let CliOutput { code, stderr, .. } = h
        .cli(
            worker_binary(),
            dir.path(),
            &["approve", "rejected-change"],
            &[],
        )
        .await
        .unwrap();
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("not held"), "{stderr}");
    h.wait_until_settled(SETTLE).await.unwrap();
    assert_eq!(writes(&h), before_reject);
    assert_eq!(h.linked(0, 0).as_deref(), Some("222222"));
    let rejected = h
        .app()
        .ledger
        .actions(&StatusFilter {
            event_id: Some("rejected-change".into()),
            ..Default::default()
        })
        .unwrap();
    assert!(rejected.iter().all(|a| a.state == ActionState::Cancelled));
    h.shutdown().await.unwrap();
}

#[tokio::test]
async fn dry_run_reads_pal_records_what_it_would_do_and_writes_nothing() {
    let mut h = harness("[worker]\ndry_run = true\n").await;
    h.simulator.seed_link(&tenant(0), &object(0, 0), "999999");
    link_everyone(&mut h, "111111").await;
    assert_eq!(writes(&h), 0);
    assert!(
        h.simulator.requests().iter().any(|r| r.method == "GET"),
        "PAL was read"
    );
    let actions = h.app().ledger.actions(&StatusFilter::default()).unwrap();
    assert_eq!(actions.len(), 3);
    for action in &actions {
        assert!(action.dry_run);
        assert_eq!(
            action.state,
            ActionState::Skipped,
            "never done (SPEC §11.2)"
        );
        let detail = action.detail.as_deref().unwrap();
        assert!(detail.starts_with("dry run: would"), "{detail}");
    }
    let e0 = actions
        .iter()
        .find(|a| a.employee_id.as_str() == employee(0))
        .unwrap();
    assert_eq!(
        e0.detail.as_deref(),
        Some("dry run: would PATCH 111111; nothing was written")
    );
    assert_eq!(
        e0.before_partner_id.as_ref().map(|p| p.as_str()),
        Some("999999")
    );
    assert_eq!(h.linked(0, 0).as_deref(), Some("999999"));
    assert_eq!(h.linked(1, 0), None);
    assert_eq!(h.app().metrics.actions_ended(ActionState::Skipped), 3);
    assert_eq!(h.app().metrics.actions_ended(ActionState::Done), 0);
    h.shutdown().await.unwrap();
}

#[tokio::test]
async fn only_allow_listed_publishers_may_publish_their_event_types() {
    let suffix = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let allowed = BrokerUser::create(format!("hr-{suffix}"), "allowed-pw".into())
        .await
        .unwrap();
    let intruder = BrokerUser::create(format!("intruder-{suffix}"), "intruder-pw".into())
        .await
        .unwrap();
    let mut h = harness(&format!(
        "[security.publishers]\n\"{}\" = [\"project.\"]\n",
        allowed.name()
    ))
    .await;
    let event = events::assignment_started(
        "from-someone",
        &employee(0),
        &tenant(0),
        &object(0, 0),
        "111111",
        Some(&credential(0)),
        None,
    );

    let publisher = Publisher::connect(&intruder.amqp_url(), &h.settings.amqp.exchange)
        .await
        .unwrap();
    publisher
        .publish_event(&event, Some(intruder.name()))
        .await
        .unwrap();
    publisher.close().await;
    // The allowed user, but an event type outside its prefixes.
    let publisher = Publisher::connect(&allowed.amqp_url(), &h.settings.amqp.exchange)
        .await
        .unwrap();
    publisher
        .publish_event(
            &events::employee_departed("not-mine", &employee(0), None, None),
            Some(allowed.name()),
        )
        .await
        .unwrap();
    h.published += 2;
    h.wait_until_settled(SETTLE).await.unwrap();
    assert_eq!(h.linked(0, 0), None, "nothing changed");
    let dead = h.dead_letters().await.unwrap();
    assert_eq!(dead.len(), 2);
    for message in &dead {
        assert!(
            message
                .reason
                .as_deref()
                .unwrap()
                .starts_with("publisher_not_allowed"),
            "{:?}",
            message.reason
        );
    }

    // The allowed user's identical event is processed.
    publisher
        .publish_event(&event, Some(allowed.name()))
        .await
        .unwrap();
    publisher.close().await;
    h.published += 1;
    h.wait_until_settled(SETTLE).await.unwrap();
    assert_eq!(h.linked(0, 0).as_deref(), Some("111111"));
    let record = h.app().ledger.resolve_event("from-someone", None).unwrap();
    assert_eq!(record.publisher.as_deref(), Some(allowed.name()));
    assert!(
        h.metrics_text()
            .contains(r#"palworker_dead_letters_total{reason="publisher_not_allowed"} 2"#)
    );
    h.shutdown().await.unwrap();
}

#[tokio::test]
async fn operator_commands_work_against_a_running_worker_and_need_the_admin_token() {
    let mut h = harness("[retry]\nmax_elapsed = \"1s\"\ninitial_interval = \"100ms\"\n").await;
    // E-0's tenant fails for good (every request 503) until we fix it.
    let mut faults = Faults::default();
    faults.per_tenant.insert(
        tenant(0),
        FaultProfile {
            rate_5xx: 1.0,
            ..Default::default()
        },
    );
    h.simulator.set_faults(faults);
    h.publish(&events::assignment_started(
        "a1",
        &employee(0),
        &tenant(0),
        &object(0, 0),
        "111111",
        Some(&credential(0)),
        None,
    ))
    .await
    .unwrap();
    h.publish(&events::assignment_started(
        "a2",
        &employee(1),
        &tenant(1),
        &object(1, 1),
        "111111",
        None,
        None,
    ))
    .await
    .unwrap();
    h.wait_until_settled(SETTLE).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // `--operator admin` names the token: the CLI goes over TCP with it
    // (without it, this OS user would go through the admin socket, tested
    // in `local_operator`).
    let cli = async |args: &[&str]| {
        let args: Vec<&str> = ["--operator", "admin"]
            .iter()
            .chain(args)
            .copied()
            .collect();
        h.cli(worker_binary(), dir.path(), &args, &[])
            .await
            .unwrap()
    };

    // status --json: one JSON object per action with the contract's fields.
    let CliOutput {
        code,
        stdout,
        stderr,
    } = cli(&["status", "--json"]).await;
    assert_eq!(code, 0, "{stderr}");
    let rows: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    for field in [
        "action_id",
        "event_id",
        "event_source",
        "event_type",
        "tenant_id",
        "object_id",
        "employee_id",
        "op",
        "desired_partner_id",
        "state",
        "attempts",
        "last_error",
        "created_at",
        "updated_at",
        "next_attempt_at",
    ] {
        assert!(
            rows[0].get(field).is_some(),
            "status --json lacks {field}: {}",
            rows[0]
        );
    }
    let failed = rows.iter().find(|r| r["event_id"] == "a1").unwrap();
    assert_eq!(failed["state"], "failed");
    assert!(
        failed["last_error"]
            .as_str()
            .unwrap()
            .contains("retry budget exhausted")
    );
    let CliOutput { stdout, .. } = cli(&["status", "--manual", "--json"]).await;
    assert_eq!(stdout.lines().count(), 1);
    assert!(stdout.contains("\"state\":\"manual\""));
    let CliOutput { stdout, .. } = cli(&["status", "--tenant", &tenant(1)]).await;
    assert!(
        stdout.contains("manual") && !stdout.contains(" a1 "),
        "{stdout}"
    );

    // With a wrong token, or none, the admin API refuses.
    let CliOutput { code, stderr, .. } = h
        .cli(
            worker_binary(),
            dir.path(),
            &["--operator", "admin", "status"],
            &[(ADMIN_TOKEN_ENV, "wrong-token")],
        )
        .await
        .unwrap();
    assert_eq!(code, 1);
    assert!(stderr.contains("401"), "{stderr}");
    let raw = reqwest::Client::new()
        .get(format!("http://{}/admin/status", h.app().http_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 401);

    // retry --failed after the outage is over.
    h.simulator.set_faults(Faults::default());
    let CliOutput {
        code,
        stdout,
        stderr,
    } = cli(&["retry", "--failed"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("queued 1 action(s)"), "{stdout}");
    h.wait_until_settled(SETTLE).await.unwrap();
    assert_eq!(h.linked(0, 0).as_deref(), Some("111111"));

    // audit export: the trail, every outcome with before/after and
    // attempts, and the retry with the name of the token that asked.
    let CliOutput {
        code,
        stdout,
        stderr,
    } = cli(&["audit", "export"]).await;
    assert_eq!(code, 0, "{stderr}");
    let audit: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let outcomes: Vec<&serde_json::Value> = audit
        .iter()
        .filter(|r| r["kind"] == "action_outcome")
        .collect();
    assert_eq!(outcomes.len(), 3, "{stdout}");
    assert!(
        outcomes
            .iter()
            .any(|r| r["event_id"] == "a1" && r["outcome"] == "failed")
    );
    assert!(
        outcomes
            .iter()
            .any(|r| r["event_id"] == "a2" && r["outcome"] == "manual")
    );
    let done = outcomes
        .iter()
        .find(|r| r["event_id"] == "a1" && r["outcome"] == "done")
        .unwrap();
    assert_eq!(done["after_partner_id"], "111111");
    assert!(done["attempts"].as_u64().unwrap() >= 1);
    let retries: Vec<&serde_json::Value> = audit.iter().filter(|r| r["kind"] == "retry").collect();
    assert_eq!(retries.len(), 1, "{stdout}");
    assert_eq!(retries[0]["who"], "admin");
    assert_eq!(retries[0]["event_id"], "a1");
    let CliOutput { stdout, .. } =
        cli(&["audit", "export", "--since", "2999-01-01T00:00:00Z"]).await;
    assert_eq!(stdout, "");
    let CliOutput { stdout, .. } =
        cli(&["audit", "export", "--until", "2000-01-01T00:00:00Z"]).await;
    assert_eq!(stdout, "");

    // inventory list and plan go through the admin API as well.
    let CliOutput { code, stdout, .. } =
        cli(&["inventory", "list", "--employee", &employee(0), "--json"]).await;
    assert_eq!(code, 0);
    assert_eq!(stdout.lines().count(), 1);
    let event_file = dir.path().join("departure.json");
    std::fs::write(
        &event_file,
        events::employee_departed("preview", &employee(0), None, None).to_string(),
    )
    .unwrap();
    let CliOutput {
        code,
        stdout,
        stderr,
    } = cli(&["plan", "--event", event_file.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{stderr}");
    let plan: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(plan["actions"].as_array().unwrap().len(), 1);
    assert_eq!(plan["actions"][0]["op"], "remove");
    assert_eq!(
        h.app()
            .ledger
            .actions(&StatusFilter::default())
            .unwrap()
            .len(),
        2,
        "plan changed nothing"
    );
    h.shutdown().await.unwrap();
}

#[tokio::test]
async fn operator_commands_work_on_a_stopped_workers_ledger() {
    let mut h = harness("").await;
    link_everyone(&mut h, "111111").await;
    h.stop_worker().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cli = async |args: &[&str]| h.cli(worker_binary(), dir.path(), args, &[]).await.unwrap();
    let CliOutput {
        code,
        stdout,
        stderr,
    } = cli(&["status", "--json"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.lines().count(), 3);
    assert!(stdout.lines().all(|l| l.contains("\"state\":\"done\"")));
    let CliOutput { code, stdout, .. } = cli(&["audit", "export"]).await;
    assert_eq!(code, 0);
    assert_eq!(stdout.lines().count(), 3);
    let CliOutput { code, stderr, .. } = cli(&["approve", "nope"]).await;
    assert_eq!(code, 1);
    assert!(
        stderr.contains("no accepted event has id `nope`"),
        "{stderr}"
    );
    h.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_certificate_credential_obtains_tokens_with_a_signed_client_assertion() {
    let testdata = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sim/src/testdata");
    let dir = tempfile::tempdir().unwrap();
    let pem_path = dir.path().join("cert-and-key.pem");
    let certificate = std::fs::read_to_string(testdata.join("client.cert.pem")).unwrap();
    let key = std::fs::read_to_string(testdata.join("client.key.pem")).unwrap();
    std::fs::write(&pem_path, format!("{certificate}{key}")).unwrap();
    let client_id = "cccccccc-0000-4000-8000-000000000001";
    let mut h = harness(&format!(
        "[credentials.cert]\nclient_id = \"{client_id}\"\ncertificate_file = \"{}\"\n",
        pem_path.display()
    ))
    .await;
    h.simulator.add_client(
        SimClient::with_certificate(client_id, certificate).identity(&tenant(0), &object(9, 0)),
    );
    h.publish(&events::assignment_started(
        "cert",
        &employee(9),
        &tenant(0),
        &object(9, 0),
        "111111",
        Some("cert"),
        None,
    ))
    .await
    .unwrap();
    h.wait_until_settled(SETTLE).await.unwrap();
    assert_eq!(h.linked(9, 0).as_deref(), Some("111111"));
    let token_requests = h.simulator.token_requests();
    assert_eq!(token_requests.len(), 1, "{token_requests:?}");
    h.shutdown().await.unwrap();
}
