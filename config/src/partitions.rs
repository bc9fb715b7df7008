//! `[partitions]`: how many tenant partitions there are, which one `run`
//! owns, where each partition's admin API is, and whose forwarded
//! publishers a partition trusts (SPEC §10).

use palworker_events::{PartitionCount, PartitionIndex};
use url::Url;

use crate::error::ConfigError;
use crate::raw::RawPartitions;
use crate::sections::SecuritySettings;

/// Tenant partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionSettings {
    /// How many partitions (1: the single process, no router).
    pub count: PartitionCount,
    /// The partition `palworker run` owns.
    pub index: PartitionIndex,
    /// Each partition's admin API, in index order: empty, or one per
    /// partition. Operator commands gather from these.
    pub admin_urls: Vec<Url>,
    /// The broker user the router connects as: a partition takes the
    /// original publisher from the router's header only on a delivery
    /// whose (broker-validated) AMQP `user_id` is this user.
    pub router_user: Option<String>,
}

impl Default for PartitionSettings {
    fn default() -> Self {
        PartitionSettings {
            count: PartitionCount::ONE,
            index: PartitionCount::ONE.all().next().expect("one partition"),
            admin_urls: Vec::new(),
            router_user: None,
        }
    }
}

impl PartitionSettings {
    /// Whether events go through a router to more than one partition.
    pub fn is_partitioned(&self) -> bool {
        self.count.get() > 1
    }

    /// The admin API of partition `index`, if `admin_urls` lists it.
    pub fn admin_url(&self, index: PartitionIndex) -> Option<&Url> {
        self.admin_urls.get(index.get() as usize)
    }
}

impl RawPartitions {
    pub(crate) fn into_settings(
        self,
        security: &SecuritySettings,
    ) -> Result<PartitionSettings, ConfigError> {
        let count = PartitionCount::new(self.count)
            .map_err(|error| ConfigError::invalid("partitions.count", error.to_string()))?;
        let index = count
            .index(self.index)
            .map_err(|error| ConfigError::invalid("partitions.index", error.to_string()))?;
        if !self.admin_urls.is_empty() && self.admin_urls.len() != self.count as usize {
            return Err(ConfigError::invalid(
                "partitions.admin_urls",
                format!(
                    "lists {} URL(s); it must list one per partition (partitions.count = {}) or none",
                    self.admin_urls.len(),
                    self.count
                ),
            ));
        }
        let admin_urls = self
            .admin_urls
            .iter()
            .enumerate()
            .map(|(index, text)| admin_url(index, text))
            .collect::<Result<Vec<_>, _>>()?;
        let router_user = match self.router_user {
            Some(user) if user.trim().is_empty() => {
                return Err(ConfigError::invalid(
                    "partitions.router_user",
                    "is empty (leave it out, or name the router's broker user)",
                ));
            }
            other => other,
        };
        if count.get() > 1 && router_user.is_none() && !security.is_open() {
            return Err(ConfigError::invalid(
                "partitions.router_user",
                "is required when partitions.count > 1 and security.publishers is set: \
                 a partition checks the original publisher the router forwards only \
                 from the router's own broker user",
            ));
        }
        Ok(PartitionSettings {
            count,
            index,
            admin_urls,
            router_user,
        })
    }
}

/// One `admin_urls` entry: an absolute http(s) URL with a host and no
/// query; the path is the API's base.
fn admin_url(index: usize, text: &str) -> Result<Url, ConfigError> {
    let key = format!("partitions.admin_urls[{index}]");
    let url = Url::parse(text)
        .map_err(|error| ConfigError::invalid(&key, format!("not a valid URL: {error}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ConfigError::invalid(
            &key,
            format!("must be http:// or https:// (got `{}`)", url.scheme()),
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(ConfigError::invalid(&key, "has no host"));
    }
    if url.query().is_some() || !url.username().is_empty() || url.password().is_some() {
        return Err(ConfigError::invalid(
            &key,
            "must not carry a query or credentials (the admin token is configured in http.admin_tokens)",
        ));
    }
    Ok(url)
}
