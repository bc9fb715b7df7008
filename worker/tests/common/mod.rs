//! Helpers shared by the fault, crash and broker tests: identities, event
//! builders, request-log queries and a worker run as a real process.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use palworker::harness::{Harness, ServicePrincipal, events};
use palworker::ledger::{ActionRecord, StatusFilter};
use palworker::sim::RequestRecord;

/// Tenant number `t` (a GUID).
pub fn tenant(t: usize) -> String {
    format!("a0000000-0000-4000-8000-{t:012x}")
}

/// The object ID of employee `e`'s service principal in tenant `t`.
pub fn object(e: usize, t: usize) -> String {
    format!("b{e:07x}-{t:04x}-4000-8000-000000000000")
}

pub fn employee(e: usize) -> String {
    format!("E-{e}")
}

/// One service principal per employee (`sp-{e}`), with an identity in each
/// of the first `tenants` tenants.
pub fn principals(employees: usize, tenants: usize) -> Vec<ServicePrincipal> {
    (0..employees)
        .map(|e| ServicePrincipal {
            credential: format!("sp-{e}"),
            client_id: format!("c{e:07x}-0000-4000-8000-000000000000"),
            identities: (0..tenants).map(|t| (tenant(t), object(e, t))).collect(),
        })
        .collect()
}

/// `project.assignment.started` of employee `e` in tenant `t`, with the
/// employee's own credential.
pub fn assignment(id: &str, e: usize, t: usize, partner: &str) -> serde_json::Value {
    events::assignment_started(
        id,
        &employee(e),
        &tenant(t),
        &object(e, t),
        partner,
        Some(&format!("sp-{e}")),
        None,
    )
}

/// The actions of the event with CloudEvent id `id`.
pub fn actions_of(h: &Harness, id: &str) -> Vec<ActionRecord> {
    h.app()
        .ledger
        .actions(&StatusFilter {
            event_id: Some(id.to_owned()),
            ..StatusFilter::default()
        })
        .expect("ledger readable")
}

/// The single action of the event with CloudEvent id `id`.
pub fn action_of(h: &Harness, id: &str) -> ActionRecord {
    let mut actions = actions_of(h, id);
    assert_eq!(actions.len(), 1, "event {id} should have one action");
    actions.remove(0)
}

/// ARM requests of one identity, in arrival order.
pub fn requests_of(h: &Harness, tenant_id: &str, object_id: &str) -> Vec<RequestRecord> {
    h.simulator
        .requests()
        .into_iter()
        .filter(|r| {
            r.tenant_id.as_deref() == Some(tenant_id) && r.object_id.as_deref() == Some(object_id)
        })
        .collect()
}

pub fn is_write(request: &RequestRecord) -> bool {
    matches!(request.method.as_str(), "PUT" | "PATCH" | "DELETE")
}

/// Answered write requests (PUT, PATCH, DELETE) per identity.
pub fn writes_per_identity(requests: &[RequestRecord]) -> BTreeMap<(String, String), usize> {
    let mut writes = BTreeMap::new();
    for request in requests.iter().filter(|r| is_write(r)) {
        let key = (
            request.tenant_id.clone().unwrap_or_default(),
            request.object_id.clone().unwrap_or_default(),
        );
        *writes.entry(key).or_insert(0) += 1;
    }
    writes
}

/// Polls `condition` every 20 ms until it holds; panics after `timeout`
/// (which only bounds a broken run).
pub async fn wait_until(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The real `palworker` binary, run with `--config FILE run` against a
/// harness's simulator, topology and ledger. Killed when dropped; its log is
/// printed when a test panics while it exists.
pub struct WorkerProcess {
    child: Option<Child>,
    log_path: PathBuf,
    status: Option<ExitStatus>,
}

impl WorkerProcess {
    /// Writes the harness configuration into `dir` and starts the worker.
    /// `name` distinguishes the logs of successive runs.
    pub fn spawn(h: &Harness, dir: &Path, name: &str) -> WorkerProcess {
        let config = dir.join("palworker.toml");
        h.write_config(&config).expect("config written");
        let env = h.config_env.clone();
        let log_path = dir.join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path).expect("log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_palworker"));
        command
            .arg("--config")
            .arg(&config)
            .arg("run")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log);
        // The configuration is complete: nothing from the test's environment may override it.
        for (key, _) in std::env::vars() {
            if key.starts_with("PALWORKER__") {
                command.env_remove(key);
            }
        }
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command.spawn().expect("the palworker binary starts");
        WorkerProcess {
            child: Some(child),
            log_path,
            status: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL: the process gets no chance to clean up.
    pub fn kill_9(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("SIGKILL delivered");
        self.status = Some(child.wait().expect("reaped"));
    }

    /// SIGTERM, as an orchestrator sends it; then waits up to `timeout` for the exit.
    pub async fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .expect("kill(1) runs");
        assert!(status.success(), "kill -TERM failed");
        self.wait_exit(timeout).await
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let child = self.child.as_mut().expect("running");
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                self.status = Some(status);
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the worker did not exit within {timeout:?}\n{}",
                self.log_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        let start = all.len().saturating_sub(lines);
        format!(
            "--- last {} lines of {} ---\n{}",
            all.len() - start,
            self.log_path.display(),
            all[start..].join("\n")
        )
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail(60));
        }
    }
}
