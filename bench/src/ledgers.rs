//! Ledgers the scenarios build in this process, without a worker: a large
//! plan's actions claimed and ended as fast as the ledger takes them.

use chrono::{DateTime, Utc};
use palworker::ledger::Ledger;
use palworker_core::ActionRecord;

/// Actions claimed and ended per transaction (the executor's own group
/// commit).
const BUILD_BATCH: usize = 1_024;

/// Claims every due action, a batch per transaction, and records each as
/// `end` leaves it — given the batch's instant, which also becomes its
/// `completed_at` and `updated_at`.
pub fn end_every_due_action(
    ledger: &Ledger,
    mut end: impl FnMut(&mut ActionRecord, DateTime<Utc>),
) -> anyhow::Result<()> {
    loop {
        let now = Utc::now();
        let due: Vec<_> = ledger
            .due_actions(now, BUILD_BATCH, |_| false)?
            .into_iter()
            .map(|action| action.action_id)
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        let claimed = ledger.finish_and_claim(&[], &due, now)?.claimed;
        let finished: Vec<ActionRecord> = claimed
            .into_iter()
            .flatten()
            .map(|mut action| {
                end(&mut action, now);
                action.completed_at = Some(now);
                action.updated_at = now;
                action
            })
            .collect();
        ledger.finish_and_claim(&finished, &[], now)?;
    }
}
