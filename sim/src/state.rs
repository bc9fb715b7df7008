//! The simulator's memory: clients, links, throttling, request logs and clock.
//! Pure data and rules, no IO, so the PAL semantics are unit-testable.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, TimeDelta, Utc};
use rand::SeedableRng as _;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use super::certificate::{ClientCertificate, parse_certificates};
use super::config::{Faults, SimClient, SimConfig};

/// One identity in one tenant, both lower-case.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct IdentityKey {
    pub tenant_id: String,
    pub object_id: String,
}

impl IdentityKey {
    pub fn new(tenant_id: &str, object_id: &str) -> Self {
        Self {
            tenant_id: tenant_id.to_ascii_lowercase(),
            object_id: object_id.to_ascii_lowercase(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LinkState {
    Active,
    Deleted,
}

impl LinkState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "Active",
            Self::Deleted => "Deleted",
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct LinkRecord {
    pub partner_id: String,
    pub version: u64,
    pub state: LinkState,
    pub created_time: DateTime<Utc>,
    pub updated_time: DateTime<Utc>,
}

/// A link as the simulator holds it (Active or Deleted).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkView {
    /// Lower-case tenant GUID.
    pub tenant_id: String,
    /// Lower-case object ID of the linked identity.
    pub object_id: String,
    /// The partner ID the link carries (the last one, for a Deleted link).
    pub partner_id: String,
    /// `version` and `etag` of the PartnerResponse; bumped by PUT, PATCH, DELETE.
    pub version: u64,
    /// `"Active"` or `"Deleted"`.
    pub state: String,
    /// Set by the first PUT, kept by later ones.
    pub created_time: DateTime<Utc>,
    /// Last PUT, PATCH or DELETE.
    pub updated_time: DateTime<Utc>,
}

impl LinkView {
    /// Whether the link currently attributes the identity to `partner_id`.
    pub fn is_active(&self) -> bool {
        self.state == LinkState::Active.as_str()
    }
}

/// One ARM request, as the simulator saw and answered it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// Arrival time (simulator clock).
    pub at: DateTime<Utc>,
    /// `GET`, `PUT`, `PATCH`, `DELETE`, …
    pub method: String,
    /// The request path, without the query.
    pub path: String,
    /// `tid` of a valid bearer token, lower-case.
    pub tenant_id: Option<String>,
    /// `oid` of a valid bearer token, lower-case.
    pub object_id: Option<String>,
    /// The `{partnerId}` path segment, as sent.
    pub partner_id: Option<String>,
    /// Status of the answer.
    pub status: u16,
    /// Answered by fault injection (429 or 5xx), not by the PAL logic.
    pub fault_injected: bool,
    /// Sent by a throttled identity before its `Retry-After` expired.
    pub throttle_violation: bool,
    /// The `x-ms-request-id` of the answer.
    pub request_id: String,
    /// Microseconds from receiving the request to having its answer ready
    /// (the injected latency included): what the simulated service took.
    #[serde(default)]
    pub service_us: u64,
}

/// One request to the token endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRequestRecord {
    /// Arrival time (simulator clock).
    pub at: DateTime<Utc>,
    /// The `{tenant}` path segment, as sent.
    pub tenant: String,
    /// The `client_id` form field, if any.
    pub client_id: Option<String>,
    /// `"secret"`, `"assertion"` or `"none"`.
    pub credential: String,
    /// Status of the answer.
    pub status: u16,
    /// The AADSTS code of an error answer.
    pub error_code: Option<u32>,
}

/// A pending `Retry-After` of one identity.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Throttle {
    pub until: DateTime<Utc>,
    pub retry_after_secs: u64,
}

/// A registered client with its certificates parsed once.
#[derive(Clone, Debug)]
pub(crate) struct ClientEntry {
    pub client: SimClient,
    pub certificates: Vec<ClientCertificate>,
}

/// ARM's per-principal token buckets, only for plausible
/// `x-ms-ratelimit-remaining-tenant-*` headers (never enforced).
#[derive(Clone, Debug)]
struct Bucket {
    tokens: f64,
    refilled_at: DateTime<Utc>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RequestKind {
    Read,
    Write,
}

impl RequestKind {
    const fn capacity(self) -> f64 {
        match self {
            Self::Read => 250.0,
            Self::Write => 200.0,
        }
    }

    const fn refill_per_second(self) -> f64 {
        match self {
            Self::Read => 25.0,
            Self::Write => 10.0,
        }
    }

    pub const fn header(self) -> &'static str {
        match self {
            Self::Read => "x-ms-ratelimit-remaining-tenant-reads",
            Self::Write => "x-ms-ratelimit-remaining-tenant-writes",
        }
    }
}

