//! Where an operator command goes: the ledger itself, the running worker's
//! admin socket, or its admin API over TCP with a token.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use palworker_config::Settings;

use crate::ledger::{Ledger, LedgerError};
use crate::operators::{AdminApiClient, Attached, LedgerOperations, Operator, Reached};

use super::UsageError;

/// Where operator commands go: the ledger itself when no worker holds it,
/// else the running worker's admin API.
pub(super) enum Target {
    Local(LedgerOperations),
    Remote(AdminApiClient),
}

/// Whether a command may create the ledger when there is none yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Create {
    Yes,
    No,
}

impl Target {
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
