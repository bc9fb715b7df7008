//! `[amqp]`: the broker connection and the topology names of SPEC §4.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use secrecy::ExposeSecret;
use url::Url;

use crate::credentials::secret_from_file;
use crate::error::ConfigError;
use crate::raw::{DeclareMode, RawAmqp};

/// The broker URL when neither `amqp.url` nor `amqp.url_file` is set: the
/// local RabbitMQ's default user and vhost.
const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Connection to RabbitMQ and the names of the objects the worker uses.
#[derive(Debug, Clone)]
pub struct AmqpSettings {
    /// Broker URL, `amqp://` or `amqps://` (TLS with the system's roots):
    /// `amqp.url`, or the contents of `amqp.url_file`, or the default.
    pub url: AmqpUrl,
    /// Topic exchange the events are published to.
    pub exchange: String,
    /// Quorum queue the worker consumes.
    pub queue: String,
    /// Fanout exchange for messages that cannot be processed.
    pub dead_letter_exchange: String,
    /// Quorum queue bound to the dead-letter exchange.
    pub dead_letter_queue: String,
    /// Topic exchange the worker publishes its results to (SPEC §11.3:
    /// `palworker.event.completed`, `palworker.action.attention`); by
    /// default the events exchange.
    pub results_exchange: String,
    /// Unacknowledged deliveries the broker may send at once (at least 1).
    pub prefetch: u16,
    /// Larger message bodies are dead-lettered unread (at least 1).
    pub max_message_bytes: usize,
    /// Deliveries of one message before the broker sets it aside to the
    /// dead-letter exchange (the events queue's `x-delivery-limit`, at least
    /// 1): a message the worker cannot even receive (a frame its client
    /// cannot parse) never blocks the queue for good.
    pub delivery_limit: u32,
    /// Whether to declare the topology or only check that it exists.
    pub declare: DeclareMode,
    /// First delay before reconnecting after the connection is lost.
    pub reconnect_initial: Duration,
    /// Longest delay between reconnection attempts.
    pub reconnect_max: Duration,
}

/// An `amqp://` or `amqps://` URL, which usually holds a password.
///
/// `Display` and `Debug` print it with the password replaced by `***`;
/// [`AmqpUrl::expose`] gives the real one, for the connection only.
#[derive(Clone, PartialEq, Eq)]
pub struct AmqpUrl {
    url: String,
    redacted: String,
    tls: bool,
}

impl AmqpUrl {
    /// Checks that `url` is an absolute `amqp://` or `amqps://` URL with a
    /// host. The error never repeats the URL, which may hold a password.
    pub fn parse(url: &str) -> Result<AmqpUrl, ConfigError> {
        AmqpUrl::parse_for(UrlSource::Value, url)
    }

    /// [`AmqpUrl::parse`], its errors naming the key the URL came from; for
    /// a file, also the file (never its contents).
    fn parse_for(source: UrlSource<'_>, url: &str) -> Result<AmqpUrl, ConfigError> {
        let refuse = |reason: String| match source {
            UrlSource::Value => ConfigError::invalid("amqp.url", reason),
            UrlSource::File(path) => {
                ConfigError::invalid("amqp.url_file", format!("`{}`: {reason}", path.display()))
            }
        };
        let parsed =
            Url::parse(url).map_err(|error| refuse(format!("not a valid URL: {error}")))?;
        let tls = match parsed.scheme() {
            "amqp" => false,
            "amqps" => true,
            other => {
                return Err(refuse(format!(
                    "must start with amqp:// or amqps:// (got scheme `{other}`)"
                )));
            }
        };
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err(refuse("has no host".to_owned()));
        }
        let mut redacted = parsed;
        if redacted.password().is_some() {
            // Cannot fail: the URL has a host.
            let _ = redacted.set_password(Some("***"));
        }
        Ok(AmqpUrl {
            url: url.to_owned(),
            redacted: redacted.to_string(),
            tls,
        })
    }

    /// The URL with its password, to open the connection. Never log it.
    pub fn expose(&self) -> &str {
        &self.url
    }

    /// `true` for `amqps://`.
    pub fn is_tls(&self) -> bool {
        self.tls
    }
}

/// Where a broker URL was written.
#[derive(Clone, Copy)]
enum UrlSource<'a> {
    /// `amqp.url` (or the default).
    Value,
    /// The file `amqp.url_file` names.
    File(&'a Path),
}

impl FromStr for AmqpUrl {
    type Err = ConfigError;

