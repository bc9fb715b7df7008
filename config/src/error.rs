//! Why a configuration was refused: one variant per kind of failure, each
//! displayed as one line that names the file, key or variable and the reason.
//! No variant ever holds a secret value.

use std::io;
use std::path::{Path, PathBuf};

/// A configuration that cannot be used. Start-up stops with its message.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file does not exist.
    #[error("config file `{}`: not found", path.display())]
    FileNotFound {
        /// The path as given.
        path: PathBuf,
    },

    /// The configuration file exists but could not be read (permissions, a
    /// directory, not UTF-8).
    #[error("config file `{}`: cannot be read: {source}", path.display())]
    FileUnreadable {
        /// The path as given.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },

    /// The text is not valid TOML.
    #[error("{}: TOML parse error{}: {message}", origin(.file.as_deref()), describe_position(.position))]
    Syntax {
        /// The file, or `None` for text given to [`Settings::from_toml_str`](crate::Settings::from_toml_str).
        file: Option<PathBuf>,
        /// 1-based line and column of the error, when the parser knows them.
        position: Option<(usize, usize)>,
        /// The parser's message, folded onto one line.
        message: String,
    },

    /// A key palworker does not know, usually a typo.
    #[error("config key `{key}`: unknown key (expected {expected})")]
    UnknownKey {
        /// Dotted path of the key, e.g. `amqp.prefetchh`.
        key: String,
        /// The keys that are allowed at that place.
        expected: String,
    },

    /// A key that has no default is absent.
    #[error("config key `{key}`: missing (it has no default)")]
    MissingKey {
        /// Dotted path of the key, e.g. `credentials.automation.client_id`.
        key: String,
    },

    /// A value has the wrong type, cannot be parsed, is out of range or breaks
    /// a rule relating it to other values.
    #[error("config key `{key}`: {reason}")]
    InvalidValue {
        /// Dotted path of the key.
        key: String,
        /// Why, on one line.
        reason: String,
    },

    /// A secret (client secret, certificate, admin token) could not be read
    /// from the file or environment variable the key names, or is empty.
    #[error("config key `{key}`: {reason}")]
    Secret {
        /// Dotted path of the key naming the secret's source.
        key: String,
        /// Why, on one line; never the secret itself.
        reason: String,
    },

    /// A `PALWORKER__…` environment variable that does not name a key.
    #[error("environment variable `{name}`: {reason}")]
    Environment {
        /// The variable's name.
        name: String,
        /// Why it cannot be used.
        reason: String,
    },
}

impl ConfigError {
    /// The dotted key the error is about, when it is about one key.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::UnknownKey { key, .. }
            | ConfigError::MissingKey { key }
            | ConfigError::InvalidValue { key, .. }
            | ConfigError::Secret { key, .. } => Some(key),
            ConfigError::FileNotFound { .. }
            | ConfigError::FileUnreadable { .. }
            | ConfigError::Syntax { .. }
            | ConfigError::Environment { .. } => None,
        }
    }

    pub(crate) fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError::InvalidValue {
            key: key.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn secret(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError::Secret {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

fn origin(file: Option<&Path>) -> String {
    match file {
        Some(path) => format!("config file `{}`", path.display()),
        None => "config text".to_owned(),
    }
}

fn describe_position(position: &Option<(usize, usize)>) -> String {
    match position {
        Some((line, column)) => format!(" at line {line}, column {column}"),
        None => String::new(),
    }
}
