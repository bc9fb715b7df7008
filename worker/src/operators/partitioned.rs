//! Operator commands across partitions (SPEC §10): [`Partitions`] sends
//! each command to every partition's admin API (`partitions.admin_urls`)
//! and puts the answers together, so `status`, `retry`, `approve`,
//! `reject`, `audit export`, `reconcile`, `report` and `inventory` work on
//! the whole deployment as on one process. `inventory import` sends each
//! row to its tenant's partition; `plan` asks the partitions the event
//! goes to. A ledger export stays per partition (`--partition I`).
//!
//! Rows are gathered partition by partition, in index order; each
//! partition's audit trail is its own hash chain, so `audit export` prints
//! the chains one after another and `audit verify` checks each.

use chrono::{DateTime, Utc};
use palworker_core::{
    ActionId, AuditEntry, Finding, InventoryEntry, ReconcileReport, ReleaseSummary, StatusFilter,
    StatusRow,
};
use palworker_events::{Event, ImportedAccount, PartitionCount, PartitionIndex};

use super::{
    AdminApiClient, AuditCheck, AuditCheckBreak, Decision, EventRef, Operations, OperatorError,
    PauseAnswer, RetryTarget,
};
use crate::ledger::{PauseState, RevocationRow};
use crate::reconcile::ReconcileRequest;

/// Every partition's admin API, in index order.
pub struct Partitions {
    count: PartitionCount,
    clients: Vec<(PartitionIndex, AdminApiClient)>,
}

impl Partitions {
    /// One client per partition, in index order (`partitions.admin_urls`).
    pub fn new(count: PartitionCount, clients: Vec<AdminApiClient>) -> anyhow::Result<Self> {
        anyhow::ensure!(
            clients.len() == count.get() as usize,
            "{} admin URLs for {count} partitions",
            clients.len()
        );
        Ok(Partitions {
            count,
            clients: count.all().zip(clients).collect(),
        })
    }

    /// Runs `command` on every partition in turn; the answers of those that
    /// have what it refers to. A partition's refusal ("no such event") only
    /// counts when every partition refused: then the first refusal is the
    /// answer. Any other failure stops at once.
    async fn on_each_that_knows<T>(
        &self,
        command: impl AsyncFn(&AdminApiClient) -> Result<T, OperatorError>,
    ) -> Result<Vec<T>, OperatorError> {
        let mut answers = Vec::new();
        let mut refusal = None;
        for (partition, client) in &self.clients {
            match command(client).await {
                Ok(answer) => answers.push(answer),
                Err(OperatorError::Refused(why)) => {
                    refusal.get_or_insert_with(|| format!("{partition}: {why}"));
                }
                Err(OperatorError::Failed(error)) => {
                    return Err(OperatorError::Failed(
                        error.context(format!("partition {partition}")),
                    ));
                }
            }
        }
        match (answers.is_empty(), refusal) {
            (true, Some(why)) => Err(OperatorError::Refused(why)),
            _ => Ok(answers),
        }
    }

    /// Runs `command` on every partition; every one must answer.
    async fn on_each<T>(
        &self,
        command: impl AsyncFn(&AdminApiClient) -> Result<T, OperatorError>,
    ) -> Result<Vec<T>, OperatorError> {
        let mut answers = Vec::with_capacity(self.clients.len());
        for (partition, client) in &self.clients {
            answers.push(command(client).await.map_err(|error| match error {
                OperatorError::Refused(why) => {
                    OperatorError::Refused(format!("{partition}: {why}"))
                }
                OperatorError::Failed(error) => {
                    OperatorError::Failed(error.context(format!("partition {partition}")))
                }
            })?);
        }
        Ok(answers)
    }

    fn client(&self, partition: PartitionIndex) -> &AdminApiClient {
        &self.clients[partition.get() as usize].1
    }
}

/// Accounts split by their tenant's partition, in index order.
pub fn split_accounts(
    count: PartitionCount,
    accounts: Vec<ImportedAccount>,
) -> Vec<(PartitionIndex, Vec<ImportedAccount>)> {
    let mut split: Vec<(PartitionIndex, Vec<ImportedAccount>)> = count
        .all()
        .map(|partition| (partition, Vec::new()))
        .collect();
    for account in accounts {
        let partition = count.of(&account.account.tenant_id);
        split[partition.get() as usize].1.push(account);
    }
    split
}

impl Operations for Partitions {
    async fn status(
        &self,
        filter: &StatusFilter,
        visit: &mut dyn FnMut(StatusRow) -> anyhow::Result<()>,
    ) -> Result<(), OperatorError> {
        let mut left = filter.limit;
        for (_, client) in &self.clients {
            if left == Some(0) {
                break;
            }
            let mut filter = filter.clone();
            filter.limit = left;
            let mut seen = 0u64;
            client
                .status(&filter, &mut |row| {
                    seen += 1;
                    visit(row)
                })
                .await?;
            left = left.map(|left| left.saturating_sub(seen));
        }
        Ok(())
    }

    async fn retry(&self, target: RetryTarget) -> Result<Vec<ActionId>, OperatorError> {
        let answers = match target {
            RetryTarget::AllFailed => self.on_each(async |c| c.retry(target).await).await?,
            RetryTarget::Action(_) => {
                self.on_each_that_knows(async |c| c.retry(target).await)
                    .await?
            }
        };
        Ok(answers.into_iter().flatten().collect())
    }

