//! `palworker bench`: the benchmark scenarios of issue 6, against the local
//! RabbitMQ and the PAL simulator. Not part of `cargo test`; run it with
//! `cargo run --release -p palworker -- bench 2>bench.log` (or pick
//! scenarios with `--scenario ingest,execution,fanout,idle-restart`).
//!
//! Every scenario runs `--runs` times (default 3) and prints ONE line on
//! stdout per scenario (execution: one per phase), `bench scenario=NAME
//! key=value …`, with the median of each number over the runs, the target of
//! issue 6 and whether the median meets it; progress, per-run numbers and the
//! in-process worker's logs go to stderr. Every scenario checks its own
//! outcome (every event accepted, nothing executed while paused, every link as
//! expected in the simulator, nothing failed) and fails loudly otherwise;
//! timings are reported, never asserted. Everything it creates (queues,
//! exchanges, temporary ledgers, worker processes) is removed afterwards.
//!
//! How each number is measured:
//! - **ingest**: `--events` single-action `project.assignment.started` events
//!   of `--event-bytes` (padded with a data field the worker ignores) are
//!   published with confirms, pipelined, into the worker's queue *before* the
//!   worker starts; then the in-process worker starts with its executor paused,
//!   and the clock runs from the moment its consumer is connected until the
//!   last event is accepted (validated, planned, flushed, acked). The broker
//!   **ceiling** is measured the same way in the same run: the same bodies
//!   published persistently with confirms into a fresh quorum queue, then
//!   consumed with the worker's prefetch and one manual ack per message, no
//!   processing. `ratio` = ingest rate / ceiling rate. CPU seconds of this
//!   process and of the broker's Erlang VM are reported beside.
//! - **execution**: `--actions` accounts over `--tenants` tenants, one service
//!   principal per account index (a principal has one identity per tenant, so
//!   every action needs its own token). Three timed phases on one in-process
//!   worker, each from un-pausing the executor until no action is pending:
//!   `link_cold_tokens_0ms` links every account (one token fetch each), then
//!   two `partner.id.changed` events move every link, tokens cached, with 0 ms
//!   (`update_0ms`) and `--latency-ms` (`update_latency`) of simulated PAL
//!   latency. The bound is `min(concurrency / (requests per action ×
//!   latency), per_tenant_rps × tenants / requests per action)`, requests per
//!   action counted by the simulator. `mean_request_ms` is the worker's own
//!   timing of its PAL requests; `slot_utilisation` = actions/s × PAL request
//!   seconds per action / concurrency, i.e. how much of the time the
//!   executor's slots are waiting on PAL (1.0: the worker adds nothing).
//! - **fanout**: `--accounts` accounts linked to one partner ID are imported
//!   into a ledger (the fast path, no events); the worker runs as a child
//!   process (`palworker run`, logging at `info` to a file), so its RSS is its
//!   own — the simulator stays in this process; one `partner.id.changed` is
//!   published; `plan_s` runs from the publish until the worker counts the
//!   event accepted (planned, stored, flushed), `finish_s` until no action is
//!   pending. `peak_rss_mib` is the child's VmHWM.
//! - **idle-restart**: a child worker on an empty ledger, idle for a few
//!   seconds: `idle_rss_mib` (VmRSS). Then a child on a copy of a ledger
//!   holding `--accounts` finished and `--pending` pending actions: `ready_s`
//!   from spawning the process until `/readyz` answers 200; afterwards it must
//!   finish the pending actions (checked in the simulator).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use palworker_config::Settings;
use palworker_events::{Account, CredentialName, EmployeeId, Event, ObjectId, PartnerId, TenantId};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::amqp::{self, BrokerAdmin, Publisher};
use crate::app::RunningApp;
use crate::clock::SystemClock;
use crate::harness::{Harness, HarnessOptions, ServicePrincipal, events};
use crate::ledger::{ActionState, Ledger};
use crate::sim::{FaultProfile, Faults};

/// The scenarios of issue 6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Scenario {
    Ingest,
    Execution,
    Fanout,
    IdleRestart,
}

/// `palworker bench` options.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Scenarios to run, comma-separated (default: all).
    #[arg(long, value_delimiter = ',', value_enum)]
    pub scenario: Vec<Scenario>,
    /// Runs per scenario; the printed numbers are the medians.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// ingest: events published (and messages of the broker ceiling).
    #[arg(long, default_value_t = 100_000)]
    pub events: u64,
    /// ingest: size of each CloudEvent in bytes (padded with an ignored data field).
    #[arg(long, default_value_t = 600)]
    pub event_bytes: usize,
    /// execution: actions (accounts) per phase.
    #[arg(long, default_value_t = 10_000)]
    pub actions: u64,
    /// execution, fanout, idle-restart: customer tenants the accounts spread over.
    #[arg(long, default_value_t = 1_000)]
    pub tenants: u64,
    /// execution: simulated PAL latency of the slow phase, in milliseconds.
    #[arg(long, default_value_t = 20)]
    pub latency_ms: u64,
    /// fanout: linked accounts; idle-restart: finished actions in the ledger.
    #[arg(long, default_value_t = 100_000)]
    pub accounts: u64,
    /// idle-restart: pending actions in the ledger.
    #[arg(long, default_value_t = 10_000)]
    pub pending: u64,
    /// ingest: `amqp.prefetch` of the worker and of the ceiling consumer.
    #[arg(long, default_value_t = 64)]
    pub prefetch: u16,
    /// execution: `limits.concurrency` of the worker.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
}

