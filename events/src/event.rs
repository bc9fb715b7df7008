//! The validated event: envelope attributes plus typed, per-type data.
//!
//! [`Event::from_json_slice`] is the one place where message bytes become an
//! [`Event`]. Everything after it works with newtypes and enums, never with
//! raw JSON.
//!
//! Forward compatibility: fields of `data` that palworker does not know are
//! ignored, so producers may add fields before palworker uses them; extension
//! attributes of the envelope are ignored too (their values must still be
//! CloudEvents strings, booleans or integers). Neither survives
//! [`Event::to_cloudevent_json`].

use chrono::{DateTime, Utc};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::envelope::{self, Admission, Envelope};
use crate::error::{Escaped, EventError, FieldProblem, MAX_MESSAGE_CHARS, echo_at_most, json_kind};
use crate::fields::{FromField, optional, required};
use crate::ids::{ContractId, CredentialName, EmployeeId, ObjectId, PartnerId, TenantId};

pub use crate::event_type::{EventType, UnknownEventType};

/// A validated palworker event.
///
/// `(source, id)` identifies an event for deduplication.
///
/// Serialises as the structured-mode CloudEvent of
/// [`Event::to_cloudevent_json`] and deserialises through the same validation
/// as [`Event::from_json_slice`], so a stored event is re-checked on load —
/// except for rules added after it may have been stored (an `id` with control
/// characters), so the ledger's records stay readable. Deserialise only what
/// palworker stored; messages go through [`Event::from_json_slice`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// CloudEvents `id`: 1 to 256 characters, without control characters
    /// (except in events stored before that rule; log it through
    /// [`Event::escaped_id`]).
    pub id: String,
    /// CloudEvents `source`: a non-empty URI-reference.
    pub source: String,
    /// CloudEvents `type`. Equals `data.event_type()` for every event this
    /// crate builds; [`Event::to_cloudevent_json`] writes `data.event_type()`,
    /// so a hand-built mismatch cannot publish fields under the wrong type.
    pub event_type: EventType,
    /// CloudEvents `time`, converted to UTC.
    pub time: DateTime<Utc>,
    /// The type-specific payload.
    pub data: EventData,
}

/// The validated `data` of each event type (SPEC §3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventData {
    /// `project.assignment.started`: the account joins the inventory and
    /// should be linked to `partner_id`.
    AssignmentStarted {
        /// Employee who owns the account.
        employee_id: EmployeeId,
        /// Customer tenant of the account.
        tenant_id: TenantId,
        /// Object ID of the identity in that tenant.
        object_id: ObjectId,
        /// Partner ID the account should be linked to.
        partner_id: PartnerId,
        /// Credential that obtains tokens as this identity; `None` means the
        /// worker cannot change the link itself (`manual`).
        credential: Option<CredentialName>,
        /// Contract the assignment belongs to.
        contract_id: Option<ContractId>,
    },
    /// `project.assignment.ended`: the employee's account in that tenant
    /// should be unlinked.
    AssignmentEnded {
        /// Employee whose assignment ended.
        employee_id: EmployeeId,
        /// Tenant of the assignment.
        tenant_id: TenantId,
        /// Contract the assignment belonged to.
        contract_id: Option<ContractId>,
    },
    /// `project.contract.ended`: accounts in the tenant (of that contract
    /// only, when given) should be unlinked.
    ContractEnded {
        /// Tenant of the contract.
        tenant_id: TenantId,
        /// The contract; `None` means every account in the tenant.
        contract_id: Option<ContractId>,
    },
    /// `hr.employee.departed`: every account of the employee should be
    /// unlinked, and the successor's accounts linked in its place.
    EmployeeDeparted {
        /// Employee who leaves.
        employee_id: EmployeeId,
        /// Employee who takes over; never equal to `employee_id`.
        successor_employee_id: Option<EmployeeId>,
        /// When the departure takes effect; `None` means now.
        effective_at: Option<DateTime<Utc>>,
    },
    /// `hr.employee.transferred`: every linked account of the employee
    /// should move to `new_partner_id`.
    EmployeeTransferred {
        /// Employee who moves.
        employee_id: EmployeeId,
        /// Partner ID the employee's accounts move to.
        new_partner_id: PartnerId,
        /// When the transfer takes effect; `None` means now.
        effective_at: Option<DateTime<Utc>>,
    },
    /// `partner.id.changed`: every account linked to `old_partner_id`
    /// should move to `new_partner_id`.
    PartnerIdChanged {
        /// Partner ID being replaced.
        old_partner_id: PartnerId,
        /// Replacement; never equal to `old_partner_id`.
        new_partner_id: PartnerId,
        /// Tenants the change is confined to: non-empty, without duplicates,
        /// in the order given; `None` means every tenant.
        tenant_ids: Option<Vec<TenantId>>,
    },
    /// `palworker.reconcile` (source `urn:palworker`): the differences one
    /// reconcile found between PAL and the desired links, planned as one
    /// event whose actions fix them (SPEC §11.3). Built by the worker, never
    /// accepted from a message; its actions come from PAL, not from the
    /// inventory, so the planner derives none from it.
    Reconcile {
        /// The tenant the reconcile read (`--tenant`); `None`: every tenant.
        tenant_id: Option<TenantId>,
        /// The employee whose accounts it read (`--employee`); `None`: everyone's.
        employee_id: Option<EmployeeId>,
        /// Accounts desired linked that PAL showed without a link.
        missing: u64,
        /// Accounts desired without a link that PAL showed linked.
        unexpected: u64,
        /// Accounts PAL showed linked to another partner ID than desired.
        different: u64,
    },
}

