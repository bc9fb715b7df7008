//! How long PAL takes to answer, as the executor plans with it: an
//! exponentially weighted mean of every ARM request's own time (sent →
//! answered, not the wait for a rate-limit slot).
//!
//! The executor keeps about `per_tenant_rps × latency` actions of one
//! tenant in flight (Little's law: one request of each in flight at a time
//! sustains the tenant's rate, see [`tenant_concurrency`]); more would only
//! wait on the tenant's rate limit while holding slots other tenants could
//! use.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// What is assumed before the first answer: a typical ARM answer.
pub const ASSUMED_LATENCY: Duration = Duration::from_millis(250);

/// The weight of each new observation in the mean.
const WEIGHT: f64 = 0.05;

/// The mean request time, in seconds as `f64` bits; lock-free.
#[derive(Debug)]
pub(super) struct MeanLatency(AtomicU64);

impl Default for MeanLatency {
    fn default() -> Self {
        MeanLatency(AtomicU64::new(ASSUMED_LATENCY.as_secs_f64().to_bits()))
    }
}

impl MeanLatency {
    pub(super) fn observe(&self, elapsed: Duration) {
        let seen = elapsed.as_secs_f64();
        // Concurrent observations may overwrite each other's update; the
        // mean stays a mean of recent observations either way.
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                let mean = f64::from_bits(bits);
                Some((mean + WEIGHT * (seen - mean)).to_bits())
            });
    }

    pub(super) fn get(&self) -> Duration {
        Duration::from_secs_f64(f64::from_bits(self.0.load(Ordering::Relaxed)).max(0.0))
    }
}

/// How many actions of one tenant to keep in flight: enough to sustain its
/// `per_tenant_rps` when each request takes `latency` (each action has one
/// request in flight at a time), at least one, at most one per request the
/// tenant may send in a second.
pub fn tenant_concurrency(per_tenant_rps: f64, latency: Duration) -> usize {
    let rps = if per_tenant_rps.is_finite() && per_tenant_rps > 0.0 {
        per_tenant_rps
    } else {
        1.0
    };
    let most = rps.ceil().max(1.0);
    (rps * latency.as_secs_f64()).ceil().clamp(1.0, most) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_keeps_as_many_actions_in_flight_as_its_rate_needs_at_this_latency() {
        let ms = Duration::from_millis;
        // 20 requests/s at 20 ms: 0.4 requests in flight → one action.
        assert_eq!(tenant_concurrency(20.0, ms(20)), 1);
        assert_eq!(tenant_concurrency(20.0, ms(0)), 1);
        // At ARM's usual 250-300 ms: 5-6 actions.
        assert_eq!(tenant_concurrency(20.0, ms(250)), 5);
        assert_eq!(tenant_concurrency(20.0, ms(300)), 6);
        // Never more than the rate itself (a slow PAL), never zero.
        assert_eq!(tenant_concurrency(20.0, Duration::from_secs(5)), 20);
        assert_eq!(tenant_concurrency(0.5, ms(100)), 1);
        assert_eq!(tenant_concurrency(f64::NAN, ms(100)), 1);
    }

    #[test]
    fn the_mean_moves_toward_what_is_observed() {
        let mean = MeanLatency::default();
        assert_eq!(mean.get(), ASSUMED_LATENCY);
        for _ in 0..200 {
            mean.observe(Duration::from_millis(20));
        }
        let settled = mean.get().as_secs_f64();
        assert!((settled - 0.020).abs() < 0.001, "{settled}");
        mean.observe(Duration::from_millis(1020));
        let moved = mean.get().as_secs_f64();
        assert!(moved > settled && moved < 0.1, "{moved}");
    }
}
