//! Tenant partitions on the real broker (SPEC §10): one router and three
//! partition workers, each with its own ledger and HTTP port, against the
//! simulator with 30 tenants. The same events give the same links, the
//! same writes and the same audited outcomes as one process; a standby
//! worker takes a killed worker's partition over; a killed router loses
//! nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use palworker::amqp::{BrokerAdmin, Publisher};
use palworker::local::broker::BrokerUser;
use palworker::local::identities::{assignment, credential, employee, object, principals, tenant};
use palworker::local::process::{CliOutput, WorkerProcess, run_cli};
use palworker::local::{
    Harness, HarnessOptions, PartitionedHarness, Role, TempDir, events, sample, wait_until,
    writes_per_identity,
};
use palworker_core::{ActionState, AuditEntry, AuditWhat};
use palworker_events::TenantId;
use serde_json::Value;

use crate::worker_binary;

const TENANTS: usize = 30;
const EMPLOYEES: usize = 4;
const SETTLE: Duration = Duration::from_secs(120);
/// Quick retries and a generous rate, so the scenarios run in seconds.
const LIMITS: &str = "[limits]\nper_tenant_rps = 50\nconcurrency = 32\n";

fn options(name: &str) -> HarnessOptions {
    HarnessOptions {
        principals: principals(EMPLOYEES, TENANTS),
        // Under the CI's expiry policy for queues a failed test leaves.
        name: format!("palworker-test-{name}"),
        extra_toml: LIMITS.to_owned(),
        ..HarnessOptions::default()
    }
}

/// The scenario, in phases that each settle before the next: onboarding,
/// a departure with a successor and an assignment's end, a contract end,
/// a partner-id change for three tenants, then one for every tenant and a
/// transfer.
fn phases() -> Vec<Vec<Value>> {
    let mut onboarding = Vec::new();
    for e in 0..3 {
        for t in 0..TENANTS {
            onboarding.push(assignment(&format!("start-{e}-{t}"), e, t, "1111111"));
        }
    }
    for t in 0..10 {
        onboarding.push(assignment(&format!("start-3-{t}"), 3, t, "2222222"));
    }
    vec![
        onboarding,
        vec![
            events::employee_departed("departed-0", &employee(0), Some(&employee(1)), None),
            events::assignment_ended("ended-2-3", &employee(2), &tenant(3)),
        ],
        vec![events::contract_ended("contract-4", &tenant(4), None)],
        vec![events::partner_id_changed(
            "change-some",
            "1111111",
            "3333333",
            Some(&[tenant(7).as_str(), tenant(8).as_str(), tenant(20).as_str()]),
        )],
        vec![
            events::partner_id_changed("change-all", "2222222", "4444444", None),
            events::employee_transferred("transferred-2", &employee(2), "5555555"),
        ],
    ]
}

/// Every identity's link, by (employee, tenant).
type Links = BTreeMap<(usize, usize), Option<String>>;

fn links_of(harness: &Harness) -> Links {
    let mut links = BTreeMap::new();
    for e in 0..EMPLOYEES {
        for t in 0..TENANTS {
            links.insert((e, t), harness.linked(e, t));
        }
    }
    links
}

/// The audited action outcomes, without times, ids or hashes: (event,
/// tenant, object, op, desired partner, outcome), sorted.
fn outcomes(entries: &[AuditEntry]) -> Vec<String> {
    let mut outcomes: Vec<String> = entries
        .iter()
        .filter_map(|entry| match &entry.what {
            AuditWhat::ActionOutcome(record) => Some(format!(
                "{} {} {} {:?} {:?} {:?}",
                record.action.event_id,
                record.action.tenant_id,
                record.action.object_id,
                record.action.op,
                record.action.desired_partner_id,
                record.outcome
            )),
            _ => None,
        })
        .collect();
    outcomes.sort();
    outcomes
}

