//! A partitioned deployment on one machine (SPEC §10): a [`Harness`]'s
//! simulator and broker names, one router and `count` partition workers,
//! each partition with its own ledger (in a temporary directory) and its
//! own HTTP port. The router and the workers run in-process, or — for the
//! tests that kill them — as processes from [`PartitionedHarness::config_of`].

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use palworker_config::Settings;
use palworker_events::{Event, PartitionCount, PartitionIndex};

use super::{Harness, HarnessOptions, TempDir};
use crate::amqp::{BrokerAdmin, Topology, partition_queue};
use crate::app::{self, RunningApp, RunningRouter};
use crate::clock::SystemClock;

/// Which process a configuration is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Router,
    Partition(PartitionIndex),
}

/// One router and `count` partition workers against one simulator.
pub struct PartitionedHarness {
    /// The simulator, the publisher and the events topology (its own
    /// worker never runs).
    pub harness: Harness,
    pub count: PartitionCount,
    pub router: Option<RunningRouter>,
    /// Partition `i`'s worker, while it runs in-process.
    pub workers: Vec<Option<RunningApp>>,
    /// Copies the published events owe the partitions (one per partition
    /// an event concerns).
    pub copies: u64,
    ledgers: TempDir,
}

impl PartitionedHarness {
    /// Prepares the simulator and the topology of `count` partitions (the
    /// router's declaration), starting nothing.
    pub async fn prepare(options: HarnessOptions, count: u32) -> anyhow::Result<Self> {
        let count = PartitionCount::new(count)?;
        let harness = Harness::prepare(options, Arc::new(SystemClock)).await?;
        let this = PartitionedHarness {
            harness,
            count,
            router: None,
            workers: count.all().map(|_| None).collect(),
            copies: 0,
            ledgers: TempDir::new("palworker-partitions")?,
        };
        let admin = BrokerAdmin::connect(this.harness.settings.amqp.url.expose()).await?;
        admin.declare(&this.router_topology()).await?;
        admin.close().await;
        Ok(this)
    }

    /// [`PartitionedHarness::prepare`], then the router and every worker.
    pub async fn start(options: HarnessOptions, count: u32) -> anyhow::Result<Self> {
        let mut this = Self::prepare(options, count).await?;
        this.start_router().await?;
        for partition in this.count.all() {
            this.start_worker(partition).await?;
        }
        Ok(this)
    }

    /// The configuration (TOML) of the router or of one partition's worker:
    /// the harness's, with `[partitions]` and the partition's own ledger.
    pub fn config_of(&self, role: Role) -> anyhow::Result<String> {
        let (index, ledger) = match role {
            Role::Router => (0, self.ledgers.path().join("router-has-none")),
            Role::Partition(partition) => (partition.get(), self.ledger_path(partition)),
        };
        Ok(Settings::layer_toml(
            &self.harness.config_toml,
            &format!(
                "[partitions]\ncount = {}\nindex = {index}\n[ledger]\npath = \"{}\"\n",
                self.count,
                ledger.display()
            ),
        )?)
    }

    /// The settings of [`PartitionedHarness::config_of`].
    pub fn settings_of(&self, role: Role) -> anyhow::Result<Settings> {
        Settings::from_toml_str(&self.config_of(role)?, self.harness.config_env.clone())
            .context("partitioned harness configuration")
    }

    /// Partition `partition`'s ledger directory.
    pub fn ledger_path(&self, partition: PartitionIndex) -> std::path::PathBuf {
        self.ledgers
            .path()
            .join(partition.to_string())
            .join("ledger")
    }

    /// The topology the router declares: the events queue and every
    /// partition's queue.
    pub fn router_topology(&self) -> Topology {
        let settings = &self.harness.settings;
        let mut partitions = settings.partitions.clone();
        partitions.count = self.count;
        Topology::for_router(&settings.amqp, &partitions)
    }

