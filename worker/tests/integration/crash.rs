//! `kill -9` of the worker process while hundreds of actions are in flight,
//! then a restart: every link converges, no event is lost, and no link gets
//! more than one extra write beyond the one in flight at the kill.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use palworker::amqp::Publisher;
use palworker::clock::SystemClock;
use palworker::ledger::Ledger;
use palworker::local::identities::{assignment, object, principals, tenant};
use palworker::local::{Harness, HarnessOptions, wait_until, writes_per_identity};
use palworker_core::{ActionState, StatusFilter};
use palworker_sim::{FaultProfile, Faults};

use crate::worker_binary;

const TENANTS: usize = 6;
/// Employees whose assignments are published before the kill.
const BEFORE: usize = 50;
/// Employees whose assignments are published while the worker is killed.
const LATE: usize = 10;
/// Employees whose assignments are published while the worker is dead.
const WHILE_DEAD: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_and_a_restart_every_link_converges_without_lost_events_or_repeated_writes() {
    // Each tenant answers with its own latency (150 ms … 900 ms), so writes
    // complete in waves and the kill lands while most are in flight.
    let mut faults = Faults::none();
    for t in 0..TENANTS {
        faults.per_tenant.insert(
            tenant(t),
            FaultProfile {
                latency_ms: 150 * (t as u64 + 1),
                ..FaultProfile::default()
            },
        );
    }
    let mut h = Harness::prepare(
        HarnessOptions {
            principals: principals(BEFORE + LATE + WHILE_DEAD, TENANTS),
            faults,
            extra_toml: r#"
[retry]
initial_interval = "50ms"

[limits]
concurrency = 512
per_tenant_rps = 1000.0
"#
            .into(),
            name: "palworker-crash".into(),
            ..HarnessOptions::default()
        },
        Arc::new(SystemClock),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();

    let mut ids = Vec::new();
    for e in 0..BEFORE {
        for t in 0..TENANTS {
            let id = format!("start-{e}-{t}");
            h.publish(&assignment(&id, e, t, "111111")).await.unwrap();
            ids.push(id);
        }
    }
    let mut first = h
        .spawn_worker_process(worker_binary(), dir.path(), "first-run")
        .unwrap();
    let all = BEFORE * TENANTS;
    wait_until(
        Duration::from_secs(60),
        "the fastest tenants' writes are answered",
        || h.answered_writes() >= 2 * BEFORE,
        || format!("{} writes answered", h.answered_writes()),
    )
    .await
    .unwrap();

    // More events stream in while the worker dies: some are consumed and
    // acknowledged before the kill, some are in the worker's hands unacknowledged,
    // the rest wait in the queue. None may be lost.
    let mut late = Vec::new();
    for e in BEFORE..BEFORE + LATE {
        for t in 0..TENANTS {
            let id = format!("start-{e}-{t}");
            late.push(assignment(&id, e, t, "222222"));
            ids.push(id);
        }
    }
    let streamed = Arc::new(AtomicUsize::new(0));
    let stream = {
        let streamed = streamed.clone();
        let url = h.settings.amqp.url.expose().to_owned();
        let exchange = h.topology.exchange.clone();
        tokio::spawn(async move {
            let publisher = Publisher::connect(&url, &exchange).await.unwrap();
            for event in late {
                publisher.publish_event(&event, None).await.unwrap();
                streamed.fetch_add(1, Ordering::SeqCst);
            }
            publisher.close().await;
        })
    };
    wait_until(
        Duration::from_secs(60),
        "the stream has begun",
        || streamed.load(Ordering::SeqCst) >= LATE * TENANTS / 3,
        || format!("{} late events published", streamed.load(Ordering::SeqCst)),
    )
    .await
    .unwrap();
    first.kill_9().await.unwrap();
    let at_kill = h.answered_writes();
    let streamed_at_kill = streamed.load(Ordering::SeqCst);
    eprintln!(
        "crash: killed with {at_kill} of {all} writes answered, {streamed_at_kill} of {} late events published",
        LATE * TENANTS
    );
    assert!(
        at_kill < all,
        "the kill must land while writes are still in flight ({at_kill} of {all} answered)"
    );
    stream.await.unwrap();

    // Events published while no worker runs are not lost either.
    for e in BEFORE + LATE..BEFORE + LATE + WHILE_DEAD {
        for t in 0..TENANTS {
            let id = format!("start-{e}-{t}");
            h.publish(&assignment(&id, e, t, "222222")).await.unwrap();
            ids.push(id);
        }
    }
    let mut second = h
        .spawn_worker_process(worker_binary(), dir.path(), "second-run")
        .unwrap();
    let expected = |e: usize| if e < BEFORE { "111111" } else { "222222" };
    wait_until(
        Duration::from_secs(120),
        "every link converges",
        || {
            (0..BEFORE + LATE + WHILE_DEAD)
                .all(|e| (0..TENANTS).all(|t| h.linked(e, t).is_some_and(|p| p == expected(e))))
        },
        || format!("{} writes answered", h.answered_writes()),
    )
    .await
    .unwrap();
    let status = second.terminate(Duration::from_secs(60)).await.unwrap();
    assert!(status.success(), "graceful stop: {status:?}");

    let requests = h.simulator.requests();
    let writes = writes_per_identity(&requests);
    let mut histogram: BTreeMap<usize, usize> = BTreeMap::new();
    for e in 0..BEFORE + LATE + WHILE_DEAD {
        for t in 0..TENANTS {
            let count = writes.get(&(tenant(t), object(e, t))).copied().unwrap_or(0);
            *histogram.entry(count).or_default() += 1;
            if e < BEFORE + LATE {
                assert!(
                    (1..=2).contains(&count),
                    "E-{e} in T{t}: {count} writes (at most the one in flight at the kill and one more)"
                );
            } else {
                assert_eq!(count, 1, "E-{e} in T{t} was published after the kill");
            }
        }
    }

    let ledger = Ledger::open(
        &h.settings.ledger.path,
        h.settings.ledger.cache_capacity_bytes,
    )
    .unwrap();
    for id in &ids {
        let found = ledger.find_events(id, None).unwrap();
        assert_eq!(found.len(), 1, "event {id} accepted exactly once");
    }
    let actions = ledger.actions(&StatusFilter::default()).unwrap();
    assert_eq!(actions.len(), ids.len(), "one action per event");
    let mut by_state: BTreeMap<&str, usize> = BTreeMap::new();
    for action in &actions {
        *by_state.entry(action.state.as_str()).or_default() += 1;
        assert!(
            matches!(action.state, ActionState::Done | ActionState::Noop),
            "{action:#?}"
        );
    }
    assert_eq!(ledger.pending_count(), 0);
    eprintln!(
        "crash: {} events, actions {by_state:?}, links by write count {histogram:?}, {} ARM requests",
        ids.len(),
        requests.len()
    );
    drop(ledger);
    h.shutdown().await.unwrap();
}
