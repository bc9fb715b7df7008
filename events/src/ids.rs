//! Identifier newtypes.
//!
//! Every identifier palworker handles is parsed once, at the edge, into one of
//! these types. Their fields are private and the only constructors are
//! fallible, so a value of type `TenantId` *is* a valid, normalised tenant ID
//! and nothing downstream re-checks it.
//!
//! All of them serialise as a plain string and deserialise through `parse`, so
//! a corrupted ledger record or import file cannot smuggle in an invalid ID.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize, Serializer};

/// Longest employee ID, contract ID or credential name, in characters.
pub const MAX_TEXT_ID_CHARS: usize = 128;

/// Longest partner ID, in digits.
pub const MAX_PARTNER_ID_DIGITS: usize = 10;

/// Why a string is not a valid identifier.
///
/// The messages are written to follow a field name ("tenant_id: is not a
/// GUID"), which is how every caller prints them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum IdError {
    /// Not of the form `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (hexadecimal digits).
    #[error("is not a GUID")]
    NotGuid,
    /// A partner ID is not 1 to 10 ASCII digits.
    #[error("must be 1 to 10 ASCII digits")]
    NotPartnerId,
    /// A text identifier is the empty string.
    #[error("must not be empty")]
    Empty,
    /// A text identifier has more than [`MAX_TEXT_ID_CHARS`] characters.
    #[error("is longer than 128 characters")]
    TooLong,
    /// A text identifier contains a control character (C0, DEL or C1).
    #[error("contains a control character")]
    ControlCharacter,
}

/// Checks the 8-4-4-4-12 hexadecimal GUID shape and returns it lower-cased,
/// which is the form palworker stores and compares.
fn normalise_guid(text: &str) -> Result<String, IdError> {
    let bytes = text.as_bytes();
    if bytes.len() != 36 {
        return Err(IdError::NotGuid);
    }
    for (index, byte) in bytes.iter().enumerate() {
        let well_placed = match index {
            8 | 13 | 18 | 23 => *byte == b'-',
            _ => byte.is_ascii_hexdigit(),
        };
        if !well_placed {
            return Err(IdError::NotGuid);
        }
    }
    Ok(text.to_ascii_lowercase())
}

fn normalise_partner_id(text: &str) -> Result<String, IdError> {
    if text.is_empty()
        || text.len() > MAX_PARTNER_ID_DIGITS
        || !text.bytes().all(|byte| byte.is_ascii_digit())
    {
        return Err(IdError::NotPartnerId);
    }
    Ok(text.to_owned())
}

/// Employee IDs, contract IDs and credential names: kept verbatim (they are
/// compared case-sensitively), but bounded and free of control characters so
/// they are safe in logs, metrics and headers.
fn normalise_text_id(text: &str) -> Result<String, IdError> {
    if text.is_empty() {
        return Err(IdError::Empty);
    }
    if text.chars().count() > MAX_TEXT_ID_CHARS {
        return Err(IdError::TooLong);
    }
    if text.chars().any(char::is_control) {
        return Err(IdError::ControlCharacter);
    }
    Ok(text.to_owned())
}

