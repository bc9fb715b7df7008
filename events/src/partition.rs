//! Tenant partitions (SPEC §10): which partition owns a tenant, and which
//! partitions an event goes to.
//!
//! `partition_of(tenant) = FNV-1a 64-bit hash of the lower-case tenant GUID
//! text, mod N`. [`TenantId`] is already lower case, so the hash is over
//! its text. The function is part of the product contract — ledgers are
//! split by it and routers send by it — so it is pinned by fixed vectors
//! below and must never change. (Five lines of FNV-1a rather than a crate:
//! the `fnv` crate's `Hash for str` appends a 0xff byte, which is not the
//! documented function.)

use std::fmt;
use std::num::NonZeroU32;

use crate::event::Event;
use crate::ids::TenantId;

/// How many partitions the tenants are split into: at least 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PartitionCount(NonZeroU32);

/// One partition, `0 ..` its [`PartitionCount`]; shown as `p{i}`, its
/// routing key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PartitionIndex(u32);

/// A partition count of zero, or an index outside the count.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PartitionError {
    /// `count = 0`.
    #[error("the partition count must be at least 1")]
    ZeroCount,
    /// `index >= count`.
    #[error("partition index {index} is outside 0..{count}")]
    IndexOutOfRange {
        /// The index given.
        index: u32,
        /// The count it must be below.
        count: u32,
    },
}

/// FNV-1a, 64 bits, over `bytes`.
pub fn fnv1a_64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(PRIME)
    })
}

impl PartitionCount {
    /// One partition: the single process.
    pub const ONE: PartitionCount = PartitionCount(NonZeroU32::MIN);

    /// `count` partitions; zero is an error.
    pub fn new(count: u32) -> Result<PartitionCount, PartitionError> {
        NonZeroU32::new(count)
            .map(PartitionCount)
            .ok_or(PartitionError::ZeroCount)
    }

    /// The number of partitions.
    pub fn get(self) -> u32 {
        self.0.get()
    }

    /// Partition `index` of this many; an index outside is an error.
    pub fn index(self, index: u32) -> Result<PartitionIndex, PartitionError> {
        if index < self.get() {
            Ok(PartitionIndex(index))
        } else {
            Err(PartitionError::IndexOutOfRange {
                index,
                count: self.get(),
            })
        }
    }

    /// Every partition, in order.
    pub fn all(self) -> impl Iterator<Item = PartitionIndex> {
        (0..self.get()).map(PartitionIndex)
    }

    /// The partition that owns `tenant`.
    pub fn of(self, tenant: &TenantId) -> PartitionIndex {
        let hash = fnv1a_64(tenant.as_str().as_bytes());
        // The remainder is below the count, a u32.
        PartitionIndex((hash % u64::from(self.get())) as u32)
    }

    /// The partitions `event` goes to, in order, each once: the partitions
    /// of its tenants when it is confined to some, else every partition
    /// (a departure, a transfer, a partner-id change without `tenant_ids`).
    pub fn of_event(self, event: &Event) -> Vec<PartitionIndex> {
        match event.tenant_scope() {
            None => self.all().collect(),
            Some(tenants) => {
                let mut partitions: Vec<PartitionIndex> =
                    tenants.iter().map(|tenant| self.of(tenant)).collect();
                partitions.sort_unstable();
                partitions.dedup();
                partitions
            }
        }
    }
}

impl Default for PartitionCount {
    fn default() -> Self {
        PartitionCount::ONE
    }
}

impl fmt::Display for PartitionCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.get())
    }
}

impl PartitionIndex {
    /// The index as a number.
    pub fn get(self) -> u32 {
        self.0
    }

    /// The routing key of the partition's queue binding, `p{i}`.
    pub fn routing_key(self) -> String {
        self.to_string()
    }
}

