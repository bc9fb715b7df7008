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

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};
use palworker_config::Settings;
use palworker_events::{EmployeeId, Event, TenantId};

use palworker_core::{
    ActionId, AuditEntry, Finding, InventoryEntry, ReconcileReport, ReleaseSummary, StatusFilter,
    StatusRow,
};

use crate::clock::SystemClock;
use crate::ledger::{CheckMode, Ledger, LedgerError};
use crate::logging::LogFormat;
use crate::operators::{
    AdminApiClient, Attached, Decision, EventRef, LedgerOperations, Operations, Operator,
    OperatorError, Reached, RetryTarget,
};
use crate::reconcile::{ReconcileRequest, Reconciler};

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
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the worker: consume, plan, execute, serve HTTP. Stops gracefully on SIGTERM/SIGINT.
    Run,
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
            match Target::connect(&settings, cli.operator.as_deref(), Create::No).await? {
                Target::Local(operations) => export_ledger(&operations, &file).await,
                Target::Remote(client) => export_ledger(&client, &file).await,
            }
        }
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
            match Target::connect(&settings, cli.operator.as_deref(), create).await? {
                // A reconcile on a stopped worker's ledger reads PAL itself.
                Target::Local(operations) if matches!(command, OperatorCommand::Reconcile(_)) => {
                    let reconciler = local_reconciler(&settings, operations.ledger().clone())?;
                    operate(&operations.with_reconciler(reconciler), command).await
                }
                Target::Local(operations) => operate(&operations, command).await,
                Target::Remote(client) => operate(&client, command).await,
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

/// Where operator commands go: the ledger itself when no worker holds it,
/// else the running worker's admin API.
enum Target {
    Local(LedgerOperations),
    Remote(AdminApiClient),
}

/// Whether a command may create the ledger when there is none yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Create {
    Yes,
    No,
}

impl Target {
    async fn connect(
        settings: &Settings,
        operator: Option<&str>,
        create: Create,
    ) -> anyhow::Result<Target> {
        let path = settings.ledger.path.clone();
        let remote = |reached| -> anyhow::Result<Target> {
            let token = admin_token(settings, operator)?;
            Ok(Target::Remote(AdminApiClient::new(
                settings.http.listen,
                token,
                reached,
            )?))
        };
        if create == Create::No && !path.exists() {
            return remote(Reached::NoLocalLedger(path));
        }
        let cache = settings.ledger.cache_capacity_bytes.min(16 * 1024 * 1024);
        match tokio::task::spawn_blocking(move || Ledger::open(&path, cache)).await? {
            Ok(ledger) => Ok(Target::Local(LedgerOperations::new(
                Arc::new(ledger),
                Attached::Stopped,
                Operator::local_user(),
            ))),
            // A worker holds it: its admin socket when this user may use
            // it (no token needed), else its TCP admin API with a token.
            // `--operator` names a token: TCP then.
            Err(LedgerError::Locked(_)) => match usable_admin_socket(&settings.ledger.path) {
                Ok(socket) if operator.is_none() => Ok(Target::Remote(
                    AdminApiClient::over_socket(&socket, Reached::LedgerInUse)?,
                )),
                _ => remote(Reached::LedgerInUse),
            },
            // Not this user's to open (a worker of another OS user): the
            // worker's admin socket decides, and says why it refuses.
            Err(error) => {
                let opening = format!("opening the ledger at `{}`", settings.ledger.path.display());
                match usable_admin_socket(&settings.ledger.path) {
                    Ok(socket) => Ok(Target::Remote(AdminApiClient::over_socket(
                        &socket,
                        Reached::LedgerInUse,
                    )?)),
                    Err(refused) if refused.kind() != std::io::ErrorKind::NotFound => {
                        Err(anyhow::Error::from(error).context(format!(
                            "{opening}; the running worker's admin socket refused this user too: {refused} \
                             (it serves the worker's OS user and root)"
                        )))
                    }
                    Err(_) => Err(error).context(opening),
                }
            }
        }
    }
}

/// The admin socket of the worker holding the ledger at `ledger`, when
/// this process can connect to it (a stale one left by a crash refuses).
fn usable_admin_socket(ledger: &Path) -> std::io::Result<PathBuf> {
    let socket = crate::admin_socket::socket_path(ledger);
    std::os::unix::net::UnixStream::connect(&socket)?;
    Ok(socket)
}

/// The token operator commands present to a running worker: the one named
/// by `--operator`, else `admin`, else the only one configured.
fn admin_token(
    settings: &Settings,
    operator: Option<&str>,
) -> anyhow::Result<Option<secrecy::SecretString>> {
    let tokens = &settings.http.admin_tokens;
    match operator {
        Some(name) => match tokens.get(name) {
            Some(token) => Ok(Some(token.clone())),
            None => Err(UsageError(format!(
                "--operator `{name}`: no such token in http.admin_tokens (configured: {})",
                if tokens.is_empty() {
                    "none".to_owned()
                } else {
                    tokens.keys().cloned().collect::<Vec<_>>().join(", ")
                }
            ))
            .into()),
        },
        None => Ok(tokens
            .get("admin")
            .or_else(|| {
                (tokens.len() == 1)
                    .then(|| tokens.values().next())
                    .flatten()
            })
            .cloned()),
    }
}

