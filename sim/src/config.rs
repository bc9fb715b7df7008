//! The simulator's settings: registered clients, valid partner IDs, fault profiles.
//!
//! Everything here deserializes from JSON (`palworker sim --clients FILE`, `PUT
//! /_sim/faults`, `POST /_sim/clients`), with every field optional except a
//! client's `client_id`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Default lifetime of the access tokens the simulator issues, as Entra ID does.
pub const DEFAULT_TOKEN_LIFETIME_SECS: u64 = 3599;

/// Everything a [`Simulator`](super::Simulator) starts with. As JSON
/// (`palworker sim --clients FILE`; every field optional):
///
/// ```json
/// {
///   "clients": [{"client_id": "11111111-1111-1111-1111-111111111111",
///                "client_secret": "dev-only-secret",
///                "identities": {"22222222-2222-4222-8222-222222222222":
///                               "33333333-3333-4333-8333-333333333333"}}],
///   "valid_partner_ids": null,
///   "faults": {
///     "default": {"rate_429": 0.0, "rate_5xx": 0.0, "retry_after_secs": 1,
///                 "latency_ms": 0, "status_5xx": 503,
///                 "write_visibility_ms": 0, "rate_lost_write": 0.0},
///     "per_tenant": {"22222222-2222-4222-8222-222222222222":
///                    {"write_visibility_ms": 2000, "rate_lost_write": 0.05}}
///   },
///   "token_lifetime_secs": 3599,
///   "seed": 7,
///   "links": [{"tenant_id": "22222222-2222-4222-8222-222222222222",
///              "object_id": "33333333-3333-4333-8333-333333333333",
///              "partner_id": "123456"}]
/// }
/// ```
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimConfig {
    /// Applications that may obtain tokens.
    pub clients: Vec<SimClient>,
    /// `None`: any 1–10 digit partner ID is valid. `Some(set)`: PUT and PATCH with
    /// an ID outside the set answer 400 `PartnerIdInvalid`.
    pub valid_partner_ids: Option<BTreeSet<String>>,
    /// Fault injection for ARM requests (never for token requests).
    pub faults: Faults,
    /// `expires_in` of issued access tokens.
    pub token_lifetime_secs: u64,
    /// Seed for the fault-injection dice; `None` seeds from the operating system.
    pub seed: Option<u64>,
    /// Links that exist when the simulator starts.
    pub links: Vec<SeedLink>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            clients: Vec::new(),
            valid_partner_ids: None,
            faults: Faults::default(),
            token_lifetime_secs: DEFAULT_TOKEN_LIFETIME_SECS,
            seed: None,
            links: Vec::new(),
        }
    }
}

impl SimConfig {
    /// Parses a JSON configuration: either a full `SimConfig` object or, for
    /// brevity, a bare array of clients. The result is validated.
    pub fn from_json_str(text: &str) -> Result<Self, ConfigError> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|error| ConfigError::Json(error.to_string()))?;
        let config = if value.is_array() {
            let clients: Vec<SimClient> = serde_json::from_value(value)
                .map_err(|error| ConfigError::Json(error.to_string()))?;
            Self {
                clients,
                ..Self::default()
            }
        } else {
            serde_json::from_value(value).map_err(|error| ConfigError::Json(error.to_string()))?
        };
        config.validate()?;
        Ok(config)
    }

    /// Reads and parses a JSON configuration file (see [`SimConfig::from_json_str`]).
    pub fn from_json_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.display().to_string(),
            message: error.to_string(),
        })?;
        Self::from_json_str(&text)
    }

    /// Checks every client, fault profile, partner ID and seeded link.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for client in &self.clients {
            client.validate()?;
        }
        self.faults.validate()?;
        if let Some(ids) = &self.valid_partner_ids {
            for id in ids {
                if !is_partner_id(id) {
                    return Err(ConfigError::Invalid(format!(
                        "valid_partner_ids: '{id}' is not 1–10 ASCII digits"
                    )));
                }
            }
        }
        for link in &self.links {
            link.validate()?;
        }
        Ok(())
    }
}

/// An application registered with the simulated identity platform.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SimClient {
    /// The application (client) ID; compared case-insensitively.
    pub client_id: String,
    /// Accepted `client_secret`, if the client may use one.
    #[serde(default)]
    pub client_secret: Option<String>,
    /// PEM text with one or more `CERTIFICATE` blocks (other blocks, such as a
    /// private key, are ignored, so the worker's own PEM file may be reused).
    /// Client assertions must be signed by the key of one of them.
    #[serde(default)]
    pub certificate_pem: Option<String>,
    /// Tenant ID → object ID of this application's service principal there.
    /// The client can obtain tokens only for these tenants.
    #[serde(default)]
    pub identities: BTreeMap<String, String>,
    /// A disabled application gets `unauthorized_client` / AADSTS7000112.
    #[serde(default)]
    pub disabled: bool,
}

