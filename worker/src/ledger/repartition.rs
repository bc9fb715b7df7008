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
use super::export::{Bytes, End, FORMAT, Header, Line, TREES, read_export};
use super::{LedgerError, Result};

/// What a re-partition moved: accounts per output partition, and the
/// deduplication markers (each written to every partition).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repartitioned {
    pub accounts: Vec<u64>,
    pub markers: u64,
    pub paused: bool,
}

/// One output export being written.
struct Output<'a> {
    out: &'a mut dyn Write,
    records: u64,
    accounts: u64,
}

impl Output<'_> {
    fn write(&mut self, tree: &str, key: &[u8], value: &[u8]) -> Result<()> {
        let line = Line {
            tree: tree.to_owned(),
            key: Bytes::of(key),
            value: Bytes::of(value),
        };
        let mut text = serde_json::to_vec(&line).map_err(io_error)?;
        text.push(b'\n');
        self.out.write_all(&text).map_err(io_error)?;
        self.records += 1;
        Ok(())
    }
}

fn io_error(error: impl std::fmt::Display) -> LedgerError {
    LedgerError::Rejected(format!("writing a re-partitioned export: {error}"))
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
pub fn repartition(
    sources: Vec<(String, Box<dyn BufRead + '_>)>,
    count: PartitionCount,
    outputs: &mut [&mut dyn Write],
    now: DateTime<Utc>,
) -> Result<Repartitioned> {
    if outputs.len() != count.get() as usize {
        return Err(LedgerError::Rejected(format!(
            "{} outputs for {count} partitions",
            outputs.len()
        )));
    }
    let mut outputs: Vec<Output<'_>> = outputs
        .iter_mut()
        .map(|out| Output {
            out: &mut **out,
            records: 0,
            accounts: 0,
        })
        .collect();
    let header = Header {
        palworker_ledger: FORMAT,
        exported_at: now,
        trees: TREES.iter().map(|t| (*t).to_owned()).collect(),
    };
    for output in &mut outputs {
        let mut text = serde_json::to_vec(&header).map_err(io_error)?;
        text.push(b'\n');
        output.out.write_all(&text).map_err(io_error)?;
    }
    let mut markers = 0u64;
    let mut paused = false;
    for (name, source) in sources {
        read_export(source, |tree, key, value| {
            match route(tree, &key, &value, now) {
                Route::Tenant(tenant) => {
                    let output = &mut outputs[count.of(&tenant).get() as usize];
                    output.write(tree, &key, &value)?;
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
                        output.write(tree, &key, &value)?;
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
    for output in &mut outputs {
        output.write("index", INVENTORY_SIZE_KEY, &output.accounts.to_be_bytes())?;
        let end = End {
            palworker_ledger_end: output.records,
        };
        let mut text = serde_json::to_vec(&end).map_err(io_error)?;
        text.push(b'\n');
        output.out.write_all(&text).map_err(io_error)?;
        output.out.flush().map_err(io_error)?;
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
