//! What waits for a person — held plans, failed and manual actions — the
//! audit trail, and the sign-in page. Each list function runs on a
//! blocking thread (it reads the ledger) and returns the page's body.

use std::collections::BTreeSet;

use maud::{Markup, html};
use palworker_core::{ActionId, ActionRecord, ActionState, AuditEntry, AuditWhat, Op};
use serde::Deserialize;

use super::layout::{Viewer, desired_text, pager, post_form, query, shorten, when};
use super::{Console, ConsoleError, PAGE_ROWS};

/// `?before=ID`: the page of older entries.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Before {
    pub before: Option<u64>,
}

pub fn held(console: &Console, viewer: &Viewer) -> Result<Markup, ConsoleError> {
    let plans = console.admin.ledger().held_events()?;
    Ok(html! {
        p { "A plan with more actions than " code { "limits.max_actions_per_event" } " waits here until an operator approves or rejects it. Read what it will do on its page first." }
        @if plans.is_empty() {
            p { "No plan is held." }
        } @else {
            div class="table-wrap" {
                table {
                    thead { tr { th scope="col" { "Event" } th scope="col" { "Type" } th scope="col" { "Accepted" } th scope="col" { "Actions" } th scope="col" { "Decision" } } }
                    tbody {
                        @for record in &plans {
                            tr {
                                td { a href=(format!("/events/{}", record.seq)) { (shorten(&record.event.id, 40)) } }
                                td { (record.event.event_type.as_str()) }
                                td { (when(record.accepted_at)) }
                                td class="number" { (record.action_count) }
                                td class="decisions" {
                                    (post_form(&format!("/events/{}/approve", record.seq), &format!("Approve {} actions", record.action_count), "button", &[], viewer))
                                    (post_form(&format!("/events/{}/reject", record.seq), &format!("Reject {} actions", record.action_count), "button danger", &[], viewer))
                                }
                            }
                        }
                    }
                }
            }
        }
    })
}

/// A page of the actions whose ids are in `ids` (newest first, older
/// than `before`), each read back; an id whose action is gone is dropped
/// from the tally, one no longer in `state` skipped.
fn listed_actions(
    console: &Console,
    ids: &BTreeSet<ActionId>,
    state: ActionState,
    before: Option<u64>,
) -> Result<(Vec<ActionRecord>, Option<u64>), ConsoleError> {
    let ledger = console.admin.ledger();
    let mut actions = Vec::new();
    let mut newer_ids = ids.range(..ActionId::new(before.unwrap_or(u64::MAX))).rev();
    let mut last = None;
    for id in newer_ids.by_ref() {
        last = Some(*id);
        match ledger.action(*id)? {
            Some(action) if action.state == state => actions.push(action),
            Some(_) => {}
            None => console.tally.forget(*id),
        }
        if actions.len() == PAGE_ROWS {
            break;
        }
    }
    let more = newer_ids.next().is_some();
    Ok((actions, last.filter(|_| more).map(ActionId::get)))
}

pub fn failed(
    console: &Console,
    viewer: &Viewer,
    request: &Before,
) -> Result<Markup, ConsoleError> {
    let counts = console.tally.current()?;
    let (actions, older) =
        listed_actions(console, &counts.failed, ActionState::Failed, request.before)?;
    let total = counts.failed.len();
    Ok(html! {
        p { "Actions that gave up: a permanent error from PAL, or their retry budget ran out. Retrying one queues it again from its first step (it reads PAL before it writes); an action a later event has overtaken is not retried." }
        @if total > 0 {
            div class="decision" {
                (post_form("/failed/retry", &format!("Retry all {total} failed actions"), "button", &[], viewer))
            }
        }
        @if actions.is_empty() {
            p { "No action has failed." }
        } @else {
            div class="table-wrap" {
                table {
                    thead { tr { th scope="col" { "Action" } th scope="col" { "Event" } th scope="col" { "Employee" } th scope="col" { "Tenant" } th scope="col" { "Op" } th scope="col" { "Attempts" } th scope="col" { "Last error" } th scope="col" { "Failed at" } th scope="col" { span class="visually-hidden" { "Retry" } } } }
                    tbody {
                        @for action in &actions {
                            tr {
                                td class="number" { (action.action_id) }
                                td { a href=(format!("/events/{}#action-{}", action.event_seq, action.action_id)) { (shorten(&action.event_id, 32)) } }
                                td { (action.employee_id) }
                                td class="id" { (action.tenant_id) }
                                td { (action.op.as_str()) " → " (desired_text(action)) }
                                td class="number" { (action.attempts) }
                                td { (action.last_error.as_deref().map(|e| shorten(e, 160)).unwrap_or_default()) }
                                td { (when(action.completed_at.unwrap_or(action.updated_at))) }
                                td { (post_form(&format!("/actions/{}/retry", action.action_id), "Retry", "button small", &[], viewer)) }
                            }
                        }
                    }
                }
            }
        }
        (pager(request.before.map(|_| "/failed".to_owned()), older.map(|id| format!("/failed{}", query(&[("before", id.to_string())])))))
    })
}