impl fmt::Debug for SimClient {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("SimClient")
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "[redacted]"),
            )
            .field("certificate_pem", &self.certificate_pem.is_some())
            .field("identities", &self.identities)
            .field("disabled", &self.disabled)
            .finish()
    }
}

impl SimClient {
    /// A client authenticating with a secret, with no identities yet.
    pub fn with_secret(client_id: impl Into<String>, secret: impl Into<String>) -> Self {
        Self {
            client_id: client_id.into(),
            client_secret: Some(secret.into()),
            certificate_pem: None,
            identities: BTreeMap::new(),
            disabled: false,
        }
    }

    /// A client authenticating with a certificate, with no identities yet.
    pub fn with_certificate(
        client_id: impl Into<String>,
        certificate_pem: impl Into<String>,
    ) -> Self {
        Self {
            client_id: client_id.into(),
            client_secret: None,
            certificate_pem: Some(certificate_pem.into()),
            identities: BTreeMap::new(),
            disabled: false,
        }
    }

    /// Adds the service principal `object_id` in `tenant_id` (builder style).
    pub fn identity(mut self, tenant_id: &str, object_id: &str) -> Self {
        self.identities.insert(
            tenant_id.to_ascii_lowercase(),
            object_id.to_ascii_lowercase(),
        );
        self
    }

    /// Checks the client ID, the identities' GUIDs and the certificate.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let id = &self.client_id;
        if id.trim().is_empty() {
            return Err(ConfigError::Invalid("client_id is empty".to_owned()));
        }
        for (tenant, object) in &self.identities {
            if !is_guid(tenant) || !is_guid(object) {
                return Err(ConfigError::Invalid(format!(
                    "client '{id}': identity {tenant} → {object} is not a pair of GUIDs"
                )));
            }
        }
        if let Some(pem) = &self.certificate_pem {
            super::certificate::parse_certificates(pem).map_err(|error| {
                ConfigError::Invalid(format!("client '{id}': certificate_pem: {error}"))
            })?;
        }
        Ok(())
    }

    /// Lower-cases the identity map, as lookups do.
    pub(crate) fn normalized(mut self) -> Self {
        self.identities = self
            .identities
            .into_iter()
            .map(|(tenant, object)| (tenant.to_ascii_lowercase(), object.to_ascii_lowercase()))
            .collect();
        self
    }
}

/// Fault injection for ARM requests: a default profile and per-tenant overrides.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Applies to tenants without their own profile.
    pub default: FaultProfile,
    /// Tenant ID (any case) → profile.
    pub per_tenant: BTreeMap<String, FaultProfile>,
}

impl Faults {
    /// No faults at all.
    pub fn none() -> Self {
        Self::default()
    }

    /// The same profile for every tenant.
    pub fn everywhere(profile: FaultProfile) -> Self {
        Self {
            default: profile,
            per_tenant: BTreeMap::new(),
        }
    }

    /// The profile that applies to `tenant_id` (lower-case).
    pub fn profile_for(&self, tenant_id: Option<&str>) -> &FaultProfile {
        tenant_id
            .and_then(|tenant| self.per_tenant.get(tenant))
            .unwrap_or(&self.default)
    }

    /// Rates in `0.0..=1.0`, `status_5xx` in `500..=599`, `write_visibility_ms`
    /// at most [`FaultProfile::MAX_WRITE_VISIBILITY_MS`].
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.default.validate("default")?;
        for (tenant, profile) in &self.per_tenant {
            profile.validate(tenant)?;
        }
        Ok(())
    }

    pub(crate) fn normalized(mut self) -> Self {
        self.per_tenant = self
            .per_tenant
            .into_iter()
            .map(|(tenant, profile)| (tenant.to_ascii_lowercase(), profile))
            .collect();
        self
    }
}

/// What can go wrong with one tenant's ARM requests.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FaultProfile {
    /// Probability that a request is answered 429 with `Retry-After`.
    pub rate_429: f64,
    /// Probability that a request (not throttled) is answered `status_5xx`.
    pub rate_5xx: f64,
    /// `Retry-After` of injected 429s, in seconds.
    pub retry_after_secs: u64,
    /// Delay before any answer (also for requests that end up failing).
    pub latency_ms: u64,
    /// Status code of injected server errors.
    pub status_5xx: u16,
    /// Eventual consistency: milliseconds (simulator clock) before a PUT, PATCH
    /// or DELETE becomes visible to GETs; until then they show the state before
    /// it. Writes become visible in the order they were made. 0: at once.
    pub write_visibility_ms: u64,
    /// Probability that a PUT, PATCH or DELETE that would succeed is answered
    /// as if it had (200, the same body) but changes nothing. Such requests
    /// are recorded with [`RequestRecord::lost`](crate::RequestRecord::lost).
    pub rate_lost_write: f64,
}

