//! Who is signed in to the console, and the checks on every request that
//! changes something.
//!
//! Signing in with an admin token starts a session: a random id (256 bits)
//! kept here, mapped to the token's *name* — the cookie carries the id,
//! never the token — with an idle timeout and a longest life. Each session
//! has its own CSRF token, put in a hidden field of every form and compared
//! in constant time when the form comes back; the request's `Origin` (or,
//! without one, its `Referer`) must also be this console's own. The cookie
//! is `HttpOnly` (no script reads it) and `SameSite=Strict` (no other site's
//! page sends it).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::http::{HeaderMap, header};
use chrono::{DateTime, Utc};
use subtle::ConstantTimeEq;

use crate::clock::Clock;
use crate::operators::Operator;

/// The session cookie's name.
pub const COOKIE: &str = "palworker_console";

/// The name of the hidden form field that carries the CSRF token.
pub const CSRF_FIELD: &str = "csrf";

/// A session unused this long ends.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// A session ends this long after sign-in, used or not.
pub const LONGEST_SESSION: Duration = Duration::from_secs(12 * 60 * 60);

/// Sessions kept at most: signing in once more ends the one used longest
/// ago, so sign-ins cannot grow the worker's memory without bound.
const MAX_SESSIONS: usize = 1_024;

/// A signed-in operator.
#[derive(Debug, Clone)]
pub struct Session {
    pub operator: Operator,
    /// The token its forms carry.
    pub csrf: String,
    /// What the last change did, shown once on the next page.
    pub notice: Option<String>,
    started: DateTime<Utc>,
    last_seen: DateTime<Utc>,
}

/// The sessions of one console.
#[derive(Clone)]
pub struct Sessions {
    by_id: Arc<Mutex<HashMap<String, Session>>>,
    clock: Arc<dyn Clock>,
    idle: chrono::Duration,
    longest: chrono::Duration,
}

impl Sessions {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Sessions::with_limits(clock, IDLE_TIMEOUT, LONGEST_SESSION)
    }

    pub fn with_limits(clock: Arc<dyn Clock>, idle: Duration, longest: Duration) -> Self {
        let duration = |d: Duration| chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
        Sessions {
            by_id: Arc::new(Mutex::new(HashMap::new())),
            clock,
            idle: duration(idle),
            longest: duration(longest),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.by_id.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts a session for `operator`; its id, for the cookie.
    pub fn start(&self, operator: Operator) -> String {
        let now = self.clock.now();
        let id = random_token();
        let session = Session {
            operator,
            csrf: random_token(),
            notice: None,
            started: now,
            last_seen: now,
        };
        let mut sessions = self.lock();
        sessions.retain(|_, session| self.alive(session, now));
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, session)| session.last_seen)
                .map(|(id, _)| id.clone())
        {
            sessions.remove(&oldest);
        }
        sessions.insert(id.clone(), session);
        id
    }

    /// The live session with this id, marked as used now; an ended one is
    /// forgotten.
    pub fn touch(&self, id: &str) -> Option<Session> {
        let now = self.clock.now();
        let mut sessions = self.lock();
        let session = sessions.get_mut(id)?;
        if !self.alive(session, now) {
            sessions.remove(id);
            return None;
        }
        session.last_seen = now;
        Some(session.clone())
    }

    /// Keeps `notice` for the session's next page.
    pub fn set_notice(&self, id: &str, notice: String) {
        if let Some(session) = self.lock().get_mut(id) {
            session.notice = Some(notice);
        }
    }

    /// The notice kept for this page, once.
    pub fn take_notice(&self, id: &str) -> Option<String> {
        self.lock().get_mut(id)?.notice.take()
    }

    /// Signs out.
    pub fn end(&self, id: &str) {
        self.lock().remove(id);
    }

    fn alive(&self, session: &Session, now: DateTime<Utc>) -> bool {
        now - session.last_seen < self.idle && now - session.started < self.longest
    }
}

/// 32 random bytes as 64 hex digits.
fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The session id a request's cookie names, if any.
pub fn cookie_session(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
}

/// The `Set-Cookie` value that starts a session.
pub fn session_cookie(id: &str) -> String {
    format!("{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict")
}

/// The `Set-Cookie` value that ends one.
pub fn expired_cookie() -> String {
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// Whether the CSRF token a form sent is the session's, `expected`
/// (compared in constant time).
pub fn csrf_matches(expected: &str, sent: &str) -> bool {
    !sent.is_empty() && bool::from(sent.as_bytes().ct_eq(expected.as_bytes()))
}

/// Why a state-changing request is refused before it is looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Neither `Origin` nor `Referer` says where the request comes from.
    NoOrigin,
    /// It comes from another site.
    ForeignOrigin(String),
    /// The form's CSRF token is missing or wrong.
    Csrf,
}

impl Refusal {
    pub fn message(&self) -> String {
        match self {
            Refusal::NoOrigin => "refused: the request does not say which page sent it (no Origin or Referer header)".into(),
            Refusal::ForeignOrigin(origin) => {
                format!("refused: the request was sent by a page of another site ({origin})")
            }
            Refusal::Csrf => "refused: the form's security token is missing or out of date; reload the page and try again".into(),
        }
    }
}