    async fn decide(
        &self,
        decision: Decision,
        event: &EventRef,
    ) -> Result<ReleaseSummary, OperatorError> {
        let answers = self
            .on_each_that_knows(async |c| c.decide(decision, event).await)
            .await?;
        let mut summary = answers
            .first()
            .cloned()
            .ok_or_else(|| OperatorError::Refused("no partition answered".to_owned()))?;
        summary.released = answers.iter().map(|a| a.released).sum();
        summary.cancelled = answers.iter().map(|a| a.cancelled).sum();
        Ok(summary)
    }

    async fn audit(
        &self,
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
        visit: &mut dyn FnMut(AuditEntry) -> anyhow::Result<()>,
    ) -> Result<(), OperatorError> {
        for (_, client) in &self.clients {
            client.audit(since, until, visit).await?;
        }
        Ok(())
    }

    async fn verify_audit(&self) -> Result<AuditCheck, OperatorError> {
        let checks = self.on_each(async |c| c.verify_audit().await).await?;
        let records = checks.iter().map(|check| check.records).sum();
        let broken = self
            .clients
            .iter()
            .zip(checks)
            .find_map(|((partition, _), check)| {
                check.broken.map(|broken| AuditCheckBreak {
                    seq: broken.seq,
                    reason: format!("partition {partition}: {}", broken.reason),
                })
            });
        Ok(AuditCheck { records, broken })
    }

    async fn set_pause(&self, state: PauseState) -> Result<PauseAnswer, OperatorError> {
        let answers = self.on_each(async |c| c.set_pause(state).await).await?;
        Ok(PauseAnswer {
            paused: answers.iter().all(|a| a.paused),
            was_paused: answers.iter().all(|a| a.was_paused),
        })
    }

    async fn export_ledger(
        &self,
        _out: &mut (dyn std::io::Write + Send),
    ) -> Result<u64, OperatorError> {
        Err(OperatorError::Refused(format!(
            "each of the {} partitions has a ledger of its own: export one with --partition I",
            self.count
        )))
    }

    async fn inventory(
        &self,
        employee: Option<&str>,
        tenant: Option<&str>,
    ) -> Result<Vec<InventoryEntry>, OperatorError> {
        let lists = self
            .on_each(async |c| c.inventory(employee, tenant).await)
            .await?;
        Ok(lists.into_iter().flatten().collect())
    }

    async fn import(&self, accounts: Vec<ImportedAccount>) -> Result<u64, OperatorError> {
        let mut imported = 0;
        for (partition, accounts) in split_accounts(self.count, accounts) {
            if accounts.is_empty() {
                continue;
            }
            imported += self.client(partition).import(accounts).await.map_err(|e| {
                OperatorError::Failed(anyhow::anyhow!(
                    "importing partition {partition}'s accounts: {e} (the partitions before it are imported; importing the file again is safe)"
                ))
            })?;
        }
        Ok(imported)
    }

    async fn plan(&self, event: Vec<u8>) -> Result<serde_json::Value, OperatorError> {
        let parsed = Event::from_json_slice(&event)
            .map_err(|error| OperatorError::Refused(error.to_string()))?;
        let mut merged: Option<serde_json::Value> = None;
        for partition in self.count.of_event(&parsed) {
            let plan = self.client(partition).plan(event.clone()).await?;
            match &mut merged {
                None => merged = Some(plan),
                Some(merged) => {
                    let actions = plan["actions"].as_array().cloned().unwrap_or_default();
                    if let Some(all) = merged["actions"].as_array_mut() {
                        all.extend(actions);
                    }
                }
            }
        }
        merged.ok_or_else(|| OperatorError::Refused("the event concerns no partition".to_owned()))
    }

    async fn reconcile(
        &self,
        request: &ReconcileRequest,
        visit: &mut dyn FnMut(Finding) -> anyhow::Result<()>,
    ) -> Result<ReconcileReport, OperatorError> {
        let mut total: Option<ReconcileReport> = None;
        for (partition, client) in &self.clients {
            if let Some(tenant) = &request.tenant_id
                && self.count.of(tenant) != *partition
            {
                continue;
            }
            let report = client.reconcile(request, visit).await?;
            total = Some(match total {
                None => report,
                Some(total) => add_reports(total, report),
            });
        }
        Ok(total.unwrap_or_default())
    }

    async fn revocations(
        &self,
        since: Option<DateTime<Utc>>,
        visit: &mut dyn FnMut(RevocationRow) -> anyhow::Result<()>,
    ) -> Result<(), OperatorError> {
        for (_, client) in &self.clients {
            client.revocations(since, visit).await?;
        }
        Ok(())
    }
}

/// Two partitions' reconcile reports as one: counts added; the planned
/// event is the first partition's that planned one (each partition plans
/// its own `palworker.reconcile` event).
fn add_reports(total: ReconcileReport, next: ReconcileReport) -> ReconcileReport {
    ReconcileReport {
        event_id: total.event_id.or(next.event_id),
        tenant_id: total.tenant_id,
        employee_id: total.employee_id,
        dry_run: total.dry_run,
        accounts: total.accounts + next.accounts,
        read: total.read + next.read,
        missing: total.missing + next.missing,
        unexpected: total.unexpected + next.unexpected,
        different: total.different + next.different,
        manual: total.manual + next.manual,
        unreadable: total.unreadable + next.unreadable,
        busy: total.busy + next.busy,
        actions: total.actions + next.actions,
        superseded: total.superseded + next.superseded,
        held: total.held || next.held,
        started_at: match (total.started_at, next.started_at) {
            (Some(first), Some(second)) => Some(first.min(second)),
            (first, second) => first.or(second),
        },
        finished_at: total.finished_at.max(next.finished_at),
    }
}
