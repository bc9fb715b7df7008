//! Property tests of the parsers that take untrusted input (SPEC §11.1: no
//! panic reachable from input data).
//!
//! `Event::from_json_slice` never panics, whatever the bytes, the JSON value
//! or the members of an otherwise valid envelope's `data`; whatever it
//! accepts round-trips through `Event::to_cloudevent_json` and through the
//! ledger's serde form; its errors stay one header-safe line. `parse_import`
//! never panics on JSON Lines or CSV, and its errors are one line too.
//!
//! Case counts are modest: these run in every `cargo test`, on two cores.

use palworker_events::{Event, EventType, parse_import};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{Map, Value, json};

const GUIDS: &[&str] = &[
    "72f988bf-86f1-41af-91ab-2d7cd011db47",
    "A1B2C3D4-0000-4A5B-8C9D-0123456789AB",
    "0f8fad5b-d9cb-469f-a165-70867728950e",
    "{0f8fad5b-d9cb-469f-a165-70867728950e}",
    "0f8fad5bd9cb469fa16570867728950e",
];

/// Strings close to what the parsers look for, valid and almost valid, so
/// generated input gets past the first checks often.
const INTERESTING: &[&str] = &[
    "",
    " ",
    "\n",
    "\u{0}",
    "\u{7f}",
    "\u{9b}",
    "\"",
    ",",
    "1.0",
    "0.3",
    "4512345",
    "0004512345",
    "45123456789",
    "-1",
    "E-10442",
    "E-10017",
    "C-2026-001",
    "automation",
    "72f988bf-86f1-41af-91ab-2d7cd011db47",
    "A1B2C3D4-0000-4A5B-8C9D-0123456789AB",
    "0f8fad5b-d9cb-469f-a165-70867728950e",
    "0f8fad5b-d9cb-469f-a165-70867728950",
    "2026-11-29T09:00:00Z",
    "2026-11-29T09:00:00.123456789+05:30",
    "2026-12-31T23:59:60Z",
    "2026-11-29 09:00:00-08:00",
    "2026-11-29",
    "urn:contoso:workday",
    "https://hr.example.com/events?x=1#f",
    "/relative/path",
    "application/json",
    "Application/JSON; charset=utf-8",
    "application/cloudevents+json",
    "text/plain",
    "project.assignment.started",
    "project.assignment.ended",
    "project.contract.ended",
    "hr.employee.departed",
    "hr.employee.transferred",
    "partner.id.changed",
];

/// CloudEvents attribute names and the `data` and import field names.
const KEYS: &[&str] = &[
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
    "employee_id",
    "tenant_id",
    "object_id",
    "partner_id",
    "credential",
    "contract_id",
    "successor_employee_id",
    "effective_at",
    "new_partner_id",
    "old_partner_id",
    "tenant_ids",
    "x-extension",
];

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => select(INTERESTING).prop_map(str::to_owned),
        1 => any::<String>(),
        1 => "[ -~]{0,12}",
        1 => (select(INTERESTING), any::<char>()).prop_map(|(text, extra)| format!("{text}{extra}")),
        1 => Just("x".repeat(300)),
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![4 => select(KEYS).prop_map(str::to_owned), 1 => any::<String>()]
}

/// Any JSON value, a few levels deep; numbers of every kind serde_json has.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 48, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            btree_map(key(), inner, 0..6)
                .prop_map(|members| Value::Object(members.into_iter().collect())),
        ]
    })
}

/// A value for one `data` member: mostly strings the parsers look for,
/// arrays of GUIDs for `tenant_ids`, sometimes anything.
fn data_member_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => select(INTERESTING).prop_map(|text| Value::String(text.to_owned())),
        1 => vec(select(GUIDS), 0..4).prop_map(|guids| json!(guids)),
        2 => json_value(),
    ]
}

