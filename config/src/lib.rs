//! Typed settings of palworker.
//!
//! One TOML file (default [`Settings::DEFAULT_PATH`]) plus environment
//! variables `PALWORKER__SECTION__KEY` (double underscores, section and key
//! case-insensitive), which win over the file. The result is parsed once, at
//! start-up, into [`Settings`]: durations are [`Duration`]s, endpoints are
//! [`url::Url`]s, the listen address is a [`SocketAddr`], and the secrets the
//! configuration names (client secrets, certificates, the admin token) are
//! read and wrapped in [`SecretString`], whose `Debug` prints `[REDACTED]`;
//! the broker URL, which holds a password, may be read from a file too
//! (`amqp.url_file`) and prints with `***` for the password.
//! Anything wrong — a typo'd key, a bad duration, plain http to a remote
//! host, a missing secret file — is a [`ConfigError`] whose one-line message
//! names the key and the reason.
//!
//! This crate does no network IO; it only reads the files the configuration
//! names. See SPEC §6 for the keys.
//!
//! ```
//! let settings = palworker_config::Settings::from_toml_str(
//!     "[limits]\nconcurrency = 8\n",
//!     [("PALWORKER__WORKER__DRY_RUN".to_owned(), "true".to_owned())],
//! )
//! .unwrap();
//! assert_eq!(settings.limits.concurrency, 8);
//! assert!(settings.worker.dry_run);
//! ```
//!
//! Environment values are text, read as the key's type: `10`, `true`,
//! `500ms`, or `["hr.", "project."]` for a list. Section and key names from the
//! environment are lower-cased, so a credential or publisher name can only be
//! overridden from the environment if it is written in lower case.
#![forbid(unsafe_code)]

mod amqp;
mod credentials;
mod error;
mod pal;
mod partitions;
mod raw;
mod sections;
mod sources;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

pub use secrecy::{ExposeSecret, SecretString};

pub use crate::amqp::{AmqpSettings, AmqpUrl};
pub use crate::credentials::{CredentialSecret, CredentialSettings};
pub use crate::error::ConfigError;
pub use crate::pal::PalSettings;
pub use crate::partitions::PartitionSettings;
pub use crate::raw::DeclareMode;
pub use crate::sections::{
    AuditSettings, HttpSettings, LedgerSettings, LimitsSettings, ReconcileSettings, RetrySettings,
    SecuritySettings, WorkerSettings,
};

#[cfg(doc)]
use std::{net::SocketAddr, time::Duration};

/// Everything palworker is configured with, checked and typed.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `[amqp]`: broker and topology.
    pub amqp: AmqpSettings,
    /// `[pal]`: ARM and token endpoints.
    pub pal: PalSettings,
    /// `[credentials.NAME]`: application identities by name.
    pub credentials: BTreeMap<String, CredentialSettings>,
    /// `[ledger]`: the sled ledger.
    pub ledger: LedgerSettings,
    /// `[retry]`: schedule of retries.
    pub retry: RetrySettings,
    /// `[limits]`: concurrency, rate and blast-radius limits.
    pub limits: LimitsSettings,
    /// `[worker]`: dry run and shutdown.
    pub worker: WorkerSettings,
    /// `[http]`: metrics, health and admin API.
    pub http: HttpSettings,
    /// `[security]`: allowed publishers.
    pub security: SecuritySettings,
    /// `[audit]`: the audit trail.
    pub audit: AuditSettings,
    /// `[reconcile]`: comparing PAL with the desired links.
    pub reconcile: ReconcileSettings,
    /// `[partitions]`: tenant partitions, the router and the admin APIs.
    pub partitions: PartitionSettings,
}

impl Settings {
    /// The `--config` default, relative to the working directory.
    pub const DEFAULT_PATH: &str = "config/palworker.toml";

    /// Loads the TOML file at `path` (or, with `None`, only the built-in
    /// defaults) with the `PALWORKER__…` variables of `env` applied on top.
    ///
    /// `env` is the whole environment (the binary passes
    /// `std::env::vars()`): `client_secret_env` and `admin_token_env` look
    /// their variables up in it too, so tests can inject them. A `path` that
    /// does not exist is an error naming it.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        let toml = match path {
            None => None,
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| {
                    if source.kind() == io::ErrorKind::NotFound {
                        ConfigError::FileNotFound {
                            path: path.to_path_buf(),
                        }
                    } else {
                        ConfigError::FileUnreadable {
                            path: path.to_path_buf(),
                            source,
                        }
                    }
                })?;
                Some(sources::parse_toml(&text, Some(path))?)
            }
        };
        Settings::build(toml, env.into_iter().collect())
    }

    /// Like [`Settings::load`], from TOML text instead of a file (tests, the
    /// demo).
    pub fn from_toml_str(
        toml: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        let toml = sources::parse_toml(toml, None)?;
        Settings::build(Some(toml), env.into_iter().collect())
    }

    /// `overlay` laid over `base`, key by key (tables merge, values
    /// replace), as one TOML document: how the local environment adds a
    /// test's settings to its own, and writes the result for a worker
    /// process.
    pub fn layer_toml(base: &str, overlay: &str) -> Result<String, ConfigError> {
        sources::layer_toml(base, overlay)
    }

    fn build(
        toml: Option<figment::value::Dict>,
        env: BTreeMap<String, String>,
    ) -> Result<Settings, ConfigError> {
        let raw = sources::extract(toml, &env)?;
        // Section order: the first problem reported is the first in the file.
        let amqp = raw.amqp.into_settings()?;
        let pal = raw.pal.into_settings()?;
        let credentials = credentials::credentials(raw.credentials, &env)?;
        let ledger = raw.ledger.into_settings()?;
        let retry = raw.retry.into_settings()?;
        let limits = raw.limits.into_settings()?;
        let worker = raw.worker.into_settings();
        let http = raw.http.into_settings(&env)?;
        let security = raw.security.into_settings()?;
        let audit = raw.audit.into_settings();
        let reconcile = raw.reconcile.into_settings();
        let partitions = raw.partitions.into_settings(&security)?;
        Ok(Settings {
            amqp,
            pal,
            credentials,
            ledger,
            retry,
            limits,
            worker,
            http,
            security,
            audit,
            reconcile,
            partitions,
        })
    }
}
