//! The real `palworker` binary as a child process — `palworker --config FILE
//! run`, or one CLI command — for the tests and benchmarks that need a
//! process of its own: SIGKILL at any instant, SIGTERM as an orchestrator
//! sends it, a resident set size of its own, the CLI against a running
//! worker.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use tokio::process::{Child, Command};

use super::Harness;

/// A `palworker … run` child process. Killed when dropped; its log is
/// printed when a test panics while it exists.
pub struct WorkerProcess {
    child: Option<Child>,
    pid: u32,
    log_path: PathBuf,
}

/// The configuration of a child process is complete: nothing from this
/// process's environment may override it, nor set its log level (`RUST_LOG`
/// reaches a child only through the environment it is given).
fn without_overrides(command: &mut Command) {
    for (key, _) in std::env::vars() {
        if key.starts_with("PALWORKER__") || key == "RUST_LOG" {
            command.env_remove(key);
        }
    }
}

impl WorkerProcess {
    /// Starts `binary --config config run`, logging at `info` to `log`
    /// (stdout and stderr), with `env` added to its environment.
    pub fn spawn(
        binary: &Path,
        config: &Path,
        env: &[(String, String)],
        log: &Path,
    ) -> std::io::Result<WorkerProcess> {
        Self::spawn_with_args(binary, config, &[], env, log)
    }

    /// [`WorkerProcess::spawn`] with global options before `run`, such as
    /// `--log-format json`; `RUST_LOG` in `env` overrides the `info` level.
    pub fn spawn_with_args(
        binary: &Path,
        config: &Path,
        global_args: &[&str],
        env: &[(String, String)],
        log: &Path,
    ) -> std::io::Result<WorkerProcess> {
        Self::spawn_command(binary, config, global_args, "run", env, log)
    }

    /// `binary --config config route`: the router of a partitioned
    /// deployment (SPEC §10), as [`WorkerProcess::spawn`] starts a worker.
    pub fn spawn_router(
        binary: &Path,
        config: &Path,
        env: &[(String, String)],
        log: &Path,
    ) -> std::io::Result<WorkerProcess> {
        Self::spawn_command(binary, config, &[], "route", env, log)
    }

    fn spawn_command(
        binary: &Path,
        config: &Path,
        global_args: &[&str],
        subcommand: &str,
        env: &[(String, String)],
        log: &Path,
    ) -> std::io::Result<WorkerProcess> {
        let log_file = std::fs::File::create(log)?;
        let mut command = Command::new(binary);
        command
            .arg("--config")
            .arg(config)
            .args(global_args)
            .arg(subcommand)
            // The production default: the worker pays for its per-event and
            // per-action log lines, written to a file as a service manager would.
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .kill_on_drop(true);
        without_overrides(&mut command);
        command.envs(env.iter().cloned());
        let child = command.spawn()?;
        let pid = child
            .id()
            .ok_or_else(|| std::io::Error::other("the worker process has no id"))?;
        Ok(WorkerProcess {
            child: Some(child),
            pid,
            log_path: log.to_owned(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// SIGKILL: the process gets no chance to clean up.
    pub async fn kill_9(&mut self) -> std::io::Result<ExitStatus> {
        let mut child = self.running()?;
        child.kill().await?;
        child.wait().await
    }

    /// SIGTERM, as an orchestrator sends it; then waits up to `timeout` for
    /// the exit (SIGKILL and an error if it overruns).
    pub async fn terminate(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let pid = rustix::process::Pid::from_raw(self.pid as i32)
            .ok_or_else(|| anyhow::anyhow!("pid {} is not a process id", self.pid))?;
        rustix::process::kill_process(pid, rustix::process::Signal::TERM)?;
        self.wait_exit(timeout).await
    }

    /// Waits up to `timeout` for the process to exit by itself (SIGKILL and
    /// an error if it does not).
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let mut child = self.running()?;
        match tokio::time::timeout(timeout, child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => {
                let _ = child.kill().await;
                anyhow::bail!(
                    "the worker did not exit within {timeout:?}\n{}",
                    self.log_tail(40)
                )
            }
        }
    }

    fn running(&mut self) -> std::io::Result<Child> {
        self.child
            .take()
            .ok_or_else(|| std::io::Error::other("the worker process has exited"))
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Its last `lines` log lines, headed by where the log is.
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
            let _ = child.start_kill();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail(60));
        }
    }
}

/// What one CLI command printed and how it exited.
#[derive(Debug, Clone)]
pub struct CliOutput {
    /// The exit code (-1 when killed by a signal).
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `binary args…` to completion with `env` added to its environment
/// (and no `PALWORKER__…` override or `RUST_LOG` of this process's),
/// asynchronously, so an in-process worker keeps serving its admin API
/// meanwhile.
pub async fn run_cli(
    binary: &Path,
    args: &[&str],
    env: &[(String, String)],
) -> std::io::Result<CliOutput> {
    let mut command = Command::new(binary);
    command.args(args).stdin(Stdio::null());
    without_overrides(&mut command);
    command.envs(env.iter().cloned());
    let output = command.output().await?;
    Ok(CliOutput {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

impl Harness {
    /// Writes the harness configuration to `dir/palworker.toml` and starts
    /// `binary` as a worker process with it, logging to `dir/{name}.log`
    /// (`name` tells successive runs apart).
    pub fn spawn_worker_process(
        &self,
        binary: &Path,
        dir: &Path,
        name: &str,
    ) -> anyhow::Result<WorkerProcess> {
        let config = dir.join("palworker.toml");
        self.write_config(&config)?;
        WorkerProcess::spawn(
            binary,
            &config,
            &self.config_env,
            &dir.join(format!("{name}.log")),
        )
        .with_context(|| format!("starting `{}`", binary.display()))
    }

    /// Writes the harness configuration to `dir/palworker.toml` (with the
    /// running worker's admin API address) and runs `binary --config FILE
    /// args…` to completion with the harness's environment, `env` added
    /// (later entries win: `(ADMIN_TOKEN_ENV, "wrong")` replaces the token).
    pub async fn cli(
        &self,
        binary: &Path,
        dir: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<CliOutput> {
        let config = dir.join("palworker.toml");
        self.write_config(&config)?;
        let config = config.to_str().context("the config path is not UTF-8")?;
        let mut full_args = vec!["--config", config];
        full_args.extend_from_slice(args);
        let mut full_env = self.config_env.clone();
        full_env.extend(env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        run_cli(binary, &full_args, &full_env)
            .await
            .with_context(|| format!("running `{}`", binary.display()))
    }
}
