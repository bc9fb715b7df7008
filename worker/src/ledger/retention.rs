//! Retention (SPEC §11.2): events whose every action ended longer than
//! `ledger.retention` ago are removed with their actions, in bounded
//! batches; a compact marker of each `(source, id)` stays for
//! `ledger.dedup_retention`, so a late redelivery is still a duplicate. The
//! audit trail keeps their outcomes — for `audit.retention`, when set: its
//! oldest records are pruned last in each sweep, a prefix at a time, and the
//! trail's anchor moves past them so `audit verify` checks from the oldest
//! kept record (see `audit.rs`).
//!
//! A pruned event's `eid:` marker holds its sequence number and the instant
//! it completed (16 bytes instead of 8); nothing else refers to it.

use chrono::{DateTime, Utc};
use palworker_core::{ActionId, EventRecord, EventSeq};
use sled::Transactional;

use super::codec::{decode, event_id_key, millis, pair_key, read_u64, tx_error};
use super::{Ledger, Result};

/// How long records are kept.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Events (and their actions) this long after they completed.
    pub records: chrono::Duration,
    /// Deduplication markers of pruned events this long after they completed.
    pub markers: chrono::Duration,
    /// Audit records this long after they were written; `None`: forever.
    pub audit: Option<chrono::Duration>,
}

/// Where a sweep continues: events from this sequence number, then markers
/// from this key.
#[derive(Debug, Clone, Default)]
pub struct SweepCursor {
    next_event: Option<EventSeq>,
    next_marker: Option<Vec<u8>>,
    events_done: bool,
    audit_done: bool,
}

impl SweepCursor {
    /// Whether the sweep has gone through every event and marker.
    pub fn is_done(&self) -> bool {
        self.events_done && self.next_marker.is_none() && self.audit_done
    }
}

/// What one batch of a sweep removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    pub events: u64,
    pub actions: u64,
    pub markers: u64,
    /// Audit records (after `audit.retention`).
    pub audit: u64,
}

impl Swept {
    pub fn add(&mut self, other: Swept) {
        self.events += other.events;
        self.actions += other.actions;
        self.markers += other.markers;
        self.audit += other.audit;
    }
}

/// A marker value: a pruned event's (16 bytes) or a live one's (8).
fn pruned_marker(seq: EventSeq, completed: DateTime<Utc>) -> Vec<u8> {
    let mut value = seq.to_be_bytes().to_vec();
    value.extend_from_slice(&millis(completed).to_be_bytes());
    value
}

impl Ledger {
    /// One bounded step of a sweep: removes at most about `batch` records
    /// (one event's actions are removed `batch` at a time, the event record
    /// last), moving `cursor` on; call again until [`SweepCursor::is_done`].
    /// A step is short: writes of the intake and the executor never wait
    /// for more than one.
    pub fn sweep(
        &self,
        now: DateTime<Utc>,
        retention: Retention,
        batch: usize,
        cursor: &mut SweepCursor,
    ) -> Result<Swept> {
        let _writing = self.writing();
        let batch = batch.max(1);
        let mut swept = Swept::default();
        if !cursor.events_done {
            let cutoff = now - retention.records;
            let store = self.store()?;
            let start = cursor.next_event.map_or(0, EventSeq::get);
            let mut examined = 0usize;
            let mut finished = true;
            for item in store.events.range(start.to_be_bytes()..) {
                let (key, bytes) = item?;
                let record: EventRecord = decode(&key, &bytes)?;
                cursor.next_event = Some(EventSeq::new(record.seq.get().saturating_add(1)));
                examined += 1;
                if is_prunable(&store, &record, cutoff)? {
                    let (removed, complete) = self.prune_event(&store, &record, batch)?;
                    swept.add(removed);
                    if !complete {
                        // Its remaining actions go in the next step.
                        cursor.next_event = Some(record.seq);
                        finished = false;
                        break;
                    }
                }
                if examined >= batch || swept.actions + swept.events >= batch as u64 {
                    finished = false;
                    break;
                }
            }
            if finished {
                cursor.events_done = true;
                cursor.next_marker = Some(b"eid:".to_vec());
            }
            return Ok(swept);
        }
        if let Some(from) = cursor.next_marker.take() {
            let cutoff = millis(now - retention.markers);
            let store = self.store()?;
            let mut expired = Vec::new();
            let mut examined = 0usize;
            for item in store.index.range(from..) {
                let (key, value) = item?;
                if !key.starts_with(b"eid:") {
                    break;
                }
                examined += 1;
                if value.len() == 16 && read_u64(&value[8..]) < cutoff {
                    expired.push(key.to_vec());
                }
                if examined >= batch {
                    let mut next = key.to_vec();
                    next.push(0);
                    cursor.next_marker = Some(next);
                    break;
                }
            }
            for key in &expired {
                store.index.remove(key)?;
            }
            swept.markers = expired.len() as u64;
            return Ok(swept);
        }
        match retention.audit {
            None => cursor.audit_done = true,
            Some(keep) => {
                let (removed, done) = self.prune_audit(now - keep, batch)?;
                swept.audit = removed;
                cursor.audit_done = done;
            }
        }
        Ok(swept)
    }

    /// Removes up to `batch` of the event's actions; the record itself (its
    /// marker made compact) once none is left. Returns what was removed and
    /// whether the event is gone.
    fn prune_event(
        &self,
        store: &super::Store,
        record: &EventRecord,
        batch: usize,
    ) -> Result<(Swept, bool)> {
        let in_tree = record.action_ids.is_none();
        // A plan written in one transaction keeps its ids (at most one
        // chunk) in its record: they all go in this one step, with it.
        let limit = if in_tree { batch } else { usize::MAX };
        let ids: Vec<ActionId> = self
            .event_action_ids(record.seq)
            .take(limit)
            .collect::<Result<_>>()?;
        let seq = record.seq;
        let mut swept = Swept::default();
        if !ids.is_empty() {
            (&store.actions, &store.event_actions)
                .transaction(|(actions, event_actions)| {
                    for id in &ids {
                        actions.remove(&id.to_be_bytes())?;
                        if in_tree {
                            event_actions.remove(&pair_key(seq.get(), id.get()))?;
                        }
                    }
                    Ok(())
                })
                .map_err(tx_error)?;
            swept.actions = ids.len() as u64;
            if in_tree {
                return Ok((swept, false));
            }
        }
        let marker = event_id_key(&record.event.source, &record.event.id);
        let completed = record.completed_at.unwrap_or(record.accepted_at);
        (&store.events, &store.index)
            .transaction(|(events, index)| {
                events.remove(&seq.to_be_bytes())?;
                index.insert(marker.as_slice(), pruned_marker(seq, completed))?;
                Ok(())
            })
            .map_err(tx_error)?;
        swept.events = 1;
        Ok((swept, true))
    }
}

/// Whether `record` completed before `cutoff` with no action open.
fn is_prunable(store: &super::Store, record: &EventRecord, cutoff: DateTime<Utc>) -> Result<bool> {
    let Some(completed) = record.completed_at else {
        return Ok(false);
    };
    if completed >= cutoff || record.open_actions.is_some_and(|open| open > 0) {
        return Ok(false);
    }
    // A retry reopens a completed event: its count lives on. A result not
    // yet published lists the event's actions when it is: they stay.
    Ok(!store.open_events.contains_key(record.seq.to_be_bytes())?
        && !store
            .outbox
            .contains_key(super::outbox::completed_key(record.seq))?)
}
