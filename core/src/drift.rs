//! Drift (SPEC §11.3): how an account's link in PAL differs from its
//! desired link, what a reconcile reports of each account, and what it
//! found in all.
//!
//! Comparing is pure: the worker reads PAL and hands the link it saw to
//! [`DriftKind::of`]; a difference becomes an action through
//! [`crate::planner::reconcile_change`].

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use palworker_events::{DesiredLink, EmployeeId, ObjectId, PartnerId, TenantId};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::model::Op;

/// How PAL differs from the desired link (`palworker_drift_total{kind}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DriftKind {
    /// Desired linked; PAL shows no link.
    Missing,
    /// Desired without a link; PAL shows one.
    Unexpected,
    /// PAL shows a link to another partner ID than the desired one.
    Different,
}

impl DriftKind {
    pub const ALL: [DriftKind; 3] = [
        DriftKind::Missing,
        DriftKind::Unexpected,
        DriftKind::Different,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DriftKind::Missing => "missing",
            DriftKind::Unexpected => "unexpected",
            DriftKind::Different => "different",
        }
    }

    /// The difference between `desired` and the link PAL showed (`actual`:
    /// the partner ID of its active link, `None` for no link), if any.
    pub fn of(desired: &DesiredLink, actual: Option<&PartnerId>) -> Option<DriftKind> {
        match (desired, actual) {
            (DesiredLink::Linked(_), None) => Some(DriftKind::Missing),
            (DesiredLink::Absent, Some(_)) => Some(DriftKind::Unexpected),
            (DesiredLink::Linked(wanted), Some(seen)) if wanted != seen => {
                Some(DriftKind::Different)
            }
            _ => None,
        }
    }

    /// The kind of action that fixes it: a PUT, a DELETE or a PATCH.
    pub fn op(self) -> Op {
        match self {
            DriftKind::Missing => Op::Link,
            DriftKind::Unexpected => Op::Remove,
            DriftKind::Different => Op::Update,
        }
    }
}

/// What a reconcile says of one account: a difference, or why it could not
/// tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FindingKind {
    Drift(DriftKind),
    /// The account has no credential: only its own identity can read (and
    /// change) its link, so palworker cannot compare.
    Manual,
    /// Reading PAL failed (token, identity check, throttling, an error
    /// answer); `error` says why.
    Unreadable,
}

impl FindingKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FindingKind::Drift(kind) => kind.as_str(),
            FindingKind::Manual => "manual",
            FindingKind::Unreadable => "unreadable",
        }
    }

    /// The difference, if this is one.
    pub fn drift(self) -> Option<DriftKind> {
        match self {
            FindingKind::Drift(kind) => Some(kind),
            FindingKind::Manual | FindingKind::Unreadable => None,
        }
    }
}

