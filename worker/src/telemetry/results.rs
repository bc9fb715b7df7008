//! Happenings of the results the worker owes the systems that publish
//! events (SPEC §11.3).

use std::time::Duration;

use palworker_events::Escaped;

use super::Metrics;

/// The CloudEvent types of results (the `type` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultKind {
    /// `palworker.event.completed`
    EventCompleted,
    /// `palworker.action.attention`
    ActionAttention,
}

impl ResultKind {
    pub const ALL: [ResultKind; 2] = [ResultKind::EventCompleted, ResultKind::ActionAttention];

    /// The CloudEvent `type`, which is also the routing key.
    pub fn as_str(self) -> &'static str {
        match self {
            ResultKind::EventCompleted => "palworker.event.completed",
            ResultKind::ActionAttention => "palworker.action.attention",
        }
    }
}

/// A result was published and the broker confirmed it.
pub struct ResultPublished<'a> {
    pub kind: ResultKind,
    /// The result's CloudEvent id.
    pub id: &'a str,
    /// The event it reports on.
    pub event_id: &'a str,
}

impl ResultPublished<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        tracing::debug!(
            result_type = self.kind.as_str(),
            result_id = %self.id,
            event_id = %Escaped::new(self.event_id),
            "Result published."
        );
        metrics
            .results_published_total
            .with_label_values(&[self.kind.as_str()])
            .inc();
    }
}

/// Publishing results failed (the broker is unreachable, the results
/// exchange missing, or the message refused); they stay in the outbox and
/// are published after `retry_in`.
pub struct ResultsPublishFailed<'a> {
    pub error: &'a str,
    pub retry_in: Duration,
}

impl ResultsPublishFailed<'_> {
    pub fn emit(&self, _metrics: &Metrics) {
        tracing::warn!(
            error = %self.error,
            retry_in_ms = self.retry_in.as_millis() as u64,
            "Publishing results failed; they stay in the outbox and are published later."
        );
    }
}