impl Event {
    /// Parses message bytes (a structured-mode CloudEvent 1.0 in JSON) into a
    /// validated event, or says precisely why it is not one.
    ///
    /// Checks run in a fixed order (JSON, specversion, id, source, type,
    /// time, datacontenttype, dataschema, subject, extensions, data, data
    /// fields in the order SPEC §3 lists them), so the same bad message
    /// always yields the same error.
    pub fn from_json_slice(bytes: &[u8]) -> Result<Event, EventError> {
        let value: Value =
            serde_json::from_slice(bytes).map_err(|error| EventError::InvalidJson {
                message: echo_at_most(&error.to_string(), MAX_MESSAGE_CHARS),
            })?;
        Event::from_json_value(value, Admission::Incoming)
    }

    fn from_json_value(value: Value, admission: Admission) -> Result<Event, EventError> {
        let envelope = Envelope::parse(value, admission)?;
        let data = EventData::from_json_object(envelope.event_type, &envelope.data)?;
        Ok(Event {
            id: envelope.id,
            source: envelope.source,
            event_type: envelope.event_type,
            time: envelope.time,
            data,
        })
    }

    /// The `id` for log lines and messages, control characters escaped: an
    /// event stored before they were refused may hold a line break or NUL.
    pub fn escaped_id(&self) -> Escaped<'_> {
        Escaped::new(&self.id)
    }

    /// When the event's actions may run; `None` (or an instant in the past)
    /// means now. Only departures and transfers carry `effective_at`.
    pub fn effective_at(&self) -> Option<DateTime<Utc>> {
        self.data.effective_at()
    }

    /// The structured-mode CloudEvent (`datacontenttype` `application/json`)
    /// for this event, as the CloudEvents SDK writes it. Feeding its bytes to
    /// [`Event::from_json_slice`] gives back an equal `Event`.
    pub fn to_cloudevent_json(&self) -> Value {
        envelope::to_cloudevent_json(
            &self.id,
            &self.source,
            self.data.event_type(),
            self.time,
            self.data.to_json_object(),
        )
    }

    /// The tenants this event is confined to, or `None` when it spans tenants
    /// (SPEC §10 routing: tenant-scoped events go to one partition, the others
    /// to every partition).
    pub fn tenant_scope(&self) -> Option<Vec<TenantId>> {
        self.data.tenant_scope()
    }
}