pub(crate) struct State {
    pub clients: BTreeMap<String, ClientEntry>,
    pub valid_partner_ids: Option<BTreeSet<String>>,
    pub faults: Faults,
    pub token_lifetime_secs: u64,
    pub links: BTreeMap<IdentityKey, LinkRecord>,
    /// In arrival order; `status == 0` while the request is in flight.
    pub requests: Vec<RequestRecord>,
    pub token_requests: Vec<TokenRequestRecord>,
    /// Identities answered 429, until when, and the announced `Retry-After`.
    pub throttles: HashMap<IdentityKey, Throttle>,
    buckets: HashMap<(IdentityKey, &'static str), Bucket>,
    pub rng: StdRng,
    pub clock_offset: TimeDelta,
}

impl State {
    pub fn new(config: SimConfig) -> Self {
        let rng = match config.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        let mut state = Self {
            clients: BTreeMap::new(),
            valid_partner_ids: config.valid_partner_ids,
            faults: config.faults.normalized(),
            token_lifetime_secs: config.token_lifetime_secs,
            links: BTreeMap::new(),
            requests: Vec::new(),
            token_requests: Vec::new(),
            throttles: HashMap::new(),
            buckets: HashMap::new(),
            rng,
            clock_offset: TimeDelta::zero(),
        };
        for client in config.clients {
            state.add_client(client);
        }
        let now = state.now();
        for link in config.links {
            state.put_link(
                IdentityKey::new(&link.tenant_id, &link.object_id),
                &link.partner_id,
                now,
            );
        }
        state
    }

    /// Wall clock plus whatever tests advanced it by.
    pub fn now(&self) -> DateTime<Utc> {
        Utc::now() + self.clock_offset
    }

    /// Registers or replaces (same client ID, any case) a client. A certificate
    /// that does not parse is logged and leaves the client without one.
    pub fn add_client(&mut self, client: SimClient) {
        let client = client.normalized();
        let certificates = match client.certificate_pem.as_deref().map(parse_certificates) {
            None => Vec::new(),
            Some(Ok(certificates)) => certificates,
            Some(Err(error)) => {
                tracing::warn!(client_id = %client.client_id, %error, "Simulator client certificate ignored.");
                Vec::new()
            }
        };
        self.clients.insert(
            client.client_id.to_ascii_lowercase(),
            ClientEntry {
                client,
                certificates,
            },
        );
    }

    pub fn client(&self, client_id: &str) -> Option<&ClientEntry> {
        self.clients.get(&client_id.to_ascii_lowercase())
    }

    /// A tenant "exists" when some client has an identity in it or some link
    /// lives there.
    pub fn tenant_exists(&self, tenant_id: &str) -> bool {
        self.clients
            .values()
            .any(|entry| entry.client.identities.contains_key(tenant_id))
            || self.links.keys().any(|key| key.tenant_id == tenant_id)
    }

    pub fn active_link(&self, key: &IdentityKey) -> Option<&LinkRecord> {
        self.links
            .get(key)
            .filter(|link| link.state == LinkState::Active)
    }

    /// PUT: create, or re-activate / re-point the existing record (version bump,
    /// createdTime kept).
    pub fn put_link(
        &mut self,
        key: IdentityKey,
        partner_id: &str,
        now: DateTime<Utc>,
    ) -> LinkRecord {
        let link = self
            .links
            .entry(key)
            .and_modify(|link| {
                link.partner_id = partner_id.to_owned();
                link.version += 1;
                link.state = LinkState::Active;
                link.updated_time = now;
            })
            .or_insert_with(|| LinkRecord {
                partner_id: partner_id.to_owned(),
                version: 1,
                state: LinkState::Active,
                created_time: now,
                updated_time: now,
            });
        link.clone()
    }

    /// PATCH: re-point an Active link; `None` when there is none.
    pub fn patch_link(
        &mut self,
        key: &IdentityKey,
        partner_id: &str,
        now: DateTime<Utc>,
    ) -> Option<LinkRecord> {
        let link = self
            .links
            .get_mut(key)
            .filter(|link| link.state == LinkState::Active)?;
        link.partner_id = partner_id.to_owned();
        link.version += 1;
        link.updated_time = now;
        Some(link.clone())
    }

    /// DELETE: marks the Active link Deleted if it carries `partner_id`.
    /// Returns whether anything changed.
    pub fn delete_link(&mut self, key: &IdentityKey, partner_id: &str, now: DateTime<Utc>) -> bool {
        match self.links.get_mut(key) {
            Some(link) if link.state == LinkState::Active && link.partner_id == partner_id => {
                link.state = LinkState::Deleted;
                link.version += 1;
                link.updated_time = now;
                true
            }
            _ => false,
        }
    }

    pub fn link_view(key: &IdentityKey, link: &LinkRecord) -> LinkView {
        LinkView {
            tenant_id: key.tenant_id.clone(),
            object_id: key.object_id.clone(),
            partner_id: link.partner_id.clone(),
            version: link.version,
            state: link.state.as_str().to_owned(),
            created_time: link.created_time,
            updated_time: link.updated_time,
        }
    }

