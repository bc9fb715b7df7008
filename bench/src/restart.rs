//! Idle and restart: the RSS of an idle worker, and the time until a worker
//! restarted on a large ledger is ready (and then finishes what was pending).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use palworker::clock::SystemClock;
use palworker::ledger::Ledger;
use palworker::local::{Harness, HarnessOptions, ServicePrincipal, TempDir, events};
use palworker_config::Settings;
use palworker_core::ActionState;
use palworker_events::PartnerId;

use crate::accounts::{
    SET_FINISHED, SET_PENDING, account, credential, object, parse_event, principals, tenant,
};
use crate::machine::{copy_dir, free_port};
use crate::report::{Sample, Unit, line, log_run, medians};
use crate::worker::BenchWorker;
use crate::{
    BenchArgs, IDLE_SETTLE, LEDGER_CACHE_BYTES, PARTNER_A, PARTNER_B, PARTNER_C, PARTNER_D,
    PHASE_TIMEOUT,
};

pub async fn run(url: &str, args: &BenchArgs, worker: &Path) -> anyhow::Result<Vec<String>> {
    let per_tenant = args.pending.div_ceil(args.tenants);
    let pending: Vec<(u64, u64)> = (0..args.pending)
        .map(|i| (i % args.tenants, i / args.tenants))
        .collect();
    let work = TempDir::new("palworker-bench-restart")?;
    let base = work.path().join("base-ledger");
    let started = Instant::now();
    {
        let base = base.clone();
        let pending = pending.clone();
        let (finished, tenants) = (args.accounts, args.tenants);
        tokio::task::spawn_blocking(move || {
            build_restart_ledger(&base, finished, tenants, &pending)
        })
        .await??;
    }
    eprintln!(
        "idle-restart: built a ledger with {} finished and {} pending actions in {:.1} s",
        args.accounts,
        pending.len(),
        started.elapsed().as_secs_f64()
    );
    let principals = principals(SET_PENDING, args.tenants, per_tenant);
    let mut runs = Vec::new();
    for run in 1..=args.runs {
        let directory = work.path().join(format!("run-{run}"));
        let sample = restart_run(url, &principals, &pending, &base, &directory, worker).await?;
        log_run("idle-restart", run, args.runs, &sample);
        runs.push(sample);
        std::fs::remove_dir_all(&directory).ok();
    }
    let median = medians(&runs);
    let met = median.get("idle_rss_mib") <= 30.0 && median.get("ready_s") <= 2.0;
    Ok(vec![line(
        "idle_restart",
        &[
            ("finished_actions", args.accounts.to_string()),
            ("pending_actions", pending.len().to_string()),
            ("runs", args.runs.to_string()),
        ],
        &median,
        "idle_rss_mib<=30,ready_s<=2",
        met,
    )])
}

