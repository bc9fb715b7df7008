//! Where an operator command goes: the ledger itself, the running worker's
//! admin socket, or its admin API over TCP with a token.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use palworker_config::Settings;

use crate::ledger::{Ledger, LedgerError};
use crate::operators::{AdminApiClient, Attached, LedgerOperations, Operator, Partitions, Reached};

use super::UsageError;
use super::operate::OnePartition;

/// Where operator commands go: the ledger itself when no worker holds it,
/// else the running worker's admin API.
pub(super) enum Target {
    Local(LedgerOperations),
    Remote(AdminApiClient),
    /// Every partition's admin API (`partitions.admin_urls`).
    Partitions(Partitions),
}

/// Whether a command may create the ledger when there is none yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Create {
    Yes,
    No,
}

impl Target {
    /// Where a command goes in a partitioned deployment (SPEC §10):
    /// `--partition I` — that partition's admin API from
    /// `partitions.admin_urls`, or, without them, this machine's partition
    /// ([`Target::connect`]); no `--partition` — every partition when
    /// `admin_urls` lists them. One process: [`Target::connect`]. With the
    /// target, the partition it is when it is one of several.
    pub(super) async fn connect_partitioned(
        settings: &Settings,
        operator: Option<&str>,
        create: Create,
        partition: Option<u32>,
    ) -> anyhow::Result<(Target, Option<OnePartition>)> {
        let partitions = &settings.partitions;
        let count = partitions.count;
        let Some(index) = partition else {
            if partitions.is_partitioned() && !partitions.admin_urls.is_empty() {
                let token = admin_token(settings, operator)?;
                let clients = count
                    .all()
                    .zip(&partitions.admin_urls)
                    .map(|(index, url)| {
                        AdminApiClient::at_url(
                            url,
                            token.clone(),
                            Reached::Partition(index.to_string()),
                        )
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                return Ok((Target::Partitions(Partitions::new(count, clients)?), None));
            }
            let only = partitions.is_partitioned().then_some(OnePartition {
                count,
                index: partitions.index,
            });
            return Ok((Target::connect(settings, operator, create).await?, only));
        };
        let index = count.index(index).map_err(|error| {
            UsageError(format!("--partition {index}: {error} (partitions.count)"))
        })?;
        let only = OnePartition { count, index };
        if let Some(url) = partitions.admin_url(index) {
            let token = admin_token(settings, operator)?;
            let client = AdminApiClient::at_url(url, token, Reached::Partition(index.to_string()))?;
            return Ok((Target::Remote(client), Some(only)));
        }
        if index != partitions.index {
            return Err(UsageError(format!(
                "--partition {}: partitions.admin_urls is empty, so only this machine's partition ({}, partitions.index) can be reached",
                index.get(),
                partitions.index.get()
            ))
            .into());
        }
        Ok((
            Target::connect(settings, operator, create).await?,
            Some(only),
        ))
    }

    pub(super) async fn connect(
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
pub(super) fn usable_admin_socket(ledger: &Path) -> std::io::Result<PathBuf> {
    let socket = crate::admin_socket::socket_path(ledger);
    std::os::unix::net::UnixStream::connect(&socket)?;
    Ok(socket)
}

/// The token operator commands present to a running worker: the one named
/// by `--operator`, else `admin`, else the only one configured.
pub(super) fn admin_token(
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
