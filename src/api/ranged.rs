//! Bodies served in chunks with single-range `Range` support (RFC 9110 section 14): the
//! segment files of HLS playback and the derived MP4/FLV/AAC files. Each chunk of at most
//! [`CHUNK`] bytes is read on the blocking pool as the client takes it, so a large file
//! never sits whole in memory and a slow client holds one chunk.

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};

use super::ApiError;

/// Bytes produced per step of a response body.
/// (256 KiB: with `[http] max_connections` clients each holding one, it bounds the API's
/// memory, which the board profiles' `MemoryMax` counts.)
pub const CHUNK: u64 = 256 * 1024;

/// A single byte range from a `Range` header: `Ok(None)` = the whole body.
pub fn parse_range(headers: &HeaderMap, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(value) = headers.get(header::RANGE) else {
        return Ok(None);
    };
    let Some(spec) = value.to_str().ok().and_then(|v| v.strip_prefix("bytes=")) else {
        return Ok(None); // another unit: ignore the header, as RFC 9110 allows
    };
    if spec.contains(',') {
        return Ok(None); // several ranges: the whole body is a valid answer
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().map_err(|_| ())?;
            (len.saturating_sub(n), len)
        }
        (a, "") => (a.parse().map_err(|_| ())?, len),
        (a, b) => {
            let a: u64 = a.parse().map_err(|_| ())?;
            let b: u64 = b.parse().map_err(|_| ())?;
            if b < a {
                return Err(());
            }
            (a, b.saturating_add(1).min(len))
        }
    };
    if start >= len || start >= end {
        return Err(());
    }
    Ok(Some((start, end)))
}

/// A `200` (or `206` for a `Range`) response of `len` bytes read by `read(from, to)`,
/// with `headers` added; `416` for a range outside the body.
pub fn response<R>(
    request: &HeaderMap,
    len: u64,
    headers: &[(HeaderName, String)],
    read: R,
) -> Result<Response, ApiError>
where
    R: Fn(u64, u64) -> std::io::Result<Bytes> + Clone + Send + Sync + 'static,
{
    let (status, start, end) = match parse_range(request, len) {
        Ok(None) => (StatusCode::OK, 0, len),
        Ok(Some((a, b))) => (StatusCode::PARTIAL_CONTENT, a, b),
        Err(()) => {
            return Ok((
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(header::CONTENT_RANGE, format!("bytes */{len}"))],
            )
                .into_response())
        }
    };
    let stream = futures_util::stream::unfold(start, move |at| {
        let read = read.clone();
        async move {
            if at >= end {
                return None;
            }
            let to = (at + CHUNK).min(end);
            let chunk = tokio::task::spawn_blocking(move || read(at, to)).await;
            let item = match chunk {
                Ok(Ok(bytes)) => Ok(bytes),
                Ok(Err(e)) => Err(e),
                Err(e) => Err(std::io::Error::other(e.to_string())),
            };
            let next = if item.is_ok() { to } else { end };
            Some((item, next))
        }
    });
    let mut builder = axum::http::Response::builder()
        .status(status)
        .header(header::CONTENT_LENGTH, end - start)
        .header(header::ACCEPT_RANGES, "bytes");
    for (name, value) in headers {
        builder = builder.header(name, value);
    }
    if status == StatusCode::PARTIAL_CONTENT {
        builder = builder.header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{len}", end - 1),
        );
    }
    builder
        .body(Body::from_stream(stream))
        .map_err(|e| ApiError::internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(v: &str, len: u64) -> Result<Option<(u64, u64)>, ()> {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, v.parse().unwrap());
        parse_range(&h, len)
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range(&HeaderMap::new(), 10), Ok(None));
        assert_eq!(range("bytes=0-3", 10), Ok(Some((0, 4))));
        assert_eq!(range("bytes=4-", 10), Ok(Some((4, 10))));
        assert_eq!(range("bytes=-3", 10), Ok(Some((7, 10))));
        assert_eq!(range("bytes=5-100", 10), Ok(Some((5, 10))));
        assert_eq!(range("bytes=10-", 10), Err(()));
        assert_eq!(range("bytes=5-2", 10), Err(()));
        assert_eq!(range("bytes=0-1,4-5", 10), Ok(None));
        assert_eq!(range("items=0-1", 10), Ok(None));
    }
}