impl fmt::Display for PartitionIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "p{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(text: &str) -> TenantId {
        TenantId::parse(text).expect("a valid tenant id")
    }

    #[test]
    fn fnv1a_64_matches_the_published_vectors() {
        // From the FNV reference (Fowler, Noll, Vo): offset basis, "a", "foobar".
        assert_eq!(fnv1a_64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a_64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a_64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    /// Fixed vectors: (tenant, hash, partition of 2, of 3, of 12). If one
    /// of these changes, every partitioned ledger is split wrongly.
    const VECTORS: [(&str, u64, u32, u32, u32); 4] = [
        (
            "00000000-0000-0000-0000-000000000000",
            0x7c38_4c62_18f2_99f1,
            1,
            0,
            9,
        ),
        (
            "72f988bf-86f1-41af-91ab-2d7cd011db47",
            0x587a_9f4f_0c3b_d4ea,
            0,
            2,
            2,
        ),
        (
            "11111111-2222-3333-4444-555555555555",
            0x5ff5_6bf0_5c1d_58f9,
            1,
            2,
            5,
        ),
        (
            "ffffffff-ffff-ffff-ffff-ffffffffffff",
            0x7718_f1b2_f3cd_d331,
            1,
            1,
            1,
        ),
    ];

    #[test]
    fn partition_of_is_pinned_by_fixed_vectors() {
        for (text, hash, of_2, of_3, of_12) in VECTORS {
            assert_eq!(fnv1a_64(text.as_bytes()), hash, "{text}");
            let tenant = tenant(text);
            for (count, expected) in [(1, 0), (2, of_2), (3, of_3), (12, of_12)] {
                let count = PartitionCount::new(count).unwrap();
                assert_eq!(count.of(&tenant).get(), expected, "{text} mod {count}");
            }
        }
    }

    #[test]
    fn the_tenant_is_hashed_in_lower_case() {
        let upper = tenant("72F988BF-86F1-41AF-91AB-2D7CD011DB47");
        let count = PartitionCount::new(3).unwrap();
        assert_eq!(count.of(&upper).get(), 2);
    }

    #[test]
    fn counts_and_indexes_are_checked() {
        assert_eq!(PartitionCount::new(0), Err(PartitionError::ZeroCount));
        let three = PartitionCount::new(3).unwrap();
        assert_eq!(three.index(2).unwrap().routing_key(), "p2");
        assert_eq!(
            three.index(3),
            Err(PartitionError::IndexOutOfRange { index: 3, count: 3 })
        );
        assert_eq!(
            three.all().map(PartitionIndex::get).collect::<Vec<_>>(),
            [0, 1, 2]
        );
    }

    fn event(data: &str, event_type: &str) -> Event {
        let json = format!(
            r#"{{"specversion":"1.0","id":"e-1","source":"urn:test","type":"{event_type}","time":"2026-01-01T00:00:00Z","datacontenttype":"application/json","data":{data}}}"#
        );
        Event::from_json_slice(json.as_bytes()).expect("a valid event")
    }

    #[test]
    fn events_go_to_the_partitions_of_their_tenants_or_to_all() {
        let three = PartitionCount::new(3).unwrap();
        let indexes =
            |event: &Event| -> Vec<u32> { three.of_event(event).iter().map(|p| p.get()).collect() };
        let ended = event(
            r#"{"employee_id":"E1","tenant_id":"72f988bf-86f1-41af-91ab-2d7cd011db47"}"#,
            "project.assignment.ended",
        );
        assert_eq!(indexes(&ended), [2]);
        let departed = event(r#"{"employee_id":"E1"}"#, "hr.employee.departed");
        assert_eq!(indexes(&departed), [0, 1, 2]);
        let changed = event(
            r#"{"old_partner_id":"1234567","new_partner_id":"7654321","tenant_ids":["ffffffff-ffff-ffff-ffff-ffffffffffff","00000000-0000-0000-0000-000000000000","11111111-2222-3333-4444-555555555555"]}"#,
            "partner.id.changed",
        );
        assert_eq!(indexes(&changed), [0, 1, 2]);
        let one_tenant = event(
            r#"{"old_partner_id":"1234567","new_partner_id":"7654321","tenant_ids":["ffffffff-ffff-ffff-ffff-ffffffffffff","11111111-2222-3333-4444-555555555555"]}"#,
            "partner.id.changed",
        );
        assert_eq!(indexes(&one_tenant), [1, 2]);
    }
}
