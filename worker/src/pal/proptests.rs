//! Property tests: no answer of PAL or the token endpoint — body, status or
//! header — makes the client panic (SPEC §11.1), and each is classified into
//! the failures the client documents. Inputs are arbitrary bytes and, to
//! reach past the JSON parser, the answers' own shapes with arbitrary values.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, TimeZone, Utc};
use proptest::prelude::*;
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::{Map, Value};

use super::arm::{arm_error, parse_link};
use super::error::{PalError, Transient, retry_after};
use super::token::{TokenErrorBody, classify_token_error, issued_token, token_claims};

/// Pure functions of a few hundred bytes: many cases stay cheap on 2 cores.
fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Any text, control characters and line breaks included (proptest's own
/// `String` leaves control characters out).
fn text() -> impl Strategy<Value = String> {
    "(?s).{0,64}"
}

fn identifier_like() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
        "[0-9]{1,25}",
        "[0-9eE.+-]{1,12}",
    ]
}

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        text().prop_map(Value::String),
        identifier_like().prop_map(Value::String),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-zA-Z]{0,8}", inner, 0..4)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// Values an answer's fields plausibly hold (identifiers, states), or
/// anything: so that generated answers also get past the identifier checks.
fn plausible() -> BoxedStrategy<Value> {
    prop_oneof![
        2 => guid().prop_map(Value::String),
        2 => "[0-9]{1,12}".prop_map(Value::String),
        1 => prop::sample::select(vec!["Active", "Deleted"]).prop_map(Value::from),
        3 => json_value(),
    ]
    .boxed()
}

/// An object with some of `keys`, each with an arbitrary value.
fn object_of(keys: &'static [&'static str], value: BoxedStrategy<Value>) -> BoxedStrategy<Value> {
    prop::collection::vec((prop::sample::select(keys), value), 0..=keys.len())
        .prop_map(|pairs| {
            Value::Object(
                pairs
                    .into_iter()
                    .map(|(key, value)| (key.to_owned(), value))
                    .collect::<Map<_, _>>(),
            )
        })
        .boxed()
}

/// Bodies: arbitrary bytes, arbitrary JSON, and the answer's own shape.
fn body(shape: BoxedStrategy<Value>) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        json_value().prop_map(|value| value.to_string().into_bytes()),
        shape.prop_map(|value| value.to_string().into_bytes()),
    ]
}

/// A PartnerResponse: any mix of its fields, or a well-formed one whose
/// fields are each valid or anything.
fn partner_response() -> BoxedStrategy<Value> {
    let properties = object_of(
        &["partnerId", "tenantId", "objectId", "state", "version"],
        plausible(),
    );
    let mixed = object_of(
        &["name", "properties", "etag"],
        prop_oneof![plausible(), properties].boxed(),
    );
    let digits = || prop_oneof![3 => "[0-9]{1,12}".prop_map(Value::String), 1 => json_value()];
    let identifier = || prop_oneof![3 => guid().prop_map(Value::String), 1 => json_value()];
    let well_formed = (digits(), digits(), identifier(), identifier(), plausible()).prop_map(
        |(name, partner_id, tenant_id, object_id, state)| {
            serde_json::json!({
                "name": name,
                "properties": {
                    "partnerId": partner_id,
                    "tenantId": tenant_id,
                    "objectId": object_id,
                    "state": state,
                },
            })
        },
    );
    prop_oneof![mixed, well_formed].boxed()
}

fn arm_error_body() -> BoxedStrategy<Value> {
    let inner = object_of(&["code", "message"], json_value().boxed());
    object_of(
        &["error", "code", "message"],
        prop_oneof![json_value(), inner].boxed(),
    )
}