    /// Partition `partition`'s queue.
    pub fn queue_of(&self, partition: PartitionIndex) -> String {
        partition_queue(&self.harness.settings.amqp.queue, partition)
    }

    pub async fn start_router(&mut self) -> anyhow::Result<()> {
        self.start_router_with("").await
    }

    /// Starts the router with `overlay` (TOML) laid over its configuration
    /// (another broker user, say).
    pub async fn start_router_with(&mut self, overlay: &str) -> anyhow::Result<()> {
        anyhow::ensure!(self.router.is_none(), "the router is already running");
        let config = Settings::layer_toml(&self.config_of(Role::Router)?, overlay)?;
        let settings = Settings::from_toml_str(&config, self.harness.config_env.clone())?;
        self.router = Some(app::start_router(settings).await?);
        Ok(())
    }

    pub async fn stop_router(&mut self) -> anyhow::Result<()> {
        if let Some(router) = self.router.take() {
            router.stop().await?;
        }
        Ok(())
    }

    pub async fn start_worker(&mut self, partition: PartitionIndex) -> anyhow::Result<()> {
        let slot = partition.get() as usize;
        anyhow::ensure!(self.workers[slot].is_none(), "{partition} already runs");
        let settings = self.settings_of(Role::Partition(partition))?;
        self.workers[slot] = Some(app::start(settings, Arc::new(SystemClock)).await?);
        Ok(())
    }

    pub async fn stop_worker(&mut self, partition: PartitionIndex) -> anyhow::Result<()> {
        if let Some(app) = self.workers[partition.get() as usize].take() {
            app.stop().await?;
        }
        Ok(())
    }

    /// Partition `partition`'s running worker.
    pub fn worker(&self, partition: PartitionIndex) -> &RunningApp {
        self.workers[partition.get() as usize]
            .as_ref()
            .expect("the partition's worker runs")
    }

    /// Publishes an event to the events exchange, as a publisher would, and
    /// counts the copies it owes the partitions.
    pub async fn publish(&mut self, event: &serde_json::Value) -> anyhow::Result<()> {
        let parsed = Event::from_json_slice(&serde_json::to_vec(event)?)?;
        self.copies += self.count.of_event(&parsed).len() as u64;
        self.harness.publish(event).await
    }

    /// Deliveries counted by the in-process partition workers (every
    /// outcome; duplicates too).
    pub fn deliveries_seen(&self) -> u64 {
        self.workers
            .iter()
            .flatten()
            .map(|app| app.metrics.deliveries_counted())
            .sum()
    }

    /// Waits until the events queue and every partition queue are empty,
    /// the in-process workers counted at least every copy owed, and no
    /// action is pending in any of them.
    pub async fn wait_until_settled(&self, timeout: Duration) -> anyhow::Result<()> {
        let admin = BrokerAdmin::connect(self.harness.settings.amqp.url.expose()).await?;
        let mut queues = vec![self.harness.settings.amqp.queue.clone()];
        queues.extend(self.count.all().map(|p| self.queue_of(p)));
        let settled = super::wait_until_async(
            timeout,
            "every queue empty, every copy counted, no action pending",
            async || {
                for queue in &queues {
                    if admin.message_count(queue).await? > 0 {
                        return Ok(false);
                    }
                }
                Ok(self.deliveries_seen() >= self.copies
                    && self
                        .workers
                        .iter()
                        .flatten()
                        .all(|app| app.ledger.pending_count() == 0))
            },
        )
        .await;
        admin.close().await;
        settled.with_context(|| {
            format!(
                "{} of {} copies counted",
                self.deliveries_seen(),
                self.copies
            )
        })?;
        Ok(())
    }

    /// Stops everything and deletes the whole topology.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.stop_router().await?;
        for partition in self.count.all() {
            self.stop_worker(partition).await?;
        }
        let admin = BrokerAdmin::connect(self.harness.settings.amqp.url.expose()).await?;
        admin.delete(&self.router_topology()).await?;
        admin.close().await;
        self.harness.shutdown().await
    }
}
