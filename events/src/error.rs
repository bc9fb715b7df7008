//! Why an event is rejected.
//!
//! [`EventError`] is what [`crate::Event::from_json_slice`] returns; its
//! `Display` is a single line that starts with the [`RejectReason`] code and
//! goes verbatim into the dead-letter header `x-palworker-reason`. Values
//! taken from the input are echoed only through `echo`, which escapes
//! control characters and truncates, so a hostile message cannot produce a
//! multi-line or oversized header. [`Escaped`] is the same escaping, without
//! truncation, for callers that log a value taken from input.

use std::fmt;

use crate::ids::IdError;

/// Longest piece of input echoed back in an error message, in characters.
pub const MAX_ECHO_CHARS: usize = 64;

/// Longest message of a dependency (serde_json, the CloudEvents SDK, csv)
/// carried in an error, in characters.
pub(crate) const MAX_MESSAGE_CHARS: usize = 160;

/// The closed set of reasons a message is dead-lettered; used as a metric
/// label, so it must stay small and fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    /// The body is not JSON.
    InvalidJson,
    /// The body is JSON but not a CloudEvent (for example an array).
    NotCloudEvent,
    /// `specversion` is not `1.0`.
    UnsupportedSpecVersion,
    /// A required CloudEvents attribute (or `data`) is absent or null.
    MissingAttribute,
    /// A CloudEvents attribute has the wrong JSON type or an invalid value.
    InvalidAttribute,
    /// `type` is not in palworker's catalogue.
    UnknownType,
    /// `data` is not a JSON object (including `data_base64`).
    InvalidData,
    /// A required field of `data` is absent or null.
    MissingField,
    /// A field of `data` has the wrong JSON type or an invalid value.
    InvalidField,
    /// `datacontenttype` (this crate) or the AMQP `content_type` (worker) is
    /// not JSON.
    UnsupportedContentType,
    /// The message is larger than `amqp.max_message_bytes` (worker).
    TooLarge,
    /// The AMQP `user_id` may not publish this event type (worker).
    PublisherNotAllowed,
}

impl RejectReason {
    /// Every reason, for exporting all label values at start-up.
    pub const ALL: [RejectReason; 12] = [
        RejectReason::InvalidJson,
        RejectReason::NotCloudEvent,
        RejectReason::UnsupportedSpecVersion,
        RejectReason::MissingAttribute,
        RejectReason::InvalidAttribute,
        RejectReason::UnknownType,
        RejectReason::InvalidData,
        RejectReason::MissingField,
        RejectReason::InvalidField,
        RejectReason::UnsupportedContentType,
        RejectReason::TooLarge,
        RejectReason::PublisherNotAllowed,
    ];

    /// The snake_case code used as metric label and as the first word of the
    /// `x-palworker-reason` header.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::InvalidJson => "invalid_json",
            RejectReason::NotCloudEvent => "not_cloudevent",
            RejectReason::UnsupportedSpecVersion => "unsupported_specversion",
            RejectReason::MissingAttribute => "missing_attribute",
            RejectReason::InvalidAttribute => "invalid_attribute",
            RejectReason::UnknownType => "unknown_type",
            RejectReason::InvalidData => "invalid_data",
            RejectReason::MissingField => "missing_field",
            RejectReason::InvalidField => "invalid_field",
            RejectReason::UnsupportedContentType => "unsupported_content_type",
            RejectReason::TooLarge => "too_large",
            RejectReason::PublisherNotAllowed => "publisher_not_allowed",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// Why an incoming message is not a valid palworker event.
///
/// `Display` is one line: `"<reason code>: <attribute or data.field>: <why>"`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// The body is not valid JSON; `message` is serde_json's description.
    #[error("invalid_json: {message}")]
    InvalidJson {
        /// serde_json's description, with its position.
        message: String,
    },
    /// The body is JSON, but its top level is not an object.
    #[error("not_cloudevent: expected a JSON object, found {found}")]
    NotCloudEvent {
        /// The kind of JSON value found ("an array", "a string", ...).
        found: &'static str,
    },
    /// The CloudEvents SDK refused an envelope that passed palworker's own
    /// attribute checks. Kept so that such a disagreement dead-letters the
    /// message instead of panicking; not expected to happen.
    #[error("not_cloudevent: {message}")]
    Envelope {
        /// The SDK's description, echoed.
        message: String,
    },
    /// `specversion` is a string other than `1.0`.
    #[error("unsupported_specversion: {found} (expected 1.0)")]
    UnsupportedSpecVersion {
        /// The version found, echoed.
        found: String,
    },
    /// A required attribute (`specversion`, `id`, `source`, `type`, `time`,
    /// `data`) is absent or null.
    #[error("missing_attribute: {attribute}")]
    MissingAttribute {
        /// The attribute's name.
        attribute: &'static str,
    },
    /// An attribute (or extension attribute) is present but invalid.
    #[error("invalid_attribute: {attribute}: {problem}")]
    InvalidAttribute {
        /// The attribute's name, echoed (extension names come from the input).
        attribute: String,
        /// What is wrong with it.
        problem: AttributeProblem,
    },
    /// `type` is a non-empty string outside palworker's catalogue.
    #[error("unknown_type: {found}")]
    UnknownType {
        /// The type found, echoed.
        found: String,
    },
    /// `datacontenttype` is present and not a JSON media type.
    #[error(
        "unsupported_content_type: datacontenttype: {found} (expected application/json or a +json type)"
    )]
    UnsupportedContentType {
        /// The content type found, echoed.
        found: String,
    },
    /// The event's data is present but not a JSON object.
    #[error("invalid_data: {problem}")]
    InvalidData {
        /// What is wrong with it.
        problem: DataProblem,
    },
    /// A required field of `data` is absent or null.
    #[error("missing_field: data.{field}")]
    MissingField {
        /// The field's name inside `data`.
        field: &'static str,
    },
    /// A field of `data` is present but invalid.
    #[error("invalid_field: data.{field}: {problem}")]
    InvalidField {
        /// The field's name inside `data`, with an index for array elements
        /// (`tenant_ids[2]`).
        field: String,
        /// What is wrong with it.
        problem: FieldProblem,
    },
}

