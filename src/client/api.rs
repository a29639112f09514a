//! The HTTP side of the client: the admin URL, the bearer token, TLS for an
//! `https://` admin API, timeouts, and answers read as JSON.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use super::{ClientError, Target};
use crate::admin::TOKEN_ENV;

/// A client of one admin API. Requests go over one pooled HTTP/1.1
/// connection where they can.
pub(super) struct AdminClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// `scheme://authority` and any path prefix, without a trailing `/`.
    base: String,
    authorization: Option<HeaderValue>,
    /// Where the token came from, for a 401's message.
    token_from: Option<String>,
    timeout: Duration,
}

/// An answer the API gave: its status and its JSON body.
#[derive(Debug)]
pub(super) struct Answer {
    pub status: StatusCode,
    pub body: Value,
}

// === impl AdminClient ===

impl AdminClient {
    pub fn new(target: &Target) -> Result<AdminClient, ClientError> {
        let base = base_url(&target.admin)?;
        let (authorization, token_from) = match token(target.token_file.as_deref())? {
            Some((token, from)) => {
                let value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                    ClientError::BadUrl {
                        url: target.admin.clone(),
                        why: format!("the token from {from} is not a valid header value"),
                    }
                })?;
                (Some(value), Some(from))
            }
            None => (None, None),
        };
        let https = base.starts_with("https://");
        let ca = if https {
            target.ca_file.as_deref()
        } else {
            None
        };
        let mut tls = crate::tls::client_config(ca, None).map_err(ClientError::Tls)?;
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(target.timeout));
        let connector = HttpsConnector::from((http, Arc::new(tls)));
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(AdminClient {
            client,
            base,
            authorization,
            token_from,
            timeout: target.timeout,
        })
    }

    /// `GET path`, answered within the timeout.
    pub async fn get(&self, path: &str) -> Result<Answer, ClientError> {
        self.call(Method::GET, path, Duration::ZERO).await
    }

    /// `POST path`, answered within the timeout plus `extra` (a
    /// `wait_drained` the server waits out first).
    pub async fn post(&self, path: &str, extra: Duration) -> Result<Answer, ClientError> {
        self.call(Method::POST, path, extra).await
    }

    /// `GET path` whose body is read as it comes (an event stream): the
    /// headers are awaited within the timeout, the body without one.
    pub async fn stream(&self, path: &str) -> Result<Incoming, ClientError> {
        let url = self.url(path);
        let response = tokio::time::timeout(self.timeout, self.send(Method::GET, &url))
            .await
            .map_err(|_| self.timed_out(&url))??;
        let (parts, body) = response.into_parts();
        if parts.status.is_success() {
            return Ok(body);
        }
        let text = read_text(&url, body).await?;
        Err(self.answer(&url, parts.status, &text)?.into_error())
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        extra: Duration,
    ) -> Result<Answer, ClientError> {
        let url = self.url(path);
        let method_changes = method == Method::POST;
        let exchange = async {
            let response = self.send(method, &url).await?;
            let (parts, body) = response.into_parts();
            let text = read_text(&url, body).await?;
            self.answer(&url, parts.status, &text)
        };
        let changes = method_changes;
        let after = self.timeout.saturating_add(extra);
        tokio::time::timeout(after, exchange)
            .await
            .map_err(|_| ClientError::Timeout {
                url: url.clone(),
                after,
                changes,
            })?
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
    ) -> Result<http::Response<Incoming>, ClientError> {
        let mut request = Request::builder()
            .method(method)
            .uri(url)
            .header(header::ACCEPT, "application/json, text/event-stream")
            .header(
                header::USER_AGENT,
                concat!("switchyard-cli/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(value) = &self.authorization {
            request = request.header(header::AUTHORIZATION, value.clone());
        }
        let request = request
            .body(Full::new(Bytes::new()))
            .map_err(|e| ClientError::BadUrl {
                url: url.to_string(),
                why: e.to_string(),
            })?;
        self.client.request(request).await.map_err(|e| {
            if e.is_connect() {
                ClientError::Connect {
                    url: url.to_string(),
                    source: e.into(),
                }
            } else {
                ClientError::Request {
                    url: url.to_string(),
                    source: e.into(),
                }
            }
        })
    }

    /// Reads an answer: a 401 is an error here, whatever the call; any
    /// other status comes back with its JSON for the command to judge.
    fn answer(&self, url: &str, status: StatusCode, text: &str) -> Result<Answer, ClientError> {
        if status == StatusCode::UNAUTHORIZED {
            return Err(ClientError::Unauthorized {
                token: self.token_from.clone(),
            });
        }
        match serde_json::from_str::<Value>(text) {
            Ok(body) => Ok(Answer { status, body }),
            Err(_) => Err(ClientError::NotJson {
                url: url.to_string(),
                status,
                snippet: text.chars().take(200).collect(),
            }),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn timed_out(&self, url: &str) -> ClientError {
        ClientError::Timeout {
            url: url.to_string(),
            after: self.timeout,
            changes: false,
        }
    }
}

// === impl Answer ===

impl Answer {
    /// The body of a 2xx answer, else the API's reason as an error.
    pub fn into_ok(self) -> Result<Value, ClientError> {
        if self.status.is_success() {
            Ok(self.body)
        } else {
            Err(self.into_error())
        }
    }

    /// The API's reason for an answer that is not what was asked for.
    pub fn into_error(self) -> ClientError {
        let message = match self.body.get("error").and_then(Value::as_str) {
            Some(message) => message.to_string(),
            None => format!("unexpected answer: {}", self.body),
        };
        ClientError::Api {
            status: self.status,
            message,
        }
    }
}

/// The most of an answer the client reads: the largest the API sends (a
/// full event log) is well under it.
const MAX_ANSWER: usize = 4 << 20;

async fn read_text(url: &str, body: Incoming) -> Result<String, ClientError> {
    let bytes = Limited::new(body, MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<LengthLimitError>() {
                ClientError::TooLarge {
                    url: url.to_string(),
                    limit: "4 MiB",
                }
            } else {
                ClientError::Request {
                    url: url.to_string(),
                    source: e,
                }
            }
        })?
        .to_bytes();
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The base URL: `http://` or `https://`, a host, and a path prefix kept
/// without its trailing `/`. A bare `host:port` means `http://host:port`.
fn base_url(admin: &str) -> Result<String, ClientError> {
    let bad = |why: &str| ClientError::BadUrl {
        url: admin.to_string(),
        why: why.to_string(),
    };
    let full = if admin.contains("://") {
        admin.to_string()
    } else {
        format!("http://{admin}")
    };
    let uri: Uri = full
        .parse()
        .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err(bad("expected http://HOST:PORT or https://HOST:PORT")),
    }
    let Some(authority) = uri.authority() else {
        return Err(bad("it names no host"));
    };
    // `http::Uri` takes `host:99999` and then has no port, which
    // hyper-util would read as the scheme's default (80 or 443) and send
    // the token there.
    let host_port = authority.as_str().rsplit('@').next().unwrap_or_default();
    let after_host = match host_port.rfind(']') {
        Some(i) => &host_port[i + 1..],
        None => host_port,
    };
    if after_host.contains(':') && uri.port_u16().is_none() {
        return Err(bad("port out of range"));
    }
    if uri.query().is_some() {
        return Err(bad("a query has no place in the base URL"));
    }
    Ok(full.trim_end_matches('/').to_string())
}

/// The token and where it came from: `--token-file` (or
/// `SWITCHYARD_ADMIN_TOKEN_FILE`), else `SWITCHYARD_ADMIN_TOKEN`, else none.
fn token(file: Option<&Path>) -> Result<Option<(String, String)>, ClientError> {
    if let Some(path) = file {
        let text = read_token_file(path)?;
        let token = text.trim();
        if token.is_empty() {
            return Err(ClientError::EmptyToken {
                path: path.to_path_buf(),
            });
        }
        return Ok(Some((token.to_string(), path.display().to_string())));
    }
    Ok(std::env::var(TOKEN_ENV)
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .map(|v| (v, TOKEN_ENV.to_string())))
}

/// The longest token file read: a token is tens of bytes, and a wrong path
/// (`/dev/zero`, a log) must not block or fill memory.
const MAX_TOKEN_FILE: u64 = 4 << 10;

fn read_token_file(path: &Path) -> Result<String, ClientError> {
    use std::io::Read;
    let io = |source| ClientError::TokenFile {
        path: path.to_path_buf(),
        source,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_TOKEN_FILE + 1).read_to_end(&mut bytes))
        .map_err(io)?;
    if bytes.len() as u64 > MAX_TOKEN_FILE {
        return Err(ClientError::TokenTooLong {
            path: path.to_path_buf(),
        });
    }
    String::from_utf8(bytes)
        .map_err(|e| io(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))
}

