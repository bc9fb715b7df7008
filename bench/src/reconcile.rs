//! Reconcile (issue 17 point 6): a full reconcile of `--accounts` accounts
//! in `--tenants` tenants at `limits.per_tenant_rps` = [`PER_TENANT_RPS`],
//! timed against its rate-limit bound, and the delay it adds to event
//! actions published while it runs.
//!
//! Setup: the accounts (account `i` in tenant `i % tenants`, one service
//! principal per index within a tenant, so every account is its own
//! identity with its own credential) are imported into a fresh ledger (the
//! fast path, no events), each desired linked to [`PARTNER_A`], and the
//! same links are seeded in the simulator — except one account in
//! [`DRIFT_EVERY`] (never index 0 or 1 of a tenant), whose link is left out:
//! the drift the reconcile must find (`missing`) and plan. An in-process
//! worker with the default concurrency serves the admin API.
//!
//! Phases, one line each:
//! - `events_baseline`: one `project.assignment.started` (moving account 0
//!   of the tenant to [`PARTNER_B`]) for each of [`EVENT_TENANTS`] tenants
//!   spread over all, published together with no reconcile running; each
//!   event's delay is from its publish to its action's `updated_at` once
//!   done (read from the ledger afterwards). Cold tokens.
//! - `reconcile_cold`: `POST /admin/reconcile` (what `palworker reconcile`
//!   sends a running worker), timed from the request until its report
//!   arrives; every read needs a token fetch first. Meanwhile one event per
//!   tenant (account 1 to [`PARTNER_B`]) is published to the tenant the
//!   reconcile is reading at that moment — the inventory is read in key
//!   order, tenant by tenant, so its position is the PAL requests the worker
//!   has made so far (`palworker_api_request_duration_seconds`' count) — until
//!   [`EVENT_TENANTS`] were or the reconcile ended. `extra_delay_*` = each
//!   event's delay minus the baseline's median, also in request slots of its
//!   tenant (× `per_tenant_rps`; an action makes 3 requests with
//!   `pal.verify_writes`, each of which may wait for one slot).
//!   `events_amid_reads` counts the events whose tenant still had reads
//!   queued (one served within 200 ms after the action ended; while the
//!   action runs, the reads yield and none is served). Afterwards
//!   the report must name every drifted account `missing` and plan exactly
//!   those, and once the plan ran every link must be the desired one.
//! - `reconcile_warm`: the same reconcile again right after, no events:
//!   tokens cached as far as `pal::TOKEN_CACHE_BYTES` holds them (the cache
//!   halves itself when full, so after a cold run over more identities than
//!   it holds only some thousands are left: most reads fetch again).
//!
//! `bound_s` = accounts per tenant / `per_tenant_rps`: every tenant read in
//! parallel at its rate from an empty bucket (the limiter's burst of
//! `per_tenant_rps` makes the true floor one second less). `ratio` =
//! `bound_s / seconds` (issue 17: at least 0.9). What bounds each run:
//! - the reads are taken from the inventory in key order, tenant by tenant,
//!   at most `reconcile::READ_CONCURRENCY` in flight: only the few tenants
//!   inside that window are read at once, each at `per_tenant_rps`, so
//!   `reads_per_s` is about (tenants in the window) × `per_tenant_rps`
//!   whatever the number of tenants — `tenants_in_flight` is
//!   READ_CONCURRENCY / accounts per tenant (tenants whose first reads took
//!   their burst and are done add a few more);
//! - were they spread over every tenant, the CPU of this process (worker
//!   and simulator, one token fetch signed per cold read) would bound it
//!   next: `process_cpu_s` / cores is that floor; `sim_service_ms` is the
//!   simulator's own mean time per request;
//! - the warm run differs from the cold one only by the token fetches the
//!   cache saved (`token_fetches`).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use palworker::ledger::Ledger;
use palworker::local::{ADMIN_TOKEN, Harness, HarnessOptions, TempDir};
use palworker::reconcile::{READ_CONCURRENCY, ReconcileLine};
use palworker_core::{ActionState, ReconcileReport};
use palworker_events::{AccountKey, ObjectId, PartnerId, TenantId};

use crate::accounts::{
    SET_RECONCILE, account, assignment_event, credential, object, principals, tenant,
};
use crate::machine::{cpu_seconds, wait};
use crate::report::{Sample, Unit, line, log_run, medians};
use crate::{BenchArgs, LEDGER_CACHE_BYTES, PARTNER_A, PARTNER_B, PHASE_TIMEOUT};

