//! Who sends the next request of a tenant: `limits.per_tenant_rps` (one
//! `governor` limiter keyed by tenant, for every request to PAL), and an
//! action's request before a reconcile's read (SPEC §11.3: reconcile
//! requests are rate-limited with the rest and yield to event actions).
//!
//! An action's request waits for the tenant's next slot as it always did,
//! and is counted as waiting meanwhile. A reconcile's read takes a slot
//! only when one is free *and* no action request of the tenant waits; so an
//! action never waits behind reads queued before it — at most for the one
//! slot a read took just before it arrived. And reads go at a little under
//! the tenant's rate (`arm::RECONCILE_SHARE`, a limiter of their own), so
//! the tenant's burst refills while a reconcile reads it: an action that
//! arrives finds slots for its requests instead of an empty bucket.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use governor::clock::Clock as _;
use palworker_events::TenantId;

use super::PalClient;

/// Whose request waits for a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Priority {
    /// An action's request (an event's or a reconcile plan's): first.
    Action,
    /// A reconcile's read of a link: only when no action request waits.
    Reconcile,
}

/// Action requests waiting for a slot, per tenant.
#[derive(Default)]
pub(super) struct ActionWaits(Mutex<HashMap<TenantId, usize>>);

impl ActionWaits {
    fn any(&self, tenant: &TenantId) -> bool {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(tenant)
            .is_some_and(|waiting| *waiting > 0)
    }
}

/// One action request counted as waiting until it is dropped (it got its
/// slot, or the request was abandoned).
struct Waiting<'a> {
    waits: &'a ActionWaits,
    tenant: &'a TenantId,
}

impl<'a> Waiting<'a> {
    fn start(waits: &'a ActionWaits, tenant: &'a TenantId) -> Self {
        *waits
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(tenant.clone())
            .or_default() += 1;
        Waiting { waits, tenant }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut waits = self.waits.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(waiting) = waits.get_mut(self.tenant) {
            *waiting = waiting.saturating_sub(1);
            if *waiting == 0 {
                waits.remove(self.tenant);
            }
        }
    }
}

impl PalClient {
    /// Waits until a request to `tenant` may be sent: within the tenant's
    /// rate, and — for a reconcile's read — when no action request of the
    /// tenant waits for a slot.
    pub(super) async fn take_slot(&self, tenant: &TenantId, priority: Priority) {
        let inner = &self.inner;
        match priority {
            Priority::Action => {
                let _waiting = Waiting::start(&inner.action_waits, tenant);
                inner.limiter.until_key_ready(tenant).await;
            }
            Priority::Reconcile => loop {
                let wait = if inner.action_waits.any(tenant) {
                    // The action takes the next slot; look again after it.
                    inner.slot_period
                } else if let Err(not_until) = inner.reconcile_limiter.check_key(tenant) {
                    // Reads keep under the tenant's rate.
                    not_until.wait_time_from(inner.reconcile_limiter.clock().now())
                } else {
                    match inner.limiter.check_key(tenant) {
                        Ok(()) => return,
                        Err(not_until) => not_until.wait_time_from(inner.limiter.clock().now()),
                    }
                };
                tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
            },
        }
    }
}
