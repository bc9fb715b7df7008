//! Proof, not hope (SPEC §11.3): every write is read back. Real RabbitMQ,
//! real sled, the simulator over HTTP with its eventual consistency and
//! lost writes.

use std::time::Duration;

use palworker::local::identities::{assignment, principals, tenant};
use palworker::local::{Harness, HarnessOptions, sample};
use palworker_core::ActionState;
use palworker_sim::{FaultProfile, Faults};

const SETTLE: Duration = Duration::from_secs(60);
const FAST: &str = "[retry]\ninitial_interval = \"50ms\"\nmax_interval = \"200ms\"\n";

fn metric(h: &Harness, series: &str) -> f64 {
    sample(&h.metrics_text(), series).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_visible_only_after_a_delay_is_confirmed_by_reading_it_again() {
    let mut faults = Faults::default();
    faults.per_tenant.insert(
        tenant(0),
        FaultProfile {
            write_visibility_ms: 400,
            ..FaultProfile::default()
        },
    );
    let mut h = Harness::start(HarnessOptions {
        principals: principals(1, 1),
        faults,
        extra_toml: FAST.into(),
        ..HarnessOptions::default()
    })
    .await
    .unwrap();
    h.publish(&assignment("start", 0, 0, "111111"))
        .await
        .unwrap();
    h.wait_until_settled(SETTLE).await.unwrap();
    let action = h.action_of("start");
    assert_eq!(action.state, ActionState::Done, "{action:#?}");
    assert_eq!(action.attempts, 1, "confirmed within the attempt");
    assert!(action.verified_at.is_some());
    assert_eq!(
        metric(&h, r#"palworker_verifications_total{result="confirmed"}"#),
        1.0
    );
    assert_eq!(
        metric(&h, r#"palworker_verifications_total{result="mismatch"}"#),
        0.0
    );
    let gets = h
        .simulator
        .requests()
        .iter()
        .filter(|r| r.method == "GET")
        .count();
    assert!(
        gets >= 3,
        "the first reads back still showed no link ({gets} GETs)"
    );
    h.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_answered_200_but_lost_is_found_by_reading_it_back_and_made_again() {
    let mut faults = Faults::default();
    faults.per_tenant.insert(
        tenant(0),
        FaultProfile {
            rate_lost_write: 1.0,
            ..FaultProfile::default()
        },
    );
    let mut h = Harness::start(HarnessOptions {
        principals: principals(1, 1),
        faults,
        extra_toml: FAST.into(),
        ..HarnessOptions::default()
    })
    .await
    .unwrap();
    h.publish(&assignment("start", 0, 0, "111111"))
        .await
        .unwrap();
    h.wait_for(SETTLE, "a retry because the write was not confirmed", |h| {
        sample(
            &h.metrics_text(),
            r#"palworker_action_retries_total{reason="unverified"}"#,
        )
        .unwrap_or(0.0)
            >= 1.0
    })
    .await
    .unwrap();
    assert_eq!(h.linked(0, 0), None, "the write was lost");
    assert!(!h.simulator.lost_writes().is_empty());
    assert_ne!(h.action_of("start").state, ActionState::Done);

    h.simulator.set_faults(Faults::default());
    h.wait_until_settled(SETTLE).await.unwrap();
    let action = h.action_of("start");
    assert_eq!(action.state, ActionState::Done, "{action:#?}");
    assert!(action.verified_at.is_some());
    assert_eq!(h.linked(0, 0).as_deref(), Some("111111"));
    assert!(metric(&h, r#"palworker_verifications_total{result="mismatch"}"#) >= 1.0);
    assert_eq!(
        metric(&h, r#"palworker_verifications_total{result="confirmed"}"#),
        1.0
    );
    h.shutdown().await.unwrap();
}
