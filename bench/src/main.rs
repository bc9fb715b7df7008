//! `palworker-bench`: palworker's benchmark scenarios, against the local
//! RabbitMQ and the PAL simulator. Not part of `cargo test`, and not part of
//! the product (it stands outside the worker's library, like the simulator);
//! run it with
//! `cargo build --release -p palworker -p palworker-bench && target/release/palworker-bench 2>bench.log`
//! (or pick scenarios with `--scenario ingest,execution,fanout,idle-restart,operator-status,retention,console,reconcile`).
//! The fan-out and restart scenarios run the real `palworker` binary as a
//! child process: by default the one beside this binary (`--worker-binary`).
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
//! - **operator-status**: a child worker on a ledger of `--accounts` finished
//!   actions idles (`idle_rss_mib`, VmRSS); then `palworker status --json`,
//!   and `audit export`, run as processes through its admin API with their
//!   output to /dev/null while the worker's VmRSS is sampled every 5 ms
//!   (and its VmHWM, reset before each command, read after):
//!   `status_growth_mib` = the peak minus idle (issue 15: at most 20 MiB).
//!   A second run of each command counts its rows.
//! - **retention**: a child worker with `ledger.retention` and
//!   `ledger.dedup_retention` of 1 s runs `--waves` waves of `--actions`
//!   `project.assignment.started` events (one action each, moving every link
//!   between two partner IDs); after each wave, once every action ended and
//!   the worker's sweeper pruned the wave (`palworker_ledger_pruned_total`),
//!   the ledger's size is read (`palworker_ledger_size_bytes`, and the
//!   directory's bytes). `size_ratio` = the size after the last wave / after
//!   the first (issue 16: at most 1.5); the curve is in the line. Afterwards
//!   the stopped ledger's records are counted (the audit trail apart: kept
//!   forever by default, it grows by design) and `ledger check` must pass;
//!   then one wave of ended events and a fan-out over the same accounts are
//!   swept in this process with the worker's step size: `max_sweep_step_ms`
//!   is the longest step, the longest a sweep holds writers back.
//! - **console**: a ledger of `--accounts` ended actions (one event over
//!   every account: done, one in 1,000 failed, one in 500 manual) and a held
//!   plan, served by an in-process worker; each console page is asked for
//!   over HTTP with a bearer token, once to warm up and then 5 times: the
//!   median per page in milliseconds (issue 18: every page under 200 ms).
//!   `first_overview_ms` is the first overview, which waits for the
//!   console's tally to read every action once.
//! - **reconcile**: `--accounts` accounts over `--tenants` tenants, each its
//!   own identity, at `per_tenant_rps = 20`, one in 1,000 without its link in
//!   the simulator; a full reconcile through the admin API (what `palworker
//!   reconcile` sends), cold tokens then warm: `seconds` against `bound_s` =
//!   accounts per tenant / per_tenant_rps (`ratio` = bound / seconds, issue
//!   17: at least 0.9); and 50 single-account events published to the
//!   tenants it is reading, their delay from publish to done against the
//!   same events with no reconcile (`extra_delay_*`, also in request slots
//!   of the tenant; issue 17: at most one). See `reconcile.rs`.

#![forbid(unsafe_code)]

mod accounts;
mod broker;
mod console;
mod execution;
mod fanout;
mod ingest;
mod ledgers;
mod machine;
mod partitions;
mod reconcile;
mod report;
mod restart;
mod retention;
mod status;
mod worker;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use palworker_config::Settings;

use machine::{cpu_model, redact_url};

/// The scenarios of issues 6, 15, 16, 17 and 18.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Scenario {
    Ingest,
    Execution,
    Fanout,
    IdleRestart,
    OperatorStatus,
    Retention,
    Console,
    Reconcile,
    Partitions,
}

