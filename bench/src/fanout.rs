//! Fan-out: one `partner.id.changed` over a large inventory, the worker a
//! process of its own so its memory is its own: time to plan and store, time
//! to finish, peak RSS.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use palworker::clock::SystemClock;
use palworker::ledger::Ledger;
use palworker::local::{Harness, HarnessOptions, ServicePrincipal, TempDir, events};
use palworker_core::AcceptOutcome;
use palworker_events::PartnerId;

use crate::accounts::{SET_FANOUT, account, credential, object, parse_event, principals, tenant};
use crate::machine::{copy_dir, cpu_seconds, free_port};
use crate::report::{Sample, Unit, line, log_run, medians};
use crate::worker::BenchWorker;
use crate::{
    BenchArgs, FANOUT_CONCURRENCY, FANOUT_PER_TENANT_RPS, LEDGER_CACHE_BYTES, PARTNER_A, PARTNER_B,
    PHASE_TIMEOUT,
};

pub async fn run(url: &str, args: &BenchArgs, worker: &Path) -> anyhow::Result<Vec<String>> {
    let per_tenant = args.accounts.div_ceil(args.tenants);
    let accounts: Vec<(u64, u64)> = (0..args.accounts)
        .map(|i| (i % args.tenants, i / args.tenants))
        .collect();
    let work = TempDir::new("palworker-bench-fanout")?;
    let base = work.path().join("base-ledger");
    let started = Instant::now();
    {
        let base = base.clone();
        let accounts = accounts.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let ledger = Ledger::open(&base, LEDGER_CACHE_BYTES)?;
            let rows = accounts
                .iter()
                .map(|&(t, p)| {
                    Ok((
                        account(SET_FANOUT, t, p, Some(&credential(SET_FANOUT, p)))?,
                        Some(PartnerId::parse(PARTNER_A)?),
                    ))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            ledger.import_accounts(rows, Utc::now())?;
            ledger.flush()?;
            Ok(())
        })
        .await??;
    }
    eprintln!(
        "fanout: imported {} linked accounts into a ledger in {:.1} s",
        accounts.len(),
        started.elapsed().as_secs_f64()
    );
    let principals = principals(SET_FANOUT, args.tenants, per_tenant);
    let mut runs = Vec::new();
    for run in 1..=args.runs {
        let directory = work.path().join(format!("run-{run}"));
        let store_alone = fanout_store_alone(&base, &directory.join("alone")).await?;
        let mut sample = fanout_run(url, &principals, &accounts, &base, &directory, worker).await?;
        sample.push("store_alone_s", Unit::Seconds, store_alone.as_secs_f64());
        log_run("fanout", run, args.runs, &sample);
        runs.push(sample);
        std::fs::remove_dir_all(&directory).ok();
    }
    let median = medians(&runs);
    let met = median.get("plan_s") <= 5.0 && median.get("peak_rss_mib") <= 100.0;
    Ok(vec![line(
        "fanout",
        &[
            ("accounts", accounts.len().to_string()),
            ("tenants", args.tenants.to_string()),
            ("concurrency", FANOUT_CONCURRENCY.to_string()),
            ("runs", args.runs.to_string()),
        ],
        &median,
        "plan_s<=5,peak_rss_mib<=100",
        met,
    )])
}

/// The planner and the ledger alone: the fan-out event accepted and flushed
/// on a copy of the base ledger in this process, with nothing else running
/// (no broker, no executor, no simulator traffic).
async fn fanout_store_alone(base: &Path, directory: &Path) -> anyhow::Result<Duration> {
    copy_dir(base, directory)?;
    let directory = directory.to_owned();
    let elapsed = tokio::task::spawn_blocking(move || -> anyhow::Result<Duration> {
        let ledger = Ledger::open(&directory, LEDGER_CACHE_BYTES)?;
        let event = parse_event(&events::partner_id_changed(
            "bench-fanout-alone",
            PARTNER_A,
            PARTNER_B,
            None,
        ))?;
        let started = Instant::now();
        let outcome = ledger.accept(&event, None, Utc::now(), usize::MAX)?;
        ledger.flush()?;
        let elapsed = started.elapsed();
        anyhow::ensure!(
            matches!(outcome, AcceptOutcome::Accepted { .. }),
            "the fan-out was not accepted: {outcome:?}"
        );
        drop(ledger);
        std::fs::remove_dir_all(&directory).ok();
        Ok(elapsed)
    })
    .await??;
    Ok(elapsed)
}

