//! Building and running the worker: ledger, PAL client, executor, consumer and
//! HTTP, wired together and stopped in order.
//!
//! Shutdown is a parameter ([`run`]): the binary passes SIGTERM-or-SIGINT,
//! tests pass their own trigger.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use backon::BackoffBuilder;
use palworker_config::Settings;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::amqp::{Consumer, Router, Topology};
use crate::availability::{self, LedgerAvailability};
use crate::clock::Clock;
use crate::executor::{Executor, ExecutorControl, ExecutorSettings};
use crate::health::Health;
use crate::http;
use crate::intake::{Intake, IntakeSettings, Validator};
use crate::ledger::{Ledger, LedgerError};
use crate::ledger::{PauseState, Retention};
use crate::operators::{Attached, LedgerOperations, Operator};
use crate::pal::PalClient;
use crate::reconcile::{self, Reconciler};
use crate::results::ResultsPublisher;
use crate::sweeper;
use crate::telemetry::{LedgerGaugesRead, Metrics, WritesPaused};

/// Opens the ledger named by the settings (blocking IO on a worker thread).
pub async fn open_ledger(settings: &Settings) -> anyhow::Result<Arc<Ledger>> {
    let ledger = try_open_ledger(settings)
        .await?
        .with_context(|| format!("opening the ledger at `{}`", settings.ledger.path.display()))?;
    Ok(Arc::new(ledger))
}

async fn try_open_ledger(settings: &Settings) -> anyhow::Result<Result<Ledger, LedgerError>> {
    let path = settings.ledger.path.clone();
    let cache = settings.ledger.cache_capacity_bytes;
    Ok(tokio::task::spawn_blocking(move || Ledger::open(&path, cache)).await?)
}

/// The longest wait between two looks at a ledger another worker holds.
const STANDBY_POLL_MAX: std::time::Duration = std::time::Duration::from_secs(2);

/// A partition worker's ledger (SPEC §10): when another worker of the same
/// partition holds it — a standby started beside the active one, or the
/// replacement of a worker that is still stopping — it stands by, looking
/// again with backoff, and starts the moment the ledger is free. A single
/// process fails at once instead (two of them on one ledger is a mistake).
async fn open_ledger_or_stand_by(settings: &Settings) -> anyhow::Result<Arc<Ledger>> {
    if !settings.partitions.is_partitioned() {
        return open_ledger(settings).await;
    }
    let mut delays = backon::ExponentialBuilder::new()
        .with_min_delay(std::time::Duration::from_millis(100))
        .with_max_delay(STANDBY_POLL_MAX)
        .without_max_times()
        .build();
    let mut standing_by = false;
    loop {
        match try_open_ledger(settings).await? {
            Ok(ledger) => {
                if standing_by {
                    tracing::info!(
                        partition = %settings.partitions.index,
                        "The ledger is free: taking over the partition."
                    );
                }
                return Ok(Arc::new(ledger));
            }
            Err(LedgerError::Locked(_)) => {
                if !standing_by {
                    standing_by = true;
                    tracing::info!(
                        partition = %settings.partitions.index,
                        ledger = %settings.ledger.path.display(),
                        "Another worker holds this partition's ledger: standing by until it is free."
                    );
                }
                tokio::time::sleep(delays.next().unwrap_or(STANDBY_POLL_MAX)).await;
            }
            Err(error) => {
                return Err(error).with_context(|| {
                    format!("opening the ledger at `{}`", settings.ledger.path.display())
                });
            }
        }
    }
}

/// A running worker.
pub struct RunningApp {
    pub ledger: Arc<Ledger>,
    pub metrics: Metrics,
    pub health: Health,
    pub http_addr: SocketAddr,
    /// Wakes or pauses the executor.
    pub executor: ExecutorControl,
    stop_consuming: CancellationToken,
    stop_executing: CancellationToken,
    stop_http: CancellationToken,
    consumer: JoinHandle<()>,
    executor_task: JoinHandle<()>,
    keeper: JoinHandle<()>,
    gauges: JoinHandle<()>,
    sweeper: JoinHandle<()>,
    periodic_reconcile: JoinHandle<()>,
    results: JoinHandle<()>,
    http: JoinHandle<std::io::Result<()>>,
}

