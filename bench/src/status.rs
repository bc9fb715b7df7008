//! Operator status: what `palworker status --json` (and `audit export`)
//! through a running worker costs that worker's memory. A worker process on
//! a ledger of `--accounts` finished actions idles; then the CLI, as a
//! process of its own, prints every action through the worker's admin API
//! into /dev/null while this process samples the worker's RSS. The number
//! that matters is the peak during the command minus the idle RSS
//! (issue 15: within 20 MiB). A second, unmeasured run counts the rows.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use palworker::clock::SystemClock;
use palworker::ledger::Ledger;
use palworker::local::{Harness, HarnessOptions, TempDir, events};
use palworker_core::ActionState;
use palworker_events::PartnerId;
use tokio::io::AsyncBufReadExt;
use tokio::process::Command;

use crate::accounts::{account, parse_event};
use crate::ledgers::end_every_due_action;
use crate::machine::{copy_dir, free_port};
use crate::report::{Sample, Unit, line, log_run, medians};
use crate::worker::BenchWorker;
use crate::{BenchArgs, IDLE_SETTLE, LEDGER_CACHE_BYTES, PARTNER_A, PARTNER_B, PHASE_TIMEOUT};

/// The accounts of this scenario (see `accounts`: sets never share an identity).
const SET_STATUS: u8 = 0x06;
/// How often the worker's RSS is read while a command runs.
const SAMPLE_EVERY: Duration = Duration::from_millis(5);
/// Issue 15's bound on what a streamed answer may add to the worker's RSS.
const TARGET_GROWTH_MIB: f64 = 20.0;

pub async fn run(url: &str, args: &BenchArgs, worker: &Path) -> anyhow::Result<Vec<String>> {
    let work = TempDir::new("palworker-bench-status")?;
    let base = work.path().join("base-ledger");
    let started = Instant::now();
    {
        let base = base.clone();
        let (actions, tenants) = (args.accounts, args.tenants);
        tokio::task::spawn_blocking(move || build_ledger(&base, actions, tenants)).await??;
    }
    eprintln!(
        "operator-status: built a ledger with {} finished actions in {:.1} s",
        args.accounts,
        started.elapsed().as_secs_f64()
    );
    let mut runs = Vec::new();
    for run in 1..=args.runs {
        let directory = work.path().join(format!("run-{run}"));
        std::fs::create_dir_all(&directory)?;
        let ledger = directory.join("ledger");
        copy_dir(&base, &ledger)?;
        let sample = status_run(url, &ledger, &directory, worker, args.accounts).await?;
        log_run("operator-status", run, args.runs, &sample);
        runs.push(sample);
        std::fs::remove_dir_all(&directory).ok();
    }
    let median = medians(&runs);
    let met = median.get("status_growth_mib") <= TARGET_GROWTH_MIB;
    Ok(vec![line(
        "operator_status",
        &[
            ("actions", args.accounts.to_string()),
            ("runs", args.runs.to_string()),
        ],
        &median,
        "status_growth_mib<=20",
        met,
    )])
}

