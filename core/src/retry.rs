//! The durable retry schedule: a pure function of (attempt, error, Retry-After).
//!
//! The executor stores the result in the ledger (`next_attempt_at`), so a
//! restarted worker resumes every pending retry at its due time. Randomness is
//! an input (`jitter_sample` in `[0, 1)`), so the function is deterministic and
//! unit-testable.

use std::time::Duration;

use chrono::{DateTime, Utc};
use palworker_config::RetrySettings;

/// What the schedule decided for a failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryDecision {
    /// Try again at this instant.
    RetryAt(DateTime<Utc>),
    /// The retry budget (`retry.max_elapsed`, or the error's own shorter
    /// budget) would be exceeded: the action fails.
    GiveUp,
}

/// The delay before attempt `attempt + 1`, after `attempt` (>= 1) attempts failed.
///
/// Exponential: `initial * multiplier^(attempt-1)`, capped at `max_interval`,
/// then lengthened by up to `jitter` of itself (jitter only ever lengthens).
/// A `Retry-After` is a floor: the delay is never shorter than it, and jitter
/// is added on top of the floor too, so a throttled identity is never retried early.
pub fn next_delay(
    settings: &RetrySettings,
    attempt: u32,
    retry_after: Option<Duration>,
    jitter_sample: f64,
) -> Duration {
    let exponent = attempt.saturating_sub(1).min(64) as i32;
    let base = settings.initial_interval.as_secs_f64() * settings.multiplier.powi(exponent);
    let capped = base.min(settings.max_interval.as_secs_f64());
    let floor = retry_after.map(|d| d.as_secs_f64()).unwrap_or(0.0);
    let delay = capped.max(floor);
    let jitter = settings.jitter.clamp(0.0, 1.0) * jitter_sample.clamp(0.0, 1.0);
    // A huge Retry-After saturates instead of panicking (the budget then ends the action).
    Duration::try_from_secs_f64(delay * (1.0 + jitter)).unwrap_or(Duration::MAX)
}

/// Decides whether and when to retry, given when the first attempt started and
/// when the failing response arrived (`now`). `budget` overrides
/// `retry.max_elapsed` when the error carries a shorter one (e.g. a secret that
/// was just rotated is retried only briefly).
pub fn decide(
    settings: &RetrySettings,
    attempt: u32,
    retry_after: Option<Duration>,
    jitter_sample: f64,
    first_attempt_at: DateTime<Utc>,
    now: DateTime<Utc>,
    budget: Option<Duration>,
) -> RetryDecision {
    let delay = next_delay(settings, attempt, retry_after, jitter_sample);
    let budget = budget
        .map(|b| b.min(settings.max_elapsed))
        .unwrap_or(settings.max_elapsed);
    let after = |at: DateTime<Utc>, span: Duration| {
        chrono::Duration::from_std(span)
            .ok()
            .and_then(|span| at.checked_add_signed(span))
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    };
    let due = after(now, delay);
    let deadline = after(first_attempt_at, budget);
    if due > deadline || due == DateTime::<Utc>::MAX_UTC {
        RetryDecision::GiveUp
    } else {
        RetryDecision::RetryAt(due)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> RetrySettings {
        RetrySettings {
            initial_interval: Duration::from_secs(1),
            multiplier: 2.0,
            max_interval: Duration::from_secs(300),
            max_elapsed: Duration::from_secs(24 * 3600),
            jitter: 0.2,
        }
    }

    #[test]
    fn delay_grows_exponentially_without_jitter() {
        let s = settings();
        let delays: Vec<u64> = (1..=6)
            .map(|a| next_delay(&s, a, None, 0.0).as_millis() as u64)
            .collect();
        assert_eq!(delays, vec![1000, 2000, 4000, 8000, 16000, 32000]);
    }

    #[test]
    fn delay_is_capped_at_max_interval() {
        let s = settings();
        assert_eq!(next_delay(&s, 30, None, 0.0), Duration::from_secs(300));
        assert_eq!(
            next_delay(&s, u32::MAX, None, 0.0),
            Duration::from_secs(300)
        );
    }

    #[test]
    fn jitter_only_lengthens_and_is_bounded() {
        let s = settings();
        for sample in [0.0, 0.25, 0.5, 0.999] {
            let d = next_delay(&s, 3, None, sample);
            assert!(d >= Duration::from_secs(4), "{d:?}");
            assert!(d <= Duration::from_secs_f64(4.0 * 1.2), "{d:?}");
        }
        assert_eq!(next_delay(&s, 3, None, 0.5), Duration::from_secs_f64(4.4));
    }

    #[test]
    fn retry_after_is_a_floor_that_jitter_never_undercuts() {
        let s = settings();
        assert_eq!(
            next_delay(&s, 1, Some(Duration::from_secs(7)), 0.0),
            Duration::from_secs(7)
        );
        let jittered = next_delay(&s, 1, Some(Duration::from_secs(7)), 0.5);
        assert_eq!(jittered, Duration::from_secs_f64(7.7));
        // A short Retry-After does not shorten the exponential delay.
        assert_eq!(
            next_delay(&s, 4, Some(Duration::from_secs(1)), 0.0),
            Duration::from_secs(8)
        );
    }

    #[test]
    fn gives_up_when_the_next_attempt_would_exceed_the_budget() {
        let mut s = settings();
        s.max_elapsed = Duration::from_secs(10);
        let start = DateTime::parse_from_rfc3339("2026-11-29T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let now = start + chrono::Duration::seconds(5);
        assert_eq!(
            decide(&s, 1, None, 0.0, start, now, None),
            RetryDecision::RetryAt(now + chrono::Duration::seconds(1))
        );
        assert_eq!(
            decide(&s, 4, None, 0.0, start, now, None),
            RetryDecision::GiveUp
        );
    }

    #[test]
    fn an_absurd_retry_after_gives_up_instead_of_overflowing() {
        let s = settings();
        let start = DateTime::parse_from_rfc3339("2026-11-29T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(next_delay(&s, 1, Some(Duration::MAX), 0.5), Duration::MAX);
        assert_eq!(
            decide(&s, 1, Some(Duration::MAX), 0.5, start, start, None),
            RetryDecision::GiveUp
        );
        let mut unbounded = settings();
        unbounded.max_elapsed = Duration::MAX;
        assert_eq!(
            decide(&unbounded, 1, Some(Duration::MAX), 0.5, start, start, None),
            RetryDecision::GiveUp
        );
    }

    #[test]
    fn an_error_budget_shorter_than_max_elapsed_wins() {
        let s = settings();
        let start = DateTime::parse_from_rfc3339("2026-11-29T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let now = start + chrono::Duration::seconds(290);
        assert_eq!(
            decide(&s, 3, None, 0.0, start, now, Some(Duration::from_secs(300))),
            RetryDecision::RetryAt(now + chrono::Duration::seconds(4))
        );
        assert_eq!(
            decide(&s, 5, None, 0.0, start, now, Some(Duration::from_secs(300))),
            RetryDecision::GiveUp
        );
    }
}