/// Starts every part of the worker and returns once they run.
pub async fn start(settings: Settings, clock: Arc<dyn Clock>) -> anyhow::Result<RunningApp> {
    let ledger = open_ledger_or_stand_by(&settings).await?;
    let metrics = Metrics::new();
    {
        let ledger = ledger.clone();
        let metrics = metrics.clone();
        let now = clock.now();
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            availability::read_gauges(&ledger, now)?.emit(&metrics, LedgerGaugesRead::AtOpen);
            Ok(())
        })
        .await??;
    }
    let availability = LedgerAvailability::new(metrics.clone());
    let health = Health::new(availability.clone(), metrics.clone());
    if settings.security.is_open() {
        tracing::warn!(
            "security.publishers is empty: events from ANY publisher are accepted. \
             Set an allow-list before production use."
        );
    }
    if settings.worker.dry_run {
        tracing::warn!("worker.dry_run is on: PAL is read but never written.");
    }
    let pal = PalClient::new(
        &settings.pal,
        &settings.credentials,
        settings.limits.per_tenant_rps,
        metrics.clone(),
        clock.clone(),
    )?;
    let control = ExecutorControl::default();
    // Paused by the configuration, or by an operator before a restart.
    let paused_by = if settings.worker.paused {
        Some("worker.paused")
    } else {
        let reading = ledger.clone();
        match tokio::task::spawn_blocking(move || reading.pause_state()).await?? {
            PauseState::Paused => Some("an operator's pause"),
            PauseState::Running => None,
        }
    };
    if let Some(by) = paused_by {
        control.pause();
        WritesPaused { by }.emit(&metrics);
    }
    let reconciler = Reconciler::new(
        ledger.clone(),
        pal.clone(),
        metrics.clone(),
        clock.clone(),
        settings.limits.max_actions_per_event,
        Some(control.clone()),
    );
    let executor = Executor::new(
        ledger.clone(),
        pal,
        metrics.clone(),
        clock.clone(),
        ExecutorSettings {
            concurrency: settings.limits.concurrency,
            // As many actions per tenant as it may start requests per second:
            // enough to use its whole rate at ordinary PAL latencies, never
            // all the slots while its requests queue behind the rate limit.
            per_tenant_concurrency: (settings.limits.per_tenant_rps.ceil() as usize).max(1),
            retry: settings.retry.clone(),
            dry_run: settings.worker.dry_run,
            shutdown_grace: settings.worker.shutdown_grace,
        },
        control.clone(),
        availability.clone(),
    );
    let intake = Intake::new(
        ledger.clone(),
        metrics.clone(),
        clock.clone(),
        IntakeSettings {
            max_message_bytes: settings.amqp.max_message_bytes,
            max_actions_per_event: settings.limits.max_actions_per_event,
            security: settings.security.clone(),
        },
        control.clone(),
        health.clone(),
    );
    if settings.partitions.is_partitioned() {
        tracing::info!(
            partition = %settings.partitions.index,
            count = settings.partitions.count.get(),
            "This worker owns one tenant partition; `palworker route` feeds it."
        );
    }
    let consumer = Consumer::new(
        settings.amqp.clone(),
        Topology::for_worker(&settings.amqp, &settings.partitions),
        settings
            .partitions
            .is_partitioned()
            .then(|| settings.partitions.router_user.clone())
            .flatten(),
        intake,
        metrics.clone(),
        health.clone(),
    );

    let listener = http::bind(settings.http.listen).await?;
    let http_addr = listener.local_addr()?;
    let router = http::router(
        metrics.clone(),
        health.clone(),
        LedgerOperations::new(
            ledger.clone(),
            Attached::Running {
                metrics: metrics.clone(),
                executor: control.clone(),
            },
            Operator::worker(),
        )
        .with_reconciler(reconciler.clone()),
        settings.http.admin_tokens.clone(),
    );
    let stop_http = CancellationToken::new();
    let stop_consuming = CancellationToken::new();
    let stop_executing = CancellationToken::new();
    // The admin API also on admin.sock in the ledger directory (this
    // worker holds the ledger): the local operator needs no token.
    let local_operators = crate::admin_socket::serve_in(
        &settings.ledger.path,
        router.clone(),
        stop_http.clone().cancelled_owned(),
    );
    let http = tokio::spawn({
        let tcp = http::serve(listener, router, stop_http.clone().cancelled_owned());
        async move { tokio::join!(tcp, local_operators).0 }
    });
    let consumer = health.supervise(
        "consumer",
        stop_consuming.clone(),
        consumer.run(stop_consuming.clone()),
    );
    let executor_task = health.supervise(
        "executor",
        stop_executing.clone(),
        executor.run(stop_executing.clone()),
    );
    let gauges = health.supervise(
        "gauges",
        stop_executing.clone(),
        availability::refresh_gauges(
            ledger.clone(),
            availability.clone(),
            clock.clone(),
            stop_executing.clone(),
        ),
    );
    let sweeper = health.supervise(
        "sweeper",
        stop_executing.clone(),
        sweeper::run(
            ledger.clone(),
            availability.clone(),
            retention(&settings),
            clock.clone(),
            metrics.clone(),
            stop_executing.clone(),
        ),
    );
    let periodic_reconcile = health.supervise(
        "periodic reconcile",
        stop_executing.clone(),
        reconcile::periodic::run(
            reconciler,
            settings.reconcile.interval,
            availability.clone(),
            stop_executing.clone(),
        ),
    );
    let results = health.supervise(
        "results publisher",
        stop_executing.clone(),
        ResultsPublisher::new(
            ledger.clone(),
            settings.amqp.clone(),
            metrics.clone(),
            availability.clone(),
        )
        .run(stop_executing.clone()),
    );
    let keeper = health.supervise(
        "ledger keeper",
        stop_executing.clone(),
        availability::keep(
            ledger.clone(),
            availability.clone(),
            control.clone(),
            stop_executing.clone(),
        ),
    );
    tracing::info!(http = %http_addr, "palworker is running.");
    Ok(RunningApp {
        ledger,
        metrics,
        health,
        http_addr,
        executor: control,
        stop_consuming,
        stop_executing,
        stop_http,
        consumer,
        executor_task,
        keeper,
        gauges,
        sweeper,
        periodic_reconcile,
        results,
        http,
    })
}

