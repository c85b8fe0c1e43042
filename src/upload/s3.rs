//! The S3-compatible store: signs requests with `rusty-s3` (sans-IO SigV4, caller-owned
//! upload ids) and sends them with reqwest over rustls. Every PUT carries `Content-MD5`.
//! Errors are sorted by who must act ([`FaultKind`]): the store or link (wait and retry
//! everything), the credentials (same, and say so), this object (count toward parking),
//! or a vanished multipart upload (start that object over).

use std::time::Duration;

use bytes::Bytes;
use rusty_s3::actions::{
    AbortMultipartUpload, CompleteMultipartUpload, CreateMultipartUpload, DeleteObject, ListParts,
    PutObject, S3Action, UploadPart,
};
use rusty_s3::{Bucket, Credentials, UrlStyle};

use crate::config::{S3Config, S3Credentials};

/// How long a signed URL stays valid; requests are signed right before they are sent.
const SIGN_FOR: Duration = Duration::from_secs(3600);

/// Who has to change for a failed request to succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// Unreachable, timed out, 5xx, throttled: the link or the store. Retry everything later.
    Unavailable,
    /// The store refused the credentials or signature: retry later, tell the operator.
    Credentials,
    /// The multipart upload is gone (`NoSuchUpload`): start the object again.
    NoSuchUpload,
    /// This request was rejected (4xx, a bad digest, an error in Complete's body).
    Rejected,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct StoreError {
    pub kind: FaultKind,
    pub message: String,
}

impl StoreError {
    fn new(kind: FaultKind, message: impl Into<String>) -> StoreError {
        StoreError {
            kind,
            message: message.into(),
        }
    }
}

/// A part as ListParts reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedPart {
    pub number: u32,
    pub size: u64,
    /// Some stores (s3s-fs) list no ETags: then the stored ones carry the resume.
    pub etag: Option<String>,
}

/// A request body with what the store checks about it.
pub struct Payload {
    /// `Content-MD5`: base64 of the body's MD5.
    pub md5: String,
    pub len: u64,
    pub body: reqwest::Body,
    /// Covers the whole request.
    pub timeout: Duration,
}

/// A configured bucket with its credentials and HTTP client.
pub struct S3Store {
    bucket: Bucket,
    credentials: Credentials,
    http: reqwest::Client,
}

/// Base64 of the MD5 digest, for `Content-MD5`.
pub fn content_md5(data: &[u8]) -> String {
    use base64::Engine;
    use md5::Digest;
    base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(data))
}

