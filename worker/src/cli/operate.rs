//! The operator commands, run against either target, and how their
//! answers are printed.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use chrono::{DateTime, Utc};
use palworker_config::Settings;
use palworker_events::{EmployeeId, Event, PartitionCount, PartitionIndex, TenantId};

use palworker_core::views::shorten;
use palworker_core::{
    AuditEntry, Finding, InventoryEntry, ReconcileReport, ReleaseSummary, StatusFilter, StatusRow,
};

use crate::clock::SystemClock;
use crate::ledger::Ledger;

use crate::ledger::PauseState;
use crate::operators::{Decision, EventRef, Operations, OperatorError, RetryTarget};
use crate::reconcile::{ReconcileRequest, Reconciler};

use super::{
    AuditCommand, EventArg, InventoryCommand, OperatorCommand, ReconcileArgs, ReportCommand,
    ReportFormat, UsageError,
};

pub(super) fn read_event(path: &Path) -> anyhow::Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading `{}`", path.display()))?;
    Event::from_json_slice(&bytes).map_err(|e| UsageError(format!("`{}`: {e}", path.display())))?;
    Ok(bytes)
}

/// One partition of several, when a command goes to it alone.
#[derive(Debug, Clone, Copy)]
pub(super) struct OnePartition {
    pub count: PartitionCount,
    pub index: PartitionIndex,
}

/// Runs an operator command against either target; `only`: the target is
/// one partition of several, so an import refuses other partitions' rows.
pub(super) async fn operate(
    target: &impl Operations,
    command: OperatorCommand,
    only: Option<OnePartition>,
) -> anyhow::Result<()> {
    match command {
        OperatorCommand::Plan { event } => {
            let plan = target.plan(read_event(&event)?).await?;
            println!("{}", serde_json::to_string_pretty(&plan)?);
        }
        OperatorCommand::Inventory(InventoryCommand::Import { file }) => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading `{}`", file.display()))?;
            // The whole file is validated here first: a bad row anywhere
            // imports nothing, whether the worker runs or not.
            let accounts = palworker_events::parse_import(&text)
                .map_err(|error| UsageError(format!("`{}`: {error}", file.display())))?;
            drop(text);
            if let Some(OnePartition { count, index }) = only
                && let Some(foreign) = accounts
                    .iter()
                    .find(|row| count.of(&row.account.tenant_id) != index)
            {
                return Err(UsageError(format!(
                    "`{}`: tenant {} belongs to partition {}, not {index}; without --partition each row goes to its own partition",
                    file.display(),
                    foreign.account.tenant_id,
                    count.of(&foreign.account.tenant_id)
                ))
                .into());
            }
            let progress = crate::progress::spinner("importing accounts");
            let imported = target.import(accounts).await.map_err(|error| match error {
                OperatorError::Refused(message) => {
                    UsageError(format!("`{}`: {message}", file.display())).into()
                }
                OperatorError::Failed(error) => error,
            })?;
            progress.finish_and_clear();
            println!("imported {imported} account(s)");
        }
        OperatorCommand::Inventory(InventoryCommand::List {
            employee,
            tenant,
            json,
        }) => {
            let entries = target
                .inventory(employee.as_deref(), tenant.as_deref())
                .await?;
            print_inventory(&entries, json)?;
        }
        OperatorCommand::Status(args) => {
            let filter = StatusFilter {
                event_id: args.event,
                event_source: args.source,
                employee_id: args.employee,
                tenant_id: args.tenant,
                failed: args.failed,
                manual: args.manual,
                since: args.since,
                limit: args.limit,
            };
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            if !args.json {
                print_status_header(&mut out)?;
            }
            target
                .status(&filter, &mut |row| {
                    print_status_row(&mut out, &row, args.json)
                })
                .await?;
            out.flush()?;
        }
        OperatorCommand::Retry(args) => {
            let target_actions = match args.action {
                Some(id) => RetryTarget::Action(id),
                None => RetryTarget::AllFailed,
            };
            let retried = target.retry(target_actions).await?;
            let ids: Vec<u64> = retried.iter().map(|id| id.get()).collect();
            println!("queued {} action(s) again: {:?}", ids.len(), ids);
        }
        OperatorCommand::Approve(arg) => {
            let summary = target.decide(Decision::Approve, &arg.into()).await?;
            print_release("approved", &summary);
        }
        OperatorCommand::Reject(arg) => {
            let summary = target.decide(Decision::Reject, &arg.into()).await?;
            print_release("rejected", &summary);
        }
        OperatorCommand::Audit(AuditCommand::Export { since, until }) => {
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let progress = crate::progress::counter("exporting the audit trail");
            target
                .audit(since, until, &mut |entry: AuditEntry| {
                    writeln!(out, "{}", serde_json::to_string(&entry)?)?;
                    progress.inc(1);
                    Ok(())
                })
                .await?;
            progress.finish_and_clear();
            out.flush()?;
        }
        OperatorCommand::Audit(AuditCommand::Verify) => {
            let check = target.verify_audit().await?;
            match check.broken {
                None => println!(
                    "the audit trail is intact: {} record(s), every hash matches",
                    check.records
                ),
                Some(broken) => anyhow::bail!(
                    "the audit trail is broken at record {}: {} ({} record(s) before it verified)",
                    broken.seq,
                    broken.reason,
                    check.records
                ),
            }
        }
        OperatorCommand::Pause => {
            let answer = target.set_pause(PauseState::Paused).await?;
            println!(
                "{}: nothing is written to PAL; events are still accepted and planned, actions wait until `palworker resume`",
                if answer.was_paused {
                    "writes to PAL were already paused"
                } else {
                    "paused writes to PAL"
                }
            );
        }
        OperatorCommand::Resume => {
            let answer = target.set_pause(PauseState::Running).await?;
            println!(
                "{}",
                if answer.was_paused {
                    "resumed writes to PAL: pending actions run now"
                } else {
                    "writes to PAL were not paused"
                }
            );
        }
        OperatorCommand::Report(ReportCommand::Revocations { since, format }) => {
            report_revocations(target, since, format).await?;
        }
        OperatorCommand::Reconcile(args) => reconcile(target, args).await?,
    }
    Ok(())
}

