//! `ledger export` / `ledger import` (SPEC §11.2): every record of every
//! tree as JSON Lines — the backup, the restore, and the way off sled.
//!
//! Format (documented in the README): a first line
//! `{"palworker_ledger":1,"exported_at":"…","trees":["inventory",…]}`, then
//! one line per record `{"tree":"actions","key":K,"value":V}`, trees in the
//! order of the header, keys in order. `K` and `V` are the stored bytes:
//! UTF-8 text as a JSON string when they are text (records are JSON text:
//! `jq '.value | fromjson'` reads them), else `{"b64": "…"}`. Bytes are kept
//! exactly, so the audit trail's hash chain survives a round trip. The last
//! line is `{"palworker_ledger_end":N}`, N the number of record lines: an
//! export without it was cut off, and is refused by `import`.
//!
//! An export is a consistent snapshot: it holds the ledger's write gate, so
//! no transaction runs while it reads.

use std::io::{BufRead, Write};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::Utc;
use serde::{Deserialize, Serialize};

use super::codec::read_u64;
use super::queries::evicting;
use super::{Ledger, LedgerError, Result};

/// The export format's version.
const FORMAT: u32 = 1;

/// Every tree, in export order.
const TREES: [&str; 10] = [
    "inventory",
    "index",
    "events",
    "actions",
    "event_actions",
    "due",
    "in_flight",
    "open_events",
    "audit",
    "outbox",
];

#[derive(Serialize, Deserialize)]
struct Header {
    palworker_ledger: u32,
    exported_at: chrono::DateTime<Utc>,
    trees: Vec<String>,
}

/// The last line: how many record lines came before it.
#[derive(Serialize, Deserialize)]
struct End {
    palworker_ledger_end: u64,
}

/// A line after the header.
#[derive(Deserialize)]
#[serde(untagged)]
enum Body {
    End(End),
    Line(Line),
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Bytes {
    Text(String),
    Binary { b64: String },
}

impl Bytes {
    fn of(bytes: &[u8]) -> Bytes {
        match std::str::from_utf8(bytes) {
            Ok(text) => Bytes::Text(text.to_owned()),
            Err(_) => Bytes::Binary {
                b64: STANDARD.encode(bytes),
            },
        }
    }

    fn into_bytes(self) -> std::result::Result<Vec<u8>, String> {
        match self {
            Bytes::Text(text) => Ok(text.into_bytes()),
            Bytes::Binary { b64 } => STANDARD.decode(b64).map_err(|e| e.to_string()),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Line {
    tree: String,
    key: Bytes,
    value: Bytes,
}

/// What an export or import went through.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transferred {
    pub records: u64,
}

impl Ledger {
    /// Writes every record to `out` as JSON Lines (see the module docs),
    /// a consistent snapshot. Blocking; writes wait meanwhile.
    pub fn export(&self, out: &mut (impl Write + ?Sized)) -> Result<Transferred> {
        let _snapshot = self.snapshot();
        let store = self.store()?;
        let mut export = ExportWriter::start(out, Utc::now())?;
        for name in TREES {
            let tree = store.tree(name);
            for item in evicting(tree, tree.iter()) {
                let (key, value) = item?;
                export.record(name, &key, &value)?;
            }
        }
        let records = export.finish()?;
        Ok(Transferred { records })
    }

    /// Loads an export into this ledger, which must be empty, and flushes
    /// it. A line that does not parse stops the import, naming the line.
    pub fn import(&self, input: impl BufRead) -> Result<Transferred> {
        let _snapshot = self.snapshot();
        let store = self.store()?;
        // An opened ledger holds its counters already; records it must not.
        let data_trees = ["inventory", "events", "actions", "audit"];
        if data_trees.iter().any(|name| !store.tree(name).is_empty()) {
            return Err(LedgerError::Rejected(
                "the ledger is not empty: import into a new directory".into(),
            ));
        }
        let records = read_export(input, |tree, key, value| {
            store.tree(tree).insert(key, value)?;
            Ok(())
        })?;
        // Sequence numbers and action ids come from sled's id generator,
        // which is not in any tree: a new ledger's starts at 0. Move it past
        // every imported one, so a new event never takes an imported
        // event's sequence number (and overwrites it).
        // Deduplication markers of pruned events name sequence numbers too.
        let mut highest = 0;
        for tree in [&store.events, &store.actions] {
            if let Some((key, _)) = tree.last()? {
                highest = highest.max(read_u64(&key));
            }
        }
        for marker in store.index.scan_prefix(b"eid:") {
            highest = highest.max(read_u64(&marker?.1));
        }
        while store.db.generate_id()? <= highest {}
        store.db.flush()?;
        Ok(Transferred { records })
    }
}

/// Writes an export: the header, each record, then the end line with the
/// count (export, repartition).
pub(super) struct ExportWriter<'a, W: Write + ?Sized> {
    out: &'a mut W,
    records: u64,
}

fn writing(error: impl std::fmt::Display) -> LedgerError {
    LedgerError::Rejected(format!("writing the export: {error}"))
}

impl<'a, W: Write + ?Sized> ExportWriter<'a, W> {
    /// Writes the header line.
    pub(super) fn start(out: &'a mut W, exported_at: chrono::DateTime<Utc>) -> Result<Self> {
        let mut export = ExportWriter { out, records: 0 };
        export.line(&Header {
            palworker_ledger: FORMAT,
            exported_at,
            trees: TREES.iter().map(|t| (*t).to_owned()).collect(),
        })?;
        Ok(export)
    }

