//! The smaller sections: `[ledger]`, `[retry]`, `[limits]`, `[worker]`,
//! `[http]` and `[security]`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;

use crate::credentials::{secret_from_env, secret_from_file};
use crate::error::ConfigError;
use crate::raw::{
    RawAudit, RawHttp, RawLedger, RawLimits, RawReconcile, RawRetry, RawSecurity, RawWorker,
};

/// The embedded sled ledger.
#[derive(Debug, Clone)]
pub struct LedgerSettings {
    /// The sled directory (relative paths are relative to the working directory).
    pub path: PathBuf,
    /// sled's page cache, in bytes (TOML key `cache_capacity`).
    pub cache_capacity_bytes: u64,
    /// Events whose every action ended longer ago are removed, with their
    /// actions (their outcomes stay in the audit trail).
    pub retention: Duration,
    /// The `(source, id)` marker of a removed event stays this long after
    /// it ended, so a late redelivery is still a duplicate (at least
    /// `retention`).
    pub dedup_retention: Duration,
}

/// `[audit]`: the audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditSettings {
    /// Records older than this are removed; zero keeps them forever.
    pub retention: Duration,
}

/// `[reconcile]`: the periodic comparison of PAL with the desired links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconcileSettings {
    /// How often; zero turns it off.
    pub interval: Duration,
}

/// The retry schedule of transient PAL failures: exponential with jitter,
/// within a budget of time.
#[derive(Debug, Clone, PartialEq)]
pub struct RetrySettings {
    /// Delay before the first retry (longer than zero).
    pub initial_interval: Duration,
    /// Each delay is the previous one times this (at least 1.0).
    pub multiplier: f64,
    /// No delay is longer than this (at least `initial_interval`).
    pub max_interval: Duration,
    /// After this long since the first attempt, the action fails for good.
    pub max_elapsed: Duration,
    /// Random extra fraction of each delay, from 0.0 to 1.0; it only ever
    /// lengthens a delay.
    pub jitter: f64,
}

/// Bounds on the work in flight and on the blast radius of one event.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitsSettings {
    /// Actions executing at once (at least 1).
    pub concurrency: usize,
    /// PAL requests per second per tenant, all identities together (positive).
    pub per_tenant_rps: f64,
    /// Plans with strictly more actions are held for approval.
    pub max_actions_per_event: usize,
}

/// How the worker runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerSettings {
    /// Plan and record every action, read PAL, never write to it.
    pub dry_run: bool,
    /// Start paused: events are accepted and planned, nothing is written to
    /// PAL until `palworker resume`.
    pub paused: bool,
    /// On SIGTERM/SIGINT, how long in-flight actions may take to finish
    /// before they are checkpointed.
    pub shutdown_grace: Duration,
}

/// The HTTP server: metrics, health and the admin API.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Bearer token the admin API requires, if any (TOML `admin_token_file`
    /// or `admin_token_env`, at most one); it is also `admin_tokens["admin"]`.
    pub admin_token: Option<SecretString>,
    /// Every admin token by the name the audit trail records for it (TOML
    /// `[http.admin_tokens.NAME]` with `file` or `env`, plus `admin`).
    pub admin_tokens: BTreeMap<String, SecretString>,
}

/// Who may publish which events (SPEC §7).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecuritySettings {
    /// Broker-validated AMQP `user_id` → event type prefixes it may publish.
    /// Empty: any publisher may publish anything (development only).
    pub publishers: BTreeMap<String, Vec<String>>,
}

impl SecuritySettings {
    /// Whether a message with this AMQP `user_id` may carry an event of this
    /// type. With no publishers configured, everything is allowed; otherwise
    /// the user must be listed and one of its prefixes must start the type.
    pub fn allows(&self, user_id: Option<&str>, event_type: &str) -> bool {
        if self.is_open() {
            return true;
        }
        user_id
            .and_then(|user_id| self.publishers.get(user_id))
            .is_some_and(|prefixes| {
                prefixes
                    .iter()
                    .any(|prefix| event_type.starts_with(prefix.as_str()))
            })
    }

    /// `true` when no publisher list is configured, so any publisher is
    /// accepted (the worker logs a warning at start-up).
    pub fn is_open(&self) -> bool {
        self.publishers.is_empty()
    }
}

impl RawLedger {
    pub(crate) fn into_settings(self) -> Result<LedgerSettings, ConfigError> {
        if self.path.as_os_str().is_empty() {
            return Err(ConfigError::invalid("ledger.path", "must not be empty"));
        }
        if self.cache_capacity == 0 {
            return Err(ConfigError::invalid(
                "ledger.cache_capacity",
                "must be at least 1 byte",
            ));
        }
        let retention = self.retention.0;
        let dedup_retention = self.dedup_retention.0;
        if retention.is_zero() {
            return Err(ConfigError::invalid(
                "ledger.retention",
                "must be longer than zero",
            ));
        }
        if dedup_retention < retention {
            return Err(ConfigError::invalid(
                "ledger.dedup_retention",
                format!(
                    "must be at least ledger.retention = {} (got {})",
                    humantime::format_duration(retention),
                    humantime::format_duration(dedup_retention)
                ),
            ));
        }
        Ok(LedgerSettings {
            path: self.path,
            cache_capacity_bytes: self.cache_capacity,
            retention,
            dedup_retention,
        })
    }
}