/// The reconciler of the CLI on a stopped worker's ledger: a PAL client of
/// its own with the worker's settings (its rate limit is this process's
/// alone; no worker sends requests meanwhile).
pub(super) fn local_reconciler(
    settings: &Settings,
    ledger: Arc<Ledger>,
) -> anyhow::Result<Reconciler> {
    let clock: Arc<dyn crate::clock::Clock> = Arc::new(SystemClock);
    let metrics = crate::telemetry::Metrics::new();
    let pal = crate::pal::PalClient::new(
        &settings.pal,
        &settings.credentials,
        settings.limits.per_tenant_rps,
        metrics.clone(),
        clock.clone(),
    )
    .context("setting up the PAL client")?;
    Ok(Reconciler::new(
        ledger,
        pal,
        metrics,
        clock,
        settings.limits.max_actions_per_event,
        None,
    ))
}

/// `reconcile`: each finding as it is made (JSON Lines with `--dry-run`
/// or `--json`, else a line of text), then the report (`--json`: as JSON;
/// a dry run's summary goes to standard error, so its output is the
/// findings only).
pub(super) async fn reconcile(target: &impl Operations, args: ReconcileArgs) -> anyhow::Result<()> {
    let request = ReconcileRequest {
        tenant_id: args
            .tenant
            .as_deref()
            .map(TenantId::parse)
            .transpose()
            .map_err(|error| UsageError(format!("--tenant: {error}")))?,
        employee_id: args
            .employee
            .as_deref()
            .map(EmployeeId::parse)
            .transpose()
            .map_err(|error| UsageError(format!("--employee: {error}")))?,
        dry_run: args.dry_run,
    };
    let lines = args.json || args.dry_run;
    let mut out = std::io::stdout();
    let report = target
        .reconcile(&request, &mut |finding| {
            if lines {
                writeln!(out, "{}", serde_json::to_string(&finding)?)?;
            } else {
                writeln!(out, "{}", finding_text(&finding))?;
            }
            Ok(())
        })
        .await?;
    if args.dry_run {
        eprintln!("{}", reconcile_summary(&report));
    } else if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{}", reconcile_summary(&report));
    }
    Ok(())
}

/// One finding as a line of text.
pub(super) fn finding_text(finding: &Finding) -> String {
    let partner = |id: Option<&palworker_events::PartnerId>| {
        id.map_or_else(|| "none".to_owned(), |id| id.to_string())
    };
    let mut text = format!(
        "{:<10} {}/{} employee {} desired {} actual {}",
        finding.kind.as_str(),
        finding.tenant_id,
        finding.object_id,
        finding.employee_id,
        partner(finding.desired.as_ref()),
        partner(finding.actual.as_ref()),
    );
    if let Some(error) = &finding.error {
        text.push_str(&format!(" ({error})"));
    }
    text
}

/// What a reconcile found and did, in words.
pub(super) fn reconcile_summary(report: &ReconcileReport) -> String {
    let mut text = format!(
        "{} account(s) in scope, {} read: {} missing, {} unexpected, {} different; \
         {} manual (no credential), {} unreadable, {} busy (an action runs).",
        report.accounts,
        report.read,
        report.missing,
        report.unexpected,
        report.different,
        report.manual,
        report.unreadable,
        report.busy,
    );
    if report.dry_run {
        text.push_str(" Dry run: nothing planned.");
        return text;
    }
    match &report.event_id {
        Some(event_id) if report.held => text.push_str(&format!(
            " Planned event `{event_id}` with {} action(s), HELD: more than \
             limits.max_actions_per_event; run `palworker approve {event_id}`.",
            report.actions
        )),
        Some(event_id) => text.push_str(&format!(
            " Planned event `{event_id}` with {} action(s).",
            report.actions
        )),
        None => text.push_str(" Nothing to plan."),
    }
    if report.superseded > 0 {
        text.push_str(&format!(
            " {} difference(s) left to the events that came in meanwhile.",
            report.superseded
        ));
    }
    text
}

