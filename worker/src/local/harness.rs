//! A complete local environment on one machine: the PAL simulator in-process,
//! a uniquely named topology on the local RabbitMQ, a ledger in a temporary
//! directory and the real worker. Used by `palworker demo`, the benchmarks and
//! the integration tests (the `spawn_app` of this codebase).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use palworker_config::Settings;

use crate::amqp::{BrokerAdmin, FetchedMessage, Publisher, Topology};
use crate::app::{self, RunningApp};
use crate::clock::{Clock, SystemClock};
use palworker_sim::{Faults, SimClient, SimConfig, SimHandle, Simulator};

/// The default local broker.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The environment variable a harness's configuration reads the admin API
/// token from (`http.admin_token_env`); it is in [`Harness::config_env`].
pub const ADMIN_TOKEN_ENV: &str = "PALWORKER_HARNESS_ADMIN_TOKEN";

/// The admin API token of every harness (dev only; never a real secret).
pub const ADMIN_TOKEN: &str = "harness-admin-token";

/// A service principal: one credential, one identity per tenant.
#[derive(Debug, Clone)]
pub struct ServicePrincipal {
    /// Credential name in the worker's configuration.
    pub credential: String,
    pub client_id: String,
    /// (tenant id, object id) pairs.
    pub identities: Vec<(String, String)>,
}

/// Knobs of a harness (defaults suit tests: fast retries, small limits).
#[derive(Debug, Clone)]
pub struct HarnessOptions {
    pub amqp_url: String,
    pub principals: Vec<ServicePrincipal>,
    /// Extra TOML appended to the generated configuration (overrides by section).
    pub extra_toml: String,
    pub faults: Faults,
    /// Where the ledger lives; None = a fresh temporary directory.
    pub ledger_path: Option<PathBuf>,
    /// A name prefix for the topology (made unique per harness).
    pub name: String,
    /// Environment the configuration reads secrets from (besides the
    /// principals' own), e.g. for credentials added through `extra_toml`.
    pub extra_env: Vec<(String, String)>,
    /// The admin token (`http.admin_token_env`); `None`: no admin token at
    /// all, as in SPEC §6's configuration.
    pub admin_token: Option<String>,
}

impl Default for HarnessOptions {
    fn default() -> Self {
        HarnessOptions {
            amqp_url: std::env::var("PALWORKER_TEST_AMQP_URL")
                .unwrap_or_else(|_| DEFAULT_AMQP_URL.to_owned()),
            principals: Vec::new(),
            extra_toml: String::new(),
            faults: Faults::default(),
            ledger_path: None,
            name: "palworker-test".to_owned(),
            extra_env: Vec::new(),
            admin_token: Some(ADMIN_TOKEN.to_owned()),
        }
    }
}

/// The secret of a harness principal (dev only; never a real secret).
pub fn principal_secret(principal: &ServicePrincipal) -> String {
    format!("sim-secret-{}", principal.client_id)
}

pub struct Harness {
    pub simulator: Simulator,
    sim_handle: Option<SimHandle>,
    pub settings: Settings,
    pub topology: Topology,
    pub app: Option<RunningApp>,
    publisher: Option<Publisher>,
    /// Deliveries published through [`Harness::publish`] and friends.
    pub published: u64,
    /// The generated configuration (TOML) and the environment it reads
    /// secrets from, for running the CLI or the worker as a process.
    pub config_toml: String,
    pub config_env: Vec<(String, String)>,
    /// Deliveries counted by workers of this harness that were stopped since
    /// (a restarted worker's metrics start at zero).
    seen_by_stopped_workers: u64,
    clock: Arc<dyn Clock>,
    _ledger_dir: Option<TempDir>,
}

impl Harness {
    /// Starts the simulator, declares a fresh topology and starts the worker.
    pub async fn start(options: HarnessOptions) -> anyhow::Result<Harness> {
        Self::start_with_clock(options, Arc::new(SystemClock)).await
    }

