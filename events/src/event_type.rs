//! The event types palworker understands, by their CloudEvents `type`: a
//! module of its own so that the envelope's checks and the event's data
//! both name them without depending on each other.

use std::fmt;
use std::str::FromStr;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::echo;

/// The event types palworker understands: the catalogue publishers send
/// (SPEC §3, [`EventType::ALL`]) and palworker's own (SPEC §11.3,
/// [`EventType::INTERNAL`]), which no message is accepted as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    /// `project.assignment.started`
    AssignmentStarted,
    /// `project.assignment.ended`
    AssignmentEnded,
    /// `project.contract.ended`
    ContractEnded,
    /// `hr.employee.departed`
    EmployeeDeparted,
    /// `hr.employee.transferred`
    EmployeeTransferred,
    /// `partner.id.changed`
    PartnerIdChanged,
    /// `palworker.reconcile`: palworker's own event, planned by a reconcile
    /// from what it read in PAL (never accepted from a publisher).
    Reconcile,
}

impl EventType {
    /// Every event type, for exporting metric label values at start-up.
    pub const ALL: [EventType; 6] = [
        EventType::AssignmentStarted,
        EventType::AssignmentEnded,
        EventType::ContractEnded,
        EventType::EmployeeDeparted,
        EventType::EmployeeTransferred,
        EventType::PartnerIdChanged,
    ];

    /// palworker's own event types: stored in the ledger like the
    /// catalogue's, never accepted from a message (such a message is an
    /// unknown type).
    pub const INTERNAL: [EventType; 1] = [EventType::Reconcile];

    /// The CloudEvents `type` (and AMQP routing key) of this event type.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::AssignmentStarted => "project.assignment.started",
            EventType::AssignmentEnded => "project.assignment.ended",
            EventType::ContractEnded => "project.contract.ended",
            EventType::EmployeeDeparted => "hr.employee.departed",
            EventType::EmployeeTransferred => "hr.employee.transferred",
            EventType::PartnerIdChanged => "partner.id.changed",
            EventType::Reconcile => "palworker.reconcile",
        }
    }

    /// Whether this is one of palworker's own types ([`EventType::INTERNAL`]).
    pub fn is_internal(self) -> bool {
        EventType::INTERNAL.contains(&self)
    }

    /// The type named `text` in a record palworker stored: a catalogue type
    /// or one of its own. (`FromStr` knows only the catalogue: what a
    /// message may be.)
    pub fn parse_stored(text: &str) -> Result<EventType, UnknownEventType> {
        EventType::ALL
            .into_iter()
            .chain(EventType::INTERNAL)
            .find(|event_type| event_type.as_str() == text)
            .ok_or_else(|| UnknownEventType(echo(text)))
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// A string that is not one of [`EventType::ALL`] (or, for a stored
/// record, of [`EventType::INTERNAL`] either).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown event type: {0}")]
pub struct UnknownEventType(String);

impl FromStr for EventType {
    type Err = UnknownEventType;

    fn from_str(text: &str) -> Result<Self, UnknownEventType> {
        EventType::ALL
            .into_iter()
            .find(|event_type| event_type.as_str() == text)
            .ok_or_else(|| UnknownEventType(echo(text)))
    }
}

impl Serialize for EventType {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Reads the type of a stored record (an action's, an event's): palworker's
/// own types included, see [`EventType::parse_stored`].
impl<'de> Deserialize<'de> for EventType {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        EventType::parse_stored(&text).map_err(D::Error::custom)
    }
}