/// `palworker-bench` options.
#[derive(Debug, clap::Parser)]
#[command(
    name = "palworker-bench",
    about = "palworker's benchmarks: one machine-readable line per scenario on stdout."
)]
pub struct BenchArgs {
    /// Configuration file: only `amqp.url` is read (default: the local broker).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The `palworker` binary the fan-out and restart scenarios run as a
    /// process (default: `palworker` beside this binary).
    #[arg(long, value_name = "FILE")]
    pub worker_binary: Option<PathBuf>,
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
    /// execution, fanout, idle-restart, console, reconcile: customer tenants the accounts spread over.
    #[arg(long, default_value_t = 1_000)]
    pub tenants: u64,
    /// execution: simulated PAL latency of the slow phase, in milliseconds.
    #[arg(long, default_value_t = 20)]
    pub latency_ms: u64,
    /// fanout, reconcile: linked accounts; idle-restart, operator-status, console: finished actions in the ledger.
    #[arg(long, default_value_t = 100_000)]
    pub accounts: u64,
    /// idle-restart: pending actions in the ledger.
    #[arg(long, default_value_t = 10_000)]
    pub pending: u64,
    /// retention: waves of `--actions` actions.
    #[arg(long, default_value_t = 30)]
    pub waves: usize,
    /// retention: `audit.retention` of the worker (`0s`: the trail is kept
    /// forever, the default of the product).
    #[arg(long, default_value = "0s")]
    pub audit_retention: String,
    /// ingest: `amqp.prefetch` of the worker and of the ceiling consumer.
    #[arg(long, default_value_t = 64)]
    pub prefetch: u16,
    /// execution: `limits.concurrency` of the worker.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
}

/// Confirms in flight while publishing.
pub const PUBLISH_WINDOW: usize = 1_000;
/// Bounds every wait of a broken run (never a timing assertion).
pub const PHASE_TIMEOUT: Duration = Duration::from_secs(900);
/// How long an idle worker runs before its RSS is read.
pub const IDLE_SETTLE: Duration = Duration::from_secs(5);
/// The product's default sled cache (the harness uses a smaller one for tests).
pub const LEDGER_CACHE_BYTES: u64 = 16 * 1024 * 1024;
/// The fan-out's worker: high concurrency and a per-tenant rate that never
/// binds, so the numbers show the worker itself.
pub const FANOUT_CONCURRENCY: usize = 256;
pub const FANOUT_PER_TENANT_RPS: f64 = 100_000.0;

pub const PARTNER_A: &str = "1000001";
pub const PARTNER_B: &str = "1000002";
pub const PARTNER_C: &str = "1000003";
pub const PARTNER_D: &str = "1000004";

fn main() -> ExitCode {
    let args = BenchArgs::parse();
    // The in-process worker's logs stay quiet unless asked for.
    palworker::logging::init(palworker::logging::LogFormat::Text, "warn");
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(1);
        }
    };
    let environment = std::env::vars_os().map(|(k, v)| {
        (
            k.to_string_lossy().into_owned(),
            v.to_string_lossy().into_owned(),
        )
    });
    let result = match Settings::load(args.config.as_deref(), environment) {
        Ok(settings) => runtime.block_on(run(settings, args)),
        Err(error) => Err(error.into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", format!("{error:#}").replace('\n', " "));
            ExitCode::from(1)
        }
    }
}

async fn run(settings: Settings, args: BenchArgs) -> anyhow::Result<()> {
    let mut scenarios = if args.scenario.is_empty() {
        vec![
            Scenario::Ingest,
            Scenario::Execution,
            Scenario::Fanout,
            Scenario::IdleRestart,
            Scenario::OperatorStatus,
            Scenario::Retention,
            Scenario::Console,
            Scenario::Reconcile,
            Scenario::Partitions,
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
    let worker = match &args.worker_binary {
        Some(path) => path.clone(),
        None => std::env::current_exe()
            .context("locating this binary")?
            .with_file_name("palworker"),
    };
    anyhow::ensure!(
        worker.is_file(),
        "no palworker binary at `{}`: build it first (cargo build --release -p palworker) or name it with --worker-binary",
        worker.display()
    );
    eprintln!(
        "palworker bench: {} run(s) per scenario on {} ({} CPU(s)), broker {}",
        args.runs,
        cpu_model(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        redact_url(&url)
    );
    for scenario in scenarios {
        let lines = match scenario {
            Scenario::Ingest => ingest::run(&url, &args).await,
            Scenario::Execution => execution::run(&url, &args).await,
            Scenario::Fanout => fanout::run(&url, &args, &worker).await,
            Scenario::IdleRestart => restart::run(&url, &args, &worker).await,
            Scenario::OperatorStatus => status::run(&url, &args, &worker).await,
            Scenario::Retention => retention::run(&url, &args, &worker).await,
            Scenario::Console => console::run(&url, &args).await,
            Scenario::Reconcile => reconcile::run(&url, &args).await,
            Scenario::Partitions => partitions::run(&url, &args, &worker).await,
        }
        .with_context(|| format!("bench scenario {scenario:?} failed"))?;
        for line in lines {
            println!("{line}");
        }
    }
    Ok(())
}
