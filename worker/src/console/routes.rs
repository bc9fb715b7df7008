//! The console's routes: who may see a page (a bearer token, or a session
//! cookie), every change (a POST: origin and CSRF token checked for a
//! session, then the operator command run as the signed-in operator), and
//! signing in and out.

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Form, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::Markup;
use palworker_core::{ActionId, EventSeq};

use super::layout::{self, Viewer};
use super::pages::{self, EventQuery, EventsAnswer, EventsQuery};
use super::queues::{self, Before};
use super::session::{self, CSRF_FIELD};
use super::{Console, ConsoleError, assets};
use crate::ledger::PauseState;
use crate::operators::{Decision, EventRef, LedgerOperations, RetryTarget};

pub(super) fn router(console: Console) -> Router {
    Router::new()
        .route("/", get(overview))
        .route("/events", get(events))
        .route("/events/{seq}", get(event))
        .route("/events/{seq}/approve", post(approve))
        .route("/events/{seq}/reject", post(reject))
        .route("/held", get(held))
        .route("/failed", get(failed))
        .route("/failed/retry", post(retry_all))
        .route("/actions/{id}/retry", post(retry_one))
        .route("/manual", get(manual))
        .route("/audit", get(audit))
        .route("/audit/download", get(audit_download))
        .route("/pause", post(pause))
        .route("/resume", post(resume))
        .route("/sign-in", get(sign_in_page).post(sign_in))
        .route("/sign-out", post(sign_out))
        .route(assets::STYLESHEET_PATH, get(assets::stylesheet))
        .layer(middleware::from_fn(security_headers))
        .with_state(console)
}

/// Headers on every console answer: nothing but this origin's own
/// stylesheet and images may load, no other site may frame the pages, a
/// Referer is sent to this origin only (the origin check reads it), and
/// pages are not cached (they show live state, and who is signed in).
async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// The token of `Authorization: Bearer …`, if the request has one.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
}

/// Who sends a request, and the session id when by cookie.
fn viewer(console: &Console, headers: &HeaderMap) -> Option<(Viewer, Option<String>)> {
    if let Some(presented) = bearer(headers) {
        let operator = crate::server::token_operator(&console.tokens, presented)?;
        return Some((
            Viewer {
                operator,
                csrf: None,
                notice: None,
            },
            None,
        ));
    }
    let id = session::cookie_session(headers)?;
    let session = console.sessions.touch(&id)?;
    Some((
        Viewer {
            operator: session.operator,
            csrf: Some(session.csrf),
            notice: None,
        },
        Some(id),
    ))
}

/// Where a page was asked for, to come back to after signing in.
fn path_and_query(uri: &Uri) -> String {
    uri.path_and_query()
        .map(|pq| pq.as_str().to_owned())
        .unwrap_or_else(|| "/".to_owned())
}

/// Only a path of this console is a place to go back to.
fn safe_next(next: &str) -> &str {
    if next.starts_with('/') && !next.starts_with("//") && !next.contains('\\') {
        next
    } else {
        "/"
    }
}

fn to_sign_in(uri: &Uri) -> Response {
    let next = path_and_query(uri);
    Redirect::to(&format!("/sign-in{}", layout::query(&[("next", next)]))).into_response()
}

/// What a page renderer gives back.
enum Rendered {
    Page { title: String, body: Markup },
    Redirect(String),
}

/// Serves a page to a signed-in viewer: `render` runs on a blocking
/// thread (it reads the ledger).
async fn show(
    console: Console,
    headers: HeaderMap,
    uri: Uri,
    current: &'static str,
    render: impl FnOnce(&Console, &Viewer) -> Result<Rendered, ConsoleError> + Send + 'static,
) -> Response {
    let Some((mut viewer, session)) = viewer(&console, &headers) else {
        return to_sign_in(&uri);
    };
    if let Some(id) = &session {
        viewer.notice = console.sessions.take_notice(id);
    }
    let rendered = tokio::task::spawn_blocking(move || {
        render(&console, &viewer).map(|rendered| (rendered, viewer))
    })
    .await;
    match rendered {
        Ok(Ok((Rendered::Page { title, body }, viewer))) => {
            layout::page(&title, current, Some(&viewer), body).into_response()
        }
        Ok(Ok((Rendered::Redirect(to), _))) => Redirect::to(&to).into_response(),
        Ok(Err(error)) => error.into_response(),
        Err(error) => {
            ConsoleError::Failed(anyhow::anyhow!("rendering a page: {error}")).into_response()
        }
    }
}

