//! The command line (SPEC §8). `main.rs` only calls [`main`].
//!
//! Operator commands open the ledger directly when no worker holds it, and
//! otherwise go through the running worker's admin API: on this machine
//! through its admin socket in the ledger directory (no token: the worker
//! checks who connects), else — or when there is no ledger on this machine,
//! or `--operator` names a token — on `http.listen` with a token. So
//! nothing ever requires stopping the worker — except `ledger check`, which
//! recounts a ledger nobody writes meanwhile (see `ledger::check`), and
//! `ledger import`, which makes a new ledger. The audit trail records who
//! ran a command: the admin token's name over TCP (`--operator`), the OS
//! user on the ledger or through the socket.
//!
//! | file | holds |
//! | --- | --- |
//! | `mod.rs` | the arguments ([`Cli`]), [`main`], dispatching a command |
//! | `target.rs` | where an operator command goes: ledger, admin socket or TCP |
//! | `operate.rs` | the operator commands and how their answers print |
//! | `ledger_files.rs` | `ledger export`, `ledger import`, `ledger check` |

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};
use palworker_config::Settings;
use palworker_events::Event;

use palworker_core::ActionId;

use crate::clock::SystemClock;
use crate::ledger::CheckMode;
use crate::logging::LogFormat;

mod ledger_files;
mod operate;
mod target;

use ledger_files::{CheckOutput, check_ledger, export_ledger, import_ledger, repartition_exports};
use operate::{local_reconciler, operate};
use target::{Create, Target};

#[derive(Debug, Parser)]
#[command(
    name = "palworker",
    version,
    about = "Keeps Partner Admin Links in step with HR and project lifecycle events."
)]
pub struct Cli {
    /// Configuration file (TOML). Keys can be overridden by PALWORKER__SECTION__KEY.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// The admin token (by its name in `http.admin_tokens`) operator
    /// commands present to a running worker; the audit trail records the
    /// name. Default: `admin`, or the only token configured.
    #[arg(long, global = true, value_name = "NAME")]
    pub operator: Option<String>,
    /// With partitions (SPEC §10): send an operator command to this
    /// partition only. Without it, commands gather from every partition
    /// in partitions.admin_urls.
    #[arg(long, global = true, value_name = "I")]
    pub partition: Option<u32>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the worker: consume, plan, execute, serve HTTP. Stops gracefully on SIGTERM/SIGINT.
    /// With partitions.count > 1 it owns partition partitions.index (SPEC §10).
    Run,
    /// The router (partitions.count > 1): the events queue to each event's
    /// tenant partitions, with publisher confirms; serves /metrics,
    /// /healthz and /readyz. Stateless: run as many as you like.
    Route,
    /// Print the RabbitMQ definitions (JSON, the management plugin's
    /// import format) of the topology for N partitions: exchanges, queues
    /// with their arguments, bindings. Users and permissions are not printed.
    Topology {
        /// How many partitions (default: partitions.count).
        #[arg(long, value_name = "N")]
        partitions: Option<u32>,
    },
    #[command(flatten)]
    Operator(OperatorCommand),
    /// Publish one CloudEvent (or a JSON Lines file of them) with publisher confirms.
    Publish {
        file: PathBuf,
        /// AMQP user_id property (must equal the connection's user; RabbitMQ validates it).
        #[arg(long)]
        user_id: Option<String>,
        /// Publish even events palworker itself would dead-letter (to test a DLQ).
        #[arg(long)]
        no_validate: bool,
    },
    /// A local PAL + token-endpoint simulator (PAL-API.md), for development, demos and tests.
    Sim {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Simulator configuration (JSON: clients, faults, seed links).
        #[arg(long, value_name = "FILE")]
        clients: Option<PathBuf>,
    },
    /// End-to-end demo: simulator in-process, local RabbitMQ, sample events, summary.
    Demo,
    /// The ledger itself: consistency check, export (backup), import (restore).
    #[command(subcommand)]
    Ledger(LedgerCommand),
}

