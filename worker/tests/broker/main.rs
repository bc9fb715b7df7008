//! The broker goes away and the worker is told to stop: connections closed
//! from the server side (`rabbitmqctl close_all_connections` /
//! `close_all_user_connections`), a broker restart (`rabbitmqctl stop_app` /
//! `start_app`), readiness while disconnected, and a graceful SIGTERM of the
//! real process.
//!
//! Why a test binary of its own, apart from `tests/integration`: stopping
//! the RabbitMQ application closes every connection on the broker — any
//! other test running meanwhile would lose its broker under it. Cargo runs
//! test binaries one at a time, so nothing else runs while this binary does,
//! and within it [`SEQUENTIAL`] runs its scenarios one after the other.
//! The helpers are in `palworker::local`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use palworker::amqp::Publisher;
use palworker::clock::SystemClock;
use palworker::ledger::Ledger;
use palworker::local::broker::{BrokerSandbox, rabbitmqctl};
use palworker::local::identities::{assignment, employee, principals};
use palworker::local::{
    Harness, HarnessOptions, events, is_write, request_identity, wait_until, writes_per_identity,
};
use palworker_core::{ActionState, StatusFilter};
use palworker_sim::{FaultProfile, Faults};

/// The scenarios of this binary run one after the other.
static SEQUENTIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const SETTLE: Duration = Duration::from_secs(90);

/// The `palworker` binary cargo built for these tests.
fn worker_binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_palworker"))
}

/// A worker in `sandbox`, with `employees` × `tenants` principals, PAL
/// answering after `latency_ms`, and `concurrency` actions at a time.
async fn start_worker(
    sandbox: &BrokerSandbox,
    name: &str,
    employees: usize,
    tenants: usize,
    latency_ms: u64,
    concurrency: usize,
) -> Harness {
    Harness::start(HarnessOptions {
        amqp_url: sandbox.worker_url(),
        principals: principals(employees, tenants),
        faults: Faults::everywhere(FaultProfile {
            latency_ms,
            ..FaultProfile::default()
        }),
        extra_toml: format!("[limits]\nconcurrency = {concurrency}\nper_tenant_rps = 500.0\n"),
        name: name.into(),
        ..HarnessOptions::default()
    })
    .await
    .unwrap()
}

/// `project.assignment.started` for each of `employees` in each of `tenants`,
/// linking partner 111111.
fn assignments(employees: std::ops::Range<usize>, tenants: usize) -> Vec<serde_json::Value> {
    employees
        .flat_map(|e| {
            (0..tenants).map(move |t| assignment(&format!("start-{e}-{t}"), e, t, "111111"))
        })
        .collect()
}

/// Publishes `events` through `publisher` (another connection than the
/// harness's own), counting them as published by the harness.
async fn publish_all(h: &mut Harness, publisher: &Publisher, events: &[serde_json::Value]) {
    for event in events {
        publisher.publish_event(event, None).await.unwrap();
        h.published += 1;
    }
}

