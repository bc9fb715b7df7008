//! A local PAL simulator: the Microsoft identity platform's token endpoint and
//! Azure Resource Manager's `Microsoft.ManagementPartner` provider, following
//! `PAL-API.md`, with fault injection and inspection. Used in-process by tests
//! ([`Simulator::spawn`]) and as `palworker sim` ([`run`]).
//!
//! # HTTP surface
//!
//! | request | behaviour |
//! | --- | --- |
//! | `POST /{tenant}/oauth2/v2.0/token` | client credentials with `client_secret` or a certificate `client_assertion` (RS256/PS256, `x5t#S256`, `aud` = this token URL or `https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token`); scope must be `https://management.azure.com/.default`. Issues an HS256 JWT with `tid`, `oid`, `appid`, `aud`, `iss`, `iat`, `nbf`, `exp`. Errors carry `error`, `error_description` (`AADSTSnnnn: …`), `error_codes`, `timestamp`, `trace_id`, `correlation_id`. A client with no identity in `{tenant}` (unknown, foreign or deleted) gets 400 `unauthorized_client` / AADSTS700016. Never subject to fault injection. |
//! | `GET /providers/Microsoft.ManagementPartner/partners` | the caller's Active link as reads see it (see `write_visibility_ms`), or 404 `ManagementPartnerNotFound` |
//! | `GET …/partners/{id}` | 200 if the caller's Active link, as reads see it, carries `{id}`, else 404 |
//! | `PUT …/partners/{id}` | upsert; version bump; `createdTime` kept |
//! | `PATCH …/partners/{id}` | re-point the caller's Active link; 404 without one |
//! | `DELETE …/partners/{id}` | 200 with an empty body; marks the link Deleted (version bump) only if it carries `{id}` |
//!
//! Writes act on the stored link, whatever reads still show; each one that
//! succeeds may be lost (`rate_lost_write`: answered the same, applied not at
//! all, recorded with [`RequestRecord::lost`]) and becomes visible to GETs
//! `write_visibility_ms` after it was made, not before the identity's earlier
//! writes (until then GETs show the identity's link as it was).
//!
//! ARM requests are processed in this order: bearer token (401
//! `AuthenticationFailed` without a header, `InvalidAuthenticationToken`,
//! `ExpiredAuthenticationToken`), then the fault profile of the token's tenant
//! (latency, then a pending `Retry-After`, then the 429 and 5xx dice; the
//! lost-write die is rolled with them and decides a successful write), then
//! `api-version=2018-02-01` (400 `MissingApiVersionParameter` /
//! `InvalidApiVersionParameter`), then the call; partner IDs must be 1–10
//! digits (400 `PartnerIdInvalid`), and with [`SimConfig::valid_partner_ids`]
//! set, PUT and PATCH to an unknown ID answer 400 `PartnerIdInvalid` too.
//! Every ARM answer carries `x-ms-request-id`, `x-ms-correlation-request-id`
//! (the caller's, if it sent a UUID) and `x-ms-ratelimit-remaining-tenant-reads`
//! or `-writes`, computed from ARM's documented token buckets (never enforced).
//!
//! A request that has arrived is carried out to the end even when its client
//! disconnects meanwhile (a worker killed mid-request), as the real service
//! does; its answer is simply never read.
//!
//! Throttling follows ARM: after an injected 429 the identity (tenant, object
//! ID) is throttled for `retry_after_secs`; a request it sends before then is
//! recorded as a throttle violation, answered 429 again and restarts the wait.
//!
//! # Fault profiles ([`Faults`]: `default` and `per_tenant`, each a [`FaultProfile`])
//!
//! | field | default | does |
//! | --- | --- | --- |
//! | `latency_ms` | 0 | delay of every ARM answer, counted from arrival |
//! | `rate_429` | 0.0 | probability of 429 `TooManyRequests` with `Retry-After` |
//! | `retry_after_secs` | 1 | the `Retry-After` of injected 429s |
//! | `rate_5xx` | 0.0 | probability of a server error (a request not answered 429) |
//! | `status_5xx` | 503 | its status, 500–599 |
//! | `write_visibility_ms` | 0 | eventual consistency: a successful PUT, PATCH or DELETE becomes visible to GETs this long after it was made (simulator clock, so `POST /_sim/clock` or real time reveal it); at most one day |
//! | `rate_lost_write` | 0.0 | probability that a successful PUT, PATCH or DELETE is answered as usual but applies nothing (`lost: true` in the request log) |
//!
//! Rates are 0.0–1.0. The dice are seeded by [`SimConfig::seed`] and rolled
//! for every authenticated request that is not a throttle violation, whatever
//! the rates;
//! the lost-write die has a stream of its own, so a seed gives the 429 and
//! 5xx dice the same values as before it existed. As JSON (`PUT /_sim/faults`,
//! `"faults"` in the `palworker sim --clients FILE` configuration):
//!
//! ```json
//! {"default": {"latency_ms": 20},
//!  "per_tenant": {"1b1121dd-6900-412a-af73-e8d44f81e1c1":
//!                 {"write_visibility_ms": 2000, "rate_lost_write": 0.1}}}
//! ```
//!
//! # Admin API (`/_sim`, JSON, no authentication: bind the simulator to loopback)
//!
//! | request | does |
//! | --- | --- |
//! | `GET /_sim/healthz` | `{"status":"ok"}` |
//! | `GET /_sim/links[?state=all]` | Active links ([`LinkView`]) as stored, with every write applied whether GETs see it yet or not; `all` adds Deleted ones |
//! | `POST /_sim/links` | seed `{tenant_id, object_id, partner_id}` (PUT semantics) |
//! | `GET /_sim/requests` | ARM requests in arrival order ([`RequestRecord`]; lost writes have `"lost": true`) |
//! | `GET /_sim/token-requests` | token requests ([`TokenRequestRecord`]) |
//! | `GET /_sim/violations` | requests sent before their `Retry-After` expired |
//! | `GET /_sim/faults`, `PUT /_sim/faults` | read or replace [`Faults`] |
//! | `GET /_sim/clients`, `POST /_sim/clients` | list (without secrets) or add/replace a [`SimClient`] |
//! | `DELETE /_sim/identities/{tenant}/{object}` | delete that service principal from its tenant ([`Simulator::delete_identity`]): its application gets AADSTS700016 for that tenant from then on; its links stay. 200 `{"tenant_id", "object_id", "client_ids": [...]}`, 404 when no client has it, 400 for a non-GUID |
//! | `GET /_sim/clock`, `POST /_sim/clock` | the simulator's clock; `{"advance_secs": N}` moves it forward (token expiry, `Retry-After`) |
//!
//! # Tenants
//!
//! A tenant "exists" when a registered client has an identity in it, a link
//! lives there or an identity was deleted from it; any other tenant, or one
//! that is not a GUID, gets AADSTS90002.
//!
//! # Deleted identities
//!
//! [`Simulator::delete_identity`] removes a service principal from its tenant
//! as a customer's administrator would. The token endpoint then answers its
//! application for that tenant as Entra ID does for an application not in the
//! directory: 400 `unauthorized_client`, `AADSTS700016: Application with
//! identifier '{client_id}' was not found in the directory '{tenant}'. …` (the
//! answer an unknown client gets). The application's identities in other
//! tenants keep getting tokens. The identity's links stay (in `/_sim/links`
//! too): the attribution remains visible to the customer, and nothing in PAL's
//! contract removes it with the principal; no one can remove it any more
//! (no token), which is the case SPEC §11.3 calls orphaned. Access tokens
//! issued before the deletion stay valid until they expire, as issued tokens
//! do; advance the clock past their expiry to make ARM refuse them (401
//! `ExpiredAuthenticationToken`). Adding a client with the identity again
//! (`POST /_sim/clients`) restores it.