async fn single_process_run() -> (Links, BTreeMap<(String, String), usize>, Vec<String>) {
    let mut h = Harness::start(options("partition-single")).await.unwrap();
    for phase in phases() {
        for event in &phase {
            h.publish(event).await.unwrap();
        }
        h.wait_until_settled(SETTLE).await.unwrap();
    }
    let links = links_of(&h);
    let writes = writes_per_identity(&h.simulator.requests());
    let audit = outcomes(&h.app().ledger.audit_entries_from(0, usize::MAX).unwrap());
    h.shutdown().await.unwrap();
    (links, writes, audit)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_partitions_write_every_link_as_one_process_does_and_once() {
    let (single_links, single_writes, single_audit) = single_process_run().await;

    let mut p = PartitionedHarness::start(options("partition-three"), 3)
        .await
        .unwrap();
    for phase in phases() {
        for event in &phase {
            p.publish(event).await.unwrap();
        }
        p.wait_until_settled(SETTLE).await.unwrap();
    }
    let links = links_of(&p.harness);
    assert_eq!(links, single_links, "every link as in single-process mode");
    // Some links are gone, some changed, some stayed: the scenario did something.
    assert!(links.values().any(Option::is_none));
    assert!(links.values().any(|l| l.as_deref() == Some("3333333")));
    assert!(links.values().any(|l| l.as_deref() == Some("4444444")));

    let writes = writes_per_identity(&p.harness.simulator.requests());
    let total: usize = writes.values().sum();
    assert!(total > 120, "the scenario wrote {total} times");
    assert_eq!(
        writes, single_writes,
        "each identity written as often as by one process (no partition wrote another's tenant, none wrote twice)"
    );

    // Each partition's ledger holds only its own tenants, and together
    // they audited the same outcomes as the one process.
    let mut audit = Vec::new();
    for partition in p.count.all() {
        let app = p.worker(partition);
        let entries = app.ledger.audit_entries_from(0, usize::MAX).unwrap();
        assert!(!entries.is_empty(), "{partition} did work");
        for entry in &entries {
            if let AuditWhat::ActionOutcome(record) = &entry.what {
                assert_eq!(p.count.of(&record.action.tenant_id), partition);
            }
        }
        audit.extend(entries);
        // Spanning events reached every partition; a tenant's only its own.
        let departed = app.ledger.find_events("departed-0", None).unwrap();
        assert_eq!(departed.len(), 1, "a departure goes to every partition");
        let contract = app.ledger.find_events("contract-4", None).unwrap();
        let owner = p.count.of(&TenantId::parse(&tenant(4)).unwrap());
        assert_eq!(contract.len(), usize::from(owner == partition));
    }
    assert_eq!(outcomes(&audit), single_audit, "the same audited outcomes");
    // Each link change written exactly once: one PAL write per action that
    // ended `done`, identity by identity.
    let mut done: BTreeMap<(String, String), usize> = BTreeMap::new();
    for entry in &audit {
        if let AuditWhat::ActionOutcome(record) = &entry.what
            && record.outcome == ActionState::Done
        {
            *done
                .entry((
                    record.action.tenant_id.to_string(),
                    record.action.object_id.to_string(),
                ))
                .or_default() += 1;
        }
    }
    assert_eq!(writes, done, "one write per change, no more");

    // The router counted its copies per partition.
    let router = p.router.as_ref().unwrap().metrics.render();
    let routed: u64 = p
        .count
        .all()
        .map(|partition| {
            sample(
                &router,
                &format!("palworker_routed_total{{partition=\"{partition}\"}}"),
            )
            .unwrap_or(0.0) as u64
        })
        .sum();
    assert_eq!(routed, p.copies);
    p.shutdown().await.unwrap();
}

/// Onboarding of employees `0..3` in every tenant: one event per identity.
fn onboarding() -> Vec<Value> {
    let mut events = Vec::new();
    for e in 0..3 {
        for t in 0..TENANTS {
            events.push(assignment(&format!("start-{e}-{t}"), e, t, "1111111"));
        }
    }
    events
}

/// Every onboarded identity is linked, and was written exactly once.
fn assert_onboarded_once(harness: &Harness) {
    let writes = writes_per_identity(&harness.simulator.requests());
    for e in 0..3 {
        for t in 0..TENANTS {
            assert_eq!(
                harness.linked(e, t).as_deref(),
                Some("1111111"),
                "E-{e} in tenant {t}"
            );
            let identity = (tenant(t), palworker::local::identities::object(e, t));
            assert_eq!(
                writes.get(&identity),
                Some(&1),
                "E-{e} in tenant {t} written once"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_standby_worker_takes_over_a_killed_workers_partition() {
    let mut p = PartitionedHarness::prepare(options("partition-takeover"), 3)
        .await
        .unwrap();
    p.start_router().await.unwrap();
    let owned = p.count.index(0).unwrap();
    for partition in p.count.all().filter(|&partition| partition != owned) {
        p.start_worker(partition).await.unwrap();
    }
    // Partition 0's worker and its standby: two processes, one ledger
    // directory (the standby's volume is the same one, handed over).
    let dir = TempDir::new("palworker-takeover").unwrap();
    let config = dir.path().join("p0.toml");
    std::fs::write(&config, p.config_of(Role::Partition(owned)).unwrap()).unwrap();
    let env = p.harness.config_env.clone();
    let mut active = WorkerProcess::spawn(
        worker_binary(),
        &config,
        &env,
        &dir.path().join("active.log"),
    )
    .unwrap();
    wait_until(
        Duration::from_secs(60),
        "the first worker runs",
        || active.log().contains("palworker is running"),
        || active.log_tail(20),
    )
    .await
    .unwrap();
    let mut standby = WorkerProcess::spawn(
        worker_binary(),
        &config,
        &env,
        &dir.path().join("standby.log"),
    )
    .unwrap();
    wait_until(
        Duration::from_secs(60),
        "the second worker stands by",
        || standby.log().contains("standing by"),
        || standby.log_tail(20),
    )
    .await
    .unwrap();

    // Half the onboarding, then the active worker dies mid-stream.
    let all = onboarding();
    let owned_tenants: Vec<usize> = (0..TENANTS)
        .filter(|&t| p.count.of(&TenantId::parse(&tenant(t)).unwrap()) == owned)
        .collect();
    assert!(
        owned_tenants.len() >= 5,
        "partition 0 owns {owned_tenants:?}"
    );
    let (first, rest) = all.split_at(all.len() / 2);
    for event in first {
        p.publish(event).await.unwrap();
    }
    let some_owned_linked = || {
        owned_tenants
            .iter()
            .any(|&t| (0..3).any(|e| p.harness.linked(e, t).is_some()))
    };
    wait_until(
        Duration::from_secs(60),
        "partition 0 linked something",
        some_owned_linked,
        || active.log_tail(20),
    )
    .await
    .unwrap();
    active.kill_9().await.unwrap();
    for event in rest {
        p.publish(event).await.unwrap();
    }

    // The standby takes the ledger and the queue over and finishes.
    let all_linked = || {
        (0..3).all(|e| (0..TENANTS).all(|t| p.harness.linked(e, t).as_deref() == Some("1111111")))
    };
    wait_until(SETTLE, "every identity linked", all_linked, || {
        standby.log_tail(30)
    })
    .await
    .unwrap();
    assert!(
        standby.log().contains("taking over the partition"),
        "{}",
        standby.log_tail(30)
    );
    standby.terminate(Duration::from_secs(30)).await.unwrap();
    let admin = BrokerAdmin::connect(p.harness.settings.amqp.url.expose())
        .await
        .unwrap();
    assert_eq!(admin.message_count(&p.queue_of(owned)).await.unwrap(), 0);
    admin.close().await;
    // Nothing of partition 0 was lost: its ledger holds each of its events.
    let ledger = palworker::ledger::Ledger::open(&p.ledger_path(owned), 1 << 20).unwrap();
    for e in 0..3 {
        for &t in &owned_tenants {
            let id = format!("start-{e}-{t}");
            assert_eq!(ledger.find_events(&id, None).unwrap().len(), 1, "{id}");
        }
    }
    assert_eq!(ledger.pending_count(), 0);
    drop(ledger);
    p.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_router_loses_nothing_and_its_copies_are_deduplicated() {
    let mut p = PartitionedHarness::prepare(options("partition-router-kill"), 3)
        .await
        .unwrap();
    for partition in p.count.all() {
        p.start_worker(partition).await.unwrap();
    }
    // Partition 2's queue will not be reachable: the router holds every
    // event with a copy for it, unacknowledged, publishing that copy again
    // and again, while the other partitions' copies are confirmed.
    let stuck = p.count.index(2).unwrap();
    let admin = BrokerAdmin::connect(p.harness.settings.amqp.url.expose())
        .await
        .unwrap();
    let dir = TempDir::new("palworker-router-kill").unwrap();
    let config = dir.path().join("router.toml");
    std::fs::write(&config, p.config_of(Role::Router).unwrap()).unwrap();
    let env = p.harness.config_env.clone();
    let mut router = WorkerProcess::spawn_router(
        worker_binary(),
        &config,
        &env,
        &dir.path().join("router.log"),
    )
    .unwrap();
    // (After the router declared the topology, which binds every queue.)
    wait_until(
        Duration::from_secs(60),
        "the router consumes",
        || router.log().contains("consuming"),
        || router.log_tail(20),
    )
    .await
    .unwrap();
    let exchange = palworker::amqp::partitions_exchange(&p.harness.settings.amqp.exchange);
    admin
        .unbind_queue(&p.queue_of(stuck), &exchange, &stuck.routing_key())
        .await
        .unwrap();
    let onboarding = onboarding();
    for event in &onboarding {
        p.publish(event).await.unwrap();
    }
    // A departure of an employee with no accounts spans every partition.
    let spanning = events::employee_departed("departed-nobody", "E-none", None, None);
    p.publish(&spanning).await.unwrap();
    let stuck_copies = onboarding
        .iter()
        .chain([&spanning])
        .filter(|event| {
            let event =
                palworker_events::Event::from_json_slice(&serde_json::to_vec(event).unwrap())
                    .unwrap();
            p.count.of_event(&event).contains(&stuck)
        })
        .count() as u64;
    wait_until(
        Duration::from_secs(60),
        "partitions 0 and 1 took their copies",
        || p.deliveries_seen() >= p.copies - stuck_copies,
        || router.log_tail(20),
    )
    .await
    .unwrap();
    wait_until(
        Duration::from_secs(60),
        "the router says a partition did not take its copy",
        || router.log().contains("did not take its copy"),
        || router.log_tail(20),
    )
    .await
    .unwrap();
    router.kill_9().await.unwrap();
    // Nothing was acknowledged that a partition did not get: every event
    // with a copy for partition 2 returns to the events queue (once the
    // broker has noticed the dead connection).
    let queue = p.harness.settings.amqp.queue.clone();
    palworker::local::wait_until_async(
        Duration::from_secs(60),
        "the unacknowledged events back in the events queue",
        async || Ok(u64::from(admin.message_count(&queue).await?) >= stuck_copies),
    )
    .await
    .unwrap();

    // The queue is bound again, another router (in-process) takes over.
    admin.declare(&p.router_topology()).await.unwrap();
    admin.close().await;
    p.start_router().await.unwrap();
    p.wait_until_settled(SETTLE).await.unwrap();
    assert_onboarded_once(&p.harness);
    for partition in p.count.all() {
        let worker = p.worker(partition);
        for e in 0..3 {
            for t in 0..TENANTS {
                let id = format!("start-{e}-{t}");
                let owner = p.count.of(&TenantId::parse(&tenant(t)).unwrap());
                assert_eq!(
                    worker.ledger.find_events(&id, None).unwrap().len(),
                    usize::from(owner == partition),
                    "{id} in {partition}"
                );
            }
        }
        assert_eq!(
            worker
                .ledger
                .find_events("departed-nobody", None)
                .unwrap()
                .len(),
            1
        );
        // Partitions 0 and 1 got the spanning event's copy twice (once from
        // each router) and kept one.
        let duplicates = worker
            .metrics
            .deliveries(palworker_core::EventOutcome::Duplicate);
        if partition == stuck {
            assert_eq!(duplicates, 0);
        } else {
            assert!(duplicates >= 1, "{partition} saw the copy again");
        }
    }
    p.shutdown().await.unwrap();
}

/// Runs the CLI with `config` and the harness's environment.
async fn cli(p: &PartitionedHarness, config: &std::path::Path, args: &[&str]) -> CliOutput {
    let mut full = vec!["--config", config.to_str().unwrap()];
    full.extend_from_slice(args);
    run_cli(worker_binary(), &full, &p.harness.config_env)
        .await
        .unwrap()
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn operator_commands_gather_from_every_partition_or_go_to_one() {
    let mut p = PartitionedHarness::start(
        HarnessOptions {
            extra_toml: format!("{LIMITS}max_actions_per_event = 4\n"),
            ..options("partition-operators")
        },
        3,
    )
    .await
    .unwrap();
    let dir = TempDir::new("palworker-partition-cli").unwrap();
    let urls: Vec<String> = p
        .count
        .all()
        .map(|partition| format!("\"http://{}\"", p.worker(partition).http_addr))
        .collect();
    let config = dir.path().join("operator.toml");
    std::fs::write(
        &config,
        palworker_config::Settings::layer_toml(
            &p.config_of(Role::Router).unwrap(),
            &format!("[partitions]\nadmin_urls = [{}]\n", urls.join(", ")),
        )
        .unwrap(),
    )
    .unwrap();
    let owned_by = |t: usize| p.count.of(&TenantId::parse(&tenant(t)).unwrap());
    let one = p.count.index(1).unwrap();
    let in_one = (0..TENANTS).filter(|&t| owned_by(t) == one).count();

    // inventory import: each row to its tenant's partition.
    let rows: Vec<String> = (0..TENANTS)
        .map(|t| {
            serde_json::json!({"tenant_id": tenant(t), "object_id": object(3, t),
                "employee_id": employee(3), "credential": credential(3)})
            .to_string()
        })
        .collect();
    let file = dir.path().join("accounts.jsonl");
    std::fs::write(&file, rows.join("\n")).unwrap();
    let imported = cli(
        &p,
        &config,
        &["inventory", "import", file.to_str().unwrap()],
    )
    .await;
    assert_eq!(imported.code, 0, "{}", imported.stderr);
    assert!(
        imported
            .stdout
            .contains(&format!("imported {TENANTS} account(s)"))
    );
    for partition in p.count.all() {
        let entries = p
            .worker(partition)
            .ledger
            .inventory_list(None, None)
            .unwrap();
        assert!(!entries.is_empty());
        assert!(
            entries
                .iter()
                .all(|entry| p.count.of(&entry.account.tenant_id) == partition)
        );
    }
    // One partition alone refuses another partition's rows.
    let refused = cli(
        &p,
        &config,
        &[
            "--partition",
            "1",
            "inventory",
            "import",
            file.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("belongs to partition"),
        "{}",
        refused.stderr
    );

    let listed = cli(&p, &config, &["inventory", "list", "--json"]).await;
    assert_eq!(
        json_lines(&listed.stdout).len(),
        TENANTS,
        "{}",
        listed.stderr
    );
    let listed = cli(
        &p,
        &config,
        &["--partition", "1", "inventory", "list", "--json"],
    )
    .await;
    assert_eq!(json_lines(&listed.stdout).len(), in_one);

    // A departure too large for any partition: held in each, approved at once.
    for t in 0..TENANTS {
        p.publish(&assignment(&format!("start-0-{t}"), 0, t, "1111111"))
            .await
            .unwrap();
    }
    p.wait_until_settled(SETTLE).await.unwrap();
    p.publish(&events::employee_departed(
        "departed-0",
        &employee(0),
        None,
        None,
    ))
    .await
    .unwrap();
    p.wait_until_settled(SETTLE).await.unwrap();
    let held = cli(&p, &config, &["status", "--event", "departed-0", "--json"]).await;
    let rows = json_lines(&held.stdout);
    assert_eq!(rows.len(), TENANTS, "{}", held.stderr);
    assert!(rows.iter().all(|row| row["state"] == "held"));
    let approved = cli(&p, &config, &["approve", "departed-0"]).await;
    assert_eq!(approved.code, 0, "{}", approved.stderr);
    p.wait_until_settled(SETTLE).await.unwrap();
    assert!((0..TENANTS).all(|t| p.harness.linked(0, t).is_none()));
    let unknown = cli(&p, &config, &["approve", "no-such-event"]).await;
    assert_eq!(unknown.code, 1, "{}", unknown.stderr);
    assert!(
        unknown.stderr.contains("no accepted event has id"),
        "{}",
        unknown.stderr
    );

    // The audit trails, one chain per partition, and time to revocation.
    let audit = cli(&p, &config, &["audit", "export"]).await;
    let expected: usize = p
        .count
        .all()
        .map(|partition| {
            p.worker(partition)
                .ledger
                .audit_entries_from(0, usize::MAX)
                .unwrap()
                .len()
        })
        .sum();
    assert_eq!(
        json_lines(&audit.stdout).len(),
        expected,
        "{}",
        audit.stderr
    );
    let verified = cli(&p, &config, &["audit", "verify"]).await;
    assert_eq!(verified.code, 0, "{}", verified.stderr);
    let report = cli(&p, &config, &["report", "revocations", "--format", "json"]).await;
    let revocations = json_lines(&report.stdout);
    assert_eq!(
        revocations.len(),
        3,
        "one row per partition: {}",
        report.stdout
    );
    assert!(
        revocations
            .iter()
            .all(|row| row["event_id"] == "departed-0")
    );

    // reconcile reads every partition's accounts and adds their reports up.
    let accounts: u64 = p
        .count
        .all()
        .map(|partition| p.worker(partition).ledger.inventory_size().unwrap())
        .sum();
    let reconcile = cli(&p, &config, &["reconcile", "--json"]).await;
    assert_eq!(reconcile.code, 0, "{}", reconcile.stderr);
    let last = json_lines(&reconcile.stdout).pop().unwrap();
    assert_eq!(
        last["accounts"],
        serde_json::json!(accounts),
        "{}",
        reconcile.stdout
    );
    assert_eq!(last["missing"], serde_json::json!(0));

    // pause and resume reach every partition.
    let paused = cli(&p, &config, &["pause"]).await;
    assert_eq!(paused.code, 0, "{}", paused.stderr);
    assert!(
        p.count
            .all()
            .all(|partition| p.worker(partition).executor.is_paused())
    );
    let resumed = cli(&p, &config, &["resume"]).await;
    assert_eq!(resumed.code, 0, "{}", resumed.stderr);
    assert!(
        p.count
            .all()
            .all(|partition| !p.worker(partition).executor.is_paused())
    );

    // A ledger export is one partition's.
    let whole = cli(&p, &config, &["ledger", "export", "-"]).await;
    assert_ne!(whole.code, 0);
    assert!(whole.stderr.contains("--partition"), "{}", whole.stderr);
    let one_export = cli(&p, &config, &["--partition", "1", "ledger", "export", "-"]).await;
    assert_eq!(one_export.code, 0, "{}", one_export.stderr);
    assert!(one_export.stdout.contains("palworker_ledger_end"));
    p.shutdown().await.unwrap();
}

/// A configuration file for the CLI: the harness's, with its ledger at `ledger`.
fn config_with_ledger(
    h: &Harness,
    dir: &std::path::Path,
    name: &str,
    ledger: &std::path::Path,
) -> std::path::PathBuf {
    let path = dir.join(format!("{name}.toml"));
    let text = palworker_config::Settings::layer_toml(
        &h.config_toml,
        &format!("[ledger]\npath = \"{}\"\n", ledger.display()),
    )
    .unwrap();
    std::fs::write(&path, text).unwrap();
    path
}

async fn run(h: &Harness, config: &std::path::Path, args: &[&str]) -> CliOutput {
    let mut full = vec!["--config", config.to_str().unwrap()];
    full.extend_from_slice(args);
    let output = run_cli(worker_binary(), &full, &h.config_env)
        .await
        .unwrap();
    assert_eq!(output.code, 0, "{args:?}: {}", output.stderr);
    output
}

fn sorted_lines(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines.sort();
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn repartitioning_one_to_three_to_one_keeps_every_account_and_marker() {
    let mut h = Harness::start(options("partition-repartition"))
        .await
        .unwrap();
    for e in 0..2 {
        for t in 0..TENANTS {
            h.publish(&assignment(&format!("start-{e}-{t}"), e, t, "1111111"))
                .await
                .unwrap();
        }
    }
    h.wait_until_settled(SETTLE).await.unwrap();
    // Quiescent: the results owed to the publishers are published too.
    h.wait_for(SETTLE, "every result published", |h| {
        h.app().ledger.pending_result_count() == 0
    })
    .await
    .unwrap();
    h.stop_worker().await.unwrap();
    let dir = TempDir::new("palworker-repartition").unwrap();
    let d = dir.path();
    let original = config_with_ledger(&h, d, "original", &h.settings.ledger.path);
    let inventory = sorted_lines(
        &run(&h, &original, &["inventory", "list", "--json"])
            .await
            .stdout,
    );
    assert_eq!(inventory.len(), 2 * TENANTS);
    let one = d.join("one.jsonl");
    run(&h, &original, &["ledger", "export", one.to_str().unwrap()]).await;

    // 1 → 3.
    let three = d.join("three");
    let split = run(
        &h,
        &original,
        &[
            "ledger",
            "repartition",
            "--count",
            "3",
            "--out",
            three.to_str().unwrap(),
            one.to_str().unwrap(),
        ],
    )
    .await;
    assert!(
        split.stdout.contains("partition-2.jsonl"),
        "{}",
        split.stdout
    );
    let count = palworker_events::PartitionCount::new(3).unwrap();
    let mut gathered = Vec::new();
    let mut exports = Vec::new();
    for partition in count.all() {
        let i = partition.get();
        let config = config_with_ledger(
            &h,
            d,
            &format!("p{i}"),
            &d.join(format!("p{i}")).join("ledger"),
        );
        let file = three.join(format!("partition-{i}.jsonl"));
        run(&h, &config, &["ledger", "import", file.to_str().unwrap()]).await;
        run(&h, &config, &["ledger", "check"]).await;
        let listed = run(&h, &config, &["inventory", "list", "--json"])
            .await
            .stdout;
        for row in json_lines(&listed) {
            let tenant = TenantId::parse(row["account"]["tenant_id"].as_str().unwrap()).unwrap();
            assert_eq!(count.of(&tenant), partition, "{row}");
        }
        gathered.extend(sorted_lines(&listed));
        let export = d.join(format!("p{i}.jsonl"));
        run(&h, &config, &["ledger", "export", export.to_str().unwrap()]).await;
        exports.push(export);
    }
    gathered.sort();
    assert_eq!(gathered, inventory, "1 → 3: the same inventory list");

    // 3 → 1.
    let merged = d.join("merged");
    let mut args = vec![
        "ledger",
        "repartition",
        "--count",
        "1",
        "--out",
        merged.to_str().unwrap(),
    ];
    args.extend(exports.iter().map(|e| e.to_str().unwrap()));
    run(&h, &original, &args).await;
    let back_ledger = d.join("back").join("ledger");
    let back = config_with_ledger(&h, d, "back", &back_ledger);
    let file = merged.join("partition-0.jsonl");
    run(&h, &back, &["ledger", "import", file.to_str().unwrap()]).await;
    run(&h, &back, &["ledger", "check"]).await;
    let listed = run(&h, &back, &["inventory", "list", "--json"])
        .await
        .stdout;
    assert_eq!(
        sorted_lines(&listed),
        inventory,
        "1 → 3 → 1: the same inventory list"
    );
    // An event delivered again after the moves is still a duplicate.
    let ledger = palworker::ledger::Ledger::open(&back_ledger, 1 << 20).unwrap();
    assert!(
        ledger
            .is_duplicate("urn:palworker:harness", "start-1-7")
            .unwrap()
    );
    drop(ledger);
    h.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn repartitioning_refuses_a_ledger_with_open_work() {
    let mut h = Harness::start(HarnessOptions {
        extra_toml: format!("{LIMITS}max_actions_per_event = 4\n"),
        ..options("partition-repartition-open")
    })
    .await
    .unwrap();
    for t in 0..TENANTS {
        h.publish(&assignment(&format!("start-0-{t}"), 0, t, "1111111"))
            .await
            .unwrap();
    }
    h.wait_until_settled(SETTLE).await.unwrap();
    h.publish(&events::employee_departed(
        "departed-0",
        &employee(0),
        None,
        None,
    ))
    .await
    .unwrap();
    h.wait_until_settled(SETTLE).await.unwrap();
    h.stop_worker().await.unwrap();
    let dir = TempDir::new("palworker-repartition-open").unwrap();
    let config = config_with_ledger(&h, dir.path(), "held", &h.settings.ledger.path);
    let export = dir.path().join("held.jsonl");
    run(&h, &config, &["ledger", "export", export.to_str().unwrap()]).await;
    let out = dir.path().join("out");
    let mut full = vec!["--config", config.to_str().unwrap()];
    full.extend([
        "ledger",
        "repartition",
        "--count",
        "2",
        "--out",
        out.to_str().unwrap(),
        export.to_str().unwrap(),
    ]);
    let refused = run_cli(worker_binary(), &full, &h.config_env)
        .await
        .unwrap();
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(
        refused
            .stderr
            .contains("open work (a plan held for approval"),
        "{}",
        refused.stderr
    );
    assert!(
        !out.join("partition-0.jsonl").exists() && !out.join("partition-0.jsonl.partial").exists()
    );
    h.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_allow_list_holds_through_the_router_and_a_forged_header_is_not_believed() {
    let suffix = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let router_user = BrokerUser::create(format!("router-{suffix}"), "router-pw".into())
        .await
        .unwrap();
    let allowed = BrokerUser::create(format!("projects-{suffix}"), "allowed-pw".into())
        .await
        .unwrap();
    let intruder = BrokerUser::create(format!("intruder-{suffix}"), "intruder-pw".into())
        .await
        .unwrap();
    let mut p = PartitionedHarness::prepare(
        HarnessOptions {
            extra_toml: format!(
                "{LIMITS}[security.publishers]\n\"{}\" = [\"project.\"]\n[partitions]\nrouter_user = \"{}\"\n",
                allowed.name(),
                router_user.name()
            ),
            ..options("partition-allow-list")
        },
        3,
    )
    .await
    .unwrap();
    for partition in p.count.all() {
        p.start_worker(partition).await.unwrap();
    }
    p.start_router_with(&format!("[amqp]\nurl = \"{}\"\n", router_user.amqp_url()))
        .await
        .unwrap();
    let exchange = p.harness.settings.amqp.exchange.clone();
    let event = |t: usize| assignment(&format!("start-0-{t}"), 0, t, "1111111");

    // The allowed publisher's event reaches its partition, which records
    // the original publisher, not the router.
    let publisher = Publisher::connect(&allowed.amqp_url(), &exchange)
        .await
        .unwrap();
    publisher
        .publish_event(&event(0), Some(allowed.name()))
        .await
        .unwrap();
    publisher.close().await;
    // The intruder's is dead-lettered by the router.
    let publisher = Publisher::connect(&intruder.amqp_url(), &exchange)
        .await
        .unwrap();
    publisher
        .publish_event(&event(1), Some(intruder.name()))
        .await
        .unwrap();
    publisher.close().await;
    // The intruder publishing straight to a partition with the header the
    // router sets: the partition judges the intruder, not the header.
    let owner = p.count.of(&TenantId::parse(&tenant(2)).unwrap());
    let publisher = Publisher::connect(
        &intruder.amqp_url(),
        &palworker::amqp::partitions_exchange(&exchange),
    )
    .await
    .unwrap();
    publisher
        .publish_with_headers(
            &owner.routing_key(),
            &serde_json::to_vec(&event(2)).unwrap(),
            "application/cloudevents+json",
            Some(intruder.name()),
            &[(palworker::amqp::PUBLISHER_HEADER, allowed.name())],
        )
        .await
        .unwrap();
    publisher.close().await;
    p.copies += 2; // the allowed event's copy and the forged one
    p.wait_until_settled(SETTLE).await.unwrap();

    assert_eq!(p.harness.linked(0, 0).as_deref(), Some("1111111"));
    assert_eq!(p.harness.linked(0, 1), None);
    assert_eq!(p.harness.linked(0, 2), None);
    let stored = p
        .worker(p.count.of(&TenantId::parse(&tenant(0)).unwrap()))
        .ledger
        .resolve_event("start-0-0", None)
        .unwrap();
    assert_eq!(stored.publisher.as_deref(), Some(allowed.name()));
    let dead = p.harness.dead_letters().await.unwrap();
    assert_eq!(dead.len(), 2, "{dead:?}");
    for message in &dead {
        let reason = message.reason.as_deref().unwrap();
        assert!(reason.starts_with("publisher_not_allowed"), "{reason}");
        assert!(
            reason.contains(intruder.name()),
            "judged as the intruder: {reason}"
        );
    }
    let router = p.router.as_ref().unwrap().metrics.render();
    assert!(router.contains(r#"palworker_dead_letters_total{reason="publisher_not_allowed"} 1"#));
    p.shutdown().await.unwrap();
}