/// `header.payload.signature`, the payload arbitrary bytes or claims.
fn access_token() -> impl Strategy<Value = String> {
    let claims = object_of(&["tid", "oid", "aud"], plausible())
        .prop_map(|claims| claims.to_string().into_bytes());
    let payload = prop_oneof![prop::collection::vec(any::<u8>(), 0..64), claims];
    prop_oneof![
        text(),
        (text(), payload, text()).prop_map(|(header, payload, signature)| {
            format!("{header}.{}.{signature}", URL_SAFE_NO_PAD.encode(payload))
        }),
    ]
}

fn expires_in() -> impl Strategy<Value = Value> {
    prop_oneof![
        json_value(),
        "[0-9]{1,30}".prop_map(Value::String),
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
    ]
}

fn guid() -> impl Strategy<Value = String> {
    "[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
}

/// A token response: any mix of its fields, or a well-formed token of a
/// valid identity with any `expires_in` (the lifetime arithmetic).
fn token_response() -> BoxedStrategy<Value> {
    let value = prop_oneof![access_token().prop_map(Value::String), expires_in()];
    let well_formed = (guid(), guid(), expires_in()).prop_map(|(tid, oid, expires_in)| {
        let claims = serde_json::json!({"tid": tid, "oid": oid}).to_string();
        serde_json::json!({
            "access_token": format!("e30.{}.sig", URL_SAFE_NO_PAD.encode(claims)),
            "expires_in": expires_in,
        })
    });
    prop_oneof![
        object_of(&["access_token", "expires_in", "token_type"], value.boxed()),
        well_formed,
    ]
    .boxed()
}

fn token_error_body() -> BoxedStrategy<Value> {
    let codes = prop::collection::vec(any::<u64>(), 0..3).prop_map(Value::from);
    object_of(
        &["error", "error_description", "error_codes"],
        prop_oneof![json_value(), codes].boxed(),
    )
}

/// Any instant chrono can hold, its ends and today more often than chance
/// would give: the clock is an input too.
fn instant() -> impl Strategy<Value = DateTime<Utc>> {
    let (min, max) = (
        DateTime::<Utc>::MIN_UTC.timestamp(),
        DateTime::<Utc>::MAX_UTC.timestamp(),
    );
    let two_days = 2 * 24 * 3600;
    let today = 1_800_000_000;
    prop_oneof![
        min..=max,
        max - two_days..=max,
        min..=min + two_days,
        today - two_days..=today + two_days,
    ]
    .prop_map(|seconds| {
        Utc.timestamp_opt(seconds, 0)
            .single()
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    })
}

/// Header values as they can arrive (visible ASCII, spaces, tabs, bytes
/// over 0x7f), with numbers and dates more often than chance would give.
fn header_value() -> impl Strategy<Value = HeaderValue> {
    let text = prop_oneof![
        "[ 0-9eE.+-]{0,24}|NaN|inf|-inf|1e400",
        "(Mon|Fri|Xyz), [0-9]{1,2} (Jan|Dec|Foo) [0-9]{1,6} [0-9]{1,2}:[0-9]{1,2}:[0-9]{1,2} (GMT|UT|[+-][0-9]{4})",
    ]
    .prop_map(String::into_bytes);
    prop_oneof![prop::collection::vec(any::<u8>(), 0..40), text]
        .prop_filter_map("not a header value", |bytes| {
            HeaderValue::from_bytes(&bytes).ok()
        })
}