macro_rules! identifier {
    ($(#[$meta:meta])* $name:ident, $normalise:path) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
        #[serde(try_from = "String")]
        pub struct $name(String);

        impl $name {
            /// Parses and normalises `text`, or says why it is not valid.
            pub fn parse(text: &str) -> Result<Self, IdError> {
                $normalise(text).map(Self)
            }

            /// The normalised identifier.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The normalised identifier, by value.
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = IdError;

            fn from_str(text: &str) -> Result<Self, IdError> {
                Self::parse(text)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;

            fn try_from(text: String) -> Result<Self, IdError> {
                Self::parse(&text)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = IdError;

            fn try_from(text: &str) -> Result<Self, IdError> {
                Self::parse(text)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }
    };
}

identifier!(
    /// A customer tenant (Microsoft Entra directory) ID: a GUID, compared
    /// case-insensitively and stored lower-case.
    TenantId,
    normalise_guid
);

identifier!(
    /// The object ID of a user or service principal inside one tenant: a GUID,
    /// compared case-insensitively and stored lower-case.
    ObjectId,
    normalise_guid
);

identifier!(
    /// A partner ID (the "Associated Partner ID", formerly MPN ID): 1 to 10
    /// ASCII digits, kept verbatim (leading zeros are significant).
    PartnerId,
    normalise_partner_id
);

identifier!(
    /// The HR system's ID of an employee: non-empty, at most 128 characters,
    /// no control characters, compared case-sensitively.
    EmployeeId,
    normalise_text_id
);

identifier!(
    /// A customer contract or project ID: same rules as [`EmployeeId`].
    ContractId,
    normalise_text_id
);

identifier!(
    /// The name of a credential configured in the worker (`[credentials.NAME]`)
    /// that obtains tokens as one identity: same rules as [`EmployeeId`].
    CredentialName,
    normalise_text_id
);

#[cfg(test)]
mod tests {
    use super::*;

    const GUID: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";

    #[test]
    fn guid_identifiers_accept_the_8_4_4_4_12_shape_and_store_lower_case() {
        let cases: &[(&str, Result<&str, IdError>)] = &[
            (GUID, Ok(GUID)),
            (
                "0F8FAD5B-D9CB-469F-A165-70867728950E",
                Ok("0f8fad5b-d9cb-469f-a165-70867728950e"),
            ),
            (
                "0f8FaD5b-d9cb-469f-A165-70867728950e",
                Ok("0f8fad5b-d9cb-469f-a165-70867728950e"),
            ),
            (
                "00000000-0000-0000-0000-000000000000",
                Ok("00000000-0000-0000-0000-000000000000"),
            ),
            ("", Err(IdError::NotGuid)),
            ("0f8fad5b", Err(IdError::NotGuid)),
            (
                "{0f8fad5b-d9cb-469f-a165-70867728950e}",
                Err(IdError::NotGuid),
            ),
            ("0f8fad5bd9cb469fa16570867728950e", Err(IdError::NotGuid)),
            ("0f8fad5b-d9cb-469f-a165-70867728950", Err(IdError::NotGuid)),
            (
                "0f8fad5b-d9cb-469f-a165-70867728950e0",
                Err(IdError::NotGuid),
            ),
            (
                "0f8fad5g-d9cb-469f-a165-70867728950e",
                Err(IdError::NotGuid),
            ),
            (
                "0f8fad5b_d9cb-469f-a165-70867728950e",
                Err(IdError::NotGuid),
            ),
            (
                "0f8fad5-bd9cb-469f-a165-70867728950e",
                Err(IdError::NotGuid),
            ),
            (
                " 0f8fad5b-d9cb-469f-a165-70867728950e",
                Err(IdError::NotGuid),
            ),
            // 36 bytes, but not ASCII: must not panic on a char boundary.
            ("0f8fad5b-d9cb-469f-a165-7086772895é", Err(IdError::NotGuid)),
        ];
        for (input, expected) in cases {
            let tenant = TenantId::parse(input);
            assert_eq!(
                tenant.as_ref().map(TenantId::as_str).map_err(|e| *e),
                *expected,
                "TenantId::parse({input:?})"
            );
            let object = ObjectId::parse(input);
            assert_eq!(
                object.as_ref().map(ObjectId::as_str).map_err(|e| *e),
                *expected,
                "ObjectId::parse({input:?})"
            );
        }
    }

    #[test]
    fn guids_differing_only_in_case_are_equal_and_hash_alike() {
        use std::collections::HashSet;
        let upper = TenantId::parse(&GUID.to_uppercase()).unwrap();
        let lower = TenantId::parse(GUID).unwrap();
        assert_eq!(upper, lower);
        let set: HashSet<TenantId> = [upper, lower].into_iter().collect();
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn partner_ids_are_1_to_10_ascii_digits() {
        let cases: &[(&str, Result<&str, IdError>)] = &[
            ("1", Ok("1")),
            ("4512345", Ok("4512345")),
            ("0012345", Ok("0012345")),
            ("1234567890", Ok("1234567890")),
            ("", Err(IdError::NotPartnerId)),
            ("12345678901", Err(IdError::NotPartnerId)),
            ("45x2345", Err(IdError::NotPartnerId)),
            ("-12", Err(IdError::NotPartnerId)),
            ("+12", Err(IdError::NotPartnerId)),
            (" 12", Err(IdError::NotPartnerId)),
            ("1.5", Err(IdError::NotPartnerId)),
            // Non-ASCII digits (Arabic-Indic) are not partner IDs.
            ("١٢٣", Err(IdError::NotPartnerId)),
        ];
        for (input, expected) in cases {
            let parsed = PartnerId::parse(input);
            assert_eq!(
                parsed.as_ref().map(PartnerId::as_str).map_err(|e| *e),
                *expected,
                "PartnerId::parse({input:?})"
            );
        }
    }

    #[test]
    fn text_identifiers_are_non_empty_bounded_and_free_of_control_characters() {
        let longest = "x".repeat(128);
        let too_long = "x".repeat(129);
        // 128 characters but 256 bytes: the limit counts characters.
        let longest_multibyte = "é".repeat(128);
        let cases: Vec<(&str, Result<&str, IdError>)> = vec![
            ("E-10442", Ok("E-10442")),
            ("e-10442", Ok("e-10442")),
            ("Jürgen Müller", Ok("Jürgen Müller")),
            (" padded ", Ok(" padded ")),
            (&longest, Ok(&longest)),
            (&longest_multibyte, Ok(&longest_multibyte)),
            ("", Err(IdError::Empty)),
            (&too_long, Err(IdError::TooLong)),
            ("E-1\n", Err(IdError::ControlCharacter)),
            ("E\u{0}1", Err(IdError::ControlCharacter)),
            ("E\t1", Err(IdError::ControlCharacter)),
            ("E\u{7f}1", Err(IdError::ControlCharacter)),
            ("E\u{85}1", Err(IdError::ControlCharacter)),
        ];
        for (input, expected) in &cases {
            for (kind, parsed) in [
                ("EmployeeId", EmployeeId::parse(input).map(String::from)),
                ("ContractId", ContractId::parse(input).map(String::from)),
                (
                    "CredentialName",
                    CredentialName::parse(input).map(String::from),
                ),
            ] {
                assert_eq!(
                    parsed.as_deref(),
                    expected.as_ref().map(|s| *s),
                    "{kind}::parse({input:?})"
                );
            }
        }
    }

    #[test]
    fn text_identifiers_are_case_sensitive() {
        assert_ne!(
            EmployeeId::parse("E-1").unwrap(),
            EmployeeId::parse("e-1").unwrap()
        );
    }

    #[test]
    fn id_errors_read_well_after_a_field_name() {
        let cases = [
            (IdError::NotGuid, "is not a GUID"),
            (IdError::NotPartnerId, "must be 1 to 10 ASCII digits"),
            (IdError::Empty, "must not be empty"),
            (IdError::TooLong, "is longer than 128 characters"),
            (IdError::ControlCharacter, "contains a control character"),
        ];
        for (error, expected) in cases {
            assert_eq!(error.to_string(), expected);
        }
    }

    #[test]
    fn identifiers_serialise_as_plain_strings() {
        let tenant = TenantId::parse(&GUID.to_uppercase()).unwrap();
        assert_eq!(
            serde_json::to_string(&tenant).unwrap(),
            format!("\"{GUID}\"")
        );
        let partner = PartnerId::parse("0042").unwrap();
        assert_eq!(serde_json::to_string(&partner).unwrap(), "\"0042\"");
        assert_eq!(tenant.to_string(), GUID);
    }

    #[test]
    fn deserialisation_validates_and_normalises() {
        let tenant: TenantId =
            serde_json::from_str(&format!("\"{}\"", GUID.to_uppercase())).unwrap();
        assert_eq!(tenant.as_str(), GUID);

        let error = serde_json::from_str::<TenantId>("\"not-a-guid\"").unwrap_err();
        assert!(error.to_string().contains("is not a GUID"), "{error}");
        let error = serde_json::from_str::<PartnerId>("\"12345678901\"").unwrap_err();
        assert!(
            error.to_string().contains("must be 1 to 10 ASCII digits"),
            "{error}"
        );
        let error = serde_json::from_str::<EmployeeId>("\"\"").unwrap_err();
        assert!(error.to_string().contains("must not be empty"), "{error}");
        // A number is not an identifier, even for partner IDs.
        assert!(serde_json::from_str::<PartnerId>("12345").is_err());
    }

    #[test]
    fn conversions_agree_with_parse() {
        assert_eq!("E-1".parse::<EmployeeId>(), EmployeeId::parse("E-1"));
        assert_eq!(
            ContractId::try_from(String::from("C-9")),
            ContractId::parse("C-9")
        );
        assert_eq!(CredentialName::try_from(""), Err(IdError::Empty));
        assert_eq!(
            String::from(PartnerId::parse("7").unwrap()),
            String::from("7")
        );
        assert_eq!(ObjectId::parse(GUID).unwrap().into_string(), GUID);
    }
}
