//! The CloudEvents envelope: palworker's attribute checks, then the
//! CloudEvents SDK.
//!
//! palworker checks every attribute itself first, because the SDK's serde
//! errors do not say which attribute failed (an operator reading the
//! dead-letter header needs that), it treats `time` as optional and does not
//! check `source`, `id` length or content types. Only a map that passed those
//! checks is handed to `cloudevents::Event`'s deserializer, and the values
//! palworker keeps are read back from the SDK's event.

use chrono::{DateTime, Utc};
use cloudevents::event::{ExtensionValue, TryIntoUrl};
use cloudevents::{AttributesReader, Data};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::{
    AttributeProblem, DataProblem, EventError, MAX_MESSAGE_CHARS, echo, echo_at_most, json_kind,
};
use crate::event_type::EventType;
use crate::fields::parse_rfc3339;
use crate::uri::{check_uri_reference, is_absolute_uri};

/// Longest accepted `id`, in characters (SPEC §3).
pub(crate) const MAX_EVENT_ID_CHARS: usize = 256;

/// The only CloudEvents version accepted.
pub(crate) const SPEC_VERSION: &str = "1.0";

/// The media type palworker writes in `datacontenttype`.
pub(crate) const JSON_CONTENT_TYPE: &str = "application/json";

/// Attribute names defined by CloudEvents 1.0 (plus `data` and
/// `data_base64`); every other member of the envelope is an extension.
const KNOWN_MEMBERS: [&str; 10] = [
    "specversion",
    "id",
    "source",
    "type",
    "time",
    "datacontenttype",
    "dataschema",
    "subject",
    "data",
    "data_base64",
];

/// Which rules an envelope is held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// A message arriving now ([`crate::Event::from_json_slice`]): every
    /// rule.
    Incoming,
    /// An event the ledger accepted earlier, read back through `Event`'s
    /// `Deserialize`: every rule except the ones added since it may have
    /// been accepted, so a stored record stays readable. Only one: an `id`
    /// with control characters (refused since SPEC §11.1's hardening).
    /// palworker's own event types ([`EventType::INTERNAL`]) are known here
    /// only.
    Stored,
}

/// The envelope attributes palworker keeps, all validated, and the raw data
/// object (validated per type by the caller).
#[derive(Debug)]
pub(crate) struct Envelope {
    pub(crate) id: String,
    pub(crate) source: String,
    pub(crate) event_type: EventType,
    pub(crate) time: DateTime<Utc>,
    pub(crate) data: Map<String, Value>,
}

impl Envelope {
    pub(crate) fn parse(value: Value, admission: Admission) -> Result<Envelope, EventError> {
        let Value::Object(mut members) = value else {
            return Err(EventError::NotCloudEvent {
                found: json_kind(&value),
            });
        };

        let specversion = required_string(&members, "specversion")?;
        if specversion != SPEC_VERSION {
            return Err(EventError::UnsupportedSpecVersion {
                found: echo(specversion),
            });
        }

        let id = required_string(&members, "id")?;
        if id.is_empty() {
            return Err(invalid("id", AttributeProblem::Empty));
        }
        if id.chars().count() > MAX_EVENT_ID_CHARS {
            return Err(invalid(
                "id",
                AttributeProblem::TooLong {
                    max: MAX_EVENT_ID_CHARS,
                },
            ));
        }
        // An id ends up in log lines, dead-letter headers and operators'
        // command lines (`palworker approve ID`); a line break or NUL there
        // forges or splits them.
        if admission == Admission::Incoming && id.chars().any(char::is_control) {
            return Err(invalid("id", AttributeProblem::ControlCharacter));
        }

        let source = required_string(&members, "source")?;
        if source.is_empty() {
            return Err(invalid("source", AttributeProblem::Empty));
        }
        check_uri_reference(source)
            .map_err(|why| invalid("source", AttributeProblem::NotUriReference(why)))?;

        let type_name = required_string(&members, "type")?;
        if type_name.is_empty() {
            return Err(invalid("type", AttributeProblem::Empty));
        }
        // palworker's own types are read back from its ledger, never
        // accepted from a message.
        let event_type = match admission {
            Admission::Incoming => type_name.parse::<EventType>(),
            Admission::Stored => EventType::parse_stored(type_name),
        }
        .map_err(|_| EventError::UnknownType {
            found: echo(type_name),
        })?;

        let time = required_string(&members, "time")?;
        parse_rfc3339(time).ok_or_else(|| invalid("time", AttributeProblem::NotRfc3339))?;

        if let Some(content_type) = optional_string(&members, "datacontenttype")? {
            let essence = json_media_type(content_type).ok_or_else(|| {
                EventError::UnsupportedContentType {
                    found: echo(content_type),
                }
            })?;
            // The SDK decides "is this JSON?" by case-sensitive prefix/suffix
            // matching on the raw value, so `Application/JSON` or
            // `application/cloudevents+json; charset=utf-8` would make it
            // parse `data` as a string and fail. Hand it the bare, lower-case
            // media type instead; palworker does not keep this attribute.
            members.insert("datacontenttype".to_owned(), Value::String(essence));
        }

        // Both palworker's RFC 3986 check and the SDK's URL parser (which
        // the SDK applies to `dataschema` during deserialisation) must agree,
        // so a schema the SDK would refuse is reported with its name.
        if let Some(schema) = optional_string(&members, "dataschema")?
            && (!is_absolute_uri(schema) || schema.into_url().is_err())
        {
            return Err(invalid("dataschema", AttributeProblem::NotAbsoluteUri));
        }

        optional_string(&members, "subject")?;

        check_extensions(&members)?;

        if members.get("data_base64").is_some_and(|v| !v.is_null()) {
            return Err(EventError::InvalidData {
                problem: DataProblem::Base64,
            });
        }
        match members.get("data") {
            None | Some(Value::Null) => {
                return Err(EventError::MissingAttribute { attribute: "data" });
            }
            Some(Value::Object(_)) => {}
            Some(_) => {
                return Err(EventError::InvalidData {
                    problem: DataProblem::NotAnObject,
                });
            }
        }

        let event = cloudevents::Event::deserialize(Value::Object(members)).map_err(|error| {
            EventError::Envelope {
                message: echo_at_most(&error.to_string(), MAX_MESSAGE_CHARS),
            }
        })?;
        Self::from_cloudevent(event_type, event)
    }

