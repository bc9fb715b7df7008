//! The overview, the events list and an event's page. Each function runs on
//! a blocking thread (it reads the ledger) and returns the page's body.

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use maud::{Markup, html};
use palworker_core::{ActionState, EventRecord, EventSeq, EventState};
use palworker_events::{EventData, EventType};
use prometheus::proto::MetricFamily;
use serde::Deserialize;

use super::layout::{
    Viewer, desired_text, pager, post_form, query, seconds_text, shorten, state_badge, when,
    when_or_dash,
};
use super::tally::Counts;
use super::{Console, ConsoleError, PAGE_ROWS, SCAN_BUDGET, charts};
use crate::ledger::PauseState;

/// A metric family of the worker's registry, by name (`None` when no such
/// metric is registered: one another release adds).
fn family(console: &Console, name: &str) -> Option<MetricFamily> {
    console
        .metrics
        .registry()
        .gather()
        .into_iter()
        .find(|family| family.name() == name)
}

/// The sum of a counter's or gauge's series.
fn family_sum(family: &MetricFamily) -> f64 {
    let gauge = family.get_field_type() == prometheus::proto::MetricType::GAUGE;
    family
        .get_metric()
        .iter()
        .map(|metric| {
            if gauge {
                metric.get_gauge().get_value()
            } else {
                metric.get_counter().get_value()
            }
        })
        .sum()
}

/// A family's series summed by the value of `label`.
fn family_by_label(family: &MetricFamily, label: &str) -> Vec<(String, f64)> {
    let mut sums: std::collections::BTreeMap<String, f64> = Default::default();
    for metric in family.get_metric() {
        let key = metric
            .get_label()
            .iter()
            .find(|pair| pair.name() == label)
            .map(|pair| pair.value().to_owned())
            .unwrap_or_default();
        *sums.entry(key).or_default() += metric.get_counter().get_value();
    }
    sums.into_iter().collect()
}

fn bytes_text(bytes: f64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if bytes >= 1024.0 * MIB {
        format!("{:.1} GiB", bytes / 1024.0 / MIB)
    } else {
        format!("{:.1} MiB", bytes / MIB)
    }
}

/// A count that links to where it is listed.
fn count_card(label: &str, count: u64, href: Option<&str>, attention: bool) -> Markup {
    let class = if attention && count > 0 {
        "card attention"
    } else {
        "card"
    };
    html! {
        div class=(class) {
            @match href {
                Some(href) => a href=(href) { span class="count" { (count) } span class="label" { (label) } },
                None => { span class="count" { (count) } span class="label" { (label) } },
            }
        }
    }
}

