//! Results to the publishers (SPEC §11.3): `palworker.event.completed` and
//! `palworker.action.attention` CloudEvents on the results exchange, through
//! the ledger's durable outbox. Real RabbitMQ with a queue bound the way an
//! HR system would bind it, real sled, the simulator over HTTP, and the real
//! binary killed with SIGKILL.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use palworker::amqp::{BrokerAdmin, FetchedMessage};
use palworker::clock::SystemClock;
use palworker::ledger::Ledger;
use palworker::local::identities::{assignment, employee, object, principals, tenant};
use palworker::local::process::WorkerProcess;
use palworker::local::{Harness, HarnessOptions, events, sample, wait_until, wait_until_async};
use palworker::results::completed_id;
use palworker_config::Settings;
use serde_json::Value;

use crate::worker_binary;

const SETTLE: Duration = Duration::from_secs(60);
/// The `source` of the harness's events.
const SOURCE: &str = "urn:palworker:harness";

/// A queue bound to `exchange` with `palworker.#`, as an HR system binds one
/// (README, "Results for publishers"); its name.
async fn bind_results_queue(h: &Harness, exchange: &str) -> String {
    let queue = format!("{}.results-test", h.topology.queue);
    let admin = BrokerAdmin::connect(h.settings.amqp.url.expose())
        .await
        .unwrap();
    admin
        .bind_queue(&queue, exchange, "palworker.#")
        .await
        .unwrap();
    admin.close().await;
    queue
}

/// Waits until `queue` holds `count` messages, then takes them all.
async fn take_results(h: &Harness, queue: &str, count: u32) -> Vec<FetchedMessage> {
    let admin = BrokerAdmin::connect(h.settings.amqp.url.expose())
        .await
        .unwrap();
    wait_until_async(SETTLE, &format!("{count} results in {queue}"), async || {
        Ok(admin.message_count(queue).await? >= count)
    })
    .await
    .unwrap();
    let messages = admin.drain(queue).await.unwrap();
    admin.close().await;
    assert_eq!(messages.len(), count as usize, "{messages:#?}");
    messages
}

async fn delete_queue(h: &Harness, queue: &str) {
    let admin = BrokerAdmin::connect(h.settings.amqp.url.expose())
        .await
        .unwrap();
    admin.delete_queue(queue).await.unwrap();
    admin.close().await;
}

fn body(message: &FetchedMessage) -> Value {
    serde_json::from_slice(&message.body).unwrap()
}

