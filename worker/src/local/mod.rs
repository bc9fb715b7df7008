//! The one room of development tooling inside the worker's library, fenced
//! off from production code (nothing outside `local` imports it): a complete
//! local environment on one machine — the PAL simulator in-process, a
//! uniquely named topology on the local RabbitMQ, a ledger in a temporary
//! directory and the real worker — shared by `palworker demo`, the
//! integration tests and the benchmark crate.
//!
//! | file | holds |
//! | --- | --- |
//! | `harness.rs` | [`Harness`]: start, publish, wait, inspect, shut down |
//! | `events.rs` | CloudEvent builders for the six event types |
//! | `identities.rs` | generated tenants, identities, employees and service principals |
//! | `process.rs` | the real binary as a child process: a worker, a CLI command |
//! | `demo.rs` | `palworker demo` |

pub mod demo;
pub mod events;
mod harness;
pub mod identities;
pub mod process;

use std::time::Duration;

pub use harness::{
    DEFAULT_AMQP_URL, Harness, HarnessOptions, ServicePrincipal, TempDir, principal_secret,
};

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
            anyhow::bail!("timed out after {timeout:?} waiting for: {what} ({})", detail());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
