//! Where values come from: TOML text and `PALWORKER__SECTION__KEY`
//! environment variables, merged by figment (environment wins), and the
//! translation of figment's errors into one-line [`ConfigError`]s.

use std::collections::BTreeMap;
use std::path::Path;

use figment::error::{Actual, Kind};
use figment::providers::{Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};

use crate::error::ConfigError;
use crate::raw::RawSettings;

/// Prefix of the environment variables that override keys. Matched without
/// regard to ASCII case, like the sections and keys after it.
pub(crate) const ENV_PREFIX: &str = "PALWORKER__";

/// Parses TOML text into figment's value tree, with a one-line error.
pub(crate) fn parse_toml(text: &str, file: Option<&Path>) -> Result<Dict, ConfigError> {
    Toml::from_str::<Dict>(text).map_err(|error| ConfigError::Syntax {
        file: file.map(Path::to_path_buf),
        position: error.span().map(|span| line_and_column(text, span.start)),
        message: one_line(error.message()),
    })
}

/// `overlay` laid over `base` (see [`crate::Settings::layer_toml`]).
pub(crate) fn layer_toml(base: &str, overlay: &str) -> Result<String, ConfigError> {
    fn table(text: &str) -> Result<toml::Table, ConfigError> {
        text.parse::<toml::Table>()
            .map_err(|error| ConfigError::Syntax {
                file: None,
                position: error.span().map(|span| line_and_column(text, span.start)),
                message: one_line(error.message()),
            })
    }
    fn merge(into: &mut toml::Table, from: toml::Table) {
        for (key, value) in from {
            match (into.get_mut(&key), value) {
                (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
                (_, value) => {
                    into.insert(key, value);
                }
            }
        }
    }
    let mut layered = table(base)?;
    merge(&mut layered, table(overlay)?);
    Ok(layered.to_string())
}

/// Merges the TOML values (if any) and the environment overrides, and reads
/// the result into the raw settings shape.
pub(crate) fn extract(
    toml: Option<Dict>,
    env: &BTreeMap<String, String>,
) -> Result<RawSettings, ConfigError> {
    let mut figment = Figment::new();
    if let Some(dict) = toml {
        figment = figment.merge(Values { name: "TOML", dict });
    }
    figment = figment.merge(Values {
        name: "environment",
        dict: environment_overrides(env)?,
    });
    // Lossy: environment values are text, so "10" must read as an integer
    // and "true" as a boolean.
    figment.extract_lossy::<RawSettings>().map_err(translate)
}

/// The `PALWORKER__SECTION__KEY=value` variables as a value tree: the parts
/// after the prefix, lower-cased, are the path; the value stays text (read
/// leniently later) unless it is a `[...]` list or `{...}` table.
fn environment_overrides(env: &BTreeMap<String, String>) -> Result<Dict, ConfigError> {
    let mut dict = Dict::new();
    let mut claimed: Vec<(Vec<String>, &str)> = Vec::new();

    for (name, value) in env {
        let Some(rest) = strip_prefix_ignore_case(name, ENV_PREFIX) else {
            continue;
        };
        let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        if path.iter().any(String::is_empty) {
            return Err(ConfigError::Environment {
                name: name.clone(),
                reason: "expected PALWORKER__SECTION__KEY, with no empty part between `__`"
                    .to_owned(),
            });
        }
        // Two variables for one key (differing only in case), or one for a
        // table and one for a key inside it, would otherwise let the
        // iteration order decide.
        if let Some((_, other)) = claimed
            .iter()
            .find(|(other_path, _)| is_prefix(other_path, &path) || is_prefix(&path, other_path))
        {
            return Err(ConfigError::Environment {
                name: name.clone(),
                reason: format!("sets the same key as `{other}`"),
            });
        }
        insert(&mut dict, &path, environment_value(value));
        claimed.push((path, name));
    }
    Ok(dict)
}

fn environment_value(text: &str) -> Value {
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') || trimmed.starts_with('{') {
        // Infallible: unparsable text falls back to a string.
        text.parse::<Value>().unwrap_or_else(|never| match never {})
    } else {
        Value::from(text.to_owned())
    }
}

fn insert(dict: &mut Dict, path: &[String], value: Value) {
    let (last, parents) = path.split_last().expect("path has at least one part");
    let mut current = dict;
    for part in parents {
        let entry = current
            .entry(part.clone())
            .or_insert_with(|| Value::from(Dict::new()));
        // Always a table: `environment_overrides` refuses overlapping paths
        // before inserting, so no value sits where a table is needed.
        let Value::Dict(_, inner) = entry else {
            return;
        };
        current = inner;
    }
    current.insert(last.clone(), value);
}

fn is_prefix(prefix: &[String], path: &[String]) -> bool {
    prefix.len() <= path.len() && prefix.iter().zip(path).all(|(a, b)| a == b)
}

fn strip_prefix_ignore_case<'a>(name: &'a str, prefix: &str) -> Option<&'a str> {
    let head = name.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &name[prefix.len()..])
}

