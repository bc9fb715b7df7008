//! The worker as a real process: JSON logs with span fields, and secret
//! hygiene — known secret values never appear in logs (at debug level),
//! metrics, `status`, `audit export` or error messages.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use palworker::clock::SystemClock;
use palworker::harness::{Harness, HarnessOptions, ServicePrincipal, events};

const T1: &str = "11111111-1111-4111-8111-111111111111";
const OBJECT: &str = "00000101-0000-4000-8000-000000000000";
const FOREIGN: &str = "00000202-0000-4000-8000-000000000000";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct BrokerUser(String);

impl Drop for BrokerUser {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["delete_user", &self.0])
            .output();
    }
}

fn rabbitmqctl(args: &[&str]) {
    let output = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

async fn cli(config: &Path, env: &[(String, String)], args: &[&str]) -> String {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_palworker"))
        .arg("--config")
        .arg(config)
        .args(args)
        .envs(env.iter().cloned())
        .output()
        .await
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test]
async fn a_worker_process_logs_json_with_span_fields_and_never_leaks_a_secret() {
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let amqp_password = format!("amqp-pw-{suffix}");
    let amqp_user = BrokerUser(format!("palworker-{}", &suffix[..8]));
    rabbitmqctl(&["add_user", &amqp_user.0, &amqp_password]);
    rabbitmqctl(&["set_permissions", "-p", "/", &amqp_user.0, ".*", ".*", ".*"]);

    let principal = ServicePrincipal {
        credential: "sp-1".into(),
        client_id: "c0000000-0000-4000-8000-000000000001".into(),
        identities: vec![(T1.into(), OBJECT.into())],
    };
    let client_secret = palworker::harness::principal_secret(&principal);
    let port = free_port();
    let unknown_secret = format!("unknown-secret-{suffix}");
    let mut h = Harness::prepare(
        HarnessOptions {
            amqp_url: format!("amqp://{}:{amqp_password}@127.0.0.1:5672/%2f", amqp_user.0),
            principals: vec![principal],
            // A credential the simulator does not know: its token error is logged.
            extra_toml: format!(
                "[http]\nlisten = \"127.0.0.1:{port}\"\n[credentials.unknown]\nclient_id = \"dddddddd-0000-4000-8000-000000000001\"\nclient_secret_env = \"UNKNOWN_SECRET\"\n"
            ),
            extra_env: vec![("UNKNOWN_SECRET".into(), unknown_secret.clone())],
            ..HarnessOptions::default()
        },
        std::sync::Arc::new(SystemClock),
    )
    .await
    .unwrap();
    let admin_token = "harness-admin-token".to_owned();
    let mut env = h.config_env.clone();
    env.push(("RUST_LOG".into(), "debug".into()));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("palworker.toml");
    h.write_config(&config).unwrap();
    let log_path = dir.path().join("worker.log");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_palworker"))
        .arg("--config")
        .arg(&config)
        .args(["--log-format", "json", "run"])
        .envs(env.iter().cloned())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let ready = async {
        loop {
            if let Ok(response) = http.get(format!("{base}/readyz")).send().await
                && response.status() == 200
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), ready)
        .await
        .expect("the worker becomes ready");

    h.publish(&events::assignment_started(
        "linked",
        "E-1",
        T1,
        OBJECT,
        "111111",
        Some("sp-1"),
        None,
    ))
    .await
    .unwrap();
    h.publish(&events::assignment_started(
        "foreign",
        "E-2",
        T1,
        FOREIGN,
        "111111",
        Some("unknown"),
        None,
    ))
    .await
    .unwrap();
    h.publish_raw("hr.employee.departed", b"{oops", "application/json")
        .await
        .unwrap();
    let settled = async {
        loop {
            let status = cli(&config, &env, &["status", "--json"]).await;
            let rows: Vec<serde_json::Value> = status
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            if rows.len() == 2
                && rows
                    .iter()
                    .all(|r| r["state"] == "done" || r["state"] == "failed")
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), settled)
        .await
        .expect("both actions end");

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
        ("status", cli(&config, &env, &["status"]).await),
        (
            "status --json",
            cli(&config, &env, &["status", "--json"]).await,
        ),
        (
            "audit export",
            cli(&config, &env, &["audit", "export"]).await,
        ),
        (
            "inventory list",
            cli(&config, &env, &["inventory", "list", "--json"]).await,
        ),
    ];
    let mut wrong = env.clone();
    wrong.retain(|(k, _)| k != "PALWORKER_HARNESS_ADMIN_TOKEN");
    wrong.push((
        "PALWORKER_HARNESS_ADMIN_TOKEN".into(),
        "not-the-token".into(),
    ));
    outputs.push(("refused command", cli(&config, &wrong, &["status"]).await));
    assert!(
        outputs[1].1.contains("failed") && outputs[3].1.contains("AADSTS700016"),
        "{:?}",
        outputs[3]
    );

    // Graceful stop on SIGTERM: exit 0.
    let pid = child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
    let log = std::fs::read_to_string(&log_path).unwrap();
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
