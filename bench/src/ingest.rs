//! Ingest: events validated, planned, stored, flushed and acked per second,
//! against the broker ceiling measured in the same run.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use palworker::clock::SystemClock;
use palworker::local::{Harness, HarnessOptions};
use palworker_core::EventOutcome;

use crate::accounts::{SET_INGEST, assignment_event, padded};
use crate::broker;
use crate::machine::{broker_pid, cpu_seconds, wait};
use crate::report::{Sample, Unit, line, log_run, medians};
use crate::{BenchArgs, LEDGER_CACHE_BYTES, PARTNER_A, PHASE_TIMEOUT, PUBLISH_WINDOW};

pub async fn run(url: &str, args: &BenchArgs) -> anyhow::Result<Vec<String>> {
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
    let ceiling = broker::ceiling(
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
    let started = Instant::now();
    let published = broker::publish_many(
        url,
        &harness.topology.exchange,
        bodies
            .iter()
            .map(|body| ("project.assignment.started".to_owned(), body.clone())),
        "application/cloudevents+json",
        PUBLISH_WINDOW,
    )
    .await?;
    let publish_secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(published == args.events, "published {published} events");
    let queued = broker::queue_depth(url, &harness.topology.queue).await?;
    anyhow::ensure!(
        u64::from(queued) == args.events,
        "{queued} of {} events are in the queue",
        args.events
    );

    // The worker, execution paused: consume, validate, plan, flush, ack.
    let own_cpu = cpu_seconds(Some(std::process::id()));
    let broker_cpu = cpu_seconds(broker);
    harness.start_worker().await?;
    harness.app().executor.pause();
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
            harness.app().metrics.deliveries(EventOutcome::Accepted) >= args.events
                || harness.app().metrics.deliveries(EventOutcome::DeadLettered) > 0
        },
    )
    .await?;
    let seconds = (accepted_at - connected).as_secs_f64();
    let worker_cpu = cpu_seconds(Some(std::process::id())) - own_cpu;
    let broker_cpu = cpu_seconds(broker) - broker_cpu;

    let app = harness.app();
    for outcome in [
        EventOutcome::DeadLettered,
        EventOutcome::Duplicate,
        EventOutcome::Held,
    ] {
        let count = app.metrics.deliveries(outcome);
        anyhow::ensure!(count == 0, "{count} event(s) ended {}", outcome.as_str());
    }
    anyhow::ensure!(
        app.metrics.deliveries(EventOutcome::Accepted) == args.events,
        "accepted {} of {} events",
        app.metrics.deliveries(EventOutcome::Accepted),
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
    let left = broker::queue_depth(url, &harness.topology.queue).await?;
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
