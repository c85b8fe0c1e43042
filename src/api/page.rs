//! The status page: `GET /` (`page/index.html`) and the player it uses,
//! `GET /assets/hls.light.min.js` (hls.js 1.7.4, light build, Apache-2.0, vendored from npm
//! in `vendor/hls.js` with its licence, stored gzipped and sent as such: 120 KB instead of
//! 389 KB in the binary, which has a 10 MB budget, and on a phone's link). Both are
//! compiled into the binary: a venue box may have no internet, so nothing is loaded from
//! a CDN. Neither holds any data: the
//! page reads the JSON API with the browser's token, so both are served without one.

use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};

const INDEX_HTML: &str = include_str!("page/index.html");
const HLS_JS_GZ: &[u8] = include_bytes!("../../vendor/hls.js/hls.light.min.js.gz");

/// Paths served without a token.
pub fn is_public(path: &str) -> bool {
    path == "/" || path == "/assets/hls.light.min.js"
}

#[cfg_attr(test, utoipa::path(get, path = "/", operation_id = "status_page", tag = "status",
    responses((status = 200, description = "The status page", body = String, content_type = "text/html"))))]
pub async fn index() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        INDEX_HTML,
    )
        .into_response()
}

/// Every browser that can run hls.js accepts gzip, so the stored bytes go out as they are.
#[cfg_attr(test, utoipa::path(get, path = "/assets/hls.light.min.js", operation_id = "hls_js", tag = "status",
    responses(
        (status = 200, description = "hls.js, gzipped", body = String, content_type = "text/javascript"),
        (status = 406, description = "The client does not accept gzip", body = super::ErrorBody),
    )))]
pub async fn hls_js(request: HeaderMap) -> Response {
    // Versioned with the binary: a day is safe, and a phone on a slow link keeps it.
    super::gzipped::response(
        &request,
        "text/javascript; charset=utf-8",
        "public, max-age=86400",
        HLS_JS_GZ,
    )
}
