//! The local operator (SPEC §11.4): with no admin token configured — SPEC
//! §6's configuration — every operator command works against a running
//! worker process for its own OS user, through the admin socket in the
//! ledger directory; another OS user is refused (by the socket's mode, and
//! by its peer credentials should the mode be widened); over TCP a token is
//! still required.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use palworker::admin_socket::socket_path;
use palworker::clock::SystemClock;
use palworker::local::identities::{credential, employee, object, principals, tenant};
use palworker::local::process::{CliOutput, WorkerProcess, run_cli};
use palworker::local::{Harness, HarnessOptions, events, free_port, wait_until_async};
use palworker_sim::{FaultProfile, Faults};

use crate::worker_binary;

const SETTLE: Duration = Duration::from_secs(60);

/// A harness whose configuration has no admin token, its HTTP on `port`.
async fn tokenless_harness(port: u16, extra_toml: &str) -> Harness {
    Harness::prepare(
        HarnessOptions {
            principals: principals(3, 2),
            admin_token: None,
            name: "palworker-test-local".into(),
            extra_toml: format!("[http]\nlisten = \"127.0.0.1:{port}\"\n{extra_toml}"),
            ..HarnessOptions::default()
        },
        Arc::new(SystemClock),
    )
    .await
    .expect("harness prepared")
}

fn ledger_dir(h: &Harness) -> PathBuf {
    h.settings.ledger.path.clone()
}

/// Waits until the worker process answers `/readyz` 200 and its admin
/// socket is there.
async fn wait_ready(h: &Harness, port: u16, worker: &WorkerProcess) {
    let http = reqwest::Client::new();
    let socket = socket_path(&ledger_dir(h));
    let ready = wait_until_async(SETTLE, "the worker is ready", async || {
        let answered = http
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200);
        Ok(answered && socket.exists())
    })
    .await;
    if let Err(error) = ready {
        panic!("{error:#}\n{}", worker.log_tail(40));
    }
}

/// Runs `palworker --config dir/palworker.toml args…` as this process's
/// user (root) and expects exit 0.
async fn ok(h: &Harness, dir: &Path, args: &[&str]) -> String {
    let CliOutput {
        code,
        stdout,
        stderr,
    } = h.cli(worker_binary(), dir, args, &[]).await.unwrap();
    assert_eq!(code, 0, "`{}` failed: {stderr}{stdout}", args.join(" "));
    stdout
}

fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect()
}

