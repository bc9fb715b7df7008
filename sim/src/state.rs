//! The simulator's memory: clients, links, throttling, request logs and clock.
//! Pure data and rules, no IO, so the PAL semantics are unit-testable.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

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

impl LinkRecord {
    /// The record after a PUT of `partner_id` over `current`.
    pub fn after_put(current: Option<&Self>, partner_id: &str, now: DateTime<Utc>) -> Self {
        match current {
            Some(link) => Self {
                partner_id: partner_id.to_owned(),
                version: link.version + 1,
                state: LinkState::Active,
                created_time: link.created_time,
                updated_time: now,
            },
            None => Self {
                partner_id: partner_id.to_owned(),
                version: 1,
                state: LinkState::Active,
                created_time: now,
                updated_time: now,
            },
        }
    }

    /// The record after a PATCH to `partner_id`; `None` unless Active.
    pub fn after_patch(&self, partner_id: &str, now: DateTime<Utc>) -> Option<Self> {
        (self.state == LinkState::Active).then(|| Self {
            partner_id: partner_id.to_owned(),
            version: self.version + 1,
            updated_time: now,
            ..self.clone()
        })
    }

    /// The record after a DELETE of `partner_id`; `None` when it changes
    /// nothing (not Active, or another partner ID).
    pub fn after_delete(&self, partner_id: &str, now: DateTime<Utc>) -> Option<Self> {
        (self.state == LinkState::Active && self.partner_id == partner_id).then(|| Self {
            state: LinkState::Deleted,
            version: self.version + 1,
            updated_time: now,
            ..self.clone()
        })
    }
}