/// Asserts every employee's link in every tenant carries `partner(e)`.
fn assert_links(
    h: &Harness,
    employees: usize,
    tenants: usize,
    partner: impl Fn(usize) -> &'static str,
) {
    for e in 0..employees {
        for t in 0..tenants {
            assert_eq!(h.linked(e, t).as_deref(), Some(partner(e)), "E-{e} in T{t}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_closed_by_the_broker_are_reopened_and_events_published_meanwhile_are_processed()
 {
    let _sequential = SEQUENTIAL.lock().await;
    const TENANTS: usize = 3;
    const EMPLOYEES: usize = 40;
    let sandbox = BrokerSandbox::create().await.unwrap();
    let mut h = start_worker(&sandbox, "palworker-broker", EMPLOYEES, TENANTS, 100, 16).await;
    let assignments = |employees| assignments(employees, TENANTS);
    h.wait_for_readiness(SETTLE, 200, 1).await.unwrap();

    // 1. All connections of the vhost closed by the broker while actions run.
    let mut publisher = Publisher::connect(&sandbox.publisher_url(), &h.topology.exchange)
        .await
        .unwrap();
    publish_all(&mut h, &publisher, &assignments(0..20)).await;
    wait_until(
        SETTLE,
        "the first writes are answered",
        || h.answered_writes() >= 5,
        || format!("{} writes answered", h.answered_writes()),
    )
    .await
    .unwrap();
    rabbitmqctl(&[
        "close_all_connections",
        "--vhost",
        sandbox.vhost(),
        "test: closed by the broker",
    ])
    .await
    .unwrap();
    publisher.close().await;
    publisher = Publisher::connect(&sandbox.publisher_url(), &h.topology.exchange)
        .await
        .unwrap();
    publish_all(&mut h, &publisher, &assignments(20..30)).await;
    h.wait_until_settled(SETTLE).await.unwrap();
    h.wait_for_readiness(SETTLE, 200, 1).await.unwrap();

    // 2. The worker's connection closed and new ones refused for a while:
    //    not ready meanwhile; events published meanwhile wait in the queue.
    rabbitmqctl(&[
        "set_user_limits",
        sandbox.user(),
        r#"{"max-connections": 0}"#,
    ])
    .await
    .unwrap();
    rabbitmqctl(&[
        "close_all_user_connections",
        sandbox.user(),
        "test: closed by the broker",
    ])
    .await
    .unwrap();
    h.wait_for_readiness(SETTLE, 503, 0).await.unwrap();
    assert!(
        h.metrics_text().contains("palworker_amqp_connected 0"),
        "{}",
        h.metrics_text()
    );
    let mut while_down = assignments(30..EMPLOYEES);
    for e in 0..10 {
        while_down.push(events::employee_transferred(
            &format!("transfer-{e}"),
            &employee(e),
            "333333",
        ));
    }
    publish_all(&mut h, &publisher, &while_down).await;
    assert_eq!(
        h.readyz().await.unwrap(),
        503,
        "still refused by the broker"
    );
    rabbitmqctl(&["clear_user_limits", sandbox.user(), "max-connections"])
        .await
        .unwrap();
    h.wait_for_readiness(SETTLE, 200, 1).await.unwrap();
    assert!(h.metrics_text().contains("palworker_amqp_connected 1"));
    h.wait_until_settled(SETTLE).await.unwrap();

    assert_links(&h, EMPLOYEES, TENANTS, |e| {
        if e < 10 { "333333" } else { "111111" }
    });
    let ledger = h.app().ledger.clone();
    for e in 0..EMPLOYEES {
        for t in 0..TENANTS {
            let id = format!("start-{e}-{t}");
            assert_eq!(ledger.find_events(&id, None).unwrap().len(), 1, "{id}");
        }
    }
    for e in 0..10 {
        let id = format!("transfer-{e}");
        assert_eq!(ledger.find_events(&id, None).unwrap().len(), 1, "{id}");
    }
    let failed = ledger
        .actions(&StatusFilter {
            failed: true,
            ..StatusFilter::default()
        })
        .unwrap();
    assert!(failed.is_empty(), "{failed:#?}");
    assert!(h.dead_letters().await.unwrap().is_empty());
    publisher.close().await;
    h.shutdown().await.unwrap();
    drop(sandbox);
}

/// The RabbitMQ application stopped (the Erlang node stays up); started again
/// on drop, so a failing test never leaves the broker down for the rest.
struct BrokerStopped;

impl BrokerStopped {
    async fn stop() -> BrokerStopped {
        rabbitmqctl(&["stop_app"]).await.unwrap();
        BrokerStopped
    }

    async fn start(self) {
        std::mem::forget(self);
        rabbitmqctl(&["start_app"]).await.unwrap();
        rabbitmqctl(&["await_startup"]).await.unwrap();
    }
}

impl Drop for BrokerStopped {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl").arg("start_app").output();
        let _ = Command::new("rabbitmqctl").arg("await_startup").output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_is_survived_and_nothing_is_lost_or_done_twice() {
    let _sequential = SEQUENTIAL.lock().await;
    const TENANTS: usize = 3;
    const EMPLOYEES: usize = 30;
    let sandbox = BrokerSandbox::create().await.unwrap();
    let mut h = start_worker(&sandbox, "palworker-restart", EMPLOYEES, TENANTS, 200, 8).await;
    h.wait_for_readiness(SETTLE, 200, 1).await.unwrap();
    let assignments = |employees| assignments(employees, TENANTS);

    // Events in the queue and actions running when the broker stops.
    let publisher = Publisher::connect(&sandbox.publisher_url(), &h.topology.exchange)
        .await
        .unwrap();
    publish_all(&mut h, &publisher, &assignments(0..20)).await;
    publisher.close().await;
    wait_until(
        SETTLE,
        "the first writes are answered",
        || h.answered_writes() >= 3,
        || format!("{} writes answered", h.answered_writes()),
    )
    .await
    .unwrap();
    let stopped = BrokerStopped::stop().await;
    h.wait_for_readiness(SETTLE, 503, 0).await.unwrap();
    // Actions already accepted go on without the broker.
    let answered = h.answered_writes();
    wait_until(
        SETTLE,
        "writes go on while the broker is down",
        || {
            let now = h.answered_writes();
            now > answered || now >= 20 * TENANTS
        },
        || {
            format!(
                "{} writes answered, {answered} at the stop",
                h.answered_writes()
            )
        },
    )
    .await
    .unwrap();
    stopped.start().await;
    h.wait_for_readiness(SETTLE, 200, 1).await.unwrap();

    // The worker consumes again: the rest of the queue and new events.
    let publisher = Publisher::connect(&sandbox.publisher_url(), &h.topology.exchange)
        .await
        .unwrap();
    publish_all(&mut h, &publisher, &assignments(20..EMPLOYEES)).await;
    publisher.close().await;
    h.wait_until_settled(SETTLE).await.unwrap();

    assert_links(&h, EMPLOYEES, TENANTS, |_| "111111");
    let ledger = h.app().ledger.clone();
    for e in 0..EMPLOYEES {
        for t in 0..TENANTS {
            let id = format!("start-{e}-{t}");
            assert_eq!(ledger.find_events(&id, None).unwrap().len(), 1, "{id}");
        }
    }
    let writes = writes_per_identity(&h.simulator.requests());
    assert!(
        writes.values().all(|n| *n == 1),
        "one write per link: {writes:?}"
    );
    assert!(h.dead_letters().await.unwrap().is_empty());
    h.shutdown().await.unwrap();
    drop(sandbox);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_actions_exits_0_and_leaves_a_flushed_ledger() {
    let _sequential = SEQUENTIAL.lock().await;
    const TENANTS: usize = 4;
    const EMPLOYEES: usize = 25;
    let mut h = Harness::prepare(
        HarnessOptions {
            principals: principals(EMPLOYEES, TENANTS),
            faults: Faults::everywhere(FaultProfile {
                latency_ms: 300,
                ..FaultProfile::default()
            }),
            extra_toml: "[limits]\nconcurrency = 16\nper_tenant_rps = 500.0\n".into(),
            name: "palworker-sigterm".into(),
            ..HarnessOptions::default()
        },
        Arc::new(SystemClock),
    )
    .await
    .unwrap();
    let mut ids = Vec::new();
    for e in 0..EMPLOYEES {
        for t in 0..TENANTS {
            let id = format!("start-{e}-{t}");
            h.publish(&assignment(&id, e, t, "111111")).await.unwrap();
            ids.push(id);
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let mut process = h
        .spawn_worker_process(worker_binary(), dir.path(), "sigterm")
        .unwrap();
    wait_until(
        SETTLE,
        "some writes are answered",
        || h.answered_writes() >= 20,
        || format!("{} writes answered", h.answered_writes()),
    )
    .await
    .unwrap();
    let status = process.terminate(Duration::from_secs(60)).await.unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "exit 0 after draining\n{}",
        process.log_tail(30)
    );

    // Drained: every action that had started (sent its GET) also finished its write.
    let first_run = h.simulator.requests();
    let started: BTreeSet<(String, String)> = first_run.iter().map(request_identity).collect();
    let written: BTreeSet<(String, String)> = first_run
        .iter()
        .filter(|r| is_write(r) && r.status == 200)
        .map(request_identity)
        .collect();
    assert_eq!(started, written, "no action was left half-way");
    assert!(
        written.len() < EMPLOYEES * TENANTS,
        "the stop came while actions were still pending"
    );

    // Flushed: a done action for every write, and nothing left in flight.
    {
        let ledger = Ledger::open(
            &h.settings.ledger.path,
            h.settings.ledger.cache_capacity_bytes,
        )
        .unwrap();
        for action in ledger.actions(&StatusFilter::default()).unwrap() {
            let key = (
                action.tenant_id.as_str().to_owned(),
                action.object_id.as_str().to_owned(),
            );
            if written.contains(&key) {
                assert_eq!(action.state, ActionState::Done, "{action:#?}");
            } else {
                assert_eq!(action.state, ActionState::Pending, "{action:#?}");
                assert_eq!(action.attempts, 0, "never started: {action:#?}");
            }
        }
    }

    // A restarted worker sees everything: it finishes the rest and redoes nothing.
    h.start_worker().await.unwrap();
    h.wait_for(
        SETTLE,
        "every link converges and no action is pending",
        |h| {
            (0..EMPLOYEES).all(|e| (0..TENANTS).all(|t| h.linked(e, t).is_some()))
                && h.app().ledger.pending_count() == 0
        },
    )
    .await
    .unwrap();
    for id in &ids {
        let found = h.app().ledger.find_events(id, None).unwrap();
        assert_eq!(found.len(), 1, "{id} accepted exactly once");
    }
    assert_links(&h, EMPLOYEES, TENANTS, |_| "111111");
    let all = h.simulator.requests();
    let second_run: Vec<_> = all[first_run.len()..].to_vec();
    assert!(
        second_run
            .iter()
            .all(|r| !written.contains(&request_identity(r))),
        "actions done before the stop were not run again"
    );
    let writes = writes_per_identity(&all);
    assert_eq!(writes.len(), EMPLOYEES * TENANTS);
    let counts: BTreeMap<usize, usize> = writes.values().fold(BTreeMap::new(), |mut m, c| {
        *m.entry(*c).or_default() += 1;
        m
    });
    assert_eq!(
        counts.keys().copied().collect::<Vec<_>>(),
        vec![1],
        "{counts:?}"
    );
    eprintln!(
        "sigterm: {} of {} actions done before the stop, the rest after the restart",
        written.len(),
        EMPLOYEES * TENANTS
    );
    h.shutdown().await.unwrap();
}