/// A `data` object of `event_type` with every field valid, for arbitrary
/// members to be laid over.
fn valid_data(event_type: EventType) -> Map<String, Value> {
    let data = match event_type {
        EventType::AssignmentStarted => json!({
            "employee_id": "E-10442",
            "tenant_id": GUIDS[0],
            "object_id": GUIDS[2],
            "partner_id": "4512345",
            "credential": "automation",
            "contract_id": "C-2026-001",
        }),
        EventType::AssignmentEnded => json!({"employee_id": "E-10442", "tenant_id": GUIDS[0]}),
        EventType::ContractEnded => json!({"tenant_id": GUIDS[1], "contract_id": "C-1"}),
        EventType::EmployeeDeparted => json!({
            "employee_id": "E-10442",
            "successor_employee_id": "E-10017",
            "effective_at": "2026-12-31T17:00:00Z",
        }),
        EventType::EmployeeTransferred => {
            json!({"employee_id": "E-10442", "new_partner_id": "1234567"})
        }
        EventType::PartnerIdChanged => json!({
            "old_partner_id": "4512345",
            "new_partner_id": "1234567",
            "tenant_ids": [GUIDS[0], GUIDS[1]],
        }),
        // palworker's own type: not in `ALL`, so never drawn; valid all the same.
        EventType::Reconcile => json!({"missing": 1, "unexpected": 0, "different": 2}),
    };
    match data {
        Value::Object(object) => object,
        _ => unreachable!("json! of an object literal"),
    }
}

/// A valid envelope of any type whose `data` is either an arbitrary value or
/// the type's valid data with arbitrary members laid over it (`null` removes
/// a member, as absent and null are the same to the parser).
fn envelope_with_arbitrary_data() -> impl Strategy<Value = Value> {
    let overlay = btree_map(
        select(KEYS).prop_map(str::to_owned),
        data_member_value(),
        0..4,
    );
    let data = (select(EventType::ALL.to_vec()), overlay).prop_map(|(event_type, overlay)| {
        let mut data = valid_data(event_type);
        data.extend(overlay);
        (event_type, Value::Object(data))
    });
    let data = prop_oneof![
        4 => data,
        1 => (select(EventType::ALL.to_vec()), json_value()),
    ];
    let id = prop_oneof![
        3 => "[A-Za-z0-9._:-]{1,40}",
        1 => text(),
    ];
    let time = select(&[
        "2026-11-29T09:00:00Z",
        "2026-11-29T09:00:00.5+01:00",
        "2026-11-29t09:00:00.123456789-08:00",
        "2026-11-29 09:00:00Z",
    ]);
    (data, id, time).prop_map(|((event_type, data), id, time)| {
        json!({
            "specversion": "1.0",
            "id": id,
            "source": "urn:contoso:workday",
            "type": event_type.as_str(),
            "time": time,
            "datacontenttype": "application/json",
            "data": data,
        })
    })
}