/// The results about the event with CloudEvent id `event_id` (their `subject`).
fn about<'a>(messages: &'a [FetchedMessage], event_id: &str) -> Vec<&'a FetchedMessage> {
    messages
        .iter()
        .filter(|m| body(m)["subject"] == event_id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_event_is_reported_to_a_queue_bound_to_the_results_exchange() {
    let mut h = Harness::start(HarnessOptions {
        principals: principals(1, 2),
        name: "palworker-results".into(),
        ..HarnessOptions::default()
    })
    .await
    .unwrap();
    // The default results exchange: the events exchange itself.
    assert_eq!(h.settings.amqp.results_exchange, h.topology.exchange);
    let queue = bind_results_queue(&h, &h.topology.exchange.clone()).await;
    for t in 0..2 {
        h.publish(&assignment(&format!("start-{t}"), 0, t, "111111"))
            .await
            .unwrap();
    }
    h.wait_until_settled(SETTLE).await.unwrap();
    h.publish(&events::employee_departed(
        "leaves",
        &employee(0),
        None,
        None,
    ))
    .await
    .unwrap();
    h.wait_until_settled(SETTLE).await.unwrap();

    let messages = take_results(&h, &queue, 3).await;
    let completed = about(&messages, "leaves");
    assert_eq!(completed.len(), 1, "{messages:#?}");
    let message = completed[0];
    assert_eq!(message.routing_key, "palworker.event.completed");
    let id = completed_id(SOURCE, "leaves");
    assert_eq!(message.message_id.as_deref(), Some(id.as_str()));
    let event = body(message);
    assert_eq!(event["specversion"], "1.0");
    assert_eq!(event["type"], "palworker.event.completed");
    assert_eq!(event["source"], "urn:palworker");
    assert_eq!(event["id"], id.as_str());
    assert_eq!(event["datacontenttype"], "application/json");
    assert!(event["time"].is_string());
    let data = &event["data"];
    assert_eq!(data["event_id"], "leaves");
    assert_eq!(data["event_source"], SOURCE);
    assert_eq!(data["event_type"], "hr.employee.departed");
    assert_eq!(data["completed_at"], event["time"]);
    assert_eq!(data["counts"]["done"], 2);
    for outcome in [
        "noop",
        "failed",
        "cancelled",
        "manual",
        "skipped",
        "orphaned",
    ] {
        assert_eq!(data["counts"][outcome], 0, "{outcome}");
    }
    let actions = data["actions"].as_array().unwrap();
    assert_eq!(actions.len(), 2);
    for (t, action) in actions.iter().enumerate() {
        assert_eq!(action["tenant_id"], tenant(t).as_str());
        assert_eq!(action["object_id"], object(0, t).as_str());
        assert_eq!(action["employee_id"], employee(0).as_str());
        assert_eq!(action["op"], "remove");
        assert_eq!(action["outcome"], "done");
        assert_eq!(action["partner_id_before"], "111111");
        assert!(action["partner_id_after"].is_null());
        assert!(action["verified_at"].is_string(), "{action}");
    }
    let assignments = about(&messages, "start-0");
    assert_eq!(body(assignments[0])["data"]["actions"][0]["op"], "link");
    assert_eq!(
        body(assignments[0])["data"]["actions"][0]["partner_id_after"],
        "111111"
    );

    // The worker's own queue binds no result: nothing came back to it.
    assert_eq!(h.deliveries_seen(), h.published);
    assert!(h.dead_letters().await.unwrap().is_empty());
    let metrics = h.metrics_text();
    assert_eq!(
        sample(
            &metrics,
            r#"palworker_results_published_total{type="palworker.event.completed"}"#
        ),
        Some(3.0)
    );
    assert!(!h.app().ledger.has_pending_results().unwrap());
    delete_queue(&h, &queue).await;
    h.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_action_a_manual_one_and_a_held_plan_are_reported_for_attention() {
    let mut h = Harness::start(HarnessOptions {
        principals: principals(1, 2),
        name: "palworker-attention".into(),
        extra_toml: "[limits]\nmax_actions_per_event = 1\n".into(),
        ..HarnessOptions::default()
    })
    .await
    .unwrap();
    let queue = bind_results_queue(&h, &h.topology.exchange.clone()).await;
    for t in 0..2 {
        h.publish(&assignment(&format!("start-{t}"), 0, t, "111111"))
            .await
            .unwrap();
    }
    h.wait_until_settled(SETTLE).await.unwrap();
    // Two removals, over the limit of one: held.
    h.publish(&events::employee_departed(
        "leaves",
        &employee(0),
        None,
        None,
    ))
    .await
    .unwrap();
    // A credential the worker does not have: failed.
    h.publish(&events::assignment_started(
        "unknown-credential",
        &employee(1),
        &tenant(0),
        &object(1, 0),
        "111111",
        Some("not-configured"),
        None,
    ))
    .await
    .unwrap();
    // No credential at all (a person's account): manual.
    h.publish(&events::assignment_started(
        "a-person",
        &employee(2),
        &tenant(1),
        &object(2, 1),
        "111111",
        None,
        None,
    ))
    .await
    .unwrap();
    h.wait_until_settled(SETTLE).await.unwrap();

    // Two completions of the links, the held plan, and for each of the
    // other two events an attention and its completion.
    let messages = take_results(&h, &queue, 7).await;
    let attention: Vec<Value> = messages
        .iter()
        .filter(|m| m.routing_key == "palworker.action.attention")
        .map(body)
        .collect();
    assert_eq!(attention.len(), 3, "{attention:#?}");
    let reason = |reason: &str| {
        attention
            .iter()
            .find(|event| event["data"]["reason"] == reason)
            .unwrap_or_else(|| panic!("no {reason} attention in {attention:#?}"))
    };
    let held = reason("held");
    assert_eq!(held["type"], "palworker.action.attention");
    assert_eq!(held["source"], "urn:palworker");
    assert_eq!(held["data"]["event_id"], "leaves");
    assert_eq!(held["data"]["event_type"], "hr.employee.departed");
    assert_eq!(held["data"]["actions"], 2);
    let failed = reason("failed");
    assert_eq!(failed["data"]["event_id"], "unknown-credential");
    assert_eq!(failed["data"]["outcome"], "failed");
    assert_eq!(failed["data"]["op"], "link");
    assert_eq!(failed["data"]["tenant_id"], tenant(0).as_str());
    assert!(
        failed["data"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("not-configured")),
        "{failed}"
    );
    let manual = reason("manual");
    assert_eq!(manual["data"]["event_id"], "a-person");
    assert!(manual["data"]["detail"].is_string(), "{manual}");
    let ids: std::collections::BTreeSet<&str> = attention
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 3, "distinct ids");

    let completion = body(
        about(&messages, "unknown-credential")
            .into_iter()
            .find(|m| m.routing_key == "palworker.event.completed")
            .unwrap(),
    );
    assert_eq!(completion["data"]["counts"]["failed"], 1);
    assert!(
        about(&messages, "leaves")
            .iter()
            .all(|m| m.routing_key == "palworker.action.attention"),
        "a held plan has not completed"
    );
    let metrics = h.metrics_text();
    assert_eq!(
        sample(
            &metrics,
            r#"palworker_results_published_total{type="palworker.action.attention"}"#
        ),
        Some(3.0)
    );
    delete_queue(&h, &queue).await;
    h.shutdown().await.unwrap();
}

/// Writes `toml` as the configuration of a worker process in `dir`.
fn write_config(dir: &Path, name: &str, toml: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, toml).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_owed_when_the_worker_is_killed_is_published_after_the_restart_with_the_same_id() {
    let results_exchange = format!("palworker-results-{}", uuid::Uuid::new_v4().simple());
    // The results exchange does not exist yet, and the worker may not
    // declare it: every publish fails until it is created.
    let mut h = Harness::prepare(
        HarnessOptions {
            principals: principals(1, 1),
            name: "palworker-results-crash".into(),
            extra_toml: format!(
                "[amqp]\nresults_exchange = \"{results_exchange}\"\ndeclare = \"passive\"\n"
            ),
            ..HarnessOptions::default()
        },
        Arc::new(SystemClock),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    h.publish(&assignment("start", 0, 0, "111111"))
        .await
        .unwrap();
    let mut first = h
        .spawn_worker_process(worker_binary(), dir.path(), "first-run")
        .unwrap();
    wait_until(
        SETTLE,
        "the event completed and its result could not be published",
        || h.linked(0, 0).is_some() && first.log().contains("Publishing results failed"),
        || first.log_tail(10),
    )
    .await
    .unwrap();
    first.kill_9().await.unwrap();

    // A backup taken now holds the result still owed.
    let backup = dir.path().join("backup.jsonl");
    {
        let ledger = Ledger::open(&h.settings.ledger.path, 1 << 24).unwrap();
        assert!(ledger.has_pending_results().unwrap(), "owed in the outbox");
        let mut out = std::io::BufWriter::new(std::fs::File::create(&backup).unwrap());
        ledger.export(&mut out).unwrap();
    }

    // The exchange appears; an HR system binds its queue.
    let admin = BrokerAdmin::connect(h.settings.amqp.url.expose())
        .await
        .unwrap();
    admin
        .declare_topic_exchange(&results_exchange)
        .await
        .unwrap();
    admin.close().await;
    let queue = bind_results_queue(&h, &results_exchange).await;
    let mut second = h
        .spawn_worker_process(worker_binary(), dir.path(), "second-run")
        .unwrap();
    let published = take_results(&h, &queue, 1).await.remove(0);
    let id = completed_id(SOURCE, "start");
    assert_eq!(published.routing_key, "palworker.event.completed");
    assert_eq!(published.message_id.as_deref(), Some(id.as_str()));
    let event = body(&published);
    assert_eq!(event["id"], id.as_str());
    assert_eq!(event["data"]["event_id"], "start");
    assert_eq!(event["data"]["counts"]["done"], 1);
    let status = second.terminate(SETTLE).await.unwrap();
    assert!(status.success(), "graceful stop: {status:?}");

    // The backup restored elsewhere owes the same result and publishes it
    // again: the same id, the same bytes — a duplicate a consumer drops.
    let restored = dir.path().join("restored-ledger");
    {
        let ledger = Ledger::open(&restored, 1 << 24).unwrap();
        let input = std::io::BufReader::new(std::fs::File::open(&backup).unwrap());
        ledger.import(input).unwrap();
    }
    let config = Settings::layer_toml(
        &h.config_toml,
        &format!("[ledger]\npath = \"{}\"\n", restored.display()),
    )
    .unwrap();
    let config = write_config(dir.path(), "restored.toml", &config);
    let mut third = WorkerProcess::spawn(
        worker_binary(),
        &config,
        &h.config_env,
        &dir.path().join("third-run.log"),
    )
    .unwrap();
    let repeated = take_results(&h, &queue, 1).await.remove(0);
    assert_eq!(repeated.message_id.as_deref(), Some(id.as_str()));
    assert_eq!(
        repeated.body, published.body,
        "the same result, byte for byte"
    );
    let status = third.terminate(SETTLE).await.unwrap();
    assert!(status.success(), "graceful stop: {status:?}");

    let admin = BrokerAdmin::connect(h.settings.amqp.url.expose())
        .await
        .unwrap();
    admin.delete_queue(&queue).await.unwrap();
    admin.delete_exchange(&results_exchange).await.unwrap();
    admin.close().await;
    h.shutdown().await.unwrap();
}