/// A ledger of `actions` accounts whose every action ended `done`: a
/// `partner.id.changed` over all of them, claimed and finished a batch per
/// transaction (the executor's own group commit).
fn build_ledger(path: &Path, actions: u64, tenants: u64) -> anyhow::Result<()> {
    let ledger = Ledger::open(path, LEDGER_CACHE_BYTES)?;
    let now = Utc::now();
    let rows = (0..actions)
        .map(|i| {
            let (t, index) = (i % tenants, i / tenants);
            Ok((
                account(SET_STATUS, t, index, Some("bench-status"))?,
                Some(PartnerId::parse(PARTNER_A)?),
            ))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    ledger.import_accounts(rows, now)?;
    let event = parse_event(&events::partner_id_changed(
        "bench-status",
        PARTNER_A,
        PARTNER_B,
        None,
    ))?;
    ledger.accept(&event, None, now, usize::MAX)?;
    let before = PartnerId::parse(PARTNER_A)?;
    let after = PartnerId::parse(PARTNER_B)?;
    end_every_due_action(&ledger, |action, _| {
        action.state = ActionState::Done;
        action.before_partner_id = Some(before.clone());
        action.after_partner_id = Some(after.clone());
        action.detail = Some(format!("PATCH {PARTNER_B}"));
    })?;
    ledger.flush()?;
    let counts = ledger.action_state_counts()?;
    anyhow::ensure!(
        counts.get("done").copied().unwrap_or(0) == actions && counts.len() == 1,
        "the status ledger holds {counts:?}"
    );
    Ok(())
}

async fn status_run(
    url: &str,
    ledger: &Path,
    directory: &Path,
    binary: &Path,
    actions: u64,
) -> anyhow::Result<Sample> {
    let port = free_port()?;
    let harness = Harness::prepare(
        HarnessOptions {
            amqp_url: url.to_owned(),
            name: "palworker-bench-status".to_owned(),
            ledger_path: Some(ledger.to_owned()),
            extra_toml: format!(
                "[http]\nlisten = \"127.0.0.1:{port}\"\n[ledger]\ncache_capacity = {LEDGER_CACHE_BYTES}\n"
            ),
            ..HarnessOptions::default()
        },
        Arc::new(SystemClock),
    )
    .await?;
    let result = status_measure(&harness, directory, port, binary, actions).await;
    let shutdown = harness.shutdown().await;
    let sample = result?;
    shutdown?;
    Ok(sample)
}

async fn status_measure(
    harness: &Harness,
    directory: &Path,
    port: u16,
    binary: &Path,
    actions: u64,
) -> anyhow::Result<Sample> {
    let config = directory.join("palworker.toml");
    harness.write_config(&config)?;
    let mut worker = BenchWorker::spawn(
        binary,
        &config,
        &harness.config_env,
        &directory.join("worker.log"),
        port,
    )?;
    let measured = async {
        worker.wait_ready(PHASE_TIMEOUT).await?;
        tokio::time::sleep(IDLE_SETTLE).await;
        let mut sample = Sample::default();
        let idle = worker.status_kib("VmRSS")? as f64 / 1024.0;
        sample.push("idle_rss_mib", Unit::Mib, idle);
        for (name, command) in [
            ("status", &["status", "--json"][..]),
            ("audit", &["audit", "export"][..]),
        ] {
            let (peak, seconds) = peak_during(&worker, binary, &config, harness, command).await?;
            let rows = count_rows(binary, &config, harness, command).await?;
            anyhow::ensure!(
                rows == actions,
                "`{}` printed {rows} rows, the ledger holds {actions} actions",
                command.join(" ")
            );
            let (peak_key, growth_key, seconds_key) = match name {
                "status" => ("status_peak_rss_mib", "status_growth_mib", "status_s"),
                _ => ("audit_peak_rss_mib", "audit_growth_mib", "audit_s"),
            };
            sample.push(peak_key, Unit::Mib, peak);
            sample.push(growth_key, Unit::Mib, peak - idle);
            sample.push(seconds_key, Unit::Seconds, seconds);
            // The next command starts from an idle worker again.
            tokio::time::sleep(IDLE_SETTLE).await;
        }
        Ok::<_, anyhow::Error>(sample)
    }
    .await;
    let stopped = worker.stop().await;
    let sample = measured?;
    stopped?;
    Ok(sample)
}

/// `palworker --config FILE args…` with the harness's environment and
/// nothing of this process's `PALWORKER__…` or `RUST_LOG`.
fn cli(binary: &Path, config: &Path, harness: &Harness, args: &[&str]) -> Command {
    let mut command = Command::new(binary);
    command.arg("--config").arg(config).args(args);
    for (key, _) in std::env::vars() {
        if key.starts_with("PALWORKER__") || key == "RUST_LOG" {
            command.env_remove(key);
        }
    }
    command
        .envs(harness.config_env.iter().cloned())
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Runs the command with its output to /dev/null, sampling the worker's
/// RSS meanwhile: the peak in MiB (the larger of the samples and the
/// kernel's high-water mark, reset just before) and the command's seconds.
async fn peak_during(
    worker: &BenchWorker,
    binary: &Path,
    config: &Path,
    harness: &Harness,
    args: &[&str],
) -> anyhow::Result<(f64, f64)> {
    // "5" resets the process's VmHWM to its current RSS (Linux ≥ 4.0).
    let hwm_reset = std::fs::write(format!("/proc/{}/clear_refs", worker.pid()), "5").is_ok();
    let started = Instant::now();
    let mut child = cli(binary, config, harness, args)
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("starting `{}`", binary.display()))?;
    let mut peak_kib = worker.status_kib("VmRSS")?;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status?,
            () = tokio::time::sleep(SAMPLE_EVERY) => {
                peak_kib = peak_kib.max(worker.status_kib("VmRSS")?);
            }
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    if hwm_reset {
        peak_kib = peak_kib.max(worker.status_kib("VmHWM")?);
    }
    if !status.success() {
        let mut stderr = String::new();
        if let Some(mut pipe) = child.stderr.take() {
            tokio::io::AsyncReadExt::read_to_string(&mut pipe, &mut stderr).await?;
        }
        anyhow::bail!("`{}` failed ({status}): {stderr}", args.join(" "));
    }
    Ok((peak_kib as f64 / 1024.0, seconds))
}

/// Runs the command again and counts the lines it prints (read as they
/// come, never held).
async fn count_rows(
    binary: &Path,
    config: &Path,
    harness: &Harness,
    args: &[&str],
) -> anyhow::Result<u64> {
    let mut child = cli(binary, config, harness, args)
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting `{}`", binary.display()))?;
    let stdout = child.stdout.take().context("the command's stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let mut rows = 0u64;
    while lines.next_line().await?.is_some() {
        rows += 1;
    }
    let status = child.wait().await?;
    anyhow::ensure!(status.success(), "`{}` failed ({status})", args.join(" "));
    Ok(rows)
}