    /// Takes one token from the identity's bucket and returns what remains.
    pub fn consume_rate_limit(
        &mut self,
        key: &IdentityKey,
        kind: RequestKind,
        now: DateTime<Utc>,
    ) -> u64 {
        let bucket = self
            .buckets
            .entry((key.clone(), kind.header()))
            .or_insert(Bucket {
                tokens: kind.capacity(),
                refilled_at: now,
            });
        let elapsed = (now - bucket.refilled_at).as_seconds_f64().max(0.0);
        bucket.tokens = (bucket.tokens + elapsed * kind.refill_per_second()).min(kind.capacity());
        bucket.refilled_at = now;
        bucket.tokens = (bucket.tokens - 1.0).max(0.0);
        // Whole tokens left, 0..=250: the cast cannot truncate or wrap.
        bucket.tokens.floor() as u64
    }
}

/// ARM's timestamp style: seven fractional digits and `Z`.
pub(crate) fn arm_time(time: DateTime<Utc>) -> String {
    format!(
        "{}.{:07}Z",
        time.format("%Y-%m-%dT%H:%M:%S"),
        time.timestamp_subsec_nanos() / 100
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone as _;

    fn key() -> IdentityKey {
        IdentityKey::new(
            "1B1121DD-6900-412A-AF73-E8D44F81E1C1",
            "aa67f786-0552-423e-8849-244ed12bf581",
        )
    }

    fn at(seconds: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + seconds, 0).unwrap()
    }

    #[test]
    fn identity_keys_are_lower_case() {
        assert_eq!(key().tenant_id, "1b1121dd-6900-412a-af73-e8d44f81e1c1");
    }

    #[test]
    fn put_creates_version_one_then_bumps_and_keeps_created_time() {
        let mut state = State::new(SimConfig::default());
        let first = state.put_link(key(), "123", at(0));
        assert_eq!((first.version, first.state), (1, LinkState::Active));
        let second = state.put_link(key(), "456", at(10));
        assert_eq!(second.version, 2);
        assert_eq!(second.partner_id, "456");
        assert_eq!(second.created_time, at(0));
        assert_eq!(second.updated_time, at(10));
    }

    #[test]
    fn delete_marks_deleted_and_a_later_put_keeps_created_time() {
        let mut state = State::new(SimConfig::default());
        state.put_link(key(), "123", at(0));
        assert!(!state.delete_link(&key(), "999", at(5)), "other partner id");
        assert!(state.delete_link(&key(), "123", at(5)));
        assert!(state.active_link(&key()).is_none());
        assert_eq!(state.links[&key()].version, 2);
        assert!(!state.delete_link(&key(), "123", at(6)), "already deleted");
        assert!(state.patch_link(&key(), "7", at(7)).is_none());
        let again = state.put_link(key(), "123", at(8));
        assert_eq!((again.version, again.state), (3, LinkState::Active));
        assert_eq!(again.created_time, at(0));
    }

    #[test]
    fn patch_repoints_an_active_link() {
        let mut state = State::new(SimConfig::default());
        assert!(state.patch_link(&key(), "7", at(0)).is_none());
        state.put_link(key(), "123", at(0));
        let patched = state.patch_link(&key(), "7", at(1)).unwrap();
        assert_eq!((patched.partner_id.as_str(), patched.version), ("7", 2));
    }

    #[test]
    fn rate_limit_buckets_drain_and_refill() {
        let mut state = State::new(SimConfig::default());
        assert_eq!(
            state.consume_rate_limit(&key(), RequestKind::Write, at(0)),
            199
        );
        assert_eq!(
            state.consume_rate_limit(&key(), RequestKind::Write, at(0)),
            198
        );
        assert_eq!(
            state.consume_rate_limit(&key(), RequestKind::Read, at(0)),
            249
        );
        assert_eq!(
            state.consume_rate_limit(&key(), RequestKind::Write, at(100)),
            199
        );
    }

    #[test]
    fn arm_time_has_seven_fraction_digits() {
        let time = Utc.timestamp_opt(1_516_411_420, 528_049_600).unwrap();
        assert_eq!(arm_time(time), "2018-01-20T01:23:40.5280496Z");
    }

    #[test]
    fn seeded_links_and_clients_make_tenants_exist() {
        let config = SimConfig {
            clients: vec![SimClient::with_secret("app", "s").identity(
                "11111111-1111-1111-1111-111111111111",
                "22222222-2222-2222-2222-222222222222",
            )],
            links: vec![super::super::config::SeedLink {
                tenant_id: "33333333-3333-3333-3333-333333333333".into(),
                object_id: "44444444-4444-4444-4444-444444444444".into(),
                partner_id: "5".into(),
            }],
            ..SimConfig::default()
        };
        let state = State::new(config);
        assert!(state.tenant_exists("11111111-1111-1111-1111-111111111111"));
        assert!(state.tenant_exists("33333333-3333-3333-3333-333333333333"));
        assert!(!state.tenant_exists("55555555-5555-5555-5555-555555555555"));
        assert!(state.client("APP").is_some());
    }
}
