//! The worker as a real process: JSON logs with span fields, and secret
//! hygiene — known secret values never appear in logs (at debug level),
//! metrics, `status`, `audit export` or error messages.

use std::sync::Arc;
use std::time::Duration;

use palworker::clock::SystemClock;
use palworker::local::broker::BrokerUser;
use palworker::local::identities::{credential, employee, object, principals, tenant};
use palworker::local::process::WorkerProcess;
use palworker::local::{
    ADMIN_TOKEN, ADMIN_TOKEN_ENV, Harness, HarnessOptions, events, free_port, principal_secret,
    wait_until_async,
};

use crate::worker_binary;

#[tokio::test]
async fn a_worker_process_logs_json_with_span_fields_and_never_leaks_a_secret() {
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let amqp_password = format!("amqp-pw-{suffix}");
    let amqp_user =
        BrokerUser::create(format!("palworker-{}", &suffix[..8]), amqp_password.clone())
            .await
            .unwrap();

    // Employee 0's service principal, with one identity: object(0, 0) in tenant 0.
    let principal = principals(1, 1).remove(0);
    let client_secret = principal_secret(&principal);
    let port = free_port().unwrap();
    let unknown_secret = format!("unknown-secret-{suffix}");
    let mut h = Harness::prepare(
        HarnessOptions {
            amqp_url: amqp_user.amqp_url(),
            principals: vec![principal],
            // A credential the simulator does not know: its token error is logged.
            extra_toml: format!(
                "[http]\nlisten = \"127.0.0.1:{port}\"\n[credentials.unknown]\nclient_id = \"dddddddd-0000-4000-8000-000000000001\"\nclient_secret_env = \"UNKNOWN_SECRET\"\n"
            ),
            extra_env: vec![("UNKNOWN_SECRET".into(), unknown_secret.clone())],
            ..HarnessOptions::default()
        },
        Arc::new(SystemClock),
    )
    .await
    .unwrap();
    let admin_token = ADMIN_TOKEN.to_owned();
    // The worker and every CLI command log at debug level.
    h.config_env.push(("RUST_LOG".into(), "debug".into()));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("palworker.toml");
    h.write_config(&config).unwrap();
    let mut worker = WorkerProcess::spawn_with_args(
        worker_binary(),
        &config,
        &["--log-format", "json"],
        &h.config_env,
        &dir.path().join("worker.log"),
    )
    .unwrap();
    // A CLI command against the worker process: what it printed, stdout and stderr.
    let cli = async |h: &Harness, args: &[&str], env: &[(&str, &str)]| {
        let output = h.cli(worker_binary(), dir.path(), args, env).await.unwrap();
        format!("{}{}", output.stdout, output.stderr)
    };

    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    wait_until_async(
        Duration::from_secs(30),
        "the worker becomes ready",
        async || {
            Ok(matches!(
                http.get(format!("{base}/readyz")).send().await,
                Ok(response) if response.status() == 200
            ))
        },
    )
    .await
    .unwrap();

    h.publish(&events::assignment_started(
        "linked",
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
        "foreign",
        &employee(1),
        &tenant(0),
        &object(1, 0),
        "111111",
        Some("unknown"),
        None,
    ))
    .await
    .unwrap();
    h.publish_raw("hr.employee.departed", b"{oops", "application/json")
        .await
        .unwrap();
    wait_until_async(Duration::from_secs(60), "both actions end", async || {
        let status = cli(&h, &["status", "--json"], &[]).await;
        let rows: Vec<serde_json::Value> = status
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        Ok(rows.len() == 2
            && rows
                .iter()
                .all(|r| r["state"] == "done" || r["state"] == "failed"))
    })
    .await
    .unwrap();

    let mut outputs = vec![
        (
            "metrics",
            http.get(format!("{base}/metrics"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
        ),
        ("status", cli(&h, &["status"], &[]).await),
        ("status --json", cli(&h, &["status", "--json"], &[]).await),
        ("audit export", cli(&h, &["audit", "export"], &[]).await),
        (
            "inventory list",
            cli(&h, &["inventory", "list", "--json"], &[]).await,
        ),
    ];
    outputs.push((
        "refused command",
        cli(&h, &["status"], &[(ADMIN_TOKEN_ENV, "not-the-token")]).await,
    ));
    assert!(
        outputs[1].1.contains("failed") && outputs[3].1.contains("AADSTS700016"),
        "{:?}",
        outputs[3]
    );

    // Graceful stop on SIGTERM: exit 0.
    let status = worker.terminate(Duration::from_secs(30)).await.unwrap();
    assert!(status.success(), "{status:?}");
    let log = worker.log();
    outputs.push(("log", log.clone()));

    for secret in [
        &client_secret,
        &unknown_secret,
        &amqp_password,
        &admin_token,
    ] {
        for (name, text) in &outputs {
            assert!(
                !text.contains(secret.as_str()),
                "a secret appears in {name}"
            );
        }
    }

    // Every log line is JSON; lines about an action carry the span fields.
    let mut action_lines = 0;
    for line in log.lines() {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        if value["message"] == "Action finished." || value["message"] == "Action failed." {
            action_lines += 1;
            let span = &value["span"];
            for field in ["event_id", "action_id", "tenant_id", "employee_id"] {
                assert!(span.get(field).is_some(), "span lacks {field}: {line}");
            }
        }
    }
    assert_eq!(action_lines, 2, "one line per finished action");
    assert!(log.contains("\"message\":\"Message dead-lettered.\""));
    h.shutdown().await.unwrap();
}