/// Checks that a state-changing request was sent by a page of this
/// console: its `Origin` — or, when a browser sends none, its `Referer` —
/// must have the request's own `Host`.
pub fn same_origin(headers: &HeaderMap) -> Result<(), Refusal> {
    let host = headers
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("");
    let sender = headers
        .get(header::ORIGIN)
        .and_then(|value| value.to_str().ok())
        .filter(|origin| *origin != "null")
        .or_else(|| {
            headers
                .get(header::REFERER)
                .and_then(|value| value.to_str().ok())
        })
        .ok_or(Refusal::NoOrigin)?;
    let authority = sender
        .strip_prefix("http://")
        .or_else(|| sender.strip_prefix("https://"))
        .map(|rest| rest.split('/').next().unwrap_or(""));
    match authority {
        Some(authority) if !host.is_empty() && authority.eq_ignore_ascii_case(host) => Ok(()),
        _ => Err(Refusal::ForeignOrigin(sender.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;
    use crate::clock::ManualClock;

    fn sessions(clock: &Arc<ManualClock>) -> Sessions {
        Sessions::with_limits(
            clock.clone(),
            Duration::from_secs(600),
            Duration::from_secs(3_600),
        )
    }

    #[test]
    fn a_session_ends_after_its_idle_timeout_and_use_keeps_it_alive() {
        let clock = Arc::new(ManualClock::new(Utc::now()));
        let sessions = sessions(&clock);
        let id = sessions.start(Operator::token("alice"));
        clock.advance(Duration::from_secs(599));
        assert_eq!(
            sessions.touch(&id).expect("alive").operator.as_str(),
            "alice"
        );
        clock.advance(Duration::from_secs(599));
        assert!(
            sessions.touch(&id).is_some(),
            "use restarted the idle timer"
        );
        clock.advance(Duration::from_secs(600));
        assert!(sessions.touch(&id).is_none(), "idle too long");
        assert!(sessions.touch(&id).is_none(), "and forgotten");
    }

    #[test]
    fn a_session_ends_at_its_longest_life_however_busy() {
        let clock = Arc::new(ManualClock::new(Utc::now()));
        let sessions = sessions(&clock);
        let id = sessions.start(Operator::token("alice"));
        for _ in 0..11 {
            clock.advance(Duration::from_secs(300));
            assert!(sessions.touch(&id).is_some());
        }
        clock.advance(Duration::from_secs(300));
        assert!(sessions.touch(&id).is_none());
    }

    #[test]
    fn ids_and_csrf_tokens_are_random_and_signing_out_ends_the_session() {
        let clock = Arc::new(ManualClock::new(Utc::now()));
        let sessions = sessions(&clock);
        let first = sessions.start(Operator::token("alice"));
        let second = sessions.start(Operator::token("alice"));
        assert_ne!(first, second);
        assert_eq!(first.len(), 64);
        let session = sessions.touch(&first).unwrap();
        assert_ne!(session.csrf, sessions.touch(&second).unwrap().csrf);
        assert!(csrf_matches(&session.csrf, &session.csrf.clone()));
        assert!(!csrf_matches(&session.csrf, ""));
        assert!(!csrf_matches(&session.csrf, &session.csrf[1..]));
        sessions.end(&first);
        assert!(sessions.touch(&first).is_none());
        assert!(sessions.touch(&second).is_some());
    }

    #[test]
    fn the_cookie_carries_the_session_id_and_is_http_only_and_strict() {
        let cookie = session_cookie("abc");
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("other=1; palworker_console=abc; x=y"),
        );
        assert_eq!(cookie_session(&headers).as_deref(), Some("abc"));
        assert_eq!(cookie_session(&HeaderMap::new()), None);
    }

    #[test]
    fn only_requests_from_the_consoles_own_pages_pass_the_origin_check() {
        let headers = |pairs: &[(header::HeaderName, &'static str)]| {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                map.insert(name.clone(), HeaderValue::from_static(value));
            }
            map
        };
        let host = (header::HOST, "127.0.0.1:9464");
        assert_eq!(
            same_origin(&headers(&[
                host.clone(),
                (header::ORIGIN, "http://127.0.0.1:9464")
            ])),
            Ok(())
        );
        assert_eq!(
            same_origin(&headers(&[
                host.clone(),
                (header::REFERER, "http://127.0.0.1:9464/held")
            ])),
            Ok(())
        );
        assert!(matches!(
            same_origin(&headers(&[
                host.clone(),
                (header::ORIGIN, "http://evil.example")
            ])),
            Err(Refusal::ForeignOrigin(_))
        ));
        assert!(matches!(
            same_origin(&headers(&[
                host.clone(),
                (header::ORIGIN, "http://127.0.0.1:9464.evil.example")
            ])),
            Err(Refusal::ForeignOrigin(_))
        ));
        assert_eq!(same_origin(&headers(&[host])), Err(Refusal::NoOrigin));
    }
}
