//! palworker: consumes HR and project lifecycle events from RabbitMQ, plans the
//! Partner Admin Link changes they imply against its inventory, and executes
//! them against Azure Resource Manager's `Microsoft.ManagementPartner` API
//! with durable, idempotent retries tracked in a sled ledger.
//!
//! One module per outside system: only [`amqp`] imports lapin, only [`ledger`]
//! imports sled, only [`pal`] imports reqwest. See ARCHITECTURE.md.
#![forbid(unsafe_code)]

pub mod admin;
pub mod amqp;
pub mod app;
pub mod bench;
pub mod cli;
pub mod clock;
pub mod demo;
pub mod executor;
pub mod harness;
pub mod http;
pub mod intake;
pub mod ledger;
pub mod logging;
pub mod pal;
pub mod planner;
pub mod progress;
pub mod retry;
pub mod sim;
pub mod telemetry;
