//! Reading accepted events back: by sequence, by CloudEvent id, their actions.

use palworker_core::{ActionId, ActionRecord, EventRecord, EventSeq};

use super::codec::{decode, read_u64};
use super::{Ledger, LedgerError, Result};
impl Ledger {
    pub fn event(&self, seq: EventSeq) -> Result<Option<EventRecord>> {
        let store = self.store()?;
        let key = seq.to_be_bytes();
        store
            .events
            .get(key)?
            .map(|bytes| decode(&key, &bytes))
            .transpose()
    }

    /// Finds accepted events by CloudEvent `id` (and `source` when given).
    pub fn find_events(&self, id: &str, source: Option<&str>) -> Result<Vec<EventRecord>> {
        let store = self.store()?;
        let mut out = Vec::new();
        let prefix = format!("eid:{id}\0");
        for item in store.index.scan_prefix(prefix.as_bytes()) {
            let (key, value) = item?;
            let found_source = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
            if source.is_some_and(|s| s != found_source) {
                continue;
            }
            if let Some(record) = self.event(EventSeq::new(read_u64(&value)))? {
                out.push(record);
            }
        }
        Ok(out)
    }

    /// Resolves the `EVENT` argument of `approve`/`reject`/`status --event`.
    pub fn resolve_event(&self, id: &str, source: Option<&str>) -> Result<EventRecord> {
        let mut found = self.find_events(id, source)?;
        match found.len() {
            0 => Err(LedgerError::Rejected(format!(
                "no accepted event has id `{id}`"
            ))),
            1 => Ok(found.remove(0)),
            _ => Err(LedgerError::Rejected(format!(
                "{} accepted events have id `{id}`; add --source (one of: {})",
                found.len(),
                found
                    .iter()
                    .map(|r| r.event.source.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    pub fn event_actions(&self, seq: EventSeq) -> Result<Vec<ActionRecord>> {
        self.iter_event_actions(seq).collect()
    }

    /// The actions of an event one at a time, in creation order (a large
    /// plan is never loaded whole).
    pub fn iter_event_actions(
        &self,
        seq: EventSeq,
    ) -> impl Iterator<Item = Result<ActionRecord>> + '_ {
        self.event_action_ids(seq)
            .filter_map(move |id| id.and_then(|id| self.action(id)).transpose())
    }

    /// The ids of an event's actions, in creation order: from its record,
    /// or from `event_actions` (large plans, older ledgers).
    pub(super) fn event_action_ids(
        &self,
        seq: EventSeq,
    ) -> Box<dyn Iterator<Item = Result<ActionId>> + '_> {
        let record = self
            .event(seq)
            .and_then(|record| Ok((record, self.store()?)));
        match record {
            Ok((
                Some(EventRecord {
                    action_ids: Some(ids),
                    ..
                }),
                _,
            )) => Box::new(ids.into_iter().map(Ok)),
            Ok((_, store)) => Box::new(
                store
                    .event_actions
                    .scan_prefix(seq.to_be_bytes())
                    .map(|item| Ok(ActionId::new(read_u64(&item?.0[8..])))),
            ),
            Err(error) => Box::new(std::iter::once(Err(error))),
        }
    }

    pub fn held_events(&self) -> Result<Vec<EventRecord>> {
        let store = self.store()?;
        let mut out = Vec::new();
        for item in store.index.scan_prefix(b"held:") {
            let (key, _) = item?;
            if let Some(record) = self.event(EventSeq::new(read_u64(&key[5..])))? {
                out.push(record);
            }
        }
        Ok(out)
    }
}
