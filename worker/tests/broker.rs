//! The broker goes away and the worker is told to stop: connections closed
//! from the server side (`rabbitmqctl`), a broker restart (`stop_app` /
//! `start_app`), readiness while disconnected, and a graceful SIGTERM of the
//! real process. Its own test binary, and its
//! scenarios run one at a time: they close broker connections.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use palworker::amqp::Publisher;
use palworker::clock::SystemClock;
use palworker::harness::{Harness, HarnessOptions, events};
use palworker::ledger::{ActionState, Ledger, StatusFilter};
use palworker::sim::{FaultProfile, Faults};

/// The scenarios of this binary run one after the other.
static SEQUENTIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const SETTLE: Duration = Duration::from_secs(90);

/// `rabbitmqctl ARGS…`, which must succeed.
async fn rabbitmqctl(args: &[&str]) {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("rabbitmqctl")
            .args(&args)
            .output()
            .map(|output| (args, output))
    })
    .await
    .unwrap()
    .expect("rabbitmqctl runs");
    let (args, output) = output;
    assert!(
        output.status.success(),
        "rabbitmqctl {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A virtual host of its own and a broker user for the worker, so that
/// closing connections and refusing new ones touches nothing else on the
/// broker. Deleted on drop.
struct BrokerSandbox {
    vhost: String,
    user: String,
    password: String,
}

impl BrokerSandbox {
    async fn create() -> BrokerSandbox {
        let unique = uuid::Uuid::new_v4().simple().to_string();
        let sandbox = BrokerSandbox {
            vhost: format!("palworker-broker-{unique}"),
            user: format!("palworker-broker-{unique}"),
            password: uuid::Uuid::new_v4().simple().to_string(),
        };
        rabbitmqctl(&["add_vhost", &sandbox.vhost]).await;
        rabbitmqctl(&["add_user", &sandbox.user, &sandbox.password]).await;
        for user in [sandbox.user.as_str(), "guest"] {
            rabbitmqctl(&[
                "set_permissions",
                "-p",
                &sandbox.vhost,
                user,
                ".*",
                ".*",
                ".*",
            ])
            .await;
        }
        sandbox
    }

    /// The worker's URL.
    fn worker_url(&self) -> String {
        format!(
            "amqp://{}:{}@127.0.0.1:5672/{}",
            self.user, self.password, self.vhost
        )
    }

    /// The publishers' URL (another user, unaffected by the worker's limits).
    fn publisher_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:5672/{}", self.vhost)
    }
}