/// `name` as one path segment: unreserved characters as they are, every
/// other byte percent-encoded.
pub(super) fn segment(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
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
    fn base_urls_are_checked() {
        assert_eq!(
            base_url("http://127.0.0.1:9901/").unwrap(),
            "http://127.0.0.1:9901"
        );
        assert_eq!(base_url("127.0.0.1:9901").unwrap(), "http://127.0.0.1:9901");
        assert_eq!(
            base_url("https://ops.example/switchyard/").unwrap(),
            "https://ops.example/switchyard"
        );
        assert!(base_url("ftp://x").is_err());
        assert!(base_url("http://x/?a=b").is_err());
        assert!(base_url("http://").is_err());
        assert_eq!(base_url("http://[::1]:9901").unwrap(), "http://[::1]:9901");
        assert_eq!(base_url("http://u:p@x").unwrap(), "http://u:p@x");
        for out_of_range in [
            "http://127.0.0.1:99999",
            "127.0.0.1:65536",
            "http://[::1]:70000",
        ] {
            let err = base_url(out_of_range).unwrap_err().to_string();
            assert!(err.contains("port out of range"), "{out_of_range}: {err}");
        }
    }

    #[test]
    fn names_are_one_segment() {
        assert_eq!(segment("iris-v2.1_x"), "iris-v2.1_x");
        assert_eq!(segment("a/b c"), "a%2Fb%20c");
    }
}
