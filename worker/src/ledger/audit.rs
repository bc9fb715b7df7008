//! The audit trail (SPEC §11.2): an append-only tree apart from the
//! operational records, which retention prunes while the trail stays.
//!
//! Tree `audit`: `seq` (8 bytes, big-endian, from 0) → [`AuditEntry`] JSON;
//! `head` → the next `seq` (8 bytes) ++ the SHA-256 of the last record's
//! stored bytes (32 bytes); `anchor` → the first kept `seq` ++ the hash its
//! `prev_hash` must show (once old records were pruned). A record is
//! appended in the same transaction as what it records, so the trail holds
//! exactly what happened. Each record's `prev_hash` is the SHA-256 of the
//! previous record's bytes as stored: editing any byte of a stored record
//! breaks the chain at the record after it (or at `head`, for the last one).

use chrono::{DateTime, Utc};
use palworker_core::{ActionRecord, AuditEntry, AuditRecord, AuditWhat};
use sled::transaction::TransactionalTree;

use super::codec::{TxResult, decode, encode, read_u64};
use super::queries::evicting;
use super::{Ledger, Result};

/// The worker itself, as the `who` of what it does unasked.
pub const WORKER: &str = "palworker";

const HEAD_KEY: &[u8] = b"head";
const ANCHOR_KEY: &[u8] = b"anchor";
/// The `prev_hash` of the very first record.
const GENESIS: [u8; 32] = [0; 32];

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The next `seq` and the hash the next record's `prev_hash` shows.
fn head(bytes: Option<&[u8]>) -> (u64, [u8; 32]) {
    match bytes {
        Some(bytes) if bytes.len() == 40 => {
            let mut hash = [0u8; 32];
            hash.copy_from_slice(&bytes[8..]);
            (read_u64(&bytes[..8]), hash)
        }
        _ => (0, GENESIS),
    }
}

fn head_bytes(next: u64, hash: &[u8; 32]) -> Vec<u8> {
    let mut bytes = next.to_be_bytes().to_vec();
    bytes.extend_from_slice(hash);
    bytes
}

/// Appends records to the trail inside a transaction over `audit`.
pub(super) fn append(
    audit: &TransactionalTree,
    who: &str,
    records: impl IntoIterator<Item = (DateTime<Utc>, AuditWhat)>,
) -> TxResult<()> {
    let head_before = audit.get(HEAD_KEY)?;
    let (mut next, mut last) = head(head_before.as_deref());
    let mut appended = false;
    for (at, what) in records {
        let entry = AuditEntry {
            seq: next,
            at,
            who: who.to_owned(),
            what,
            prev_hash: hex(&last),
        };
        let bytes = encode(&entry);
        last = sha256(&bytes);
        audit.insert(&next.to_be_bytes(), bytes)?;
        next += 1;
        appended = true;
    }
    if appended {
        audit.insert(HEAD_KEY, head_bytes(next, &last))?;
    }
    Ok(())
}

/// The outcome record of an action that reached a terminal state.
pub(super) fn outcome(action: &ActionRecord) -> (DateTime<Utc>, AuditWhat) {
    (
        action.completed_at.unwrap_or(action.updated_at),
        AuditWhat::ActionOutcome(Box::new(AuditRecord::from(action))),
    )
}

/// Where `audit verify` found the chain broken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditBreak {
    /// The first record whose bytes do not match what the chain says of them.
    pub seq: u64,
    pub reason: String,
}

/// What `audit verify` checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditVerified {
    /// Records checked.
    pub records: u64,
    /// The first break, if any.
    pub broken: Option<AuditBreak>,
}

impl Ledger {
    /// Visits the audit trail in order, the records whose time is within
    /// `[since, until)`, until `visit` returns false; never holds more than
    /// one record.
    pub fn for_each_audit_entry(
        &self,
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
        mut visit: impl FnMut(AuditEntry) -> bool,
    ) -> Result<()> {
        let store = self.store()?;
        for item in evicting(&store.audit, store.audit.iter()) {
            let (key, bytes) = item?;
            if key.len() != 8 {
                continue;
            }
            let entry: AuditEntry = decode(&key, &bytes)?;
            if since.is_some_and(|since| entry.at < since)
                || until.is_some_and(|until| entry.at >= until)
            {
                continue;
            }
            if !visit(entry) {
                break;
            }
        }
        Ok(())
    }

