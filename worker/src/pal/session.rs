//! One action's conversation with PAL (SPEC §5): a token of the account in
//! its tenant, the identity check, the current link, the write that makes it
//! the desired one (or none), and the identity check of what PAL answers. A
//! 401 refreshes the token once per attempt, wherever it comes.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use palworker_core::RetryReason;

use palworker_events::{CredentialName, DesiredLink, ObjectId, PartnerId, TenantId};

use super::PalClient;
use super::arm::{Deleted, Link};
use super::error::PalError;
use super::token::AccessToken;
use crate::telemetry::{TokenRefreshed, Verification, VerificationFinished};

/// What the executor asks of PAL for one action.
#[derive(Debug, Clone, Copy)]
pub struct Reconcile<'a> {
    /// The credential that obtains tokens as the account's identity.
    pub credential: &'a CredentialName,
    pub tenant_id: &'a TenantId,
    pub object_id: &'a ObjectId,
    pub desired: &'a DesiredLink,
    pub mode: WriteMode,
}

/// Whether a reconciliation may write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    Write,
    /// `worker.dry_run`: read PAL, never write to it.
    DryRun,
}

/// The change that makes the link the desired one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// No link yet: create it.
    Put(PartnerId),
    /// Linked to another partner ID: move it.
    Patch(PartnerId),
    /// Linked, but the desired state is no link: remove the current one.
    Delete(PartnerId),
}

impl fmt::Display for Write {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Write::Put(partner) => write!(f, "PUT {partner}"),
            Write::Patch(partner) => write!(f, "PATCH {partner}"),
            Write::Delete(partner) => write!(f, "DELETE {partner}"),
        }
    }
}

/// How a reconciliation ended. `before` is the link PAL showed, `after` the
/// desired one (`None`: no link).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reconciled {
    /// PAL already showed the desired state: nothing was written (the read
    /// itself confirmed the state, at `verified_at`).
    AlreadyAsDesired {
        link: Option<PartnerId>,
        verified_at: DateTime<Utc>,
    },
    /// The write was made (and, with `pal.verify_writes`, read back).
    Written {
        before: Option<PartnerId>,
        after: Option<PartnerId>,
        write: Write,
        verified_at: Option<DateTime<Utc>>,
    },
    /// The DELETE answered 404: the link went away between the read and the
    /// write.
    AlreadyRemoved {
        before: Option<PartnerId>,
        write: Write,
        verified_at: Option<DateTime<Utc>>,
    },
    /// Dry run: what would have been written.
    WouldWrite {
        before: Option<PartnerId>,
        after: Option<PartnerId>,
        write: Write,
    },
    /// The checkpoint said a later event superseded the action: nothing was written.
    Superseded { link: Option<PartnerId> },
    /// The checkpoint said writes are paused: nothing was written, the
    /// action waits for `resume`.
    Paused { link: Option<PartnerId> },
}

/// Whether an attempt may write, asked after PAL was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proceed {
    Write,
    /// A later event superseded the action.
    Superseded,
    /// An operator paused writes to PAL.
    Paused,
}

/// Asked once per attempt, after PAL was read and before anything is written.
pub trait Checkpoint {
    /// Why the question could not be answered.
    type Error;
    /// Whether the attempt may write.
    fn before_write(&self) -> Result<Proceed, Self::Error>;
}

/// Why a reconciliation stopped without an answer.
#[derive(Debug)]
pub enum ReconcileError<E> {
    /// PAL or the token endpoint failed.
    Pal(PalError),
    /// The checkpoint could not be asked.
    Checkpoint(E),
}

impl<E> From<PalError> for ReconcileError<E> {
    fn from(error: PalError) -> Self {
        ReconcileError::Pal(error)
    }
}

/// What a write did: applied (with the link PAL answered, if any), or found
/// the link already gone (a DELETE answered 404).
enum Applied {
    Yes(Option<Link>),
    AlreadyGone,
}

