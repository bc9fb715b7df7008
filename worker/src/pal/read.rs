//! A reconcile's read of one account's link (SPEC §11.3): a token of the
//! account's identity, the identity check, the GET — its slot taken only
//! when no action of the tenant waits for one (`slots.rs`) — and the
//! identity check of what PAL answers. A 401 refreshes the token once.
//! Nothing is written.

use palworker_events::{CredentialName, ObjectId, PartnerId, TenantId};

use super::PalClient;
use super::arm::Link;
use super::error::PalError;
use super::session::check_identity;
use super::slots::Priority;
use crate::telemetry::TokenRefreshed;

/// The account whose link a reconcile reads.
#[derive(Debug, Clone, Copy)]
pub struct ReadLink<'a> {
    /// The credential that obtains tokens as the account's identity.
    pub credential: &'a CredentialName,
    pub tenant_id: &'a TenantId,
    pub object_id: &'a ObjectId,
}

impl PalClient {
    /// The partner ID of the account's active link as PAL shows it (`None`:
    /// no link). Nothing is read with a token of, or accepted about,
    /// another identity (`identity_mismatch`).
    pub async fn read_link(&self, request: &ReadLink<'_>) -> Result<Option<PartnerId>, PalError> {
        let mut token = self.token(request.credential, request.tenant_id).await?;
        check_identity(&token, None, request.tenant_id, request.object_id)?;
        let mut refreshed = false;
        let link = loop {
            match self.get_link_as(&token, Priority::Reconcile).await {
                Err(error) if error.is_unauthorized() && !refreshed => {
                    refreshed = true;
                    TokenRefreshed {
                        tenant_id: request.tenant_id,
                    }
                    .emit(&self.inner.metrics);
                    self.invalidate(request.credential, request.tenant_id);
                    token = self.token(request.credential, request.tenant_id).await?;
                    check_identity(&token, None, request.tenant_id, request.object_id)?;
                }
                Err(error) if error.is_unauthorized() => {
                    return Err(PalError::permanent(
                        "unauthorized",
                        format!("still unauthorized after refreshing the token: {error}"),
                    ));
                }
                answer => break answer?,
            }
        };
        check_identity(&token, link.as_ref(), request.tenant_id, request.object_id)?;
        Ok(link.filter(Link::is_active).map(|link| link.partner_id))
    }
}
