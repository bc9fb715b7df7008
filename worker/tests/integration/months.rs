//! Months unattended (SPEC §11.2): what the gauges and histograms say of
//! work announced ahead. Real RabbitMQ, real sled, the simulator over HTTP.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DurationRound, TimeDelta, Utc};
use palworker::clock::{Clock, ManualClock};
use palworker::local::identities::{assignment, employee, principals};
use palworker::local::{Harness, HarnessOptions, events, sample};

const SETTLE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_departure_dated_next_month_is_scheduled_not_pending_and_completes_from_its_date() {
    let clock = Arc::new(ManualClock::new(
        Utc::now().duration_trunc(TimeDelta::seconds(1)).unwrap(),
    ));
    let mut h = Harness::start_with_clock(
        HarnessOptions {
            principals: principals(1, 2),
            ..HarnessOptions::default()
        },
        clock.clone(),
    )
    .await
    .unwrap();
    for t in 0..2 {
        h.publish(&assignment(&format!("start-{t}"), 0, t, "111111"))
            .await
            .unwrap();
    }
    h.wait_until_settled(SETTLE).await.unwrap();

    let effective = clock.now() + TimeDelta::days(30);
    h.publish(&events::employee_departed(
        "departure",
        &employee(0),
        None,
        Some(&effective.to_rfc3339()),
    ))
    .await
    .unwrap();
    h.wait_for(SETTLE, "the departure is accepted", |h| {
        h.deliveries_seen() >= h.published
    })
    .await
    .unwrap();
    let metrics = h.metrics_text();
    assert_eq!(sample(&metrics, "palworker_actions_scheduled"), Some(2.0));
    assert_eq!(sample(&metrics, "palworker_actions_pending"), Some(0.0));
    let completion_before =
        sample(&metrics, "palworker_event_completion_seconds_sum").unwrap_or(0.0);

    clock.set(effective + TimeDelta::seconds(5));
    h.app().executor.wake();
    h.wait_until_settled(SETTLE).await.unwrap();
    assert_eq!(h.linked(0, 0), None);
    assert_eq!(h.linked(0, 1), None);
    let metrics = h.metrics_text();
    assert_eq!(sample(&metrics, "palworker_actions_scheduled"), Some(0.0));
    assert_eq!(sample(&metrics, "palworker_actions_pending"), Some(0.0));
    let completion =
        sample(&metrics, "palworker_event_completion_seconds_sum").unwrap() - completion_before;
    assert!(
        (5.0..60.0).contains(&completion),
        "the departure took {completion} s from its effective_at, not a month from acceptance"
    );
    h.shutdown().await.unwrap();
}