impl EventError {
    /// The closed reason code, for metrics and the dead-letter header.
    pub fn reason(&self) -> RejectReason {
        match self {
            EventError::InvalidJson { .. } => RejectReason::InvalidJson,
            EventError::NotCloudEvent { .. } | EventError::Envelope { .. } => {
                RejectReason::NotCloudEvent
            }
            EventError::UnsupportedSpecVersion { .. } => RejectReason::UnsupportedSpecVersion,
            EventError::MissingAttribute { .. } => RejectReason::MissingAttribute,
            EventError::InvalidAttribute { .. } => RejectReason::InvalidAttribute,
            EventError::UnknownType { .. } => RejectReason::UnknownType,
            EventError::UnsupportedContentType { .. } => RejectReason::UnsupportedContentType,
            EventError::InvalidData { .. } => RejectReason::InvalidData,
            EventError::MissingField { .. } => RejectReason::MissingField,
            EventError::InvalidField { .. } => RejectReason::InvalidField,
        }
    }
}

/// What is wrong with a CloudEvents attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AttributeProblem {
    /// The attribute must be a JSON string.
    #[error("must be a string")]
    NotAString,
    /// The attribute must not be the empty string.
    #[error("must not be empty")]
    Empty,
    /// The attribute is longer than allowed.
    #[error("is longer than {max} characters")]
    TooLong {
        /// The limit, in characters.
        max: usize,
    },
    /// The attribute contains a control character (C0, DEL or C1: a line
    /// break, NUL, ...), which could forge or split a log line, a header or
    /// an operator's command line (`id`, SPEC §11.1).
    #[error("contains a control character")]
    ControlCharacter,
    /// The attribute is not an RFC 3339 timestamp.
    #[error("not an RFC 3339 timestamp")]
    NotRfc3339,
    /// The attribute is not an RFC 3986 URI-reference.
    #[error("not a URI-reference ({0})")]
    NotUriReference(&'static str),
    /// The attribute is not an absolute URI (`dataschema`).
    #[error("not an absolute URI")]
    NotAbsoluteUri,
    /// An extension attribute's value is not one of the CloudEvents JSON
    /// types palworker accepts for extensions.
    #[error("extension value must be a string, a boolean or an integer")]
    InvalidExtensionValue,
}

/// What is wrong with the event's data as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DataProblem {
    /// `data` is present but is not a JSON object.
    #[error("data must be a JSON object")]
    NotAnObject,
    /// The event carries binary `data_base64` instead of a JSON `data` object.
    #[error("data_base64 is not supported, data must be a JSON object")]
    Base64,
}