pub fn overview(console: &Console, viewer: &Viewer) -> Result<Markup, ConsoleError> {
    let now = console.clock.now();
    let counts: Counts = console.tally.current()?;
    let ledger = console.admin.ledger();
    let held = ledger.held_plan_count();
    let in_flight = ledger.open_event_count()?;
    let paused = ledger.pause_state()? == PauseState::Paused;
    let pending = console.metrics.actions_pending().max(0) as u64;
    let scheduled = console.metrics.actions_scheduled().max(0) as u64;
    let dead_letters = family(console, "palworker_dead_letters_total");
    let drift = family(console, "palworker_drift_total");
    let revocations = family(console, "palworker_revocation_seconds");
    let size = Some(ledger.size_on_disk() as f64);
    let free = ledger.disk_free().map(|bytes| bytes as f64);
    let broker = console
        .health
        .broker_connected
        .load(std::sync::atomic::Ordering::Acquire);
    let ledger_reason = console.health.ledger.reason();
    Ok(html! {
        section aria-labelledby="work" {
            h2 id="work" { "Work" }
            div class="cards" {
                (count_card("events in flight", in_flight, Some("/events?state=open"), false))
                (count_card("actions pending", pending, None, false))
                (count_card("actions scheduled", scheduled, None, false))
                (count_card("plans held", held, Some("/held"), true))
                (count_card("actions failed", counts.failed.len() as u64, Some("/failed"), true))
                (count_card("actions manual", counts.manual.len() as u64, Some("/manual"), true))
                (count_card("links orphaned", counts.orphaned.len() as u64, None, false))
            }
        }
        section aria-labelledby="state" {
            h2 id="state" { "State" }
            dl class="facts" {
                dt { "Broker" }
                dd { @if broker { span class="badge ok" { "connected" } } @else { span class="badge bad" { "disconnected" } } }
                dt { "Ledger" }
                dd {
                    @match &ledger_reason {
                        None => span class="badge ok" { "writable" },
                        Some(reason) => { span class="badge bad" { "unavailable" } " " (reason) },
                    }
                    @if let Some(size) = size { " · " (bytes_text(size)) " on disk" }
                    @if let Some(free) = free { " · " (bytes_text(free)) " free" }
                }
                dt { "Writes to PAL" }
                dd {
                    @if paused {
                        span class="badge attention" { "paused" } " "
                        (post_form("/resume", "Resume writes", "button", &[], viewer))
                    } @else {
                        span class="badge ok" { "running" } " "
                        (post_form("/pause", "Pause writes", "button secondary", &[], viewer))
                    }
                }
                dt { "Dead letters" }
                dd {
                    @match &dead_letters {
                        Some(family) => {
                            (family_sum(family) as u64) " since the worker started"
                            @let reasons: Vec<(String, f64)> = family_by_label(family, "reason").into_iter().filter(|(_, n)| *n > 0.0).collect();
                            @if !reasons.is_empty() {
                                " ("
                                @for (index, (reason, n)) in reasons.iter().enumerate() {
                                    @if index > 0 { ", " }
                                    (reason) ": " (*n as u64)
                                }
                                ")"
                            }
                        }
                        None => "not counted by this worker",
                    }
                }
                dt { "Drift" }
                dd {
                    // Hook: `palworker_drift_total{kind}` (SPEC §11.3) —
                    // shown once the worker registers it.
                    @match &drift {
                        Some(family) => {
                            (family_sum(family) as u64) " differences found since the worker started"
                            @for (kind, n) in family_by_label(family, "kind") { " · " (kind) ": " (n as u64) }
                        }
                        None => "not measured by this worker yet",
                    }
                    @if let Some((at, who, report)) = &counts.last_reconcile {
                        br;
                        "Last reconcile " (when(*at)) " by " (who) ": "
                        (report.missing) " missing, " (report.unexpected) " unexpected, " (report.different) " different of " (report.read) " read"
                    }
                }
                dt { "Removed links since start" }
                dd {
                    // Hook: `palworker_revocation_seconds` (SPEC §11.3).
                    @match revocations.as_ref().and_then(|f| f.get_metric().first().map(|m| m.get_histogram().clone())) {
                        Some(histogram) if histogram.get_sample_count() > 0 => {
                            (histogram.get_sample_count()) " verified removed, on average "
                            (seconds_text(histogram.get_sample_sum() / histogram.get_sample_count() as f64)) " after they were due"
                        }
                        Some(_) => "none since the worker started",
                        None => "not measured by this worker yet",
                    }
                }
            }
        }
        section aria-labelledby="last-day" {
            h2 id="last-day" { "The last 24 hours" }
            div class="charts" {
                (charts::actions_per_hour(&counts.hours, now))
                (charts::time_to_revocation(&counts.hours, now))
            }
        }
    })
}

/// The events list's filters (`GET /events?…`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct EventsQuery {
    /// An event id, or an employee id, to find.
    pub find: String,
    #[serde(rename = "type")]
    pub event_type: String,
    /// `open`, `completed`, `held`, `rejected`.
    pub state: String,
    pub employee: String,
    pub tenant: String,
    /// Accepted at or after (a date or date and time, UTC).
    pub from: String,
    /// Accepted before.
    pub to: String,
    /// Older than this sequence number (the next page).
    pub before: Option<u64>,
}

/// A date (`2026-12-04`) or date and time (`2026-12-04T09:30`, as a
/// `datetime-local` input sends it), in UTC.
pub fn parse_instant(text: &str, name: &str) -> Result<Option<DateTime<Utc>>, ConsoleError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Ok(Some(at.with_timezone(&Utc)));
    }
    for format in ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"] {
        if let Ok(at) = NaiveDateTime::parse_from_str(text, format) {
            return Ok(Some(at.and_utc()));
        }
    }
    if let Ok(day) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(day.and_hms_opt(0, 0, 0).map(|at| at.and_utc()));
    }
    Err(ConsoleError::Refused(format!(
        "{name}: `{text}` is not a date (2026-12-04) or a date and time (2026-12-04T09:30), UTC"
    )))
}

/// The employees an event's data names.
fn named_employees(data: &EventData) -> Vec<&str> {
    match data {
        EventData::AssignmentStarted { employee_id, .. }
        | EventData::AssignmentEnded { employee_id, .. }
        | EventData::EmployeeTransferred { employee_id, .. } => vec![employee_id.as_str()],
        EventData::EmployeeDeparted {
            employee_id,
            successor_employee_id,
            ..
        } => std::iter::once(employee_id.as_str())
            .chain(successor_employee_id.as_ref().map(|e| e.as_str()))
            .collect(),
        EventData::Reconcile { employee_id, .. } => {
            employee_id.iter().map(|e| e.as_str()).collect()
        }
        _ => Vec::new(),
    }
}