/// What ARM reads of one identity show while its writes are not yet visible.
#[derive(Clone, Debug)]
struct Lag {
    /// The record reads show now (`None`: no link).
    shown: Option<LinkRecord>,
    /// Writes not yet visible: when each becomes visible (non-decreasing)
    /// and the record after it.
    pending: VecDeque<(DateTime<Utc>, LinkRecord)>,
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
    /// A write answered as if it had succeeded that changed nothing
    /// ([`FaultProfile::rate_lost_write`](crate::FaultProfile::rate_lost_write)).
    #[serde(default)]
    pub lost: bool,
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

/// Mixed into the seed of the lost-write dice.
const LOST_WRITE_STREAM: u64 = 0x9e37_79b9_7f4a_7c15;

pub(crate) struct State {
    pub clients: BTreeMap<String, ClientEntry>,
    pub valid_partner_ids: Option<BTreeSet<String>>,
    pub faults: Faults,
    pub token_lifetime_secs: u64,
    /// Every link record, with every write applied (what the admin API shows).
    pub links: BTreeMap<IdentityKey, LinkRecord>,
    /// Identities with writes not yet visible to ARM reads.
    lagging: HashMap<IdentityKey, Lag>,
    /// Service principals deleted through [`State::delete_identity`].
    pub deleted_identities: BTreeSet<IdentityKey>,
    /// In arrival order; `status == 0` while the request is in flight.
    pub requests: Vec<RequestRecord>,
    pub token_requests: Vec<TokenRequestRecord>,
    /// Identities answered 429, until when, and the announced `Retry-After`.
    pub throttles: HashMap<IdentityKey, Throttle>,
    buckets: HashMap<(IdentityKey, &'static str), Bucket>,
    pub rng: StdRng,
    /// The lost-write dice: a stream of their own, so that a seed gives the
    /// 429 and 5xx dice the same values as before lost writes existed.
    pub lost_write_rng: StdRng,
    pub clock_offset: TimeDelta,
}

impl State {
    pub fn new(config: SimConfig) -> Self {
        let (rng, lost_write_rng) = match config.seed {
            Some(seed) => (
                StdRng::seed_from_u64(seed),
                StdRng::seed_from_u64(seed ^ LOST_WRITE_STREAM),
            ),
            None => (StdRng::from_os_rng(), StdRng::from_os_rng()),
        };
        let mut state = Self {
            clients: BTreeMap::new(),
            valid_partner_ids: config.valid_partner_ids,
            faults: config.faults.normalized(),
            token_lifetime_secs: config.token_lifetime_secs,
            links: BTreeMap::new(),
            lagging: HashMap::new(),
            deleted_identities: BTreeSet::new(),
            requests: Vec::new(),
            token_requests: Vec::new(),
            throttles: HashMap::new(),
            buckets: HashMap::new(),
            rng,
            lost_write_rng,
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
    /// that does not parse is logged and leaves the client without one. A
    /// deleted identity it names exists again.
    pub fn add_client(&mut self, client: SimClient) {
        let client = client.normalized();
        for (tenant_id, object_id) in &client.identities {
            self.deleted_identities
                .remove(&IdentityKey::new(tenant_id, object_id));
        }
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

    /// A tenant "exists" when some client has an identity in it, some link
    /// lives there or an identity was deleted from it.
    pub fn tenant_exists(&self, tenant_id: &str) -> bool {
        self.clients
            .values()
            .any(|entry| entry.client.identities.contains_key(tenant_id))
            || self.links.keys().any(|key| key.tenant_id == tenant_id)
            || self
                .deleted_identities
                .iter()
                .any(|key| key.tenant_id == tenant_id)
    }

    #[cfg(test)]
    pub fn active_link(&self, key: &IdentityKey) -> Option<&LinkRecord> {
        self.links
            .get(key)
            .filter(|link| link.state == LinkState::Active)
    }

    /// PUT: create, or re-activate / re-point the existing record (version bump,
    /// createdTime kept). Visible at once, like every change made here.
    pub fn put_link(
        &mut self,
        key: IdentityKey,
        partner_id: &str,
        now: DateTime<Utc>,
    ) -> LinkRecord {
        let link = LinkRecord::after_put(self.links.get(&key), partner_id, now);
        self.store(key, link.clone());
        link
    }

    /// PATCH: re-point an Active link; `None` when there is none.
    #[cfg(test)]
    pub fn patch_link(
        &mut self,
        key: &IdentityKey,
        partner_id: &str,
        now: DateTime<Utc>,
    ) -> Option<LinkRecord> {
        let link = self.links.get(key)?.after_patch(partner_id, now)?;
        self.store(key.clone(), link.clone());
        Some(link)
    }

    /// DELETE: marks the Active link Deleted if it carries `partner_id`.
    /// Returns whether anything changed.
    pub fn delete_link(&mut self, key: &IdentityKey, partner_id: &str, now: DateTime<Utc>) -> bool {
        match self
            .links
            .get(key)
            .and_then(|link| link.after_delete(partner_id, now))
        {
            Some(link) => {
                self.store(key.clone(), link);
                true
            }
            None => false,
        }
    }

    /// Makes `link` the identity's record, visible to reads at once (it
    /// supersedes the identity's writes that were not yet visible).
    fn store(&mut self, key: IdentityKey, link: LinkRecord) {
        self.lagging.remove(&key);
        self.links.insert(key, link);
    }

    /// An ARM write's new record: stored, and visible to reads `visible_after`
    /// from `now` and not before the identity's earlier writes.
    pub fn write_link(
        &mut self,
        key: &IdentityKey,
        link: LinkRecord,
        now: DateTime<Utc>,
        visible_after: TimeDelta,
    ) {
        let visible_at = now
            .checked_add_signed(visible_after)
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        let pending_since = self.lagging.get(key).and_then(|lag| lag.pending.back());
        match pending_since {
            None if visible_at <= now => {}
            None => {
                let shown = self.links.get(key).cloned();
                self.lagging.insert(
                    key.clone(),
                    Lag {
                        shown,
                        pending: VecDeque::from([(visible_at, link.clone())]),
                    },
                );
            }
            Some(&(last, _)) => {
                if let Some(lag) = self.lagging.get_mut(key) {
                    lag.pending.push_back((visible_at.max(last), link.clone()));
                }
            }
        }
        self.links.insert(key.clone(), link);
    }

    /// The identity's record as ARM reads see it at `now`: the stored one,
    /// or an older one while writes are not yet visible.
    pub fn visible_link(&mut self, key: &IdentityKey, now: DateTime<Utc>) -> Option<LinkRecord> {
        if let Some(lag) = self.lagging.get_mut(key) {
            while let Some((visible_at, _)) = lag.pending.front()
                && *visible_at <= now
            {
                lag.shown = lag.pending.pop_front().map(|(_, link)| link);
            }
            if !lag.pending.is_empty() {
                return lag.shown.clone();
            }
            self.lagging.remove(key);
        }
        self.links.get(key).cloned()
    }

    /// The visible record if it is Active.
    pub fn visible_active_link(
        &mut self,
        key: &IdentityKey,
        now: DateTime<Utc>,
    ) -> Option<LinkRecord> {
        self.visible_link(key, now)
            .filter(|link| link.state == LinkState::Active)
    }

    /// Removes the service principal `key` from every client that has it,
    /// as if it were deleted from its tenant; returns those clients' IDs.
    /// Its links stay; its tenant goes on existing.
    pub fn delete_identity(&mut self, key: &IdentityKey) -> Vec<String> {
        let mut removed = Vec::new();
        for entry in self.clients.values_mut() {
            let identities = &mut entry.client.identities;
            if identities.get(&key.tenant_id) == Some(&key.object_id) {
                identities.remove(&key.tenant_id);
                removed.push(entry.client.client_id.clone());
            }
        }
        if !removed.is_empty() {
            self.deleted_identities.insert(key.clone());
        }
        removed
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

    fn seconds(n: i64) -> TimeDelta {
        TimeDelta::seconds(n)
    }

    /// What a read at `now` shows: `(partner_id, state)`.
    fn shown(state: &mut State, now: DateTime<Utc>) -> Option<(String, LinkState)> {
        state
            .visible_link(&key(), now)
            .map(|link| (link.partner_id, link.state))
    }

    #[test]
    fn lagging_writes_become_visible_in_order_after_their_delay() {
        let mut state = State::new(SimConfig::default());
        let put = LinkRecord::after_put(None, "1", at(0));
        state.write_link(&key(), put, at(0), seconds(30));
        assert_eq!(shown(&mut state, at(29)), None, "not yet visible");
        assert_eq!(state.links[&key()].partner_id, "1", "but stored");
        let patch = state.links[&key()].after_patch("2", at(10)).unwrap();
        state.write_link(&key(), patch, at(10), seconds(30));
        // No delay, but not before the writes made earlier.
        let delete = state.links[&key()].after_delete("2", at(20)).unwrap();
        state.write_link(&key(), delete, at(20), TimeDelta::zero());
        let active = |partner: &str| Some((partner.to_owned(), LinkState::Active));
        assert_eq!(shown(&mut state, at(30)), active("1"));
        assert_eq!(shown(&mut state, at(39)), active("1"));
        assert_eq!(
            shown(&mut state, at(40)),
            Some(("2".to_owned(), LinkState::Deleted)),
            "the DELETE becomes visible with the PATCH it followed"
        );
        assert!(state.lagging.is_empty(), "nothing pending is kept");
        // Without a delay a write is visible at once.
        let put = LinkRecord::after_put(state.links.get(&key()), "3", at(50));
        state.write_link(&key(), put, at(50), TimeDelta::zero());
        assert_eq!(shown(&mut state, at(50)), active("3"));
        assert!(state.lagging.is_empty());
    }

    #[test]
    fn a_change_made_through_the_admin_api_is_visible_at_once() {
        let mut state = State::new(SimConfig::default());
        let put = LinkRecord::after_put(None, "1", at(0));
        state.write_link(&key(), put, at(0), seconds(60));
        state.put_link(key(), "2", at(1));
        assert_eq!(
            shown(&mut state, at(1)),
            Some(("2".to_owned(), LinkState::Active))
        );
        assert_eq!(state.links[&key()].version, 2);
    }

    #[test]
    fn a_deleted_identity_leaves_its_client_its_links_and_its_tenant() {
        let tenant = "11111111-1111-1111-1111-111111111111";
        let other_tenant = "33333333-3333-3333-3333-333333333333";
        let object = "22222222-2222-2222-2222-222222222222";
        let client = SimClient::with_secret("app", "s")
            .identity(tenant, object)
            .identity(other_tenant, "44444444-4444-4444-4444-444444444444");
        let mut state = State::new(SimConfig {
            clients: vec![client.clone()],
            ..SimConfig::default()
        });
        let identity = IdentityKey::new(&tenant.to_uppercase(), object);
        state.put_link(identity.clone(), "5", at(0));
        assert!(
            state
                .delete_identity(&IdentityKey::new(tenant, other_tenant))
                .is_empty()
        );
        assert_eq!(state.delete_identity(&identity), vec!["app".to_owned()]);
        let identities = &state.client("app").unwrap().client.identities;
        assert!(!identities.contains_key(tenant));
        assert!(identities.contains_key(other_tenant));
        assert!(state.active_link(&identity).is_some(), "its link stays");
        state.links.clear();
        assert!(state.tenant_exists(tenant), "its tenant stays");
        assert!(state.delete_identity(&identity).is_empty(), "already gone");
        state.add_client(client);
        assert!(state.deleted_identities.is_empty(), "restored");
        assert!(
            state
                .client("app")
                .unwrap()
                .client
                .identities
                .contains_key(tenant)
        );
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
