//! Operator commands at any size (SPEC §11.1, §11.2 "Bounded queries"):
//! `status` and `audit export` streamed through a running worker's admin API
//! give the same rows as on its stopped ledger, `inventory import` of a file
//! over the admin API's old 2 MiB body limit, and `ledger check [--repair]`'s
//! exit codes. Real RabbitMQ, real sled, the simulator over HTTP, the CLI as
//! a process.

use std::path::Path;
use std::time::Duration;

use chrono::Utc;
use palworker::local::identities::{employee, object, principals, tenant};
use palworker::local::process::CliOutput;
use palworker::local::{Harness, HarnessOptions, events};

use crate::worker_binary;

const SETTLE: Duration = Duration::from_secs(60);

/// Employees 0..3 with service principals in tenant 0.
async fn harness() -> Harness {
    Harness::start(HarnessOptions {
        principals: principals(3, 1),
        ..HarnessOptions::default()
    })
    .await
    .expect("harness starts")
}

/// `count` accounts without a credential in tenant 1, linked to `partner`,
/// as a JSON Lines import file of about `count` × 190 bytes.
fn import_file(path: &Path, count: usize, partner: &str) {
    let text: String = (0..count)
        .map(|i| {
            format!(
                "{{\"tenant_id\":\"{}\",\"object_id\":\"{}\",\"employee_id\":\"{}\",\"partner_id\":\"{partner}\"}}\n",
                tenant(1),
                object(1_000 + i, 1),
                employee(1_000 + i),
            )
        })
        .collect();
    std::fs::write(path, text).unwrap();
}

fn ok(output: &CliOutput) -> &str {
    assert_eq!(output.code, 0, "{}{}", output.stdout, output.stderr);
    &output.stdout
}

