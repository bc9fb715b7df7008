//! Retention (issue 16, SPEC §11.2): does the ledger stay bounded under a
//! steady load? A worker process with `ledger.retention = "1s"` (and
//! `ledger.dedup_retention = "1s"`, the shortest the configuration allows)
//! runs `--waves` waves; each publishes `--actions` `project.assignment.started`
//! events (one action each, the partner alternating between two IDs, so every
//! action moves a link in the simulator), waits until every action ended and
//! the worker's own sweeper pruned every event, action and deduplication
//! marker of the wave (`palworker_ledger_pruned_total`), then records the
//! ledger's size: sled's `size_on_disk` (`palworker_ledger_size_bytes`,
//! measured at each scrape) and the directory's bytes (apparent and
//! allocated). The target compares the size after the last wave with the
//! size after the first (issue 16: at most 1.5×); the curve goes to stderr
//! and into the line.
//!
//! The audit trail is not the ledger's operational records: it keeps one
//! outcome per action for `audit.retention` (default forever), so it grows
//! by design. After the last wave the worker stops and the ledger is read in
//! this process (`Ledger::export`, every record): the logical bytes of the
//! audit trail and of everything else are reported beside the sizes, and
//! `ledger check` must find nothing to repair.
//!
//! Last, the length of a sweep step, in this process on a ledger of its own:
//! one wave of ended single-action events plus one fan-out over the same
//! accounts (a large plan, its actions in `event_actions`), all ended, swept
//! with the worker's own step size (`sweeper::STEP`); every step is timed.
//! The sweeper runs one step per blocking task, so a step is the longest a
//! sweep holds the ledger's writers back.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use palworker::clock::SystemClock;
use palworker::ledger::{CheckMode, Ledger, Retention, SweepCursor, Swept};
use palworker::local::{Harness, HarnessOptions, ServicePrincipal, TempDir, events};
use palworker::sweeper;
use palworker_core::{AcceptOutcome, ActionState};
use palworker_events::PartnerId;

use crate::accounts::{assignment_event, object, parse_event, principals, tenant};
use crate::broker;
use crate::ledgers::end_every_due_action;
use crate::machine::{free_port, load_average};
use crate::report::{Sample, Unit, line, log_run, medians};
use crate::worker::BenchWorker;
use crate::{BenchArgs, LEDGER_CACHE_BYTES, PARTNER_A, PARTNER_B, PHASE_TIMEOUT, PUBLISH_WINDOW};

/// The accounts of this scenario (see `accounts`: sets never share an identity).
const SET_RETENTION: u8 = 0x07;
/// `ledger.retention` and `ledger.dedup_retention` of the worker.
const RETENTION: &str = "1s";
/// Issue 16: the size after the last wave within this factor of the first.
const TARGET_RATIO: f64 = 1.5;
/// How often the worker's `/metrics` is read while waiting.
const POLL_EVERY: Duration = Duration::from_millis(100);
/// How long the worker idles after the last wave before the size is read
/// once more (sled reclaims segments lazily).
const SETTLE: Duration = Duration::from_secs(10);
const MIB: f64 = 1024.0 * 1024.0;

/// `audit.retention` as the line shows it: `0s` keeps the trail forever.
fn audit_retention(args: &BenchArgs) -> String {
    if args.audit_retention == "0s" {
        "forever".to_owned()
    } else {
        args.audit_retention.clone()
    }
}

/// What one run found: its numbers and the size curve.
struct RunResult {
    sample: Sample,
    /// `palworker_ledger_size_bytes` after each wave, in MiB.
    curve: Vec<f64>,
    /// The directory's apparent bytes after each wave, in MiB.
    directory_curve: Vec<f64>,
}