/// Lower-case hex MD5 (what a plain object's ETag is).
pub fn hex_md5(data: &[u8]) -> String {
    use md5::Digest;
    md5::Md5::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl S3Store {
    pub fn new(config: &S3Config, credentials: &S3Credentials) -> Result<S3Store, String> {
        let endpoint = config
            .endpoint
            .parse()
            .map_err(|e| format!("upload.s3.endpoint {:?}: {e}", config.endpoint))?;
        let style = if config.path_style {
            UrlStyle::Path
        } else {
            UrlStyle::VirtualHost
        };
        let bucket = Bucket::new(
            endpoint,
            style,
            config.bucket.clone(),
            config.region.clone(),
        )
        .map_err(|e| format!("upload.s3: {e}"))?;
        let credentials = match &credentials.session_token {
            Some(token) => Credentials::new_with_token(
                credentials.access_key.clone(),
                credentials.secret_key.clone(),
                token.clone(),
            ),
            None => Credentials::new(
                credentials.access_key.clone(),
                credentials.secret_key.clone(),
            ),
        };
        let mut http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .tcp_keepalive(Duration::from_secs(30))
            .pool_idle_timeout(Duration::from_secs(30))
            .user_agent(concat!("edgerec/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &config.ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| format!("upload.s3.ca_file {}: {e}", path.display()))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("upload.s3.ca_file {}: {e}", path.display()))?
            {
                http = http.add_root_certificate(cert);
            }
        }
        let http = http
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(S3Store {
            bucket,
            credentials,
            http,
        })
    }

    /// The object's URL without a signature (for callbacks when no public base is set).
    pub fn object_url(&self, key: &str) -> String {
        self.bucket
            .object_url(key)
            .map(|u| u.to_string())
            .unwrap_or_default()
    }

    /// A single PUT.
    pub async fn put_object(
        &self,
        key: &str,
        payload: Payload,
    ) -> Result<Option<String>, StoreError> {
        let action = PutObject::new(&self.bucket, Some(&self.credentials), key);
        self.put_signed(action, payload).await
    }

    /// Signs `action` with the payload's `Content-MD5` and sends the body; returns the
    /// ETag the store answered with.
    async fn put_signed<'a>(
        &self,
        mut action: impl S3Action<'a>,
        payload: Payload,
    ) -> Result<Option<String>, StoreError> {
        action
            .headers_mut()
            .insert("content-md5", payload.md5.clone());
        let url = action.sign(SIGN_FOR);
        let response = self
            .send(
                self.http
                    .put(url)
                    .header("content-md5", &payload.md5)
                    .header(reqwest::header::CONTENT_LENGTH, payload.len)
                    .body(payload.body)
                    .timeout(payload.timeout),
            )
            .await?;
        Ok(etag(&response))
    }

    pub async fn create_multipart(&self, key: &str) -> Result<String, StoreError> {
        let action = CreateMultipartUpload::new(&self.bucket, Some(&self.credentials), key);
        let url = action.sign(SIGN_FOR);
        let response = self
            .send(self.http.post(url).timeout(Duration::from_secs(60)))
            .await?;
        let body = read_body(response).await?;
        let parsed = CreateMultipartUpload::parse_response(&body).map_err(|e| {
            StoreError::new(
                FaultKind::Rejected,
                format!("CreateMultipartUpload answer not understood: {e}"),
            )
        })?;
        Ok(parsed.upload_id().to_owned())
    }

    /// Sends one part; returns its ETag.
    pub async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        payload: Payload,
    ) -> Result<String, StoreError> {
        let number16 = u16::try_from(number)
            .map_err(|_| StoreError::new(FaultKind::Rejected, "more than 10000 parts"))?;
        let action = UploadPart::new(
            &self.bucket,
            Some(&self.credentials),
            key,
            number16,
            upload_id,
        );
        let etag = self.put_signed(action, payload).await?;
        etag.ok_or_else(|| {
            StoreError::new(
                FaultKind::Rejected,
                format!("part {number} was accepted without an ETag"),
            )
        })
    }

    /// Every part the store holds for the upload (all pages).
    pub async fn list_parts(
        &self,
        key: &str,
        upload_id: &str,
    ) -> Result<Vec<ListedPart>, StoreError> {
        let mut out = Vec::new();
        let mut marker: Option<u16> = None;
        loop {
            let mut action = ListParts::new(&self.bucket, Some(&self.credentials), key, upload_id);
            if let Some(m) = marker {
                action.set_part_number_marker(m);
            }
            let url = action.sign(SIGN_FOR);
            let response = self
                .send(self.http.get(url).timeout(Duration::from_secs(60)))
                .await?;
            let body = read_body(response).await?;
            let page = parse_list_parts(&body)?;
            out.extend(page.parts);
            match page.next_marker {
                Some(next) if page.truncated && Some(next) != marker => marker = Some(next),
                _ => break,
            }
        }
        Ok(out)
    }

    /// Completes the upload with `etags` for parts 1..=N in order. A 200 whose body is an
    /// `<Error>` is an error.
    pub async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        etags: &[String],
    ) -> Result<(), StoreError> {
        let action = CompleteMultipartUpload::new(
            &self.bucket,
            Some(&self.credentials),
            key,
            upload_id,
            etags.iter().map(String::as_str),
        );
        let url = action.sign(SIGN_FOR);
        let body = action.body();
        let response = self
            .send(
                self.http
                    .post(url)
                    .body(body)
                    .timeout(Duration::from_secs(300)),
            )
            .await?;
        let text = read_body(response).await?;
        if let Some(error) = error_in_body(&text) {
            return Err(classify_error(200, &error.0, &error.1));
        }
        Ok(())
    }

    /// Deletes an object; one that is not there counts as deleted (S3 answers 204 either
    /// way; a 404 from another store is taken the same).
    pub async fn delete_object(&self, key: &str) -> Result<(), StoreError> {
        let action = DeleteObject::new(&self.bucket, Some(&self.credentials), key);
        self.send_delete(action.sign(SIGN_FOR)).await
    }

    /// Aborts a multipart upload (its parts are freed); one already gone counts as done.
    pub async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), StoreError> {
        let action =
            AbortMultipartUpload::new(&self.bucket, Some(&self.credentials), key, upload_id);
        self.send_delete(action.sign(SIGN_FOR)).await
    }

    /// A DELETE for which "not found" is success.
    async fn send_delete(&self, url: url::Url) -> Result<(), StoreError> {
        let request = self.http.delete(url).timeout(Duration::from_secs(60));
        self.send_accepting(request, reqwest::StatusCode::NOT_FOUND)
            .await
            .map(drop)
    }

    /// Sends a request; a non-2xx answer becomes a classified [`StoreError`].
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, StoreError> {
        self.send_accepting(request, reqwest::StatusCode::OK).await
    }

    /// [`Self::send`], taking `also` as success too (a DELETE's 404: already gone).
    async fn send_accepting(
        &self,
        request: reqwest::RequestBuilder,
        also: reqwest::StatusCode,
    ) -> Result<reqwest::Response, StoreError> {
        let response = request.send().await.map_err(transport_error)?;
        let status = response.status();
        if status.is_success() || status == also {
            return Ok(response);
        }
        let text = response.text().await.unwrap_or_default();
        let (code, message) = error_in_body(&text).unwrap_or_default();
        Err(classify_error(status.as_u16(), &code, &message))
    }
}

