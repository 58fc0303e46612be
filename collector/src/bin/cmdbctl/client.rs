//! The HTTP side of cmdbctl: authenticated requests to the collector's API (JSON bodies
//! out, JSON answers in, read within a size bound), API errors turned into their JSON
//! message.
//!
//! Never follows redirects and never uses a proxy from the environment: the bearer token
//! goes to the URL the operator gave and nowhere else.

use std::io::Read;
use std::time::Duration;

use cmdb_collector::http::json::ErrorBody;
use reqwest::Method;
use serde_json::Value;

/// Largest response read (a page of 1000 CIs, a long version history).
pub const MAX_RESPONSE_BYTES: u64 = 64 * 1024 * 1024;
/// The whole request, connect to last byte.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A request that did not produce the expected answer (exit 1).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The API answered with its JSON error.
    #[error("{message} (HTTP {status}, {code})")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    /// An HTTP error without the API's error body (a proxy, another server).
    #[error("HTTP {status} from {url}: {snippet}")]
    Http {
        status: u16,
        url: String,
        snippet: String,
    },
    /// The request did not complete: connection refused, timeout, reset.
    #[error("cannot reach {url}: {reason}")]
    Transport { url: String, reason: String },
    /// The answer is larger than [`MAX_RESPONSE_BYTES`].
    #[error("the answer from {url} is larger than {MAX_RESPONSE_BYTES} bytes")]
    TooLarge { url: String },
    /// The answer is not the JSON expected.
    #[error("unexpected answer from {url}: {reason}")]
    Decode { url: String, reason: String },
}

/// A client for one collector.
pub struct Api {
    http: reqwest::blocking::Client,
    base_url: String,
    token: String,
}

// === impl Api ===

impl Api {
    /// `base_url` is `http://host:port[/prefix]` without a trailing slash.
    pub fn new(base_url: &str, token: &str) -> Result<Self, ClientError> {
        let http = reqwest::blocking::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .user_agent(concat!("cmdbctl/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Transport {
                url: base_url.to_owned(),
                reason: chain(&e),
            })?;
        Ok(Self {
            http,
            base_url: base_url.to_owned(),
            token: token.to_owned(),
        })
    }

    /// GET `path` (starting with `/`, segments already encoded) with `query`; the JSON body.
    pub fn get(&self, path: &str, query: &[(&str, String)]) -> Result<Value, ClientError> {
        self.send(Method::GET, path, query, None)
    }

    /// `method` on `path` with `query` and an optional JSON `body`; the JSON answer.
    pub fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let body = match body {
            Some(body) => Some((
                "application/json",
                serde_json::to_vec(body).map_err(|e| ClientError::Decode {
                    url: format!("{}{path}", self.base_url),
                    reason: format!("cannot encode the request: {e}"),
                })?,
            )),
            None => None,
        };
        self.send_bytes(method, path, query, body)
    }

    /// `method` on `path` with `query` and an optional raw body of a content type; the
    /// JSON answer.
    pub fn send_bytes(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<Value, ClientError> {
        let url = format!("{}{path}", self.base_url);
        let transport = |e: reqwest::Error| ClientError::Transport {
            url: url.clone(),
            reason: chain(&e),
        };
        let mut req = self
            .http
            .request(method, &url)
            .query(query)
            .bearer_auth(&self.token)
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some((content_type, bytes)) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .body(bytes);
        }
        let resp = req.send().map_err(transport)?;
        let body = answer(resp, &url)?;
        serde_json::from_slice(&body).map_err(|e| ClientError::Decode {
            url,
            reason: e.to_string(),
        })
    }
}

impl Api {
    /// GET `path` with `query`; the raw body of a successful answer (reports that are not
    /// JSON: CSV, HTML).
    pub fn get_raw(&self, path: &str, query: &[(&str, String)]) -> Result<Vec<u8>, ClientError> {
        let url = format!("{}{path}", self.base_url);
        let resp = self
            .http
            .get(&url)
            .query(query)
            .bearer_auth(&self.token)
            .send()
            .map_err(|e| ClientError::Transport {
                url: url.clone(),
                reason: chain(&e),
            })?;
        answer(resp, &url)
    }
}

/// A response's body, bounded by [`MAX_RESPONSE_BYTES`]; an unsuccessful status becomes the
/// API's error (or the HTTP status with a snippet of the body).
fn answer(resp: reqwest::blocking::Response, url: &str) -> Result<Vec<u8>, ClientError> {
    let status = resp.status();
    let mut body = Vec::new();
    resp.take(MAX_RESPONSE_BYTES + 1)
        .read_to_end(&mut body)
        .map_err(|e| ClientError::Transport {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
    if body.len() as u64 > MAX_RESPONSE_BYTES {
        return Err(ClientError::TooLarge {
            url: url.to_owned(),
        });
    }
    if !status.is_success() {
        return Err(match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(e) => ClientError::Api {
                status: status.as_u16(),
                code: e.error.code,
                message: e.error.message,
            },
            Err(_) => ClientError::Http {
                status: status.as_u16(),
                url: url.to_owned(),
                snippet: snippet(&body),
            },
        });
    }
    Ok(body)
}

/// An error's causes, "a: b: c". reqwest's own top-level message only repeats the URL, so
/// it is used only when there is no cause.
fn chain(e: &dyn std::error::Error) -> String {
    let Some(first) = e.source() else {
        return e.to_string();
    };
    let mut out = first.to_string();
    let mut cause = first.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

/// The start of a body, for an error message.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "(empty body)".to_owned();
    }
    crate::table::cell(text, 200)
}

/// One path segment, percent-encoded (ids are URL-safe by construction, but a typed id may
/// not be). `.` and `..` must be refused before this: URLs resolve them, encoded or not.
pub fn segment(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_encoded() {
        assert_eq!(segment("ci-00ff"), "ci-00ff");
        assert_eq!(segment("a/b?c d#é"), "a%2Fb%3Fc%20d%23%C3%A9");
    }

    #[test]
    fn snippets_are_short_and_safe() {
        assert_eq!(snippet(b""), "(empty body)");
        assert_eq!(
            snippet(b"<h1>Bad\x1bGateway</h1>"),
            "<h1>Bad\\u{1b}Gateway</h1>"
        );
        assert_eq!(snippet(&[b'x'; 500]).chars().count(), 200);
    }

    #[test]
    fn refused_connection_is_a_transport_error() {
        // Port 1 on loopback: nothing listens there.
        let api = Api::new("http://127.0.0.1:1", "t").unwrap();
        let e = api.get("/api/v1/agents", &[]).unwrap_err();
        assert!(matches!(e, ClientError::Transport { .. }), "{e}");
    }
}
