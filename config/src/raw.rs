//! The shape of the configuration as written: what serde reads from the
//! merged TOML and environment values, before any rule is checked.
//!
//! Every section has `deny_unknown_fields`, so an operator's typo is an error
//! naming the key instead of a setting that silently does nothing. Defaults
//! live here, in one place, and mirror SPEC §6.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawSettings {
    pub amqp: RawAmqp,
    pub pal: RawPal,
    pub credentials: BTreeMap<String, RawCredential>,
    pub ledger: RawLedger,
    pub retry: RawRetry,
    pub limits: RawLimits,
    pub worker: RawWorker,
    pub http: RawHttp,
    pub security: RawSecurity,
    pub audit: RawAudit,
    pub reconcile: RawReconcile,
    pub partitions: RawPartitions,
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawAmqp {
    /// `None` when not written, so that setting it together with `url_file`
    /// is an error rather than a silent choice; the default URL applies when
    /// neither is set.
    pub url: Option<String>,
    pub url_file: Option<PathBuf>,
    pub exchange: String,
    pub queue: String,
    pub dead_letter_exchange: String,
    pub dead_letter_queue: String,
    /// `None`: the events exchange.
    pub results_exchange: Option<String>,
    pub prefetch: u16,
    pub max_message_bytes: usize,
    pub delivery_limit: u32,
    pub declare: DeclareMode,
    pub reconnect_initial: HumanDuration,
    pub reconnect_max: HumanDuration,
}

