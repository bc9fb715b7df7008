//! Tests of the inventory import parsers (`palworker inventory import`).

use std::fs;
use std::path::Path;

use palworker_events::{
    Account, ContractId, CredentialName, EmployeeId, ImportError, ObjectId, TenantId,
    parse_accounts_csv, parse_accounts_jsonl,
};

const T1: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const T2: &str = "a1b2c3d4-0000-4a5b-8c9d-0123456789ab";
const O1: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";
const O2: &str = "1d3b6a8e-2f4c-4b5d-9e6f-7a8b9c0d1e2f";

fn account(
    tenant: &str,
    object: &str,
    employee: &str,
    credential: Option<&str>,
    contract: Option<&str>,
) -> Account {
    Account {
        tenant_id: TenantId::parse(tenant).unwrap(),
        object_id: ObjectId::parse(object).unwrap(),
        employee_id: EmployeeId::parse(employee).unwrap(),
        credential: credential.map(|name| CredentialName::parse(name).unwrap()),
        contract_id: contract.map(|id| ContractId::parse(id).unwrap()),
    }
}

fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/import")
        .join(name);
    fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// The inventory both `accounts.csv` and `accounts.jsonl` describe.
fn fixture_inventory() -> Vec<Account> {
    vec![
        account(T1, O1, "E-10442", Some("automation"), Some("C-2026-001")),
        account(T1, O2, "Müller, Jürgen", None, None),
        account(
            T2,
            O1,
            "E-\"quoted\"",
            Some("automation"),
            Some("Contract, with comma"),
        ),
    ]
}

#[test]
fn csv_fixture_with_quotes_crlf_padding_and_reordered_columns_parses() {
    assert_eq!(
        parse_accounts_csv(&fixture("accounts.csv")),
        Ok(fixture_inventory())
    );
}

#[test]
fn jsonl_fixture_with_nulls_blank_lines_and_upper_case_guids_parses() {
    assert_eq!(
        parse_accounts_jsonl(&fixture("accounts.jsonl")),
        Ok(fixture_inventory())
    );
}

#[test]
fn empty_files_are_empty_inventories() {
    for text in ["", "\n", "\u{feff}"] {
        assert_eq!(parse_accounts_jsonl(text), Ok(vec![]), "{text:?}");
        assert_eq!(parse_accounts_csv(text), Ok(vec![]), "{text:?}");
    }
    assert_eq!(
        parse_accounts_csv("tenant_id,object_id,employee_id\n"),
        Ok(vec![])
    );
}

#[test]
fn a_byte_order_mark_is_ignored() {
    let jsonl = format!(
        "\u{feff}{{\"tenant_id\":\"{T1}\",\"object_id\":\"{O1}\",\"employee_id\":\"E-1\"}}\n"
    );
    let csv = format!("\u{feff}tenant_id,object_id,employee_id\n{T1},{O1},E-1\n");
    let expected = Ok(vec![account(T1, O1, "E-1", None, None)]);
    assert_eq!(parse_accounts_jsonl(&jsonl), expected);
    assert_eq!(parse_accounts_csv(&csv), expected);
}

#[test]
fn csv_optional_columns_may_be_left_out() {
    let text = format!("object_id,employee_id,tenant_id\n{O1},E-1,{T1}\n");
    assert_eq!(
        parse_accounts_csv(&text),
        Ok(vec![account(T1, O1, "E-1", None, None)])
    );
}

