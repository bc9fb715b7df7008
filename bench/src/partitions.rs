//! Partitions (issue 19 point 6, SPEC §10): actions per second at
//! `--latency-ms` with 1, 2 and 3 partition workers — each a `palworker
//! run` process with its own ledger, fed by a `palworker route` process
//! (one partition: no router, the worker consumes the events queue) — and
//! the CPU each stage used: every worker, the router, the broker, and this
//! process (the in-process PAL simulator and the publisher). Then the
//! router alone: a pre-filled events queue routed to three partition
//! queues, against the broker's own ceiling (publish with confirms,
//! consume with acks) on the same machine.
//!
//! The measured phase moves every link to another partner with one
//! `partner.id.changed` (a copy to every partition); tokens were fetched
//! in the phase before, so the phase is PAL latency and the workers.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use palworker::local::process::{WorkerProcess, run_cli};
use palworker::local::{HarnessOptions, PartitionedHarness, Role, TempDir, events};
use palworker_config::Settings;
use palworker_sim::{FaultProfile, Faults};

use crate::accounts::{
    SET_EXECUTION, assignment_event, assignment_messages, object, principals, tenant,
};
use crate::broker;
use crate::machine::{broker_pid, cpu_seconds, free_port};
use crate::report::{Sample, Unit, line, log_run, medians};
use crate::worker::BenchWorker;
use crate::{BenchArgs, LEDGER_CACHE_BYTES, PARTNER_A, PARTNER_B, PHASE_TIMEOUT, PUBLISH_WINDOW};

/// The partition counts measured.
const COUNTS: [u32; 3] = [1, 2, 3];

pub async fn run(url: &str, args: &BenchArgs, binary: &Path) -> anyhow::Result<Vec<String>> {
    let per_tenant = args.actions / args.tenants;
    let mut by_count: Vec<Vec<Sample>> = COUNTS.iter().map(|_| Vec::new()).collect();
    let mut routing = Vec::new();
    for run in 1..=args.runs {
        for (slot, count) in COUNTS.iter().enumerate() {
            let sample = deployment_run(url, args, binary, *count, per_tenant).await?;
            log_run(&format!("partitions {count}"), run, args.runs, &sample);
            by_count[slot].push(sample);
        }
        let sample = router_run(url, args, binary).await?;
        log_run("partitions router", run, args.runs, &sample);
        routing.push(sample);
    }
    let mut lines = Vec::new();
    for (count, runs) in COUNTS.iter().zip(&by_count) {
        lines.push(line(
            "partitions",
            &[
                ("partitions", count.to_string()),
                ("actions", (per_tenant * args.tenants).to_string()),
                ("tenants", args.tenants.to_string()),
                ("concurrency", args.concurrency.to_string()),
                ("runs", args.runs.to_string()),
            ],
            &medians(runs),
            "none",
            true,
        ));
    }
    lines.push(line(
        "partitions_router",
        &[
            ("partitions", "3".to_owned()),
            ("events", args.events.to_string()),
            ("runs", args.runs.to_string()),
        ],
        &medians(&routing),
        "none",
        true,
    ));
    Ok(lines)
}

/// A configuration file: the harness's for `role`, on `port`, with `extra`.
fn write_config(
    partitioned: &PartitionedHarness,
    dir: &Path,
    role: Role,
    port: u16,
    extra: &str,
) -> anyhow::Result<PathBuf> {
    let name = match role {
        Role::Router => "router".to_owned(),
        Role::Partition(partition) => partition.to_string(),
    };
    let path = dir.join(format!("{name}.toml"));
    let text = Settings::layer_toml(
        &partitioned.config_of(role)?,
        &format!("[http]\nlisten = \"127.0.0.1:{port}\"\n{extra}"),
    )?;
    std::fs::write(&path, text)?;
    Ok(path)
}

/// CPU seconds of each process so far.
fn cpu_of(pids: &[u32]) -> Vec<f64> {
    pids.iter().map(|pid| cpu_seconds(Some(*pid))).collect()
}