fn etag(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get(reqwest::header::ETAG)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

async fn read_body(response: reqwest::Response) -> Result<String, StoreError> {
    response.text().await.map_err(transport_error)
}

fn transport_error(e: reqwest::Error) -> StoreError {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "connection failed"
    };
    // The source chain names the cause (refused, reset, DNS) without the signed URL.
    let cause = deepest_source(&e).unwrap_or_default();
    StoreError::new(FaultKind::Unavailable, format!("store {what}: {cause}"))
}

/// The innermost cause of an error chain (for reqwest: refused, reset, DNS), if any. The
/// top-level text is left out on purpose: reqwest puts the (signed) URL there.
pub fn deepest_source(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cause = None;
    let mut source = e.source();
    while let Some(s) = source {
        cause = Some(s.to_string());
        source = s.source();
    }
    cause
}

/// Sorts a store error answer (`status`, S3 `Code`, `Message`) by who must act.
pub fn classify_error(status: u16, code: &str, message: &str) -> StoreError {
    let kind = match (status, code) {
        (_, "NoSuchUpload") => FaultKind::NoSuchUpload,
        (
            _,
            "InvalidAccessKeyId"
            | "SignatureDoesNotMatch"
            | "AccessDenied"
            | "ExpiredToken"
            | "InvalidToken"
            | "TokenRefreshRequired"
            | "AuthorizationHeaderMalformed",
        ) => FaultKind::Credentials,
        (401 | 403, _) => FaultKind::Credentials,
        (_, "SlowDown" | "InternalError" | "ServiceUnavailable" | "RequestTimeout") => {
            FaultKind::Unavailable
        }
        (408 | 429, _) | (500..=599, _) => FaultKind::Unavailable,
        _ => FaultKind::Rejected,
    };
    let code = if code.is_empty() {
        "no error code"
    } else {
        code
    };
    let detail = if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    };
    StoreError::new(kind, format!("store answered {status} {code}{detail}"))
}

/// `(Code, Message)` of an S3 `<Error>` document, if `body` is one.
pub fn error_in_body(body: &str) -> Option<(String, String)> {
    let start = body.find("<Error>")?;
    let error = &body[start..];
    Some((
        xml_text(error, "Code").unwrap_or_default(),
        xml_text(error, "Message").unwrap_or_default(),
    ))
}

fn xml_text(doc: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = doc.find(&open)? + open.len();
    let end = doc[start..].find(&close)? + start;
    Some(doc[start..end].trim().to_owned())
}

struct PartsPage {
    parts: Vec<ListedPart>,
    truncated: bool,
    next_marker: Option<u16>,
}