pub async fn run(url: &str, args: &BenchArgs, worker: &Path) -> anyhow::Result<Vec<String>> {
    anyhow::ensure!(args.waves >= 1, "--waves must be at least 1");
    let per_tenant = args.actions / args.tenants;
    let accounts: Vec<(u64, u64)> = (0..args.tenants)
        .flat_map(|t| (0..per_tenant).map(move |p| (t, p)))
        .collect();
    let principals = principals(SET_RETENTION, args.tenants, per_tenant);
    let mut runs = Vec::new();
    for run in 1..=args.runs {
        let work = TempDir::new("palworker-bench-retention")?;
        let mut result =
            retention_run(url, args, &principals, &accounts, work.path(), worker).await?;
        let (max_step, steps, sweep_seconds) = {
            let path = work.path().join("sweep-ledger");
            let accounts = accounts.clone();
            tokio::task::spawn_blocking(move || sweep_steps(&path, &accounts)).await??
        };
        result
            .sample
            .push("max_sweep_step_ms", Unit::Seconds, max_step * 1000.0);
        result.sample.push("sweep_steps", Unit::Count, steps as f64);
        result
            .sample
            .push("sweep_total_s", Unit::Seconds, sweep_seconds);
        eprintln!(
            "retention run {run}/{}: size_on_disk MiB after each wave: {}",
            args.runs,
            render_curve(&result.curve)
        );
        eprintln!(
            "retention run {run}/{}: directory MiB after each wave: {}",
            args.runs,
            render_curve(&result.directory_curve)
        );
        log_run("retention", run, args.runs, &result.sample);
        runs.push(result);
    }
    let median = medians(&runs.iter().map(|r| r.sample.clone()).collect::<Vec<_>>());
    // The curve of the run whose ratio is the median.
    let mut by_ratio: Vec<&RunResult> = runs.iter().collect();
    by_ratio.sort_by(|a, b| {
        a.sample
            .get("size_ratio")
            .total_cmp(&b.sample.get("size_ratio"))
    });
    let curve = render_curve(&by_ratio[by_ratio.len() / 2].curve);
    let met = median.get("size_ratio") <= TARGET_RATIO;
    Ok(vec![line(
        "retention",
        &[
            ("waves", args.waves.to_string()),
            ("actions_per_wave", accounts.len().to_string()),
            ("tenants", args.tenants.to_string()),
            ("retention", RETENTION.to_owned()),
            ("dedup_retention", RETENTION.to_owned()),
            ("audit_retention", audit_retention(args)),
            ("runs", args.runs.to_string()),
            ("size_on_disk_mib_curve", curve),
        ],
        &median,
        "size_ratio<=1.5",
        met,
    )])
}

fn render_curve(curve: &[f64]) -> String {
    curve
        .iter()
        .map(|mib| format!("{mib:.1}"))
        .collect::<Vec<_>>()
        .join(",")
}

async fn retention_run(
    url: &str,
    args: &BenchArgs,
    principals: &[ServicePrincipal],
    accounts: &[(u64, u64)],
    directory: &Path,
    binary: &Path,
) -> anyhow::Result<RunResult> {
    let ledger = directory.join("ledger");
    let port = free_port()?;
    let mut harness = Harness::prepare(
        HarnessOptions {
            amqp_url: url.to_owned(),
            name: "palworker-bench-retention".to_owned(),
            principals: principals.to_vec(),
            ledger_path: Some(ledger.clone()),
            extra_toml: format!(
                "[http]\nlisten = \"127.0.0.1:{port}\"\n\
                 [ledger]\ncache_capacity = {LEDGER_CACHE_BYTES}\nretention = \"{RETENTION}\"\n\
                 dedup_retention = \"{RETENTION}\"\n\
                 [audit]\nretention = \"{}\"\n\
                 [limits]\nconcurrency = {}\n",
                args.audit_retention, args.concurrency
            ),
            ..HarnessOptions::default()
        },
        Arc::new(SystemClock),
    )
    .await?;
    let result = retention_waves(&mut harness, url, args, accounts, directory, port, binary).await;
    let result = result.and_then(|result| {
        // Every link ended where the last wave put it.
        let partner = last_partner(args.waves);
        let wrong = accounts
            .iter()
            .filter(|&&(t, p)| {
                harness
                    .simulator
                    .active_link(&tenant(t), &object(SET_RETENTION, t, p))
                    .is_none_or(|link| link.partner_id != partner)
            })
            .count();
        anyhow::ensure!(
            wrong == 0,
            "{wrong} of {} links are not on {partner}",
            accounts.len()
        );
        Ok(result)
    });
    let shutdown = harness.shutdown().await;
    let mut result = result?;
    shutdown?;
    // The worker is stopped: what the ledger holds, read in this process.
    let contents = {
        let ledger = ledger.clone();
        tokio::task::spawn_blocking(move || ledger_contents(&ledger)).await??
    };
    let sample = &mut result.sample;
    sample.push("audit_records", Unit::Count, contents.audit_records as f64);
    sample.push("audit_mib", Unit::Mib, contents.audit_bytes as f64 / MIB);
    sample.push("other_records", Unit::Count, contents.other_records as f64);
    sample.push("other_mib", Unit::Mib, contents.other_bytes as f64 / MIB);
    sample.push(
        "closed_size_on_disk_mib",
        Unit::Mib,
        contents.size_on_disk as f64 / MIB,
    );
    sample.push(
        "closed_directory_mib",
        Unit::Mib,
        directory_bytes(&ledger)?.0 as f64 / MIB,
    );
    Ok(result)
}