/// What a person must do for a manual action: palworker has no credential
/// for the identity, so its owner changes the link themselves.
fn manual_instructions(action: &ActionRecord) -> Markup {
    let who = html! { strong { (action.employee_id) } };
    let place = html! { "tenant " code { (action.tenant_id) } " (signed in as object " code { (action.object_id) } ")" };
    match (action.op, action.desired.partner_id()) {
        (Op::Remove, _) | (_, None) => html! {
            (who) " signs in to " (place) " and removes the partner link: "
            code { "az managementpartner show" } " shows it, "
            code { "az managementpartner delete --partner-id <that ID>" } " removes it (or: Azure portal → Cost Management + Billing → Partner information → remove)."
        },
        (_, Some(partner)) => html! {
            (who) " signs in to " (place) " and links partner ID " strong { (partner) } ": "
            code { (format!("az managementpartner create --partner-id {partner}")) }
            " (" code { (format!("az managementpartner update --partner-id {partner}")) } " when another ID is linked; or Azure portal → Cost Management + Billing → Partner information)."
        },
    }
}

pub fn manual(console: &Console, request: &Before) -> Result<Markup, ConsoleError> {
    let counts = console.tally.current()?;
    let (actions, older) =
        listed_actions(console, &counts.manual, ActionState::Manual, request.before)?;
    Ok(html! {
        p { "Accounts without a credential: palworker cannot change their link, so a person must. Each row says who and what. palworker's next reconcile reads the links again where it can." }
        @if actions.is_empty() {
            p { "Nothing waits for a person." }
        } @else {
            ul class="tasks" {
                @for action in &actions {
                    li {
                        p { (manual_instructions(action)) }
                        p class="hint" {
                            "Action " (action.action_id) " of event "
                            a href=(format!("/events/{}#action-{}", action.event_seq, action.action_id)) { (shorten(&action.event_id, 40)) }
                            " (" (action.event_type.as_str()) "), " (when(action.updated_at))
                            @if let Some(detail) = &action.detail { ". " (detail) }
                        }
                    }
                }
            }
        }
        (pager(request.before.map(|_| "/manual".to_owned()), older.map(|id| format!("/manual{}", query(&[("before", id.to_string())])))))
    })
}

/// One line about what an audit record records.
fn audit_summary(entry: &AuditEntry) -> Markup {
    match &entry.what {
        AuditWhat::ActionOutcome(record) => html! {
            "action " (record.action.action_id) " " (record.action.op.as_str()) " of " (record.action.employee_id)
            " in " span class="id" { (shorten(record.action.tenant_id.as_str(), 13)) } ": "
            strong { (record.outcome.as_str()) }
            @if let Some(error) = &record.action.last_error { " — " (shorten(error, 100)) }
        },
        AuditWhat::Approval {
            event_id,
            released,
            cancelled,
            ..
        } => html! {
            "approved event " (shorten(event_id, 40)) ": " (released) " released, " (cancelled) " cancelled"
        },
        AuditWhat::Rejection {
            event_id,
            cancelled,
            ..
        } => html! {
            "rejected event " (shorten(event_id, 40)) ": " (cancelled) " cancelled"
        },
        AuditWhat::Retry {
            action_id,
            event_id,
        } => html! {
            "retried action " (action_id) " of event " (shorten(event_id, 40))
        },
        AuditWhat::Pause => html! { "paused writes to PAL" },
        AuditWhat::Resume => html! { "resumed writes to PAL" },
        AuditWhat::Reconcile(report) => html! {
            "reconciled " (report.read) " links: " (report.missing) " missing, " (report.unexpected) " unexpected, " (report.different) " different"
        },
    }
}