    pub async fn start_with_clock(
        options: HarnessOptions,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Harness> {
        let mut harness = Self::prepare(options, clock).await?;
        harness.start_worker().await?;
        Ok(harness)
    }

    /// Everything but the worker (tests that run the worker as a process use this).
    pub async fn prepare(
        options: HarnessOptions,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Harness> {
        let clients = options
            .principals
            .iter()
            .map(|p| {
                let mut client = SimClient::with_secret(p.client_id.clone(), principal_secret(p));
                for (tenant, object) in &p.identities {
                    client = client.identity(tenant, object);
                }
                client
            })
            .collect();
        let simulator = Simulator::new(SimConfig {
            clients,
            faults: options.faults.clone(),
            ..SimConfig::default()
        });
        let sim_handle = simulator
            .spawn("127.0.0.1:0".parse().expect("valid address"))
            .await
            .context("starting the PAL simulator")?;
        let unique = format!("{}-{}", options.name, uuid::Uuid::new_v4().simple());
        let (ledger_dir, ledger_path) = match &options.ledger_path {
            Some(path) => (None, path.clone()),
            None => {
                let dir = TempDir::new("palworker-ledger")?;
                let path = dir.path().join("ledger");
                (Some(dir), path)
            }
        };
        let mut toml = format!(
            r#"
[amqp]
url = "{amqp}"
exchange = "{unique}.lifecycle"
queue = "{unique}.events"
dead_letter_exchange = "{unique}.lifecycle.dlx"
dead_letter_queue = "{unique}.dead"
prefetch = 64
reconnect_initial = "100ms"
reconnect_max = "2s"

[pal]
arm_endpoint = "{sim}"
authority = "{sim}"
request_timeout = "10s"

[ledger]
path = "{ledger}"
cache_capacity = 16777216

[http]
listen = "127.0.0.1:0"
{admin_token_line}"#,
            amqp = options.amqp_url,
            sim = sim_handle.base_url(),
            ledger = ledger_path.display(),
            admin_token_line = match options.admin_token {
                Some(_) => format!("admin_token_env = \"{ADMIN_TOKEN_ENV}\"\n"),
                None => String::new(),
            },
        );
        let mut env: Vec<(String, String)> = options
            .admin_token
            .iter()
            .map(|token| (ADMIN_TOKEN_ENV.to_owned(), token.clone()))
            .collect();
        for principal in &options.principals {
            let variable = format!(
                "PALWORKER_HARNESS_SECRET_{}",
                principal.credential.to_ascii_uppercase().replace('-', "_")
            );
            toml.push_str(&format!(
                "\n[credentials.{}]\nclient_id = \"{}\"\nclient_secret_env = \"{}\"\n",
                principal.credential, principal.client_id, variable
            ));
            env.push((variable, principal_secret(principal)));
        }
        env.extend(options.extra_env.iter().cloned());
        let config_toml =
            Settings::layer_toml(&toml, &options.extra_toml).context("the harness's extra TOML")?;
        let settings =
            Settings::from_toml_str(&config_toml, env.clone()).context("harness configuration")?;
        let topology = Topology::from_settings(&settings.amqp);
        let admin = BrokerAdmin::connect(settings.amqp.url.expose())
            .await
            .context("connecting to the local RabbitMQ")?;
        admin.declare(&topology).await?;
        admin.close().await;
        Ok(Harness {
            simulator,
            sim_handle: Some(sim_handle),
            settings,
            topology,
            app: None,
            publisher: None,
            published: 0,
            config_toml,
            config_env: env,
            seen_by_stopped_workers: 0,
            clock,
            _ledger_dir: ledger_dir,
        })
    }

    pub async fn start_worker(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.app.is_none(), "the worker is already running");
        self.app = Some(app::start(self.settings.clone(), self.clock.clone()).await?);
        Ok(())
    }

    /// Graceful stop of the worker (the simulator and the topology stay).
    pub async fn stop_worker(&mut self) -> anyhow::Result<()> {
        let seen = self.deliveries_seen();
        if let Some(app) = self.app.take() {
            self.seen_by_stopped_workers = seen;
            app.stop().await?;
        }
        Ok(())
    }

    /// Forgets the publishing connection, so the next publish opens a new one
    /// (after the broker closed it).
    pub async fn reset_publisher(&mut self) {
        if let Some(publisher) = self.publisher.take() {
            publisher.close().await;
        }
    }

    /// Writes the configuration to `path`, with `http.listen` set to the
    /// running worker's actual address (so a CLI process reaches its admin API).
    pub fn write_config(&self, path: &std::path::Path) -> anyhow::Result<()> {
        let text = match &self.app {
            Some(app) => Settings::layer_toml(
                &self.config_toml,
                &format!("[http]\nlisten = \"{}\"\n", app.http_addr),
            )?,
            None => self.config_toml.clone(),
        };
        std::fs::write(path, text)?;
        Ok(())
    }

    pub fn app(&self) -> &RunningApp {
        self.app.as_ref().expect("the worker is running")
    }

    pub fn sim_url(&self) -> String {
        self.sim_handle
            .as_ref()
            .map(|h| h.base_url())
            .unwrap_or_default()
    }

    async fn publisher(&mut self) -> anyhow::Result<&Publisher> {
        if self.publisher.is_none() {
            self.publisher = Some(
                Publisher::connect(
                    self.settings.amqp.url.expose(),
                    &self.settings.amqp.exchange,
                )
                .await?,
            );
        }
        Ok(self.publisher.as_ref().expect("just connected"))
    }

    /// Publishes a CloudEvent (structured mode, type as routing key) with confirms.
    pub async fn publish(&mut self, event: &serde_json::Value) -> anyhow::Result<()> {
        self.publisher().await?.publish_event(event, None).await?;
        self.published += 1;
        Ok(())
    }

    /// Publishes arbitrary bytes (malformed-input tests).
    pub async fn publish_raw(
        &mut self,
        routing_key: &str,
        body: &[u8],
        content_type: &str,
    ) -> anyhow::Result<()> {
        self.publisher()
            .await?
            .publish(routing_key, body, content_type, None)
            .await?;
        self.published += 1;
        Ok(())
    }

    /// Deliveries the workers of this harness have counted (every outcome),
    /// including those counted before a restart.
    pub fn deliveries_seen(&self) -> u64 {
        let Some(app) = &self.app else {
            return self.seen_by_stopped_workers;
        };
        self.seen_by_stopped_workers + app.metrics.deliveries_counted()
    }

    /// Waits until every published delivery was counted and no action is
    /// pending, scheduled or in flight.
    pub async fn wait_until_settled(&self, timeout: Duration) -> anyhow::Result<()> {
        self.wait_for(
            timeout,
            "every delivery processed and no action pending",
            |h| h.deliveries_seen() >= h.published && h.app().ledger.pending_count() == 0,
        )
        .await
    }

    /// Polls `condition` until it holds (waiting on a condition, not on time:
    /// the timeout only bounds a broken run).
    pub async fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        mut condition: impl FnMut(&Harness) -> bool,
    ) -> anyhow::Result<()> {
        super::wait_until(
            timeout,
            what,
            || condition(self),
            || {
                format!(
                    "published {}, seen {}, pending {}",
                    self.published,
                    self.deliveries_seen(),
                    self.app
                        .as_ref()
                        .map(|a| a.ledger.pending_count())
                        .unwrap_or(0)
                )
            },
        )
        .await
    }

    /// Takes every message from the dead-letter queue.
    pub async fn dead_letters(&self) -> anyhow::Result<Vec<FetchedMessage>> {
        let admin = BrokerAdmin::connect(self.settings.amqp.url.expose()).await?;
        let messages = admin.drain(&self.topology.dead_letter_queue).await?;
        admin.close().await;
        Ok(messages)
    }

    pub fn metrics_text(&self) -> String {
        self.app().metrics.render()
    }

    /// Stops everything and deletes the topology.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.stop_worker().await?;
        if let Some(publisher) = self.publisher.take() {
            publisher.close().await;
        }
        let admin = BrokerAdmin::connect(self.settings.amqp.url.expose()).await?;
        admin.delete(&self.topology).await?;
        admin.close().await;
        if let Some(handle) = self.sim_handle.take() {
            handle.shutdown().await;
        }
        Ok(())
    }
}

/// A directory under the system's temporary directory, removed with
/// everything in it when dropped.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `{temp}/{prefix}-{random}`.
    pub fn new(prefix: &str) -> std::io::Result<TempDir> {
        let path = std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&path)?;
        Ok(TempDir(path))
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
