//! The one room of development tooling inside the worker's library, fenced
//! off from production code (no production module imports it; the CLI
//! enters it only for `palworker demo`): a complete
//! local environment on one machine — the PAL simulator in-process, a
//! uniquely named topology on the local RabbitMQ, a ledger in a temporary
//! directory and the real worker — shared by `palworker demo`, the
//! integration tests and the benchmark crate.
//!
//! | file | holds |
//! | --- | --- |
//! | `harness.rs` | [`Harness`]: start, publish, wait, shut down |
//! | `inspect.rs` | what a harness's simulator, ledger and metrics show: actions of an event, requests of an identity, writes, readiness, metric samples |
//! | `events.rs` | CloudEvent builders for the six event types |
//! | `identities.rs` | generated tenants, identities, employees and service principals, and their events |
//! | `raw_amqp.rs` | a hand-written AMQP publisher for frames no client library sends |
//! | `partitioned.rs` | [`PartitionedHarness`]: a router and partition workers, each partition its own ledger (SPEC §10) |
//! | `process.rs` | the real binary as a child process: a worker, a CLI command (also for a [`Harness`]'s configuration) |
//! | `broker.rs` | `rabbitmqctl`: broker users, a sandbox virtual host |
//! | `demo.rs` | `palworker demo` |
//!
//! Waiting is always on a condition ([`wait_until`], [`wait_until_async`],
//! [`Harness::wait_for`]), never on time: a timeout only bounds a broken run.

pub mod broker;
pub mod demo;
pub mod events;
mod harness;
pub mod identities;
mod inspect;
mod partitioned;
pub mod process;
pub mod raw_amqp;

use std::time::Duration;

pub use harness::{
    ADMIN_TOKEN, ADMIN_TOKEN_ENV, DEFAULT_AMQP_URL, Harness, HarnessOptions, ServicePrincipal,
    TempDir, principal_secret,
};
pub use inspect::{is_write, request_identity, sample, writes_per_identity};
pub use partitioned::{PartitionedHarness, Role};

/// How often the waits look at their condition again.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Polls `condition` every 20 ms until it holds — waiting on a condition,
/// not on time: the timeout only bounds a broken run, and the error names
/// what was awaited and `detail()` at that moment.
pub async fn wait_until(
    timeout: Duration,
    what: &str,
    mut condition: impl FnMut() -> bool,
    detail: impl Fn() -> String,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if condition() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!(
                "timed out after {timeout:?} waiting for: {what} ({})",
                detail()
            );
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// [`wait_until`] for a condition that must itself wait (an HTTP request, a
/// CLI command): polls `condition` every 20 ms until it answers `Ok(true)`.
/// An `Err` ends the wait with that error; so does the timeout, also when a
/// call of `condition` is still running then.
pub async fn wait_until_async(
    timeout: Duration,
    what: &str,
    mut condition: impl AsyncFnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, condition()).await {
            Ok(Ok(true)) => return Ok(()),
            Ok(Ok(false)) => {}
            Ok(Err(error)) => return Err(error.context(format!("waiting for: {what}"))),
            Err(_) => anyhow::bail!("timed out after {timeout:?} waiting for: {what}"),
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago (for a listen address
/// that must be known before the process that binds it starts).
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