/// What an event's list row says of its progress.
fn event_state_text(record: &EventRecord) -> &'static str {
    match (record.state, record.completed_at) {
        (EventState::Held, _) => "held",
        (EventState::Rejected, _) => "rejected",
        (_, Some(_)) => "completed",
        _ => "in progress",
    }
}

/// Whether `record` passes the filters.
struct EventFilter {
    event_type: Option<EventType>,
    state: String,
    employee: String,
    tenant: String,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
}

impl EventFilter {
    fn matches(&self, record: &EventRecord) -> bool {
        if self
            .event_type
            .is_some_and(|wanted| record.event.event_type != wanted)
        {
            return false;
        }
        let state_ok = match self.state.as_str() {
            "open" => {
                record.completed_at.is_none()
                    && matches!(record.state, EventState::Accepted | EventState::Approved)
            }
            "completed" => record.completed_at.is_some(),
            "held" => record.state == EventState::Held,
            "rejected" => record.state == EventState::Rejected,
            _ => true,
        };
        if !state_ok {
            return false;
        }
        if !self.employee.is_empty()
            && !named_employees(&record.event.data).contains(&self.employee.as_str())
        {
            return false;
        }
        if !self.tenant.is_empty()
            && !record.event.data.tenant_scope().is_some_and(|tenants| {
                tenants
                    .iter()
                    .any(|t| t.as_str().eq_ignore_ascii_case(&self.tenant))
            })
        {
            return false;
        }
        if self.from.is_some_and(|from| record.accepted_at < from)
            || self.to.is_some_and(|to| record.accepted_at >= to)
        {
            return false;
        }
        true
    }
}

/// What `GET /events` answers: a page, or the one event asked for.
pub enum EventsAnswer {
    Page(Markup),
    Redirect(String),
}

