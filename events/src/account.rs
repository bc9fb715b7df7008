//! Accounts (one partner identity in one customer tenant), their key, the
//! link palworker wants them to have, and parsing of inventory import files.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::{ContractId, CredentialName, EmployeeId, ObjectId, PartnerId, TenantId};

mod import;

pub use import::{
    ImportError, ImportedAccount, parse_accounts_csv, parse_accounts_jsonl, parse_import,
    parse_import_csv, parse_import_jsonl,
};

/// What identifies an account in the inventory: the identity's object ID in
/// one customer tenant. Orders by tenant first, so tenant-prefixed storage
/// keys (SPEC §10) sort naturally.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AccountKey {
    /// Customer tenant.
    pub tenant_id: TenantId,
    /// The identity's object ID in that tenant.
    pub object_id: ObjectId,
}

impl AccountKey {
    /// The key of the identity `object_id` in `tenant_id`.
    pub fn new(tenant_id: TenantId, object_id: ObjectId) -> Self {
        AccountKey {
            tenant_id,
            object_id,
        }
    }
}

/// `tenant_id/object_id`, both lower-case.
impl fmt::Display for AccountKey {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}/{}", self.tenant_id, self.object_id)
    }
}

/// One partner identity in one customer tenant (SPEC §2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// Customer tenant.
    pub tenant_id: TenantId,
    /// The identity's object ID in that tenant.
    pub object_id: ObjectId,
    /// Employee who owns the identity.
    pub employee_id: EmployeeId,
    /// Configured credential that obtains tokens as this identity; `None`
    /// means the worker cannot change its link (actions end `manual`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<CredentialName>,
    /// Contract the account is assigned under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contract_id: Option<ContractId>,
}

impl Account {
    /// The inventory key of this account.
    pub fn key(&self) -> AccountKey {
        AccountKey::new(self.tenant_id.clone(), self.object_id.clone())
    }
}

/// The link an account should have, derived from the events applied so far.
///
/// Serialises as `{"state":"absent"}` or
/// `{"state":"linked","partner_id":"4512345"}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "state", content = "partner_id", rename_all = "snake_case")]
pub enum DesiredLink {
    /// No partner ID should be linked.
    Absent,
    /// This partner ID should be linked.
    Linked(PartnerId),
}

impl DesiredLink {
    /// The partner ID to link, if any.
    pub fn partner_id(&self) -> Option<&PartnerId> {
        match self {
            DesiredLink::Absent => None,
            DesiredLink::Linked(partner_id) => Some(partner_id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
    const OBJECT: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";

    #[test]
    fn account_key_displays_as_tenant_slash_object_lower_case() {
        let key = AccountKey::new(
            TenantId::parse(&TENANT.to_uppercase()).unwrap(),
            ObjectId::parse(OBJECT).unwrap(),
        );
        assert_eq!(key.to_string(), format!("{TENANT}/{OBJECT}"));
    }

    #[test]
    fn account_serde_omits_absent_optionals_and_validates_on_load() {
        let account = Account {
            tenant_id: TenantId::parse(TENANT).unwrap(),
            object_id: ObjectId::parse(OBJECT).unwrap(),
            employee_id: EmployeeId::parse("E-1").unwrap(),
            credential: None,
            contract_id: Some(ContractId::parse("C-7").unwrap()),
        };
        let value = serde_json::to_value(&account).unwrap();
        assert_eq!(
            value,
            json!({"tenant_id": TENANT, "object_id": OBJECT, "employee_id": "E-1", "contract_id": "C-7"})
        );
        assert_eq!(serde_json::from_value::<Account>(value).unwrap(), account);
        assert_eq!(
            account.key(),
            AccountKey::new(account.tenant_id.clone(), account.object_id.clone())
        );

        let corrupted = json!({"tenant_id": "nope", "object_id": OBJECT, "employee_id": "E-1"});
        assert!(serde_json::from_value::<Account>(corrupted).is_err());
    }

    #[test]
    fn desired_link_serialises_with_a_state_tag() {
        let linked = DesiredLink::Linked(PartnerId::parse("4512345").unwrap());
        assert_eq!(
            serde_json::to_value(&linked).unwrap(),
            json!({"state": "linked", "partner_id": "4512345"})
        );
        assert_eq!(
            serde_json::to_value(DesiredLink::Absent).unwrap(),
            json!({"state": "absent"})
        );
        for link in [linked.clone(), DesiredLink::Absent] {
            let text = serde_json::to_string(&link).unwrap();
            assert_eq!(serde_json::from_str::<DesiredLink>(&text).unwrap(), link);
        }
        assert_eq!(linked.partner_id().map(PartnerId::as_str), Some("4512345"));
        assert_eq!(DesiredLink::Absent.partner_id(), None);
    }
}