#![forbid(unsafe_code)]

mod admin;
mod arm;
mod certificate;
mod config;
mod delay;
mod state;
mod token;

use std::collections::BTreeSet;
use std::future::{Future, IntoFuture as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::routing::post;
use tokio::sync::oneshot;

pub use arm::API_VERSION;
pub use config::{
    ConfigError, DEFAULT_TOKEN_LIFETIME_SECS, FaultProfile, Faults, SeedLink, SimClient, SimConfig,
};
pub use state::{LinkView, RequestRecord, TokenRequestRecord};
pub use token::{ARM_AUDIENCE, ARM_SCOPE, AccessTokenClaims, JWT_BEARER};

use state::{IdentityKey, LinkState, State};

/// A PAL + token-endpoint simulator. Cheap to clone: clones share one state.
#[derive(Clone)]
pub struct Simulator {
    inner: Arc<Inner>,
}

struct Inner {
    /// HS256 key of the access tokens, random per simulator.
    signing_key: [u8; 32],
    state: Mutex<State>,
    delays: delay::DelayLine,
}

impl Simulator {
    /// A simulator with `config`'s clients, faults and seeded links. Invalid
    /// certificates are logged and ignored; call [`SimConfig::validate`] first
    /// to refuse them instead.
    pub fn new(config: SimConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                signing_key: rand::random(),
                state: Mutex::new(State::new(config)),
                delays: delay::DelayLine::default(),
            }),
        }
    }

    /// The whole HTTP surface, for `axum::serve` or tests.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/{tenant}/oauth2/v2.0/token", post(token::handle))
            .nest("/_sim", admin::router())
            .fallback(arm::handle)
            .with_state(self.clone())
    }

    /// Binds `addr` (port 0 picks a free port) and serves until the handle is
    /// shut down or dropped. The simulator stands for a remote service, so it
    /// runs on its own runtime and threads: its answers do not wait behind
    /// whatever the caller's runtime is busy with (a worker's ledger calls),
    /// only for the CPU.
    pub async fn spawn(&self, addr: SocketAddr) -> std::io::Result<SimHandle> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let (done, finished) = oneshot::channel::<()>();
        let router = self.router();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("pal-sim")
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("pal-sim".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let served = match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => axum::serve(listener, router)
                            .with_graceful_shutdown(async {
                                let _ = stopped.await;
                            })
                            .await
                            .map_err(anyhow::Error::from),
                        Err(error) => Err(error.into()),
                    };
                    if let Err(error) = served {
                        tracing::error!(%error, "Simulator server failed.");
                    }
                });
                // In-flight requests were drained by the graceful shutdown.
                runtime.shutdown_background();
                let _ = done.send(());
            })?;
        Ok(SimHandle {
            addr,
            stop: Some(stop),
            finished: Some(finished),
        })
    }

    /// Registers a client, replacing one with the same client ID (any case).
    pub fn add_client(&self, client: SimClient) {
        self.lock().add_client(client);
    }

    /// Replaces the fault profiles (pending `Retry-After`s stay in force).
    pub fn set_faults(&self, faults: Faults) {
        self.lock().faults = faults.normalized();
    }

    /// The fault profiles in force.
    pub fn faults(&self) -> Faults {
        self.lock().faults.clone()
    }

    /// Replaces the set of partner IDs PUT and PATCH accept (`None`: any).
    pub fn set_valid_partner_ids(&self, ids: Option<BTreeSet<String>>) {
        self.lock().valid_partner_ids = ids;
    }

    /// Creates or re-points a link as a PUT by that identity would.
    pub fn seed_link(&self, tenant_id: &str, object_id: &str, partner_id: &str) -> LinkView {
        let mut state = self.lock();
        let key = IdentityKey::new(tenant_id, object_id);
        let now = state.now();
        let link = state.put_link(key.clone(), partner_id, now);
        State::link_view(&key, &link)
    }

    /// Deletes the identity's Active link as a DELETE by that identity
    /// would (someone removing it behind palworker's back). Returns whether
    /// there was one.
    pub fn remove_link(&self, tenant_id: &str, object_id: &str) -> bool {
        let mut state = self.lock();
        let key = IdentityKey::new(tenant_id, object_id);
        let now = state.now();
        let Some(partner_id) = state
            .links
            .get(&key)
            .filter(|link| link.state == LinkState::Active)
            .map(|link| link.partner_id.clone())
        else {
            return false;
        };
        state.delete_link(&key, &partner_id, now)
    }

    /// Deletes the service principal `object_id` from `tenant_id`, as an
    /// administrator of that tenant would: from then on the token endpoint
    /// answers its application `unauthorized_client` / AADSTS700016 for that
    /// tenant (its identities in other tenants are untouched). Its links stay,
    /// as does the tenant; access tokens issued before stay valid until they
    /// expire. Returns the client IDs that had this identity (none: nothing
    /// was deleted). Registering a client with the identity again restores it.
    pub fn delete_identity(&self, tenant_id: &str, object_id: &str) -> Vec<String> {
        self.lock()
            .delete_identity(&IdentityKey::new(tenant_id, object_id))
    }

    /// Every Active link.
    pub fn links(&self) -> Vec<LinkView> {
        self.all_links()
            .into_iter()
            .filter(LinkView::is_active)
            .collect()
    }

    /// Every link record, Active and Deleted.
    pub fn all_links(&self) -> Vec<LinkView> {
        self.lock()
            .links
            .iter()
            .map(|(key, link)| State::link_view(key, link))
            .collect()
    }

    /// The record of one identity's link, Active or Deleted (check
    /// [`LinkView::is_active`]); `None` if it never had one.
    pub fn link(&self, tenant_id: &str, object_id: &str) -> Option<LinkView> {
        let key = IdentityKey::new(tenant_id, object_id);
        self.lock()
            .links
            .get(&key)
            .map(|link| State::link_view(&key, link))
    }

    /// The identity's link if it is Active.
    pub fn active_link(&self, tenant_id: &str, object_id: &str) -> Option<LinkView> {
        self.link(tenant_id, object_id).filter(LinkView::is_active)
    }

    /// Answered ARM requests in arrival order (token requests are in
    /// [`Simulator::token_requests`]).
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.lock()
            .requests
            .iter()
            .filter(|record| record.status != 0)
            .cloned()
            .collect()
    }

    /// Token endpoint requests in arrival order.
    pub fn token_requests(&self) -> Vec<TokenRequestRecord> {
        self.lock().token_requests.clone()
    }

    /// Writes answered as if they had succeeded that changed nothing
    /// ([`FaultProfile::rate_lost_write`]).
    pub fn lost_writes(&self) -> Vec<RequestRecord> {
        self.requests()
            .into_iter()
            .filter(|record| record.lost)
            .collect()
    }

    /// ARM requests of an identity that arrived before its `Retry-After` had
    /// expired.
    pub fn throttle_violations(&self) -> Vec<RequestRecord> {
        self.requests()
            .into_iter()
            .filter(|record| record.throttle_violation)
            .collect()
    }

    /// The simulator's clock: wall clock plus every [`Simulator::advance_clock`].
    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.lock().now()
    }

    /// Moves the simulator's clock forward, so tests can expire tokens and
    /// `Retry-After` waits without sleeping.
    pub fn advance_clock(&self, by: Duration) {
        let by = chrono::TimeDelta::from_std(by).unwrap_or(chrono::TimeDelta::MAX);
        let mut state = self.lock();
        state.clock_offset = state
            .clock_offset
            .checked_add(&by)
            .unwrap_or(state.clock_offset);
    }

    /// An access token for an identity, as the token endpoint would issue it
    /// to `client_id` (no client registration needed): for tests that are not
    /// about authentication.
    pub fn issue_token(&self, tenant_id: &str, object_id: &str, client_id: &str) -> String {
        let (now, lifetime) = {
            let state = self.lock();
            (state.now(), state.token_lifetime_secs)
        };
        token::issue_access_token(
            self.signing_key(),
            &IdentityKey::new(tenant_id, object_id),
            client_id,
            token::Credential::Secret,
            now,
            lifetime,
        )
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere must not turn every later request into a panic.
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until `at`, precisely: the injected latency.
    pub(crate) async fn delay_until(&self, at: std::time::Instant) {
        self.inner.delays.until(at).await
    }

    pub(crate) fn signing_key(&self) -> &[u8] {
        &self.inner.signing_key
    }
}