pub fn events(console: &Console, request: &EventsQuery) -> Result<EventsAnswer, ConsoleError> {
    let ledger = console.admin.ledger();
    let find = request.find.trim();
    if !find.is_empty() {
        let found = ledger.find_events(find, None)?;
        if let [record] = found.as_slice() {
            return Ok(EventsAnswer::Redirect(format!("/events/{}", record.seq)));
        }
        if found.is_empty() {
            // Not an event id: an employee's.
            return Ok(EventsAnswer::Redirect(format!(
                "/events{}",
                query(&[("employee", find.to_owned())])
            )));
        }
    }
    let event_type = match request.event_type.as_str() {
        "" => None,
        name => Some(
            EventType::ALL
                .iter()
                .chain(EventType::INTERNAL.iter())
                .copied()
                .find(|t| t.as_str() == name)
                .ok_or_else(|| ConsoleError::Refused(format!("no event type `{name}`")))?,
        ),
    };
    let filter = EventFilter {
        event_type,
        state: request.state.clone(),
        employee: request.employee.trim().to_owned(),
        tenant: request.tenant.trim().to_owned(),
        from: parse_instant(&request.from, "from")?,
        to: parse_instant(&request.to, "to")?,
    };
    let page = if !find.is_empty() {
        // An id two sources share: both.
        let found = ledger.find_events(find, None)?;
        crate::ledger::Page {
            scanned: found.len(),
            items: found,
            next: None,
        }
    } else {
        ledger.events_newest_first(
            request.before.map(EventSeq::new),
            PAGE_ROWS,
            SCAN_BUDGET,
            |record| filter.matches(record),
        )?
    };
    let accounts = if filter.employee.is_empty() {
        Vec::new()
    } else {
        console
            .admin
            .inventory_entries(Some(&filter.employee), None)?
    };
    let filters = |before: Option<u64>| {
        query(&[
            ("type", request.event_type.clone()),
            ("state", request.state.clone()),
            ("employee", request.employee.clone()),
            ("tenant", request.tenant.clone()),
            ("from", request.from.clone()),
            ("to", request.to.clone()),
            ("before", before.map(|b| b.to_string()).unwrap_or_default()),
        ])
    };
    let older = page
        .next
        .map(|next| format!("/events{}", filters(Some(next.get()))));
    let newer = request.before.map(|_| format!("/events{}", filters(None)));
    Ok(EventsAnswer::Page(html! {
        form class="filters" method="get" action="/events" role="search" aria-label="Find an event or an employee" {
            div class="field wide" {
                label for="find" { "Event id or employee" }
                input id="find" name="find" type="search" value=(request.find) placeholder="7f1c2a9e-… or E-10442";
            }
            button type="submit" { "Find" }
        }
        details class="filters-more" open[!request.event_type.is_empty() || !request.state.is_empty() || !request.employee.is_empty() || !request.tenant.is_empty() || !request.from.is_empty() || !request.to.is_empty()] {
            summary { "Filter" }
            form class="filters" method="get" action="/events" aria-label="Filter events" {
                div class="field" {
                    label for="type" { "Type" }
                    select id="type" name="type" {
                        option value="" { "any" }
                        @for event_type in EventType::ALL.iter().chain(EventType::INTERNAL.iter()) {
                            option value=(event_type.as_str()) selected[request.event_type == event_type.as_str()] { (event_type.as_str()) }
                        }
                    }
                }
                div class="field" {
                    label for="state" { "State" }
                    select id="state" name="state" {
                        @for (value, label) in [("", "any"), ("open", "in progress"), ("completed", "completed"), ("held", "held"), ("rejected", "rejected")] {
                            option value=(value) selected[request.state == value] { (label) }
                        }
                    }
                }
                div class="field" {
                    label for="employee" { "Employee" }
                    input id="employee" name="employee" value=(request.employee);
                }
                div class="field" {
                    label for="tenant" { "Tenant" }
                    input id="tenant" name="tenant" value=(request.tenant);
                }
                div class="field" {
                    label for="from" { "Accepted from (UTC)" }
                    input id="from" name="from" type="datetime-local" value=(request.from);
                }
                div class="field" {
                    label for="to" { "until (UTC)" }
                    input id="to" name="to" type="datetime-local" value=(request.to);
                }
                button type="submit" { "Apply" }
                " " a href="/events" { "Clear" }
            }
        }
        @if !filter.employee.is_empty() {
            section aria-labelledby="accounts" {
                h2 id="accounts" { "Accounts of " (filter.employee) }
                @if accounts.is_empty() {
                    p { "No account of this employee is in the inventory." }
                } @else {
                    div class="table-wrap" {
                        table {
                            thead { tr { th scope="col" { "Tenant" } th scope="col" { "Object" } th scope="col" { "Desired link" } th scope="col" { "Latest event" } th scope="col" { "Its action" } } }
                            tbody {
                                @for entry in accounts.iter().take(PAGE_ROWS) {
                                    tr {
                                        td class="id" { (entry.account.tenant_id) }
                                        td class="id" { (entry.account.object_id) }
                                        td { (entry.desired.partner_id().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "no link".into())) }
                                        td { @if let Some(seq) = entry.last_event_seq { a href=(format!("/events/{seq}")) { "event " (seq) } } @else { "–" } }
                                        td { @if let Some(id) = entry.current_action { (id) } @else { "–" } }
                                    }
                                }
                            }
                        }
                    }
                    @if accounts.len() > PAGE_ROWS {
                        p class="hint" { "The first " (PAGE_ROWS) " of " (accounts.len()) " accounts; " code { "palworker inventory list --employee " (filter.employee) } " lists them all." }
                    }
                    p class="hint" { "Events listed below name this employee; an event that changed many accounts at once (a contract's end, a partner ID change) shows as an account's latest event." }
                }
            }
        }
        section aria-labelledby="list" {
            h2 id="list" { "Events, newest first" }
            @if page.items.is_empty() {
                p { "No event matches." }
            } @else {
                div class="table-wrap" {
                    table {
                        thead { tr { th scope="col" { "Event" } th scope="col" { "Type" } th scope="col" { "About" } th scope="col" { "Accepted" } th scope="col" { "Actions" } th scope="col" { "State" } } }
                        tbody {
                            @for record in &page.items {
                                tr {
                                    td { a href=(format!("/events/{}", record.seq)) { (shorten(&record.event.id, 40)) } }
                                    td { (record.event.event_type.as_str()) }
                                    td { (named_employees(&record.event.data).join(", ")) }
                                    td { (when(record.accepted_at)) }
                                    td class="number" { (record.action_count) }
                                    td { (event_state_text(record)) }
                                }
                            }
                        }
                    }
                }
            }
            @if page.next.is_some() && page.items.len() < PAGE_ROWS {
                p class="hint" { "Searched " (page.scanned) " events; older ones may match too." }
            }
            (pager(newer, older))
        }
    }))
}

/// Rows of a plan per page of an event.
const PLAN_ROWS: usize = 100;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct EventQuery {
    /// The first action of the plan shown (by position).
    pub from: usize,
}

