//! Fixture-driven tests of `Event::from_json_slice`.
//!
//! `tests/fixtures/invalid/NAME.json` is a message body; `NAME.expected` holds
//! the exact one-line `Display` of the error it must produce (which is what
//! lands in the `x-palworker-reason` dead-letter header).
//!
//! `tests/fixtures/valid/NAME.json` is a message body; `NAME.expected` is a
//! JSON document describing the event it must parse to: the envelope
//! attributes, `data` in `EventData`'s serialised form, `effective_at` and
//! `tenant_scope`.
//!
//! To add a case, drop a new pair of files into the directory; no code change
//! is needed.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use palworker_events::{Event, EventError, EventType, RejectReason};
use serde_json::{Value, json};

fn fixtures(kind: &str) -> Vec<(String, Vec<u8>, String)> {
    let directory = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(kind);
    let mut inputs: Vec<PathBuf> = fs::read_dir(&directory)
        .unwrap_or_else(|error| panic!("reading {}: {error}", directory.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    inputs.sort();
    inputs
        .into_iter()
        .map(|input| {
            let name = input.file_stem().unwrap().to_string_lossy().into_owned();
            let expected_path = input.with_extension("expected");
            let expected = fs::read_to_string(&expected_path).unwrap_or_else(|error| {
                panic!("{name}: reading {}: {error}", expected_path.display())
            });
            let bytes = fs::read(&input).expect("fixture is readable");
            (name, bytes, expected.trim_end_matches('\n').to_owned())
        })
        .collect()
}

/// The one check for invalid input: it must be rejected with exactly
/// `expected` as its message. Returns a description of the mismatch.
fn check(input: &[u8], expected: &str) -> Result<EventError, String> {
    match Event::from_json_slice(input) {
        Ok(event) => Err(format!("accepted as {event:?}, expected `{expected}`")),
        Err(error) if error.to_string() == expected => Ok(error),
        Err(error) => Err(format!("got      `{error}`\n    expected `{expected}`")),
    }
}

/// How a parsed event is described in a valid fixture's `.expected` file.
fn describe(event: &Event) -> Value {
    json!({
        "id": event.id,
        "source": event.source,
        "type": event.event_type,
        "time": event.time,
        "data": event.data,
        "effective_at": event.effective_at(),
        "tenant_scope": event.tenant_scope(),
    })
}

fn fail_if_any(failures: Vec<String>) {
    assert!(
        failures.is_empty(),
        "{} fixture(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_invalid_fixture_is_rejected_with_its_expected_message() {
    let cases = fixtures("invalid");
    assert!(cases.len() >= 100, "only {} invalid fixtures", cases.len());
    let failures = cases
        .iter()
        .filter_map(|(name, input, expected)| {
            check(input, expected)
                .err()
                .map(|mismatch| format!("{name}: {mismatch}"))
        })
        .collect();
    fail_if_any(failures);
}

#[test]
fn every_rejection_message_starts_with_its_reason_and_fits_a_header() {
    for (name, input, _) in fixtures("invalid") {
        let error = Event::from_json_slice(&input).expect_err(&name);
        let message = error.to_string();
        assert!(
            message.starts_with(&format!("{}: ", error.reason().as_str())),
            "{name}: {message}"
        );
        assert!(!message.contains(['\n', '\r']), "{name}: {message:?}");
        assert!(message.chars().count() <= 200, "{name}: {message}");
    }
}

#[test]
fn every_valid_fixture_parses_to_its_expected_event() {
    let cases = fixtures("valid");
    let failures = cases
        .iter()
        .filter_map(|(name, input, expected)| {
            let expected: Value = serde_json::from_str(expected)
                .unwrap_or_else(|error| panic!("{name}.expected is not JSON: {error}"));
            match Event::from_json_slice(input) {
                Err(error) => Some(format!("{name}: rejected: {error}")),
                Ok(event) if describe(&event) != expected => Some(format!(
                    "{name}:\n    got      {}\n    expected {expected}",
                    describe(&event)
                )),
                Ok(event) if event.event_type != event.data.event_type() => {
                    Some(format!("{name}: type and data disagree"))
                }
                Ok(_) => None,
            }
        })
        .collect();
    fail_if_any(failures);
}

#[test]
fn every_valid_fixture_round_trips_through_to_cloudevent_json() {
    for (name, input, _) in fixtures("valid") {
        let event = Event::from_json_slice(&input).expect(&name);
        let cloudevent = event.to_cloudevent_json();
        assert_eq!(cloudevent["specversion"], "1.0", "{name}");
        assert_eq!(cloudevent["datacontenttype"], "application/json", "{name}");
        assert_eq!(cloudevent["type"], event.event_type.as_str(), "{name}");
        let bytes = serde_json::to_vec(&cloudevent).unwrap();
        let again = Event::from_json_slice(&bytes)
            .unwrap_or_else(|error| panic!("{name}: re-parse failed: {error}\n{cloudevent}"));
        assert_eq!(again, event, "{name}");
        // Stable: publishing the re-parsed event gives the same JSON.
        assert_eq!(again.to_cloudevent_json(), cloudevent, "{name}");
    }
}

#[test]
fn every_valid_fixture_survives_the_serde_representation_used_by_the_ledger() {
    for (name, input, _) in fixtures("valid") {
        let event = Event::from_json_slice(&input).expect(&name);
        let stored = serde_json::to_string(&event).unwrap();
        let loaded: Event = serde_json::from_str(&stored).expect(&name);
        assert_eq!(loaded, event, "{name}");

        assert_eq!(
            stored,
            serde_json::to_string(&event.to_cloudevent_json()).unwrap(),
            "{name}: the stored form is the published CloudEvent, byte for byte"
        );

        let data = serde_json::to_string(&event.data).unwrap();
        let loaded: palworker_events::EventData = serde_json::from_str(&data).expect(&name);
        assert_eq!(loaded, event.data, "{name}");
    }
}

#[test]
fn the_ledger_representation_is_validated_on_load() {
    let (_, input, _) = fixtures("valid")
        .into_iter()
        .find(|(name, _, _)| name == "partner-id-changed--some-tenants")
        .expect("fixture exists");
    let mut stored = Event::from_json_slice(&input).unwrap().to_cloudevent_json();
    stored["data"]["new_partner_id"] = json!("4512345");
    let error = serde_json::from_value::<Event>(stored).unwrap_err();
    assert_eq!(
        error.to_string(),
        "invalid_field: data.new_partner_id: must differ from data.old_partner_id"
    );
}

/// Guards the fixture set itself: every event type has valid examples and
/// invalid ones, and every reason this crate produces is exercised.
#[test]
fn fixtures_cover_every_event_type_and_every_reason_this_crate_produces() {
    let mut valid_types = BTreeSet::new();
    for (name, input, _) in fixtures("valid") {
        valid_types.insert(Event::from_json_slice(&input).expect(&name).event_type);
    }
    assert_eq!(
        valid_types,
        EventType::ALL.into_iter().collect(),
        "valid fixtures"
    );

    let mut invalid_per_type = std::collections::BTreeMap::<EventType, usize>::new();
    let mut reasons = BTreeSet::new();
    for (name, input, _) in fixtures("invalid") {
        let error = Event::from_json_slice(&input).expect_err(&name);
        reasons.insert(error.reason());
        let declared_type = serde_json::from_slice::<Value>(&input)
            .ok()
            .and_then(|value| value["type"].as_str().and_then(|t| t.parse().ok()));
        if let (Some(event_type), RejectReason::MissingField | RejectReason::InvalidField) =
            (declared_type, error.reason())
        {
            *invalid_per_type.entry(event_type).or_default() += 1;
        }
    }
    for event_type in EventType::ALL {
        let count = invalid_per_type.get(&event_type).copied().unwrap_or(0);
        assert!(
            count >= 5,
            "{event_type}: only {count} invalid data fixtures"
        );
    }
    let produced_by_worker = [RejectReason::TooLarge, RejectReason::PublisherNotAllowed];
    let expected: BTreeSet<RejectReason> = RejectReason::ALL
        .into_iter()
        .filter(|reason| !produced_by_worker.contains(reason))
        .collect();
    assert_eq!(reasons, expected);
}

const ID_CONTROL_CHARACTER: &str = "invalid_attribute: id: contains a control character";

/// A record as the ledger stored it before ids with control characters were
/// refused (SPEC §11.1): `Event`'s own serialisation, the id holding a line
/// break, a NUL and a C1 control character.
const STORED_BEFORE_THE_ID_RULE: &str = r#"{"data":{"employee_id":"E-10442","successor_employee_id":"E-10017"},"datacontenttype":"application/json","id":"evt-1\nforged: line\u0000\u009b","source":"urn:contoso:workday","specversion":"1.0","time":"2026-11-29T09:00:00Z","type":"hr.employee.departed"}"#;

#[test]
fn a_stored_event_whose_id_has_control_characters_still_loads_but_is_refused_as_a_message() {
    let event: Event = serde_json::from_str(STORED_BEFORE_THE_ID_RULE)
        .expect("a record stored before the id rule stays readable");
    assert_eq!(event.id, "evt-1\nforged: line\u{0}\u{9b}");
    assert_eq!(event.event_type, EventType::EmployeeDeparted);
    // Stored again (the ledger rewrites records), it is the same record.
    let stored_again = serde_json::to_string(&event).unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&stored_again).unwrap(),
        serde_json::from_str::<Value>(STORED_BEFORE_THE_ID_RULE).unwrap()
    );
    assert_eq!(serde_json::from_str::<Event>(&stored_again).unwrap(), event);
    // Logged, the id cannot split or forge a line.
    assert_eq!(
        event.escaped_id().to_string(),
        "evt-1\\nforged: line\\u{0}\\u{9b}"
    );

    let error = Event::from_json_slice(STORED_BEFORE_THE_ID_RULE.as_bytes()).unwrap_err();
    assert_eq!(error.to_string(), ID_CONTROL_CHARACTER);
    assert_eq!(error.reason(), RejectReason::InvalidAttribute);
}

/// The stored-record path is lenient about the id rule and nothing else:
/// every other invalid fixture is refused on load with the message of
/// `from_json_slice`, and an id with a control character does not excuse
/// a bad attribute after it.
#[test]
fn the_stored_record_path_is_lenient_about_the_id_control_character_rule_only() {
    let mut lenient = 0;
    for (name, input, expected) in fixtures("invalid") {
        let loaded = serde_json::from_slice::<Event>(&input);
        if expected != ID_CONTROL_CHARACTER {
            let error = loaded.expect_err(&name).to_string();
            if serde_json::from_slice::<Value>(&input).is_ok() {
                assert!(error.starts_with(&expected), "{name}: {error}");
            }
        } else if name.starts_with("id--") {
            let event = loaded.unwrap_or_else(|error| panic!("{name}: {error}"));
            assert!(event.id.chars().any(char::is_control), "{name}");
            assert!(
                !event.escaped_id().to_string().chars().any(char::is_control),
                "{name}"
            );
            lenient += 1;
        } else {
            let error = loaded.expect_err(&name).to_string();
            assert!(
                error.starts_with("invalid_attribute: source: "),
                "{name}: {error}"
            );
        }
    }
    assert!(lenient >= 5, "only {lenient} id control character fixtures");
}
