//! The page around every console page (head, navigation, who is signed
//! in), the forms that change something (each with its CSRF field), and
//! how times, durations and states are written.

use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};
use palworker_core::{ActionRecord, ActionState};

use super::session::CSRF_FIELD;
use crate::operators::Operator;

/// Who is looking at a page.
#[derive(Debug, Clone)]
pub struct Viewer {
    pub operator: Operator,
    /// The session's CSRF token for its forms; `None` for a request that
    /// authenticated with `Authorization: Bearer` (no cookie: nothing for
    /// another site to ride on).
    pub csrf: Option<String>,
    /// Said once at the top of the page (what the last change did).
    pub notice: Option<String>,
}

/// The navigation: path, label.
const NAVIGATION: [(&str, &str); 6] = [
    ("/", "Overview"),
    ("/events", "Events"),
    ("/held", "Held plans"),
    ("/failed", "Failed"),
    ("/manual", "Manual"),
    ("/audit", "Audit"),
];

/// A whole page: `current` is the navigation entry to mark.
pub fn page(title: &str, current: &str, viewer: Option<&Viewer>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · palworker" }
                link rel="stylesheet" href=(super::assets::STYLESHEET_PATH);
            }
            body {
                a class="skip" href="#main" { "Skip to the content" }
                header class="top" {
                    a class="brand" href="/" { "palworker" }
                    @if let Some(viewer) = viewer {
                        nav aria-label="Console" {
                            ul {
                                @for (path, label) in NAVIGATION {
                                    li {
                                        @if path == current {
                                            a href=(path) aria-current="page" { (label) }
                                        } @else {
                                            a href=(path) { (label) }
                                        }
                                    }
                                }
                            }
                        }
                        div class="who" {
                            "Signed in as " strong { (viewer.operator) }
                            @if viewer.csrf.is_some() {
                                (post_form("/sign-out", "Sign out", "link", &[], viewer))
                            }
                        }
                    }
                }
                main id="main" tabindex="-1" {
                    h1 { (title) }
                    @if let Some(notice) = viewer.and_then(|v| v.notice.as_ref()) {
                        p class="notice" role="status" { (notice) }
                    }
                    (body)
                }
            }
        }
    }
}

/// A form that POSTs to `action` with the CSRF field, `fields` as hidden
/// inputs, and one button.
pub fn post_form(
    action: &str,
    button: &str,
    class: &str,
    fields: &[(&str, String)],
    viewer: &Viewer,
) -> Markup {
    html! {
        form class="inline" method="post" action=(action) {
            @if let Some(csrf) = &viewer.csrf {
                input type="hidden" name=(CSRF_FIELD) value=(csrf);
            }
            @for (name, value) in fields {
                input type="hidden" name=(name) value=(value);
            }
            button type="submit" class=(class) { (button) }
        }
    }
}

/// An instant as `2026-12-04 09:14:07 UTC`.
pub fn when(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// An optional instant, or a dash.
pub fn when_or_dash(at: Option<DateTime<Utc>>) -> String {
    at.map(when).unwrap_or_else(|| "–".to_owned())
}

/// Seconds as the largest units that say them: `45 s`, `12 min`, `3.5 h`,
/// `2.1 d`.
pub fn seconds_text(seconds: f64) -> String {
    match seconds {
        s if s < 60.0 => format!("{s:.0} s"),
        s if s < 3_600.0 => format!("{:.0} min", s / 60.0),
        s if s < 86_400.0 => format!("{:.1} h", s / 3_600.0),
        s => format!("{:.1} d", s / 86_400.0),
    }
}

/// An action's state as a badge (the word is the meaning; colour helps).
pub fn state_badge(state: ActionState) -> Markup {
    let class = match state {
        ActionState::Done | ActionState::Noop => "badge ok",
        ActionState::Failed => "badge bad",
        ActionState::Manual | ActionState::Held | ActionState::Orphaned => "badge attention",
        _ => "badge",
    };
    html! { span class=(class) { (state.as_str()) } }
}

/// The link an action moves to: a partner ID, or no link.
pub fn desired_text(action: &ActionRecord) -> String {
    match action.desired.partner_id() {
        Some(partner) => partner.as_str().to_owned(),
        None => "no link".to_owned(),
    }
}

/// A page's links to newer and older pages.
pub fn pager(newer: Option<String>, older: Option<String>) -> Markup {
    html! {
        @if newer.is_some() || older.is_some() {
            nav class="pager" aria-label="Pages" {
                @if let Some(href) = newer { a href=(href) { "← Newest" } }
                @if let Some(href) = older { a href=(href) rel="next" { "Older →" } }
            }
        }
    }
}

/// A query string from `pairs`, leaving out empty values.
pub fn query(pairs: &[(&str, String)]) -> String {
    let mut serializer = url::form_urlencoded::Serializer::new(String::new());
    for (name, value) in pairs {
        if !value.is_empty() {
            serializer.append_pair(name, value);
        }
    }
    let encoded = serializer.finish();
    if encoded.is_empty() {
        String::new()
    } else {
        format!("?{encoded}")
    }
}

/// Long text shortened for a table cell (maud escapes it).
pub use palworker_core::views::shorten;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_in_their_largest_unit() {
        assert_eq!(seconds_text(4.2), "4 s");
        assert_eq!(seconds_text(600.0), "10 min");
        assert_eq!(seconds_text(5_400.0), "1.5 h");
        assert_eq!(seconds_text(172_800.0), "2.0 d");
    }

    #[test]
    fn queries_leave_out_empty_values_and_encode_the_rest() {
        assert_eq!(query(&[("a", String::new())]), "");
        assert_eq!(
            query(&[("employee", "E 1&x".into()), ("type", String::new())]),
            "?employee=E+1%26x"
        );
    }

    #[test]
    fn text_is_escaped_by_the_templates() {
        let viewer = Viewer {
            operator: Operator::token("<script>"),
            csrf: Some("t".into()),
            notice: None,
        };
        let html = page("x", "/", Some(&viewer), html! {}).into_string();
        assert!(html.contains("&lt;script&gt;") && !html.contains("<script>"));
    }
}