impl BrokerSandbox {
    /// A worker in this sandbox, with `employees` × `tenants` principals, PAL
    /// answering after `latency_ms`, and `concurrency` actions at a time.
    async fn start_worker(
        &self,
        name: &str,
        employees: usize,
        tenants: usize,
        latency_ms: u64,
        concurrency: usize,
    ) -> Harness {
        Harness::start(HarnessOptions {
            amqp_url: self.worker_url(),
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

impl Drop for BrokerSandbox {
    fn drop(&mut self) {
        for args in [
            vec!["delete_vhost", self.vhost.as_str()],
            vec!["delete_user", self.user.as_str()],
        ] {
            let _ = Command::new("rabbitmqctl").args(&args).output();
        }
    }
}

async fn readyz(h: &Harness) -> u16 {
    reqwest::get(format!("http://{}/readyz", h.app().http_addr))
        .await
        .expect("the worker answers HTTP")
        .status()
        .as_u16()
}

fn amqp_connected(h: &Harness) -> i64 {
    h.app().metrics.amqp_connected.get()
}

/// Polls `/readyz` and the gauge until they show `status` and `gauge`.
async fn wait_for_readiness(h: &Harness, status: u16, gauge: i64) {
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        if readyz(h).await == status && amqp_connected(h) == gauge {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for /readyz {status} and palworker_amqp_connected {gauge}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

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
            assert_eq!(
                h.simulator
                    .active_link(&tenant(t), &object(e, t))
                    .map(|l| l.partner_id)
                    .as_deref(),
                Some(partner(e)),
                "E-{e} in T{t}"
            );
        }
    }
}

fn answered_writes(h: &Harness) -> usize {
    h.simulator
        .requests()
        .iter()
        .filter(|r| is_write(r) && r.status == 200)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_closed_by_the_broker_are_reopened_and_events_published_meanwhile_are_processed()
 {
    let _sequential = SEQUENTIAL.lock().await;
    const TENANTS: usize = 3;
    const EMPLOYEES: usize = 40;
    let sandbox = BrokerSandbox::create().await;
    let mut h = sandbox
        .start_worker("palworker-broker", EMPLOYEES, TENANTS, 100, 16)
        .await;
    let assignments = |employees| assignments(employees, TENANTS);
    wait_for_readiness(&h, 200, 1).await;

    // 1. All connections of the vhost closed by the broker while actions run.
    let mut publisher = Publisher::connect(&sandbox.publisher_url(), &h.topology.exchange)
        .await
        .unwrap();
    publish_all(&mut h, &publisher, &assignments(0..20)).await;
    wait_until(SETTLE, "the first writes are answered", || {
        answered_writes(&h) >= 5
    })
    .await;
    rabbitmqctl(&[
        "close_all_connections",
        "--vhost",
        &sandbox.vhost,
        "test: closed by the broker",
    ])
    .await;
    publisher.close().await;
    publisher = Publisher::connect(&sandbox.publisher_url(), &h.topology.exchange)
        .await
        .unwrap();
    publish_all(&mut h, &publisher, &assignments(20..30)).await;
    h.wait_until_settled(SETTLE).await.unwrap();
    wait_for_readiness(&h, 200, 1).await;

    // 2. The worker's connection closed and new ones refused for a while:
    //    not ready meanwhile; events published meanwhile wait in the queue.
    rabbitmqctl(&[
        "set_user_limits",
        &sandbox.user,
        r#"{"max-connections": 0}"#,
    ])
    .await;
    rabbitmqctl(&[
        "close_all_user_connections",
        &sandbox.user,
        "test: closed by the broker",
    ])
    .await;
    wait_for_readiness(&h, 503, 0).await;
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
    assert_eq!(readyz(&h).await, 503, "still refused by the broker");
    rabbitmqctl(&["clear_user_limits", &sandbox.user, "max-connections"]).await;
    wait_for_readiness(&h, 200, 1).await;
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
        rabbitmqctl(&["stop_app"]).await;
        BrokerStopped
    }

    async fn start(self) {
        std::mem::forget(self);
        rabbitmqctl(&["start_app"]).await;
        rabbitmqctl(&["await_startup"]).await;
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
    let sandbox = BrokerSandbox::create().await;
    let mut h = sandbox
        .start_worker("palworker-restart", EMPLOYEES, TENANTS, 200, 8)
        .await;
    wait_for_readiness(&h, 200, 1).await;
    let assignments = |employees| assignments(employees, TENANTS);

    // Events in the queue and actions running when the broker stops.
    let publisher = Publisher::connect(&sandbox.publisher_url(), &h.topology.exchange)
        .await
        .unwrap();
    publish_all(&mut h, &publisher, &assignments(0..20)).await;
    publisher.close().await;
    wait_until(SETTLE, "the first writes are answered", || {
        answered_writes(&h) >= 3
    })
    .await;
    let stopped = BrokerStopped::stop().await;
    wait_for_readiness(&h, 503, 0).await;
    // Actions already accepted go on without the broker.
    let answered = answered_writes(&h);
    wait_until(SETTLE, "writes go on while the broker is down", || {
        let now = answered_writes(&h);
        now > answered || now >= 20 * TENANTS
    })
    .await;
    stopped.start().await;
    wait_for_readiness(&h, 200, 1).await;

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
    let mut process = WorkerProcess::spawn(&h, dir.path(), "sigterm");
    wait_until(SETTLE, "some writes are answered", || {
        answered_writes(&h) >= 20
    })
    .await;
    let status = process.terminate(Duration::from_secs(60)).await;
    assert_eq!(
        status.code(),
        Some(0),
        "exit 0 after draining\n{}",
        process.log_tail(30)
    );

    // Drained: every action that had started (sent its GET) also finished its write.
    let first_run = h.simulator.requests();
    let identity = |r: &palworker::sim::RequestRecord| {
        (
            r.tenant_id.clone().unwrap_or_default(),
            r.object_id.clone().unwrap_or_default(),
        )
    };
    let started: BTreeSet<(String, String)> = first_run.iter().map(identity).collect();
    let written: BTreeSet<(String, String)> = first_run
        .iter()
        .filter(|r| is_write(r) && r.status == 200)
        .map(identity)
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
            (0..EMPLOYEES).all(|e| {
                (0..TENANTS).all(|t| h.simulator.active_link(&tenant(t), &object(e, t)).is_some())
            }) && h.app().ledger.pending_count() == 0
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
        second_run.iter().all(|r| !written.contains(&identity(r))),
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