impl RunningApp {
    /// Graceful stop: stop consuming (unacknowledged deliveries return to the
    /// queue), let in-flight actions finish within `worker.shutdown_grace`,
    /// flush the ledger, stop HTTP.
    pub async fn stop(self) -> anyhow::Result<()> {
        tracing::info!("Stopping: no new deliveries.");
        self.stop_consuming.cancel();
        let _ = self.consumer.await;
        self.stop_executing.cancel();
        let _ = self.executor_task.await;
        let _ = self.keeper.await;
        let _ = self.gauges.await;
        let _ = self.sweeper.await;
        let _ = self.periodic_reconcile.await;
        let _ = self.results.await;
        let flushed = if self.health.ledger.is_available() {
            let ledger = self.ledger.clone();
            tokio::task::spawn_blocking(move || ledger.flush())
                .await?
                .context("flushing the ledger")
        } else {
            // Everything acknowledged was flushed before; what was not
            // flushed since is recovered at the next start.
            Err(anyhow::anyhow!(
                "the ledger is unavailable; not flushed at shutdown"
            ))
        };
        self.stop_http.cancel();
        let _ = self.http.await;
        flushed?;
        tracing::info!("Stopped cleanly; the ledger is flushed.");
        Ok(())
    }
}

/// Runs the worker until `shutdown` resolves, then drains.
pub async fn run(
    settings: Settings,
    clock: Arc<dyn Clock>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut shutdown = std::pin::pin!(shutdown);
    // A partition's standby may be told to stop before it ever starts.
    let app = tokio::select! {
        app = start(settings, clock) => app?,
        _ = &mut shutdown => return Ok(()),
    };
    shutdown.await;
    app.stop().await
}

/// A running router (`palworker route`, SPEC §10).
pub struct RunningRouter {
    pub metrics: Metrics,
    pub health: Health,
    pub http_addr: SocketAddr,
    stop_routing: CancellationToken,
    stop_http: CancellationToken,
    router: JoinHandle<()>,
    http: JoinHandle<std::io::Result<()>>,
}

/// Starts the router: no ledger; the events queue to the partition queues,
/// and `/metrics`, `/healthz`, `/readyz` on `http.listen`.
pub async fn start_router(settings: Settings) -> anyhow::Result<RunningRouter> {
    let metrics = Metrics::new();
    let health = Health::new(LedgerAvailability::new(metrics.clone()), metrics.clone());
    if settings.security.is_open() {
        tracing::warn!(
            "security.publishers is empty: the router forwards events from ANY publisher. \
             Set an allow-list before production use."
        );
    }
    let validator = Validator::new(IntakeSettings {
        max_message_bytes: settings.amqp.max_message_bytes,
        max_actions_per_event: settings.limits.max_actions_per_event,
        security: settings.security.clone(),
    });
    let router = Router::new(
        settings.amqp.clone(),
        &settings.partitions,
        validator,
        metrics.clone(),
        health.clone(),
    )?;
    let listener = http::bind(settings.http.listen).await?;
    let http_addr = listener.local_addr()?;
    let stop_http = CancellationToken::new();
    let stop_routing = CancellationToken::new();
    let http = tokio::spawn(http::serve(
        listener,
        http::probes(metrics.clone(), health.clone()),
        stop_http.clone().cancelled_owned(),
    ));
    let router = health.supervise(
        "router",
        stop_routing.clone(),
        router.run(stop_routing.clone()),
    );
    tracing::info!(http = %http_addr, "palworker route is running.");
    Ok(RunningRouter {
        metrics,
        health,
        http_addr,
        stop_routing,
        stop_http,
        router,
        http,
    })
}

impl RunningRouter {
    /// Graceful stop: copies already published are confirmed and their
    /// deliveries acknowledged; the rest return to the events queue.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop_routing.cancel();
        let _ = self.router.await;
        self.stop_http.cancel();
        let _ = self.http.await;
        tracing::info!("The router stopped.");
        Ok(())
    }
}

/// Runs the router until `shutdown` resolves.
pub async fn route(settings: Settings, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let router = start_router(settings).await?;
    shutdown.await;
    router.stop().await
}

/// How long records are kept (`ledger.retention`, `ledger.dedup_retention`,
/// `audit.retention`).
pub fn retention(settings: &Settings) -> Retention {
    let days = |duration: std::time::Duration| {
        chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::MAX)
    };
    Retention {
        records: days(settings.ledger.retention),
        markers: days(settings.ledger.dedup_retention),
        audit: (!settings.audit.retention.is_zero()).then(|| days(settings.audit.retention)),
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
    tracing::info!("Shutdown signal received.");
}