/// `limits.per_tenant_rps` of the worker (issue 17 point 6).
pub const PER_TENANT_RPS: f64 = 20.0;
/// One account in this many has no link in the simulator (the drift).
pub const DRIFT_EVERY: u64 = 1_000;
/// Tenants that get one event each, with and without a reconcile running.
pub const EVENT_TENANTS: u64 = 50;
/// How often the bench looks where the reconcile reads.
const POSITION_POLL: Duration = Duration::from_millis(20);
/// Bounds one reconcile of a broken run (never a timing assertion).
const RECONCILE_TIMEOUT: Duration = Duration::from_secs(3_600);
/// An event's tenant was being read if a read of it follows its action
/// within this long.
const AFTER_ACTION: Duration = Duration::from_millis(200);
/// The index within its tenant of the account each event moves.
const BASELINE_INDEX: u64 = 0;
const DURING_INDEX: u64 = 1;

pub async fn run(url: &str, args: &BenchArgs) -> anyhow::Result<Vec<String>> {
    anyhow::ensure!(
        args.accounts >= args.tenants * 2,
        "reconcile: --accounts must be at least twice --tenants"
    );
    let per_tenant = args.accounts / args.tenants;
    let layout = Layout {
        tenants: args.tenants,
        per_tenant,
    };
    let mut phases: [Vec<Sample>; 3] = Default::default();
    let mut concurrency = 0;
    for run in 1..=args.runs {
        let (samples, used) = reconcile_run(url, &layout).await?;
        concurrency = used;
        for (index, (name, sample)) in samples.into_iter().enumerate() {
            log_run(&format!("reconcile {name}"), run, args.runs, &sample);
            phases[index].push(sample);
        }
    }
    let fixed = |phase: &str| {
        vec![
            ("phase", phase.to_owned()),
            ("accounts", layout.accounts().to_string()),
            ("tenants", args.tenants.to_string()),
            ("per_tenant_rps", PER_TENANT_RPS.to_string()),
            ("concurrency", concurrency.to_string()),
            ("runs", args.runs.to_string()),
        ]
    };
    let baseline = medians(&phases[0]);
    let cold = medians(&phases[1]);
    let warm = medians(&phases[2]);
    let cold_met = cold.get("ratio") >= 0.9 && cold.get("extra_delay_max_slots") <= 1.0;
    Ok(vec![
        line(
            "reconcile",
            &fixed("events_baseline"),
            &baseline,
            "none",
            true,
        ),
        line(
            "reconcile",
            &fixed("reconcile_cold"),
            &cold,
            "ratio>=0.9,extra_delay_slots<=1",
            cold_met,
        ),
        line(
            "reconcile",
            &fixed("reconcile_warm"),
            &warm,
            "ratio>=0.9",
            warm.get("ratio") >= 0.9,
        ),
    ])
}

/// Account `p` of tenant `t` for `t < tenants`, `p < per_tenant`.
struct Layout {
    tenants: u64,
    per_tenant: u64,
}

impl Layout {
    fn accounts(&self) -> u64 {
        self.tenants * self.per_tenant
    }

    /// Every account, in the inventory's key order (tenant, then object).
    fn all(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        (0..self.tenants).flat_map(move |t| (0..self.per_tenant).map(move |p| (t, p)))
    }

    /// The accounts left without their link in the simulator.
    fn drifted(&self, t: u64, p: u64) -> bool {
        p > DURING_INDEX && (t * self.per_tenant + p) % DRIFT_EVERY == DRIFT_EVERY - 1
    }

    fn key(&self, t: u64, p: u64) -> anyhow::Result<AccountKey> {
        Ok(AccountKey {
            tenant_id: TenantId::parse(&tenant(t))?,
            object_id: ObjectId::parse(&object(SET_RECONCILE, t, p))?,
        })
    }
}

