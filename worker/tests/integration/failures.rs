//! Failures never spin and never lose (SPEC §11.1): a full disk under the
//! ledger, a frame the AMQP client cannot parse, operators racing each other.
//! Real RabbitMQ, a real sled ledger (on a real tmpfs where the disk must
//! fill), the simulator over HTTP.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use palworker::local::identities::{assignment, employee, principals, tenant};
use palworker::local::raw_amqp::{self, RawMessage};
use palworker::local::sample;
use palworker::local::{Harness, HarnessOptions, TempDir, events, wait_until, wait_until_async};
use palworker_core::{ActionState, StatusFilter};
use palworker_sim::{FaultProfile, Faults};

const SETTLE: Duration = Duration::from_secs(120);

/// A tmpfs of `size` mounted on a fresh directory, unmounted when dropped.
struct Tmpfs {
    _dir: TempDir,
    path: PathBuf,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = TempDir::new("palworker-tmpfs").expect("temp dir");
        let path = dir.path().to_owned();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .expect("mount runs");
        assert!(status.success(), "mount -t tmpfs failed (run as root)");
        Tmpfs { _dir: dir, path }
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Fills the file system of `path` with a file, until no byte is left.
fn fill(path: &Path) {
    use std::io::Write;
    let mut file = std::fs::File::create(path).expect("filler file");
    let block = vec![0u8; 64 * 1024];
    while file.write_all(&block).is_ok() {}
    let _ = file.write_all(&[0u8; 1]);
    let _ = file.sync_all();
}

fn metric(h: &Harness, series: &str) -> Option<f64> {
    sample(&h.metrics_text(), series)
}

/// Waits until `palworker_events_in_flight` reads 0: the gauge follows the
/// ledger's transactions a moment later, so right after the ledger settled
/// it may still show the last events; a count that went wrong (below zero,
/// or an event never completed) never reads 0 and fails here.
async fn no_event_in_flight(h: &Harness) {
    let settled = h
        .wait_for(SETTLE, "palworker_events_in_flight back to 0", |h| {
            metric(h, "palworker_events_in_flight") == Some(0.0)
        })
        .await;
    assert!(
        settled.is_ok(),
        "palworker_events_in_flight = {:?}",
        metric(h, "palworker_events_in_flight")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_intake_and_claims_until_space_returns_then_every_event_is_processed() {
    let disk = Tmpfs::mount("64m");
    let (employees, tenants) = (30, 10);
    let mut h = Harness::start(HarnessOptions {
        principals: principals(employees, tenants),
        ledger_path: Some(disk.path().join("ledger")),
        extra_toml: "[retry]\ninitial_interval = \"100ms\"\n[limits]\nper_tenant_rps = 500.0\n"
            .into(),
        ..HarnessOptions::default()
    })
    .await
    .unwrap();
    h.publish(&assignment("before", 0, 0, "111111"))
        .await
        .unwrap();
    h.wait_until_settled(SETTLE).await.unwrap();
    assert_eq!(metric(&h, "palworker_ledger_available"), Some(1.0));

    let filler = disk.path().join("filler");
    fill(&filler);
    for e in 0..employees {
        for t in 0..tenants {
            h.publish(&assignment(&format!("start-{e}-{t}"), e, t, "111111"))
                .await
                .unwrap();
        }
    }
    h.publish(&events::employee_departed(
        "departure",
        &employee(0),
        Some(&employee(1)),
        None,
    ))
    .await
    .unwrap();

    // The worker notices, says so, and stops taking deliveries.
    wait_until(
        SETTLE,
        "palworker_ledger_available 0",
        || metric(&h, "palworker_ledger_available") == Some(0.0),
        || {
            h.metrics_text()
                .lines()
                .filter(|l| l.starts_with("palworker_ledger"))
                .collect()
        },
    )
    .await
    .unwrap();
    let readiness = reqwest::get(format!("http://{}/readyz", h.app().http_addr))
        .await
        .unwrap();
    assert_eq!(readiness.status().as_u16(), 503);
    assert!(
        readiness
            .text()
            .await
            .unwrap()
            .contains("ledger unavailable"),
        "/readyz names the ledger"
    );
    assert!(metric(&h, "palworker_ledger_errors_total").unwrap_or(0.0) >= 1.0);
    assert_eq!(
        reqwest::get(format!("http://{}/healthz", h.app().http_addr))
            .await
            .unwrap()
            .status()
            .as_u16(),
        200,
        "the worker stays up"
    );

    // Space returns: the worker resumes by itself and processes everything.
    std::fs::remove_file(&filler).unwrap();
    h.wait_until_settled(SETTLE).await.unwrap();
    assert_eq!(metric(&h, "palworker_ledger_available"), Some(1.0));
    h.wait_for_readiness(SETTLE, 200, 1).await.unwrap();
    assert!(
        h.dead_letters().await.unwrap().is_empty(),
        "nothing dead-lettered"
    );
    for t in 0..tenants {
        assert_eq!(
            h.linked(0, t),
            None,
            "the departed employee's link in tenant {t}"
        );
        for e in 1..employees {
            assert_eq!(
                h.linked(e, t).as_deref(),
                Some("111111"),
                "E-{e} in tenant {t}"
            );
        }
    }
    let departure = h.actions_of("departure");
    assert!(
        departure
            .iter()
            .all(|a| a.state.is_terminal() && a.state != ActionState::Failed),
        "{departure:?}"
    );
    h.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_the_client_cannot_parse_is_set_aside_and_the_event_behind_it_is_processed() {
    let mut h = Harness::start(HarnessOptions {
        principals: principals(1, 1),
        extra_toml:
            "[amqp]\ndelivery_limit = 3\nreconnect_initial = \"100ms\"\nreconnect_max = \"1s\"\n"
                .into(),
        ..HarnessOptions::default()
    })
    .await
    .unwrap();
    let url = h.settings.amqp.url.expose().to_owned();
    let exchange = h.topology.exchange.clone();
    tokio::task::spawn_blocking(move || {
        raw_amqp::publish(
            &url,
            &RawMessage {
                exchange: &exchange,
                routing_key: "hr.employee.departed",
                content_type: b"application/\xff\xfecloudevents+json",
                body: b"{}",
            },
        )
    })
    .await
    .unwrap()
    .expect("the broker takes the message");
    h.publish(&assignment("behind-the-poison", 0, 0, "222222"))
        .await
        .unwrap();

    h.wait_until_settled(SETTLE).await.unwrap();
    assert_eq!(h.linked(0, 0).as_deref(), Some("222222"));
    let url = h.settings.amqp.url.expose().to_owned();
    let dead = h.topology.dead_letter_queue.clone();
    // Counted, not fetched: fetching it would make this client fail as well.
    wait_until_async(
        SETTLE,
        "the broker sets the unparsable message aside after its delivery limit",
        async || {
            let admin = palworker::amqp::BrokerAdmin::connect(&url).await?;
            let depth = admin.message_count(&dead).await;
            admin.close().await;
            Ok(depth? == 1)
        },
    )
    .await
    .unwrap();
    // The broker set it aside, not the worker: the worker never received it.
    let metrics = h.metrics_text();
    let dead_lettered_by_the_worker: f64 = metrics
        .lines()
        .filter(|line| line.starts_with("palworker_dead_letters_total{"))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert_eq!(dead_lettered_by_the_worker, 0.0, "{metrics}");
    h.wait_for_readiness(SETTLE, 200, 1).await.unwrap();
    h.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_retries_through_the_admin_api_requeue_each_failed_action_once() {
    let accounts = 30;
    let mut h = Harness::start(HarnessOptions {
        principals: principals(accounts, 1),
        extra_toml: "[retry]\ninitial_interval = \"10ms\"\nmax_elapsed = \"50ms\"\n[limits]\nper_tenant_rps = 1000.0\n"
            .into(),
        ..HarnessOptions::default()
    })
    .await
    .unwrap();
    for e in 0..accounts {
        h.publish(&assignment(&format!("start-{e}"), e, 0, "333333"))
            .await
            .unwrap();
    }
    h.wait_until_settled(SETTLE).await.unwrap();
    let mut faults = Faults::default();
    faults.per_tenant.insert(
        tenant(0),
        FaultProfile {
            rate_5xx: 1.0,
            ..FaultProfile::default()
        },
    );
    h.simulator.set_faults(faults);
    for e in 0..accounts {
        h.publish(&events::assignment_ended(
            &format!("end-{e}"),
            &employee(e),
            &tenant(0),
        ))
        .await
        .unwrap();
    }
    h.wait_until_settled(SETTLE).await.unwrap();
    let failed = h
        .app()
        .ledger
        .actions(&StatusFilter {
            failed: true,
            ..StatusFilter::default()
        })
        .unwrap();
    assert_eq!(failed.len(), accounts, "every removal failed");
    no_event_in_flight(&h).await;

    h.simulator.set_faults(Faults::default());
    let client = palworker::operators::AdminApiClient::new(
        h.app().http_addr,
        Some(palworker::local::ADMIN_TOKEN.to_owned().into()),
        palworker::operators::Reached::LedgerInUse,
    )
    .unwrap();
    let client = std::sync::Arc::new(client);
    let mut retries = tokio::task::JoinSet::new();
    for _ in 0..3 {
        let client = client.clone();
        retries.spawn(async move {
            palworker::operators::Operations::retry(
                client.as_ref(),
                palworker::operators::RetryTarget::AllFailed,
            )
            .await
            .map(|ids| ids.len())
            .map_err(|e| e.to_string())
        });
    }
    let mut queued = 0;
    while let Some(result) = retries.join_next().await {
        queued += result.unwrap().unwrap();
    }
    assert_eq!(queued, accounts, "each failed action was queued again once");
    h.wait_until_settled(SETTLE).await.unwrap();
    no_event_in_flight(&h).await;
    assert_eq!(metric(&h, "palworker_actions_pending"), Some(0.0));
    let deletes = h
        .simulator
        .requests()
        .iter()
        .filter(|r| r.method == "DELETE" && r.status == 200)
        .count();
    assert_eq!(deletes, accounts, "every link was removed exactly once");
    for e in 0..accounts {
        assert_eq!(h.linked(e, 0), None);
    }
    h.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_approvals_and_a_rejection_release_a_held_plan_once() {
    let accounts = 12;
    let mut h = Harness::start(HarnessOptions {
        principals: principals(accounts, 1),
        extra_toml: "[limits]\nper_tenant_rps = 1000.0\nmax_actions_per_event = 5\n".into(),
        ..HarnessOptions::default()
    })
    .await
    .unwrap();
    for e in 0..accounts {
        h.publish(&assignment(&format!("start-{e}"), e, 0, "333333"))
            .await
            .unwrap();
    }
    h.wait_until_settled(SETTLE).await.unwrap();
    // A partner-id change of every account: above the limit, held.
    h.publish(&events::partner_id_changed(
        "change", "333333", "444444", None,
    ))
    .await
    .unwrap();
    h.wait_for(SETTLE, "the change is held", |h| {
        h.deliveries_seen() >= h.published
    })
    .await
    .unwrap();
    assert_eq!(metric(&h, "palworker_held_plans"), Some(1.0));

    let client = std::sync::Arc::new(
        palworker::operators::AdminApiClient::new(
            h.app().http_addr,
            Some(palworker::local::ADMIN_TOKEN.to_owned().into()),
            palworker::operators::Reached::LedgerInUse,
        )
        .unwrap(),
    );
    let event = palworker::operators::EventRef {
        event: "change".into(),
        source: None,
    };
    let mut decisions = tokio::task::JoinSet::new();
    for decision in [
        palworker::operators::Decision::Approve,
        palworker::operators::Decision::Reject,
        palworker::operators::Decision::Approve,
        palworker::operators::Decision::Approve,
    ] {
        let client = client.clone();
        let event = event.clone();
        decisions.spawn(async move {
            let answer =
                palworker::operators::Operations::decide(client.as_ref(), decision, &event).await;
            (decision, answer.map_err(|e| e.to_string()))
        });
    }
    let mut taken = Vec::new();
    while let Some(result) = decisions.join_next().await {
        let (decision, answer) = result.unwrap();
        match answer {
            Ok(summary) => taken.push((decision, summary)),
            Err(refused) => assert!(refused.contains("not held"), "{refused}"),
        }
    }
    assert_eq!(taken.len(), 1, "one decision is taken: {taken:?}");
    h.wait_until_settled(SETTLE).await.unwrap();
    assert_eq!(metric(&h, "palworker_held_plans"), Some(0.0));
    no_event_in_flight(&h).await;
    assert_eq!(metric(&h, "palworker_actions_pending"), Some(0.0));
    let (decision, summary) = &taken[0];
    let writes = h
        .simulator
        .requests()
        .iter()
        .filter(|r| r.method != "GET" && r.status < 300)
        .filter(|r| r.partner_id.as_deref() == Some("444444"))
        .count();
    match decision {
        palworker::operators::Decision::Approve => {
            assert_eq!(summary.released, accounts as u64);
            assert_eq!(writes, accounts, "every link changed exactly once");
            for e in 0..accounts {
                assert_eq!(h.linked(e, 0).as_deref(), Some("444444"));
            }
        }
        palworker::operators::Decision::Reject => {
            assert_eq!(summary.cancelled, accounts as u64);
            assert_eq!(writes, 0);
        }
    }
    h.shutdown().await.unwrap();
}