/// Writes the JSON of [`Event::to_cloudevent_json`] directly, attributes in
/// the same (sorted) order, without building the SDK's event and a `Value`
/// of it: the ledger stores every accepted event this way, and the SDK path
/// cost a tenth of storing one. A test holds the two byte for byte.
impl Serialize for Event {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(7))?;
        map.serialize_entry("data", &Value::Object(self.data.to_json_object()))?;
        map.serialize_entry("datacontenttype", envelope::JSON_CONTENT_TYPE)?;
        map.serialize_entry("id", &self.id)?;
        map.serialize_entry("source", &self.source)?;
        map.serialize_entry("specversion", envelope::SPEC_VERSION)?;
        map.serialize_entry("time", &self.time)?;
        map.serialize_entry("type", self.data.event_type().as_str())?;
        map.end()
    }
}

impl<'de> Deserialize<'de> for Event {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        Event::from_json_value(value, Admission::Stored).map_err(D::Error::custom)
    }
}

impl EventData {
    /// The event type this data belongs to.
    pub fn event_type(&self) -> EventType {
        match self {
            EventData::AssignmentStarted { .. } => EventType::AssignmentStarted,
            EventData::AssignmentEnded { .. } => EventType::AssignmentEnded,
            EventData::ContractEnded { .. } => EventType::ContractEnded,
            EventData::EmployeeDeparted { .. } => EventType::EmployeeDeparted,
            EventData::EmployeeTransferred { .. } => EventType::EmployeeTransferred,
            EventData::PartnerIdChanged { .. } => EventType::PartnerIdChanged,
            EventData::Reconcile { .. } => EventType::Reconcile,
        }
    }

    /// See [`Event::effective_at`].
    pub fn effective_at(&self) -> Option<DateTime<Utc>> {
        match self {
            EventData::EmployeeDeparted { effective_at, .. }
            | EventData::EmployeeTransferred { effective_at, .. } => *effective_at,
            _ => None,
        }
    }

    /// See [`Event::tenant_scope`].
    pub fn tenant_scope(&self) -> Option<Vec<TenantId>> {
        match self {
            EventData::AssignmentStarted { tenant_id, .. }
            | EventData::AssignmentEnded { tenant_id, .. }
            | EventData::ContractEnded { tenant_id, .. } => Some(vec![tenant_id.clone()]),
            EventData::EmployeeDeparted { .. } | EventData::EmployeeTransferred { .. } => None,
            EventData::PartnerIdChanged { tenant_ids, .. } => tenant_ids.clone(),
            EventData::Reconcile { tenant_id, .. } => tenant_id.clone().map(|t| vec![t]),
        }
    }

