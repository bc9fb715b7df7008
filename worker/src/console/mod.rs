//! The operator's console (SPEC §11.4): web pages at `GET /` on
//! `http.listen`, rendered by the worker itself — HTML from compile-time
//! templates (`maud`), one stylesheet it serves, charts as inline SVG, no
//! script and nothing from another site.
//!
//! Signing in takes an admin token (any of `http.admin_token*`): a session
//! (`session`) remembers the token's *name*, which the audit trail records
//! as who approved, rejected, retried, paused or resumed. `Authorization:
//! Bearer` works instead of the cookie. Every change is a POST checked for
//! its origin and, with a cookie, for the session's CSRF token.
//!
//! Pages read the ledger a page at a time (`Ledger::actions_newest_first`
//! and its siblings, the point-lookup scans behind `status`) and never load
//! every action: what needs counting across all of them — failed, manual,
//! orphaned, the last 24 hours — is kept by the tally (`tally`), counted
//! once and then followed through the audit trail.
//!
//! | file | holds |
//! | --- | --- |
//! | `mod.rs` | the console's state and its router |
//! | `routes.rs` | the handlers: who may see a page, the changes, sign-in and out, the audit download |
//! | `session.rs` | sessions (idle timeout, longest life), the cookie, CSRF tokens, the origin check |
//! | `layout.rs` | the page around every page, forms, how times and states are written |
//! | `pages.rs` | the overview, the events list, an event's page |
//! | `queues.rs` | held plans, failed and manual actions, the audit trail, sign-in |
//! | `charts.rs` | the overview's SVG charts |
//! | `tally.rs` | failed/manual/orphaned ids and the last 24 hours, kept from the audit trail |
//! | `assets.rs`, `console.css` | the stylesheet |

mod assets;
mod charts;
mod layout;
mod pages;
mod queues;
mod routes;
mod session;
mod tally;

use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use secrecy::SecretString;

use crate::clock::{Clock, SystemClock};
use crate::health::Health;
use crate::ledger::LedgerError;
use crate::operators::{LedgerOperations, Operator, OperatorError};
use crate::telemetry::Metrics;

pub use session::{COOKIE, CSRF_FIELD, IDLE_TIMEOUT};
pub use tally::Tally;

/// Rows per page of a list.
pub const PAGE_ROWS: usize = 50;

/// Records a list reads at most per request when its filter matches rarely
/// (the page then offers to search older records).
pub const SCAN_BUDGET: usize = 5_000;

/// What every console handler works with.
#[derive(Clone)]
struct Console {
    metrics: Metrics,
    health: Health,
    /// The operator commands, run as the signed-in operator.
    admin: LedgerOperations,
    /// The admin tokens by name; empty: sign-in is off.
    tokens: Arc<Vec<(Operator, SecretString)>>,
    sessions: session::Sessions,
    tally: Tally,
    clock: Arc<dyn Clock>,
}

/// The console's routes, to merge into the worker's router. Counting for
/// the overview starts in the background now.
pub fn router(
    metrics: Metrics,
    health: Health,
    admin: LedgerOperations,
    tokens: Arc<Vec<(Operator, SecretString)>>,
) -> Router {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let tally = Tally::new(admin.ledger().clone(), clock.clone());
    tally.start_counting();
    routes::router(Console {
        metrics,
        health,
        admin,
        tokens,
        sessions: session::Sessions::new(clock.clone()),
        tally,
        clock,
    })
}

/// Why a page or a change could not be served.
#[derive(Debug)]
enum ConsoleError {
    /// No such event, action or page.
    NotFound(String),
    /// The command was refused (wrong state, bad input): nothing changed.
    Refused(String),
    /// The ledger or the worker failed.
    Failed(anyhow::Error),
}

impl From<LedgerError> for ConsoleError {
    fn from(error: LedgerError) -> Self {
        match error {
            LedgerError::Rejected(message) => ConsoleError::Refused(message),
            other => ConsoleError::Failed(other.into()),
        }
    }
}

impl From<OperatorError> for ConsoleError {
    fn from(error: OperatorError) -> Self {
        match error {
            OperatorError::Refused(message) => ConsoleError::Refused(message),
            OperatorError::Failed(error) => ConsoleError::Failed(error),
        }
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let (status, title, message) = match self {
            ConsoleError::NotFound(message) => (StatusCode::NOT_FOUND, "Not found", message),
            ConsoleError::Refused(message) => (StatusCode::BAD_REQUEST, "Refused", message),
            ConsoleError::Failed(error) => {
                tracing::error!(error = %format!("{error:#}"), "A console page failed.");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Something failed",
                    format!("{error:#}"),
                )
            }
        };
        let body = maud::html! {
            p class="error" role="alert" { (message) }
            p { a href="/" { "Back to the overview" } }
        };
        (status, layout::page(title, "", None, body)).into_response()
    }
}