/// ListParts answers. Parsed by hand rather than with rusty-s3's parser, because stores
/// such as s3s-fs omit `ETag`, which that parser requires.
fn parse_list_parts(body: &str) -> Result<PartsPage, StoreError> {
    if !body.contains("ListPartsResult") {
        return Err(StoreError::new(
            FaultKind::Rejected,
            format!("ListParts answer not understood: {:.200}", body),
        ));
    }
    let mut parts = Vec::new();
    let mut rest = body;
    while let Some(start) = rest.find("<Part>") {
        let Some(len) = rest[start..].find("</Part>") else {
            break;
        };
        let part = &rest[start..start + len];
        let number = xml_text(part, "PartNumber").and_then(|s| s.parse().ok());
        let size = xml_text(part, "Size").and_then(|s| s.parse().ok());
        if let (Some(number), Some(size)) = (number, size) {
            parts.push(ListedPart {
                number,
                size,
                etag: xml_text(part, "ETag")
                    .map(|e| e.replace("&quot;", "\""))
                    .filter(|e| !e.is_empty()),
            });
        }
        rest = &rest[start + len..];
    }
    Ok(PartsPage {
        parts,
        truncated: xml_text(body, "IsTruncated").as_deref() == Some("true"),
        next_marker: xml_text(body, "NextPartNumberMarker").and_then(|s| s.parse().ok()),
    })
}

/// Turns a body into a throttled, progress-counting stream of 64 KiB chunks.
pub fn metered_body(
    data: Bytes,
    throttle: std::sync::Arc<super::throttle::Throttle>,
    progress: std::sync::Arc<std::sync::atomic::AtomicU64>,
) -> reqwest::Body {
    const CHUNK: usize = 64 * 1024;
    let stream = futures_util::stream::unfold(0usize, move |offset| {
        let (data, throttle, progress) = (data.clone(), throttle.clone(), progress.clone());
        async move {
            if offset >= data.len() {
                return None;
            }
            let end = (offset + CHUNK).min(data.len());
            throttle.take((end - offset) as u64).await;
            progress.fetch_add((end - offset) as u64, std::sync::atomic::Ordering::Relaxed);
            Some((Ok::<Bytes, std::io::Error>(data.slice(offset..end)), end))
        }
    });
    reqwest::Body::wrap_stream(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests() {
        assert_eq!(hex_md5(b""), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(content_md5(b""), "1B2M2Y8AsgTpgAmY7PhCfg==");
    }

    #[test]
    fn errors_are_sorted_by_who_must_act() {
        let body = "<?xml version=\"1.0\"?><Error><Code>NoSuchUpload</Code><Message>gone</Message></Error>";
        let (code, msg) = error_in_body(body).unwrap();
        assert_eq!(
            classify_error(404, &code, &msg).kind,
            FaultKind::NoSuchUpload
        );
        assert_eq!(
            classify_error(403, "InvalidAccessKeyId", "").kind,
            FaultKind::Credentials
        );
        assert_eq!(
            classify_error(400, "SignatureDoesNotMatch", "").kind,
            FaultKind::Credentials
        );
        assert_eq!(classify_error(503, "", "").kind, FaultKind::Unavailable);
        assert_eq!(
            classify_error(200, "InternalError", "").kind,
            FaultKind::Unavailable
        );
        assert_eq!(
            classify_error(400, "BadDigest", "").kind,
            FaultKind::Rejected
        );
        assert_eq!(
            classify_error(400, "InvalidPart", "").kind,
            FaultKind::Rejected
        );
        let e = classify_error(403, "AccessDenied", "no");
        assert_eq!(e.message, "store answered 403 AccessDenied: no");
        assert!(error_in_body("<CompleteMultipartUploadResult/>").is_none());
    }

    #[test]
    fn list_parts_with_and_without_etags() {
        let body = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListPartsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Bucket>b</Bucket>
<IsTruncated>true</IsTruncated><NextPartNumberMarker>2</NextPartNumberMarker>
<Part><PartNumber>1</PartNumber><ETag>&quot;abc&quot;</ETag><Size>5242880</Size></Part>
<Part><PartNumber>2</PartNumber><Size>5242880</Size></Part></ListPartsResult>"#;
        let page = parse_list_parts(body).unwrap();
        assert!(page.truncated);
        assert_eq!(page.next_marker, Some(2));
        assert_eq!(
            page.parts,
            vec![
                ListedPart {
                    number: 1,
                    size: 5_242_880,
                    etag: Some("\"abc\"".into())
                },
                ListedPart {
                    number: 2,
                    size: 5_242_880,
                    etag: None
                },
            ]
        );
        assert!(parse_list_parts("<html>").is_err());
    }
}
