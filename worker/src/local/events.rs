//! CloudEvent builders for the six event types (demo, tests, benchmarks).

use serde_json::{Value, json};

fn envelope(kind: &str, id: &str, data: Value) -> Value {
    json!({
        "specversion": "1.0",
        "id": id,
        "source": "urn:palworker:harness",
        "type": kind,
        "time": "2026-11-29T09:00:00Z",
        "datacontenttype": "application/json",
        "data": data,
    })
}

pub fn assignment_started(
    id: &str,
    employee: &str,
    tenant: &str,
    object: &str,
    partner: &str,
    credential: Option<&str>,
    contract: Option<&str>,
) -> Value {
    let mut data = json!({"employee_id": employee, "tenant_id": tenant, "object_id": object, "partner_id": partner});
    if let Some(credential) = credential {
        data["credential"] = json!(credential);
    }
    if let Some(contract) = contract {
        data["contract_id"] = json!(contract);
    }
    envelope("project.assignment.started", id, data)
}

pub fn assignment_ended(id: &str, employee: &str, tenant: &str) -> Value {
    envelope(
        "project.assignment.ended",
        id,
        json!({"employee_id": employee, "tenant_id": tenant}),
    )
}

pub fn contract_ended(id: &str, tenant: &str, contract: Option<&str>) -> Value {
    let mut data = json!({"tenant_id": tenant});
    if let Some(contract) = contract {
        data["contract_id"] = json!(contract);
    }
    envelope("project.contract.ended", id, data)
}

pub fn employee_departed(
    id: &str,
    employee: &str,
    successor: Option<&str>,
    effective_at: Option<&str>,
) -> Value {
    let mut data = json!({"employee_id": employee});
    if let Some(successor) = successor {
        data["successor_employee_id"] = json!(successor);
    }
    if let Some(at) = effective_at {
        data["effective_at"] = json!(at);
    }
    envelope("hr.employee.departed", id, data)
}

pub fn employee_transferred(id: &str, employee: &str, new_partner: &str) -> Value {
    envelope(
        "hr.employee.transferred",
        id,
        json!({"employee_id": employee, "new_partner_id": new_partner}),
    )
}

pub fn partner_id_changed(id: &str, old: &str, new: &str, tenants: Option<&[&str]>) -> Value {
    let mut data = json!({"old_partner_id": old, "new_partner_id": new});
    if let Some(tenants) = tenants {
        data["tenant_ids"] = json!(tenants);
    }
    envelope("partner.id.changed", id, data)
}