/// Whether this attempt already refreshed its token after a 401.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refresh {
    Available,
    Spent,
}

/// One attempt's token and its single refresh after a 401.
struct Session<'a> {
    client: &'a PalClient,
    request: &'a Reconcile<'a>,
    token: AccessToken,
    refresh: Refresh,
}

impl PalClient {
    /// Brings the account's link to its desired state (SPEC §5 steps 1–3):
    /// nothing is written with a token, or over a link, of another identity
    /// (`identity_mismatch`), nor after `checkpoint` says the action was
    /// superseded.
    pub async fn reconcile<C: Checkpoint>(
        &self,
        request: &Reconcile<'_>,
        checkpoint: &C,
    ) -> Result<Reconciled, ReconcileError<C::Error>> {
        let token = self.token(request.credential, request.tenant_id).await?;
        check_identity(&token, None, request.tenant_id, request.object_id)?;
        let mut session = Session {
            client: self,
            request,
            token,
            refresh: Refresh::Available,
        };
        let link = loop {
            match self.get_link(&session.token).await {
                Err(error) if error.is_unauthorized() => session.refresh(error).await?,
                answer => break answer?,
            }
        };
        check_identity(
            &session.token,
            link.as_ref(),
            request.tenant_id,
            request.object_id,
        )?;
        let current = link.filter(Link::is_active).map(|link| link.partner_id);
        let after = request.desired.partner_id().cloned();
        let write = match (request.desired, &current) {
            (DesiredLink::Absent, None) => None,
            (DesiredLink::Absent, Some(existing)) => Some(Write::Delete(existing.clone())),
            (DesiredLink::Linked(p), Some(existing)) if existing == p => None,
            (DesiredLink::Linked(p), Some(_)) => Some(Write::Patch(p.clone())),
            (DesiredLink::Linked(p), None) => Some(Write::Put(p.clone())),
        };
        let Some(write) = write else {
            return Ok(Reconciled::AlreadyAsDesired {
                link: current,
                verified_at: self.inner.clock.now(),
            });
        };
        if request.mode == WriteMode::DryRun {
            return Ok(Reconciled::WouldWrite {
                before: current,
                after,
                write,
            });
        }
        // A later event may have superseded this action while it read PAL,
        // or an operator paused writes.
        match checkpoint
            .before_write()
            .map_err(ReconcileError::Checkpoint)?
        {
            Proceed::Write => {}
            Proceed::Superseded => return Ok(Reconciled::Superseded { link: current }),
            Proceed::Paused => return Ok(Reconciled::Paused { link: current }),
        }
        let answer = loop {
            let answer = match &write {
                Write::Delete(partner) => {
                    self.delete_link(&session.token, partner)
                        .await
                        .map(|deleted| match deleted {
                            Deleted::Removed => Applied::Yes(None),
                            Deleted::AlreadyGone => Applied::AlreadyGone,
                        })
                }
                Write::Patch(partner) => self
                    .patch_link(&session.token, partner)
                    .await
                    .map(Applied::Yes),
                Write::Put(partner) => self
                    .put_link(&session.token, partner)
                    .await
                    .map(Applied::Yes),
            };
            match answer {
                Err(error) if error.is_unauthorized() => session.refresh(error).await?,
                answer => break answer?,
            }
        };
        if let Applied::Yes(Some(link)) = &answer {
            check_identity(
                &session.token,
                Some(link),
                request.tenant_id,
                request.object_id,
            )?;
        }
        let verified_at = if self.inner.verify_writes {
            Some(session.verify(request.desired).await?)
        } else {
            None
        };
        Ok(match answer {
            Applied::AlreadyGone => Reconciled::AlreadyRemoved {
                before: current,
                write,
                verified_at,
            },
            Applied::Yes(_) => Reconciled::Written {
                before: current,
                after,
                write,
                verified_at,
            },
        })
    }
}