impl fmt::Display for FindingKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no [`FindingKind`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown finding kind `{0}`")]
pub struct UnknownFindingKind(String);

impl FromStr for FindingKind {
    type Err = UnknownFindingKind;

    fn from_str(text: &str) -> Result<Self, UnknownFindingKind> {
        DriftKind::ALL
            .into_iter()
            .map(FindingKind::Drift)
            .chain([FindingKind::Manual, FindingKind::Unreadable])
            .find(|kind| kind.as_str() == text)
            .ok_or_else(|| UnknownFindingKind(text.chars().take(40).collect()))
    }
}

impl Serialize for FindingKind {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for FindingKind {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// One line of `palworker reconcile` (and of `--dry-run`, SPEC §11.3): an
/// account whose link differs, or that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub tenant_id: TenantId,
    pub object_id: ObjectId,
    pub employee_id: EmployeeId,
    /// The desired partner ID (`null`: no link).
    pub desired: Option<PartnerId>,
    /// The partner ID of PAL's active link (`null`: no link, or not read).
    pub actual: Option<PartnerId>,
    pub kind: FindingKind,
    /// Why PAL could not be read (`unreadable` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What one reconcile found and did, in all: its last line, and its
/// record in the audit trail.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconcileReport {
    /// The `palworker.reconcile` event whose actions fix the differences;
    /// `None` when nothing was planned (no difference, or a dry run).
    pub event_id: Option<String>,
    /// The tenant it was confined to (`--tenant`).
    pub tenant_id: Option<TenantId>,
    /// The employee it was confined to (`--employee`).
    pub employee_id: Option<EmployeeId>,
    /// A dry run: differences reported, nothing planned.
    pub dry_run: bool,
    /// Accounts in its scope.
    pub accounts: u64,
    /// Accounts whose link was read in PAL.
    pub read: u64,
    pub missing: u64,
    pub unexpected: u64,
    pub different: u64,
    /// Accounts without a credential: not read.
    pub manual: u64,
    /// Accounts whose link could not be read.
    pub unreadable: u64,
    /// Accounts with an unfinished action: not read (the action reads PAL
    /// itself and makes the link the desired one).
    pub busy: u64,
    /// Actions planned.
    pub actions: u64,
    /// Differences left out of the plan because an event targeted their
    /// account after PAL was read (its action reads PAL itself).
    pub superseded: u64,
    /// The plan has more than `limits.max_actions_per_event` actions: it
    /// waits for `palworker approve`.
    pub held: bool,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl ReconcileReport {
    /// Differences found: missing, unexpected and different.
    pub fn differences(&self) -> u64 {
        self.missing + self.unexpected + self.different
    }

    /// Counts one finding.
    pub fn count(&mut self, kind: FindingKind) {
        let counter = match kind {
            FindingKind::Drift(DriftKind::Missing) => &mut self.missing,
            FindingKind::Drift(DriftKind::Unexpected) => &mut self.unexpected,
            FindingKind::Drift(DriftKind::Different) => &mut self.different,
            FindingKind::Manual => &mut self.manual,
            FindingKind::Unreadable => &mut self.unreadable,
        };
        *counter += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partner(id: &str) -> PartnerId {
        PartnerId::parse(id).unwrap()
    }

    #[test]
    fn every_combination_of_desired_and_actual_has_its_kind() {
        let linked = DesiredLink::Linked(partner("111"));
        let cases = [
            (&linked, None, Some(DriftKind::Missing)),
            (&linked, Some(partner("111")), None),
            (&linked, Some(partner("222")), Some(DriftKind::Different)),
            (&DesiredLink::Absent, None, None),
            (
                &DesiredLink::Absent,
                Some(partner("111")),
                Some(DriftKind::Unexpected),
            ),
        ];
        for (desired, actual, expected) in cases {
            assert_eq!(
                DriftKind::of(desired, actual.as_ref()),
                expected,
                "{desired:?} vs {actual:?}"
            );
        }
        assert_eq!(DriftKind::Missing.op(), Op::Link);
        assert_eq!(DriftKind::Unexpected.op(), Op::Remove);
        assert_eq!(DriftKind::Different.op(), Op::Update);
    }

    #[test]
    fn finding_kinds_round_trip_through_their_names() {
        for kind in DriftKind::ALL
            .into_iter()
            .map(FindingKind::Drift)
            .chain([FindingKind::Manual, FindingKind::Unreadable])
        {
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
            assert_eq!(serde_json::from_str::<FindingKind>(&json).unwrap(), kind);
        }
        assert!("drifted".parse::<FindingKind>().is_err());
    }

    #[test]
    fn a_finding_line_has_the_fields_of_the_contract() {
        let line = Finding {
            tenant_id: TenantId::parse("11111111-1111-4111-8111-111111111111").unwrap(),
            object_id: ObjectId::parse("22222222-2222-4222-8222-222222222222").unwrap(),
            employee_id: EmployeeId::parse("E-1").unwrap(),
            desired: None,
            actual: Some(partner("111")),
            kind: FindingKind::Drift(DriftKind::Unexpected),
            error: None,
        };
        let json = serde_json::to_value(&line).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "tenant_id": "11111111-1111-4111-8111-111111111111",
                "object_id": "22222222-2222-4222-8222-222222222222",
                "employee_id": "E-1",
                "desired": null,
                "actual": "111",
                "kind": "unexpected",
            })
        );
        assert_eq!(serde_json::from_value::<Finding>(json).unwrap(), line);
    }
}