    /// Reads the attributes palworker keeps back out of the SDK's event.
    fn from_cloudevent(
        event_type: EventType,
        mut event: cloudevents::Event,
    ) -> Result<Envelope, EventError> {
        let disagreement = |what: &str| EventError::Envelope {
            message: format!("the CloudEvents SDK lost {what}"),
        };
        let time = *event.time().ok_or_else(|| disagreement("time"))?;
        let id = event.id().to_owned();
        let source = event.source().clone();
        let (_, _, data) = event.take_data();
        let data = match data {
            Some(Data::Json(Value::Object(object))) => object,
            _ => return Err(disagreement("the data object")),
        };
        Ok(Envelope {
            id,
            source,
            event_type,
            time,
            data,
        })
    }
}

/// Builds the structured-mode CloudEvent for palworker's attributes and data
/// through the SDK, so what palworker publishes is what the SDK would.
pub(crate) fn to_cloudevent_json(
    id: &str,
    source: &str,
    event_type: EventType,
    time: DateTime<Utc>,
    data: Map<String, Value>,
) -> Value {
    use cloudevents::EventBuilder;
    let data = Value::Object(data);
    let built = cloudevents::EventBuilderV10::new()
        .id(id)
        .source(source)
        .ty(event_type.as_str())
        .time(time)
        .data(JSON_CONTENT_TYPE, data.clone())
        .build();
    match built
        .ok()
        .and_then(|event| serde_json::to_value(event).ok())
    {
        Some(value) => value,
        // The builder refuses an empty `source`, which an `Event` built by
        // hand (its fields are public) can have. Write the same JSON directly
        // instead of panicking; the consumer will dead-letter it, correctly.
        None => serde_json::json!({
            "specversion": SPEC_VERSION,
            "id": id,
            "source": source,
            "type": event_type.as_str(),
            "time": time,
            "datacontenttype": JSON_CONTENT_TYPE,
            "data": data,
        }),
    }
}

fn invalid(attribute: &str, problem: AttributeProblem) -> EventError {
    EventError::InvalidAttribute {
        attribute: echo(attribute),
        problem,
    }
}

/// A string attribute that may be absent; `null` counts as absent, as in the
/// CloudEvents JSON format and the SDK.
fn optional_string<'a>(
    members: &'a Map<String, Value>,
    attribute: &'static str,
) -> Result<Option<&'a str>, EventError> {
    match members.get(attribute) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(_) => Err(invalid(attribute, AttributeProblem::NotAString)),
    }
}

fn required_string<'a>(
    members: &'a Map<String, Value>,
    attribute: &'static str,
) -> Result<&'a str, EventError> {
    optional_string(members, attribute)?.ok_or(EventError::MissingAttribute { attribute })
}

/// `application/json` or any `type/subtype+json`, case-insensitively, with
/// parameters ignored; returns the lower-case essence.
fn json_media_type(content_type: &str) -> Option<String> {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let (top, subtype) = essence.split_once('/')?;
    let token = |text: &str| {
        !text.is_empty()
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    let is_json = (top == "application" && subtype == "json")
        || subtype
            .strip_suffix("+json")
            .is_some_and(|prefix| !prefix.is_empty());
    (token(top) && token(subtype) && is_json).then_some(essence)
}

/// Extension attributes are accepted and ignored, but their values must be
/// of a CloudEvents type the SDK can represent (string, boolean, integer);
/// checked here so the error names the attribute.
fn check_extensions(members: &Map<String, Value>) -> Result<(), EventError> {
    for (name, value) in members {
        if KNOWN_MEMBERS.contains(&name.as_str()) || value.is_null() {
            continue;
        }
        if ExtensionValue::deserialize(value).is_err() {
            return Err(invalid(name, AttributeProblem::InvalidExtensionValue));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_media_types_are_recognised_case_insensitively_with_parameters() {
        let cases = [
            ("application/json", Some("application/json")),
            ("Application/JSON", Some("application/json")),
            ("application/json; charset=utf-8", Some("application/json")),
            (
                "application/cloudevents+json",
                Some("application/cloudevents+json"),
            ),
            (
                "application/vnd.contoso.hr+json;v=2",
                Some("application/vnd.contoso.hr+json"),
            ),
            ("text/plain", None),
            ("application/xml", None),
            ("application/jsonx", None),
            ("application/+json", None),
            ("json", None),
            ("", None),
            ("application/json/x", None),
        ];
        for (input, expected) in cases {
            assert_eq!(json_media_type(input).as_deref(), expected, "{input:?}");
        }
    }
}
