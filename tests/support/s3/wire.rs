//! The wire side of the S3 helpers: one blocking HTTP/1.1 request per connection
//! (`Connection: close`; Content-Length, chunked and read-to-EOF answers) for presigned
//! URLs, and a minimal ListObjectsV2 XML reader.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use url::Url;

use super::super::http::Response;

/// (key, size) of each `<Contents>` of a ListObjectsV2 answer, and its continuation token.
/// By hand: s3s-fs lists no `<ETag>`, which rusty-s3's parser requires.
pub(super) fn parse_list(xml: &str) -> (Vec<(String, u64)>, Option<String>) {
    let url_encoded = xml_tag(xml, "EncodingType") == Some("url");
    let items = xml.split("<Contents>").skip(1).map(|item| {
        let key = xml_unescape(xml_tag(item, "Key").expect("Key"));
        let key = if url_encoded {
            percent_decode(&key)
        } else {
            key
        };
        let size = xml_tag(item, "Size").and_then(|s| s.parse().ok());
        (key, size.expect("Size"))
    });
    let next = xml_tag(xml, "NextContinuationToken").map(xml_unescape);
    (items.collect(), next)
}

/// The text of the first `<name>...</name>` in `xml`.
fn xml_tag<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let start = xml.find(&format!("<{name}>"))? + name.len() + 2;
    let len = xml[start..].find(&format!("</{name}>"))?;
    Some(&xml[start..start + len])
}

fn xml_unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

fn percent_decode(s: &str) -> String {
    let (b, mut out, mut i) = (s.as_bytes(), Vec::new(), 0);
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
            Some(v) if b[i] == b'%' => {
                out.push(v);
                i += 3;
            }
            _ => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Sends one request (`Connection: close`) to the URL's host:port and reads the answer
/// (Content-Length, chunked or read-to-EOF bodies).
pub fn send(
    method: &str,
    url: &Url,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    let host = url
        .host_str()
        .ok_or_else(|| std::io::Error::other("no host"))?;
    let addr = format!("{host}:{}", url.port_or_known_default().unwrap_or(80));
    let mut s = TcpStream::connect(&addr)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let target = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    };
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if !body.is_empty() || matches!(method, "PUT" | "POST") {
        head += &format!("Content-Length: {}\r\n", body.len());
    }
    for (k, v) in headers {
        head += &format!("{k}: {v}\r\n");
    }
    head += "\r\n";
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    read_response(&mut BufReader::new(s), method == "HEAD")
}

fn read_line(r: &mut impl BufRead) -> std::io::Result<String> {
    let mut line = Vec::new();
    r.read_until(b'\n', &mut line)?;
    Ok(String::from_utf8_lossy(&line).trim_end().to_owned())
}

fn read_response(r: &mut impl BufRead, head_only: bool) -> std::io::Result<Response> {
    let (status, headers) = loop {
        let line = read_line(r)?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let mut headers = Vec::new();
        loop {
            let l = read_line(r)?;
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                headers.push((k.trim().to_owned(), v.trim().to_owned()));
            }
        }
        if !(100..200).contains(&status) {
            break (status, headers);
        }
    };
    let find = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.to_ascii_lowercase())
    };
    let mut body = Vec::new();
    if head_only || status == 204 || status == 304 {
    } else if find("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        loop {
            let size_line = read_line(r)?;
            let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| std::io::Error::other(format!("bad chunk size {size_line:?}")))?;
            if size == 0 {
                while !read_line(r)?.is_empty() {}
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            r.read_exact(&mut body[start..])?;
            read_line(r)?;
        }
    } else if let Some(len) = find("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.resize(len, 0);
        r.read_exact(&mut body)?;
    } else {
        r.read_to_end(&mut body)?;
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}
