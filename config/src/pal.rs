//! `[pal]`: where the Partner Admin Link API and the token endpoint are.

use std::time::Duration;

use url::{Host, Url};

use crate::error::ConfigError;
use crate::raw::RawPal;

/// The ARM endpoint, the Entra ID authority and how to call them.
///
/// Both URLs are base URLs whose path ends with `/`, without query or
/// fragment, so `arm_endpoint.join("providers/Microsoft.ManagementPartner/partners")`
/// appends to them (a relative path *without* leading `/` keeps any path
/// prefix the base has, e.g. a simulator mounted under `/pal/`).
#[derive(Debug, Clone)]
pub struct PalSettings {
    /// Azure Resource Manager, e.g. `https://management.azure.com/`.
    pub arm_endpoint: Url,
    /// Token authority, e.g. `https://login.microsoftonline.com/`.
    pub authority: Url,
    /// `api-version` query parameter of PAL requests.
    pub api_version: String,
    /// Bound on one HTTP request, connection to last byte.
    pub request_timeout: Duration,
    /// After each write, read the link back until it shows the desired
    /// state (SPEC §11.3).
    pub verify_writes: bool,
}

impl RawPal {
    pub(crate) fn into_settings(self) -> Result<PalSettings, ConfigError> {
        let arm_endpoint = base_url("pal.arm_endpoint", &self.arm_endpoint)?;
        let authority = base_url("pal.authority", &self.authority)?;
        if self.api_version.trim().is_empty() {
            return Err(ConfigError::invalid("pal.api_version", "must not be empty"));
        }
        if self.request_timeout.0.is_zero() {
            return Err(ConfigError::invalid(
                "pal.request_timeout",
                "must be longer than zero",
            ));
        }
        Ok(PalSettings {
            arm_endpoint,
            authority,
            api_version: self.api_version,
            request_timeout: self.request_timeout.0,
            verify_writes: self.verify_writes,
        })
    }
}

/// Parses a PAL or token base URL: https, or plain http to a loopback host
/// (the simulator, tests). Bearer tokens and client secrets travel over these
/// URLs, so plain http anywhere else is refused.
fn base_url(key: &str, text: &str) -> Result<Url, ConfigError> {
    let mut url = Url::parse(text.trim())
        .map_err(|error| ConfigError::invalid(key, format!("not a valid URL: {error}")))?;
    match url.scheme() {
        "https" => {}
        "http" => {
            if !is_loopback(&url) {
                return Err(ConfigError::invalid(
                    key,
                    format!(
                        "plain http is refused for non-loopback host `{}` (use https)",
                        url.host_str().unwrap_or_default()
                    ),
                ));
            }
        }
        other => {
            return Err(ConfigError::invalid(
                key,
                format!("must be an https URL (got scheme `{other}`)"),
            ));
        }
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ConfigError::invalid(
            key,
            "must not contain a user name or password",
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(ConfigError::invalid(
            key,
            "must not have a query or fragment (it is a base URL)",
        ));
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
        Some(Host::Ipv4(address)) => address.is_loopback(),
        Some(Host::Ipv6(address)) => address.is_loopback(),
        None => false,
    }
}
