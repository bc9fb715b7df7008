//! Generated identities for tests and benchmarks: tenant `t`, employee `e`,
//! the object ID of employee `e`'s service principal in tenant `t`, and one
//! service principal per employee with an identity in each tenant, and the
//! event that assigns one of them.

use super::{ServicePrincipal, events};

/// Tenant number `t` (a GUID).
pub fn tenant(t: usize) -> String {
    format!("a0000000-0000-4000-8000-{t:012x}")
}

/// The object ID of employee `e`'s service principal in tenant `t`.
pub fn object(e: usize, t: usize) -> String {
    format!("b{e:07x}-{t:04x}-4000-8000-000000000000")
}

/// Employee number `e`.
pub fn employee(e: usize) -> String {
    format!("E-{e}")
}

/// The credential name of employee `e`'s service principal.
pub fn credential(e: usize) -> String {
    format!("sp-{e}")
}

/// Employee `e`'s service principal (`sp-{e}`), with an identity in each of
/// the first `tenants` tenants.
pub fn principal(e: usize, tenants: usize) -> ServicePrincipal {
    ServicePrincipal {
        credential: credential(e),
        client_id: format!("c{e:07x}-0000-4000-8000-000000000000"),
        identities: (0..tenants).map(|t| (tenant(t), object(e, t))).collect(),
    }
}

/// One service principal per employee `0..employees` (see [`principal`]).
pub fn principals(employees: usize, tenants: usize) -> Vec<ServicePrincipal> {
    (0..employees).map(|e| principal(e, tenants)).collect()
}

/// `project.assignment.started` (CloudEvent id `id`) of employee `e` in
/// tenant `t` with `partner`, through the employee's own credential.
pub fn assignment(id: &str, e: usize, t: usize, partner: &str) -> serde_json::Value {
    events::assignment_started(
        id,
        &employee(e),
        &tenant(t),
        &object(e, t),
        partner,
        Some(&credential(e)),
        None,
    )
}

#[cfg(test)]
mod tests {
    use palworker_events::{ObjectId, TenantId};

    use super::*;

    #[test]
    fn generated_identities_are_valid_and_distinct() {
        assert!(TenantId::parse(&tenant(0xfff)).is_ok());
        assert!(ObjectId::parse(&object(0xfff_ffff, 0xffff)).is_ok());
        assert_ne!(object(1, 2), object(2, 1));
        let principals = principals(3, 2);
        assert_eq!(principals[2].identities[1], (tenant(1), object(2, 1)));
    }
}