    fn from_str(url: &str) -> Result<AmqpUrl, ConfigError> {
        AmqpUrl::parse(url)
    }
}

impl fmt::Display for AmqpUrl {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.redacted)
    }
}

impl fmt::Debug for AmqpUrl {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_tuple("AmqpUrl")
            .field(&self.redacted)
            .finish()
    }
}

impl RawAmqp {
    pub(crate) fn into_settings(self) -> Result<AmqpSettings, ConfigError> {
        let url = match (self.url, self.url_file) {
            (None, None) => AmqpUrl::parse(DEFAULT_URL)?,
            (Some(url), None) => AmqpUrl::parse(&url)?,
            // The URL holds the broker password: a file (a mounted secret)
            // keeps it out of the configuration and the environment.
            (None, Some(path)) => {
                let url = secret_from_file("amqp.url_file", &path)?;
                AmqpUrl::parse_for(UrlSource::File(&path), url.expose_secret())?
            }
            (Some(_), Some(_)) => {
                return Err(ConfigError::invalid(
                    "amqp.url_file",
                    "set either amqp.url or amqp.url_file, not both",
                ));
            }
        };
        let exchange = object_name("amqp.exchange", self.exchange)?;
        let queue = object_name("amqp.queue", self.queue)?;
        let dead_letter_exchange =
            object_name("amqp.dead_letter_exchange", self.dead_letter_exchange)?;
        let dead_letter_queue = object_name("amqp.dead_letter_queue", self.dead_letter_queue)?;
        if dead_letter_exchange == exchange {
            return Err(ConfigError::invalid(
                "amqp.dead_letter_exchange",
                format!("must differ from amqp.exchange (both are `{exchange}`)"),
            ));
        }
        if dead_letter_queue == queue {
            return Err(ConfigError::invalid(
                "amqp.dead_letter_queue",
                format!("must differ from amqp.queue (both are `{queue}`)"),
            ));
        }
        let results_exchange = match self.results_exchange {
            None => exchange.clone(),
            Some(name) => object_name("amqp.results_exchange", name)?,
        };
        if results_exchange == dead_letter_exchange {
            // Every result would land in the dead-letter queue.
            return Err(ConfigError::invalid(
                "amqp.results_exchange",
                format!(
                    "must differ from amqp.dead_letter_exchange (both are `{dead_letter_exchange}`)"
                ),
            ));
        }
        if self.prefetch == 0 {
            // 0 means "unlimited" to the broker: memory would be unbounded.
            return Err(ConfigError::invalid(
                "amqp.prefetch",
                "must be at least 1 (0 would mean unlimited)",
            ));
        }
        if self.max_message_bytes == 0 {
            return Err(ConfigError::invalid(
                "amqp.max_message_bytes",
                "must be at least 1",
            ));
        }
        if self.delivery_limit == 0 {
            return Err(ConfigError::invalid(
                "amqp.delivery_limit",
                "must be at least 1",
            ));
        }
        let reconnect_initial = self.reconnect_initial.0;
        let reconnect_max = self.reconnect_max.0;
        if reconnect_initial.is_zero() {
            return Err(ConfigError::invalid(
                "amqp.reconnect_initial",
                "must be longer than zero",
            ));
        }
        if reconnect_initial > reconnect_max {
            return Err(ConfigError::invalid(
                "amqp.reconnect_initial",
                format!(
                    "must not be longer than amqp.reconnect_max = {} (got {})",
                    humantime::format_duration(reconnect_max),
                    humantime::format_duration(reconnect_initial)
                ),
            ));
        }
        Ok(AmqpSettings {
            url,
            exchange,
            queue,
            dead_letter_exchange,
            dead_letter_queue,
            results_exchange,
            prefetch: self.prefetch,
            max_message_bytes: self.max_message_bytes,
            delivery_limit: self.delivery_limit,
            declare: self.declare,
            reconnect_initial,
            reconnect_max,
        })
    }
}

/// AMQP names are short strings: at most 255 bytes. An empty name would mean
/// the default exchange or a server-named queue, never what was intended.
fn object_name(key: &str, name: String) -> Result<String, ConfigError> {
    if name.trim().is_empty() {
        return Err(ConfigError::invalid(key, "must not be empty"));
    }
    if name.len() > 255 {
        return Err(ConfigError::invalid(
            key,
            format!("must be at most 255 bytes long (got {})", name.len()),
        ));
    }
    Ok(name)
}