/// Polls `status --json` (through the socket) until `done` holds.
async fn wait_for_status(
    h: &Harness,
    dir: &Path,
    what: &str,
    done: impl Fn(&[serde_json::Value]) -> bool,
) {
    wait_until_async(SETTLE, what, async || {
        let rows = json_lines(&ok(h, dir, &["status", "--json"]).await);
        Ok(done(&rows))
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operator_command_works_without_a_token_through_the_admin_socket() {
    let port = free_port().unwrap();
    let mut h = tokenless_harness(
        port,
        "[limits]\nmax_actions_per_event = 1\n[retry]\nmax_elapsed = \"1s\"\ninitial_interval = \"100ms\"\n",
    )
    .await;
    // Tenant 0 answers every request 503 until the outage is over.
    let mut faults = Faults::default();
    faults.per_tenant.insert(
        tenant(0),
        FaultProfile {
            rate_5xx: 1.0,
            ..FaultProfile::default()
        },
    );
    h.simulator.set_faults(faults);
    let dir = tempfile::tempdir().unwrap();
    let mut worker = h
        .spawn_worker_process(worker_binary(), dir.path(), "worker")
        .unwrap();
    wait_ready(&h, port, &worker).await;
    let socket = socket_path(&ledger_dir(&h));
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the admin socket is its owner's only");

    // Over TCP, without a token, the admin API still refuses.
    let raw = reqwest::get(format!("http://127.0.0.1:{port}/admin/status"))
        .await
        .unwrap();
    assert_eq!(raw.status(), 401);

    // inventory import, inventory list, plan.
    let accounts = dir.path().join("accounts.csv");
    std::fs::write(
        &accounts,
        format!(
            "tenant_id,object_id,employee_id,credential,partner_id\n{},{},{},{},111111\n",
            tenant(1),
            object(2, 1),
            employee(2),
            credential(2)
        ),
    )
    .unwrap();
    let out = ok(
        &h,
        dir.path(),
        &["inventory", "import", accounts.to_str().unwrap()],
    )
    .await;
    assert!(out.contains("imported 1 account(s)"), "{out}");
    let out = ok(
        &h,
        dir.path(),
        &["inventory", "list", "--employee", &employee(2), "--json"],
    )
    .await;
    assert_eq!(json_lines(&out).len(), 1, "{out}");
    let departure = dir.path().join("departure.json");
    std::fs::write(
        &departure,
        events::employee_departed("preview", &employee(2), None, None).to_string(),
    )
    .unwrap();
    let plan: serde_json::Value = serde_json::from_str(
        &ok(
            &h,
            dir.path(),
            &["plan", "--event", departure.to_str().unwrap()],
        )
        .await,
    )
    .unwrap();
    assert_eq!(plan["actions"][0]["op"], "remove");

    // status: a failed action (tenant 0 is down) and a manual one.
    h.publish(&events::assignment_started(
        "a-failing",
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
        "a-manual",
        &employee(1),
        &tenant(1),
        &object(1, 1),
        "111111",
        None,
        None,
    ))
    .await
    .unwrap();
    wait_for_status(&h, dir.path(), "one failed and one manual action", |rows| {
        rows.iter().any(|r| r["state"] == "failed") && rows.iter().any(|r| r["state"] == "manual")
    })
    .await;
    let failed = json_lines(&ok(&h, dir.path(), &["status", "--failed", "--json"]).await);
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["event_id"], "a-failing");

    // retry, once the outage is over.
    h.simulator.set_faults(Faults::default());
    let out = ok(&h, dir.path(), &["retry", "--failed"]).await;
    assert!(out.contains("queued 1 action(s)"), "{out}");
    wait_for_status(&h, dir.path(), "the retried action is done", |rows| {
        rows.iter()
            .filter(|r| r["event_id"] == "a-failing")
            .all(|r| r["state"] == "done")
    })
    .await;
    // approve and reject held plans (more than one action each); pause
    // and resume.
    h.publish(&events::partner_id_changed(
        "held-1", "111111", "222222", None,
    ))
    .await
    .unwrap();
    wait_for_status(&h, dir.path(), "the first plan is held", |rows| {
        rows.iter()
            .any(|r| r["event_id"] == "held-1" && r["state"] == "held")
    })
    .await;
    let out = ok(&h, dir.path(), &["approve", "held-1"]).await;
    assert!(out.contains("approved event `held-1`"), "{out}");
    h.publish(&events::partner_id_changed(
        "held-2", "222222", "333333", None,
    ))
    .await
    .unwrap();
    wait_for_status(&h, dir.path(), "the second plan is held", |rows| {
        rows.iter()
            .any(|r| r["event_id"] == "held-2" && r["state"] == "held")
    })
    .await;
    let out = ok(&h, dir.path(), &["reject", "held-2"]).await;
    assert!(out.contains("rejected event `held-2`"), "{out}");

    assert!(
        ok(&h, dir.path(), &["pause"])
            .await
            .contains("paused writes to PAL")
    );
    assert!(
        ok(&h, dir.path(), &["resume"])
            .await
            .contains("resumed writes to PAL")
    );

    // audit export: every command above, by this OS user; audit verify.
    let audit = json_lines(&ok(&h, dir.path(), &["audit", "export"]).await);
    let me = palworker::operators::Operator::local_user();
    for kind in ["approval", "rejection", "retry", "pause", "resume"] {
        let record = audit
            .iter()
            .find(|r| r["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} in the audit trail"));
        assert_eq!(record["who"], me.as_str(), "{record}");
    }
    assert!(
        ok(&h, dir.path(), &["audit", "verify"])
            .await
            .contains("intact")
    );

    // ledger export from the running worker; report revocations.
    let export = dir.path().join("ledger.jsonl");
    let out = ok(
        &h,
        dir.path(),
        &["ledger", "export", export.to_str().unwrap()],
    )
    .await;
    assert!(out.contains("exported"), "{out}");
    assert!(
        std::fs::read_to_string(&export)
            .unwrap()
            .contains("palworker_ledger_end")
    );
    ok(
        &h,
        dir.path(),
        &["report", "revocations", "--format", "json"],
    )
    .await;

    // A crash leaves the socket file; the next worker replaces it; a clean
    // stop removes it.
    worker.kill_9().await.unwrap();
    assert!(socket.exists(), "a killed worker cannot remove its socket");
    let mut worker = h
        .spawn_worker_process(worker_binary(), dir.path(), "restarted")
        .unwrap();
    wait_ready(&h, port, &worker).await;
    assert_eq!(
        json_lines(&ok(&h, dir.path(), &["status", "--failed", "--json"]).await).len(),
        0
    );
    let status = worker.terminate(SETTLE).await.unwrap();
    assert!(status.success(), "{}", worker.log_tail(30));
    assert!(!socket.exists(), "a stopped worker removes its socket");
    h.shutdown().await.unwrap();
}

/// A system user made for one test, removed when dropped.
struct OsUser {
    name: String,
    uid: u32,
    gid: u32,
}

impl OsUser {
    fn create() -> OsUser {
        let name = format!("pwtest{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let added = std::process::Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                &name,
            ])
            .status()
            .expect("running useradd (the tests run as root)");
        assert!(added.success(), "useradd {name} failed");
        let id = |flag: &str| -> u32 {
            let out = std::process::Command::new("id")
                .args([flag, &name])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
        };
        let (uid, gid) = (id("-u"), id("-g"));
        OsUser { name, uid, gid }
    }
}

impl Drop for OsUser {
    fn drop(&mut self) {
        let _ = std::process::Command::new("userdel")
            .arg(&self.name)
            .status();
    }
}

/// Runs the CLI as `user` (setpriv: that uid and gid, no other groups).
async fn cli_as(user: &OsUser, h: &Harness, config: &Path, args: &[&str]) -> CliOutput {
    let mut full: Vec<String> = vec![
        format!("--reuid={}", user.uid),
        format!("--regid={}", user.gid),
        "--clear-groups".into(),
        "--".into(),
        worker_binary().display().to_string(),
        "--config".into(),
        config.display().to_string(),
    ];
    full.extend(args.iter().map(|a| (*a).to_owned()));
    let full: Vec<&str> = full.iter().map(String::as_str).collect();
    run_cli(Path::new("setpriv"), &full, &h.config_env)
        .await
        .expect("running setpriv")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_os_user_is_refused_by_the_admin_socket() {
    let port = free_port().unwrap();
    let h = tokenless_harness(port, "").await;
    let dir = tempfile::tempdir().unwrap();
    let mut worker = h
        .spawn_worker_process(worker_binary(), dir.path(), "worker")
        .unwrap();
    wait_ready(&h, port, &worker).await;
    let user = OsUser::create();
    // The other user may read the configuration (it is not a secret here).
    let shared = tempfile::tempdir().unwrap();
    std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = shared.path().join("palworker.toml");
    h.write_config(&config).unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();

    // The worker's own user is served…
    ok(&h, dir.path(), &["status", "--json"]).await;
    // …another is not: the socket is 0600 and the ledger is not theirs.
    let refused = cli_as(&user, &h, &config, &["status", "--json"]).await;
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(
        refused.stderr.contains("refused this user") && refused.stderr.contains("ermission denied"),
        "{}",
        refused.stderr
    );
    assert_eq!(refused.stdout, "");

    // Widen the socket's mode, as a careless operator might: the worker
    // still refuses the other user by its peer credentials.
    let socket = socket_path(&ledger_dir(&h));
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    for command in [&["status", "--json"][..], &["pause"][..]] {
        let refused = cli_as(&user, &h, &config, command).await;
        assert_eq!(refused.code, 1, "{refused:?}");
        assert!(
            refused.stderr.contains("answered 403")
                && refused
                    .stderr
                    .contains(&format!("{} (uid {}) is refused", user.name, user.uid)),
            "{}",
            refused.stderr
        );
    }
    let paused = json_lines(&ok(&h, dir.path(), &["audit", "export"]).await);
    assert!(
        paused.iter().all(|r| r["kind"] != "pause"),
        "the refused pause changed nothing"
    );
    let status = worker.terminate(SETTLE).await.unwrap();
    assert!(status.success());
    h.shutdown().await.unwrap();
}