/// Reads after a write until PAL shows it: ARM is eventually consistent.
const VERIFY_PAUSES: [Duration; 4] = [
    Duration::ZERO,
    Duration::from_millis(100),
    Duration::from_millis(300),
    Duration::from_millis(900),
];

impl Session<'_> {
    /// Reads the link back until it is `desired` (a few short tries), and
    /// returns when it was; a link still otherwise after the last try is a
    /// transient failure, so the action is tried again from its first step.
    async fn verify(&mut self, desired: &DesiredLink) -> Result<DateTime<Utc>, PalError> {
        let request = self.request;
        let mut seen = None;
        for pause in VERIFY_PAUSES {
            tokio::time::sleep(pause).await;
            let link = loop {
                match self.client.get_link(&self.token).await {
                    Err(error) if error.is_unauthorized() => self.refresh(error).await?,
                    answer => break answer?,
                }
            };
            check_identity(
                &self.token,
                link.as_ref(),
                request.tenant_id,
                request.object_id,
            )?;
            let current = link.filter(Link::is_active).map(|link| link.partner_id);
            if current.as_ref() == desired.partner_id() {
                VerificationFinished {
                    result: Verification::Confirmed,
                    tenant_id: request.tenant_id,
                }
                .emit(&self.client.inner.metrics);
                return Ok(self.client.inner.clock.now());
            }
            seen = Some(current);
        }
        VerificationFinished {
            result: Verification::Mismatch,
            tenant_id: request.tenant_id,
        }
        .emit(&self.client.inner.metrics);
        let shown = match seen.flatten() {
            Some(partner) => format!("a link to {partner}"),
            None => "no link".to_owned(),
        };
        Err(PalError::transient(
            RetryReason::Unverified,
            format!(
                "the write was not confirmed: PAL still shows {shown} after {} reads",
                VERIFY_PAUSES.len()
            ),
        ))
    }

    /// After a 401: drop the cached token and fetch a new one, once per attempt.
    async fn refresh(&mut self, error: PalError) -> Result<(), PalError> {
        if self.refresh == Refresh::Spent {
            return Err(PalError::permanent(
                "unauthorized",
                format!("still unauthorized after refreshing the token: {error}"),
            ));
        }
        self.refresh = Refresh::Spent;
        let request = self.request;
        TokenRefreshed {
            tenant_id: request.tenant_id,
        }
        .emit(&self.client.inner.metrics);
        self.client
            .invalidate(request.credential, request.tenant_id);
        let token = self
            .client
            .token(request.credential, request.tenant_id)
            .await?;
        check_identity(&token, None, request.tenant_id, request.object_id)?;
        self.token = token;
        Ok(())
    }
}

/// Checks that a token and a link belong to the expected identity (SPEC §5 step 3).
pub(super) fn check_identity(
    token: &AccessToken,
    link: Option<&Link>,
    tenant: &TenantId,
    object: &ObjectId,
) -> Result<(), PalError> {
    if &token.tenant_id != tenant || &token.object_id != object {
        return Err(PalError::permanent(
            "identity_mismatch",
            format!(
                "the credential's token is for identity {}/{} but the account is {}/{}; nothing was written",
                token.tenant_id, token.object_id, tenant, object
            ),
        ));
    }
    if let Some(link) = link {
        let tenant_ok = link.tenant_id.as_ref().is_none_or(|t| t == tenant);
        let object_ok = link.object_id.as_ref().is_none_or(|o| o == object);
        if !tenant_ok || !object_ok {
            return Err(PalError::permanent(
                "identity_mismatch",
                format!(
                    "PAL returned a link of identity {}/{} for account {}/{}; nothing was written",
                    link.tenant_id.as_ref().map_or("?", TenantId::as_str),
                    link.object_id.as_ref().map_or("?", ObjectId::as_str),
                    tenant,
                    object
                ),
            ));
        }
    }
    Ok(())
}