/// A simulator serving in the background; stops on [`SimHandle::shutdown`] or drop.
pub struct SimHandle {
    /// The bound address (the real port when 0 was asked for).
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    finished: Option<oneshot::Receiver<()>>,
}

impl SimHandle {
    /// `http://127.0.0.1:PORT` (loopback instead of an unspecified address).
    pub fn base_url(&self) -> String {
        let ip = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        format!("http://{}", SocketAddr::new(ip, self.addr.port()))
    }

    /// Stops accepting, lets in-flight requests finish, and waits for the server.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(finished) = self.finished.take() {
            let _ = finished.await;
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// `palworker sim`: serves a simulator on `listen` until `shutdown` resolves,
/// then drains in-flight requests.
pub async fn run(
    listen: SocketAddr,
    config: SimConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    config
        .validate()
        .context("invalid simulator configuration")?;
    let simulator = Simulator::new(config);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener
        .local_addr()
        .context("cannot read the simulator's address")?;
    tracing::info!(%addr, "Simulator listening.");

    let (stop, stopped) = oneshot::channel::<()>();
    let server = axum::serve(listener, simulator.router())
        .with_graceful_shutdown(async {
            let _ = stopped.await;
        })
        .into_future();
    tokio::pin!(server);
    tokio::pin!(shutdown);
    tokio::select! {
        result = &mut server => return result.context("simulator server failed"),
        () = &mut shutdown => {}
    }
    tracing::info!("Simulator shutting down.");
    let _ = stop.send(());
    server.await.context("simulator server failed")
}

/// Inserts a header whose value is known to be valid (UUIDs, numbers).
pub(crate) fn insert_header(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(HeaderName::from_static(name), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TENANT: &str = "1b1121dd-6900-412a-af73-e8d44f81e1c1";
    const OBJECT: &str = "aa67f786-0552-423e-8849-244ed12bf581";

    #[test]
    fn seeded_links_are_listed_until_deleted() {
        let simulator = Simulator::new(SimConfig::default());
        let view = simulator.seed_link(&TENANT.to_uppercase(), OBJECT, "42");
        assert_eq!((view.tenant_id.as_str(), view.version), (TENANT, 1));
        assert_eq!(simulator.links(), vec![view.clone()]);
        assert_eq!(simulator.active_link(TENANT, OBJECT), Some(view));
        let now = simulator.now();
        simulator
            .lock()
            .delete_link(&IdentityKey::new(TENANT, OBJECT), "42", now);
        assert!(simulator.links().is_empty());
        assert!(simulator.active_link(TENANT, OBJECT).is_none());
        assert_eq!(simulator.link(TENANT, OBJECT).unwrap().state, "Deleted");
        assert_eq!(simulator.all_links().len(), 1);
    }

    #[test]
    fn advancing_the_clock_moves_now_forward() {
        let simulator = Simulator::new(SimConfig::default());
        let before = simulator.now();
        simulator.advance_clock(Duration::from_secs(3600));
        assert!(simulator.now() - before >= chrono::TimeDelta::seconds(3600));
    }

    #[test]
    fn set_faults_lower_cases_tenant_keys() {
        let simulator = Simulator::new(SimConfig::default());
        let mut faults = Faults::none();
        faults
            .per_tenant
            .insert(TENANT.to_uppercase(), FaultProfile::default());
        simulator.set_faults(faults);
        assert!(simulator.faults().per_tenant.contains_key(TENANT));
    }

    #[test]
    fn base_url_replaces_unspecified_addresses_with_loopback() {
        let handle = SimHandle {
            addr: "0.0.0.0:8080".parse().unwrap(),
            stop: None,
            finished: None,
        };
        assert_eq!(handle.base_url(), "http://127.0.0.1:8080");
        let handle = SimHandle {
            addr: "[::]:8080".parse().unwrap(),
            stop: None,
            finished: None,
        };
        assert_eq!(handle.base_url(), "http://[::1]:8080");
    }
}