async fn deployment_run(
    url: &str,
    args: &BenchArgs,
    binary: &Path,
    count: u32,
    per_tenant: u64,
) -> anyhow::Result<Sample> {
    let mut partitioned = PartitionedHarness::prepare(
        HarnessOptions {
            amqp_url: url.to_owned(),
            name: "palworker-bench-partitions".to_owned(),
            principals: principals(SET_EXECUTION, args.tenants, per_tenant),
            extra_toml: format!(
                "[ledger]\ncache_capacity = {LEDGER_CACHE_BYTES}\n[limits]\nmax_actions_per_event = 100000000\nconcurrency = {}\n",
                args.concurrency
            ),
            faults: Faults::none(),
            ..HarnessOptions::default()
        },
        count,
    )
    .await?;
    let dir = TempDir::new("palworker-bench-partitions")?;
    let result =
        deployment_phases(&mut partitioned, url, dir.path(), args, binary, per_tenant).await;
    let shutdown = partitioned.shutdown().await;
    let sample = result?;
    shutdown?;
    Ok(sample)
}

async fn deployment_phases(
    partitioned: &mut PartitionedHarness,
    url: &str,
    dir: &Path,
    args: &BenchArgs,
    binary: &Path,
    per_tenant: u64,
) -> anyhow::Result<Sample> {
    let count = partitioned.count;
    let env = partitioned.harness.config_env.clone();
    let ports: Vec<u16> = count.all().map(|_| free_port()).collect::<Result<_, _>>()?;
    let admin_urls: Vec<String> = ports
        .iter()
        .map(|port| format!("\"http://127.0.0.1:{port}\""))
        .collect();
    let extra = format!(
        "[worker]\npaused = true\n[partitions]\nadmin_urls = [{}]\n",
        admin_urls.join(", ")
    );
    let mut workers = Vec::new();
    for (partition, port) in count.all().zip(&ports) {
        let config = write_config(partitioned, dir, Role::Partition(partition), *port, &extra)?;
        let log = dir.join(format!("{partition}.log"));
        workers.push(BenchWorker::spawn(binary, &config, &env, &log, *port)?);
    }
    for worker in &workers {
        worker.wait_ready(PHASE_TIMEOUT).await?;
    }
    let mut router = if count.get() > 1 {
        let config = write_config(partitioned, dir, Role::Router, free_port()?, "")?;
        Some(WorkerProcess::spawn_router(
            binary,
            &config,
            &env,
            &dir.join("router.log"),
        )?)
    } else {
        None
    };
    // Operator commands go to every partition (admin_urls).
    let operator = dir.join("p0.toml");
    let result = async {
        let accounts: Vec<(u64, u64)> = (0..args.tenants)
            .flat_map(|t| (0..per_tenant).map(move |p| (t, p)))
            .collect();
        let actions = accounts.len() as u64;
        // 1. Link every account (tokens fetched), untimed.
        broker::publish_many(
            url,
            &partitioned.harness.settings.amqp.exchange,
            assignment_messages("bench-part", SET_EXECUTION, &accounts, PARTNER_A)?,
            "application/cloudevents+json",
            PUBLISH_WINDOW,
        )
        .await?;
        wait_for_scrapes(&workers, "every link event accepted", |s| {
            s.accepted >= actions
        })
        .await?;
        operate(binary, &operator, &env, "resume").await?;
        wait_for_scrapes(&workers, "every account linked", |s| s.done >= actions).await?;
        operate(binary, &operator, &env, "pause").await?;

        // 2. Move every link at the PAL latency: timed.
        partitioned
            .harness
            .publish(&events::partner_id_changed(
                "bench-part-change",
                PARTNER_A,
                PARTNER_B,
                None,
            ))
            .await?;
        let copies = u64::from(count.get());
        wait_for_scrapes(&workers, "the change accepted everywhere", |s| {
            s.accepted >= actions + copies
        })
        .await?;
        partitioned
            .harness
            .simulator
            .set_faults(Faults::everywhere(FaultProfile {
                latency_ms: args.latency_ms,
                ..FaultProfile::default()
            }));
        let mut pids: Vec<u32> = workers.iter().map(BenchWorker::pid).collect();
        pids.extend(router.as_ref().map(WorkerProcess::pid));
        pids.push(std::process::id());
        let broker = broker_pid();
        let cpu_before = cpu_of(&pids);
        let broker_before = cpu_seconds(broker);
        let started = Instant::now();
        operate(binary, &operator, &env, "resume").await?;
        wait_for_scrapes(&workers, "every link moved", |s| s.done >= 2 * actions).await?;
        let seconds = started.elapsed().as_secs_f64();
        let cpu_after = cpu_of(&pids);
        let broker_cpu = cpu_seconds(broker) - broker_before;
        partitioned.harness.simulator.set_faults(Faults::none());

        let mut wrong = 0usize;
        for &(t, p) in &accounts {
            let link = partitioned
                .harness
                .simulator
                .active_link(&tenant(t), &object(SET_EXECUTION, t, p));
            if link.is_none_or(|link| link.partner_id != PARTNER_B) {
                wrong += 1;
            }
        }
        anyhow::ensure!(
            wrong == 0,
            "{wrong} of {actions} accounts are not linked to {PARTNER_B}"
        );
        let cpu: Vec<f64> = cpu_after
            .iter()
            .zip(&cpu_before)
            .map(|(a, b)| a - b)
            .collect();
        let workers_cpu: f64 = cpu[..workers.len()].iter().sum();
        let router_cpu = if router.is_some() {
            cpu[workers.len()]
        } else {
            0.0
        };
        let own_cpu = cpu[cpu.len() - 1];
        let mut sample = Sample::default();
        sample.push("latency_ms", Unit::Count, args.latency_ms as f64);
        sample.push("seconds", Unit::Seconds, seconds);
        sample.push("actions_per_s", Unit::Rate, actions as f64 / seconds);
        sample.push("workers_cpu_s", Unit::Seconds, workers_cpu);
        sample.push(
            "worker_cpu_s_max",
            Unit::Seconds,
            cpu[..workers.len()].iter().copied().fold(0.0, f64::max),
        );
        sample.push("router_cpu_s", Unit::Seconds, router_cpu);
        sample.push("sim_and_bench_cpu_s", Unit::Seconds, own_cpu);
        sample.push("broker_cpu_s", Unit::Seconds, broker_cpu);
        sample.push(
            "cpu_busy",
            Unit::Ratio,
            (workers_cpu + router_cpu + own_cpu + broker_cpu)
                / (seconds * std::thread::available_parallelism().map_or(1, |n| n.get()) as f64),
        );
        anyhow::Ok(sample)
    }
    .await;
    for worker in &mut workers {
        worker.stop().await?;
    }
    if let Some(router) = &mut router {
        router.terminate(Duration::from_secs(30)).await?;
    }
    result
}

