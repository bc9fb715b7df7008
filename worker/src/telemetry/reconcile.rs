//! Happenings of reconciles (SPEC §11.3): PAL compared with the desired
//! links, by an operator or by the worker's periodic run.

use palworker_core::{DriftKind, ReconcileReport};

use super::Metrics;

/// A reconcile read what it could and, unless it was a dry run, stored
/// the plan that fixes the differences it found. Counts them in
/// `palworker_drift_total{kind}` — a dry run's are only logged, so that a
/// dry run followed by the real one counts each difference once.
pub struct ReconcileFinished<'a> {
    pub report: &'a ReconcileReport,
    /// Who ran it (`palworker` for the periodic run).
    pub by: &'a str,
}

impl ReconcileFinished<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        let report = self.report;
        tracing::info!(
            by = self.by,
            event_id = report.event_id.as_deref().unwrap_or(""),
            dry_run = report.dry_run,
            accounts = report.accounts,
            read = report.read,
            missing = report.missing,
            unexpected = report.unexpected,
            different = report.different,
            manual = report.manual,
            unreadable = report.unreadable,
            busy = report.busy,
            actions = report.actions,
            superseded = report.superseded,
            held = report.held,
            "Reconcile finished."
        );
        if report.dry_run {
            return;
        }
        for kind in DriftKind::ALL {
            let found = match kind {
                DriftKind::Missing => report.missing,
                DriftKind::Unexpected => report.unexpected,
                DriftKind::Different => report.different,
            };
            metrics
                .drift_total
                .with_label_values(&[kind.as_str()])
                .inc_by(found);
        }
    }
}

/// A reconcile stopped before it was stored (the ledger failed); nothing
/// was planned, and the periodic run tries again at its next interval.
pub struct ReconcileFailed<'a> {
    pub by: &'a str,
    pub error: &'a dyn std::fmt::Display,
}

impl ReconcileFailed<'_> {
    pub fn emit(&self, _metrics: &Metrics) {
        tracing::error!(by = self.by, error = %self.error, "Reconcile failed.");
    }
}