    fn line(&mut self, line: &impl Serialize) -> Result<()> {
        serde_json::to_writer(&mut *self.out, line).map_err(writing)?;
        self.out.write_all(b"\n").map_err(writing)
    }

    /// Writes one record of `tree`.
    pub(super) fn record(&mut self, tree: &str, key: &[u8], value: &[u8]) -> Result<()> {
        self.line(&Line {
            tree: tree.to_owned(),
            key: Bytes::of(key),
            value: Bytes::of(value),
        })?;
        self.records += 1;
        Ok(())
    }

    /// Writes the end line and flushes; how many records.
    pub(super) fn finish(mut self) -> Result<u64> {
        let records = self.records;
        self.line(&End {
            palworker_ledger_end: records,
        })?;
        self.out.flush().map_err(writing)?;
        Ok(records)
    }
}

/// Reads an export: checks its header, hands each record (tree, key,
/// value) to `record` in order, and checks its end line; how many records.
/// Errors name the line; an export without its end line was cut off.
pub(super) fn read_export(
    input: impl BufRead,
    mut record: impl FnMut(&str, Vec<u8>, Vec<u8>) -> Result<()>,
) -> Result<u64> {
    let mut lines = input.lines();
    let refuse = |line: usize, why: String| LedgerError::Rejected(format!("line {line}: {why}"));
    let header = lines
        .next()
        .ok_or_else(|| refuse(1, "empty file, not a ledger export".into()))?
        .map_err(|e| refuse(1, e.to_string()))?;
    let header: Header = serde_json::from_str(&header)
        .map_err(|e| refuse(1, format!("not a palworker ledger export: {e}")))?;
    if header.palworker_ledger != FORMAT {
        return Err(refuse(
            1,
            format!(
                "export format {} is not supported (this version reads {FORMAT})",
                header.palworker_ledger
            ),
        ));
    }
    let mut records = 0u64;
    let mut ended = false;
    for (index, line) in lines.enumerate() {
        let number = index + 2;
        let line = line.map_err(|e| refuse(number, e.to_string()))?;
        if line.trim().is_empty() {
            continue;
        }
        if ended {
            return Err(refuse(number, "a line after the export's end line".into()));
        }
        let line = match serde_json::from_str(&line).map_err(|e| refuse(number, e.to_string()))? {
            Body::End(end) if end.palworker_ledger_end == records => {
                ended = true;
                continue;
            }
            Body::End(end) => {
                return Err(refuse(
                    number,
                    format!(
                        "the end line counts {} records, the file has {records}",
                        end.palworker_ledger_end
                    ),
                ));
            }
            Body::Line(line) => line,
        };
        if !TREES.contains(&line.tree.as_str()) {
            return Err(refuse(number, format!("unknown tree `{}`", line.tree)));
        }
        let key = line.key.into_bytes().map_err(|e| refuse(number, e))?;
        let value = line.value.into_bytes().map_err(|e| refuse(number, e))?;
        record(&line.tree, key, value)?;
        records += 1;
    }
    if !ended {
        return Err(LedgerError::Rejected(format!(
            "the export ends after {records} records without its end line: it was cut off"
        )));
    }
    Ok(records)
}

impl super::Store {
    fn tree(&self, name: &str) -> &sled::Tree {
        match name {
            "inventory" => &self.inventory,
            "index" => &self.index,
            "events" => &self.events,
            "actions" => &self.actions,
            "event_actions" => &self.event_actions,
            "due" => &self.due,
            "in_flight" => &self.in_flight,
            "open_events" => &self.open_events,
            "outbox" => &self.outbox,
            _ => &self.audit,
        }
    }
}