/// The worker's `/metrics`, the numbers this scenario waits on.
#[derive(Debug, Default)]
struct Progress {
    accepted: u64,
    held: u64,
    dead_lettered: u64,
    done: u64,
    terminal: u64,
    pruned_events: u64,
    pruned_actions: u64,
    pruned_markers: u64,
    size_bytes: f64,
}

async fn progress(http: &reqwest::Client, port: u16) -> anyhow::Result<Progress> {
    let response = http
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await?;
    anyhow::ensure!(
        response.status().is_success(),
        "/metrics answered {}",
        response.status()
    );
    let body = response.text().await?;
    let mut progress = Progress::default();
    for line in body.lines() {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let label = |name: &str| series.contains(&format!("=\"{name}\""));
        if series.starts_with("palworker_events_total{") {
            if label("accepted") {
                progress.accepted += value as u64;
            } else if label("held") {
                progress.held += value as u64;
            } else if label("dead_lettered") {
                progress.dead_lettered += value as u64;
            }
        } else if series.starts_with("palworker_actions_total{") {
            progress.terminal += value as u64;
            if label("done") {
                progress.done += value as u64;
            }
        } else if series.starts_with("palworker_ledger_pruned_total{") {
            if label("event") {
                progress.pruned_events = value as u64;
            } else if label("action") {
                progress.pruned_actions = value as u64;
            } else if label("marker") {
                progress.pruned_markers = value as u64;
            }
        } else if series == "palworker_ledger_size_bytes" {
            progress.size_bytes = value;
        }
    }
    Ok(progress)
}

/// Polls `/metrics` until `until` holds; fails on a dead-lettered or held
/// event, or after [`PHASE_TIMEOUT`].
async fn wait_for(
    http: &reqwest::Client,
    port: u16,
    what: &str,
    until: impl Fn(&Progress) -> bool,
) -> anyhow::Result<Progress> {
    let deadline = Instant::now() + PHASE_TIMEOUT;
    loop {
        let progress = progress(http, port).await?;
        anyhow::ensure!(
            progress.dead_lettered + progress.held == 0,
            "an event was dead-lettered or held: {progress:?}"
        );
        if until(&progress) {
            return Ok(progress);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "timed out after {PHASE_TIMEOUT:?} waiting for {what}: {progress:?}"
        );
        tokio::time::sleep(POLL_EVERY).await;
    }
}