/// `ledger export FILE`: the snapshot is written to a temporary file beside
/// FILE and renamed over it once complete, so FILE is a whole export or is
/// left as it was.
async fn export_ledger(target: &impl Operations, file: &Path) -> anyhow::Result<()> {
    if file == Path::new("-") {
        let mut out = std::io::BufWriter::new(std::io::stdout());
        let records = target.export_ledger(&mut out).await?;
        tracing::info!(records, "Ledger exported to standard output.");
        return Ok(());
    }
    let partial = partial_path(file);
    let written = async {
        let handle = std::fs::File::create(&partial)
            .with_context(|| format!("creating `{}`", partial.display()))?;
        let mut out = std::io::BufWriter::new(handle);
        let progress = crate::progress::spinner("exporting the ledger");
        let records = target.export_ledger(&mut out).await?;
        let handle = out.into_inner().map_err(|e| e.into_error())?;
        handle.sync_all()?;
        progress.finish_and_clear();
        std::fs::rename(&partial, file)
            .with_context(|| format!("renaming `{}` to `{}`", partial.display(), file.display()))?;
        anyhow::Ok(records)
    }
    .await;
    match written {
        Ok(records) => {
            println!("exported {records} record(s) to `{}`", file.display());
            Ok(())
        }
        Err(error) => {
            let _ = std::fs::remove_file(&partial);
            Err(error.context(format!("exporting the ledger to `{}`", file.display())))
        }
    }
}

/// `FILE.partial`, beside FILE.
fn partial_path(file: &Path) -> PathBuf {
    let mut name = file.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    file.with_file_name(name)
}

/// `ledger import FILE`: loads the export into a fresh directory beside
/// `ledger.path` and renames it into place once complete, so a failed import
/// leaves nothing half-made where the worker looks. `ledger.path` must not
/// exist, or be an empty directory.
async fn import_ledger(settings: &Settings, file: &Path) -> anyhow::Result<()> {
    let path = settings.ledger.path.clone();
    let file = file.to_owned();
    let cache = settings.ledger.cache_capacity_bytes.min(16 * 1024 * 1024);
    tokio::task::spawn_blocking(move || {
        let occupied = match std::fs::read_dir(&path) {
            Ok(mut entries) => entries.next().is_some(),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => false,
            Err(error) => {
                return Err(anyhow::Error::from(error))
                    .with_context(|| format!("reading `{}`", path.display()));
            }
        };
        if occupied {
            return Err(UsageError(format!(
                "the ledger at `{}` exists: import into a new ledger (set ledger.path to an empty or absent directory)",
                path.display()
            ))
            .into());
        }
        let input = std::fs::File::open(&file)
            .map_err(|e| UsageError(format!("`{}`: {e}", file.display())))?;
        let importing = partial_path(&path);
        if importing.exists() {
            std::fs::remove_dir_all(&importing)
                .with_context(|| format!("removing the unfinished `{}`", importing.display()))?;
        }
        let imported = (|| {
            let ledger = Ledger::open(&importing, cache)?;
            let progress = crate::progress::spinner("importing the ledger");
            let transferred = ledger.import(std::io::BufReader::new(input))?;
            progress.finish_and_clear();
            anyhow::Ok(transferred)
        })();
        let transferred = match imported {
            Ok(transferred) => transferred,
            Err(error) => {
                let _ = std::fs::remove_dir_all(&importing);
                return Err(match error.downcast::<LedgerError>() {
                    Ok(LedgerError::Rejected(why)) => {
                        UsageError(format!("`{}`: {why}", file.display())).into()
                    }
                    Ok(other) => anyhow::Error::from(other),
                    Err(other) => other,
                });
            }
        };
        if path.exists() {
            std::fs::remove_dir(&path)
                .with_context(|| format!("replacing the empty `{}`", path.display()))?;
        }
        std::fs::rename(&importing, &path).with_context(|| {
            format!("renaming `{}` to `{}`", importing.display(), path.display())
        })?;
        println!(
            "imported {} record(s) into the ledger at `{}`",
            transferred.records,
            path.display()
        );
        Ok(())
    })
    .await?
}

/// How `ledger check` prints differences.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CheckOutput {
    /// One sentence per line.
    Text,
    /// JSON Lines, one object per difference (with `repaired`).
    Json,
}

