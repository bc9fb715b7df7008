//! The command line (SPEC §8). `main.rs` only calls [`main`].
//!
//! Operator commands open the ledger directly when no worker holds it, and
//! otherwise go through the running worker's admin API on `http.listen`, so
//! nothing ever requires stopping the worker.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand, ValueEnum};
use palworker_config::Settings;
use palworker_events::Event;

use crate::admin::{Admin, AuditRecord, ReleaseSummary, StatusRow};
use crate::clock::SystemClock;
use crate::http::AdminClient;
use crate::ledger::{InventoryEntry, Ledger, LedgerError, StatusFilter};

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
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the worker: consume, plan, execute, serve HTTP. Stops gracefully on SIGTERM/SIGINT.
    Run,
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
    /// Compliance exports.
    #[command(subcommand)]
    Audit(AuditCommand),
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
    /// Benchmarks against the local RabbitMQ and the in-process simulator; one
    /// machine-readable line per scenario.
    Bench(crate::bench::BenchArgs),
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
    /// JSON Lines of every action outcome.
    Export {
        /// Only outcomes at or after this RFC 3339 time.
        #[arg(long)]
        since: Option<DateTime<Utc>>,
    },
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
    /// JSON Lines, one object per action.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct RetryArgs {
    #[arg(long, value_name = "ID")]
    action: Option<u64>,
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
    let default_directive = if matches!(cli.command, Command::Demo | Command::Bench(_)) {
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
                Some(path) => crate::sim::SimConfig::from_json_file(&path)
                    .map_err(|e| UsageError(format!("--clients `{}`: {e}", path.display())))?,
                None => crate::sim::SimConfig::default(),
            };
            crate::sim::run(listen, config, crate::app::shutdown_signal()).await
        }
        // The demo brings its own simulator and credentials; it needs only the
        // broker URL, so it reads the config file only when one is named.
        Command::Demo => {
            let settings = match cli.config.as_deref() {
                Some(path) => load_settings(Some(path))?,
                None => Settings::load(None, environment())?,
            };
            crate::demo::run(settings).await
        }
        Command::Bench(args) => {
            let settings = match cli.config.as_deref() {
                Some(path) => load_settings(Some(path))?,
                None => Settings::load(None, environment())?,
            };
            crate::bench::run(settings, args).await
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
        command => {
            let settings = load_settings(cli.config.as_deref())?;
            let target = Target::connect(&settings).await?;
            operate(target, command).await
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

/// Where operator commands go.
enum Target {
    Local(Admin),
    Remote(AdminClient),
}

impl Target {
    async fn connect(settings: &Settings) -> anyhow::Result<Target> {
        let path = settings.ledger.path.clone();
        let cache = settings.ledger.cache_capacity_bytes.min(16 * 1024 * 1024);
        match tokio::task::spawn_blocking(move || Ledger::open(&path, cache)).await? {
            Ok(ledger) => Ok(Target::Local(Admin::new(Arc::new(ledger)))),
            Err(LedgerError::Locked(_)) => Ok(Target::Remote(AdminClient::new(
                settings.http.listen,
                settings.http.admin_token.clone(),
            )?)),
            Err(error) => Err(error).with_context(|| {
                format!("opening the ledger at `{}`", settings.ledger.path.display())
            }),
        }
    }
}

fn read_event(path: &Path) -> anyhow::Result<(Vec<u8>, Event)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading `{}`", path.display()))?;
    let event = Event::from_json_slice(&bytes)
        .map_err(|e| UsageError(format!("`{}`: {e}", path.display())))?;
    Ok((bytes, event))
}

async fn operate(target: Target, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Plan { event } => {
            let (bytes, event) = read_event(&event)?;
            let plan = match &target {
                Target::Local(admin) => admin.plan(&event)?,
                Target::Remote(client) => client.plan(bytes).await?,
            };
            println!("{}", serde_json::to_string_pretty(&plan)?);
        }
        Command::Inventory(InventoryCommand::Import { file }) => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading `{}`", file.display()))?;
            let progress = crate::progress::spinner("importing accounts");
            let imported = match &target {
                Target::Local(admin) => {
                    admin.import(&text).map_err(|e| reject_to_usage(e, &file))?
                }
                Target::Remote(client) => client.import(text).await?,
            };
            progress.finish_and_clear();
            println!("imported {imported} account(s)");
        }
        Command::Inventory(InventoryCommand::List {
            employee,
            tenant,
            json,
        }) => {
            let entries: Vec<InventoryEntry> = match &target {
                Target::Local(admin) => admin
                    .ledger
                    .inventory_list(employee.as_deref(), tenant.as_deref())?,
                Target::Remote(client) => {
                    client
                        .inventory(employee.as_deref(), tenant.as_deref())
                        .await?
                }
            };
            print_inventory(&entries, json)?;
        }
        Command::Status(args) => {
            let filter = StatusFilter {
                event_id: args.event,
                event_source: args.source,
                employee_id: args.employee,
                tenant_id: args.tenant,
                failed: args.failed,
                manual: args.manual,
            };
            let rows = match &target {
                Target::Local(admin) => admin.status(&filter)?,
                Target::Remote(client) => client.status(&filter).await?,
            };
            print_status(&rows, args.json)?;
        }
        Command::Retry(args) => {
            let retried = match &target {
                Target::Local(admin) => admin.retry(args.action, args.failed)?,
                Target::Remote(client) => client.retry(args.action, args.failed).await?,
            };
            println!("queued {} action(s) again: {:?}", retried.len(), retried);
        }
        Command::Approve(arg) => {
            let summary = match &target {
                Target::Local(admin) => admin.approve(&arg.event, arg.source.as_deref())?,
                Target::Remote(client) => {
                    client
                        .release("approve", &arg.event, arg.source.as_deref())
                        .await?
                }
            };
            print_release("approved", &summary);
        }
        Command::Reject(arg) => {
            let summary = match &target {
                Target::Local(admin) => admin.reject(&arg.event, arg.source.as_deref())?,
                Target::Remote(client) => {
                    client
                        .release("reject", &arg.event, arg.source.as_deref())
                        .await?
                }
            };
            print_release("rejected", &summary);
        }
        Command::Audit(AuditCommand::Export { since }) => {
            use std::io::Write;
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            match &target {
                Target::Local(admin) => {
                    let progress = crate::progress::counter("exporting action outcomes");
                    let mut failure = None;
                    admin.audit(since, |record: AuditRecord| {
                        if failure.is_none()
                            && let Err(e) = writeln!(
                                out,
                                "{}",
                                serde_json::to_string(&record).expect("serialisable")
                            )
                        {
                            failure = Some(e);
                        }
                        progress.inc(1);
                    })?;
                    progress.finish_and_clear();
                    if let Some(e) = failure {
                        return Err(e.into());
                    }
                }
                Target::Remote(client) => {
                    out.write_all(client.audit(since).await?.as_bytes())?;
                }
            }
            out.flush()?;
        }
        Command::Run
        | Command::Publish { .. }
        | Command::Sim { .. }
        | Command::Demo
        | Command::Bench(_) => {
            unreachable!("dispatched before")
        }
    }
    Ok(())
}