/// `palworker --config FILE COMMAND`, which must succeed.
async fn operate(
    binary: &Path,
    config: &Path,
    env: &[(String, String)],
    command: &str,
) -> anyhow::Result<()> {
    let config = config.to_str().unwrap_or_default();
    let output = run_cli(binary, &["--config", config, command], env).await?;
    anyhow::ensure!(
        output.code == 0,
        "`palworker {command}` failed: {}",
        output.stderr
    );
    Ok(())
}

/// Waits until the workers' `/metrics`, added up, satisfy `condition`.
async fn wait_for_scrapes(
    workers: &[BenchWorker],
    what: &str,
    condition: impl Fn(&crate::worker::Scrape) -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + PHASE_TIMEOUT;
    loop {
        let mut total = crate::worker::Scrape::default();
        for worker in workers {
            let scrape = worker.scrape().await?;
            total.accepted += scrape.accepted;
            total.done += scrape.done;
            total.failed += scrape.failed;
            total.dead_lettered += scrape.dead_lettered;
        }
        anyhow::ensure!(
            total.failed == 0 && total.dead_lettered == 0,
            "{} failed action(s), {} dead-lettered event(s)",
            total.failed,
            total.dead_lettered
        );
        if condition(&total) {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The router alone: `--events` assignment events wait in the events
/// queue; a router process moves them to three partition queues (no
/// worker consumes them); then the broker's ceiling on the same bodies.
async fn router_run(url: &str, args: &BenchArgs, binary: &Path) -> anyhow::Result<Sample> {
    let partitioned = PartitionedHarness::prepare(
        HarnessOptions {
            amqp_url: url.to_owned(),
            name: "palworker-bench-router".to_owned(),
            ..HarnessOptions::default()
        },
        3,
    )
    .await?;
    let dir = TempDir::new("palworker-bench-router")?;
    let result = async {
        let bodies: Vec<Vec<u8>> = (0..args.events)
            .map(|n| {
                serde_json::to_vec(&assignment_event(
                    &format!("bench-route-{n}"),
                    SET_EXECUTION,
                    n % args.tenants,
                    0,
                    PARTNER_A,
                ))
            })
            .collect::<Result<_, _>>()?;
        let settings = &partitioned.harness.settings;
        broker::publish_many(
            url,
            &settings.amqp.exchange,
            bodies
                .iter()
                .map(|body| ("project.assignment.started".to_owned(), body.clone())),
            "application/cloudevents+json",
            PUBLISH_WINDOW,
        )
        .await?;
        let config = write_config(&partitioned, dir.path(), Role::Router, free_port()?, "")?;
        let broker = broker_pid();
        let broker_before = cpu_seconds(broker);
        let started = Instant::now();
        let mut router = WorkerProcess::spawn_router(
            binary,
            &config,
            &partitioned.harness.config_env,
            &dir.path().join("router.log"),
        )?;
        let queues: Vec<String> = partitioned
            .count
            .all()
            .map(|partition| partitioned.queue_of(partition))
            .collect();
        loop {
            let mut copies = 0u64;
            for queue in &queues {
                copies += u64::from(broker::queue_depth(url, queue).await?);
            }
            if copies >= args.events {
                break;
            }
            anyhow::ensure!(
                started.elapsed() < PHASE_TIMEOUT,
                "the router did not finish"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let seconds = started.elapsed().as_secs_f64();
        let router_cpu = cpu_seconds(Some(router.pid()));
        let broker_cpu = cpu_seconds(broker) - broker_before;
        router.terminate(Duration::from_secs(30)).await?;
        let ceiling =
            broker::ceiling(url, bodies, args.prefetch, PUBLISH_WINDOW, PHASE_TIMEOUT).await?;
        let events = args.events as f64;
        let mut sample = Sample::default();
        sample.push("seconds", Unit::Seconds, seconds);
        sample.push("events_per_s", Unit::Rate, events / seconds);
        sample.push("router_cpu_s", Unit::Seconds, router_cpu);
        sample.push("broker_cpu_s", Unit::Seconds, broker_cpu);
        sample.push(
            "ceiling_publish_per_s",
            Unit::Rate,
            ceiling.messages as f64 / ceiling.publish_secs,
        );
        sample.push(
            "ceiling_consume_per_s",
            Unit::Rate,
            ceiling.messages as f64 / ceiling.consume_secs,
        );
        // Routing is a consume plus a confirmed publish per event.
        let both = 1.0
            / (ceiling.publish_secs / ceiling.messages as f64
                + ceiling.consume_secs / ceiling.messages as f64);
        sample.push("ceiling_consume_and_publish_per_s", Unit::Rate, both);
        sample.push("ratio_to_ceiling", Unit::Ratio, (events / seconds) / both);
        anyhow::Ok(sample)
    }
    .await;
    let shutdown = partitioned.shutdown().await;
    let sample = result?;
    shutdown?;
    Ok(sample)
}