/// `ledger check [--repair]`: on the ledger itself, never through a running
/// worker, whose writes would show as differences while the counts are
/// recounted (and a repair would overwrite them). A held ledger is a usage
/// error (exit 2); differences exit 1 — with `--repair`, only those a
/// second check still finds.
async fn check_ledger(
    settings: &Settings,
    mode: CheckMode,
    output: CheckOutput,
) -> anyhow::Result<()> {
    let path = settings.ledger.path.clone();
    let cache = settings.ledger.cache_capacity_bytes.min(16 * 1024 * 1024);
    tokio::task::spawn_blocking(move || {
        let ledger = match Ledger::open(&path, cache) {
            Ok(ledger) => ledger,
            Err(LedgerError::Locked(_)) => {
                return Err(UsageError(format!(
                    "the ledger at `{}` is in use by a running worker: stop the worker first \
                     (`ledger check` recounts a ledger nobody writes meanwhile)",
                    path.display()
                ))
                .into());
            }
            Err(error) => {
                return Err(anyhow::Error::from(error))
                    .with_context(|| format!("opening the ledger at `{}`", path.display()));
            }
        };
        let progress = crate::progress::spinner("checking the ledger");
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        // The first write error (a closed pipe) ends the command after the check.
        let mut unwritten: Option<anyhow::Error> = None;
        let repaired = mode == CheckMode::Repair;
        let found = ledger.check(mode, &mut |difference| {
            if unwritten.is_none() {
                unwritten = print_difference(&mut out, difference, output, repaired).err();
            }
        })?;
        if let Some(error) = unwritten.take() {
            return Err(error);
        }
        if found == 0 {
            progress.finish_and_clear();
            if output == CheckOutput::Text {
                writeln!(out, "the ledger is consistent: no difference")?;
            }
            out.flush()?;
            return Ok(());
        }
        if mode == CheckMode::Report {
            progress.finish_and_clear();
            out.flush()?;
            anyhow::bail!(
                "{found} difference(s) between the ledger's records and its counters or indexes; \
                 `palworker ledger check --repair` rewrites them"
            );
        }
        tracing::info!(differences = found, "Ledger counters and indexes repaired.");
        let remaining = ledger.check(CheckMode::Report, &mut |difference| {
            if unwritten.is_none() {
                unwritten = print_difference(&mut out, difference, output, false).err();
            }
        })?;
        if let Some(error) = unwritten.take() {
            return Err(error);
        }
        progress.finish_and_clear();
        if remaining > 0 {
            out.flush()?;
            anyhow::bail!("{found} difference(s) repaired, but {remaining} remain");
        }
        if output == CheckOutput::Text {
            writeln!(
                out,
                "repaired {found} difference(s); the ledger is consistent"
            )?;
        }
        out.flush()?;
        Ok(())
    })
    .await?
}

fn print_difference(
    out: &mut impl Write,
    difference: &crate::ledger::Difference,
    output: CheckOutput,
    repaired: bool,
) -> anyhow::Result<()> {
    match output {
        CheckOutput::Json => {
            let mut line = serde_json::to_value(difference)?;
            line["repaired"] = repaired.into();
            writeln!(out, "{line}")?;
        }
        CheckOutput::Text if repaired => writeln!(out, "repaired: {difference}")?,
        CheckOutput::Text => writeln!(out, "{difference}")?,
    }
    Ok(())
}

fn read_event(path: &Path) -> anyhow::Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading `{}`", path.display()))?;
    Event::from_json_slice(&bytes).map_err(|e| UsageError(format!("`{}`: {e}", path.display())))?;
    Ok(bytes)
}

/// Runs an operator command against either target.
async fn operate(target: &impl Operations, command: OperatorCommand) -> anyhow::Result<()> {
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
            let answer = target.set_paused(true).await?;
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
            let answer = target.set_paused(false).await?;
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
fn local_reconciler(settings: &Settings, ledger: Arc<Ledger>) -> anyhow::Result<Reconciler> {
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
async fn reconcile(target: &impl Operations, args: ReconcileArgs) -> anyhow::Result<()> {
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
fn finding_text(finding: &Finding) -> String {
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
fn reconcile_summary(report: &ReconcileReport) -> String {
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
async fn report_revocations(
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

fn print_release(verb: &str, summary: &ReleaseSummary) {
    println!(
        "{verb} event `{}` ({}): {} action(s) released, {} cancelled",
        summary.event_id, summary.event_source, summary.released, summary.cancelled
    );
}

fn print_inventory(entries: &[InventoryEntry], json: bool) -> anyhow::Result<()> {
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

fn print_status_header(out: &mut impl Write) -> anyhow::Result<()> {
    writeln!(
        out,
        "{:>8}  {:<24}  {:<26}  {:<8}  {:<36}  {:<12}  {:<10}  {:>3}  LAST ERROR / DETAIL",
        "ACTION", "EVENT", "TYPE", "OP", "TENANT", "EMPLOYEE", "STATE", "TRY"
    )?;
    Ok(())
}

fn print_status_row(out: &mut impl Write, row: &StatusRow, json: bool) -> anyhow::Result<()> {
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
        truncate(&action.event_id, 24),
        action.event_type.as_str(),
        action.op.as_str(),
        action.tenant_id.as_str(),
        truncate(action.employee_id.as_str(), 12),
        row.state.as_str(),
        action.attempts,
        truncate(note, 120)
    )?;
    Ok(())
}

fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}