#[tokio::test]
async fn status_and_audit_through_a_running_worker_give_the_rows_of_its_stopped_ledger() {
    let mut h = harness().await;
    let dir = tempfile::tempdir().unwrap();
    // 3 links, then a change of 83 actions (80 of them manual: no
    // credential): answers of several chunks.
    let accounts = dir.path().join("accounts.jsonl");
    import_file(&accounts, 80, "111111");
    let imported = h
        .cli(
            worker_binary(),
            dir.path(),
            &["inventory", "import", accounts.to_str().unwrap()],
            &[],
        )
        .await
        .unwrap();
    assert!(ok(&imported).contains("imported 80 account(s)"));
    for e in 0..3 {
        h.publish(&palworker::local::identities::assignment(
            &format!("start-{e}"),
            e,
            0,
            "111111",
        ))
        .await
        .unwrap();
    }
    h.wait_until_settled(SETTLE).await.unwrap();
    let between = Utc::now();
    h.publish(&events::partner_id_changed(
        "change", "111111", "222222", None,
    ))
    .await
    .unwrap();
    h.wait_until_settled(SETTLE).await.unwrap();
    let since = between.to_rfc3339();

    let commands: Vec<Vec<&str>> = vec![
        vec!["status", "--json"],
        vec!["status"],
        vec!["status", "--json", "--limit", "5"],
        vec!["status", "--json", "--since", &since],
        vec!["status", "--json", "--event", "change", "--limit", "2"],
        vec!["status", "--manual", "--json"],
        vec!["audit", "export"],
        vec!["audit", "export", "--since", &since],
    ];
    let mut running = Vec::new();
    for command in &commands {
        let output = h
            .cli(worker_binary(), dir.path(), command, &[])
            .await
            .unwrap();
        running.push(ok(&output).to_owned());
    }
    h.stop_worker().await.unwrap();
    for (command, through_worker) in commands.iter().zip(&running) {
        let output = h
            .cli(worker_binary(), dir.path(), command, &[])
            .await
            .unwrap();
        assert_eq!(
            ok(&output),
            through_worker,
            "`{}` differs between the running worker and its stopped ledger",
            command.join(" ")
        );
    }

    // What the rows are: every action, then the filters.
    let lines = |text: &str| text.lines().count();
    assert_eq!(lines(&running[0]), 3 + 83, "{}", running[0]);
    assert_eq!(lines(&running[1]), 1 + 3 + 83, "a header and a row each");
    assert_eq!(lines(&running[2]), 5);
    assert!(running[0].starts_with(&running[2]), "the first five rows");
    assert_eq!(lines(&running[3]), 83, "only the change's actions since");
    assert_eq!(lines(&running[4]), 2);
    assert_eq!(lines(&running[5]), 80, "the manual actions");
    assert_eq!(lines(&running[6]), 3 + 83, "every outcome");
    assert_eq!(lines(&running[7]), 83);
    for line in running[0].lines() {
        let row: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(row.get("action_id").is_some() && row.get("state").is_some());
    }
    h.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_import_over_two_mebibytes_goes_through_a_running_worker() {
    let h = harness().await;
    let dir = tempfile::tempdir().unwrap();
    let accounts = dir.path().join("accounts.jsonl");
    import_file(&accounts, 16_000, "111111");
    let size = std::fs::metadata(&accounts).unwrap().len();
    assert!(size > 2 * 1024 * 1024, "{size} bytes");
    // In one request the file is over the admin API's body limit: refused,
    // with a reason the client can quote.
    let whole = reqwest::Client::new()
        .post(format!("http://{}/admin/inventory", h.app().http_addr))
        .bearer_auth(palworker::local::ADMIN_TOKEN)
        .body(std::fs::read(&accounts).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(whole.status(), 413);
    assert!(!whole.text().await.unwrap().trim().is_empty());
    assert_eq!(h.app().ledger.inventory_size().unwrap(), 0);
    let output = h
        .cli(
            worker_binary(),
            dir.path(),
            &["inventory", "import", accounts.to_str().unwrap()],
            &[],
        )
        .await
        .unwrap();
    assert!(
        ok(&output).contains("imported 16000 account(s)"),
        "{}",
        output.stdout
    );
    assert_eq!(h.app().ledger.inventory_size().unwrap(), 16_000);
    let listed = h
        .cli(
            worker_binary(),
            dir.path(),
            &["inventory", "list", "--tenant", &tenant(1), "--json"],
            &[],
        )
        .await
        .unwrap();
    assert_eq!(ok(&listed).lines().count(), 16_000);

    // A bad row anywhere in a large file imports nothing, with its line.
    let mut text = std::fs::read_to_string(&accounts).unwrap();
    text = text.replace(&object(1_000, 1), &object(20_000, 1));
    text.push_str("{\"tenant_id\":\"not-a-guid\",\"object_id\":\"x\",\"employee_id\":\"E\"}\n");
    std::fs::write(&accounts, text).unwrap();
    let output = h
        .cli(
            worker_binary(),
            dir.path(),
            &["inventory", "import", accounts.to_str().unwrap()],
            &[],
        )
        .await
        .unwrap();
    assert_eq!(output.code, 2, "{}", output.stderr);
    assert!(
        output
            .stderr
            .contains("line 16001: tenant_id: is not a GUID"),
        "{}",
        output.stderr
    );
    assert_eq!(h.app().ledger.inventory_size().unwrap(), 16_000);
    h.shutdown().await.unwrap();
}

#[tokio::test]
async fn ledger_check_exits_1_on_a_difference_repairs_it_and_refuses_a_running_worker() {
    let mut h = harness().await;
    let dir = tempfile::tempdir().unwrap();
    for e in 0..3 {
        h.publish(&palworker::local::identities::assignment(
            &format!("start-{e}"),
            e,
            0,
            "111111",
        ))
        .await
        .unwrap();
    }
    h.wait_until_settled(SETTLE).await.unwrap();
    let check = async |h: &Harness, args: &[&str]| {
        let mut full = vec!["ledger", "check"];
        full.extend_from_slice(args);
        h.cli(worker_binary(), dir.path(), &full, &[])
            .await
            .unwrap()
    };

    // A worker holds the ledger: refused, exit 2.
    let output = check(&h, &[]).await;
    assert_eq!(output.code, 2, "{}{}", output.stdout, output.stderr);
    assert!(
        output.stderr.contains("in use by a running worker")
            && output.stderr.contains("stop the worker first"),
        "{}",
        output.stderr
    );
    let output = check(&h, &["--repair"]).await;
    assert_eq!(output.code, 2, "{}", output.stderr);

    h.stop_worker().await.unwrap();
    let output = check(&h, &[]).await;
    assert!(ok(&output).contains("no difference"), "{}", output.stdout);

    // A counter the ledger keeps, made wrong behind its back (only a test
    // opens sled outside the ledger module).
    {
        let db = sled::Config::new()
            .path(&h.settings.ledger.path)
            .open()
            .unwrap();
        db.open_tree("index")
            .unwrap()
            .insert("meta:inventory_accounts", &99u64.to_be_bytes())
            .unwrap();
        db.flush().unwrap();
    }
    let output = check(&h, &[]).await;
    assert_eq!(output.code, 1, "{}{}", output.stdout, output.stderr);
    assert_eq!(
        output.stdout,
        "inventory size: the counter says 99 account(s), the inventory holds 3\n"
    );
    assert!(
        output.stderr.contains("1 difference(s)") && output.stderr.contains("--repair"),
        "{}",
        output.stderr
    );
    let output = check(&h, &["--json"]).await;
    assert_eq!(output.code, 1);
    let line: serde_json::Value = serde_json::from_str(output.stdout.trim()).unwrap();
    assert_eq!(
        line,
        serde_json::json!({"difference": "inventory_size", "stored": 99, "actual": 3, "repaired": false})
    );
    let output = check(&h, &["--repair"]).await;
    assert!(
        ok(&output).contains("repaired: inventory size: the counter says 99"),
        "{}",
        output.stdout
    );
    let output = check(&h, &[]).await;
    assert!(ok(&output).contains("no difference"));
    h.shutdown().await.unwrap();
}
