//! Parsing of `palworker inventory import` files: JSON Lines or CSV with a
//! header row, one account per line/record (SPEC §2, §8).
//!
//! Both formats are strict where a typo would silently change what the
//! worker does: unknown fields or columns are errors (a misspelt `credential`
//! would otherwise turn every account into a `manual` one), and so is the
//! same account twice. The whole file is rejected on the first error, which
//! names the line, the field and the reason: `line 3: tenant_id: is not a GUID`.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use serde_json::{Map, Value};

use super::{Account, AccountKey};
use crate::error::{FieldProblem, MAX_MESSAGE_CHARS, echo, echo_at_most, json_kind};
use crate::fields::{FieldError, optional, required};
use crate::ids::PartnerId;

/// The fields of an account, in the order CSV files usually list them.
const FIELDS: [&str; 6] = [
    "tenant_id",
    "object_id",
    "employee_id",
    "credential",
    "contract_id",
    "partner_id",
];

/// One imported row: the account and, optionally, the partner ID it is known
/// to be linked with (its desired link). Without `partner_id` an imported
/// account keeps its desired link (new accounts start `Absent`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedAccount {
    /// The account fields of SPEC §2.
    pub account: Account,
    /// The optional `partner_id` column.
    pub partner_id: Option<PartnerId>,
}

/// The fields every account must have.
const REQUIRED_FIELDS: [&str; 3] = ["tenant_id", "object_id", "employee_id"];

/// Why an import file was rejected. Every variant names the 1-based line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImportError {
    /// A JSON Lines line is not valid JSON.
    #[error("line {line}: invalid JSON: {message}")]
    InvalidJson {
        /// Line of the file.
        line: usize,
        /// serde_json's description, with the column.
        message: String,
    },
    /// A JSON Lines line is valid JSON but not an object.
    #[error("line {line}: expected a JSON object, found {found}")]
    NotAnObject {
        /// Line of the file.
        line: usize,
        /// The kind of JSON value found.
        found: &'static str,
    },
    /// The CSV structure is broken (a record with a different number of
    /// fields than the header).
    #[error("line {line}: invalid CSV: {message}")]
    InvalidCsv {
        /// Line of the file.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A JSON field or CSV column that is not an account field.
    #[error("line {line}: {field}: unknown field")]
    UnknownField {
        /// Line of the file (the header line for CSV).
        line: usize,
        /// The name found, echoed.
        field: String,
    },
    /// The CSV header names the same column twice.
    #[error("line {line}: {column}: duplicate column")]
    DuplicateColumn {
        /// Line of the header.
        line: usize,
        /// The repeated column.
        column: &'static str,
    },
    /// The CSV header lacks a required column.
    #[error("line {line}: {column}: missing column")]
    MissingColumn {
        /// Line of the header.
        line: usize,
        /// The missing column.
        column: &'static str,
    },
    /// A required field is absent, null, or (CSV) an empty cell.
    #[error("line {line}: {field}: is required")]
    MissingField {
        /// Line of the file.
        line: usize,
        /// The field.
        field: &'static str,
    },
    /// A field is present but invalid.
    #[error("line {line}: {field}: {problem}")]
    InvalidField {
        /// Line of the file.
        line: usize,
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        problem: FieldProblem,
    },
    /// The same `(tenant_id, object_id)` appears on two lines.
    #[error("line {line}: account {key} already appears on line {first_line}")]
    DuplicateAccount {
        /// Line of the second occurrence.
        line: usize,
        /// The account.
        key: AccountKey,
        /// Line of the first occurrence.
        first_line: usize,
    },
}

impl ImportError {
    fn from_field(line: usize, error: FieldError) -> Self {
        match error {
            FieldError::Missing(field) => ImportError::MissingField { line, field },
            FieldError::Invalid { field, problem } => ImportError::InvalidField {
                line,
                field,
                problem,
            },
        }
    }
}

/// Parses JSON Lines: one account object per line, with the fields
/// `tenant_id`, `object_id`, `employee_id` and optionally `credential` and
/// `contract_id` (`null` = absent). Blank lines are skipped.
pub fn parse_import_jsonl(text: &str) -> Result<Vec<ImportedAccount>, ImportError> {
    let mut accounts = Accounts::default();
    for (index, line) in strip_bom(text).lines().enumerate() {
        let line_number = index + 1;
        if line.trim().is_empty() {
            continue;
        }
        let value: Value =
            serde_json::from_str(line).map_err(|error| ImportError::InvalidJson {
                line: line_number,
                message: echo_at_most(&json_message(&error), MAX_MESSAGE_CHARS),
            })?;
        let Value::Object(object) = value else {
            return Err(ImportError::NotAnObject {
                line: line_number,
                found: json_kind(&value),
            });
        };
        accounts.push(line_number, account_from_object(&object, line_number)?)?;
    }
    Ok(accounts.into_vec())
}