/// Confirms in flight while publishing.
const PUBLISH_WINDOW: usize = 1_000;
/// Bounds every wait of a broken run (never a timing assertion).
const PHASE_TIMEOUT: Duration = Duration::from_secs(900);
/// How long an idle worker runs before its RSS is read.
const IDLE_SETTLE: Duration = Duration::from_secs(5);
/// The product's default sled cache (the harness uses a smaller one for tests).
const LEDGER_CACHE_BYTES: u64 = 16 * 1024 * 1024;
/// The fan-out's worker: high concurrency and a per-tenant rate that never
/// binds, so the numbers show the worker itself.
const FANOUT_CONCURRENCY: usize = 256;
const FANOUT_PER_TENANT_RPS: f64 = 100_000.0;
/// Linux's USER_HZ: the unit of utime/stime in /proc/PID/stat.
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

const PARTNER_A: &str = "1000001";
const PARTNER_B: &str = "1000002";
const PARTNER_C: &str = "1000003";
const PARTNER_D: &str = "1000004";

pub async fn run(settings: Settings, args: BenchArgs) -> anyhow::Result<()> {
    let mut scenarios = if args.scenario.is_empty() {
        vec![
            Scenario::Ingest,
            Scenario::Execution,
            Scenario::Fanout,
            Scenario::IdleRestart,
        ]
    } else {
        args.scenario.clone()
    };
    scenarios.sort();
    scenarios.dedup();
    anyhow::ensure!(args.runs >= 1, "--runs must be at least 1");
    anyhow::ensure!(
        args.tenants >= 1 && args.events >= 1 && args.actions >= args.tenants,
        "--tenants, --events must be at least 1 and --actions at least --tenants"
    );
    let url = settings.amqp.url.expose().to_owned();
    eprintln!(
        "palworker bench: {} run(s) per scenario on {} ({} CPU(s)), broker {}",
        args.runs,
        cpu_model(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        redact_url(&url)
    );
    for scenario in scenarios {
        let lines = match scenario {
            Scenario::Ingest => ingest(&url, &args).await,
            Scenario::Execution => execution(&url, &args).await,
            Scenario::Fanout => fanout(&url, &args).await,
            Scenario::IdleRestart => idle_restart(&url, &args).await,
        }
        .with_context(|| format!("bench scenario {scenario:?} failed"))?;
        for line in lines {
            println!("{line}");
        }
    }
    Ok(())
}

// ---- results ----------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Unit {
    Count,
    Seconds,
    Rate,
    Ratio,
    Mib,
}

