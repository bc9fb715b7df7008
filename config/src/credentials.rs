//! `[credentials.NAME]` and reading secrets from the files and environment
//! variables the configuration names. Secrets are read once, at load time,
//! so a missing one stops start-up instead of the first token request.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};

use crate::error::ConfigError;
use crate::raw::RawCredential;

/// An application identity (service principal) the worker acts as in
/// customer tenants. Inventory accounts refer to it by its name.
#[derive(Debug, Clone)]
pub struct CredentialSettings {
    /// The application (client) ID.
    pub client_id: String,
    /// How the application proves its identity.
    pub secret: CredentialSecret,
}

/// How an application authenticates to the token endpoint. `Debug` prints
/// `[REDACTED]` in place of the secret.
#[derive(Debug, Clone)]
pub enum CredentialSecret {
    /// A client secret (`client_secret_file` or `client_secret_env`),
    /// surrounding whitespace removed.
    ClientSecret(SecretString),
    /// A certificate for a signed client assertion (`certificate_file`).
    Certificate {
        /// The file's contents: a PEM certificate and its unencrypted private key.
        pem: SecretString,
        /// Where they were read from, for messages.
        path: PathBuf,
    },
}

pub(crate) fn credentials(
    raw: BTreeMap<String, RawCredential>,
    env: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, CredentialSettings>, ConfigError> {
    raw.into_iter()
        .map(|(name, credential)| {
            let settings = credential.into_settings(&name, env)?;
            Ok((name, settings))
        })
        .collect()
}

impl RawCredential {
    fn into_settings(
        self,
        name: &str,
        env: &BTreeMap<String, String>,
    ) -> Result<CredentialSettings, ConfigError> {
        let base = format!("credentials.{name}");
        if name.trim().is_empty() {
            return Err(ConfigError::invalid(
                "credentials",
                "a credential name must not be empty",
            ));
        }
        if self.client_id.trim().is_empty() {
            return Err(ConfigError::invalid(
                format!("{base}.client_id"),
                "must not be empty",
            ));
        }
        let secret = match (
            self.client_secret_file,
            self.client_secret_env,
            self.certificate_file,
        ) {
            (Some(path), None, None) => CredentialSecret::ClientSecret(secret_from_file(
                &format!("{base}.client_secret_file"),
                &path,
            )?),
            (None, Some(variable), None) => CredentialSecret::ClientSecret(secret_from_env(
                &format!("{base}.client_secret_env"),
                &variable,
                env,
            )?),
            (None, None, Some(path)) => {
                let pem = certificate_from_file(&format!("{base}.certificate_file"), &path)?;
                CredentialSecret::Certificate { pem, path }
            }
            (file, variable, certificate) => {
                let set: Vec<&str> = [
                    ("`client_secret_file`", file.is_some()),
                    ("`client_secret_env`", variable.is_some()),
                    ("`certificate_file`", certificate.is_some()),
                ]
                .into_iter()
                .filter_map(|(key, is_set)| is_set.then_some(key))
                .collect();
                let found = if set.is_empty() {
                    "none is set".to_owned()
                } else {
                    format!("found {}", set.join(" and "))
                };
                return Err(ConfigError::invalid(
                    base,
                    format!(
                        "set exactly one of `client_secret_file`, `client_secret_env` or `certificate_file` ({found})"
                    ),
                ));
            }
        };
        Ok(CredentialSettings {
            client_id: self.client_id.trim().to_owned(),
            secret,
        })
    }
}

/// Reads a secret file, dropping surrounding whitespace (secret files
/// usually end with a newline). Missing, unreadable or blank is an error.
pub(crate) fn secret_from_file(key: &str, path: &Path) -> Result<SecretString, ConfigError> {
    let contents = read_file(key, path)?;
    let secret = contents.expose_secret().trim();
    if secret.is_empty() {
        return Err(ConfigError::secret(
            key,
            format!("`{}` is empty", path.display()),
        ));
    }
    Ok(SecretString::from(secret))
}

/// Looks a secret up in the environment given to `Settings::load` (the whole
/// environment, not only `PALWORKER__` variables).
pub(crate) fn secret_from_env(
    key: &str,
    variable: &str,
    env: &BTreeMap<String, String>,
) -> Result<SecretString, ConfigError> {
    if variable.trim().is_empty() {
        return Err(ConfigError::invalid(
            key,
            "must name an environment variable",
        ));
    }
    let Some(value) = env.get(variable) else {
        return Err(ConfigError::secret(
            key,
            format!("environment variable `{variable}` is not set"),
        ));
    };
    let secret = value.trim();
    if secret.is_empty() {
        return Err(ConfigError::secret(
            key,
            format!("environment variable `{variable}` is empty"),
        ));
    }
    Ok(SecretString::from(secret))
}

/// Reads a PEM file holding a certificate and its private key, and checks
/// that both are there, so that a wrong file is caught at start-up.
fn certificate_from_file(key: &str, path: &Path) -> Result<SecretString, ConfigError> {
    let pem = read_file(key, path)?;
    let text = pem.expose_secret();
    let reason = if !text.contains("-----BEGIN CERTIFICATE-----") {
        Some("holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
    } else if text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        Some("holds an encrypted private key, which is not supported")
    } else if !(text.contains("-----BEGIN PRIVATE KEY-----")
        || text.contains("-----BEGIN RSA PRIVATE KEY-----"))
    {
        Some(
            "holds no PEM private key (-----BEGIN PRIVATE KEY----- or -----BEGIN RSA PRIVATE KEY-----)",
        )
    } else {
        None
    };
    match reason {
        Some(reason) => Err(ConfigError::secret(
            key,
            format!("`{}` {reason}", path.display()),
        )),
        None => Ok(pem),
    }
}

fn read_file(key: &str, path: &Path) -> Result<SecretString, ConfigError> {
    if path.as_os_str().is_empty() {
        return Err(ConfigError::invalid(key, "must name a file"));
    }
    std::fs::read_to_string(path)
        .map(SecretString::from)
        .map_err(|error| {
            ConfigError::secret(key, format!("cannot read `{}`: {error}", path.display()))
        })
}