    /// Validates the `data` object of an event of type `event_type`. Unknown
    /// fields are ignored (forward compatibility); `null` counts as absent.
    fn from_json_object(
        event_type: EventType,
        data: &Map<String, Value>,
    ) -> Result<EventData, EventError> {
        let parsed = match event_type {
            EventType::AssignmentStarted => EventData::AssignmentStarted {
                employee_id: required(data, "employee_id")?,
                tenant_id: required(data, "tenant_id")?,
                object_id: required(data, "object_id")?,
                partner_id: required(data, "partner_id")?,
                credential: optional(data, "credential")?,
                contract_id: optional(data, "contract_id")?,
            },
            EventType::AssignmentEnded => EventData::AssignmentEnded {
                employee_id: required(data, "employee_id")?,
                tenant_id: required(data, "tenant_id")?,
                contract_id: optional(data, "contract_id")?,
            },
            EventType::ContractEnded => EventData::ContractEnded {
                tenant_id: required(data, "tenant_id")?,
                contract_id: optional(data, "contract_id")?,
            },
            EventType::EmployeeDeparted => {
                let employee_id: EmployeeId = required(data, "employee_id")?;
                let successor_employee_id: Option<EmployeeId> =
                    optional(data, "successor_employee_id")?;
                let effective_at = optional(data, "effective_at")?;
                if successor_employee_id.as_ref() == Some(&employee_id) {
                    return Err(EventError::InvalidField {
                        field: "successor_employee_id".to_owned(),
                        problem: FieldProblem::SameAs("employee_id"),
                    });
                }
                EventData::EmployeeDeparted {
                    employee_id,
                    successor_employee_id,
                    effective_at,
                }
            }
            EventType::EmployeeTransferred => EventData::EmployeeTransferred {
                employee_id: required(data, "employee_id")?,
                new_partner_id: required(data, "new_partner_id")?,
                effective_at: optional(data, "effective_at")?,
            },
            EventType::PartnerIdChanged => {
                let old_partner_id: PartnerId = required(data, "old_partner_id")?;
                let new_partner_id: PartnerId = required(data, "new_partner_id")?;
                if new_partner_id == old_partner_id {
                    return Err(EventError::InvalidField {
                        field: "new_partner_id".to_owned(),
                        problem: FieldProblem::SameAs("old_partner_id"),
                    });
                }
                EventData::PartnerIdChanged {
                    old_partner_id,
                    new_partner_id,
                    tenant_ids: tenant_ids(data)?,
                }
            }
            EventType::Reconcile => EventData::Reconcile {
                tenant_id: optional(data, "tenant_id")?,
                employee_id: optional(data, "employee_id")?,
                missing: required(data, "missing")?,
                unexpected: required(data, "unexpected")?,
                different: required(data, "different")?,
            },
        };
        Ok(parsed)
    }

    /// The `data` object of the CloudEvent; optional fields that are `None`
    /// are left out.
    fn to_json_object(&self) -> Map<String, Value> {
        let mut object = Map::new();
        let mut put = |field: &str, value: Option<&str>| {
            if let Some(value) = value {
                object.insert(field.to_owned(), Value::String(value.to_owned()));
            }
        };
        let time = |at: &Option<DateTime<Utc>>| {
            at.map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
        };
        match self {
            EventData::AssignmentStarted {
                employee_id,
                tenant_id,
                object_id,
                partner_id,
                credential,
                contract_id,
            } => {
                put("employee_id", Some(employee_id.as_str()));
                put("tenant_id", Some(tenant_id.as_str()));
                put("object_id", Some(object_id.as_str()));
                put("partner_id", Some(partner_id.as_str()));
                put(
                    "credential",
                    credential.as_ref().map(CredentialName::as_str),
                );
                put("contract_id", contract_id.as_ref().map(ContractId::as_str));
            }
            EventData::AssignmentEnded {
                employee_id,
                tenant_id,
                contract_id,
            } => {
                put("employee_id", Some(employee_id.as_str()));
                put("tenant_id", Some(tenant_id.as_str()));
                put("contract_id", contract_id.as_ref().map(ContractId::as_str));
            }
            EventData::ContractEnded {
                tenant_id,
                contract_id,
            } => {
                put("tenant_id", Some(tenant_id.as_str()));
                put("contract_id", contract_id.as_ref().map(ContractId::as_str));
            }
            EventData::EmployeeDeparted {
                employee_id,
                successor_employee_id,
                effective_at,
            } => {
                put("employee_id", Some(employee_id.as_str()));
                put(
                    "successor_employee_id",
                    successor_employee_id.as_ref().map(EmployeeId::as_str),
                );
                put("effective_at", time(effective_at).as_deref());
            }
            EventData::EmployeeTransferred {
                employee_id,
                new_partner_id,
                effective_at,
            } => {
                put("employee_id", Some(employee_id.as_str()));
                put("new_partner_id", Some(new_partner_id.as_str()));
                put("effective_at", time(effective_at).as_deref());
            }
            EventData::PartnerIdChanged {
                old_partner_id,
                new_partner_id,
                tenant_ids,
            } => {
                put("old_partner_id", Some(old_partner_id.as_str()));
                put("new_partner_id", Some(new_partner_id.as_str()));
                if let Some(tenant_ids) = tenant_ids {
                    let array = tenant_ids
                        .iter()
                        .map(|tenant| Value::String(tenant.as_str().to_owned()))
                        .collect();
                    object.insert("tenant_ids".to_owned(), Value::Array(array));
                }
            }
            EventData::Reconcile {
                tenant_id,
                employee_id,
                missing,
                unexpected,
                different,
            } => {
                put("tenant_id", tenant_id.as_ref().map(TenantId::as_str));
                put("employee_id", employee_id.as_ref().map(EmployeeId::as_str));
                for (field, count) in [
                    ("missing", missing),
                    ("unexpected", unexpected),
                    ("different", different),
                ] {
                    object.insert(field.to_owned(), Value::from(*count));
                }
            }
        }
        object
    }
}

