//! Reading back a page at a time, newest first: what the operator's console
//! shows (`console`), one screenful per request.
//!
//! Every function here reads at most a bounded number of records — the page
//! wanted, or a scan budget when a filter matches rarely — by the same
//! point lookups as every other scan (`queries::evicting`), and answers with
//! a cursor to go on from. A page therefore costs the same on a ledger of a
//! hundred actions and of millions; a rare match costs more requests, never
//! a longer one.

use palworker_core::{ActionId, ActionRecord, AuditEntry, EventRecord, EventSeq, StatusFilter};

use super::codec::{decode, read_u64};
use super::{Ledger, Result};

/// What one page read found.
#[derive(Debug, Clone)]
pub struct Page<T, C> {
    /// The matching records, newest first.
    pub items: Vec<T>,
    /// Where an older page starts (pass it as `before`); `None` once the
    /// oldest record was read.
    pub next: Option<C>,
    /// Records read to find `items` (matching or not).
    pub scanned: usize,
}

impl<T, C> Page<T, C> {
    fn empty() -> Self {
        Page {
            items: Vec::new(),
            next: None,
            scanned: 0,
        }
    }
}

/// Reads `tree` newest first from before `before` (the newest without),
/// decoding each value with a point lookup of its key, keeping those
/// `matches` accepts, until `want` matched or `budget` were read.
fn newest_first<T, C: Copy>(
    tree: &sled::Tree,
    before: Option<[u8; 8]>,
    want: usize,
    budget: usize,
    key_cursor: impl Fn(&[u8]) -> C,
    mut matches: impl FnMut(&T) -> bool,
) -> Result<Page<T, C>>
where
    T: for<'de> serde::Deserialize<'de>,
{
    let mut page = Page::empty();
    let keys = match before {
        Some(before) => tree.range(..before.to_vec()),
        None => tree.iter(),
    };
    let mut last_key: Option<sled::IVec> = None;
    for key in keys.keys().rev() {
        let key = key?;
        // Only 8-byte keys are records (the audit trail keeps `head` and
        // `anchor` beside them).
        if key.len() != 8 {
            continue;
        }
        if page.items.len() >= want || page.scanned >= budget {
            page.next = last_key.as_deref().map(&key_cursor);
            return Ok(page);
        }
        let Some(value) = tree.get(&key)? else {
            continue;
        };
        page.scanned += 1;
        let record: T = decode(&key, &value)?;
        if matches(&record) {
            page.items.push(record);
        }
        last_key = Some(key);
    }
    Ok(page)
}

impl Ledger {
    /// Up to `want` actions matching `filter` (its `limit` is not used),
    /// newest first, created before `before`; reads at most `budget`.
    pub fn actions_newest_first(
        &self,
        filter: &StatusFilter,
        before: Option<ActionId>,
        want: usize,
        budget: usize,
    ) -> Result<Page<ActionRecord, ActionId>> {
        let store = self.store()?;
        newest_first(
            &store.actions,
            before.map(ActionId::to_be_bytes),
            want,
            budget,
            |key| ActionId::new(read_u64(key)),
            |action: &ActionRecord| filter.matches(action),
        )
    }

    /// Up to `want` accepted events that `matches` accepts, newest first,
    /// accepted before `before`; reads at most `budget`.
    pub fn events_newest_first(
        &self,
        before: Option<EventSeq>,
        want: usize,
        budget: usize,
        matches: impl FnMut(&EventRecord) -> bool,
    ) -> Result<Page<EventRecord, EventSeq>> {
        let store = self.store()?;
        newest_first(
            &store.events,
            before.map(EventSeq::to_be_bytes),
            want,
            budget,
            |key| EventSeq::new(read_u64(key)),
            matches,
        )
    }

    /// Up to `want` audit records that `matches` accepts, newest first,
    /// before record `before`; reads at most `budget`.
    pub fn audit_newest_first(
        &self,
        before: Option<u64>,
        want: usize,
        budget: usize,
        matches: impl FnMut(&AuditEntry) -> bool,
    ) -> Result<Page<AuditEntry, u64>> {
        let store = self.store()?;
        newest_first(
            &store.audit,
            before.map(u64::to_be_bytes),
            want,
            budget,
            read_u64,
            matches,
        )
    }

    /// Up to `max` audit records from record `from` on, oldest first: how a
    /// reader follows the trail as it grows.
    pub fn audit_entries_from(&self, from: u64, max: usize) -> Result<Vec<AuditEntry>> {
        let store = self.store()?;
        let mut entries = Vec::new();
        for key in store.audit.range(from.to_be_bytes()..).keys() {
            let key = key?;
            if key.len() != 8 {
                continue;
            }
            if entries.len() >= max {
                break;
            }
            if let Some(value) = store.audit.get(&key)? {
                entries.push(decode(&key, &value)?);
            }
        }
        Ok(entries)
    }