impl RawRetry {
    pub(crate) fn into_settings(self) -> Result<RetrySettings, ConfigError> {
        let initial_interval = self.initial_interval.0;
        let max_interval = self.max_interval.0;
        if initial_interval.is_zero() {
            return Err(ConfigError::invalid(
                "retry.initial_interval",
                "must be longer than zero",
            ));
        }
        // Written so that NaN fails too.
        if !(self.multiplier.is_finite() && self.multiplier >= 1.0) {
            return Err(ConfigError::invalid(
                "retry.multiplier",
                format!("must be at least 1.0 (got {})", self.multiplier),
            ));
        }
        if initial_interval > max_interval {
            return Err(ConfigError::invalid(
                "retry.initial_interval",
                format!(
                    "must not be longer than retry.max_interval = {} (got {})",
                    humantime::format_duration(max_interval),
                    humantime::format_duration(initial_interval)
                ),
            ));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(ConfigError::invalid(
                "retry.jitter",
                format!("must be between 0.0 and 1.0 (got {})", self.jitter),
            ));
        }
        Ok(RetrySettings {
            initial_interval,
            multiplier: self.multiplier,
            max_interval,
            max_elapsed: self.max_elapsed.0,
            jitter: self.jitter,
        })
    }
}

impl RawLimits {
    pub(crate) fn into_settings(self) -> Result<LimitsSettings, ConfigError> {
        if self.concurrency == 0 {
            return Err(ConfigError::invalid(
                "limits.concurrency",
                "must be at least 1 (got 0)",
            ));
        }
        if !(self.per_tenant_rps > 0.0 && self.per_tenant_rps.is_finite()) {
            return Err(ConfigError::invalid(
                "limits.per_tenant_rps",
                format!(
                    "must be a positive finite number (got {})",
                    self.per_tenant_rps
                ),
            ));
        }
        Ok(LimitsSettings {
            concurrency: self.concurrency,
            per_tenant_rps: self.per_tenant_rps,
            max_actions_per_event: self.max_actions_per_event,
        })
    }
}

impl RawWorker {
    pub(crate) fn into_settings(self) -> WorkerSettings {
        WorkerSettings {
            dry_run: self.dry_run,
            paused: self.paused,
            shutdown_grace: self.shutdown_grace.0,
        }
    }
}

impl RawHttp {
    pub(crate) fn into_settings(
        self,
        env: &BTreeMap<String, String>,
    ) -> Result<HttpSettings, ConfigError> {
        let listen = self.listen.trim().parse::<SocketAddr>().map_err(|_| {
            ConfigError::invalid(
                "http.listen",
                format!(
                    "invalid socket address {:?} (expected IP:PORT, e.g. \"127.0.0.1:9464\" or \"[::1]:9464\")",
                    self.listen
                ),
            )
        })?;
        let admin_token = match (self.admin_token_file, self.admin_token_env) {
            (None, None) => None,
            (Some(path), None) => Some(secret_from_file("http.admin_token_file", &path)?),
            (None, Some(variable)) => {
                Some(secret_from_env("http.admin_token_env", &variable, env)?)
            }
            (Some(_), Some(_)) => {
                return Err(ConfigError::invalid(
                    "http",
                    "set at most one of `admin_token_file` or `admin_token_env` (found both)",
                ));
            }
        };
        let mut admin_tokens = BTreeMap::new();
        if let Some(token) = &admin_token {
            admin_tokens.insert("admin".to_owned(), token.clone());
        }
        for (name, named) in self.admin_tokens {
            let key = format!("http.admin_tokens.{name}");
            if name.trim().is_empty() || name.chars().any(char::is_control) {
                return Err(ConfigError::invalid(
                    key,
                    "a token name must be non-empty text without control characters",
                ));
            }
            if admin_tokens.contains_key(&name) {
                return Err(ConfigError::invalid(
                    key,
                    "`admin` is the name of http.admin_token_file / admin_token_env",
                ));
            }
            let token = match (named.file, named.env) {
                (Some(path), None) => secret_from_file(&format!("{key}.file"), &path)?,
                (None, Some(variable)) => secret_from_env(&format!("{key}.env"), &variable, env)?,
                _ => {
                    return Err(ConfigError::invalid(
                        key,
                        "set exactly one of `file` or `env`",
                    ));
                }
            };
            admin_tokens.insert(name, token);
        }
        Ok(HttpSettings {
            listen,
            admin_token,
            admin_tokens,
        })
    }
}

impl RawSecurity {
    pub(crate) fn into_settings(self) -> Result<SecuritySettings, ConfigError> {
        for (user_id, prefixes) in &self.publishers {
            if user_id.trim().is_empty() {
                return Err(ConfigError::invalid(
                    "security.publishers",
                    "a publisher user id must not be empty",
                ));
            }
            if prefixes.iter().any(|prefix| prefix.is_empty()) {
                // "" is a prefix of every type: write the prefixes out so
                // that widening a publisher's rights is a visible change.
                return Err(ConfigError::invalid(
                    format!("security.publishers.{user_id}"),
                    "an event type prefix must not be empty (it would allow every type)",
                ));
            }
        }
        Ok(SecuritySettings {
            publishers: self.publishers,
        })
    }
}

impl RawAudit {
    pub(crate) fn into_settings(self) -> AuditSettings {
        AuditSettings {
            retention: self.retention.0,
        }
    }
}

impl RawReconcile {
    pub(crate) fn into_settings(self) -> ReconcileSettings {
        ReconcileSettings {
            interval: self.interval.0,
        }
    }
}
