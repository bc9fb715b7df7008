//! Reading typed fields out of a JSON object, shared by event `data` and the
//! JSON Lines account import so both report problems the same way.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::error::{EventError, FieldProblem};
use crate::ids::{ContractId, CredentialName, EmployeeId, IdError, ObjectId, PartnerId, TenantId};

/// A field that could not be read.
#[derive(Debug)]
pub(crate) enum FieldError {
    /// Absent or null.
    Missing(&'static str),
    /// Present and wrong.
    Invalid {
        field: &'static str,
        problem: FieldProblem,
    },
}

impl From<FieldError> for EventError {
    fn from(error: FieldError) -> Self {
        match error {
            FieldError::Missing(field) => EventError::MissingField { field },
            FieldError::Invalid { field, problem } => EventError::InvalidField {
                field: field.to_owned(),
                problem,
            },
        }
    }
}

/// A type that can be read from one JSON field value.
pub(crate) trait FromField: Sized {
    fn from_field(value: &Value) -> Result<Self, FieldProblem>;
}

/// A type that can be parsed from a string, for string-valued fields.
pub(crate) trait FromText: Sized {
    fn from_text(text: &str) -> Result<Self, FieldProblem>;
}

impl<T: FromText> FromField for T {
    fn from_field(value: &Value) -> Result<Self, FieldProblem> {
        match value {
            Value::String(text) => T::from_text(text),
            _ => Err(FieldProblem::NotAString),
        }
    }
}

macro_rules! from_text_via_parse {
    ($($name:ty),*) => {$(
        impl FromText for $name {
            fn from_text(text: &str) -> Result<Self, FieldProblem> {
                <$name>::parse(text).map_err(|error: IdError| FieldProblem::Id(error))
            }
        }
    )*};
}

from_text_via_parse!(
    TenantId,
    ObjectId,
    PartnerId,
    EmployeeId,
    ContractId,
    CredentialName
);

/// A count: a JSON integer from 0 to `u64::MAX`.
impl FromField for u64 {
    fn from_field(value: &Value) -> Result<Self, FieldProblem> {
        value.as_u64().ok_or(FieldProblem::NotACount)
    }
}

impl FromText for DateTime<Utc> {
    fn from_text(text: &str) -> Result<Self, FieldProblem> {
        parse_rfc3339(text).ok_or(FieldProblem::NotRfc3339)
    }
}

/// RFC 3339 (as chrono reads it: `T`, `t` or a space between date and time,
/// any offset), converted to UTC.
pub(crate) fn parse_rfc3339(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|time| time.with_timezone(&Utc))
}

/// A field that may be absent; JSON `null` counts as absent, as it does for
/// CloudEvents attributes.
pub(crate) fn optional<T: FromField>(
    object: &Map<String, Value>,
    field: &'static str,
) -> Result<Option<T>, FieldError> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => T::from_field(value)
            .map(Some)
            .map_err(|problem| FieldError::Invalid { field, problem }),
    }
}

/// A field that must be present and non-null.
pub(crate) fn required<T: FromField>(
    object: &Map<String, Value>,
    field: &'static str,
) -> Result<T, FieldError> {
    optional(object, field)?.ok_or(FieldError::Missing(field))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(value: Value) -> Map<String, Value> {
        let Value::Object(map) = value else {
            panic!("test input must be a JSON object: {value}");
        };
        map
    }

    #[test]
    fn null_counts_as_absent() {
        let data = object(json!({ "contract_id": null }));
        let read: Option<ContractId> = optional(&data, "contract_id").unwrap();
        assert_eq!(read, None);
        let missing = required::<ContractId>(&data, "contract_id").unwrap_err();
        assert!(matches!(missing, FieldError::Missing("contract_id")));
    }

    #[test]
    fn a_number_is_not_a_string_field_even_for_digits() {
        let data = object(json!({ "partner_id": 4512345 }));
        let error = required::<PartnerId>(&data, "partner_id").unwrap_err();
        assert!(matches!(
            error,
            FieldError::Invalid {
                field: "partner_id",
                problem: FieldProblem::NotAString
            }
        ));
    }

    #[test]
    fn timestamps_are_converted_to_utc() {
        let data = object(json!({ "at": "2026-12-31T18:00:00+01:00" }));
        let at: DateTime<Utc> = required(&data, "at").unwrap();
        assert_eq!(at.to_rfc3339(), "2026-12-31T17:00:00+00:00");
        for bad in ["2026-12-31", "2026-12-31T17:00:00", "tomorrow", ""] {
            let data = object(json!({ "at": bad }));
            let error = required::<DateTime<Utc>>(&data, "at").unwrap_err();
            assert!(
                matches!(
                    error,
                    FieldError::Invalid {
                        problem: FieldProblem::NotRfc3339,
                        ..
                    }
                ),
                "{bad}"
            );
        }
    }
}