#[derive(Debug, Subcommand)]
pub enum LedgerCommand {
    /// Write a consistent snapshot of the whole ledger as JSON Lines (the
    /// backup; see the README for the format). Works while the worker runs.
    Export {
        /// The file to write (`-`: standard output). Written whole or not at all.
        file: PathBuf,
    },
    /// Load an export into a new ledger at `ledger.path` (which must not
    /// exist yet, or be empty): the restore, or a move to another machine.
    Import { file: PathBuf },
    /// Split or merge the exports of N partitions into M (SPEC §10): each
    /// account goes to its tenant's partition; writes
    /// DIR/partition-{i}.jsonl for i in 0..M, to `ledger import` into each
    /// new partition. Refuses ledgers with open work. Events, actions and
    /// audit trails stay in the source exports (their archive).
    Repartition {
        /// The number of partitions to make.
        #[arg(long, value_name = "M")]
        count: u32,
        /// The directory to write the new exports to.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// The exports of every current partition.
        #[arg(required = true)]
        exports: Vec<PathBuf>,
    },
    /// Recompute every counter and index from the records and print each
    /// difference (exit 1 if any). Needs the worker stopped.
    Check {
        /// Rewrite each difference from the records, then check again
        /// (exit 0 when the ledger is consistent afterwards).
        #[arg(long)]
        repair: bool,
        /// JSON Lines, one object per difference.
        #[arg(long)]
        json: bool,
    },
}

/// The commands that work on the ledger, whether the worker runs or not.
#[derive(Debug, Subcommand)]
pub enum OperatorCommand {
    /// Print the plan an event would produce against the current inventory; changes nothing.
    Plan {
        #[arg(long, value_name = "FILE")]
        event: PathBuf,
    },
    /// Load or list the inventory.
    #[command(subcommand)]
    Inventory(InventoryCommand),
    /// Every action with state, attempts, last error, timestamps.
    Status(StatusArgs),
    /// Re-run failed actions.
    Retry(RetryArgs),
    /// Release a held plan.
    Approve(EventArg),
    /// Discard a held plan.
    Reject(EventArg),
    /// The audit trail: export it, verify its hash chain.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Stop writing to PAL: events are still accepted and planned, actions
    /// wait pending until `resume`. Kept across restarts.
    Pause,
    /// Write to PAL again.
    Resume,
    /// Reports for compliance.
    #[command(subcommand)]
    Report(ReportCommand),
    /// Read PAL for every account in scope that has a credential, compare
    /// it with the desired link, and plan ONE `palworker.reconcile` event
    /// whose actions fix each difference (held above
    /// limits.max_actions_per_event, like any plan). Prints each finding
    /// (missing, unexpected, different; manual: no credential; unreadable),
    /// then a summary.
    Reconcile(ReconcileArgs),
}

#[derive(Debug, Args)]
pub struct ReconcileArgs {
    /// Only this tenant's accounts.
    #[arg(long)]
    tenant: Option<String>,
    /// Only this employee's accounts.
    #[arg(long)]
    employee: Option<String>,
    /// Print the findings only, one JSON object per line (tenant_id,
    /// object_id, employee_id, desired, actual, kind); plan nothing.
    #[arg(long)]
    dry_run: bool,
    /// JSON Lines: one object per finding, then the report.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// Time to revocation: one row per event that removes links — employee,
    /// event, effective time, tenants, when its last link was verified
    /// gone, how many seconds that took, and links still open.
    Revocations {
        /// Only events whose removals were due (effective_at, else
        /// acceptance) at or after this RFC 3339 time.
        #[arg(long)]
        since: Option<DateTime<Utc>>,
        /// CSV with a header row, or JSON Lines.
        #[arg(long, value_enum, default_value_t = ReportFormat::Csv)]
        format: ReportFormat,
    },
}

