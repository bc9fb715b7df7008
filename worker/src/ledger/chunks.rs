//! A plan handed to [`Ledger::accept`] a chunk at a time, so a large plan is
//! never held in memory whole.

use palworker_core::drift::DriftKind;
use palworker_core::planner::{self, FanOut, PlannedChange};
use palworker_events::{ContractId, DesiredLink};
use serde::Deserialize;

use super::accept::ACCEPT_CHUNK;
use super::reconcile::Drifted;
use super::{Ledger, LedgerError, Result};
/// The two fields of an [`InventoryEntry`] a fan-out's count reads (the rest
/// of the record is skipped, not decoded).
#[derive(Deserialize)]
struct EntryProbe {
    account: AccountProbe,
    desired: DesiredLink,
}

#[derive(Deserialize)]
struct AccountProbe {
    #[serde(default)]
    contract_id: Option<ContractId>,
}

/// A plan handed to [`Ledger::accept`] a chunk of at most [`ACCEPT_CHUNK`]
/// changes at a time, so a large plan is never held in memory whole.
pub(super) enum PlanChunks<'e> {
    /// Planned in memory: the event types that read one account's or one
    /// employee's entries. Links come before removals, so that if the worker
    /// dies between chunks of a departure, "where the departed employee had a
    /// link" survives the re-plan of the redelivered event.
    Planned {
        changes: std::vec::IntoIter<PlannedChange>,
        taken: usize,
    },
    /// A reconcile's differences (SPEC §11.3), each made a change from its
    /// account's entry as its chunk is handed out; removals last, as in
    /// [`PlanChunks::Planned`].
    Reconciled {
        drifted: std::vec::IntoIter<Drifted>,
        taken: usize,
    },
    /// A fan-out streamed over the inventory in key order. `cursor` is the
    /// key of the last entry read; `next` the one change read past the last
    /// chunk (how the end of the plan is known when a chunk fills up).
    Streamed {
        fan_out: FanOut<'e>,
        next: Option<Box<PlannedChange>>,
        cursor: Option<Vec<u8>>,
        done: bool,
    },
}

impl<'e> PlanChunks<'e> {
    pub(super) fn planned(mut changes: Vec<PlannedChange>) -> Self {
        if changes.len() > ACCEPT_CHUNK {
            changes.sort_by_key(|change| matches!(change.desired, DesiredLink::Absent));
        }
        PlanChunks::Planned {
            changes: changes.into_iter(),
            taken: 0,
        }
    }

    pub(super) fn reconciled(mut drifted: Vec<Drifted>) -> Self {
        drifted.sort_by_key(|drift| drift.kind == DriftKind::Unexpected);
        PlanChunks::Reconciled {
            drifted: drifted.into_iter(),
            taken: 0,
        }
    }

    pub(super) fn streamed(fan_out: FanOut<'e>) -> Self {
        PlanChunks::Streamed {
            fan_out,
            next: None,
            cursor: None,
            done: false,
        }
    }

    /// Whether every change has been handed out.
    pub(super) fn is_done(&self) -> bool {
        match self {
            PlanChunks::Planned { changes, .. } => changes.len() == 0,
            PlanChunks::Reconciled { drifted, .. } => drifted.len() == 0,
            PlanChunks::Streamed { next, done, .. } => *done && next.is_none(),
        }
    }

    /// The next chunk (empty once done).
    pub(super) fn next_chunk(&mut self, ledger: &Ledger) -> Result<Vec<PlannedChange>> {
        match self {
            PlanChunks::Planned { changes, taken } => {
                let chunk: Vec<PlannedChange> = changes.by_ref().take(ACCEPT_CHUNK).collect();
                *taken += chunk.len();
                Ok(chunk)
            }
            PlanChunks::Reconciled { drifted, taken } => {
                let mut chunk = Vec::with_capacity(ACCEPT_CHUNK.min(drifted.len()));
                for drift in drifted.by_ref().take(ACCEPT_CHUNK) {
                    // The caller checked every entry under the planning
                    // lock it still holds: none went away since.
                    let entry = ledger.inventory_entry(&drift.key)?.ok_or_else(|| {
                        LedgerError::Rejected(format!(
                            "account {}/{} left the inventory while its reconcile was stored",
                            drift.key.tenant_id, drift.key.object_id
                        ))
                    })?;
                    chunk.push(planner::reconcile_change(entry, drift.kind));
                }
                *taken += chunk.len();
                Ok(chunk)
            }
            PlanChunks::Streamed {
                fan_out,
                next,
                cursor,
                done,
            } => {
                let mut chunk = Vec::with_capacity(ACCEPT_CHUNK);
                chunk.extend(next.take().map(|change| *change));
                if *done {
                    return Ok(chunk);
                }
                let after = cursor.take();
                let finished =
                    ledger.scan_scope(&fan_out.scope, after.as_deref(), |key, entry| {
                        let Some(change) = fan_out.change(entry) else {
                            return true;
                        };
                        if chunk.len() < ACCEPT_CHUNK {
                            chunk.push(change);
                            return true;
                        }
                        *next = Some(Box::new(change));
                        *cursor = Some(key.to_vec());
                        false
                    })?;
                *done = finished;
                Ok(chunk)
            }
        }
    }

    /// Whether the whole plan has more than `limit` actions. A fan-out
    /// cannot be larger than the inventory, so it is counted only when the
    /// inventory is larger than the limit — and then no further than the
    /// limit, without keeping what is counted (a scan that brings every
    /// inventory page it reads through sled's cache, which costs memory).
    pub(super) fn exceeds(&self, ledger: &Ledger, limit: usize) -> Result<bool> {
        match self {
            PlanChunks::Planned { changes, taken } => Ok(taken + changes.len() > limit),
            PlanChunks::Reconciled { drifted, taken } => Ok(taken + drifted.len() > limit),
            PlanChunks::Streamed { fan_out, .. } => {
                if ledger.inventory_size()? <= limit as u64 {
                    return Ok(false);
                }
                let mut count = 0usize;
                ledger.scan_scope(&fan_out.scope, None, |_, entry: EntryProbe| {
                    if fan_out.applies_to(entry.account.contract_id.as_ref(), &entry.desired) {
                        count += 1;
                    }
                    count <= limit
                })?;
                Ok(count > limit)
            }
        }
    }
}