/// What is wrong with one field (of an event's `data` or of an imported
/// account).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FieldProblem {
    /// The value is a string, but not a valid identifier of that kind.
    #[error(transparent)]
    Id(#[from] IdError),
    /// The field must be a JSON string.
    #[error("must be a string")]
    NotAString,
    /// The field must be a JSON array.
    #[error("must be an array")]
    NotAnArray,
    /// The field is an empty array where at least one element is required.
    #[error("must not be an empty array")]
    EmptyArray,
    /// The field is not an RFC 3339 timestamp.
    #[error("not an RFC 3339 timestamp")]
    NotRfc3339,
    /// The field equals another field it must differ from.
    #[error("must differ from data.{0}")]
    SameAs(&'static str),
    /// The field must be a non-negative integer (a count).
    #[error("must be a non-negative integer")]
    NotACount,
}

/// Makes a piece of untrusted input safe to embed in a one-line message:
/// control characters are escaped and the result is cut to
/// [`MAX_ECHO_CHARS`] characters of input, followed by `…` when cut.
pub(crate) fn echo(input: &str) -> String {
    echo_at_most(input, MAX_ECHO_CHARS)
}

/// Like [`echo`], with another limit: for messages of palworker's own
/// dependencies (serde_json, csv), which never quote the input but may be
/// longer than an echoed value.
pub(crate) fn echo_at_most(input: &str, max_chars: usize) -> String {
    let mut out = String::new();
    for (count, character) in input.chars().enumerate() {
        if count == max_chars {
            out.push('…');
            break;
        }
        // Cannot fail: writing to a String.
        let _ = write_escaped(&mut out, character);
    }
    out
}

/// A piece of untrusted text to put into a log line or message as it is,
/// but with control characters escaped the way [`echo`] escapes them
/// (`\n`, `\u{0}`, `\u{9b}`), so it can neither split nor forge a line nor
/// drive a terminal. Not truncated: for values already bounded, such as an
/// event `id` (at most 256 characters) of a record stored before control
/// characters were refused (SPEC §11.1).
///
/// ```
/// use palworker_events::Escaped;
/// assert_eq!(Escaped::new("a\nb").to_string(), "a\\nb");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Escaped<'a>(&'a str);

impl<'a> Escaped<'a> {
    /// `text`, to be displayed escaped.
    pub fn new(text: &'a str) -> Self {
        Escaped(text)
    }
}

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0
            .chars()
            .try_for_each(|character| write_escaped(formatter, character))
    }
}

/// A character as it is echoed: control characters (C0, DEL, C1) as their
/// Rust escape, everything else as it is.
fn write_escaped(out: &mut impl fmt::Write, character: char) -> fmt::Result {
    if character.is_control() {
        character
            .escape_default()
            .try_for_each(|escaped| out.write_char(escaped))
    } else {
        out.write_char(character)
    }
}

/// "an array", "a string", ... for messages about JSON values.
pub(crate) fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_codes_are_the_documented_snake_case_labels() {
        let codes: Vec<&str> = RejectReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            codes,
            [
                "invalid_json",
                "not_cloudevent",
                "unsupported_specversion",
                "missing_attribute",
                "invalid_attribute",
                "unknown_type",
                "invalid_data",
                "missing_field",
                "invalid_field",
                "unsupported_content_type",
                "too_large",
                "publisher_not_allowed",
            ]
        );
        assert_eq!(RejectReason::TooLarge.to_string(), "too_large");
    }

    #[test]
    fn every_error_display_starts_with_its_reason_code() {
        let errors = [
            EventError::InvalidJson {
                message: "x".into(),
            },
            EventError::NotCloudEvent { found: "an array" },
            EventError::Envelope {
                message: "x".into(),
            },
            EventError::UnsupportedSpecVersion {
                found: "0.3".into(),
            },
            EventError::MissingAttribute { attribute: "time" },
            EventError::InvalidAttribute {
                attribute: "time".into(),
                problem: AttributeProblem::NotRfc3339,
            },
            EventError::InvalidAttribute {
                attribute: "id".into(),
                problem: AttributeProblem::ControlCharacter,
            },
            EventError::UnknownType { found: "x".into() },
            EventError::UnsupportedContentType { found: "x".into() },
            EventError::InvalidData {
                problem: DataProblem::NotAnObject,
            },
            EventError::MissingField { field: "tenant_id" },
            EventError::InvalidField {
                field: "partner_id".into(),
                problem: FieldProblem::Id(IdError::NotPartnerId),
            },
        ];
        for error in errors {
            let text = error.to_string();
            let code = error.reason().as_str();
            assert!(text.starts_with(&format!("{code}: ")), "{text}");
            assert!(!text.contains('\n'), "{text}");
        }
    }

    #[test]
    fn echo_escapes_control_characters_and_truncates() {
        assert_eq!(echo("hr.employee.promoted"), "hr.employee.promoted");
        assert_eq!(echo("a\nb\u{0}c"), "a\\nb\\u{0}c");
        assert_eq!(echo(&"x".repeat(64)), "x".repeat(64));
        assert_eq!(echo(&"x".repeat(65)), format!("{}…", "x".repeat(64)));
        assert_eq!(echo(&"é".repeat(100)), format!("{}…", "é".repeat(64)));
    }

    #[test]
    fn escaped_escapes_every_control_character_and_keeps_the_rest_whole() {
        assert_eq!(Escaped::new("evt-1").to_string(), "evt-1");
        assert_eq!(
            Escaped::new("a\nb\r\u{0}\u{7f}\u{9b}c\t").to_string(),
            "a\\nb\\r\\u{0}\\u{7f}\\u{9b}c\\t"
        );
        let long = format!("{}\n", "x".repeat(300));
        assert_eq!(
            Escaped::new(&long).to_string(),
            format!("{}\\n", "x".repeat(300))
        );
        for code in (0..=0x1f).chain(0x7f..=0x9f) {
            let control = char::from_u32(code).unwrap().to_string();
            let shown = Escaped::new(&control).to_string();
            assert!(!shown.chars().any(char::is_control), "{code:#x}: {shown:?}");
            assert_eq!(shown, echo(&control), "{code:#x}");
        }
    }
}