fn row(tenant: &str, object: &str, employee: &str) -> String {
    format!(r#"{{"tenant_id":"{tenant}","object_id":"{object}","employee_id":"{employee}"}}"#)
}

#[test]
fn jsonl_errors_name_the_line_the_field_and_the_reason() {
    let good = row(T1, O1, "E-1");
    let cases: Vec<(String, &str)> = vec![
        (
            format!(
                "{good}\n{}\n{}\n",
                row(T1, O2, "E-2"),
                row("nope", O1, "E-3")
            ),
            "line 3: tenant_id: is not a GUID",
        ),
        (
            format!("{good}\n\n\n{}\n", row(T1, "{0f8fad5b}", "E-2")),
            "line 4: object_id: is not a GUID",
        ),
        (
            format!("{good}\r\n{}\r\n", row(T2, O1, "")),
            "line 2: employee_id: must not be empty",
        ),
        (
            format!("{good}\n{}\n", row(T2, O1, "E\\u0007")),
            "line 2: employee_id: contains a control character",
        ),
        (
            format!("{}\n", row(T2, O1, &"e".repeat(129))),
            "line 1: employee_id: is longer than 128 characters",
        ),
        (
            format!("{good}\n{{\"tenant_id\": "),
            "line 2: invalid JSON: EOF while parsing a value at column 14",
        ),
        (
            format!("{good}\n[{good}]\n"),
            "line 2: expected a JSON object, found an array",
        ),
        (
            format!(r#"{{"tenant_id":"{T1}","object_id":"{O1}"}}"#),
            "line 1: employee_id: is required",
        ),
        (
            format!(r#"{{"tenant_id":"{T1}","object_id":"{O1}","employee_id":null}}"#),
            "line 1: employee_id: is required",
        ),
        (
            format!(r#"{{"tenant_id":"{T1}","object_id":"{O1}","employee_id":10442}}"#),
            "line 1: employee_id: must be a string",
        ),
        (
            format!(
                r#"{{"tenant_id":"{T1}","object_id":"{O1}","employee_id":"E-1","credentials":"automation"}}"#
            ),
            "line 1: credentials: unknown field",
        ),
        (
            format!(
                r#"{{"tenant_id":"{T1}","object_id":"{O1}","employee_id":"E-1","credential":""}}"#
            ),
            "line 1: credential: must not be empty",
        ),
        (
            format!(
                "{good}\n{}\n{}\n",
                row(T2, O1, "E-2"),
                row(&T1.to_uppercase(), O1, "E-3")
            ),
            "line 3: account 72f988bf-86f1-41af-91ab-2d7cd011db47/0f8fad5b-d9cb-469f-a165-70867728950e already appears on line 1",
        ),
    ];
    for (text, expected) in cases {
        let error = parse_accounts_jsonl(&text).expect_err(expected);
        assert_eq!(error.to_string(), expected, "input:\n{text}");
    }
}

#[test]
fn csv_errors_name_the_line_the_field_and_the_reason() {
    let header = "tenant_id,object_id,employee_id,credential,contract_id";
    let good = format!("{T1},{O1},E-1,automation,C-1");
    let cases: Vec<(String, &str)> = vec![
        (
            format!("{header}\n{good}\nnope,{O2},E-2,,\n"),
            "line 3: tenant_id: is not a GUID",
        ),
        (
            format!("{header}\n\n{good}\n\n{T1},{O2},,,\n"),
            "line 5: employee_id: is required",
        ),
        (
            // Spreadsheet exports: CRLF line endings and blank lines.
            format!("{header}\r\n{good}\r\n\r\n{T1},{O2},E-2,,\u{7f}\r\n"),
            "line 4: contract_id: contains a control character",
        ),
        (
            format!("{header}\n{T1},{O2},E-2,a,b,c\n"),
            "line 2: invalid CSV: found 6 fields, but the header has 5",
        ),
        (
            // A quoted cell spanning lines: the record starts on line 2, and
            // the next record's line number accounts for the embedded break.
            format!("{header}\n{T1},{O1},\"E-1\nsecond line\",,\n"),
            "line 2: employee_id: contains a control character",
        ),
        (
            // Trimming removes the line break inside the quoted cell, so the
            // record spanning lines 2 and 3 is valid and the next is line 4.
            format!("{header}\r\n{T1},{O1},\"E-1\r\n\",,\r\n{T1},{O2},E-2,,x\u{1}\r\n"),
            "line 4: contract_id: contains a control character",
        ),
        (
            format!("{header}\n{good}\n{T1},{O2},E-2,{},\n", "c".repeat(129)),
            "line 3: credential: is longer than 128 characters",
        ),
        (
            format!("{header}\n{good}\n{},{O1},E-2,,\n", T1.to_uppercase()),
            "line 3: account 72f988bf-86f1-41af-91ab-2d7cd011db47/0f8fad5b-d9cb-469f-a165-70867728950e already appears on line 2",
        ),
        (
            format!("tenant_id,object_id,employee_id,credentials\n{T1},{O1},E-1,x\n"),
            "line 1: credentials: unknown field",
        ),
        (
            format!("tenant_id,object_id,credential\n{T1},{O1},x\n"),
            "line 1: employee_id: missing column",
        ),
        (
            format!("tenant_id,object_id,employee_id,tenant_id\n{T1},{O1},E-1,{T1}\n"),
            "line 1: tenant_id: duplicate column",
        ),
        (
            format!("\n\ntenant_id,object_id\n{T1},{O1}\n"),
            "line 3: employee_id: missing column",
        ),
    ];
    for (text, expected) in cases {
        let error = parse_accounts_csv(&text).expect_err(expected);
        assert_eq!(error.to_string(), expected, "input:\n{text}");
    }
}

#[test]
fn import_errors_are_typed_not_just_text() {
    let error =
        parse_accounts_csv(&format!("tenant_id,object_id,employee_id\n{T1},{O1},\n")).unwrap_err();
    assert_eq!(
        error,
        ImportError::MissingField {
            line: 2,
            field: "employee_id"
        }
    );
}

/// A CSV inventory of `rows` accounts in tenant `T1` whose records span a
/// varying number of lines (quoted cells holding line breaks, which trimming
/// removes), with a blank line before every seventh, and the line on which
/// each record starts. Also the line the next record would start on.
fn inventory_spanning_lines(rows: usize, line_end: &str) -> (String, Vec<usize>, usize) {
    let mut text = format!("tenant_id,object_id,employee_id,contract_id{line_end}");
    let mut line = 2;
    let mut starts = Vec::with_capacity(rows);
    for row in 0..rows {
        if row % 7 == 0 {
            text.push_str(line_end);
            line += 1;
        }
        let breaks = row % 4;
        starts.push(line);
        text.push_str(&format!(
            "{T1},{},\"E-{row}{}\",\"{}C-{row}\"{line_end}",
            object_of(row),
            line_end.repeat(breaks),
            line_end.repeat(breaks / 2),
        ));
        line += 1 + breaks + breaks / 2;
    }
    (text, starts, line)
}

fn object_of(row: usize) -> String {
    format!("{row:08x}-0000-4000-8000-000000000001")
}

/// Line numbers come from the csv reader's byte positions, counted forward
/// from the previous record; they must stay exact deep into a large file
/// after thousands of records spanning several lines, for LF and CRLF files.
#[test]
fn csv_error_lines_are_exact_far_into_a_file_after_records_spanning_lines() {
    const ROWS: usize = 5_000;
    for line_end in ["\n", "\r\n"] {
        let (inventory, starts, next) = inventory_spanning_lines(ROWS, line_end);
        assert_eq!(parse_accounts_csv(&inventory).map(|a| a.len()), Ok(ROWS));

        let bad_cell = format!("{inventory}{T1},{},E-x,C\u{1}{line_end}", object_of(ROWS));
        assert_eq!(
            parse_accounts_csv(&bad_cell).unwrap_err().to_string(),
            format!("line {next}: contract_id: contains a control character"),
        );

        let duplicate = format!("{inventory}{T1},{},E-x,{line_end}", object_of(4_321));
        assert_eq!(
            parse_accounts_csv(&duplicate).unwrap_err(),
            ImportError::DuplicateAccount {
                line: next,
                key: account(T1, &object_of(4_321), "E-x", None, None).key(),
                first_line: starts[4_321],
            },
        );

        let too_many_cells = format!("{inventory}{line_end}{T1},{},E-x,C,extra", object_of(ROWS));
        assert_eq!(
            parse_accounts_csv(&too_many_cells).unwrap_err().to_string(),
            format!(
                "line {}: invalid CSV: found 5 fields, but the header has 4",
                next + 1
            ),
        );
    }
}