/// `tenant_ids`: absent or null means every tenant; otherwise a non-empty
/// array of GUIDs. Duplicates (GUIDs compare case-insensitively) are dropped,
/// keeping the first occurrence.
fn tenant_ids(data: &Map<String, Value>) -> Result<Option<Vec<TenantId>>, EventError> {
    let invalid = |field: String, problem| EventError::InvalidField { field, problem };
    let elements = match data.get("tenant_ids") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(elements)) => elements,
        Some(_) => {
            return Err(invalid("tenant_ids".to_owned(), FieldProblem::NotAnArray));
        }
    };
    if elements.is_empty() {
        return Err(invalid("tenant_ids".to_owned(), FieldProblem::EmptyArray));
    }
    let mut tenants: Vec<TenantId> = Vec::with_capacity(elements.len());
    for (index, element) in elements.iter().enumerate() {
        let tenant = TenantId::from_field(element)
            .map_err(|problem| invalid(format!("tenant_ids[{index}]"), problem))?;
        if !tenants.contains(&tenant) {
            tenants.push(tenant);
        }
    }
    Ok(Some(tenants))
}

/// `EventData` serialises as its CloudEvent `data` object plus a `type` member
/// naming the event type, e.g.
/// `{"type":"partner.id.changed","old_partner_id":"1","new_partner_id":"2"}`,
/// and deserialises through the same validation as incoming events.
impl Serialize for EventData {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut object = self.to_json_object();
        object.insert(
            "type".to_owned(),
            Value::String(self.event_type().as_str().to_owned()),
        );
        object.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for EventData {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        let Value::Object(object) = value else {
            return Err(D::Error::custom(format!(
                "event data must be a JSON object, found {}",
                json_kind(&value)
            )));
        };
        let event_type = match object.get("type") {
            Some(Value::String(name)) => EventType::parse_stored(name).map_err(D::Error::custom)?,
            _ => return Err(D::Error::missing_field("type")),
        };
        EventData::from_json_object(event_type, &object).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_types_round_trip_through_their_names() {
        let names: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
        assert_eq!(
            names,
            [
                "project.assignment.started",
                "project.assignment.ended",
                "project.contract.ended",
                "hr.employee.departed",
                "hr.employee.transferred",
                "partner.id.changed",
            ]
        );
        for event_type in EventType::ALL {
            assert_eq!(event_type.as_str().parse::<EventType>(), Ok(event_type));
            assert_eq!(event_type.to_string(), event_type.as_str());
            let json = serde_json::to_string(&event_type).unwrap();
            assert_eq!(
                serde_json::from_str::<EventType>(&json).unwrap(),
                event_type
            );
        }
        assert!("hr.employee.promoted".parse::<EventType>().is_err());
        assert!("HR.EMPLOYEE.DEPARTED".parse::<EventType>().is_err());
    }

