//! The command line's contract (SPEC §8): exit 0 on success, 2 on usage or
//! configuration errors, 1 on other failures, one clear line on stderr.

use palworker::local::process::{CliOutput, run_cli};

use crate::worker_binary;

fn config(dir: &std::path::Path, toml: &str) -> String {
    let path = dir.join("palworker.toml");
    std::fs::write(&path, toml).unwrap();
    path.to_string_lossy().into_owned()
}

#[tokio::test]
async fn plain_http_to_a_non_loopback_pal_endpoint_is_refused_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = config(
        dir.path(),
        "[pal]\narm_endpoint = \"http://management.example.com\"\n",
    );
    let CliOutput { code, stderr, .. } = run_cli(worker_binary(), &["--config", &path, "run"], &[])
        .await
        .unwrap();
    assert_eq!(code, 2);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("`pal.arm_endpoint`") && stderr.contains("plain http is refused"),
        "{stderr}"
    );
}

#[tokio::test]
async fn an_invalid_setting_from_the_environment_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = config(dir.path(), "");
    let CliOutput { code, stderr, .. } = run_cli(
        worker_binary(),
        &["--config", &path, "run"],
        &[("PALWORKER__RETRY__MULTIPLIER".into(), "0.5".into())],
    )
    .await
    .unwrap();
    assert_eq!(code, 2);
    assert!(stderr.contains("config key `retry.multiplier`"), "{stderr}");
}

#[tokio::test]
async fn a_missing_config_file_is_a_configuration_error() {
    let CliOutput { code, stderr, .. } = run_cli(
        worker_binary(),
        &["--config", "/nonexistent/palworker.toml", "status"],
        &[],
    )
    .await
    .unwrap();
    assert_eq!(code, 2);
    assert!(stderr.contains("/nonexistent/palworker.toml"), "{stderr}");
}

#[tokio::test]
async fn usage_errors_exit_2() {
    let CliOutput { code, stderr, .. } = run_cli(worker_binary(), &["retry"], &[]).await.unwrap();
    assert_eq!(code, 2, "{stderr}");
    let CliOutput { code, .. } = run_cli(worker_binary(), &["no-such-command"], &[])
        .await
        .unwrap();
    assert_eq!(code, 2);
}

#[tokio::test]
async fn plan_and_publish_refuse_an_invalid_event_file_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger");
    let path = config(
        dir.path(),
        &format!("[ledger]\npath = \"{}\"\n", ledger.display()),
    );
    let event = dir.path().join("event.json");
    std::fs::write(
        &event,
        r#"{"specversion":"1.0","id":"x","source":"urn:t","type":"partner.id.changed","time":"2026-11-29T09:00:00Z","data":{"old_partner_id":"12","new_partner_id":"1a"}}"#,
    )
    .unwrap();
    let event = event.to_string_lossy().into_owned();
    let CliOutput { code, stderr, .. } = run_cli(
        worker_binary(),
        &["--config", &path, "plan", "--event", &event],
        &[],
    )
    .await
    .unwrap();
    assert_eq!(code, 2);
    assert!(
        stderr.contains("invalid_field: data.new_partner_id"),
        "{stderr}"
    );
    let CliOutput { code, stderr, .. } = run_cli(
        worker_binary(),
        &["--config", &path, "publish", &event],
        &[],
    )
    .await
    .unwrap();
    assert_eq!(code, 2);
    assert!(stderr.contains("--no-validate"), "{stderr}");
}

#[tokio::test]
async fn inventory_import_reports_the_line_and_field_of_a_bad_row_and_imports_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger");
    let path = config(
        dir.path(),
        &format!("[ledger]\npath = \"{}\"\n", ledger.display()),
    );
    let csv = dir.path().join("accounts.csv");
    std::fs::write(
        &csv,
        "tenant_id,object_id,employee_id,credential,partner_id\n\
         11111111-1111-4111-8111-111111111111,00000101-0000-4000-8000-000000000000,E-1,sp-1,123\n\
         not-a-guid,00000102-0000-4000-8000-000000000000,E-2,,\n",
    )
    .unwrap();
    let csv = csv.to_string_lossy().into_owned();
    let CliOutput { code, stderr, .. } = run_cli(
        worker_binary(),
        &["--config", &path, "inventory", "import", &csv],
        &[],
    )
    .await
    .unwrap();
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("line 3: tenant_id: is not a GUID"),
        "{stderr}"
    );
    let CliOutput { code, stdout, .. } = run_cli(
        worker_binary(),
        &["--config", &path, "inventory", "list", "--json"],
        &[],
    )
    .await
    .unwrap();
    assert_eq!(code, 0);
    assert_eq!(stdout, "", "nothing imported");

    std::fs::write(
        dir.path().join("accounts.csv"),
        "tenant_id,object_id,employee_id,credential,partner_id\n\
         11111111-1111-4111-8111-111111111111,00000101-0000-4000-8000-000000000000,E-1,sp-1,123\n",
    )
    .unwrap();
    let CliOutput {
        code,
        stdout,
        stderr,
    } = run_cli(
        worker_binary(),
        &["--config", &path, "inventory", "import", &csv],
        &[],
    )
    .await
    .unwrap();
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("imported 1 account(s)"));
    let CliOutput { stdout, .. } = run_cli(
        worker_binary(),
        &["--config", &path, "inventory", "list", "--employee", "E-1"],
        &[],
    )
    .await
    .unwrap();
    assert!(
        stdout.contains("123") && stdout.contains("sp-1"),
        "{stdout}"
    );
}