/// How `report` prints its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    Csv,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum InventoryCommand {
    /// Load accounts from JSON Lines or CSV (header row).
    Import { file: PathBuf },
    /// List accounts.
    List {
        #[arg(long)]
        employee: Option<String>,
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// JSON Lines of the audit trail: every action outcome (pruned actions'
    /// too), approval, rejection, retry, pause, resume and reconcile, with
    /// who, when and the hash chain.
    Export {
        /// Only records at or after this RFC 3339 time.
        #[arg(long)]
        since: Option<DateTime<Utc>>,
        /// Only records before this RFC 3339 time.
        #[arg(long)]
        until: Option<DateTime<Utc>>,
    },
    /// Check the whole hash chain; exit 1 naming the first broken record.
    Verify,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[arg(long)]
    event: Option<String>,
    #[arg(long)]
    source: Option<String>,
    #[arg(long)]
    employee: Option<String>,
    #[arg(long)]
    tenant: Option<String>,
    #[arg(long)]
    failed: bool,
    #[arg(long)]
    manual: bool,
    /// Only actions updated at or after this RFC 3339 time.
    #[arg(long)]
    since: Option<DateTime<Utc>>,
    /// At most this many actions (the first in creation order).
    #[arg(long)]
    limit: Option<u64>,
    /// JSON Lines, one object per action.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct RetryArgs {
    #[arg(long, value_name = "ID")]
    action: Option<ActionId>,
    #[arg(long)]
    failed: bool,
}

#[derive(Debug, Args)]
pub struct EventArg {
    /// The CloudEvent id.
    event: String,
    /// The CloudEvent source, when two accepted events share the id.
    #[arg(long)]
    source: Option<String>,
}

/// A usage or configuration error: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo and the benchmarks print their own results; their logs stay
    // quiet unless asked for.
    let default_directive = if matches!(cli.command, Command::Demo) {
        "warn"
    } else {
        "info"
    };
    crate::logging::init(cli.log_format, default_directive);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let usage = error.downcast_ref::<UsageError>().is_some()
                || error
                    .downcast_ref::<palworker_config::ConfigError>()
                    .is_some();
            eprintln!("error: {}", one_line(&error));
            ExitCode::from(if usage { 2 } else { 1 })
        }
    }
}

fn one_line(error: &anyhow::Error) -> String {
    format!("{error:#}").replace('\n', " ")
}

/// Loads the settings: `--config FILE` must exist; without it the default
/// path is used when present, else built-in defaults (plus environment).
pub fn load_settings(path: Option<&Path>) -> anyhow::Result<Settings> {
    let env = environment();
    let default = Path::new(Settings::DEFAULT_PATH);
    let path = match path {
        Some(path) => Some(path),
        None if default.exists() => Some(default),
        None => None,
    };
    Ok(Settings::load(path, env)?)
}