type Phases = Vec<(&'static str, Sample)>;

/// An event's delay from publish to done in milliseconds, and when it was done.
type Ended = (f64, DateTime<Utc>);

async fn reconcile_run(url: &str, layout: &Layout) -> anyhow::Result<(Phases, usize)> {
    let work = TempDir::new("palworker-bench-reconcile")?;
    let ledger_path = work.path().join("ledger");
    let started = Instant::now();
    import(layout, &ledger_path).await?;
    eprintln!(
        "reconcile: imported {} accounts into a ledger in {:.1} s",
        layout.accounts(),
        started.elapsed().as_secs_f64()
    );
    let mut harness = Harness::start(HarnessOptions {
        amqp_url: url.to_owned(),
        name: "palworker-bench-reconcile".to_owned(),
        principals: principals(SET_RECONCILE, layout.tenants, layout.per_tenant),
        ledger_path: Some(ledger_path),
        extra_toml: format!(
            "[ledger]\ncache_capacity = {LEDGER_CACHE_BYTES}\n\
             [limits]\nper_tenant_rps = {PER_TENANT_RPS:.1}\nmax_actions_per_event = 100000000\n"
        ),
        ..HarnessOptions::default()
    })
    .await?;
    let concurrency = harness.settings.limits.concurrency;
    let result = reconcile_phases(&mut harness, layout).await;
    let shutdown = harness.shutdown().await;
    let phases = result?;
    shutdown?;
    Ok((phases, concurrency))
}

/// The inventory: every account desired linked to [`PARTNER_A`].
async fn import(layout: &Layout, path: &Path) -> anyhow::Result<()> {
    let rows = layout
        .all()
        .map(|(t, p)| {
            Ok((
                account(SET_RECONCILE, t, p, Some(&credential(SET_RECONCILE, p)))?,
                Some(PartnerId::parse(PARTNER_A)?),
            ))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let ledger = Ledger::open(&path, LEDGER_CACHE_BYTES)?;
        ledger.import_accounts(rows, Utc::now())?;
        ledger.flush()?;
        Ok(())
    })
    .await?
    .context("importing the inventory")
}

async fn reconcile_phases(harness: &mut Harness, layout: &Layout) -> anyhow::Result<Phases> {
    let mut drifted = Vec::new();
    for (t, p) in layout.all() {
        if layout.drifted(t, p) {
            drifted.push((t, p));
        } else {
            harness
                .simulator
                .seed_link(&tenant(t), &object(SET_RECONCILE, t, p), PARTNER_A);
        }
    }
    eprintln!(
        "reconcile: {} links seeded in the simulator, {} left out (drift)",
        layout.accounts() - drifted.len() as u64,
        drifted.len()
    );

    // 1. The events alone.
    let event_tenants = EVENT_TENANTS.min(layout.tenants);
    let spread = layout.tenants / event_tenants;
    let mut baseline = Vec::new();
    for i in 0..event_tenants {
        let t = i * spread;
        baseline.push((
            t,
            publish_event(harness, t, BASELINE_INDEX, "baseline").await?,
        ));
    }
    let baseline_ms: Vec<f64> = delays_ms(harness, layout, BASELINE_INDEX, &baseline)
        .await?
        .into_iter()
        .map(|(delay, _)| delay)
        .collect();
    let baseline_median = median(&baseline_ms);
    let mut baseline_sample = Sample::default();
    baseline_sample.push("events", Unit::Count, baseline_ms.len() as f64);
    baseline_sample.push("delay_median_ms", Unit::Millis, baseline_median);
    baseline_sample.push("delay_max_ms", Unit::Millis, max(&baseline_ms));
    eprintln!(
        "reconcile: baseline events done, delay median {baseline_median:.1} ms, max {:.1} ms",
        max(&baseline_ms)
    );

    // 2. The cold reconcile, events published to the tenant it reads.
    let measured = Measure::start(harness);
    let client = reqwest::Client::builder()
        .timeout(RECONCILE_TIMEOUT)
        .build()?;
    let address = harness.app().http_addr;
    let requests_before = harness.app().metrics.api_requests().0;
    let call = tokio::spawn(reconcile_call(client.clone(), address));
    let mut during = Vec::new();
    let mut published = BTreeSet::new();
    let mut polls = 0u64;
    while !call.is_finished() {
        let position = harness
            .app()
            .metrics
            .api_requests()
            .0
            .saturating_sub(requests_before)
            .saturating_sub(3 * during.len() as u64);
        // The tenant whose reads wait now: past the first of the window.
        let t = ((position + layout.per_tenant / 2) / layout.per_tenant).min(layout.tenants - 1);
        if (during.len() as u64) < event_tenants && published.insert(t) {
            during.push((t, publish_event(harness, t, DURING_INDEX, "during").await?));
        }
        polls += 1;
        if polls.is_multiple_of(500) {
            eprintln!(
                "reconcile: {position} of {} read after {:.0} s, {} event(s) published",
                layout.accounts(),
                measured.started.elapsed().as_secs_f64(),
                during.len()
            );
        }
        tokio::time::sleep(POSITION_POLL).await;
    }
    let report = call.await??;
    // Tenants whose reads can be in flight at once, reading in key order.
    let in_flight_tenants =
        (READ_CONCURRENCY as f64 / layout.per_tenant as f64).clamp(1.0, layout.tenants as f64);
    let mut cold = measured.finish(harness, layout, &report);
    cold.push("tenants_in_flight", Unit::Ratio, in_flight_tenants);
    check_report(&report, drifted.len() as u64, "cold")?;
    let ended = delays_ms(harness, layout, DURING_INDEX, &during).await?;
    let during_ms: Vec<f64> = ended.iter().map(|(delay, _)| *delay).collect();
    // An event met the reconcile if the simulator served a read of another
    // account of its tenant shortly after its action ended: the reconcile's
    // reads of that tenant were waiting while the action ran (they yield to
    // it, so none is served meanwhile).
    let served = harness.simulator.requests();
    let contended = during
        .iter()
        .zip(&ended)
        .filter(|((t, _), (_, done))| {
            let tenant = tenant(*t);
            let own = object(SET_RECONCILE, *t, DURING_INDEX);
            let until = *done + chrono::Duration::from_std(AFTER_ACTION).unwrap_or_default();
            served.iter().any(|r| {
                r.method == "GET"
                    && r.at >= *done
                    && r.at <= until
                    && r.tenant_id.as_deref() == Some(tenant.as_str())
                    && r.object_id.as_deref() != Some(own.as_str())
            })
        })
        .count();
    drop(served);
    let extra: Vec<f64> = during_ms.iter().map(|d| d - baseline_median).collect();
    let slots = |ms: f64| ms / 1000.0 * PER_TENANT_RPS;
    cold.push("events_during", Unit::Count, during.len() as f64);
    cold.push("events_amid_reads", Unit::Count, contended as f64);
    cold.push("planned_actions", Unit::Count, report.actions as f64);
    cold.push("superseded", Unit::Count, report.superseded as f64);
    cold.push("busy", Unit::Count, report.busy as f64);
    cold.push("delay_median_ms", Unit::Millis, median(&during_ms));
    cold.push("extra_delay_median_ms", Unit::Millis, median(&extra));
    cold.push("extra_delay_max_ms", Unit::Millis, max(&extra));
    cold.push(
        "extra_delay_median_slots",
        Unit::Ratio,
        slots(median(&extra)),
    );
    cold.push("extra_delay_max_slots", Unit::Ratio, slots(max(&extra)));
    eprintln!(
        "reconcile: cold run {:.1} s, {} findings planned, {} events during (extra delay median {:.1} ms, max {:.1} ms)",
        cold.get("seconds"),
        report.actions,
        during.len(),
        median(&extra),
        max(&extra)
    );

    // The plan runs: every drifted account linked again.
    let app = harness.app();
    wait(
        PHASE_TIMEOUT,
        Duration::from_millis(10),
        "the reconcile's plan done",
        || app.metrics.actions_pending() <= 0,
    )
    .await?;
    anyhow::ensure!(
        app.metrics.actions_ended(ActionState::Failed) == 0,
        "an action failed"
    );
    let unrestored = drifted
        .iter()
        .filter(|&&(t, p)| {
            harness
                .simulator
                .active_link(&tenant(t), &object(SET_RECONCILE, t, p))
                .is_none_or(|link| link.partner_id != PARTNER_A)
        })
        .count();
    anyhow::ensure!(
        unrestored == 0,
        "{unrestored} of {} drifted links were not restored",
        drifted.len()
    );

    // 3. The same reconcile again, tokens cached as far as they fit.
    let measured = Measure::start(harness);
    let report = reconcile_call(client, address).await?;
    let mut warm = measured.finish(harness, layout, &report);
    warm.push("tenants_in_flight", Unit::Ratio, in_flight_tenants);
    check_report(&report, 0, "warm")?;
    eprintln!("reconcile: warm run {:.1} s", warm.get("seconds"));
    Ok(vec![
        ("events_baseline", baseline_sample),
        ("reconcile_cold", cold),
        ("reconcile_warm", warm),
    ])
}

/// The counters before a reconcile, to report its run.
struct Measure {
    started: Instant,
    cpu: f64,
    requests: usize,
    tokens: usize,
}

impl Measure {
    fn start(harness: &Harness) -> Self {
        Measure {
            requests: harness.simulator.requests().len(),
            tokens: harness.simulator.token_requests().len(),
            cpu: cpu_seconds(Some(std::process::id())),
            started: Instant::now(),
        }
    }

    fn finish(self, harness: &Harness, layout: &Layout, report: &ReconcileReport) -> Sample {
        let seconds = self.started.elapsed().as_secs_f64();
        let cpu = cpu_seconds(Some(std::process::id())) - self.cpu;
        let served = harness.simulator.requests();
        let served = &served[self.requests.min(served.len())..];
        let service_ms = served.iter().map(|r| r.service_us as f64).sum::<f64>()
            / served.len().max(1) as f64
            / 1000.0;
        let tokens = harness.simulator.token_requests().len() - self.tokens;
        let bound = layout.per_tenant as f64 / PER_TENANT_RPS;
        let mut sample = Sample::default();
        sample.push("seconds", Unit::Seconds, seconds);
        sample.push("read", Unit::Count, report.read as f64);
        sample.push("reads_per_s", Unit::Rate, report.read as f64 / seconds);
        sample.push("bound_s", Unit::Seconds, bound);
        sample.push("ratio", Unit::Ratio, bound / seconds);
        sample.push("token_fetches", Unit::Count, tokens as f64);
        sample.push("process_cpu_s", Unit::Seconds, cpu);
        sample.push("sim_service_ms", Unit::Ratio, service_ms);
        sample.push("missing", Unit::Count, report.missing as f64);
        sample
    }
}

/// `POST /admin/reconcile` as `palworker reconcile` sends it: the findings
/// streamed as JSON Lines, the report last.
async fn reconcile_call(
    client: reqwest::Client,
    address: std::net::SocketAddr,
) -> anyhow::Result<ReconcileReport> {
    let response = client
        .post(format!("http://{address}/admin/reconcile"))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .context("POST /admin/reconcile")?;
    let status = response.status();
    let body = response
        .text()
        .await
        .context("reading the reconcile's answer")?;
    anyhow::ensure!(
        status.is_success(),
        "the reconcile answered {status}: {body}"
    );
    let last = body
        .lines()
        .rev()
        .find(|line| !line.trim().is_empty())
        .context("the reconcile answered nothing")?;
    match serde_json::from_str(last)
        .with_context(|| format!("the reconcile's last line is not its report: {last}"))?
    {
        ReconcileLine::Report(report) => Ok(*report),
        ReconcileLine::Finding(_) => {
            anyhow::bail!("the reconcile's answer ended without its report")
        }
    }
}

fn check_report(report: &ReconcileReport, drifted: u64, run: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        report.missing == drifted
            && report.actions == drifted
            && report.unexpected == 0
            && report.unreadable == 0
            && report.manual == 0,
        "the {run} reconcile found missing={} unexpected={} different={} unreadable={} manual={} and planned {}, expected {drifted} missing, all planned",
        report.missing,
        report.unexpected,
        report.different,
        report.unreadable,
        report.manual,
        report.actions
    );
    Ok(())
}