/// The numbers of one run, in print order.
#[derive(Debug, Default, Clone)]
struct Sample(Vec<(&'static str, Unit, f64)>);

impl Sample {
    fn push(&mut self, key: &'static str, unit: Unit, value: f64) {
        self.0.push((key, unit, value));
    }

    fn get(&self, key: &str) -> f64 {
        self.0
            .iter()
            .find(|(k, _, _)| *k == key)
            .map_or(f64::NAN, |(_, _, v)| *v)
    }

    fn render(&self) -> String {
        self.0
            .iter()
            .map(|(key, unit, value)| format!("{key}={}", format_value(*unit, *value)))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn format_value(unit: Unit, value: f64) -> String {
    if !value.is_finite() {
        return "none".to_owned();
    }
    match unit {
        Unit::Count | Unit::Rate => format!("{value:.0}"),
        Unit::Seconds | Unit::Ratio => format!("{value:.3}"),
        Unit::Mib => format!("{value:.1}"),
    }
}

/// The median of every number over the runs (same keys in every run).
/// One run's numbers on stderr, with the machine's load at the time.
fn log_run(label: &str, run: usize, runs: usize, sample: &Sample) {
    eprintln!(
        "{label} run {run}/{runs} ({}): {}",
        load_average(),
        sample.render()
    );
}

fn medians(runs: &[Sample]) -> Sample {
    let mut out = Sample::default();
    if let Some(first) = runs.first() {
        for (key, unit, _) in &first.0 {
            let mut values: Vec<f64> = runs.iter().map(|run| run.get(key)).collect();
            values.sort_by(f64::total_cmp);
            out.push(key, *unit, values[values.len() / 2]);
        }
    }
    out
}

fn line(
    scenario: &str,
    fixed: &[(&str, String)],
    median: &Sample,
    target: &str,
    met: bool,
) -> String {
    let mut text = format!("bench scenario={scenario}");
    for (key, value) in fixed {
        text.push_str(&format!(" {key}={value}"));
    }
    text.push(' ');
    text.push_str(&median.render());
    text.push_str(&format!(
        " target={target} met={}",
        if met { "yes" } else { "no" }
    ));
    text
}

// ---- identities ---------------------------------------------------------------

fn tenant_guid(tenant: u64) -> String {
    format!("7e000000-0000-4000-8000-{tenant:012x}")
}

/// Object IDs of different account sets never collide (`set` is the first byte).
fn object_guid(set: u8, tenant: u64, index: u64) -> String {
    format!("{set:02x}{index:06x}-0000-4000-8000-{tenant:012x}")
}

fn client_guid(principal: u64) -> String {
    format!("c1{principal:06x}-0000-4000-8000-000000000000")
}

fn credential_name(principal: u64) -> String {
    format!("bench-p{principal}")
}

/// `per_tenant` principals, principal `p` holding the identity
/// `object_guid(set, t, p)` in every tenant `t`.
fn principals(set: u8, tenants: u64, per_tenant: u64) -> Vec<ServicePrincipal> {
    (0..per_tenant)
        .map(|p| ServicePrincipal {
            credential: credential_name(p),
            client_id: client_guid(p),
            identities: (0..tenants)
                .map(|t| (tenant_guid(t), object_guid(set, t, p)))
                .collect(),
        })
        .collect()
}

const SET_INGEST: u8 = 0x01;
const SET_EXECUTION: u8 = 0x02;
const SET_FANOUT: u8 = 0x03;
const SET_FINISHED: u8 = 0x04;
const SET_PENDING: u8 = 0x05;

fn assignment_event(
    id: &str,
    set: u8,
    tenant: u64,
    index: u64,
    partner: &str,
    credential: &str,
) -> Value {
    events::assignment_started(
        id,
        &format!("E-{tenant}-{index}"),
        &tenant_guid(tenant),
        &object_guid(set, tenant, index),
        partner,
        Some(credential),
        None,
    )
}

/// Pads `event` to `bytes` with a data field the worker ignores.
fn padded(mut event: Value, bytes: usize) -> anyhow::Result<Vec<u8>> {
    event["data"]["bench_padding"] = Value::String(String::new());
    let bare = serde_json::to_vec(&event)?.len();
    event["data"]["bench_padding"] = Value::String("x".repeat(bytes.saturating_sub(bare)));
    Ok(serde_json::to_vec(&event)?)
}

fn account(set: u8, tenant: u64, index: u64, credential: Option<&str>) -> anyhow::Result<Account> {
    Ok(Account {
        tenant_id: TenantId::parse(&tenant_guid(tenant))?,
        object_id: ObjectId::parse(&object_guid(set, tenant, index))?,
        employee_id: EmployeeId::parse(&format!("E-{tenant}-{index}"))?,
        credential: credential.map(CredentialName::parse).transpose()?,
        contract_id: None,
    })
}

fn parse_event(value: &Value) -> anyhow::Result<Event> {
    Ok(Event::from_json_slice(&serde_json::to_vec(value)?)?)
}

// ---- ingest -------------------------------------------------------------------

async fn ingest(url: &str, args: &BenchArgs) -> anyhow::Result<Vec<String>> {
    let bodies = (0..args.events)
        .map(|i| {
            let tenant = i % args.tenants;
            let index = i / args.tenants;
            padded(
                assignment_event(
                    &format!("bench-ingest-{i}"),
                    SET_INGEST,
                    tenant,
                    index,
                    PARTNER_A,
                    "bench-ingest",
                ),
                args.event_bytes,
            )
        })
        .collect::<anyhow::Result<Vec<Vec<u8>>>>()?;
    let body_bytes = bodies.iter().map(Vec::len).sum::<usize>() / bodies.len();
    let mut runs = Vec::new();
    for run in 1..=args.runs {
        let sample = ingest_run(url, args, &bodies).await?;
        log_run("ingest", run, args.runs, &sample);
        runs.push(sample);
    }
    let median = medians(&runs);
    let met = median.get("ratio") >= 0.5;
    Ok(vec![line(
        "ingest",
        &[
            ("events", args.events.to_string()),
            ("event_bytes", body_bytes.to_string()),
            ("prefetch", args.prefetch.to_string()),
            ("runs", args.runs.to_string()),
        ],
        &median,
        "ratio>=0.5",
        met,
    )])
}

async fn ingest_run(url: &str, args: &BenchArgs, bodies: &[Vec<u8>]) -> anyhow::Result<Sample> {
    let mut harness = Harness::prepare(
        HarnessOptions {
            amqp_url: url.to_owned(),
            name: "palworker-bench-ingest".to_owned(),
            extra_toml: format!(
                "[ledger]\ncache_capacity = {LEDGER_CACHE_BYTES}\n[amqp]\nprefetch = {}\n",
                args.prefetch
            ),
            ..HarnessOptions::default()
        },
        Arc::new(SystemClock),
    )
    .await?;
    let result = ingest_measure(&mut harness, url, args, bodies).await;
    let shutdown = harness.shutdown().await;
    let sample = result?;
    shutdown?;
    Ok(sample)
}

async fn ingest_measure(
    harness: &mut Harness,
    url: &str,
    args: &BenchArgs,
    bodies: &[Vec<u8>],
) -> anyhow::Result<Sample> {
    let prefetch = harness.settings.amqp.prefetch;
    let broker = broker_pid();

    // The broker alone.
    let broker_cpu = cpu_seconds(broker);
    let ceiling = amqp::ceiling_benchmark(
        url,
        bodies.iter().cloned(),
        prefetch,
        PUBLISH_WINDOW,
        PHASE_TIMEOUT,
    )
    .await?;
    anyhow::ensure!(
        ceiling.messages == args.events,
        "the ceiling consumed {} of {} messages",
        ceiling.messages,
        args.events
    );
    let ceiling_broker_cpu = cpu_seconds(broker) - broker_cpu;

    // Fill the worker's queue while no worker runs.
    let publisher = Publisher::connect(url, &harness.topology.exchange).await?;
    let started = Instant::now();
    let published = publisher
        .publish_many(
            bodies
                .iter()
                .map(|body| ("project.assignment.started".to_owned(), body.clone())),
            "application/cloudevents+json",
            PUBLISH_WINDOW,
        )
        .await;
    publisher.close().await;
    let published = published?;
    let publish_secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(published == args.events, "published {published} events");
    let queued = queue_depth(url, &harness.topology.queue).await?;
    anyhow::ensure!(
        u64::from(queued) == args.events,
        "{queued} of {} events are in the queue",
        args.events
    );

    // The worker, execution paused: consume, validate, plan, flush, ack.
    let own_cpu = cpu_seconds(Some(std::process::id()));
    let broker_cpu = cpu_seconds(broker);
    harness.start_worker().await?;
    harness.app().executor_paused.store(true, Ordering::SeqCst);
    let connected = wait(
        PHASE_TIMEOUT,
        Duration::from_millis(1),
        "the consumer connects",
        || harness.app().health.broker_connected.load(Ordering::SeqCst),
    )
    .await?;
    let accepted_at = wait(
        PHASE_TIMEOUT,
        Duration::from_millis(5),
        "every event accepted",
        || {
            events_with_outcome(harness.app(), "accepted") >= args.events
                || events_with_outcome(harness.app(), "dead_lettered") > 0
        },
    )
    .await?;
    let seconds = (accepted_at - connected).as_secs_f64();
    let worker_cpu = cpu_seconds(Some(std::process::id())) - own_cpu;
    let broker_cpu = cpu_seconds(broker) - broker_cpu;

    let app = harness.app();
    for outcome in ["dead_lettered", "duplicate", "held"] {
        let count = events_with_outcome(app, outcome);
        anyhow::ensure!(count == 0, "{count} event(s) ended {outcome}");
    }
    anyhow::ensure!(
        events_with_outcome(app, "accepted") == args.events,
        "accepted {} of {} events",
        events_with_outcome(app, "accepted"),
        args.events
    );
    let ledger = app.ledger.clone();
    let pending = tokio::task::spawn_blocking(move || ledger.pending_count()).await?;
    anyhow::ensure!(
        pending == args.events,
        "the ledger holds {pending} pending actions, expected {} (execution was paused)",
        args.events
    );
    anyhow::ensure!(
        harness.simulator.requests().is_empty(),
        "PAL was called while execution was paused"
    );
    let left = queue_depth(url, &harness.topology.queue).await?;
    anyhow::ensure!(left == 0, "{left} events are still in the queue");

    let events = args.events as f64;
    let mut sample = Sample::default();
    sample.push("seconds", Unit::Seconds, seconds);
    sample.push("events_per_s", Unit::Rate, events / seconds);
    sample.push("ceiling_seconds", Unit::Seconds, ceiling.consume_secs);
    sample.push("ceiling_per_s", Unit::Rate, events / ceiling.consume_secs);
    sample.push(
        "ratio",
        Unit::Ratio,
        (events / seconds) / (events / ceiling.consume_secs),
    );
    sample.push("publish_per_s", Unit::Rate, events / publish_secs);
    sample.push(
        "ceiling_publish_per_s",
        Unit::Rate,
        events / ceiling.publish_secs,
    );
    sample.push("worker_cpu_s", Unit::Seconds, worker_cpu);
    sample.push("broker_cpu_s", Unit::Seconds, broker_cpu);
    sample.push("ceiling_broker_cpu_s", Unit::Seconds, ceiling_broker_cpu);
    Ok(sample)
}

/// Deliveries the in-process worker counted with `outcome`, over every type.
fn events_with_outcome(app: &RunningApp, outcome: &str) -> u64 {
    prometheus::core::Collector::collect(&app.metrics.events_total)
        .iter()
        .flat_map(|family| family.get_metric())
        .filter(|metric| {
            metric
                .get_label()
                .iter()
                .any(|label| label.name() == "outcome" && label.value() == outcome)
        })
        .map(|metric| metric.get_counter().get_value() as u64)
        .sum()
}

async fn queue_depth(url: &str, queue: &str) -> anyhow::Result<u32> {
    let admin = BrokerAdmin::connect(url).await?;
    let count = admin.message_count(queue).await;
    admin.close().await;
    count
}

// ---- execution ----------------------------------------------------------------

async fn execution(url: &str, args: &BenchArgs) -> anyhow::Result<Vec<String>> {
    let per_tenant = args.actions / args.tenants;
    let actions = per_tenant * args.tenants;
    let mut phases: BTreeMap<(u8, &'static str), Vec<Sample>> = BTreeMap::new();
    let mut settings_seen = None;
    for run in 1..=args.runs {
        let (results, limits) = execution_run(url, args, per_tenant).await?;
        settings_seen = Some(limits);
        for (order, name, sample) in results {
            log_run(&format!("execution {name}"), run, args.runs, &sample);
            phases.entry((order, name)).or_default().push(sample);
        }
    }
    let (concurrency, per_tenant_rps) = settings_seen.unwrap_or_default();
    let mut lines = Vec::new();
    for ((_, name), runs) in phases {
        let median = medians(&runs);
        let latency = median.get("latency_ms");
        let slow = latency >= args.latency_ms as f64 && args.latency_ms > 0;
        let (target, met) = if slow {
            ("ratio>=0.9", median.get("ratio") >= 0.9)
        } else {
            ("none", true)
        };
        lines.push(line(
            "execution",
            &[
                ("phase", name.to_owned()),
                ("actions", actions.to_string()),
                ("tenants", args.tenants.to_string()),
                ("concurrency", concurrency.to_string()),
                ("per_tenant_rps", per_tenant_rps.to_string()),
                ("runs", args.runs.to_string()),
            ],
            &median,
            target,
            met,
        ));
    }
    Ok(lines)
}

type PhaseResults = Vec<(u8, &'static str, Sample)>;

async fn execution_run(
    url: &str,
    args: &BenchArgs,
    per_tenant: u64,
) -> anyhow::Result<(PhaseResults, (usize, f64))> {
    let mut harness = Harness::start(HarnessOptions {
        amqp_url: url.to_owned(),
        name: "palworker-bench-execution".to_owned(),
        principals: principals(SET_EXECUTION, args.tenants, per_tenant),
        extra_toml: format!(
            "[ledger]\ncache_capacity = {LEDGER_CACHE_BYTES}\n[limits]\nmax_actions_per_event = 100000000\nconcurrency = {}\n",
            args.concurrency
        ),
        faults: Faults::none(),
        ..HarnessOptions::default()
    })
    .await?;
    let limits = (
        harness.settings.limits.concurrency,
        harness.settings.limits.per_tenant_rps,
    );
    let result = execution_phases(&mut harness, url, args, per_tenant).await;
    let shutdown = harness.shutdown().await;
    let results = result?;
    shutdown?;
    Ok((results, limits))
}

async fn execution_phases(
    harness: &mut Harness,
    url: &str,
    args: &BenchArgs,
    per_tenant: u64,
) -> anyhow::Result<PhaseResults> {
    let accounts: Vec<(u64, u64)> = (0..args.tenants)
        .flat_map(|t| (0..per_tenant).map(move |p| (t, p)))
        .collect();
    let mut results = Vec::new();

    // 1. Link every account: one event each, one token fetch each.
    harness.app().executor_paused.store(true, Ordering::SeqCst);
    let publisher = Publisher::connect(url, &harness.topology.exchange).await?;
    let published = publisher
        .publish_many(
            accounts
                .iter()
                .map(|&(t, p)| {
                    let event = assignment_event(
                        &format!("bench-exec-{t}-{p}"),
                        SET_EXECUTION,
                        t,
                        p,
                        PARTNER_A,
                        &credential_name(p),
                    );
                    Ok((
                        "project.assignment.started".to_owned(),
                        serde_json::to_vec(&event)?,
                    ))
                })
                .collect::<anyhow::Result<Vec<_>>>()?,
            "application/cloudevents+json",
            PUBLISH_WINDOW,
        )
        .await;
    publisher.close().await;
    harness.published += published?;
    let sample = execute_phase(harness, &accounts, PARTNER_A, 0, args.tenants).await?;
    results.push((0, "link_cold_tokens_0ms", sample));

    // 2. and 3. Move every link (tokens cached), without and with latency.
    for (order, name, latency, old, new) in [
        (1, "update_0ms", 0, PARTNER_A, PARTNER_B),
        (2, "update_latency", args.latency_ms, PARTNER_B, PARTNER_C),
    ] {
        harness.app().executor_paused.store(true, Ordering::SeqCst);
        harness
            .simulator
            .set_faults(Faults::everywhere(FaultProfile {
                latency_ms: latency,
                ..FaultProfile::default()
            }));
        harness
            .publish(&events::partner_id_changed(
                &format!("bench-exec-change-{new}"),
                old,
                new,
                None,
            ))
            .await?;
        let sample = execute_phase(harness, &accounts, new, latency, args.tenants).await?;
        results.push((order, name, sample));
    }
    harness.simulator.set_faults(Faults::none());
    Ok(results)
}

/// Waits until every published event is accepted (execution paused), then
/// un-pauses the executor and times it until no action is pending; checks that
/// every account ends linked to `partner`.
async fn execute_phase(
    harness: &mut Harness,
    accounts: &[(u64, u64)],
    partner: &str,
    latency_ms: u64,
    tenants: u64,
) -> anyhow::Result<Sample> {
    let expected = accounts.len() as i64;
    let published = harness.published;
    wait(
        PHASE_TIMEOUT,
        Duration::from_millis(5),
        "every event accepted",
        || harness.deliveries_seen() >= published,
    )
    .await?;
    let app = harness.app();
    anyhow::ensure!(
        events_with_outcome(app, "dead_lettered") + events_with_outcome(app, "held") == 0,
        "an event was dead-lettered or held"
    );
    let pending = app.metrics.actions_pending.get();
    anyhow::ensure!(
        pending == expected,
        "{pending} actions pending before the phase, expected {expected}"
    );
    let failed_before = actions_with_outcome(app, "failed");
    let (request_secs_before, request_count_before) = request_durations(app);
    let requests_before = harness.simulator.requests().len();
    let tokens_before = harness.simulator.token_requests().len();
    let own_cpu = cpu_seconds(Some(std::process::id()));

    let started = Instant::now();
    app.executor_paused.store(false, Ordering::SeqCst);
    app.wake.wake();
    let finished = wait(
        PHASE_TIMEOUT,
        Duration::from_millis(5),
        "every action finished",
        || app.metrics.actions_pending.get() <= 0,
    )
    .await?;
    let seconds = (finished - started).as_secs_f64();
    let cpu = cpu_seconds(Some(std::process::id())) - own_cpu;

    let failed = actions_with_outcome(app, "failed") - failed_before;
    anyhow::ensure!(failed == 0, "{failed} action(s) failed");
    let ledger = app.ledger.clone();
    let pending = tokio::task::spawn_blocking(move || ledger.pending_count()).await?;
    anyhow::ensure!(
        pending == 0,
        "{pending} actions still pending in the ledger"
    );
    let mut wrong = 0usize;
    for &(t, p) in accounts {
        let link = harness
            .simulator
            .active_link(&tenant_guid(t), &object_guid(SET_EXECUTION, t, p));
        if link.is_none_or(|link| link.partner_id != partner) {
            wrong += 1;
        }
    }
    anyhow::ensure!(
        wrong == 0,
        "{wrong} of {} accounts are not linked to {partner} in the simulator",
        accounts.len()
    );
    let served = harness.simulator.requests();
    let served = &served[requests_before..];
    let requests = served.len();
    let service_ms = served.iter().map(|r| r.service_us as f64).sum::<f64>()
        / served.len().max(1) as f64
        / 1000.0;
    let tokens = harness.simulator.token_requests().len() - tokens_before;

    let actions = accounts.len() as f64;
    let per_action = requests as f64 / actions;
    let concurrency = harness.settings.limits.concurrency as f64;
    let rate_bound = harness.settings.limits.per_tenant_rps * tenants as f64 / per_action;
    let latency_bound = if latency_ms == 0 {
        f64::INFINITY
    } else {
        concurrency / (per_action * latency_ms as f64 / 1000.0)
    };
    let bound = latency_bound.min(rate_bound);
    let mut sample = Sample::default();
    sample.push("latency_ms", Unit::Count, latency_ms as f64);
    sample.push("seconds", Unit::Seconds, seconds);
    sample.push("actions_per_s", Unit::Rate, actions / seconds);
    sample.push("requests_per_action", Unit::Ratio, per_action);
    sample.push("token_fetches", Unit::Count, tokens as f64);
    sample.push("bound_per_s", Unit::Rate, bound);
    sample.push("ratio", Unit::Ratio, (actions / seconds) / bound);
    let (request_secs, request_count) = request_durations(app);
    sample.push(
        "mean_request_ms",
        Unit::Ratio,
        (request_secs - request_secs_before) * 1000.0
            / (request_count - request_count_before).max(1) as f64,
    );
    // How well the executor keeps its slots busy with PAL requests: 1.0
    // means every slot is waiting on PAL all the time, so the rest of the
    // gap to the bound is PAL (here: simulator) latency above the nominal.
    sample.push(
        "slot_utilisation",
        Unit::Ratio,
        (actions / seconds) * (request_secs - request_secs_before) / (actions * concurrency),
    );
    // The simulator's own time per request (latency included): the rest of
    // `mean_request_ms` is the client, the network stack and waiting for CPU.
    sample.push("sim_service_ms", Unit::Ratio, service_ms);
    sample.push("process_cpu_s", Unit::Seconds, cpu);
    Ok(sample)
}

/// Total seconds and number of PAL requests the worker timed (every method).
fn request_durations(app: &RunningApp) -> (f64, u64) {
    prometheus::core::Collector::collect(&app.metrics.api_request_duration_seconds)
        .iter()
        .flat_map(|family| family.get_metric())
        .fold((0.0, 0), |(secs, count), metric| {
            let histogram = metric.get_histogram();
            (
                secs + histogram.get_sample_sum(),
                count + histogram.get_sample_count(),
            )
        })
}

fn actions_with_outcome(app: &RunningApp, outcome: &str) -> u64 {
    prometheus::core::Collector::collect(&app.metrics.actions_total)
        .iter()
        .flat_map(|family| family.get_metric())
        .filter(|metric| {
            metric
                .get_label()
                .iter()
                .any(|label| label.name() == "outcome" && label.value() == outcome)
        })
        .map(|metric| metric.get_counter().get_value() as u64)
        .sum()
}

// ---- fan-out ------------------------------------------------------------------

async fn fanout(url: &str, args: &BenchArgs) -> anyhow::Result<Vec<String>> {
    let per_tenant = args.accounts.div_ceil(args.tenants);
    let accounts: Vec<(u64, u64)> = (0..args.accounts)
        .map(|i| (i % args.tenants, i / args.tenants))
        .collect();
    let work = tempfile::Builder::new()
        .prefix("palworker-bench-fanout-")
        .tempdir()?;
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
                        account(SET_FANOUT, t, p, Some(&credential_name(p)))?,
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
        let mut sample = fanout_run(url, &principals, &accounts, &base, &directory).await?;
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
            matches!(outcome, crate::ledger::AcceptOutcome::Accepted { .. }),
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
    let result = fanout_measure(&mut harness, accounts, directory, port).await;
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
) -> anyhow::Result<Sample> {
    for &(t, p) in accounts {
        harness
            .simulator
            .seed_link(&tenant_guid(t), &object_guid(SET_FANOUT, t, p), PARTNER_A);
    }
    let config = directory.join("palworker.toml");
    harness.write_config(&config)?;
    let worker = WorkerProcess::spawn(
        &config,
        &harness.config_env,
        &directory.join("worker.log"),
        port,
    )
    .await?;
    let result = async {
        worker.wait_ready(PHASE_TIMEOUT).await?;
        let ready_rss = worker.status_kib("VmRSS")? as f64 / 1024.0;
        let cpu_before = cpu_seconds(Some(worker.pid));
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
        let cpu = cpu_seconds(Some(worker.pid)) - cpu_before;
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
            .active_link(&tenant_guid(t), &object_guid(SET_FANOUT, t, p));
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

// ---- idle and restart ---------------------------------------------------------

async fn idle_restart(url: &str, args: &BenchArgs) -> anyhow::Result<Vec<String>> {
    let per_tenant = args.pending.div_ceil(args.tenants);
    let pending: Vec<(u64, u64)> = (0..args.pending)
        .map(|i| (i % args.tenants, i / args.tenants))
        .collect();
    let work = tempfile::Builder::new()
        .prefix("palworker-bench-restart-")
        .tempdir()?;
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
        let sample = restart_run(url, &principals, &pending, &base, &directory).await?;
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
                account(SET_PENDING, t, p, Some(&credential_name(p)))?,
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
    let result = restart_measure(&mut harness, pending, base, directory, port).await;
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
) -> anyhow::Result<Sample> {
    let mut sample = Sample::default();

    // Idle, on an empty ledger.
    let config = directory.join("idle.toml");
    harness.write_config(&config)?;
    let worker = WorkerProcess::spawn(
        &config,
        &harness.config_env,
        &directory.join("idle.log"),
        port,
    )
    .await?;
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
            .seed_link(&tenant_guid(t), &object_guid(SET_PENDING, t, p), PARTNER_C);
    }
    let ledger_path = directory.join("ledger");
    copy_dir(base, &ledger_path)?;
    let mut table: toml::Table = harness.config_toml.parse()?;
    if let Some(toml::Value::Table(ledger)) = table.get_mut("ledger") {
        ledger.insert(
            "path".into(),
            toml::Value::String(ledger_path.display().to_string()),
        );
    }
    let config = directory.join("restart.toml");
    std::fs::write(&config, toml::to_string(&table)?)?;
    let worker = WorkerProcess::spawn(
        &config,
        &harness.config_env,
        &directory.join("restart.log"),
        port,
    )
    .await?;
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
            .active_link(&tenant_guid(t), &object_guid(SET_PENDING, t, p));
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

// ---- worker processes ---------------------------------------------------------

/// `palworker --config FILE run` as a child process (killed if dropped).
struct WorkerProcess {
    child: tokio::process::Child,
    pid: u32,
    addr: SocketAddr,
    spawned: Instant,
    log: PathBuf,
}

/// The numbers `palworker bench` reads from a child's `/metrics`.
#[derive(Debug, Default)]
struct Scrape {
    accepted: u64,
    held: u64,
    dead_lettered: u64,
    pending: i64,
    done: u64,
    failed: u64,
    terminal: u64,
}

impl WorkerProcess {
    async fn spawn(
        config: &Path,
        env: &[(String, String)],
        log: &Path,
        port: u16,
    ) -> anyhow::Result<WorkerProcess> {
        let executable = std::env::current_exe().context("locating the palworker binary")?;
        let spawned = Instant::now();
        let child = tokio::process::Command::new(executable)
            .arg("--config")
            .arg(config)
            .arg("run")
            .envs(env.iter().cloned())
            // The production default, whatever this process logs at: the
            // worker pays for its per-event and per-action log lines, written
            // to a file as a service manager would.
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(log)?)
            .kill_on_drop(true)
            .spawn()
            .context("starting a palworker process")?;
        let pid = child.id().context("the worker process has no id")?;
        Ok(WorkerProcess {
            child,
            pid,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            spawned,
            log: log.to_owned(),
        })
    }

    /// Time from spawning until `/readyz` answers 200.
    async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<Duration> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok((200, _)) = http_get(self.addr, "/readyz").await {
                return Ok(self.spawned.elapsed());
            }
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "the worker was not ready within {timeout:?}; its log: {}",
                    log_tail(&self.log)
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    fn status_kib(&self, field: &str) -> anyhow::Result<u64> {
        proc_status_kib(self.pid, field)
    }

    async fn scrape(&self) -> anyhow::Result<Scrape> {
        let (status, body) = http_get(self.addr, "/metrics").await?;
        anyhow::ensure!(status == 200, "/metrics answered {status}");
        let mut scrape = Scrape::default();
        for line in body.lines() {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let value: f64 = value.parse().unwrap_or(0.0);
            if series.starts_with("palworker_events_total{") {
                if series.contains("outcome=\"accepted\"") {
                    scrape.accepted += value as u64;
                } else if series.contains("outcome=\"held\"") {
                    scrape.held += value as u64;
                } else if series.contains("outcome=\"dead_lettered\"") {
                    scrape.dead_lettered += value as u64;
                }
            } else if series == "palworker_actions_pending" {
                scrape.pending = value as i64;
            } else if series.starts_with("palworker_actions_total{") {
                scrape.terminal += value as u64;
                if series.contains("outcome=\"done\"") {
                    scrape.done += value as u64;
                } else if series.contains("outcome=\"failed\"") {
                    scrape.failed += value as u64;
                }
            }
        }
        Ok(scrape)
    }

    /// SIGTERM, then a bounded wait for the drain; SIGKILL if it overruns.
    async fn stop(mut self) -> anyhow::Result<()> {
        let _ = tokio::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .await;
        match tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await {
            Ok(Ok(status)) if status.success() => Ok(()),
            Ok(Ok(status)) => anyhow::bail!(
                "the worker exited with {status}; its log: {}",
                log_tail(&self.log)
            ),
            Ok(Err(error)) => Err(error.into()),
            Err(_) => {
                let _ = self.child.kill().await;
                anyhow::bail!("the worker did not stop within 60 s after SIGTERM")
            }
        }
    }
}

/// The last lines of a worker's log, for error messages.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(10)..].join(" | ")
}

/// A plain HTTP/1.1 GET to a worker on loopback (status, body).
async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .context("HTTP request timed out")??;
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .context("no HTTP status line")?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Copies a (closed) sled directory.
fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

// ---- the machine --------------------------------------------------------------

/// Polls `condition` every `interval` until it holds; returns when it did.
async fn wait(
    timeout: Duration,
    interval: Duration,
    what: &str,
    mut condition: impl FnMut() -> bool,
) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return Ok(Instant::now());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(interval).await;
    }
}

fn proc_status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| {
            line.strip_prefix(field)?
                .strip_prefix(':')?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()
        })
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// User + system CPU seconds of a process (NaN when unknown).
fn cpu_seconds(pid: Option<u32>) -> f64 {
    let Some(pid) = pid else {
        return f64::NAN;
    };
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    // Fields after the command name (which may contain spaces): state is field 3,
    // utime field 14, stime field 15.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return f64::NAN;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |index: usize| {
        fields
            .get(index)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    (ticks(11) + ticks(12)) / CLOCK_TICKS_PER_SECOND
}

/// The local RabbitMQ's Erlang VM, to report the broker's CPU time.
fn broker_pid() -> Option<u32> {
    let entries = std::fs::read_dir("/proc").ok()?;
    entries.take(100_000).flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let command = std::fs::read_to_string(entry.path().join("comm")).ok()?;
        command.trim().starts_with("beam").then_some(pid)
    })
}

/// The 1-minute load average after a run: other work on the machine skews
/// the numbers, and this shows it.
fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!(
        "load {}",
        text.split_whitespace().next().unwrap_or("unknown")
    )
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split_once(':'))
                .map(|(_, model)| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned())
}

fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            }
            parsed.to_string()
        }
        Err(_) => "(unparsable URL)".to_owned(),
    }
}