/// A ledger with `finished` terminal actions (a fan-out over that many
/// accounts, each action claimed and finished `done`) and one pending action
/// per account of `pending` (a second fan-out over other accounts).
fn build_restart_ledger(
    path: &Path,
    finished: u64,
    tenants: u64,
    pending: &[(u64, u64)],
) -> anyhow::Result<()> {
    let ledger = Ledger::open(path, LEDGER_CACHE_BYTES)?;
    let now = Utc::now();
    let rows = (0..finished)
        .map(|i| {
            let (t, index) = (i % tenants, i / tenants);
            Ok((
                account(SET_FINISHED, t, index, Some("bench-finished"))?,
                Some(PartnerId::parse(PARTNER_A)?),
            ))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    ledger.import_accounts(rows, now)?;
    let event = parse_event(&events::partner_id_changed(
        "bench-restart-finished",
        PARTNER_A,
        PARTNER_B,
        None,
    ))?;
    ledger.accept(&event, None, now, usize::MAX)?;
    let mut done = 0u64;
    for _ in 0..=finished {
        let now = Utc::now();
        let due = ledger.due_actions(now, 1_024, |_| false)?;
        if due.is_empty() {
            break;
        }
        for candidate in due {
            if let Some(mut action) = ledger.claim(candidate.action_id, now)? {
                action.state = ActionState::Done;
                action.before_partner_id = Some(PartnerId::parse(PARTNER_A)?);
                action.after_partner_id = Some(PartnerId::parse(PARTNER_B)?);
                action.detail = Some(format!("PATCH {PARTNER_B}"));
                action.completed_at = Some(now);
                action.updated_at = now;
                ledger.finish(&action)?;
                done += 1;
            }
        }
    }
    anyhow::ensure!(done == finished, "finished {done} of {finished} actions");
    let rows = pending
        .iter()
        .map(|&(t, p)| {
            Ok((
                account(SET_PENDING, t, p, Some(&credential(SET_PENDING, p)))?,
                Some(PartnerId::parse(PARTNER_C)?),
            ))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    ledger.import_accounts(rows, now)?;
    let event = parse_event(&events::partner_id_changed(
        "bench-restart-pending",
        PARTNER_C,
        PARTNER_D,
        None,
    ))?;
    ledger.accept(&event, None, Utc::now(), usize::MAX)?;
    ledger.flush()?;
    let counts = ledger.action_state_counts()?;
    anyhow::ensure!(
        counts.get("done").copied().unwrap_or(0) == finished
            && counts.get("pending").copied().unwrap_or(0) == pending.len() as u64,
        "the restart ledger holds {counts:?}"
    );
    Ok(())
}

async fn restart_run(
    url: &str,
    principals: &[ServicePrincipal],
    pending: &[(u64, u64)],
    base: &Path,
    directory: &Path,
    worker: &Path,
) -> anyhow::Result<Sample> {
    std::fs::create_dir_all(directory)?;
    let port = free_port()?;
    let mut harness = Harness::prepare(
        HarnessOptions {
            amqp_url: url.to_owned(),
            name: "palworker-bench-restart".to_owned(),
            principals: principals.to_vec(),
            ledger_path: Some(directory.join("idle-ledger")),
            extra_toml: format!(
                "[http]\nlisten = \"127.0.0.1:{port}\"\n[ledger]\ncache_capacity = {LEDGER_CACHE_BYTES}\n"
            ),
            ..HarnessOptions::default()
        },
        Arc::new(SystemClock),
    )
    .await?;
    let result = restart_measure(&mut harness, pending, base, directory, port, worker).await;
    let shutdown = harness.shutdown().await;
    let sample = result?;
    shutdown?;
    Ok(sample)
}

async fn restart_measure(
    harness: &mut Harness,
    pending: &[(u64, u64)],
    base: &Path,
    directory: &Path,
    port: u16,
    binary: &Path,
) -> anyhow::Result<Sample> {
    let mut sample = Sample::default();

    // Idle, on an empty ledger.
    let config = directory.join("idle.toml");
    harness.write_config(&config)?;
    let mut worker = BenchWorker::spawn(
        binary,
        &config,
        &harness.config_env,
        &directory.join("idle.log"),
        port,
    )?;
    let idle = async {
        let ready = worker.wait_ready(PHASE_TIMEOUT).await?;
        tokio::time::sleep(IDLE_SETTLE).await;
        Ok::<_, anyhow::Error>((ready, worker.status_kib("VmRSS")? as f64 / 1024.0))
    }
    .await;
    let stopped = worker.stop().await;
    let (empty_ready, idle_rss) = idle?;
    stopped?;
    sample.push("idle_rss_mib", Unit::Mib, idle_rss);
    sample.push("empty_ready_s", Unit::Seconds, empty_ready.as_secs_f64());

    // Restart on the big ledger.
    for &(t, p) in pending {
        harness
            .simulator
            .seed_link(&tenant(t), &object(SET_PENDING, t, p), PARTNER_C);
    }
    let ledger_path = directory.join("ledger");
    copy_dir(base, &ledger_path)?;
    let config = directory.join("restart.toml");
    let overlay = format!(
        "[ledger]\npath = {}\n",
        serde_json::to_string(&ledger_path.display().to_string())?
    );
    std::fs::write(
        &config,
        Settings::layer_toml(&harness.config_toml, &overlay)?,
    )?;
    let mut worker = BenchWorker::spawn(
        binary,
        &config,
        &harness.config_env,
        &directory.join("restart.log"),
        port,
    )?;
    let restarted = async {
        let ready = worker.wait_ready(PHASE_TIMEOUT).await?;
        let ready_rss = worker.status_kib("VmRSS")? as f64 / 1024.0;
        // The restarted worker must resume the pending actions.
        let deadline = Instant::now() + PHASE_TIMEOUT;
        let scrape = loop {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the pending actions did not finish within {PHASE_TIMEOUT:?}"
            );
            let scrape = worker.scrape().await?;
            if scrape.pending <= 0 && scrape.terminal >= pending.len() as u64 {
                break scrape;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        anyhow::ensure!(
            scrape.done == pending.len() as u64,
            "{} of {} resumed actions ended done ({} failed)",
            scrape.done,
            pending.len(),
            scrape.failed
        );
        tokio::time::sleep(IDLE_SETTLE).await;
        Ok::<_, anyhow::Error>((
            ready,
            ready_rss,
            worker.status_kib("VmRSS")? as f64 / 1024.0,
            worker.status_kib("VmHWM")? as f64 / 1024.0,
        ))
    }
    .await;
    let stopped = worker.stop().await;
    let (ready, ready_rss, after_rss, peak_rss) = restarted?;
    stopped?;
    let mut wrong = 0usize;
    for &(t, p) in pending {
        let link = harness
            .simulator
            .active_link(&tenant(t), &object(SET_PENDING, t, p));
        if link.is_none_or(|link| link.partner_id != PARTNER_D) {
            wrong += 1;
        }
    }
    anyhow::ensure!(
        wrong == 0,
        "{wrong} of {} resumed links did not move to {PARTNER_D}",
        pending.len()
    );
    sample.push("ready_s", Unit::Seconds, ready.as_secs_f64());
    sample.push("ready_rss_mib", Unit::Mib, ready_rss);
    sample.push("after_work_rss_mib", Unit::Mib, after_rss);
    sample.push("restart_peak_rss_mib", Unit::Mib, peak_rss);
    Ok(sample)
}