fn titled(title: &str, body: Markup) -> Rendered {
    Rendered::Page {
        title: title.to_owned(),
        body,
    }
}

async fn overview(State(console): State<Console>, headers: HeaderMap, uri: Uri) -> Response {
    show(console, headers, uri, "/", |console, viewer| {
        Ok(titled("Overview", pages::overview(console, viewer)?))
    })
    .await
}

async fn events(
    State(console): State<Console>,
    headers: HeaderMap,
    uri: Uri,
    Query(request): Query<EventsQuery>,
) -> Response {
    show(console, headers, uri, "/events", move |console, _| {
        Ok(match pages::events(console, &request)? {
            EventsAnswer::Page(body) => titled("Events", body),
            EventsAnswer::Redirect(to) => Rendered::Redirect(to),
        })
    })
    .await
}

async fn event(
    State(console): State<Console>,
    headers: HeaderMap,
    uri: Uri,
    Path(seq): Path<u64>,
    Query(request): Query<EventQuery>,
) -> Response {
    show(console, headers, uri, "/events", move |console, viewer| {
        let (title, body) = pages::event(console, viewer, seq, &request)?;
        Ok(Rendered::Page { title, body })
    })
    .await
}

async fn held(State(console): State<Console>, headers: HeaderMap, uri: Uri) -> Response {
    show(console, headers, uri, "/held", |console, viewer| {
        Ok(titled("Held plans", queues::held(console, viewer)?))
    })
    .await
}

async fn failed(
    State(console): State<Console>,
    headers: HeaderMap,
    uri: Uri,
    Query(request): Query<Before>,
) -> Response {
    show(console, headers, uri, "/failed", move |console, viewer| {
        Ok(titled(
            "Failed actions",
            queues::failed(console, viewer, &request)?,
        ))
    })
    .await
}

async fn manual(
    State(console): State<Console>,
    headers: HeaderMap,
    uri: Uri,
    Query(request): Query<Before>,
) -> Response {
    show(console, headers, uri, "/manual", move |console, _| {
        Ok(titled("Manual actions", queues::manual(console, &request)?))
    })
    .await
}

