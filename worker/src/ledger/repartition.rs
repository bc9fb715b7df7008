//! `ledger repartition` (SPEC §10): ledger exports of N partitions in, M
//! exports out, each account in the partition of its tenant
//! (`partition_of`). Built on the export format (`export.rs`): the outputs
//! are ordinary exports that `ledger import` loads into new ledgers.
//!
//! What moves, and what does not:
//! - every inventory account, byte for byte (its desired link, assignment
//!   state and last event), with its employee index entry, to its tenant's
//!   partition; the account count is recomputed per partition;
//! - every deduplication marker, to every partition, in the compact form of
//!   a pruned event's marker (sequence number and an end time, the time of
//!   the re-partition): an event delivered again after the move is still a
//!   duplicate, and `ledger.dedup_retention` lets the markers go in time;
//! - the pause, to every partition when any source was paused;
//! - events, actions and the audit trail stay in the source exports,
//!   which are their archive (each audit trail is a hash chain that cannot
//!   be split); the new partitions start new trails.
//!
//! It refuses ledgers with open work — an action pending, scheduled, in
//! flight or held, a plan being stored or approved, a result owed to the
//! publishers — naming the source and what is open: re-partition quiescent
//! ledgers (the runbook's order: stop the routers, let the partitions
//! finish, decide held plans, export).

use std::io::{BufRead, Write};

use chrono::{DateTime, Utc};
use palworker_events::{PartitionCount, PartitionIndex, TenantId};

use super::codec::{INVENTORY_SIZE_KEY, OPEN_COUNT_KEY, millis, read_u64};
use super::export::{ExportWriter, read_export};
use super::{LedgerError, Result};

/// What a re-partition moved: accounts per output partition, and the
/// deduplication markers (each written to every partition).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repartitioned {
    pub accounts: Vec<u64>,
    pub markers: u64,
    pub paused: bool,
}

/// One output export being written, and the accounts it got.
struct Output<'a> {
    export: ExportWriter<'a, dyn Write + 'a>,
    accounts: u64,
}

/// Where a record goes.
enum Route {
    /// The partition of this tenant.
    Tenant(TenantId),
    /// Every partition, with this value.
    All(Vec<u8>),
    /// Nowhere (history, or recomputed).
    Drop,
    /// Nowhere: the source has open work.
    Open(&'static str),
}

/// The tenant of an inventory key `{tenant}/{object}` or of an employee
/// index key `emp:{employee}\0{tenant}/{object}`.
fn tenant_of(account_key: &[u8]) -> Option<TenantId> {
    let text = std::str::from_utf8(account_key).ok()?;
    TenantId::parse(text.split('/').next()?).ok()
}

/// Where one record of a source goes.
fn route(tree: &str, key: &[u8], value: &[u8], now: DateTime<Utc>) -> Route {
    match tree {
        "inventory" => {
            tenant_of(key).map_or(Route::Open("an unreadable account key"), Route::Tenant)
        }
        "index" if key.starts_with(b"emp:") => {
            let account = key.rsplit(|byte| *byte == 0).next().unwrap_or_default();
            tenant_of(account).map_or(Route::Open("an unreadable index key"), Route::Tenant)
        }
        "index" if key.starts_with(b"eid:") => {
            let mut marker = value.to_vec();
            if marker.len() == 8 {
                marker.extend_from_slice(&millis(now).to_be_bytes());
            }
            Route::All(marker)
        }
        "index" if key == b"meta:paused" => Route::All(value.to_vec()),
        "index" if key.starts_with(b"held:") => Route::Open("a plan held for approval"),
        "index" if key.starts_with(b"approving:") => Route::Open("a held plan being approved"),
        "index" if key.starts_with(b"storing:") => Route::Open("a large plan being stored"),
        "due" => Route::Open("an action pending or scheduled"),
        "in_flight" => Route::Open("an action in flight"),
        "outbox" => Route::Open("a result owed to the publishers"),
        "open_events" if key != OPEN_COUNT_KEY || read_u64(value) > 0 => {
            Route::Open("an event with open actions")
        }
        // Counters (recomputed), old markers, events, actions, the audit trail.
        _ => Route::Drop,
    }
}

/// Reads every source export and writes one export per partition of
/// `count` to `outputs` (in index order). `sources` are (name, reader);
/// the name is only for errors. Blocking.
pub fn repartition<'a>(
    sources: Vec<(String, Box<dyn BufRead + '_>)>,
    count: PartitionCount,
    outputs: Vec<&'a mut (dyn Write + 'a)>,
    now: DateTime<Utc>,
) -> Result<Repartitioned> {
    if outputs.len() != count.get() as usize {
        return Err(LedgerError::Rejected(format!(
            "{} outputs for {count} partitions",
            outputs.len()
        )));
    }
    let mut outputs = outputs
        .into_iter()
        .map(|out| {
            Ok(Output {
                export: ExportWriter::start(out, now)?,
                accounts: 0,
            })
        })
        .collect::<Result<Vec<Output<'a>>>>()?;
    let mut markers = 0u64;
    let mut paused = false;
    for (name, source) in sources {
        read_export(source, |tree, key, value| {
            match route(tree, &key, &value, now) {
                Route::Tenant(tenant) => {
                    let output = &mut outputs[count.of(&tenant).get() as usize];
                    output.export.record(tree, &key, &value)?;
                    if tree == "inventory" {
                        output.accounts += 1;
                    }
                }
                Route::All(value) => {
                    if key.starts_with(b"eid:") {
                        markers += 1;
                    } else {
                        paused = true;
                    }
                    for output in &mut outputs {
                        output.export.record(tree, &key, &value)?;
                    }
                }
                Route::Drop => {}
                Route::Open(what) => {
                    return Err(LedgerError::Rejected(format!(
                        "has open work ({what}, tree `{tree}`): re-partition quiescent ledgers — \
                         stop the routers, let the partitions finish their actions and results, \
                         approve or reject held plans, then export again"
                    )));
                }
            }
            Ok(())
        })
        .map_err(|error| match error {
            LedgerError::Rejected(why) => LedgerError::Rejected(format!("`{name}` {why}")),
            other => other,
        })?;
    }
    let mut accounts = Vec::with_capacity(outputs.len());
    for mut output in outputs {
        output
            .export
            .record("index", INVENTORY_SIZE_KEY, &output.accounts.to_be_bytes())?;
        output.export.finish()?;
        accounts.push(output.accounts);
    }
    Ok(Repartitioned {
        accounts,
        markers,
        paused,
    })
}

/// The file name of partition `partition`'s export in the output directory.
pub fn export_file_name(partition: PartitionIndex) -> String {
    format!("partition-{}.jsonl", partition.get())
}