impl Default for RawAmqp {
    fn default() -> Self {
        RawAmqp {
            url: None,
            url_file: None,
            exchange: "pal.lifecycle".to_owned(),
            queue: "palworker.events".to_owned(),
            dead_letter_exchange: "pal.lifecycle.dlx".to_owned(),
            dead_letter_queue: "palworker.dead".to_owned(),
            results_exchange: None,
            prefetch: 64,
            max_message_bytes: 256 * 1024,
            delivery_limit: 20,
            declare: DeclareMode::Declare,
            reconnect_initial: HumanDuration(Duration::from_secs(1)),
            reconnect_max: HumanDuration(Duration::from_secs(30)),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawPal {
    pub arm_endpoint: String,
    pub authority: String,
    pub api_version: String,
    pub request_timeout: HumanDuration,
    pub verify_writes: bool,
}

impl Default for RawPal {
    fn default() -> Self {
        RawPal {
            arm_endpoint: "https://management.azure.com".to_owned(),
            authority: "https://login.microsoftonline.com".to_owned(),
            api_version: "2018-02-01".to_owned(),
            request_timeout: HumanDuration(Duration::from_secs(30)),
            verify_writes: true,
        }
    }
}

/// No defaults: a credential is only meaningful when written out in full.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCredential {
    pub client_id: String,
    pub client_secret_file: Option<PathBuf>,
    pub client_secret_env: Option<String>,
    pub certificate_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawLedger {
    pub path: PathBuf,
    pub cache_capacity: u64,
    pub retention: HumanDuration,
    pub dedup_retention: HumanDuration,
}

impl Default for RawLedger {
    fn default() -> Self {
        RawLedger {
            path: PathBuf::from("/var/lib/palworker/ledger"),
            cache_capacity: 16 * 1024 * 1024,
            retention: HumanDuration(Duration::from_secs(90 * 24 * 3600)),
            dedup_retention: HumanDuration(Duration::from_secs(400 * 24 * 3600)),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawAudit {
    pub retention: HumanDuration,
}

impl Default for RawAudit {
    fn default() -> Self {
        RawAudit {
            retention: HumanDuration(Duration::ZERO),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawReconcile {
    pub interval: HumanDuration,
}

impl Default for RawReconcile {
    fn default() -> Self {
        RawReconcile {
            interval: HumanDuration(Duration::from_secs(24 * 3600)),
        }
    }
}

/// `[partitions]` (SPEC §10).
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawPartitions {
    pub count: u32,
    pub index: u32,
    pub admin_urls: Vec<String>,
    pub router_user: Option<String>,
}

impl Default for RawPartitions {
    fn default() -> Self {
        RawPartitions {
            count: 1,
            index: 0,
            admin_urls: Vec::new(),
            router_user: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawRetry {
    pub initial_interval: HumanDuration,
    #[serde(deserialize_with = "number")]
    pub multiplier: f64,
    pub max_interval: HumanDuration,
    pub max_elapsed: HumanDuration,
    #[serde(deserialize_with = "number")]
    pub jitter: f64,
}

impl Default for RawRetry {
    fn default() -> Self {
        RawRetry {
            initial_interval: HumanDuration(Duration::from_secs(1)),
            multiplier: 2.0,
            max_interval: HumanDuration(Duration::from_secs(5 * 60)),
            max_elapsed: HumanDuration(Duration::from_secs(24 * 60 * 60)),
            jitter: 0.2,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawLimits {
    pub concurrency: usize,
    #[serde(deserialize_with = "number")]
    pub per_tenant_rps: f64,
    pub max_actions_per_event: usize,
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            concurrency: 64,
            per_tenant_rps: 20.0,
            max_actions_per_event: 500,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawWorker {
    pub dry_run: bool,
    pub paused: bool,
    pub shutdown_grace: HumanDuration,
}

impl Default for RawWorker {
    fn default() -> Self {
        RawWorker {
            dry_run: false,
            paused: false,
            shutdown_grace: HumanDuration(Duration::from_secs(20)),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawHttp {
    pub listen: String,
    pub admin_token_file: Option<PathBuf>,
    pub admin_token_env: Option<String>,
    pub admin_tokens: BTreeMap<String, RawNamedToken>,
}

/// One named admin token: from a file or an environment variable.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawNamedToken {
    pub file: Option<PathBuf>,
    pub env: Option<String>,
}

impl Default for RawHttp {
    fn default() -> Self {
        RawHttp {
            listen: "127.0.0.1:9464".to_owned(),
            admin_token_file: None,
            admin_token_env: None,
            admin_tokens: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawSecurity {
    pub publishers: BTreeMap<String, Vec<String>>,
}

/// A duration written in humantime syntax (`"500ms"`, `"30s"`, `"5m"`, `"24h"`).
///
/// Parsed during deserialization so that the error carries the key's path.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;

        impl Visitor<'_> for DurationVisitor {
            type Value = HumanDuration;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a duration such as \"500ms\", \"30s\", \"5m\" or \"24h\"")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<HumanDuration, E> {
                humantime::parse_duration(text.trim())
                    .map(HumanDuration)
                    .map_err(|error| {
                        E::custom(format!(
                            "invalid duration {text:?}: {} (expected e.g. \"500ms\", \"30s\", \"5m\", \"24h\")",
                            duration_problem(&error)
                        ))
                    })
            }
        }

        deserializer.deserialize_str(DurationVisitor)
    }
}

/// humantime's own messages list every unit spelling; a short reason reads
/// better in a one-line error.
fn duration_problem(error: &humantime::DurationError) -> String {
    use humantime::DurationError;
    match error {
        DurationError::UnknownUnit { unit, .. } if unit.is_empty() => {
            "a number needs a unit".to_owned()
        }
        DurationError::UnknownUnit { unit, .. } => format!("unknown unit {unit:?}"),
        DurationError::NumberExpected(_) => "a number is expected before each unit".to_owned(),
        DurationError::InvalidCharacter(_) => "invalid character".to_owned(),
        DurationError::NumberOverflow => "too long".to_owned(),
        DurationError::Empty => "empty".to_owned(),
    }
}

/// Reads an `f64` from a TOML float or integer, or from text (environment
/// variables are text).
///
/// Figment's own lenient reading turns short decimal text into an `f32`
/// first, so `PALWORKER__RETRY__JITTER=0.2` would become 0.200000003; parsing
/// the text ourselves keeps the value exact.
fn number<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    struct NumberVisitor;

    impl Visitor<'_> for NumberVisitor {
        type Value = f64;

        fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
            formatter.write_str("a number")
        }

        fn visit_f64<E: de::Error>(self, value: f64) -> Result<f64, E> {
            Ok(value)
        }

        fn visit_i64<E: de::Error>(self, value: i64) -> Result<f64, E> {
            Ok(value as f64)
        }

        fn visit_u64<E: de::Error>(self, value: u64) -> Result<f64, E> {
            Ok(value as f64)
        }

        fn visit_i128<E: de::Error>(self, value: i128) -> Result<f64, E> {
            Ok(value as f64)
        }

        fn visit_u128<E: de::Error>(self, value: u128) -> Result<f64, E> {
            Ok(value as f64)
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<f64, E> {
            text.trim()
                .parse()
                .map_err(|_| E::invalid_type(de::Unexpected::Str(text), &self))
        }
    }

    deserializer.deserialize_any(NumberVisitor)
}

/// How the worker treats the AMQP topology at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeclareMode {
    /// Declare exchanges, queues and bindings (idempotent). TOML `"declare"`.
    #[default]
    Declare,
    /// Only check passively that they exist, for brokers where the worker's
    /// user may not declare. TOML `"passive"`.
    Passive,
}

impl DeclareMode {
    /// The TOML spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            DeclareMode::Declare => "declare",
            DeclareMode::Passive => "passive",
        }
    }
}