/// Parses CSV with a header row naming the columns (`tenant_id`,
/// `object_id`, `employee_id` required; `credential`, `contract_id`
/// optional; any order). Quoted fields follow RFC 4180. Cells and header
/// names are trimmed (spreadsheets pad them); an empty cell means absent.
/// Blank lines are skipped; an empty file is an empty inventory.
pub fn parse_import_csv(text: &str) -> Result<Vec<ImportedAccount>, ImportError> {
    let text = strip_bom(text);
    parse_csv(text, &mut LineNumbers::new(text))
}

/// [`parse_import_csv`] of a text without byte order mark, numbering lines
/// with `lines` (a parameter so a test can see how much of the text it read).
fn parse_csv(text: &str, lines: &mut LineNumbers<'_>) -> Result<Vec<ImportedAccount>, ImportError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let headers = reader
        .headers()
        .map_err(|error| csv_error(lines, error))?
        .clone();
    if headers.iter().all(str::is_empty) {
        return Ok(Vec::new());
    }
    let header_line = lines.line_of(headers.position());

    // columns[i] = index of FIELDS[i] in each record, if the header has it.
    let mut columns: [Option<usize>; FIELDS.len()] = [None; FIELDS.len()];
    for (index, name) in headers.iter().enumerate() {
        let Some(field) = FIELDS.iter().position(|field| *field == name) else {
            return Err(ImportError::UnknownField {
                line: header_line,
                field: echo(name),
            });
        };
        if columns[field].replace(index).is_some() {
            return Err(ImportError::DuplicateColumn {
                line: header_line,
                column: FIELDS[field],
            });
        }
    }
    for column in REQUIRED_FIELDS {
        let field = FIELDS.iter().position(|field| *field == column);
        if field.and_then(|field| columns[field]).is_none() {
            return Err(ImportError::MissingColumn {
                line: header_line,
                column,
            });
        }
    }

    let mut accounts = Accounts::default();
    for record in reader.records() {
        let record = record.map_err(|error| csv_error(lines, error))?;
        let line = lines.line_of(record.position());
        // The record as a JSON object of its non-empty cells, so CSV and JSON
        // Lines share one set of field rules and messages.
        let mut object = Map::new();
        for (field, column) in FIELDS.iter().zip(columns) {
            if let Some(cell) = column.and_then(|column| record.get(column))
                && !cell.is_empty()
            {
                object.insert((*field).to_owned(), Value::String(cell.to_owned()));
            }
        }
        accounts.push(line, account_from_object(&object, line)?)?;
    }
    Ok(accounts.into_vec())
}

fn account_from_object(
    object: &Map<String, Value>,
    line: usize,
) -> Result<ImportedAccount, ImportError> {
    if let Some(unknown) = object.keys().find(|key| !FIELDS.contains(&key.as_str())) {
        return Err(ImportError::UnknownField {
            line,
            field: echo(unknown),
        });
    }
    let at_line = |error| ImportError::from_field(line, error);
    Ok(ImportedAccount {
        account: Account {
            tenant_id: required(object, "tenant_id").map_err(at_line)?,
            object_id: required(object, "object_id").map_err(at_line)?,
            employee_id: required(object, "employee_id").map_err(at_line)?,
            credential: optional(object, "credential").map_err(at_line)?,
            contract_id: optional(object, "contract_id").map_err(at_line)?,
        },
        partner_id: optional(object, "partner_id").map_err(at_line)?,
    })
}

/// Accounts in file order, refusing a second line for the same key.
#[derive(Default)]
struct Accounts {
    accounts: Vec<ImportedAccount>,
    first_lines: HashMap<AccountKey, usize>,
}

impl Accounts {
    fn push(&mut self, line: usize, account: ImportedAccount) -> Result<(), ImportError> {
        match self.first_lines.entry(account.account.key()) {
            Entry::Occupied(first) => Err(ImportError::DuplicateAccount {
                line,
                key: first.key().clone(),
                first_line: *first.get(),
            }),
            Entry::Vacant(slot) => {
                slot.insert(line);
                self.accounts.push(account);
                Ok(())
            }
        }
    }

    fn into_vec(self) -> Vec<ImportedAccount> {
        self.accounts
    }
}

/// [`parse_import_jsonl`] without the optional `partner_id` column.
pub fn parse_accounts_jsonl(text: &str) -> Result<Vec<Account>, ImportError> {
    Ok(parse_import_jsonl(text)?
        .into_iter()
        .map(|row| row.account)
        .collect())
}

/// [`parse_import_csv`] without the optional `partner_id` column.
pub fn parse_accounts_csv(text: &str) -> Result<Vec<Account>, ImportError> {
    Ok(parse_import_csv(text)?
        .into_iter()
        .map(|row| row.account)
        .collect())
}