fn environment() -> impl Iterator<Item = (String, String)> {
    std::env::vars_os().map(|(k, v)| {
        (
            k.to_string_lossy().into_owned(),
            v.to_string_lossy().into_owned(),
        )
    })
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Sim { listen, clients } => {
            let config = match clients {
                Some(path) => palworker_sim::SimConfig::from_json_file(&path)
                    .map_err(|e| UsageError(format!("--clients `{}`: {e}", path.display())))?,
                None => palworker_sim::SimConfig::default(),
            };
            palworker_sim::run(listen, config, crate::app::shutdown_signal()).await
        }
        // The demo brings its own simulator and credentials; it needs only the
        // broker URL, so it reads the config file only when one is named.
        Command::Demo => {
            let settings = match cli.config.as_deref() {
                Some(path) => load_settings(Some(path))?,
                None => Settings::load(None, environment())?,
            };
            crate::local::demo::run(settings).await
        }
        Command::Run => {
            let settings = load_settings(cli.config.as_deref())?;
            crate::app::run(
                settings,
                Arc::new(SystemClock),
                crate::app::shutdown_signal(),
            )
            .await
        }
        Command::Route => {
            let settings = load_settings(cli.config.as_deref())?;
            if !settings.partitions.is_partitioned() {
                return Err(UsageError(
                    "partitions.count is 1: there is nothing to route (`palworker run` consumes the events queue itself)".to_owned(),
                )
                .into());
            }
            crate::app::route(settings, crate::app::shutdown_signal()).await
        }
        Command::Topology { partitions } => {
            let settings = load_settings(cli.config.as_deref())?;
            let count = match partitions {
                Some(count) => palworker_events::PartitionCount::new(count)
                    .map_err(|e| UsageError(format!("--partitions {count}: {e}")))?,
                None => settings.partitions.count,
            };
            let vhost = crate::amqp::url_vhost(&settings.amqp.url).ok_or_else(|| {
                UsageError("amqp.url is not a URL the AMQP client can use".to_owned())
            })?;
            let definitions = crate::amqp::definitions_json(&settings.amqp, count, &vhost);
            println!("{}", serde_json::to_string_pretty(&definitions)?);
            Ok(())
        }
        Command::Publish {
            file,
            user_id,
            no_validate,
        } => {
            let settings = load_settings(cli.config.as_deref())?;
            publish(&settings, &file, user_id.as_deref(), no_validate).await
        }
        Command::Ledger(LedgerCommand::Check { repair, json }) => {
            let settings = load_settings(cli.config.as_deref())?;
            let mode = if repair {
                CheckMode::Repair
            } else {
                CheckMode::Report
            };
            let output = if json {
                CheckOutput::Json
            } else {
                CheckOutput::Text
            };
            check_ledger(&settings, mode, output).await
        }
        Command::Ledger(LedgerCommand::Export { file }) => {
            let settings = load_settings(cli.config.as_deref())?;
            let (target, _) = Target::connect_partitioned(
                &settings,
                cli.operator.as_deref(),
                Create::No,
                cli.partition,
            )
            .await?;
            match target {
                Target::Local(operations) => export_ledger(&operations, &file).await,
                Target::Remote(client) => export_ledger(&client, &file).await,
                Target::Partitions(partitions) => export_ledger(&partitions, &file).await,
            }
        }
        Command::Ledger(LedgerCommand::Repartition {
            count,
            out,
            exports,
        }) => repartition_exports(count, &out, exports).await,
        Command::Ledger(LedgerCommand::Import { file }) => {
            let settings = load_settings(cli.config.as_deref())?;
            import_ledger(&settings, &file).await
        }
        Command::Operator(command) => {
            let settings = load_settings(cli.config.as_deref())?;
            // Only an import may create the ledger: the rest, with no ledger
            // here, look for the worker that has it.
            let create = match command {
                OperatorCommand::Inventory(InventoryCommand::Import { .. }) => Create::Yes,
                _ => Create::No,
            };
            let (target, only) = Target::connect_partitioned(
                &settings,
                cli.operator.as_deref(),
                create,
                cli.partition,
            )
            .await?;
            match target {
                // A reconcile on a stopped worker's ledger reads PAL itself.
                Target::Local(operations) if matches!(command, OperatorCommand::Reconcile(_)) => {
                    let reconciler = local_reconciler(&settings, operations.ledger().clone())?;
                    operate(&operations.with_reconciler(reconciler), command, only).await
                }
                Target::Local(operations) => operate(&operations, command, only).await,
                Target::Remote(client) => operate(&client, command, only).await,
                Target::Partitions(partitions) => operate(&partitions, command, None).await,
            }
        }
    }
}

async fn publish(
    settings: &Settings,
    file: &Path,
    user_id: Option<&str>,
    no_validate: bool,
) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading `{}`", file.display()))?;
    let trimmed = text.trim();
    let documents: Vec<&str> =
        if trimmed.starts_with('{') && serde_json::from_str::<serde_json::Value>(trimmed).is_ok() {
            vec![trimmed]
        } else {
            trimmed.lines().filter(|l| !l.trim().is_empty()).collect()
        };
    let mut events = Vec::with_capacity(documents.len());
    for (index, document) in documents.iter().enumerate() {
        let value: serde_json::Value = serde_json::from_str(document).map_err(|e| {
            UsageError(format!(
                "`{}` line {}: not JSON: {e}",
                file.display(),
                index + 1
            ))
        })?;
        if !no_validate {
            Event::from_json_slice(document.as_bytes()).map_err(|e| {
                UsageError(format!(
                    "`{}` line {}: {e} (use --no-validate to send it anyway)",
                    file.display(),
                    index + 1
                ))
            })?;
        }
        events.push(value);
    }
    let publisher =
        crate::amqp::Publisher::connect(settings.amqp.url.expose(), &settings.amqp.exchange)
            .await
            .with_context(|| format!("connecting to {}", settings.amqp.url))?;
    for event in &events {
        publisher.publish_event(event, user_id).await?;
    }
    publisher.close().await;
    println!(
        "published {} event(s) to exchange `{}` with confirms",
        events.len(),
        settings.amqp.exchange
    );
    Ok(())
}