async fn audit(
    State(console): State<Console>,
    headers: HeaderMap,
    uri: Uri,
    Query(request): Query<Before>,
) -> Response {
    show(console, headers, uri, "/audit", move |console, _| {
        Ok(titled("Audit trail", queues::audit(console, &request)?))
    })
    .await
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct DownloadQuery {
    since: String,
    until: String,
}

/// The audit trail as JSON Lines, streamed as it is read (like `audit
/// export` through the admin API), as a file to save.
async fn audit_download(
    State(console): State<Console>,
    headers: HeaderMap,
    uri: Uri,
    Query(request): Query<DownloadQuery>,
) -> Response {
    if viewer(&console, &headers).is_none() {
        return to_sign_in(&uri);
    }
    let window = pages::parse_instant(&request.since, "from")
        .and_then(|since| Ok((since, pages::parse_instant(&request.until, "until")?)));
    let (since, until) = match window {
        Ok(window) => window,
        Err(error) => return error.into_response(),
    };
    let admin = console.admin.clone();
    let mut response = crate::server::stream_lines(move |sink| {
        admin.audit_entries(since, until, |entry| sink.push(&entry).is_ok())
    })
    .await;
    if response.status().is_success() {
        response.headers_mut().insert(
            header::CONTENT_DISPOSITION,
            HeaderValue::from_static("attachment; filename=\"palworker-audit.jsonl\""),
        );
    }
    response
}

/// Runs a change for a signed-in operator: a session's request must come
/// from this console's pages (origin) with the session's CSRF token; a
/// bearer token's needs neither (no browser sends it by itself). `work`
/// runs on a blocking thread as the operator and says what it did; the
/// answer is a redirect to `back` that shows it.
async fn change(
    console: Console,
    headers: HeaderMap,
    form: HashMap<String, String>,
    back: String,
    work: impl FnOnce(LedgerOperations) -> Result<String, ConsoleError> + Send + 'static,
) -> Response {
    let Some((viewer, session)) = viewer(&console, &headers) else {
        return refused(
            StatusCode::FORBIDDEN,
            "refused: sign in first (your session may have ended)",
        );
    };
    if let Some(csrf) = &viewer.csrf {
        if let Err(refusal) = session::same_origin(&headers) {
            return refused(StatusCode::FORBIDDEN, &refusal.message());
        }
        let sent = form.get(CSRF_FIELD).map(String::as_str).unwrap_or("");
        if !session::csrf_matches(csrf, sent) {
            return refused(StatusCode::FORBIDDEN, &session::Refusal::Csrf.message());
        }
    }
    let admin = console.admin.acting_as(viewer.operator.clone());
    let done = tokio::task::spawn_blocking(move || work(admin)).await;
    let notice = match done {
        Ok(Ok(notice)) => notice,
        Ok(Err(error)) => return error.into_response(),
        Err(error) => {
            return ConsoleError::Failed(anyhow::anyhow!("running a command: {error}"))
                .into_response();
        }
    };
    match session {
        Some(id) => {
            console.sessions.set_notice(&id, notice);
            Redirect::to(&back).into_response()
        }
        None => {
            let body = maud::html! { p class="notice" role="status" { (notice) } p { a href=(back) { "Back" } } };
            layout::page("Done", "", Some(&viewer), body).into_response()
        }
    }
}

fn refused(status: StatusCode, why: &str) -> Response {
    let body = maud::html! {
        p class="error" role="alert" { (why) }
        p { a href="/" { "Back to the overview" } " · " a href="/sign-in" { "Sign in" } }
    };
    (status, layout::page("Refused", "", None, body)).into_response()
}

/// `seq`'s event reference for the operator commands.
fn event_ref(console: &Console, seq: u64) -> Result<EventRef, ConsoleError> {
    let record = console
        .admin
        .ledger()
        .event(EventSeq::new(seq))?
        .ok_or_else(|| ConsoleError::NotFound(format!("no accepted event has number {seq}")))?;
    Ok(EventRef {
        event: record.event.id,
        source: Some(record.event.source),
    })
}

async fn decide(
    console: Console,
    headers: HeaderMap,
    form: HashMap<String, String>,
    seq: u64,
    decision: Decision,
) -> Response {
    let reference = match event_ref(&console, seq) {
        Ok(reference) => reference,
        Err(error) => return error.into_response(),
    };
    change(console, headers, form, format!("/events/{seq}"), move |admin| {
        let summary = admin.decide_now(decision, &reference)?;
        Ok(match decision {
            Decision::Approve => format!(
                "Approved event {}: {} actions released, {} cancelled (a later event had their accounts).",
                summary.event_id, summary.released, summary.cancelled
            ),
            Decision::Reject => format!(
                "Rejected event {}: {} actions cancelled; nothing of it will be written.",
                summary.event_id, summary.cancelled
            ),
        })
    })
    .await
}

async fn approve(
    State(console): State<Console>,
    headers: HeaderMap,
    Path(seq): Path<u64>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    decide(console, headers, form, seq, Decision::Approve).await
}

async fn reject(
    State(console): State<Console>,
    headers: HeaderMap,
    Path(seq): Path<u64>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    decide(console, headers, form, seq, Decision::Reject).await
}

async fn retry_one(
    State(console): State<Console>,
    headers: HeaderMap,
    Path(id): Path<u64>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    change(console, headers, form, "/failed".to_owned(), move |admin| {
        let retried = admin.retry_now(RetryTarget::Action(ActionId::new(id)))?;
        Ok(format!(
            "Action {id} queued again ({} action).",
            retried.len()
        ))
    })
    .await
}

async fn retry_all(
    State(console): State<Console>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    change(console, headers, form, "/failed".to_owned(), |admin| {
        let retried = admin.retry_now(RetryTarget::AllFailed)?;
        Ok(format!(
            "{} failed action(s) queued again; those a later event overtook stay failed.",
            retried.len()
        ))
    })
    .await
}

async fn set_pause(
    console: Console,
    headers: HeaderMap,
    form: HashMap<String, String>,
    state: PauseState,
) -> Response {
    change(console, headers, form, "/".to_owned(), move |admin| {
        let answer = admin.set_pause_now(state)?;
        Ok(match (state, answer.was_paused) {
            (PauseState::Paused, false) => {
                "Writes to PAL paused: events are still accepted and planned; actions wait."
            }
            (PauseState::Paused, true) => "Writes to PAL were already paused.",
            (PauseState::Running, true) => "Writes to PAL resumed: pending actions run now.",
            (PauseState::Running, false) => "Writes to PAL were not paused.",
        }
        .to_owned())
    })
    .await
}

async fn pause(
    State(console): State<Console>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    set_pause(console, headers, form, PauseState::Paused).await
}

async fn resume(
    State(console): State<Console>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    set_pause(console, headers, form, PauseState::Running).await
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct SignInQuery {
    next: String,
}

async fn sign_in_page(
    State(console): State<Console>,
    headers: HeaderMap,
    Query(request): Query<SignInQuery>,
) -> Response {
    let next = safe_next(&request.next).to_owned();
    if viewer(&console, &headers).is_some() {
        return Redirect::to(&next).into_response();
    }
    let body = queues::sign_in(!console.tokens.is_empty(), &next, false);
    layout::page("Sign in", "", None, body).into_response()
}

async fn sign_in(
    State(console): State<Console>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    // A sign-in only from this console's own page (no other site signs a
    // browser in to a session of its choosing).
    if let Err(refusal) = session::same_origin(&headers) {
        return refused(StatusCode::FORBIDDEN, &refusal.message());
    }
    let next = safe_next(form.get("next").map(String::as_str).unwrap_or("/")).to_owned();
    let presented = form.get("token").map(String::as_str).unwrap_or("");
    let Some(operator) = crate::server::token_operator(&console.tokens, presented) else {
        tracing::warn!("A console sign-in with a wrong admin token was refused.");
        let body = queues::sign_in(!console.tokens.is_empty(), &next, true);
        return (
            StatusCode::UNAUTHORIZED,
            layout::page("Sign in", "", None, body),
        )
            .into_response();
    };
    tracing::info!(operator = %operator, "An operator signed in to the console.");
    let id = console.sessions.start(operator);
    let mut response = Redirect::to(&next).into_response();
    if let Ok(cookie) = HeaderValue::from_str(&session::session_cookie(&id)) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

async fn sign_out(
    State(console): State<Console>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let Some((_, Some(id))) = viewer(&console, &headers) else {
        return Redirect::to("/sign-in").into_response();
    };
    let Some(current) = console.sessions.touch(&id) else {
        return Redirect::to("/sign-in").into_response();
    };
    if session::same_origin(&headers).is_err()
        || !session::csrf_matches(
            &current.csrf,
            form.get(CSRF_FIELD).map(String::as_str).unwrap_or(""),
        )
    {
        return refused(StatusCode::FORBIDDEN, &session::Refusal::Csrf.message());
    }
    console.sessions.end(&id);
    let mut response = Redirect::to("/sign-in").into_response();
    if let Ok(cookie) = HeaderValue::from_str(&session::expired_cookie()) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_path_of_this_console_is_a_place_to_go_back_to() {
        assert_eq!(safe_next("/events?x=1"), "/events?x=1");
        assert_eq!(safe_next("//evil.example/"), "/");
        assert_eq!(safe_next("https://evil.example/"), "/");
        assert_eq!(safe_next("/\\evil.example"), "/");
        assert_eq!(safe_next(""), "/");
    }
}
