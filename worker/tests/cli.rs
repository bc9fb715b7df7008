//! The command line's contract (SPEC §8): exit 0 on success, 2 on usage or
//! configuration errors, 1 on other failures, one clear line on stderr.

use std::process::Command;

fn palworker(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_palworker"));
    command.args(args).env_remove("RUST_LOG");
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().expect("the binary runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn config(dir: &std::path::Path, toml: &str) -> String {
    let path = dir.join("palworker.toml");
    std::fs::write(&path, toml).unwrap();
    path.to_string_lossy().into_owned()
}

#[test]
fn plain_http_to_a_non_loopback_pal_endpoint_is_refused_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = config(
        dir.path(),
        "[pal]\narm_endpoint = \"http://management.example.com\"\n",
    );
    let (code, _, stderr) = palworker(&["--config", &path, "run"], &[]);
    assert_eq!(code, 2);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("`pal.arm_endpoint`") && stderr.contains("plain http is refused"),
        "{stderr}"
    );
}

#[test]
fn an_invalid_setting_from_the_environment_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = config(dir.path(), "");
    let (code, _, stderr) = palworker(
        &["--config", &path, "run"],
        &[("PALWORKER__RETRY__MULTIPLIER", "0.5")],
    );
    assert_eq!(code, 2);
    assert!(stderr.contains("config key `retry.multiplier`"), "{stderr}");
}

#[test]
fn a_missing_config_file_is_a_configuration_error() {
    let (code, _, stderr) = palworker(&["--config", "/nonexistent/palworker.toml", "status"], &[]);
    assert_eq!(code, 2);
    assert!(stderr.contains("/nonexistent/palworker.toml"), "{stderr}");
}

#[test]
fn usage_errors_exit_2() {
    let (code, _, stderr) = palworker(&["retry"], &[]);
    assert_eq!(code, 2, "{stderr}");
    let (code, _, _) = palworker(&["no-such-command"], &[]);
    assert_eq!(code, 2);
}

#[test]
fn plan_and_publish_refuse_an_invalid_event_file_with_its_reason() {
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
    let (code, _, stderr) = palworker(&["--config", &path, "plan", "--event", &event], &[]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("invalid_field: data.new_partner_id"),
        "{stderr}"
    );
    let (code, _, stderr) = palworker(&["--config", &path, "publish", &event], &[]);
    assert_eq!(code, 2);
    assert!(stderr.contains("--no-validate"), "{stderr}");
}

#[test]
fn inventory_import_reports_the_line_and_field_of_a_bad_row_and_imports_nothing() {
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
    let (code, _, stderr) = palworker(&["--config", &path, "inventory", "import", &csv], &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("line 3: tenant_id: is not a GUID"),
        "{stderr}"
    );
    let (code, stdout, _) = palworker(&["--config", &path, "inventory", "list", "--json"], &[]);
    assert_eq!(code, 0);
    assert_eq!(stdout, "", "nothing imported");

    std::fs::write(
        dir.path().join("accounts.csv"),
        "tenant_id,object_id,employee_id,credential,partner_id\n\
         11111111-1111-4111-8111-111111111111,00000101-0000-4000-8000-000000000000,E-1,sp-1,123\n",
    )
    .unwrap();
    let (code, stdout, stderr) = palworker(&["--config", &path, "inventory", "import", &csv], &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("imported 1 account(s)"));
    let (_, stdout, _) = palworker(
        &["--config", &path, "inventory", "list", "--employee", "E-1"],
        &[],
    );
    assert!(
        stdout.contains("123") && stdout.contains("sp-1"),
        "{stdout}"
    );
}