impl Default for FaultProfile {
    fn default() -> Self {
        Self {
            rate_429: 0.0,
            rate_5xx: 0.0,
            retry_after_secs: 1,
            latency_ms: 0,
            status_5xx: 503,
            write_visibility_ms: 0,
            rate_lost_write: 0.0,
        }
    }
}

impl FaultProfile {
    /// The longest [`FaultProfile::write_visibility_ms`] accepted: one day.
    pub const MAX_WRITE_VISIBILITY_MS: u64 = 86_400_000;

    fn validate(&self, name: &str) -> Result<(), ConfigError> {
        for (field, rate) in [
            ("rate_429", self.rate_429),
            ("rate_5xx", self.rate_5xx),
            ("rate_lost_write", self.rate_lost_write),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(ConfigError::Invalid(format!(
                    "faults '{name}': {field} must be between 0.0 and 1.0, got {rate}"
                )));
            }
        }
        if !(500..=599).contains(&self.status_5xx) {
            return Err(ConfigError::Invalid(format!(
                "faults '{name}': status_5xx must be 500–599, got {}",
                self.status_5xx
            )));
        }
        if self.write_visibility_ms > Self::MAX_WRITE_VISIBILITY_MS {
            return Err(ConfigError::Invalid(format!(
                "faults '{name}': write_visibility_ms must be at most {} (one day), got {}",
                Self::MAX_WRITE_VISIBILITY_MS,
                self.write_visibility_ms
            )));
        }
        Ok(())
    }
}

/// A link to create at start-up or through `POST /_sim/links`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SeedLink {
    /// Tenant GUID.
    pub tenant_id: String,
    /// Object ID (GUID) of the linked identity.
    pub object_id: String,
    /// 1–10 ASCII digits.
    pub partner_id: String,
}

impl SeedLink {
    /// GUIDs and a well-formed partner ID.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !is_guid(&self.tenant_id) || !is_guid(&self.object_id) {
            return Err(ConfigError::Invalid(format!(
                "link {}/{}: tenant_id and object_id must be GUIDs",
                self.tenant_id, self.object_id
            )));
        }
        if !is_partner_id(&self.partner_id) {
            return Err(ConfigError::Invalid(format!(
                "link {}/{}: partner_id '{}' is not 1–10 ASCII digits",
                self.tenant_id, self.object_id, self.partner_id
            )));
        }
        Ok(())
    }
}

/// Why a simulator configuration was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {message}")]
    Read {
        /// The file.
        path: String,
        /// The operating system's reason.
        message: String,
    },
    /// The text is not the expected JSON.
    #[error("invalid simulator JSON: {0}")]
    Json(String),
    /// A value is out of range or malformed.
    #[error("invalid simulator configuration: {0}")]
    Invalid(String),
}

/// 1–10 ASCII digits.
pub(crate) fn is_partner_id(text: &str) -> bool {
    (1..=10).contains(&text.len()) && text.bytes().all(|byte| byte.is_ascii_digit())
}