fn is_one_bounded_line(text: &str, max_chars: usize) -> bool {
    !text.chars().any(char::is_control) && text.chars().count() <= max_chars + 1
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn a_partner_response_is_a_link_or_an_invalid_response(body in body(partner_response())) {
        match parse_link(&body) {
            Ok(_) => {}
            Err(PalError::Permanent { code, .. }) => prop_assert_eq!(code, "invalid_response"),
            Err(other) => prop_assert!(false, "unexpected {other:?}"),
        }
    }

    #[test]
    fn an_arm_error_gives_one_bounded_line_each(body in body(arm_error_body())) {
        let (code, message) = arm_error(&body);
        prop_assert!(is_one_bounded_line(&code, 100), "{code:?}");
        prop_assert!(is_one_bounded_line(&message, 300), "{message:?}");
    }

    #[test]
    fn a_token_response_is_a_token_of_bounded_life_or_a_permanent_failure(
        body in body(token_response()),
        received_at in instant(),
    ) {
        match issued_token(&body, received_at) {
            Ok(token) => {
                prop_assert!(token.expires_at >= received_at);
                let day_later = received_at
                    .checked_add_signed(chrono::Duration::hours(24))
                    .unwrap_or(DateTime::<Utc>::MAX_UTC);
                prop_assert!(token.expires_at <= day_later);
            }
            Err(PalError::Permanent { code, .. }) => prop_assert!(
                code == "invalid_token_response" || code == "invalid_token",
                "{code}"
            ),
            Err(other) => prop_assert!(false, "unexpected {other:?}"),
        }
    }

    #[test]
    fn token_claims_are_read_or_the_token_is_invalid(token in access_token()) {
        match token_claims(&token) {
            Ok(_) => {}
            Err(PalError::Permanent { code, .. }) => prop_assert_eq!(code, "invalid_token"),
            Err(other) => prop_assert!(false, "unexpected {other:?}"),
        }
    }

    #[test]
    fn a_token_error_is_classified_with_bounded_text(
        status in 100u16..1000,
        body in body(token_error_body()),
        wait in proptest::option::of((any::<u64>(), 0u32..1_000_000_000)),
    ) {
        let status = StatusCode::from_u16(status).expect("100..1000 is a status");
        let retry_after = wait.map(|(seconds, nanos)| Duration::new(seconds, nanos));
        let error: TokenErrorBody = serde_json::from_slice(&body).unwrap_or_default();
        match classify_token_error(status, &error, retry_after) {
            PalError::Transient(Transient { retry_after: kept, message, .. }) => {
                prop_assert_eq!(kept, retry_after);
                prop_assert!(is_one_bounded_line(&message, 500), "{message:?}");
            }
            PalError::Permanent { code, message } | PalError::IdentityGone { code, message } => {
                prop_assert!(
                    !status.is_server_error() && status != StatusCode::TOO_MANY_REQUESTS,
                    "{status} must be retried"
                );
                prop_assert!(is_one_bounded_line(&code, 100), "{code:?}");
                prop_assert!(is_one_bounded_line(&message, 500), "{message:?}");
            }
        }
    }

    #[test]
    fn retry_after_reads_any_header_values_at_any_time(
        milliseconds in proptest::option::of(header_value()),
        ms_azure in proptest::option::of(header_value()),
        seconds_or_date in proptest::option::of(header_value()),
        now in instant(),
    ) {
        let mut headers = HeaderMap::new();
        let present = milliseconds.is_some() || ms_azure.is_some() || seconds_or_date.is_some();
        for (name, value) in [
            ("retry-after-ms", milliseconds),
            ("x-ms-retry-after-ms", ms_azure),
            ("retry-after", seconds_or_date),
        ] {
            if let Some(value) = value {
                headers.insert(name, value);
            }
        }
        let wait = retry_after(&headers, now);
        prop_assert!(wait.is_none() || present);
    }
}

/// The generators are worth their cases only if they reach past the
/// parsers: a good share of generated answers is read as a link or a token.
#[test]
fn the_generated_answers_reach_the_successful_paths() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    let mut runner = TestRunner::deterministic();
    let now = Utc::now();
    let (mut links, mut tokens) = (0, 0);
    for _ in 0..1_000 {
        let partner = body(partner_response())
            .new_tree(&mut runner)
            .unwrap()
            .current();
        links += usize::from(parse_link(&partner).is_ok());
        let token = body(token_response())
            .new_tree(&mut runner)
            .unwrap()
            .current();
        tokens += usize::from(issued_token(&token, now).is_ok());
    }
    assert!(links >= 20, "{links} of 1000 partner responses were links");
    assert!(tokens >= 20, "{tokens} of 1000 token responses were tokens");
}