async fn retention_waves(
    harness: &mut Harness,
    url: &str,
    args: &BenchArgs,
    accounts: &[(u64, u64)],
    directory: &Path,
    port: u16,
    binary: &Path,
) -> anyhow::Result<RunResult> {
    let config = directory.join("palworker.toml");
    harness.write_config(&config)?;
    let mut worker = BenchWorker::spawn(
        binary,
        &config,
        &harness.config_env,
        &directory.join("worker.log"),
        port,
    )?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let ledger = directory.join("ledger");
    let measured = async {
        worker.wait_ready(PHASE_TIMEOUT).await?;
        let per_wave = accounts.len() as u64;
        let mut curve = Vec::new();
        let mut directory_curve = Vec::new();
        let mut wave_seconds = Vec::new();
        let mut prune_lag = Vec::new();
        for wave in 1..=args.waves as u64 {
            let partner = last_partner(wave as usize);
            let bodies = accounts
                .iter()
                .map(|&(t, p)| {
                    let event = assignment_event(
                        &format!("bench-retention-{wave}-{t}-{p}"),
                        SET_RETENTION,
                        t,
                        p,
                        partner,
                    );
                    Ok((
                        "project.assignment.started".to_owned(),
                        serde_json::to_vec(&event)?,
                    ))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let started = Instant::now();
            let published = broker::publish_many(
                url,
                &harness.topology.exchange,
                bodies,
                "application/cloudevents+json",
                PUBLISH_WINDOW,
            )
            .await?;
            harness.published += published;
            let total = wave * per_wave;
            // One action per event, never retried: every action ended when
            // as many outcomes were counted (`palworker_actions_pending` is a
            // gauge refreshed every 15 s, too late to time a wave by).
            let ended = wait_for(&http, port, "every action to end", |p| {
                p.accepted >= total && p.terminal >= total
            })
            .await?;
            anyhow::ensure!(
                ended.done == total,
                "{} of {total} actions ended done",
                ended.done
            );
            let ended_at = Instant::now();
            let pruned = wait_for(&http, port, "the sweeper to prune the wave", |p| {
                p.pruned_events >= total && p.pruned_actions >= total && p.pruned_markers >= total
            })
            .await?;
            let (apparent, allocated) = directory_bytes(&ledger)?;
            wave_seconds.push(ended_at.duration_since(started).as_secs_f64());
            prune_lag.push(ended_at.elapsed().as_secs_f64());
            curve.push(pruned.size_bytes / MIB);
            directory_curve.push(apparent as f64 / MIB);
            eprintln!(
                "retention wave {wave}/{} ({}): ended in {:.1} s, pruned {:.1} s later; \
                 size_on_disk {:.1} MiB, directory {:.1} MiB ({:.1} MiB allocated)",
                args.waves,
                load_average(),
                wave_seconds.last().copied().unwrap_or_default(),
                prune_lag.last().copied().unwrap_or_default(),
                pruned.size_bytes / MIB,
                apparent as f64 / MIB,
                allocated as f64 / MIB,
            );
        }
        tokio::time::sleep(SETTLE).await;
        let settled = progress(&http, port).await?;
        let (settled_directory, _) = directory_bytes(&ledger)?;
        let first = curve.first().copied().unwrap_or(f64::NAN);
        let last = curve.last().copied().unwrap_or(f64::NAN);
        let peak = curve.iter().copied().fold(f64::NAN, f64::max);
        let directory_first = directory_curve.first().copied().unwrap_or(f64::NAN);
        let directory_last = directory_curve.last().copied().unwrap_or(f64::NAN);
        let mut sample = Sample::default();
        sample.push("size_ratio", Unit::Ratio, last / first);
        sample.push("first_mib", Unit::Mib, first);
        sample.push("last_mib", Unit::Mib, last);
        sample.push("peak_mib", Unit::Mib, peak);
        sample.push("settled_mib", Unit::Mib, settled.size_bytes / MIB);
        sample.push(
            "directory_ratio",
            Unit::Ratio,
            directory_last / directory_first,
        );
        sample.push(
            "settled_directory_mib",
            Unit::Mib,
            settled_directory as f64 / MIB,
        );
        sample.push("wave_s", Unit::Seconds, median(&wave_seconds));
        sample.push("prune_lag_s", Unit::Seconds, median(&prune_lag));
        sample.push(
            "max_prune_lag_s",
            Unit::Seconds,
            prune_lag.iter().copied().fold(f64::NAN, f64::max),
        );
        Ok::<_, anyhow::Error>(RunResult {
            sample,
            curve,
            directory_curve,
        })
    }
    .await;
    let stopped = worker.stop().await;
    let result = measured?;
    stopped?;
    Ok(result)
}

/// The partner ID wave `wave` (from 1) links every account to.
fn last_partner(wave: usize) -> &'static str {
    if wave % 2 == 1 { PARTNER_A } else { PARTNER_B }
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The bytes of every file under `path`: apparent (their lengths) and
/// allocated (their blocks).
fn directory_bytes(path: &Path) -> anyhow::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut apparent = 0;
    let mut allocated = 0;
    for entry in std::fs::read_dir(path).with_context(|| format!("reading {}", path.display()))? {
        let entry = entry?;
        let metadata = entry.metadata()?;
        if metadata.is_dir() {
            let (a, b) = directory_bytes(&entry.path())?;
            apparent += a;
            allocated += b;
        } else {
            apparent += metadata.len();
            allocated += metadata.blocks() * 512;
        }
    }
    Ok((apparent, allocated))
}

/// What a ledger holds, by the bytes of its records as exported.
#[derive(Debug, Default)]
struct Contents {
    audit_records: u64,
    audit_bytes: u64,
    other_records: u64,
    other_bytes: u64,
    size_on_disk: u64,
}

/// Tallies an export's lines (each `{"tree":"NAME",…}`) without keeping them.
struct Tally<'a> {
    contents: &'a mut Contents,
    line: Vec<u8>,
}

