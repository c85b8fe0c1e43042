//! Static bytes kept gzipped in the binary (the status page's player, the OpenAPI
//! description) and sent as they are, `Content-Encoding: gzip`, to a client that accepts
//! gzip: every browser, and `curl --compressed`. The binary has no inflater (it has a
//! 10 MB budget), so a client that does not accept gzip gets a 406 that says what to send
//! rather than bytes it cannot read.

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::ApiError;

/// `gz` as the body for `content_type`, or a 406.
pub fn response(
    request: &HeaderMap,
    content_type: &'static str,
    cache_control: &'static str,
    gz: &'static [u8],
) -> Response {
    if !accepts_gzip(request) {
        return ApiError {
            status: StatusCode::NOT_ACCEPTABLE,
            message: "this is stored gzipped: send Accept-Encoding: gzip (curl --compressed)"
                .into(),
        }
        .into_response();
    }
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_ENCODING, "gzip"),
            (header::CACHE_CONTROL, cache_control),
            (header::VARY, "Accept-Encoding"),
        ],
        gz,
    )
        .into_response()
}

/// Whether `Accept-Encoding` lists `gzip` (or `*`) with a weight above 0.
fn accepts_gzip(request: &HeaderMap) -> bool {
    request
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';').map(str::trim);
            let coding = parts.next().unwrap_or("");
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !refused
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepts(value: &str) -> bool {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT_ENCODING, value.parse().unwrap());
        accepts_gzip(&h)
    }

    #[test]
    fn accept_encoding() {
        assert!(!accepts_gzip(&HeaderMap::new()));
        assert!(accepts("gzip"));
        assert!(accepts("gzip, deflate, br"));
        assert!(accepts("deflate, GZIP;q=0.5"));
        assert!(accepts("*"));
        assert!(!accepts("identity"));
        assert!(!accepts("br, deflate"));
        assert!(!accepts("gzip;q=0"));
        assert!(!accepts("gzip; q=0.0, identity"));
    }
}