/// A hyphenated GUID (`8-4-4-4-12` hex digits), any case.
pub(crate) fn is_guid(text: &str) -> bool {
    text.len() == 36 && uuid::Uuid::try_parse(text).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TENANT: &str = "1b1121dd-6900-412a-af73-e8d44f81e1c1";
    const OBJECT: &str = "aa67f786-0552-423e-8849-244ed12bf581";

    #[test]
    fn partner_ids_are_one_to_ten_ascii_digits() {
        for good in ["1", "123456", "1234567890"] {
            assert!(is_partner_id(good), "{good}");
        }
        for bad in ["", "12345678901", "12a", "-1", " 1", "１２"] {
            assert!(!is_partner_id(bad), "{bad}");
        }
    }

    #[test]
    fn guids_must_be_hyphenated() {
        assert!(is_guid(TENANT));
        assert!(is_guid(&TENANT.to_uppercase()));
        assert!(!is_guid("1b1121dd6900412aaf73e8d44f81e1c1"));
        assert!(!is_guid("contoso.onmicrosoft.com"));
    }

    #[test]
    fn full_config_parses_with_defaults() {
        let config = SimConfig::from_json_str(&format!(
            r#"{{"clients": [{{"client_id": "app", "client_secret": "s",
                 "identities": {{"{}": "{OBJECT}"}}}}],
                "faults": {{"default": {{"rate_429": 0.5}}}},
                "seed": 7}}"#,
            TENANT.to_uppercase()
        ))
        .unwrap();
        assert_eq!(config.token_lifetime_secs, DEFAULT_TOKEN_LIFETIME_SECS);
        assert_eq!(config.seed, Some(7));
        assert_eq!(config.faults.default.rate_429, 0.5);
        assert_eq!(config.faults.default.retry_after_secs, 1);
        assert_eq!(config.faults.default.status_5xx, 503);
        assert_eq!(config.faults.default.write_visibility_ms, 0);
        assert_eq!(config.faults.default.rate_lost_write, 0.0);
        let client = config.clients[0].clone().normalized();
        assert_eq!(
            client.identities.get(TENANT).map(String::as_str),
            Some(OBJECT)
        );
        assert!(!client.disabled);
    }

    #[test]
    fn the_documented_example_parses() {
        let config = SimConfig::from_json_str(
            r#"{
              "clients": [{"client_id": "11111111-1111-1111-1111-111111111111",
                           "client_secret": "dev-only-secret",
                           "identities": {"22222222-2222-4222-8222-222222222222":
                                          "33333333-3333-4333-8333-333333333333"}}],
              "valid_partner_ids": null,
              "faults": {
                "default": {"rate_429": 0.0, "rate_5xx": 0.0, "retry_after_secs": 1,
                            "latency_ms": 0, "status_5xx": 503,
                            "write_visibility_ms": 0, "rate_lost_write": 0.0},
                "per_tenant": {"22222222-2222-4222-8222-222222222222":
                               {"write_visibility_ms": 2000, "rate_lost_write": 0.05}}
              },
              "token_lifetime_secs": 3599,
              "seed": 7,
              "links": [{"tenant_id": "22222222-2222-4222-8222-222222222222",
                         "object_id": "33333333-3333-4333-8333-333333333333",
                         "partner_id": "123456"}]
            }"#,
        )
        .unwrap();
        let profile = config
            .faults
            .profile_for(Some("22222222-2222-4222-8222-222222222222"));
        assert_eq!(
            (profile.write_visibility_ms, profile.rate_lost_write),
            (2000, 0.05)
        );
        assert_eq!(
            profile.status_5xx, 503,
            "fields left out keep their defaults"
        );
        assert_eq!(
            FaultProfile {
                write_visibility_ms: FaultProfile::MAX_WRITE_VISIBILITY_MS,
                rate_lost_write: 1.0,
                ..FaultProfile::default()
            }
            .validate("x"),
            Ok(())
        );
    }

    #[test]
    fn bare_client_array_is_accepted() {
        let config = SimConfig::from_json_str(r#"[{"client_id": "app"}]"#).unwrap();
        assert_eq!(config.clients.len(), 1);
    }

    #[test]
    fn invalid_values_are_refused() {
        for text in [
            r#"{"faults": {"default": {"rate_429": 1.5}}}"#,
            r#"{"faults": {"per_tenant": {"t": {"status_5xx": 404}}}}"#,
            r#"{"faults": {"default": {"rate_lost_write": 1.01}}}"#,
            r#"{"faults": {"per_tenant": {"t": {"rate_lost_write": -0.1}}}}"#,
            r#"{"faults": {"default": {"write_visibility_ms": 86400001}}}"#,
            r#"{"faults": {"default": {"write_visibility_ms": -1}}}"#,
            r#"{"valid_partner_ids": ["12x"]}"#,
            r#"[{"client_id": "app", "identities": {"not-a-guid": "x"}}]"#,
            r#"[{"client_id": "app", "certificate_pem": "nothing here"}]"#,
            r#"{"links": [{"tenant_id": "x", "object_id": "y", "partner_id": "1"}]}"#,
            r#"{"unknown_field": 1}"#,
            r#"[{"client_id": " "}]"#,
        ] {
            assert!(SimConfig::from_json_str(text).is_err(), "{text}");
        }
    }

    #[test]
    fn client_debug_redacts_the_secret() {
        let client = SimClient::with_secret("app", "hunter2");
        let text = format!("{client:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("[redacted]"), "{text}");
    }

    #[test]
    fn per_tenant_profile_wins_over_default() {
        let mut faults = Faults::everywhere(FaultProfile {
            latency_ms: 5,
            ..FaultProfile::default()
        });
        faults.per_tenant.insert(
            TENANT.to_uppercase(),
            FaultProfile {
                latency_ms: 9,
                ..FaultProfile::default()
            },
        );
        let faults = faults.normalized();
        assert_eq!(faults.profile_for(Some(TENANT)).latency_ms, 9);
        assert_eq!(faults.profile_for(Some(OBJECT)).latency_ms, 5);
        assert_eq!(faults.profile_for(None).latency_ms, 5);
    }
}
