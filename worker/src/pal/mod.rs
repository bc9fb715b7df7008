//! The PAL client: the whole conversation with Microsoft's identity platform
//! and Azure Resource Manager's `Microsoft.ManagementPartner` provider for one
//! action (SPEC §5, PAL-API.md), behind one call: [`PalClient::reconcile`].
//!
//! Only this module imports reqwest for PAL. It classifies every failure as
//! [`PalError::Transient`] (retry later), [`PalError::Permanent`] (the
//! action fails) or [`PalError::IdentityGone`] (the identity left its
//! tenant: a removal is `orphaned`): that decides the action's fate, so it
//! is a type.
//!
//! | file | holds |
//! | --- | --- |
//! | `mod.rs` | [`PalClient`], its settings and shared state |
//! | `session.rs` | [`PalClient::reconcile`]: token → identity check → GET → write or not, a 401 refreshing the token once |
//! | `token.rs` | client credentials (secret or certificate assertion), the token cache |
//! | `read.rs` | [`PalClient::read_link`]: a reconcile's read of one account's link |
//! | `arm.rs` | the partner calls, the per-tenant rate limit, `Retry-After` memory |
//! | `slots.rs` | the tenant's next request slot: actions' requests before reconciles' reads |
//! | `latency.rs` | the mean time PAL takes to answer, and how many actions of a tenant that keeps busy |
//! | `body.rs` | what is accepted of an answer: no redirect, no body over [`MAX_RESPONSE_BYTES`] |
//! | `error.rs` | [`PalError`], `Retry-After` parsing |

mod arm;
mod body;
mod error;
mod latency;
#[cfg(test)]
mod proptests;
mod read;
mod session;
mod slots;
#[cfg(test)]
mod tests;
mod token;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use governor::{DefaultKeyedRateLimiter, RateLimiter};
use palworker_config::{CredentialSettings, PalSettings};
use palworker_events::{ObjectId, TenantId};

pub use arm::Link;
pub use body::MAX_RESPONSE_BYTES;
pub use error::{PalError, Transient, retry_after};
pub use latency::{ASSUMED_LATENCY, tenant_concurrency};
pub use read::ReadLink;
pub use session::{Checkpoint, Proceed, Reconcile, ReconcileError, Reconciled, Write, WriteMode};
pub use token::{AccessToken, SECRET_ROTATION_GRACE, TOKEN_CACHE_BYTES, TOKEN_RENEWAL_MARGIN};

use crate::clock::Clock;
use crate::telemetry::Metrics;
use token::{Credential, TokenCache, TokenKey};

/// The PAL client. Cheap to clone.
#[derive(Clone)]
pub struct PalClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    arm_endpoint: String,
    authority: String,
    api_version: String,
    credentials: HashMap<String, Credential>,
    tokens: Mutex<TokenCache>,
    /// Identities (tenant, object) that PAL answered with a `Retry-After`,
    /// and until when: no request for them is sent before, whichever action
    /// it belongs to (a newer action for the same account must wait too).
    throttled: Mutex<HashMap<(TenantId, ObjectId), DateTime<Utc>>>,
    /// One async lock per (credential, tenant): concurrent misses fetch one token.
    token_fetch: Mutex<HashMap<TokenKey, Arc<tokio::sync::Mutex<()>>>>,
    limiter: DefaultKeyedRateLimiter<TenantId>,
    /// The pace of reconcile reads per tenant, under the tenant's rate
    /// (`arm::RECONCILE_SHARE`): they take `limiter`'s slots too.
    reconcile_limiter: DefaultKeyedRateLimiter<TenantId>,
    /// Action requests waiting for a tenant's slot: reconcile reads yield to them.
    action_waits: slots::ActionWaits,
    /// `1 / limits.per_tenant_rps`: how long a reconcile read that yielded waits.
    slot_period: Duration,
    /// The mean time of an ARM request (the executor sizes its per-tenant
    /// concurrency with it).
    latency: latency::MeanLatency,
    /// `limits.per_tenant_rps`.
    per_tenant_rps: f64,
    /// `pal.verify_writes`: read each write back.
    verify_writes: bool,
    metrics: Metrics,
    clock: Arc<dyn Clock>,
}

impl PalClient {
    pub fn new(
        settings: &PalSettings,
        credentials: &std::collections::BTreeMap<String, CredentialSettings>,
        per_tenant_rps: f64,
        metrics: Metrics,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<PalClient> {
        let http = reqwest::Client::builder()
            .timeout(settings.request_timeout)
            .connect_timeout(settings.request_timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("palworker/", env!("CARGO_PKG_VERSION")))
            .pool_max_idle_per_host(256)
            // PAL and the token endpoint never redirect: a redirect could
            // carry the bearer token or the secret's form elsewhere (body.rs).
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let mut resolved = HashMap::new();
        for (name, settings) in credentials {
            resolved.insert(name.clone(), Credential::from_settings(name, settings)?);
        }
        Ok(PalClient {
            inner: Arc::new(Inner {
                http,
                arm_endpoint: settings
                    .arm_endpoint
                    .as_str()
                    .trim_end_matches('/')
                    .to_owned(),
                authority: settings.authority.as_str().trim_end_matches('/').to_owned(),
                api_version: settings.api_version.clone(),
                credentials: resolved,
                tokens: Mutex::new(TokenCache::default()),
                throttled: Mutex::new(HashMap::new()),
                token_fetch: Mutex::new(HashMap::new()),
                limiter: RateLimiter::keyed(arm::tenant_quota(per_tenant_rps)),
                reconcile_limiter: RateLimiter::keyed(arm::reconcile_quota(per_tenant_rps)),
                action_waits: slots::ActionWaits::default(),
                slot_period: arm::slot_period(per_tenant_rps),
                latency: latency::MeanLatency::default(),
                per_tenant_rps,
                verify_writes: settings.verify_writes,
                metrics,
                clock,
            }),
        })
    }

    /// How many actions of one tenant are worth having in flight now:
    /// [`tenant_concurrency`] at the mean time PAL has been taking to answer.
    pub fn tenant_concurrency(&self) -> usize {
        tenant_concurrency(self.inner.per_tenant_rps, self.inner.latency.get())
    }
}

impl Inner {
    /// The resource whose `/.default` scope tokens are requested for.
    fn arm_endpoint_scope(&self) -> &str {
        // Tokens are always for Azure Resource Manager, also when the API is
        // served by a simulator or a sovereign-cloud endpoint of the same shape.
        if self.arm_endpoint.starts_with("https://management.") {
            &self.arm_endpoint
        } else {
            "https://management.azure.com"
        }
    }
}