    /// The actions of event `seq` from its `offset`-th on, at most `count`,
    /// in creation order: a page of a plan of any size (only the page's
    /// actions are read).
    pub fn event_actions_page(
        &self,
        seq: EventSeq,
        offset: usize,
        count: usize,
    ) -> Result<Vec<ActionRecord>> {
        let mut page = Vec::with_capacity(count.min(1024));
        for id in self.event_action_ids(seq).skip(offset).take(count) {
            if let Some(action) = self.action(id?)? {
                page.push(action);
            }
        }
        Ok(page)
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use palworker_core::ActionState;
    use palworker_events::{Account, EmployeeId, Event, ObjectId, PartnerId, TenantId};

    use super::*;

    fn temp_ledger() -> (Ledger, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        let ledger = Ledger::open(&dir.path().join("ledger"), 1 << 20).expect("ledger opens");
        (ledger, dir)
    }

    /// A ledger with one event whose plan has `count` pending actions.
    fn ledger_with_actions(count: usize) -> (Ledger, tempfile::TempDir) {
        let (ledger, dir) = temp_ledger();
        let rows = (0..count).map(|n| {
            let account = Account {
                tenant_id: TenantId::parse("11111111-1111-4111-8111-111111111111").unwrap(),
                object_id: ObjectId::parse(&format!("{n:08x}-1111-4111-8111-111111111111"))
                    .unwrap(),
                employee_id: EmployeeId::parse(&format!("E-{n}")).unwrap(),
                credential: None,
                contract_id: None,
            };
            (account, Some(PartnerId::parse("111").unwrap()))
        });
        ledger.import_accounts(rows, Utc::now()).unwrap();
        let json = serde_json::json!({
            "specversion": "1.0", "id": "change", "source": "urn:test", "type": "partner.id.changed",
            "time": "2026-11-29T09:00:00Z",
            "data": {"old_partner_id": "111", "new_partner_id": "222"}
        });
        let event = Event::from_json_slice(&serde_json::to_vec(&json).unwrap()).unwrap();
        ledger.accept(&event, None, Utc::now(), usize::MAX).unwrap();
        (ledger, dir)
    }

    #[test]
    fn pages_of_actions_go_from_the_newest_to_the_oldest_without_gaps_or_repeats() {
        let (ledger, _dir) = ledger_with_actions(7);
        let mut seen = Vec::new();
        let mut before = None;
        loop {
            let page = ledger
                .actions_newest_first(&StatusFilter::default(), before, 3, 100)
                .unwrap();
            assert!(page.items.len() <= 3);
            seen.extend(page.items.iter().map(|a| a.action_id));
            match page.next {
                Some(next) => before = Some(next),
                None => break,
            }
        }
        let mut sorted = seen.clone();
        sorted.sort_by(|a, b| b.cmp(a));
        sorted.dedup();
        assert_eq!(seen, sorted, "newest first, no repeats");
        assert_eq!(seen.len(), 7);
    }

    #[test]
    fn a_rare_match_ends_a_page_at_the_budget_with_a_cursor_to_go_on() {
        let (ledger, _dir) = ledger_with_actions(7);
        let failed = StatusFilter {
            failed: true,
            ..StatusFilter::default()
        };
        let page = ledger.actions_newest_first(&failed, None, 10, 4).unwrap();
        assert!(page.items.is_empty());
        assert_eq!(page.scanned, 4);
        let rest = ledger
            .actions_newest_first(&failed, page.next, 10, 100)
            .unwrap();
        assert_eq!(rest.scanned, 3, "the rest, once");
        assert!(rest.next.is_none());
        let all = ledger
            .actions_newest_first(&StatusFilter::default(), None, 100, 100)
            .unwrap();
        assert!(all.items.iter().all(|a| a.state != ActionState::Failed));
    }

    #[test]
    fn a_plan_is_read_a_page_at_a_time_in_creation_order() {
        let (ledger, _dir) = ledger_with_actions(7);
        let event = ledger.resolve_event("change", None).unwrap();
        let all: Vec<ActionId> = ledger
            .event_actions(event.seq)
            .unwrap()
            .iter()
            .map(|a| a.action_id)
            .collect();
        let second: Vec<ActionId> = ledger
            .event_actions_page(event.seq, 3, 3)
            .unwrap()
            .iter()
            .map(|a| a.action_id)
            .collect();
        assert_eq!(second, all[3..6]);
        assert_eq!(ledger.event_actions_page(event.seq, 6, 3).unwrap().len(), 1);
    }

    #[test]
    fn an_empty_ledger_has_one_empty_page() {
        let (ledger, _dir) = temp_ledger();
        let page = ledger
            .actions_newest_first(&StatusFilter::default(), None, 10, 10)
            .unwrap();
        assert!(page.items.is_empty() && page.next.is_none());
        assert!(ledger.audit_entries_from(0, 10).unwrap().is_empty());
        assert_eq!(ledger.audit_next_seq().unwrap(), 0);
    }
}
