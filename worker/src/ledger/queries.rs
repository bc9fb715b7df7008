//! Reading actions back: by id, by filter, all of them — one at a time, so
//! no query (`status`, `audit export`, the admin API's answers) ever holds
//! every action in memory.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;

use palworker_core::{ActionId, ActionRecord, EventSeq, StatusFilter};

use super::codec::decode;
use super::{Ledger, Result};

/// Actions read from the `actions` tree per visit of the database. A reader
/// whose consumer is slow (an admin API client reading a long answer) holds
/// no database handle while it waits, so [`Ledger::reopen`] never waits on
/// it; and at most one page of records is decoded ahead of the consumer
/// (64: the streamed `status` of 100,000 actions measured about 1 MiB less
/// than with 256, no slower).
const SCAN_PAGE: usize = 64;

/// The entries of `entries` (an iterator over `tree`), each value read
/// again by a point lookup of its key — how every scan of a whole tree
/// reads, so that it leaves no more resident than the cache allows.
///
/// sled 0.34 charges pages to its cache, and evicts beyond
/// `cache_capacity`, only on every 64th access to one of its 256 LRU
/// shards, and an iterator reads each page once (it keeps a copy of the
/// page it is on). One pass of an iterator over a large tree therefore
/// evicted nothing and left every page it read in memory: `status --json`
/// over 100,000 actions added about 70 MiB to the reader's RSS, whatever
/// `cache_capacity` said. The point lookups count as accesses, so the
/// cache evicts as the scan goes (the same scan: about 12 MiB, within a
/// 16 MiB cache). An entry removed between the two reads is skipped.
pub(super) fn evicting<'a>(
    tree: &'a sled::Tree,
    entries: sled::Iter,
) -> impl Iterator<Item = Result<(sled::IVec, sled::IVec)>> + 'a {
    entries.keys().filter_map(move |key| {
        let key = match key {
            Ok(key) => key,
            Err(error) => return Some(Err(error.into())),
        };
        match tree.get(&key) {
            Ok(Some(value)) => Some(Ok((key, value))),
            Ok(None) => None,
            Err(error) => Some(Err(error.into())),
        }
    })
}

impl Ledger {
    pub fn action(&self, id: ActionId) -> Result<Option<ActionRecord>> {
        let store = self.store()?;
        let key = id.to_be_bytes();
        store
            .actions
            .get(key)?
            .map(|bytes| decode(&key, &bytes))
            .transpose()
    }

    /// The actions matching `filter`, one at a time, in creation order, at
    /// most `filter.limit` of them. With `event_id` only that event's
    /// actions are read; otherwise the whole `actions` tree, a page at a
    /// time. An error ends the iteration.
    pub fn iter_actions(
        &self,
        filter: StatusFilter,
    ) -> impl Iterator<Item = Result<ActionRecord>> + '_ {
        let limit = filter.limit.map_or(usize::MAX, |limit| {
            usize::try_from(limit).unwrap_or(usize::MAX)
        });
        let source: Box<dyn Iterator<Item = Result<ActionRecord>> + '_> = match &filter.event_id {
            Some(id) => self.actions_of_event_id(id, filter.event_source.as_deref()),
            None => Box::new(self.scan_actions()),
        };
        source
            .filter(move |item| item.as_ref().map_or(true, |action| filter.matches(action)))
            .take(limit)
    }

    /// [`Ledger::iter_actions`], collected: for tests and callers that know
    /// the answer is small (one event's actions).
    pub fn actions(&self, filter: &StatusFilter) -> Result<Vec<ActionRecord>> {
        self.iter_actions(filter.clone()).collect()
    }

    /// The actions of the events with CloudEvent id `id` (and `source`),
    /// event by event in acceptance order — which is creation order: a plan
    /// is written under the planning lock, its action ids drawn as it is.
    fn actions_of_event_id(
        &self,
        id: &str,
        source: Option<&str>,
    ) -> Box<dyn Iterator<Item = Result<ActionRecord>> + '_> {
        let seqs: Vec<EventSeq> = match self.find_events(id, source) {
            Ok(records) => {
                let mut seqs: Vec<EventSeq> = records.iter().map(|record| record.seq).collect();
                seqs.sort();
                seqs
            }
            Err(error) => return Box::new(std::iter::once(Err(error))),
        };
        Box::new(
            seqs.into_iter()
                .flat_map(move |seq| self.iter_event_actions(seq)),
        )
    }

    /// Every action in key (creation) order, read a page of [`SCAN_PAGE`]
    /// at a time.
    fn scan_actions(&self) -> impl Iterator<Item = Result<ActionRecord>> + '_ {
        let mut page = VecDeque::new();
        let mut after: Option<ActionId> = None;
        let mut exhausted = false;
        std::iter::from_fn(move || {
            if page.is_empty() && !exhausted {
                match self.actions_page(after, SCAN_PAGE) {
                    Ok(records) => {
                        exhausted = records.len() < SCAN_PAGE;
                        after = records.last().map(|action| action.action_id);
                        page.extend(records);
                    }
                    Err(error) => {
                        exhausted = true;
                        return Some(Err(error));
                    }
                }
            }
            page.pop_front().map(Ok)
        })
    }

    /// Up to `max` actions after `after` (from the first when `None`).
    fn actions_page(&self, after: Option<ActionId>, max: usize) -> Result<Vec<ActionRecord>> {
        let store = self.store()?;
        let start = match after {
            Some(id) => Bound::Excluded(id.to_be_bytes()),
            None => Bound::Unbounded,
        };
        let entries = store.actions.range((start, Bound::Unbounded));
        evicting(&store.actions, entries)
            .take(max)
            .map(|entry| {
                let (key, value) = entry?;
                decode(&key, &value)
            })
            .collect()
    }

    /// Visits every action without collecting them.
    pub fn for_each_action(&self, mut visit: impl FnMut(ActionRecord)) -> Result<()> {
        for action in self.scan_actions() {
            visit(action?);
        }
        Ok(())
    }

    /// Counts of actions by state (for summaries and `wait_until_settled`).
    pub fn action_state_counts(&self) -> Result<BTreeMap<&'static str, u64>> {
        let mut counts = BTreeMap::new();
        self.for_each_action(|action| *counts.entry(action.state.as_str()).or_insert(0) += 1)?;
        Ok(counts)
    }
}
