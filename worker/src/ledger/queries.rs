//! Reading actions back: by id, by filter, all of them.

use std::collections::BTreeMap;

use palworker_core::{ActionId, ActionRecord, StatusFilter};

use super::codec::decode;
use super::{Ledger, Result};
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

    /// Actions matching a filter, in creation order.
    pub fn actions(&self, filter: &StatusFilter) -> Result<Vec<ActionRecord>> {
        let store = self.store()?;
        let mut out = Vec::new();
        if let Some(id) = &filter.event_id {
            for record in self.find_events(id, filter.event_source.as_deref())? {
                for action in self.event_actions(record.seq)? {
                    if filter.matches(&action) {
                        out.push(action);
                    }
                }
            }
            out.sort_by_key(|a| a.action_id);
            return Ok(out);
        }
        for item in store.actions.iter() {
            let (key, value) = item?;
            let action: ActionRecord = decode(&key, &value)?;
            if filter.matches(&action) {
                out.push(action);
            }
        }
        Ok(out)
    }

    /// Visits every action (for audit export) without collecting them.
    pub fn for_each_action(&self, mut visit: impl FnMut(ActionRecord)) -> Result<()> {
        let store = self.store()?;
        for item in store.actions.iter() {
            let (key, value) = item?;
            visit(decode(&key, &value)?);
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
