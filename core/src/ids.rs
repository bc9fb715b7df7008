//! The identifiers the ledger hands out.
//!
//! An [`ActionId`] and an [`EventSeq`] are both 64-bit numbers drawn from
//! one sequence; their types keep one from being passed where the other is
//! meant. They serialise as plain numbers (`"action_id": 42`) and sort, in
//! their big-endian byte form, in the order they were handed out, which is
//! what the ledger's keys rely on.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

macro_rules! sequence_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(u64);

        impl $name {
            /// The identifier with this number.
            pub const fn new(value: u64) -> Self {
                $name(value)
            }

            /// Its number.
            pub const fn get(self) -> u64 {
                self.0
            }

            /// Its big-endian bytes: keys in this form sort in issue order.
            pub const fn to_be_bytes(self) -> [u8; 8] {
                self.0.to_be_bytes()
            }

            /// The identifier whose big-endian bytes these are.
            pub const fn from_be_bytes(bytes: [u8; 8]) -> Self {
                $name(u64::from_be_bytes(bytes))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = String;

            fn from_str(text: &str) -> Result<Self, Self::Err> {
                text.trim()
                    .parse()
                    .map($name)
                    .map_err(|_| format!("`{text}` is not {} (a whole number)", $what))
            }
        }
    };
}

sequence_id!(
    /// One action: one reconciliation of one account towards its desired link.
    ActionId,
    "an action id"
);

sequence_id!(
    /// An accepted event, in acceptance order.
    EventSeq,
    "an event sequence number"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_keep_their_order_in_byte_form_and_parse_from_text() {
        let (small, large) = (ActionId::new(255), ActionId::new(256));
        assert!(small.to_be_bytes() < large.to_be_bytes());
        assert_eq!(ActionId::from_be_bytes(large.to_be_bytes()), large);
        assert_eq!(" 42".parse::<ActionId>(), Ok(ActionId::new(42)));
        assert!(
            "4x".parse::<EventSeq>()
                .unwrap_err()
                .contains("whole number")
        );
        assert_eq!(serde_json::to_string(&EventSeq::new(7)).unwrap(), "7");
    }
}
