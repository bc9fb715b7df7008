//! Months unattended (SPEC §11.2): what the gauges and histograms say of
//! work announced ahead, pausing writes, the audit trail, and a ledger's
//! export and import. Real RabbitMQ, real sled, the simulator over HTTP,
//! the CLI as a process.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DurationRound, TimeDelta, Utc};
use palworker::clock::{Clock, ManualClock};
use palworker::local::identities::{assignment, employee, principals};
use palworker::local::process::CliOutput;
use palworker::local::{Harness, HarnessOptions, events, sample};
use palworker_core::ActionState;

use crate::worker_binary;

const SETTLE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_departure_dated_next_month_is_scheduled_not_pending_and_completes_from_its_date() {
    let clock = Arc::new(ManualClock::new(
        Utc::now().duration_trunc(TimeDelta::seconds(1)).unwrap(),
    ));
    let mut h = Harness::start_with_clock(
        HarnessOptions {
            principals: principals(1, 2),
            ..HarnessOptions::default()
        },
        clock.clone(),
    )
    .await
    .unwrap();
    for t in 0..2 {
        h.publish(&assignment(&format!("start-{t}"), 0, t, "111111"))
            .await
            .unwrap();
    }
    h.wait_until_settled(SETTLE).await.unwrap();

    let effective = clock.now() + TimeDelta::days(30);
    h.publish(&events::employee_departed(
        "departure",
        &employee(0),
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
    let metrics = h.metrics_text();
    assert_eq!(sample(&metrics, "palworker_actions_scheduled"), Some(2.0));
    assert_eq!(sample(&metrics, "palworker_actions_pending"), Some(0.0));
    let completion_before =
        sample(&metrics, "palworker_event_completion_seconds_sum").unwrap_or(0.0);

    clock.set(effective + TimeDelta::seconds(5));
    h.app().executor.wake();
    h.wait_until_settled(SETTLE).await.unwrap();
    assert_eq!(h.linked(0, 0), None);
    assert_eq!(h.linked(0, 1), None);
    let metrics = h.metrics_text();
    assert_eq!(sample(&metrics, "palworker_actions_scheduled"), Some(0.0));
    assert_eq!(sample(&metrics, "palworker_actions_pending"), Some(0.0));
    let completion =
        sample(&metrics, "palworker_event_completion_seconds_sum").unwrap() - completion_before;
    assert!(
        (5.0..60.0).contains(&completion),
        "the departure took {completion} s from its effective_at, not a month from acceptance"
    );
    h.shutdown().await.unwrap();
}

/// The environment variable the second operator's token is read from.
const ALICE_TOKEN_ENV: &str = "PALWORKER_TEST_ALICE_TOKEN";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_writes_nothing_survives_a_restart_and_resume_runs_each_action_once() {
    let mut h = Harness::start(HarnessOptions {
        principals: principals(1, 2),
        extra_toml: format!("[http.admin_tokens.alice]\nenv = \"{ALICE_TOKEN_ENV}\"\n"),
        extra_env: vec![(ALICE_TOKEN_ENV.to_owned(), "alice-secret-token".to_owned())],
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
    let dir = tempfile::tempdir().unwrap();
    let cli = async |h: &Harness, args: &[&str]| {
        h.cli(worker_binary(), dir.path(), args, &[]).await.unwrap()
    };

    let CliOutput {
        code,
        stdout,
        stderr,
    } = cli(&h, &["--operator", "alice", "pause"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("paused writes to PAL"), "{stdout}");
    assert_eq!(sample(&h.metrics_text(), "palworker_paused"), Some(1.0));
    let writes_before = h.answered_writes();
    h.publish(&events::employee_departed(
        "departure",
        &employee(0),
        None,
        None,
    ))
    .await
    .unwrap();
    h.wait_for(SETTLE, "the departure is accepted", |h| {
        h.deliveries_seen() >= h.published
    })
    .await
    .unwrap();
    let pending = |h: &Harness| {
        h.actions_of("departure")
            .iter()
            .filter(|a| a.state == ActionState::Pending)
            .count()
    };
    assert_eq!(pending(&h), 2, "accepted and planned while paused");

    // An operator's pause is kept in the ledger: a restarted worker is paused.
    h.stop_worker().await.unwrap();
    h.start_worker().await.unwrap();
    assert_eq!(sample(&h.metrics_text(), "palworker_paused"), Some(1.0));
    assert_eq!(pending(&h), 2);
    assert_eq!(
        h.answered_writes(),
        writes_before,
        "nothing written while paused"
    );

    let CliOutput {
        code,
        stdout,
        stderr,
    } = cli(&h, &["resume"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("resumed writes to PAL"), "{stdout}");
    h.wait_until_settled(SETTLE).await.unwrap();
    assert_eq!(h.linked(0, 0), None);
    assert_eq!(h.linked(0, 1), None);
    assert_eq!(sample(&h.metrics_text(), "palworker_paused"), Some(0.0));
    let removals = h
        .simulator
        .requests()
        .into_iter()
        .filter(|r| r.method == "DELETE")
        .count();
    assert_eq!(removals, 2, "each removal written once");

    // The audit trail names who paused and who resumed, and its chain holds.
    let CliOutput {
        code,
        stdout,
        stderr,
    } = cli(&h, &["audit", "export"]).await;
    assert_eq!(code, 0, "{stderr}");
    let trail: Vec<serde_json::Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let by_kind = |kind: &str| -> Vec<&serde_json::Value> {
        trail.iter().filter(|r| r["kind"] == kind).collect()
    };
    let pauses = by_kind("pause");
    let resumes = by_kind("resume");
    assert_eq!(pauses.len(), 1, "{stdout}");
    assert_eq!(pauses[0]["who"], "alice");
    assert_eq!(resumes.len(), 1, "{stdout}");
    // `resume` without `--operator` went through the admin socket: the OS
    // user who ran it.
    assert_eq!(
        resumes[0]["who"],
        palworker::operators::Operator::local_user().as_str()
    );
    let outcomes = by_kind("action_outcome");
    assert_eq!(outcomes.len(), 4, "two links, two removals: {stdout}");
    assert!(outcomes.iter().all(|r| r["who"] == "palworker"));
    for (n, record) in trail.iter().enumerate() {
        assert_eq!(record["seq"], n as u64);
        assert_eq!(record["prev_hash"].as_str().unwrap().len(), 64);
    }
    let CliOutput {
        code,
        stdout,
        stderr,
    } = cli(&h, &["audit", "verify"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("intact"), "{stdout}");
    h.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ledger_exported_from_a_running_worker_and_imported_gives_the_same_answers() {
    let mut h = Harness::start(HarnessOptions {
        principals: principals(2, 2),
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
    h.publish(&events::employee_departed(
        "departure",
        &employee(1),
        None,
        None,
    ))
    .await
    .unwrap();
    h.wait_until_settled(SETTLE).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let export = dir.path().join("ledger.jsonl");
    let export_arg = export.to_str().unwrap();
    let restored = dir.path().join("restored");
    let restored_arg = restored.to_str().unwrap();
    let on_restored = [("PALWORKER__LEDGER__PATH", restored_arg)];
    let answers = async |h: &Harness, env: &[(&str, &str)]| {
        let mut answers = Vec::new();
        for args in [
            &["status", "--json"][..],
            &["inventory", "list", "--json"],
            &["audit", "export"],
        ] {
            let CliOutput {
                code,
                stdout,
                stderr,
            } = h.cli(worker_binary(), dir.path(), args, env).await.unwrap();
            assert_eq!(code, 0, "{args:?}: {stderr}");
            assert!(!stdout.is_empty(), "{args:?} answered nothing");
            answers.push(stdout);
        }
        answers
    };

    let CliOutput {
        code,
        stdout,
        stderr,
    } = h
        .cli(
            worker_binary(),
            dir.path(),
            &["ledger", "export", export_arg],
            &[],
        )
        .await
        .unwrap();
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("exported"), "{stdout}");
    let before = answers(&h, &[]).await;

    // A ledger that exists already is never overwritten.
    let CliOutput { code, stderr, .. } = h
        .cli(
            worker_binary(),
            dir.path(),
            &["ledger", "import", export_arg],
            &[],
        )
        .await
        .unwrap();
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("exists"), "{stderr}");

    let CliOutput {
        code,
        stdout,
        stderr,
    } = h
        .cli(
            worker_binary(),
            dir.path(),
            &["ledger", "import", export_arg],
            &on_restored,
        )
        .await
        .unwrap();
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("imported"), "{stdout}");

    // A worker started on the restored ledger answers the same.
    h.stop_worker().await.unwrap();
    h.settings.ledger.path = restored.clone();
    h.start_worker().await.unwrap();
    let after = answers(&h, &on_restored).await;
    assert_eq!(before[0], after[0], "status --json");
    assert_eq!(before[1], after[1], "inventory list --json");
    assert_eq!(before[2], after[2], "audit export");
    let CliOutput { code, stderr, .. } = h
        .cli(
            worker_binary(),
            dir.path(),
            &["audit", "verify"],
            &on_restored,
        )
        .await
        .unwrap();
    assert_eq!(code, 0, "{stderr}");
    h.shutdown().await.unwrap();
}