/// Parses an import file, JSON Lines when its first non-blank character is
/// `{`, CSV with a header row otherwise.
pub fn parse_import(text: &str) -> Result<Vec<ImportedAccount>, ImportError> {
    if strip_bom(text).trim_start().starts_with('{') {
        parse_import_jsonl(text)
    } else {
        parse_import_csv(text)
    }
}

/// Spreadsheet exports often start with a UTF-8 byte order mark.
fn strip_bom(text: &str) -> &str {
    text.strip_prefix('\u{feff}').unwrap_or(text)
}

/// serde_json's message for one line, with "at line 1 column N" (always line
/// 1 of the one-line input) shortened to "at column N".
fn json_message(error: &serde_json::Error) -> String {
    let text = error.to_string();
    let suffix = format!(" at line {} column {}", error.line(), error.column());
    match text.strip_suffix(&suffix) {
        Some(message) => format!("{message} at column {}", error.column()),
        None => text,
    }
}

/// The 1-based lines on which csv records start, from the reader's byte
/// positions.
///
/// csv 1.4's own `Position::line()` is wrong for CRLF files and after blank
/// lines (it counts terminators, not lines), and `Position::byte()` points
/// at the end of the previous record's terminator, before any blank lines
/// the reader skipped. So: start at that byte, skip line breaks (a record
/// never starts with one; blank lines are skipped), count the `\n`s before.
///
/// The reader's positions only grow (records and errors come in file
/// order), so each lookup counts only the line breaks since the previous
/// one: numbering a whole file reads it once. (Counting from the file's
/// start for every record made importing quadratic in the file's size.)
struct LineNumbers<'a> {
    text: &'a [u8],
    /// Where the previous lookup stopped: the start of its record.
    offset: usize,
    /// The line `offset` is on.
    line: usize,
    /// Bytes of `text` whose line breaks were counted, over all lookups.
    scanned: usize,
}

impl<'a> LineNumbers<'a> {
    fn new(text: &'a str) -> Self {
        LineNumbers {
            text: text.as_bytes(),
            offset: 0,
            line: 1,
            scanned: 0,
        }
    }

    /// The line on which the record at `position` starts (1 without one).
    fn line_of(&mut self, position: Option<&csv::Position>) -> usize {
        let Some(position) = position else {
            return 1;
        };
        let bytes = self.text;
        let offset =
            usize::try_from(position.byte()).map_or(bytes.len(), |byte| byte.min(bytes.len()));
        let start = offset
            + bytes[offset..]
                .iter()
                .take_while(|byte| matches!(byte, b'\r' | b'\n'))
                .count();
        if start < self.offset {
            // Not expected from the reader; correct, if slower, all the same.
            self.offset = 0;
            self.line = 1;
        }
        let counted = &bytes[self.offset..start];
        self.scanned += counted.len();
        self.line += counted.iter().filter(|byte| **byte == b'\n').count();
        self.offset = start;
        self.line
    }

    /// Bytes of the text whose line breaks were counted so far: at most its
    /// length when every byte is counted once.
    #[cfg(test)]
    fn bytes_scanned(&self) -> usize {
        self.scanned
    }
}

fn csv_error(lines: &mut LineNumbers<'_>, error: csv::Error) -> ImportError {
    let line = lines.line_of(error.position());
    let message = match error.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!("found {len} fields, but the header has {expected_len}"),
        _ => error.to_string(),
    };
    ImportError::InvalidCsv {
        line,
        message: echo_at_most(&message, MAX_MESSAGE_CHARS),
    }
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;

    use super::*;

    /// `rows` distinct accounts, every third one with quoted cells spanning
    /// lines (the line breaks are trimmed away), with CRLF line ends.
    fn inventory_with_multi_line_cells(rows: usize) -> String {
        let mut text = String::from("tenant_id,object_id,employee_id,contract_id\r\n");
        for row in 0..rows {
            let cells = if row % 3 == 0 {
                format!("\"E-{row}\r\n\",\"\r\nC-{row}\r\n\r\n\"")
            } else {
                format!("E-{row},C-{row}")
            };
            write!(
                text,
                "72f988bf-86f1-41af-91ab-2d7cd011db47,{row:08x}-0000-4000-8000-000000000001,{cells}\r\n"
            )
            .unwrap();
        }
        text
    }

    /// Numbering lines must not re-read the file from its start for every
    /// record (which made importing quadratic in the file's size): over a
    /// whole import the line counter reads each byte at most once.
    #[test]
    fn numbering_the_lines_of_a_csv_import_reads_each_byte_at_most_once() {
        let text = inventory_with_multi_line_cells(2_000);
        let mut lines = LineNumbers::new(&text);

        let accounts = parse_csv(&text, &mut lines).unwrap();

        assert_eq!(accounts.len(), 2_000);
        assert!(
            lines.bytes_scanned() <= text.len(),
            "scanned {} bytes of a {}-byte file",
            lines.bytes_scanned(),
            text.len()
        );
    }
}
