//! palworker's events crate: turns message bytes into validated events and
//! holds the domain types the worker plans with.
//!
//! Responsibility: everything about *what an event means*, nothing about
//! where it comes from. It parses structured-mode CloudEvents 1.0 (through
//! the `cloudevents-sdk` envelope plus palworker's own attribute and `data`
//! rules, SPEC §3) into [`Event`], defines the identifier newtypes
//! ([`TenantId`], [`ObjectId`], [`PartnerId`], [`EmployeeId`], ...), the
//! inventory vocabulary ([`Account`], [`AccountKey`], [`DesiredLink`]),
//! inventory import parsing, and the closed set of reasons a message is
//! dead-lettered ([`RejectReason`]).
//!
//! Architecture invariant: this crate does no IO (no async runtime, network,
//! files or clock); callers hand it bytes or text and get values or errors.
//!
//! Parse, don't validate: [`Event::from_json_slice`] is the one entry point
//! from bytes; identifiers have private fields and fallible constructors, so
//! code downstream never sees or re-checks a raw string.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod account;
mod envelope;
pub mod error;
pub mod event;
mod event_type;
mod fields;
pub mod ids;
pub mod partition;
mod uri;

pub use account::{
    Account, AccountKey, DesiredLink, ImportError, ImportedAccount, parse_accounts_csv,
    parse_accounts_jsonl, parse_import, parse_import_csv, parse_import_jsonl,
};
pub use error::{AttributeProblem, DataProblem, Escaped, EventError, FieldProblem, RejectReason};
pub use event::{Event, EventData, EventType, UnknownEventType};
pub use ids::{ContractId, CredentialName, EmployeeId, IdError, ObjectId, PartnerId, TenantId};
pub use partition::{PartitionCount, PartitionError, PartitionIndex};