async fn fanout_run(
    url: &str,
    principals: &[ServicePrincipal],
    accounts: &[(u64, u64)],
    base: &Path,
    directory: &Path,
    worker: &Path,
) -> anyhow::Result<Sample> {
    std::fs::create_dir_all(directory)?;
    let ledger_path = directory.join("ledger");
    copy_dir(base, &ledger_path)?;
    let port = free_port()?;
    let mut harness = Harness::prepare(
        HarnessOptions {
            amqp_url: url.to_owned(),
            name: "palworker-bench-fanout".to_owned(),
            principals: principals.to_vec(),
            ledger_path: Some(ledger_path),
            extra_toml: format!(
                "[http]\nlisten = \"127.0.0.1:{port}\"\n[ledger]\ncache_capacity = {LEDGER_CACHE_BYTES}\n\
                 [limits]\nconcurrency = {FANOUT_CONCURRENCY}\nper_tenant_rps = {FANOUT_PER_TENANT_RPS:.1}\n\
                 max_actions_per_event = 100000000\n"
            ),
            ..HarnessOptions::default()
        },
        Arc::new(SystemClock),
    )
    .await?;
    let result = fanout_measure(&mut harness, accounts, directory, port, worker).await;
    let shutdown = harness.shutdown().await;
    let sample = result?;
    shutdown?;
    Ok(sample)
}

async fn fanout_measure(
    harness: &mut Harness,
    accounts: &[(u64, u64)],
    directory: &Path,
    port: u16,
    binary: &Path,
) -> anyhow::Result<Sample> {
    for &(t, p) in accounts {
        harness
            .simulator
            .seed_link(&tenant(t), &object(SET_FANOUT, t, p), PARTNER_A);
    }
    let config = directory.join("palworker.toml");
    harness.write_config(&config)?;
    let mut worker = BenchWorker::spawn(
        binary,
        &config,
        &harness.config_env,
        &directory.join("worker.log"),
        port,
    )?;
    let result = async {
        worker.wait_ready(PHASE_TIMEOUT).await?;
        let ready_rss = worker.status_kib("VmRSS")? as f64 / 1024.0;
        let cpu_before = cpu_seconds(Some(worker.pid()));
        let started = Instant::now();
        harness
            .publish(&events::partner_id_changed(
                "bench-fanout",
                PARTNER_A,
                PARTNER_B,
                None,
            ))
            .await?;
        let mut planned = None;
        let mut planned_rss = 0.0;
        let deadline = Instant::now() + PHASE_TIMEOUT;
        let finished = loop {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the fan-out did not finish within {PHASE_TIMEOUT:?}"
            );
            let scrape = worker.scrape().await?;
            anyhow::ensure!(
                scrape.dead_lettered + scrape.held == 0,
                "the fan-out event was dead-lettered or held"
            );
            if planned.is_none() && scrape.accepted >= 1 {
                planned = Some(started.elapsed());
                planned_rss = worker.status_kib("VmRSS")? as f64 / 1024.0;
            }
            if planned.is_some() && scrape.pending <= 0 && scrape.terminal >= accounts.len() as u64
            {
                break (started.elapsed(), scrape);
            }
            let interval = if planned.is_none() { 5 } else { 50 };
            tokio::time::sleep(Duration::from_millis(interval)).await;
        };
        let (finish, scrape) = finished;
        let peak_rss = worker.status_kib("VmHWM")? as f64 / 1024.0;
        let end_rss = worker.status_kib("VmRSS")? as f64 / 1024.0;
        let cpu = cpu_seconds(Some(worker.pid())) - cpu_before;
        anyhow::ensure!(
            scrape.done == accounts.len() as u64,
            "{} of {} actions ended done ({} failed)",
            scrape.done,
            accounts.len(),
            scrape.failed
        );
        Ok((
            planned.unwrap_or_default(),
            finish,
            ready_rss,
            planned_rss,
            peak_rss,
            end_rss,
            cpu,
        ))
    }
    .await;
    let stopped = worker.stop().await;
    let (planned, finish, ready_rss, planned_rss, peak_rss, end_rss, cpu) = result?;
    stopped?;
    let mut wrong = 0usize;
    for &(t, p) in accounts {
        let link = harness
            .simulator
            .active_link(&tenant(t), &object(SET_FANOUT, t, p));
        if link.is_none_or(|link| link.partner_id != PARTNER_B) {
            wrong += 1;
        }
    }
    anyhow::ensure!(
        wrong == 0,
        "{wrong} of {} links did not move to {PARTNER_B}",
        accounts.len()
    );
    let mut sample = Sample::default();
    sample.push("plan_s", Unit::Seconds, planned.as_secs_f64());
    sample.push("finish_s", Unit::Seconds, finish.as_secs_f64());
    sample.push(
        "actions_per_s",
        Unit::Rate,
        accounts.len() as f64 / (finish - planned).as_secs_f64(),
    );
    sample.push("peak_rss_mib", Unit::Mib, peak_rss);
    sample.push("ready_rss_mib", Unit::Mib, ready_rss);
    sample.push("planned_rss_mib", Unit::Mib, planned_rss);
    sample.push("end_rss_mib", Unit::Mib, end_rss);
    sample.push("worker_cpu_s", Unit::Seconds, cpu);
    Ok(sample)
}
