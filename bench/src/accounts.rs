//! The accounts, identities and events of the scenarios. Account sets never
//! share an identity: set `s` uses the employees from `s × SET_SIZE` on, each
//! an employee of `palworker::local::identities` with one service principal
//! and an identity in every tenant.

use palworker::local::{ServicePrincipal, events, identities};
use palworker_events::{Account, CredentialName, EmployeeId, Event, ObjectId, TenantId};
use serde_json::Value;

/// Employees per account set.
const SET_SIZE: usize = 1 << 20;

pub const SET_INGEST: u8 = 0x01;
pub const SET_EXECUTION: u8 = 0x02;
pub const SET_FANOUT: u8 = 0x03;
pub const SET_FINISHED: u8 = 0x04;
pub const SET_PENDING: u8 = 0x05;
pub const SET_RECONCILE: u8 = 0x06;

/// The employee number of account `index` of a set.
fn employee(set: u8, index: u64) -> usize {
    usize::from(set) * SET_SIZE + index as usize
}

/// Tenant `t`.
pub fn tenant(t: u64) -> String {
    identities::tenant(t as usize)
}

/// The identity of account `index` of a set in tenant `t`.
pub fn object(set: u8, t: u64, index: u64) -> String {
    identities::object(employee(set, index), t as usize)
}

/// The credential of account `index` of a set (one per index, an identity in every tenant).
pub fn credential(set: u8, index: u64) -> String {
    identities::credential(employee(set, index))
}

/// `per_tenant` principals: principal `p` holds the identity
/// `object(set, t, p)` in every tenant `t`.
pub fn principals(set: u8, tenants: u64, per_tenant: u64) -> Vec<ServicePrincipal> {
    (0..per_tenant)
        .map(|p| identities::principal(employee(set, p), tenants as usize))
        .collect()
}

/// `project.assignment.started` of account `index` of a set in tenant `t`.
pub fn assignment_event(id: &str, set: u8, t: u64, index: u64, partner: &str) -> Value {
    events::assignment_started(
        id,
        &identities::employee(employee(set, index)),
        &tenant(t),
        &object(set, t, index),
        partner,
        Some(&credential(set, index)),
        None,
    )
}

/// One `project.assignment.started` message (routing key, body) per
/// account `(t, index)` of a set, linking it to `partner`; CloudEvent ids
/// `{prefix}-{t}-{index}`.
pub fn assignment_messages(
    prefix: &str,
    set: u8,
    accounts: &[(u64, u64)],
    partner: &str,
) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    accounts
        .iter()
        .map(|&(t, index)| {
            let event = assignment_event(&format!("{prefix}-{t}-{index}"), set, t, index, partner);
            Ok((
                "project.assignment.started".to_owned(),
                serde_json::to_vec(&event)?,
            ))
        })
        .collect()
}

/// Pads `event` to `bytes` with a data field the worker ignores.
pub fn padded(mut event: Value, bytes: usize) -> anyhow::Result<Vec<u8>> {
    event["data"]["bench_padding"] = Value::String(String::new());
    let bare = serde_json::to_vec(&event)?.len();
    event["data"]["bench_padding"] = Value::String("x".repeat(bytes.saturating_sub(bare)));
    Ok(serde_json::to_vec(&event)?)
}

/// The inventory account of account `index` of a set in tenant `t`.
pub fn account(set: u8, t: u64, index: u64, credential: Option<&str>) -> anyhow::Result<Account> {
    Ok(Account {
        tenant_id: TenantId::parse(&tenant(t))?,
        object_id: ObjectId::parse(&object(set, t, index))?,
        employee_id: EmployeeId::parse(&identities::employee(employee(set, index)))?,
        credential: credential.map(CredentialName::parse).transpose()?,
        contract_id: None,
    })
}

pub fn parse_event(value: &Value) -> anyhow::Result<Event> {
    Ok(Event::from_json_slice(&serde_json::to_vec(value)?)?)
}
