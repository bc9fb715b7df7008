//! The console's one asset: its stylesheet, compiled into the binary and
//! served by the worker (no CDN, no build step).

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

/// Where the stylesheet is served; the version in the path lets browsers
/// keep it until the worker is upgraded.
pub const STYLESHEET_PATH: &str = concat!("/assets/console-", env!("CARGO_PKG_VERSION"), ".css");

const STYLESHEET: &str = include_str!("console.css");

pub async fn stylesheet() -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/css; charset=utf-8"),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=86400"),
            ),
        ],
        STYLESHEET,
    )
        .into_response()
}