    /// The `seq` the next record appended will have: where a reader that
    /// follows the trail (`Ledger::audit_entries_from`) starts.
    pub fn audit_next_seq(&self) -> Result<u64> {
        Ok(head(self.store()?.audit.get(HEAD_KEY)?.as_deref()).0)
    }

    /// Checks the whole chain: every record's `prev_hash` is the SHA-256 of
    /// the bytes stored before it, the `seq`s run without gaps, and `head`
    /// holds the hash of the last record. Names the first broken record.
    pub fn verify_audit(&self) -> Result<AuditVerified> {
        let store = self.store()?;
        let (mut expected_seq, mut expected_prev) = match store.audit.get(ANCHOR_KEY)? {
            Some(anchor) => head(Some(&anchor)),
            None => (0, GENESIS),
        };
        let mut records = 0u64;
        let broken = |records: u64, seq: u64, reason: String| {
            Ok(AuditVerified {
                records,
                broken: Some(AuditBreak { seq, reason }),
            })
        };
        for item in evicting(&store.audit, store.audit.iter()) {
            let (key, bytes) = item?;
            if key.len() != 8 {
                continue;
            }
            let seq = read_u64(&key);
            let entry: AuditEntry = match serde_json::from_slice(&bytes) {
                Ok(entry) => entry,
                Err(error) => {
                    return broken(records, seq, format!("not a readable record: {error}"));
                }
            };
            if seq != expected_seq || entry.seq != seq {
                return broken(
                    records,
                    seq,
                    format!("expected record {expected_seq}, found {}", entry.seq),
                );
            }
            if entry.prev_hash != hex(&expected_prev) {
                // The record before was changed (or this one's prev_hash was).
                let culprit = seq.saturating_sub(1).max(first_seq(&store)?);
                return broken(
                    records,
                    culprit,
                    format!(
                        "the chain breaks before record {seq}: its prev_hash does not match the stored record {culprit}"
                    ),
                );
            }
            expected_prev = sha256(&bytes);
            expected_seq = seq + 1;
            records += 1;
        }
        let (next, last) = head(store.audit.get(HEAD_KEY)?.as_deref());
        if records > 0 && (next != expected_seq || last != expected_prev) {
            return broken(
                records,
                expected_seq.saturating_sub(1),
                "the last record does not match the trail's head".into(),
            );
        }
        Ok(AuditVerified {
            records,
            broken: None,
        })
    }
}

impl Ledger {
    /// Removes up to `batch` of the trail's oldest records written before
    /// `cutoff` — a prefix only: it stops at the first younger record, so
    /// what stays is one unbroken chain — and moves the anchor past them
    /// (the first kept `seq` and the hash of the last removed record, which
    /// the first kept one's `prev_hash` shows). Returns how many went and
    /// whether the prefix is gone (nothing older than `cutoff` is left).
    pub(super) fn prune_audit(&self, cutoff: DateTime<Utc>, batch: usize) -> Result<(u64, bool)> {
        let store = self.store()?;
        let mut removed: Vec<(u64, [u8; 32])> = Vec::new();
        let mut done = true;
        for item in store.audit.iter() {
            let (key, bytes) = item?;
            if key.len() != 8 {
                continue;
            }
            let entry: AuditEntry = decode(&key, &bytes)?;
            if entry.at >= cutoff {
                break;
            }
            if removed.len() >= batch.max(1) {
                done = false;
                break;
            }
            removed.push((read_u64(&key), sha256(&bytes)));
        }
        let Some(&(last, last_hash)) = removed.last() else {
            return Ok((0, true));
        };
        store
            .audit
            .transaction(|audit| {
                for (seq, _) in &removed {
                    audit.remove(&seq.to_be_bytes())?;
                }
                audit.insert(ANCHOR_KEY, head_bytes(last + 1, &last_hash))?;
                Ok(())
            })
            .map_err(super::codec::tx_error)?;
        Ok((removed.len() as u64, done))
    }
}

/// The first `seq` still in the trail.
fn first_seq(store: &super::Store) -> Result<u64> {
    Ok(match store.audit.get(ANCHOR_KEY)? {
        Some(anchor) => head(Some(&anchor)).0,
        None => 0,
    })
}