/// A value tree as a figment provider, in the default profile.
struct Values {
    name: &'static str,
    dict: Dict,
}

impl Provider for Values {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.dict.clone()))
    }
}

/// Figment error → one-line error naming the dotted key.
fn translate(error: figment::Error) -> ConfigError {
    // Serde stops at the first error, so there is one; if figment ever chains
    // more, the first is the one to fix first.
    let error = error
        .into_iter()
        .next()
        .expect("an error holds at least one error");
    let mut path = error.path.clone();
    match error.kind {
        Kind::UnknownField(field, expected) => {
            // Figment already pushed the unknown key itself onto the path.
            if path.last() != Some(&field) {
                path.push(field);
            }
            ConfigError::UnknownKey {
                key: dotted(&path),
                expected: one_of(expected),
            }
        }
        Kind::MissingField(field) => {
            path.push(field.into_owned());
            ConfigError::MissingKey { key: dotted(&path) }
        }
        Kind::InvalidType(actual, expected) => ConfigError::invalid(
            dotted(&path),
            format!(
                "invalid type: found {}, expected {}",
                describe(&actual),
                expected_type(&expected)
            ),
        ),
        Kind::InvalidValue(actual, expected) => ConfigError::invalid(
            dotted(&path),
            format!(
                "invalid value: found {}, expected {}",
                describe(&actual),
                expected_range(&expected)
            ),
        ),
        Kind::UnknownVariant(found, expected) => ConfigError::invalid(
            dotted(&path),
            format!("unknown value `{found}` (expected {})", one_of(expected)),
        ),
        Kind::Message(message) => ConfigError::invalid(dotted(&path), one_line(&message)),
        other => ConfigError::invalid(dotted(&path), one_line(&other.to_string())),
    }
}

fn dotted(path: &[String]) -> String {
    if path.is_empty() {
        "(top level)".to_owned()
    } else {
        path.join(".")
    }
}

fn describe(actual: &Actual) -> String {
    match actual {
        Actual::Unsigned(value) => format!("integer `{value}`"),
        Actual::Signed(value) => format!("integer `{value}`"),
        Actual::Float(value) => format!("number `{value}`"),
        Actual::Bool(value) => format!("boolean `{value}`"),
        Actual::Map => "a table".to_owned(),
        Actual::Seq => "a list".to_owned(),
        other => other.to_string(),
    }
}

/// Serde names Rust types ("usize", "struct RawAmqp"); operators write TOML.
fn expected_type(expected: &str) -> String {
    match expected {
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" | "i8" | "i16" | "i32" | "i64" | "i128"
        | "isize" => "an integer".to_owned(),
        "f32" | "f64" => "a number".to_owned(),
        "a sequence" => "a list".to_owned(),
        "a map" => "a table".to_owned(),
        "path string" => "a path (a string)".to_owned(),
        other if other.starts_with("struct ") => "a table".to_owned(),
        other => other.to_owned(),
    }
}

fn expected_range(expected: &str) -> String {
    match expected {
        "u8" => "an integer from 0 to 255".to_owned(),
        "u16" => "an integer from 0 to 65535".to_owned(),
        "u32" => "an integer from 0 to 4294967295".to_owned(),
        "u64" | "u128" | "usize" => "a non-negative integer".to_owned(),
        other => expected_type(other),
    }
}

fn one_of(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|name| format!("`{name}`")).collect();
    match quoted.as_slice() {
        [] => "none".to_owned(),
        [only] => only.clone(),
        [first, second] => format!("{first} or {second}"),
        [init @ .., last] => format!("one of {} or {last}", init.join(", ")),
    }
}

/// Folds a possibly multi-line message onto one line.
pub(crate) fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |index| index + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}