/// `report revocations`: rows as they arrive, as CSV (lists joined with
/// `;`) or JSON Lines.
pub(super) async fn report_revocations(
    target: &impl Operations,
    since: Option<DateTime<Utc>>,
    format: ReportFormat,
) -> anyhow::Result<()> {
    let out = std::io::BufWriter::new(std::io::stdout().lock());
    match format {
        ReportFormat::Json => {
            let mut out = out;
            target
                .revocations(since, &mut |row| {
                    writeln!(out, "{}", serde_json::to_string(&row)?)?;
                    Ok(())
                })
                .await?;
            out.flush()?;
        }
        ReportFormat::Csv => {
            let mut csv = csv::Writer::from_writer(out);
            csv.write_record([
                "employee_ids",
                "event_id",
                "event_source",
                "event_type",
                "effective_at",
                "accepted_at",
                "tenant_ids",
                "links_removed",
                "links_orphaned",
                "links_open",
                "last_removed_at",
                "seconds",
            ])?;
            let join = |items: Vec<String>| items.join(";");
            target
                .revocations(since, &mut |row| {
                    csv.write_record([
                        join(row.employee_ids.iter().map(|e| e.to_string()).collect()),
                        row.event_id,
                        row.event_source,
                        row.event_type.to_string(),
                        row.effective_at.to_rfc3339(),
                        row.accepted_at.to_rfc3339(),
                        join(row.tenant_ids.iter().map(|t| t.to_string()).collect()),
                        row.links_removed.to_string(),
                        row.links_orphaned.to_string(),
                        row.links_open.to_string(),
                        row.last_removed_at
                            .map(|at| at.to_rfc3339())
                            .unwrap_or_default(),
                        row.seconds.map(|s| s.to_string()).unwrap_or_default(),
                    ])?;
                    Ok(())
                })
                .await?;
            csv.flush()?;
        }
    }
    Ok(())
}

impl From<EventArg> for EventRef {
    fn from(arg: EventArg) -> Self {
        EventRef {
            event: arg.event,
            source: arg.source,
        }
    }
}

pub(super) fn print_release(verb: &str, summary: &ReleaseSummary) {
    println!(
        "{verb} event `{}` ({}): {} action(s) released, {} cancelled",
        summary.event_id, summary.event_source, summary.released, summary.cancelled
    );
}

pub(super) fn print_inventory(entries: &[InventoryEntry], json: bool) -> anyhow::Result<()> {
    if json {
        for entry in entries {
            println!("{}", serde_json::to_string(entry)?);
        }
        return Ok(());
    }
    println!(
        "{:<36}  {:<36}  {:<14}  {:<14}  {:<10}  {:<12}  ACTIVE",
        "TENANT", "OBJECT", "EMPLOYEE", "CREDENTIAL", "CONTRACT", "DESIRED"
    );
    for entry in entries {
        let account = &entry.account;
        println!(
            "{:<36}  {:<36}  {:<14}  {:<14}  {:<10}  {:<12}  {}",
            account.tenant_id,
            account.object_id,
            account.employee_id,
            account
                .credential
                .as_ref()
                .map(|c| c.as_str())
                .unwrap_or("-"),
            account
                .contract_id
                .as_ref()
                .map(|c| c.as_str())
                .unwrap_or("-"),
            entry
                .desired
                .partner_id()
                .map(|p| p.as_str())
                .unwrap_or("absent"),
            if entry.assignment_active { "yes" } else { "no" }
        );
    }
    Ok(())
}

pub(super) fn print_status_header(out: &mut impl Write) -> anyhow::Result<()> {
    writeln!(
        out,
        "{:>8}  {:<24}  {:<26}  {:<8}  {:<36}  {:<12}  {:<10}  {:>3}  LAST ERROR / DETAIL",
        "ACTION", "EVENT", "TYPE", "OP", "TENANT", "EMPLOYEE", "STATE", "TRY"
    )?;
    Ok(())
}

pub(super) fn print_status_row(
    out: &mut impl Write,
    row: &StatusRow,
    json: bool,
) -> anyhow::Result<()> {
    if json {
        writeln!(out, "{}", serde_json::to_string(row)?)?;
        return Ok(());
    }
    let action = &row.action;
    let note = action
        .last_error
        .as_deref()
        .or(action.detail.as_deref())
        .unwrap_or("");
    writeln!(
        out,
        "{:>8}  {:<24}  {:<26}  {:<8}  {:<36}  {:<12}  {:<10}  {:>3}  {}",
        action.action_id.get(),
        shorten(&action.event_id, 24),
        action.event_type.as_str(),
        action.op.as_str(),
        action.tenant_id.as_str(),
        shorten(action.employee_id.as_str(), 12),
        row.state.as_str(),
        action.attempts,
        shorten(note, 120)
    )?;
    Ok(())
}
