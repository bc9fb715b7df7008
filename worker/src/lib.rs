//! palworker: consumes HR and project lifecycle events from RabbitMQ, plans the
//! Partner Admin Link changes they imply against its inventory, and executes
//! them against Azure Resource Manager's `Microsoft.ManagementPartner` API
//! with durable, idempotent retries tracked in a sled ledger.
//!
//! One module per outside system: only [`amqp`] imports lapin, only [`ledger`]
//! imports sled, only [`pal`] imports reqwest for PAL (and
//! [`operators`] for the worker's own admin API). What to do — the domain
//! model, the planner and the retry schedule — is `palworker-core`; the
//! PAL simulator is `palworker-sim`. [`local`] is the one fenced room of
//! development tooling: the demo and the local environment it, the tests
//! and the benchmarks share. See ARCHITECTURE.md.
#![forbid(unsafe_code)]

pub mod admin_socket;
pub mod amqp;
pub mod app;
pub mod availability;
pub mod cli;
pub mod clock;
pub mod console;
pub mod control;
pub mod executor;
pub mod health;
pub mod http;
pub mod intake;
pub mod ledger;
pub mod local;
pub mod logging;
pub mod operators;
pub mod pal;
pub mod progress;
pub mod reconcile;
pub mod results;
pub mod server;
pub mod sweeper;
pub mod telemetry;