/// What must hold for every input: no panic (the call returns), a rejection
/// is one header-safe line starting with its reason, an accepted event
/// round-trips as published and as the ledger stores it.
fn check_event_bytes(bytes: &[u8]) -> Result<(), TestCaseError> {
    match Event::from_json_slice(bytes) {
        Err(error) => {
            let message = error.to_string();
            let code = error.reason().as_str();
            prop_assert!(message.starts_with(&format!("{code}: ")), "{message}");
            prop_assert!(!message.chars().any(char::is_control), "{message:?}");
            prop_assert!(message.chars().count() <= 200, "{message}");
        }
        Ok(event) => {
            prop_assert_eq!(event.event_type, event.data.event_type());
            prop_assert!(!event.id.chars().any(char::is_control), "{:?}", event.id);
            let published = serde_json::to_vec(&event.to_cloudevent_json()).unwrap();
            let again = Event::from_json_slice(&published);
            prop_assert_eq!(again.as_ref(), Ok(&event));
            let stored = serde_json::to_string(&event).unwrap();
            prop_assert_eq!(stored.as_bytes(), &published[..]);
            let loaded: Event = serde_json::from_str(&stored).unwrap();
            prop_assert_eq!(loaded, event);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn the_event_parser_never_panics_on_arbitrary_bytes(
        bytes in vec(any::<u8>(), 0..256),
    ) {
        check_event_bytes(&bytes)?;
    }

    #[test]
    fn the_event_parser_never_panics_on_arbitrary_json_values(value in json_value()) {
        check_event_bytes(&serde_json::to_vec(&value).unwrap())?;
    }

    #[test]
    fn the_event_parser_never_panics_on_arbitrary_data_and_accepted_events_round_trip(
        envelope in envelope_with_arbitrary_data(),
    ) {
        check_event_bytes(&serde_json::to_vec(&envelope).unwrap())?;
    }
}

/// A valid value of an account field; the object ID from `row`, so rows
/// rarely repeat an account.
fn valid_field(field: &str, row: u32) -> String {
    match field {
        "tenant_id" => GUIDS[row as usize % 2].to_owned(),
        "object_id" => format!("{row:08x}-0000-4000-8000-000000000001"),
        "employee_id" => format!("E-{row}"),
        "credential" => "automation".to_owned(),
        "contract_id" => "C-2026-001".to_owned(),
        _ => "4512345".to_owned(),
    }
}

const ACCOUNT_FIELDS: [&str; 6] = [
    "tenant_id",
    "object_id",
    "employee_id",
    "credential",
    "contract_id",
    "partner_id",
];

/// One JSON Lines import line: a valid account with arbitrary members laid
/// over it (mostly), or any JSON value, or any text.
fn import_line() -> impl Strategy<Value = String> {
    let overlay = prop_oneof![
        3 => Just(Default::default()),
        2 => btree_map(key(), data_member_value(), 0..3),
    ];
    let account = (any::<u32>(), overlay).prop_map(|(row, overlay)| {
        let mut object: Map<String, Value> = ACCOUNT_FIELDS
            .iter()
            .map(|field| ((*field).to_owned(), Value::String(valid_field(field, row))))
            .collect();
        object.extend(overlay);
        Value::Object(object).to_string()
    });
    prop_oneof![
        6 => account,
        1 => json_value().prop_map(|value| value.to_string()),
        1 => text(),
    ]
}

fn line_end() -> impl Strategy<Value = &'static str> {
    select(&["\n", "\r\n", "\n\n", "\r"])
}

/// A JSON Lines file whose first line is an object, so `parse_import` reads
/// it as JSON Lines.
fn jsonl_file() -> impl Strategy<Value = String> {
    vec((import_line(), line_end()), 0..8).prop_map(|lines| {
        let mut file = String::from("{\"tenant_id\":\"72f988bf-86f1-41af-91ab-2d7cd011db47\",\"object_id\":\"0f8fad5b-d9cb-469f-a165-70867728950e\",\"employee_id\":\"E-1\"}\n");
        for (line, end) in lines {
            file.push_str(&line);
            file.push_str(end);
        }
        file
    })
}

/// One CSV cell of a column: its valid value, as it is, padded and spanning
/// lines (trimmed on import) or quoted.
fn clean_csv_cell(column: &str, row: u32) -> impl Strategy<Value = String> + use<> {
    let valid = valid_field(column, row);
    prop_oneof![
        6 => Just(valid.clone()),
        1 => Just(format!("\"\r\n {valid}\n\"")),
        1 => Just(format!("\"{}\"", valid.replace('"', "\"\""))),
    ]
}

/// One CSV cell of a column, mostly clean, sometimes a plausible wrong
/// value, any text (quoted or not, so stray quotes and line breaks too).
fn any_csv_cell(column: &str, row: u32) -> impl Strategy<Value = String> + use<> {
    prop_oneof![
        2 => clean_csv_cell(column, row),
        1 => select(INTERESTING).prop_map(str::to_owned),
        1 => any::<String>().prop_map(|text| format!("\"{}\"", text.replace('"', "\"\""))),
        1 => any::<String>(),
    ]
}

/// A CSV file: a header of the account columns in any order (sometimes an
/// unknown, missing or repeated one) and records of mostly valid cells,
/// sometimes of the wrong width.
fn csv_file() -> impl Strategy<Value = String> {
    let header = prop_oneof![
        4 => Just(ACCOUNT_FIELDS.iter().map(|field| (*field).to_owned()).collect::<Vec<_>>())
            .prop_shuffle(),
        1 => vec(
            prop_oneof![
                6 => select(&ACCOUNT_FIELDS[..]).prop_map(str::to_owned),
                1 => "[a-z_]{0,12}",
            ],
            0..7,
        ),
    ];
    (any::<bool>(), header)
        .prop_flat_map(|(bom, header)| {
            let record = (any::<u32>(), 0..8usize).prop_flat_map({
                let header = header.clone();
                move |(row, width)| {
                    let clean: Vec<_> = header
                        .iter()
                        .map(|column| clean_csv_cell(column, row))
                        .collect();
                    let dirty: Vec<_> = header
                        .iter()
                        .map(|column| any_csv_cell(column, row))
                        .collect();
                    let cells = prop_oneof![3 => clean, 1 => dirty];
                    // Mostly the header's width; sometimes another.
                    (cells, Just(width), any::<u8>())
                }
            });
            let records = vec((record, line_end()), 0..8);
            (Just(bom), Just(header), records)
        })
        .prop_map(|(bom, header, records)| {
            let mut file = if bom {
                "\u{feff}".to_owned()
            } else {
                String::new()
            };
            file.push_str(&header.join(","));
            file.push('\n');
            for ((mut cells, width, chance), end) in records {
                if chance < 16 {
                    cells.resize(width, String::new());
                }
                file.push_str(&cells.join(","));
                file.push_str(end);
            }
            file
        })
}

fn check_import(text: &str) -> Result<(), TestCaseError> {
    if let Err(error) = parse_import(text) {
        let message = error.to_string();
        prop_assert!(message.starts_with("line "), "{message}");
        prop_assert!(!message.chars().any(char::is_control), "{message:?}");
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn parse_import_never_panics_on_json_lines(file in jsonl_file()) {
        check_import(&file)?;
    }

    #[test]
    fn parse_import_never_panics_on_csv(file in csv_file()) {
        check_import(&file)?;
    }

    #[test]
    fn parse_import_never_panics_on_arbitrary_text(text in any::<String>()) {
        check_import(&text)?;
    }
}

/// Guards the properties above against becoming vacuous: with a fixed seed,
/// the generators give both events the parser accepts (so the round trip is
/// checked) and ones it rejects, and import files that parse to several
/// accounts as well as ones that are refused.
#[test]
fn the_generators_reach_both_acceptance_and_rejection() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    const SAMPLES: usize = 200;
    let mut runner = TestRunner::deterministic();
    let mut sample = |strategy: &dyn Fn(&mut TestRunner) -> bool| {
        (0..SAMPLES).filter(|_| strategy(&mut runner)).count()
    };
    let envelopes = sample(&|runner| {
        let envelope = envelope_with_arbitrary_data()
            .new_tree(runner)
            .unwrap()
            .current();
        Event::from_json_slice(&serde_json::to_vec(&envelope).unwrap()).is_ok()
    });
    let jsonl = sample(&|runner| {
        let file = jsonl_file().new_tree(runner).unwrap().current();
        parse_import(&file).is_ok_and(|accounts| accounts.len() > 1)
    });
    let csv = sample(&|runner| {
        let file = csv_file().new_tree(runner).unwrap().current();
        parse_import(&file).is_ok_and(|accounts| accounts.len() > 1)
    });
    let csv_refused = sample(&|runner| {
        let file = csv_file().new_tree(runner).unwrap().current();
        parse_import(&file).is_err()
    });

    assert!(
        (SAMPLES / 4..SAMPLES * 9 / 10).contains(&envelopes),
        "{envelopes} of {SAMPLES} envelopes accepted"
    );
    assert!(
        jsonl >= SAMPLES / 20,
        "{jsonl} of {SAMPLES} JSON Lines files"
    );
    assert!(csv >= SAMPLES / 20, "{csv} of {SAMPLES} CSV files");
    assert!(
        csv_refused >= SAMPLES / 10,
        "{csv_refused} of {SAMPLES} CSV files refused"
    );
}