impl Tally<'_> {
    fn count(&mut self) {
        if self.line.starts_with(b"{\"tree\":\"audit\"") {
            self.contents.audit_records += 1;
            self.contents.audit_bytes += self.line.len() as u64;
        } else if self.line.starts_with(b"{\"tree\":") {
            self.contents.other_records += 1;
            self.contents.other_bytes += self.line.len() as u64;
        }
        self.line.clear();
    }
}

impl std::io::Write for Tally<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        for &byte in bytes {
            if byte == b'\n' {
                self.count();
            } else {
                self.line.push(byte);
            }
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Reads the (closed) ledger: its records by kind, its size, and that
/// `ledger check` finds every counter and index in step with the records.
fn ledger_contents(path: &Path) -> anyhow::Result<Contents> {
    let ledger = Ledger::open(path, LEDGER_CACHE_BYTES)?;
    let mut contents = Contents {
        size_on_disk: ledger.size_on_disk(),
        ..Contents::default()
    };
    ledger.export(&mut Tally {
        contents: &mut contents,
        line: Vec::new(),
    })?;
    let mut differences = Vec::new();
    ledger.check(CheckMode::Report, &mut |difference| {
        differences.push(format!("{difference:?}"));
    })?;
    anyhow::ensure!(
        differences.is_empty(),
        "ledger check after the waves: {}",
        differences.join("; ")
    );
    eprintln!(
        "retention: after the waves the ledger holds {} audit records ({:.1} MiB as exported) \
         and {} other records ({:.1} MiB)",
        contents.audit_records,
        contents.audit_bytes as f64 / MIB,
        contents.other_records,
        contents.other_bytes as f64 / MIB
    );
    Ok(contents)
}

/// Builds a ledger of one wave of ended single-action events and one ended
/// fan-out over the same accounts, then sweeps it as the worker does, one
/// step of `sweeper::STEP` at a time: the longest step in seconds, the
/// number of steps, and the whole sweep's seconds.
fn sweep_steps(path: &Path, accounts: &[(u64, u64)]) -> anyhow::Result<(f64, usize, f64)> {
    let ledger = Ledger::open(path, LEDGER_CACHE_BYTES)?;
    let built = Instant::now();
    let start = Utc::now();
    for &(t, p) in accounts {
        let event = parse_event(&assignment_event(
            &format!("bench-sweep-{t}-{p}"),
            SET_RETENTION,
            t,
            p,
            PARTNER_A,
        ))?;
        let outcome = ledger.accept(&event, None, start, usize::MAX)?;
        anyhow::ensure!(
            matches!(outcome, AcceptOutcome::Accepted { .. }),
            "not accepted: {outcome:?}"
        );
    }
    finish_all(&ledger, PARTNER_A)?;
    let fan_out = parse_event(&events::partner_id_changed(
        "bench-sweep-fanout",
        PARTNER_A,
        PARTNER_B,
        None,
    ))?;
    ledger.accept(&fan_out, None, Utc::now(), usize::MAX)?;
    finish_all(&ledger, PARTNER_B)?;
    // Their results count as published (no worker runs here to publish
    // them): an event whose result is still owed is kept.
    for result in ledger.pending_results(usize::MAX)? {
        ledger.result_published(&result)?;
    }
    ledger.flush()?;
    let counts = ledger.action_state_counts()?;
    anyhow::ensure!(
        counts.get("done").copied().unwrap_or(0) == 2 * accounts.len() as u64,
        "the sweep ledger holds {counts:?}"
    );
    eprintln!(
        "retention: built a ledger of {} ended events and a fan-out of {} ended actions in {:.1} s",
        accounts.len(),
        accounts.len(),
        built.elapsed().as_secs_f64()
    );
    let retention = Retention {
        records: chrono::Duration::seconds(1),
        markers: chrono::Duration::seconds(1),
        audit: None,
    };
    let now = Utc::now() + chrono::Duration::seconds(2);
    let mut cursor = SweepCursor::default();
    let mut steps: Vec<(Duration, Swept)> = Vec::new();
    let mut removed = (0u64, 0u64, 0u64);
    let sweep = Instant::now();
    while !cursor.is_done() {
        let step = Instant::now();
        let swept = ledger.sweep(now, retention, sweeper::STEP, &mut cursor)?;
        steps.push((step.elapsed(), swept));
        removed.0 += swept.events;
        removed.1 += swept.actions;
        removed.2 += swept.markers;
    }
    let total = sweep.elapsed();
    let expected_events = accounts.len() as u64 + 1;
    anyhow::ensure!(
        removed == (expected_events, 2 * accounts.len() as u64, expected_events),
        "the sweep removed (events, actions, markers) = {removed:?}"
    );
    let mut durations: Vec<f64> = steps.iter().map(|(d, _)| d.as_secs_f64()).collect();
    durations.sort_by(f64::total_cmp);
    eprintln!(
        "retention: swept {} events, {} actions, {} markers in {} steps of at most {} records: \
         {:.3} s; steps' median {:.1} ms, longest {:.1} ms",
        removed.0,
        removed.1,
        removed.2,
        steps.len(),
        sweeper::STEP,
        total.as_secs_f64(),
        median(&durations) * 1000.0,
        durations.last().copied().unwrap_or_default() * 1000.0,
    );
    steps.sort_by_key(|step| std::cmp::Reverse(step.0));
    for (duration, swept) in steps.iter().take(3) {
        eprintln!(
            "retention: a long step: {:.1} ms removed {swept:?}",
            duration.as_secs_f64() * 1000.0
        );
    }
    drop(ledger);
    std::fs::remove_dir_all(path).ok();
    Ok((
        durations.last().copied().unwrap_or_default(),
        steps.len(),
        total.as_secs_f64(),
    ))
}

/// Claims and ends `done` every due action, a batch per transaction.
fn finish_all(ledger: &Ledger, partner: &str) -> anyhow::Result<()> {
    let after = PartnerId::parse(partner)?;
    end_every_due_action(ledger, |action, _| {
        action.state = ActionState::Done;
        action.after_partner_id = Some(after.clone());
        action.detail = Some(format!("PUT {partner}"));
    })
}