fn reject_to_usage(error: LedgerError, file: &Path) -> anyhow::Error {
    match error {
        LedgerError::Rejected(message) => {
            UsageError(format!("`{}`: {message}", file.display())).into()
        }
        other => other.into(),
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

fn print_status(rows: &[StatusRow], json: bool) -> anyhow::Result<()> {
    if json {
        for row in rows {
            println!("{}", serde_json::to_string(row)?);
        }
        return Ok(());
    }
    println!(
        "{:>8}  {:<24}  {:<26}  {:<8}  {:<36}  {:<12}  {:<10}  {:>3}  LAST ERROR / DETAIL",
        "ACTION", "EVENT", "TYPE", "OP", "TENANT", "EMPLOYEE", "STATE", "TRY"
    );
    for row in rows {
        let note = row
            .last_error
            .as_deref()
            .or(row.detail.as_deref())
            .unwrap_or("");
        println!(
            "{:>8}  {:<24}  {:<26}  {:<8}  {:<36}  {:<12}  {:<10}  {:>3}  {}",
            row.action_id,
            truncate(&row.event_id, 24),
            row.event_type,
            row.op,
            row.tenant_id,
            truncate(&row.employee_id, 12),
            row.state,
            row.attempts,
            truncate(note, 120)
        );
    }
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