fn audit_kind(entry: &AuditEntry) -> &'static str {
    match entry.what {
        AuditWhat::ActionOutcome(_) => "action outcome",
        AuditWhat::Approval { .. } => "approval",
        AuditWhat::Rejection { .. } => "rejection",
        AuditWhat::Retry { .. } => "retry",
        AuditWhat::Pause => "pause",
        AuditWhat::Resume => "resume",
        AuditWhat::Reconcile(_) => "reconcile",
    }
}

pub fn audit(console: &Console, request: &Before) -> Result<Markup, ConsoleError> {
    let page =
        console
            .admin
            .ledger()
            .audit_newest_first(request.before, PAGE_ROWS, PAGE_ROWS, |_| true)?;
    let older = page
        .next
        .map(|seq| format!("/audit{}", query(&[("before", seq.to_string())])));
    Ok(html! {
        section aria-labelledby="download" {
            h2 id="download" { "Download" }
            p { "The trail as JSON Lines, as " code { "palworker audit export" } " writes it: every action outcome, approval, rejection, retry, pause, resume and reconcile, with who, when and the hash chain (" code { "palworker audit verify" } " checks it)." }
            form class="filters" method="get" action="/audit/download" aria-label="Download the audit trail" {
                div class="field" {
                    label for="since" { "From (UTC, optional)" }
                    input id="since" name="since" type="datetime-local";
                }
                div class="field" {
                    label for="until" { "Until (UTC, optional)" }
                    input id="until" name="until" type="datetime-local";
                }
                button type="submit" { "Download JSON Lines" }
            }
        }
        section aria-labelledby="records" {
            h2 id="records" { "Records, newest first" }
            @if page.items.is_empty() {
                p { "The trail is empty." }
            } @else {
                div class="table-wrap" {
                    table {
                        thead { tr { th scope="col" { "#" } th scope="col" { "When" } th scope="col" { "Who" } th scope="col" { "What" } th scope="col" { "Details" } } }
                        tbody {
                            @for entry in &page.items {
                                tr {
                                    td class="number" { (entry.seq) }
                                    td { (when(entry.at)) }
                                    td { (entry.who) }
                                    td { (audit_kind(entry)) }
                                    td { (audit_summary(entry)) }
                                }
                            }
                        }
                    }
                }
            }
            (pager(request.before.map(|_| "/audit".to_owned()), older))
        }
    })
}

/// The sign-in page: the form, or — with no admin token configured — how
/// to configure one.
pub fn sign_in(tokens_configured: bool, next: &str, failed: bool) -> Markup {
    html! {
        @if tokens_configured {
            p { "Sign in with an admin token of this worker (" code { "http.admin_token_file" } ", " code { "http.admin_token_env" } " or " code { "http.admin_tokens" } "). The audit trail records what you change under the token's name." }
            @if failed {
                p class="error" role="alert" id="sign-in-error" { "That is not an admin token of this worker." }
            }
            form class="sign-in" method="post" action="/sign-in" {
                input type="hidden" name="next" value=(next);
                div class="field" {
                    label for="token" { "Admin token" }
                    input id="token" name="token" type="password" autocomplete="off" required autofocus aria-describedby=[failed.then_some("sign-in-error")];
                }
                button type="submit" { "Sign in" }
            }
        } @else {
            p { "The console is off: this worker has no admin token." }
            p { "To turn it on, give the worker an admin token and restart it, for example:" }
            pre { "[http]\nadmin_token_file = \"/run/secrets/palworker-admin\"\n\n# or several, one per operator (the audit trail records the name):\n[http.admin_tokens.alice]\nfile = \"/run/secrets/palworker-alice\"" }
            p { "Then sign in here with the token. Meanwhile, on the worker's machine, its OS user (and root) can run every operator command without a token: " code { "palworker status" } ", " code { "palworker approve EVENT" } ", … go through the worker's admin socket in the ledger directory." }
        }
    }
}
