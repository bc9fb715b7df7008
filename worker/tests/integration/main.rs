//! The integration tests that share the broker peacefully, in one test
//! binary (one link, one process; cargo runs their tests in parallel): each
//! test has its own topology, ledger and simulator on the local RabbitMQ.
//! Their helpers are in `palworker::local`. The broker tests, which close
//! broker connections and restart RabbitMQ, are a binary of their own
//! (`tests/broker/main.rs`).
//!
//! | module | covers |
//! | --- | --- |
//! | `bounded` | operator commands at any size: streamed `status`/`audit`, large imports, `ledger check` |
//! | `end_to_end` | the main path: each event type, duplicates, malformed messages, metrics |
//! | `failures` | a full disk under the ledger, an unparsable frame, operators racing (SPEC §11.1) |
//! | `faults` | PAL faults, supersession, `effective_at`, identity checks, retry budget, restarts |
//! | `months` | months unattended (SPEC §11.2): scheduled vs pending, … |
//! | `operators` | held plans, dry run, the publisher allow-list, the CLI and admin API, certificates |
//! | `drift` | `reconcile`: links changed behind palworker's back found and fixed, held, periodic (SPEC §11.3) |
//! | `crash` | `kill -9` of a worker process mid-flight, then a restart |
//! | `proof` | verified writes, drift, orphans, time to revocation (SPEC §11.3) |
//! | `results` | results to the publishers: completed, attention, the outbox across `kill -9` (SPEC §11.3) |
//! | `partitions` | a router and three partition workers: the same links, writes and audit as one process; takeover; a killed router (SPEC §10) |
//! | `process` | a worker process's JSON logs and secret hygiene |
//! | `cli` | the command line's exit codes and messages |
//! | `console` | the operator's console in headless Chromium: sign-in, find, approve, retry, audit download, CSRF |
//! | `local_operator` | operator commands without a token through the admin socket; another OS user refused |

mod bounded;
mod cli;
mod console;
mod crash;
mod drift;
mod end_to_end;
mod failures;
mod faults;
mod local_operator;
mod months;
mod operators;
mod partitions;
mod process;
mod proof;
mod results;

use std::path::Path;

/// The `palworker` binary cargo built for these tests.
pub fn worker_binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_palworker"))
}