    #[test]
    fn a_hand_built_event_with_an_empty_source_publishes_without_panicking() {
        let event = Event {
            id: "1".to_owned(),
            source: String::new(),
            event_type: EventType::ContractEnded,
            time: DateTime::from_timestamp(1_795_942_800, 0).unwrap(),
            data: EventData::ContractEnded {
                tenant_id: TenantId::parse("72f988bf-86f1-41af-91ab-2d7cd011db47").unwrap(),
                contract_id: None,
            },
        };
        let bytes = serde_json::to_vec(&event.to_cloudevent_json()).unwrap();
        let error = Event::from_json_slice(&bytes).unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid_attribute: source: must not be empty"
        );
    }

    #[test]
    fn to_cloudevent_json_takes_the_type_from_the_data() {
        let event = Event {
            id: "1".to_owned(),
            source: "urn:test".to_owned(),
            // Deliberately inconsistent with `data`.
            event_type: EventType::EmployeeDeparted,
            time: DateTime::from_timestamp(1_795_942_800, 0).unwrap(),
            data: EventData::ContractEnded {
                tenant_id: TenantId::parse("72f988bf-86f1-41af-91ab-2d7cd011db47").unwrap(),
                contract_id: None,
            },
        };
        let cloudevent = event.to_cloudevent_json();
        assert_eq!(cloudevent["type"], "project.contract.ended");
        let parsed = Event::from_json_slice(&serde_json::to_vec(&cloudevent).unwrap()).unwrap();
        assert_eq!(parsed.event_type, EventType::ContractEnded);
        assert_eq!(parsed.data, event.data);
    }

    #[test]
    fn a_reconcile_event_is_read_back_from_the_ledger_but_never_accepted_from_a_message() {
        let event = Event {
            id: "reconcile-1".to_owned(),
            source: "urn:palworker".to_owned(),
            event_type: EventType::Reconcile,
            time: DateTime::from_timestamp(1_795_942_800, 0).unwrap(),
            data: EventData::Reconcile {
                tenant_id: Some(TenantId::parse("72f988bf-86f1-41af-91ab-2d7cd011db47").unwrap()),
                employee_id: None,
                missing: 2,
                unexpected: 0,
                different: 1,
            },
        };
        // Stored and read back (the ledger's way), palworker's own type included.
        let stored = serde_json::to_vec(&event).unwrap();
        let read: Event = serde_json::from_slice(&stored).unwrap();
        assert_eq!(read, event);
        assert_eq!(
            read.tenant_scope(),
            Some(vec![
                TenantId::parse("72f988bf-86f1-41af-91ab-2d7cd011db47").unwrap()
            ])
        );
        assert_eq!(
            serde_json::from_str::<EventType>("\"palworker.reconcile\"").unwrap(),
            EventType::Reconcile
        );
        // A message claiming the type is an unknown type, as is the name to `FromStr`.
        let error = Event::from_json_slice(&stored).unwrap_err();
        assert_eq!(error.reason(), crate::RejectReason::UnknownType);
        assert!("palworker.reconcile".parse::<EventType>().is_err());
        assert!(EventType::ALL.iter().all(|t| !t.is_internal()));
        // A count must be a non-negative integer.
        let mut bad = event.to_cloudevent_json();
        bad["data"]["missing"] = serde_json::json!(-1);
        let error = serde_json::from_value::<Event>(bad).unwrap_err();
        assert!(
            error.to_string().contains("must be a non-negative integer"),
            "{error}"
        );
    }

    #[test]
    fn event_data_rejects_a_type_member_that_is_missing_or_unknown() {
        let missing = serde_json::from_str::<EventData>(r#"{"tenant_id":"x"}"#).unwrap_err();
        assert!(
            missing.to_string().contains("missing field `type`"),
            "{missing}"
        );
        let unknown =
            serde_json::from_str::<EventData>(r#"{"type":"hr.employee.promoted"}"#).unwrap_err();
        assert!(
            unknown.to_string().contains("unknown event type"),
            "{unknown}"
        );
    }
}