/// Publishes the event moving account `p` of tenant `t` to [`PARTNER_B`];
/// when.
async fn publish_event(
    harness: &mut Harness,
    t: u64,
    p: u64,
    label: &str,
) -> anyhow::Result<DateTime<Utc>> {
    let event = assignment_event(
        &format!("bench-reconcile-{label}-{t}-{p}"),
        SET_RECONCILE,
        t,
        p,
        PARTNER_B,
    );
    let at = Utc::now();
    harness.publish(&event).await?;
    Ok(at)
}

/// Waits until the action of account `p` of each event's tenant is done;
/// each one's time from its publish to its end, in milliseconds, and when it
/// ended.
async fn delays_ms(
    harness: &Harness,
    layout: &Layout,
    p: u64,
    published: &[(u64, DateTime<Utc>)],
) -> anyhow::Result<Vec<Ended>> {
    let keys = published
        .iter()
        .map(|&(t, at)| Ok((layout.key(t, p)?, at)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let ledger = harness.app().ledger.clone();
    let deadline = Instant::now() + PHASE_TIMEOUT;
    loop {
        let ledger = ledger.clone();
        let keys = keys.clone();
        let ended = tokio::task::spawn_blocking(move || -> anyhow::Result<Option<Vec<Ended>>> {
            let mut delays = Vec::new();
            for (key, at) in &keys {
                let Some(action) = ledger
                    .inventory_entry(key)?
                    .and_then(|entry| entry.current_action)
                else {
                    return Ok(None);
                };
                let Some(action) = ledger.action(action)? else {
                    return Ok(None);
                };
                if !action.state.is_terminal() {
                    return Ok(None);
                }
                anyhow::ensure!(
                    action.state == ActionState::Done
                        && action.after_partner_id.as_ref().map(PartnerId::as_str)
                            == Some(PARTNER_B),
                    "the action of {}/{} ended {:?}",
                    key.tenant_id.as_str(),
                    key.object_id.as_str(),
                    action.state
                );
                let delay = (action.updated_at - *at).num_microseconds().unwrap_or(0) as f64 / 1e3;
                delays.push((delay, action.updated_at));
            }
            Ok(Some(delays))
        })
        .await??;
        if let Some(delays) = ended {
            return Ok(delays);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the events' actions did not end within {PHASE_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
}

fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::NAN, f64::max)
}