pub fn event(
    console: &Console,
    viewer: &Viewer,
    seq: u64,
    request: &EventQuery,
) -> Result<(String, Markup), ConsoleError> {
    let ledger = console.admin.ledger();
    let record = ledger
        .event(EventSeq::new(seq))?
        .ok_or_else(|| ConsoleError::NotFound(format!("no accepted event has number {seq}")))?;
    let actions = ledger.event_actions_page(record.seq, request.from, PLAN_ROWS)?;
    let data = serde_json::to_string_pretty(&record.event).unwrap_or_default();
    let count = record.action_count;
    let title = format!("Event {}", shorten(&record.event.id, 60));
    let newer = (request.from > 0).then(|| {
        format!(
            "/events/{seq}{}",
            query(&[("from", request.from.saturating_sub(PLAN_ROWS).to_string())])
        )
    });
    let older = ((request.from + PLAN_ROWS) < count as usize).then(|| {
        format!(
            "/events/{seq}{}",
            query(&[("from", (request.from + PLAN_ROWS).to_string())])
        )
    });
    let body = html! {
        dl class="facts" {
            dt { "Id" } dd class="id" { (record.event.id) }
            dt { "Source" } dd { (record.event.source) }
            dt { "Type" } dd { (record.event.event_type.as_str()) }
            dt { "State" } dd { (event_state_text(&record)) }
            dt { "Accepted" } dd { (when(record.accepted_at)) }
            @if let Some(at) = record.event.effective_at() { dt { "Effective" } dd { (when(at)) } }
            dt { "Completed" } dd { (when_or_dash(record.completed_at)) }
            dt { "Published by" } dd { (record.publisher.as_deref().unwrap_or("–")) }
            @if !record.unassigned.is_empty() {
                dt { "Tenants without a successor" }
                dd { (record.unassigned.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(", ")) }
            }
        }
        @if record.state == EventState::Held {
            div class="decision" {
                p { strong { "This plan is held: " } (count) " actions wait for an operator's decision." }
                (post_form(&format!("/events/{seq}/approve"), &format!("Approve {count} actions"), "button", &[], viewer))
                (post_form(&format!("/events/{seq}/reject"), &format!("Reject {count} actions"), "button danger", &[], viewer))
            }
        }
        details {
            summary { "The event as received" }
            pre { (data) }
        }
        section aria-labelledby="plan" {
            h2 id="plan" { "Its plan: " (count) " actions" }
            @if actions.is_empty() {
                p { "The plan has no action." }
            } @else {
                div class="table-wrap" {
                    table {
                        thead {
                            tr {
                                th scope="col" { "Action" } th scope="col" { "Op" } th scope="col" { "Employee" }
                                th scope="col" { "Tenant / object" } th scope="col" { "Desired" } th scope="col" { "State" } th scope="col" { "History" }
                            }
                        }
                        tbody {
                            @for action in &actions {
                                tr id=(format!("action-{}", action.action_id)) {
                                    td class="number" { (action.action_id) }
                                    td { (action.op.as_str()) }
                                    td { (action.employee_id) }
                                    td class="id" { (action.tenant_id) br; (action.object_id) }
                                    td { (desired_text(action)) }
                                    td {
                                        (state_badge(action.state))
                                        @if action.state == ActionState::Failed {
                                            " " (post_form(&format!("/actions/{}/retry", action.action_id), "Retry", "button small", &[], viewer))
                                        }
                                    }
                                    td {
                                        details {
                                            summary { (action.attempts) " attempt(s)" }
                                            dl class="history" {
                                                dt { "created" } dd { (when(action.created_at)) }
                                                @if let Some(at) = action.not_before { dt { "not before" } dd { (when(at)) } }
                                                @if let Some(at) = action.first_attempt_at { dt { "first attempt" } dd { (when(at)) } }
                                                @if let Some(at) = action.next_attempt_at { dt { "next attempt" } dd { (when(at)) } }
                                                @if let Some(error) = &action.last_error { dt { "last error" } dd { (error) } }
                                                @if let Some(detail) = &action.detail { dt { "detail" } dd { (detail) } }
                                                dt { "PAL before → after" }
                                                dd { (action.before_partner_id.as_ref().map(|p| p.as_str()).unwrap_or("no link")) " → " (action.after_partner_id.as_ref().map(|p| p.as_str()).unwrap_or(if action.state.is_terminal() { "no link" } else { "–" })) }
                                                @if let Some(at) = action.completed_at { dt { "ended" } dd { (when(at)) } }
                                                @if let Some(at) = action.verified_at { dt { "verified" } dd { (when(at)) } }
                                                dt { "updated" } dd { (when(action.updated_at)) }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            (pager(newer, older))
        }
    };
    Ok((title, body))
}
