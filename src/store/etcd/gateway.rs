//! etcd's v3 API through its JSON gateway (grpc-gateway), over HTTP/1.1
//! with hyper-util's client: `POST /v3/kv/range`,
//! `/v3/kv/txn`, `/v3/watch` (a streamed answer, one JSON object per line)
//! and `/v3/auth/authenticate`. Keys and values travel base64-encoded and
//! 64-bit integers as strings, as the gateway writes them.
//!
//! **Members.** Requests go to the member that answered last. One that
//! cannot be connected to (nothing was sent) is skipped for the next; one
//! that was sent a request and did not answer in time makes the request
//! fail (its outcome is unknown) and the next request start at the next
//! member.
//!
//! **Credentials.** With a user and password, a token is asked for before
//! the first request and sent in `Authorization` (etcd's own scheme: the
//! token alone). A request refused as unauthenticated (the token expired or
//! etcd restarted) gets a new token and is sent once more.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::{Buf, Bytes, BytesMut};
use http::{header, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

mod wire;

use self::wire::{AuthAnswer, RangeAnswer, TxnAnswer, WatchLine};
use crate::config::EtcdConfig;
use crate::tls::TlsError;
use crate::ErrorChain;

/// An answer or a watch line longer than this is refused: a model's state
/// is a few kilobytes, and a member sending more is not etcd.
pub const MAX_ANSWER_BYTES: usize = 16 << 20;

/// gRPC's `UNAUTHENTICATED`, as the gateway reports an expired token.
const UNAUTHENTICATED: i64 = 16;

/// Why a request to etcd failed.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// No member could be connected to: nothing was sent.
    #[error("cannot connect to etcd at {endpoint}: {detail}")]
    Unreachable { endpoint: String, detail: String },
    /// Sent, but no whole answer came back in time: what it did is unknown.
    #[error("etcd at {endpoint} did not answer: {detail}")]
    Lost { endpoint: String, detail: String },
    /// etcd answered with an error; nothing was written.
    #[error("etcd at {endpoint} refused the request: {message} (HTTP {status}, code {code})")]
    Refused {
        endpoint: String,
        status: u16,
        code: i64,
        message: String,
    },
    /// etcd refused the user and password.
    #[error("etcd at {endpoint} refused the credentials of user {user:?}: {message}")]
    AuthFailed {
        endpoint: String,
        user: String,
        message: String,
    },
    /// The answer is not what the gateway sends.
    #[error("etcd at {endpoint} sent an answer switchyard cannot read: {detail}")]
    Malformed { endpoint: String, detail: String },
}

impl GatewayError {
    /// Whether the request may have taken effect although it failed.
    pub fn is_uncertain(&self) -> bool {
        matches!(
            self,
            GatewayError::Lost { .. } | GatewayError::Malformed { .. }
        )
    }
}

/// A key and its value, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub mod_revision: u64,
}

/// What a range read returned.
#[derive(Debug)]
pub struct Range {
    /// The store's revision the read saw.
    pub revision: u64,
    pub kvs: Vec<KeyValue>,
}

/// What a conditional put did.
#[derive(Debug)]
pub enum PutIf {
    /// Written; the key's new `mod_revision`.
    Written(u64),
    /// Not written: the key is not at the revision expected. What it holds
    /// now (`None`: it does not exist).
    Stale(Option<KeyValue>),
}

/// One message of a watch.
#[derive(Debug)]
pub struct WatchBatch {
    /// The store's revision as of this message.
    pub revision: u64,
    /// The watch is set up (the first message).
    pub created: bool,
    /// The watch ended on etcd's side: why.
    pub canceled: Option<String>,
    /// The changes, oldest first; `None`: the key was deleted.
    pub events: Vec<(Vec<u8>, Option<KeyValue>)>,
}

/// A user and password for etcd.
struct Credentials {
    user: String,
    password: String,
}

/// A client of etcd's JSON gateway; see the module docs.
pub struct Gateway {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    endpoints: Vec<Uri>,
    /// The member to ask first: the last that answered.
    preferred: AtomicUsize,
    timeout: Duration,
    credentials: Option<Credentials>,
    /// The token of the credentials, once asked for.
    token: ArcSwapOption<HeaderValue>,
}

// === impl Gateway ===

impl Gateway {
    /// A client of the members `config` names, authenticating with
    /// `password` when it names a user. `https://` members are verified
    /// against `[state.tls]`'s CA, or the webpki roots without one.
    pub fn new(config: &EtcdConfig, password: Option<String>) -> Result<Gateway, TlsError> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.timeout));
        let tls = match &config.tls {
            Some(tls) => Arc::clone(&tls.client),
            None => {
                let mut client = crate::tls::client_config(None, None)?;
                client.alpn_protocols = vec![b"http/1.1".to_vec()];
                Arc::new(client)
            }
        };
        let connector = HttpsConnector::from((http, tls));
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        let credentials = config
            .credentials
            .as_ref()
            .zip(password)
            .map(|(c, password)| Credentials {
                user: c.username.clone(),
                password,
            });
        Ok(Gateway {
            client,
            endpoints: config.endpoints.clone(),
            preferred: AtomicUsize::new(0),
            timeout: config.timeout,
            credentials,
            token: ArcSwapOption::empty(),
        })
    }

    /// Every key under `prefix`, at one revision.
    pub async fn range_prefix(&self, prefix: &[u8]) -> Result<Range, GatewayError> {
        let body = json!({
            "key": BASE64.encode(prefix),
            "range_end": BASE64.encode(prefix_end(prefix)),
        });
        let (endpoint, answer) = self.call::<RangeAnswer>("kv/range", &body).await?;
        Ok(Range {
            revision: answer.header.revision,
            kvs: answer
                .kvs
                .into_iter()
                .map(|kv| kv.decode(&endpoint))
                .collect::<Result<_, _>>()?,
        })
    }

    /// How many keys are under `prefix`, and the store's revision: a cheap
    /// read proving the member answers.
    pub async fn probe(&self, prefix: &[u8]) -> Result<u64, GatewayError> {
        let body = json!({
            "key": BASE64.encode(prefix),
            "range_end": BASE64.encode(prefix_end(prefix)),
            "count_only": true,
        });
        let (_, answer) = self.call::<RangeAnswer>("kv/range", &body).await?;
        Ok(answer.header.revision)
    }

    /// Writes `value` at `key` only if the key's `mod_revision` is `seen`
    /// (0: the key does not exist): one transaction, so two instances that
    /// saw the same revision cannot both write.
    pub async fn put_if(&self, key: &[u8], seen: u64, value: &[u8]) -> Result<PutIf, GatewayError> {
        let key = BASE64.encode(key);
        let body = json!({
            "compare": [{
                "key": key,
                "target": "MOD",
                "result": "EQUAL",
                "mod_revision": seen.to_string(),
            }],
            "success": [{ "request_put": { "key": key, "value": BASE64.encode(value) } }],
            "failure": [{ "request_range": { "key": key } }],
        });
        let (endpoint, answer) = self.call::<TxnAnswer>("kv/txn", &body).await?;
        if answer.succeeded {
            // The put's revision is the transaction's: the header's.
            return Ok(PutIf::Written(answer.header.revision));
        }
        let current = answer
            .responses
            .into_iter()
            .find_map(|r| r.response_range)
            .and_then(|r| r.kvs.into_iter().next())
            .map(|kv| kv.decode(&endpoint))
            .transpose()?;
        Ok(PutIf::Stale(current))
    }

    /// Watches every key under `prefix` from `start_revision` on. Returns
    /// once etcd has answered the request; the stream's first message says
    /// whether the watch was set up.
    pub async fn watch(
        &self,
        prefix: &[u8],
        start_revision: u64,
    ) -> Result<WatchStream, GatewayError> {
        let body = json!({
            "create_request": {
                "key": BASE64.encode(prefix),
                "range_end": BASE64.encode(prefix_end(prefix)),
                "start_revision": start_revision.to_string(),
            }
        });
        let body = Bytes::from(body.to_string());
        let n = self.endpoints.len();
        let first = self.preferred.load(Ordering::Relaxed);
        let mut unreachable = None;
        for i in 0..n {
            let at = (first + i) % n;
            let endpoint = self.endpoint(at);
            let token = match self.token(at).await {
                Ok(token) => token,
                Err(e @ GatewayError::Unreachable { .. }) => {
                    unreachable = Some(e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let request = self.request(at, "watch", body.clone(), token.as_deref())?;
            let sent = tokio::time::timeout(self.timeout, self.client.request(request)).await;
            let response = match sent {
                Err(_) => return Err(self.lost(at, format!("no answer within {:?}", self.timeout))),
                Ok(Err(e)) if e.is_connect() => {
                    unreachable = Some(GatewayError::Unreachable {
                        endpoint,
                        detail: ErrorChain(&e).to_string(),
                    });
                    continue;
                }
                Ok(Err(e)) => return Err(self.lost(at, ErrorChain(&e).to_string())),
                Ok(Ok(response)) => response,
            };
            if response.status() != StatusCode::OK {
                let status = response.status();
                let bytes = self.collect(at, response.into_body()).await?;
                let refused = refusal(&endpoint, status, &bytes);
                if matches!(
                    refused,
                    GatewayError::Refused {
                        code: UNAUTHENTICATED,
                        ..
                    }
                ) {
                    // A new token for the next attempt.
                    self.forget_token();
                }
                return Err(refused);
            }
            self.preferred.store(at, Ordering::Relaxed);
            return Ok(WatchStream {
                endpoint,
                body: response.into_body(),
                buffer: BytesMut::new(),
            });
        }
        Err(unreachable.unwrap_or_else(|| GatewayError::Unreachable {
            endpoint: String::new(),
            detail: "no endpoint configured".to_string(),
        }))
    }

    /// Forgets the token, so the next request asks for a new one (a watch
    /// was cancelled as unauthenticated).
    pub fn forget_token(&self) {
        self.token.store(None);
    }

    /// Sends `body` to `/v3/{path}` of the first member that can be reached,
    /// once more with a new token if it was refused as unauthenticated.
    /// Returns the member that answered, and its answer.
    async fn call<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &Value,
    ) -> Result<(String, T), GatewayError> {
        let body = Bytes::from(body.to_string());
        let n = self.endpoints.len();
        let first = self.preferred.load(Ordering::Relaxed);
        let mut unreachable = None;
        for i in 0..n {
            let at = (first + i) % n;
            let answer = match self.call_on(at, path, body.clone()).await {
                Err(GatewayError::Refused { code, .. })
                    if code == UNAUTHENTICATED && self.credentials.is_some() =>
                {
                    self.forget_token();
                    self.call_on(at, path, body.clone()).await
                }
                other => other,
            };
            match answer {
                Ok(answer) => {
                    self.preferred.store(at, Ordering::Relaxed);
                    return Ok((self.endpoint(at), answer));
                }
                Err(e @ GatewayError::Unreachable { .. }) => unreachable = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(unreachable.unwrap_or_else(|| GatewayError::Unreachable {
            endpoint: String::new(),
            detail: "no endpoint configured".to_string(),
        }))
    }

    async fn call_on<T: DeserializeOwned>(
        &self,
        at: usize,
        path: &str,
        body: Bytes,
    ) -> Result<T, GatewayError> {
        let token = self.token(at).await?;
        self.send(at, path, body, token.as_deref()).await
    }

    /// The token to send to member `at`, asking for one if there is none.
    async fn token(&self, at: usize) -> Result<Option<Arc<HeaderValue>>, GatewayError> {
        let Some(credentials) = &self.credentials else {
            return Ok(None);
        };
        if let Some(token) = self.token.load_full() {
            return Ok(Some(token));
        }
        let body = Bytes::from(
            json!({ "name": credentials.user, "password": credentials.password }).to_string(),
        );
        let endpoint = self.endpoint(at);
        let answer: AuthAnswer = match self.send(at, "auth/authenticate", body, None).await {
            Ok(answer) => answer,
            Err(GatewayError::Refused { message, .. }) => {
                return Err(GatewayError::AuthFailed {
                    endpoint,
                    user: credentials.user.clone(),
                    message,
                })
            }
            Err(e) => return Err(e),
        };
        let token = HeaderValue::from_str(&answer.token).map_err(|_| GatewayError::Malformed {
            endpoint,
            detail: "the token is not a header value".to_string(),
        })?;
        let token = Arc::new(token);
        self.token.store(Some(Arc::clone(&token)));
        Ok(Some(token))
    }

    /// One request to member `at`, its whole answer read within the timeout.
    async fn send<T: DeserializeOwned>(
        &self,
        at: usize,
        path: &str,
        body: Bytes,
        token: Option<&HeaderValue>,
    ) -> Result<T, GatewayError> {
        let endpoint = self.endpoint(at);
        let request = self.request(at, path, body, token)?;
        let exchange = async {
            let response = match self.client.request(request).await {
                Ok(response) => response,
                Err(e) if e.is_connect() => {
                    return Err(GatewayError::Unreachable {
                        endpoint: endpoint.clone(),
                        detail: ErrorChain(&e).to_string(),
                    })
                }
                Err(e) => return Err(self.lost(at, ErrorChain(&e).to_string())),
            };
            let status = response.status();
            let bytes = self.collect(at, response.into_body()).await?;
            Ok((status, bytes))
        };
        let (status, bytes) = match tokio::time::timeout(self.timeout, exchange).await {
            Ok(done) => done?,
            Err(_) => return Err(self.lost(at, format!("no answer within {:?}", self.timeout))),
        };
        if status != StatusCode::OK {
            return Err(refusal(&endpoint, status, &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|e| GatewayError::Malformed {
            endpoint,
            detail: e.to_string(),
        })
    }

    fn request(
        &self,
        at: usize,
        path: &str,
        body: Bytes,
        token: Option<&HeaderValue>,
    ) -> Result<Request<Full<Bytes>>, GatewayError> {
        let uri = format!("{}/v3/{path}", self.endpoint(at));
        let mut builder = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(token) = token {
            builder = builder.header(header::AUTHORIZATION, token.clone());
        }
        builder
            .body(Full::new(body))
            .map_err(|e| GatewayError::Unreachable {
                endpoint: self.endpoint(at),
                detail: format!("cannot build the request: {e}"),
            })
    }

    /// Reads a whole answer body, up to [`MAX_ANSWER_BYTES`].
    async fn collect(&self, at: usize, body: Incoming) -> Result<Bytes, GatewayError> {
        let limited = http_body_util::Limited::new(body, MAX_ANSWER_BYTES);
        match limited.collect().await {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(e) => Err(self.lost(at, format!("reading the answer: {e}"))),
        }
    }

    /// Member `at`'s URL, `scheme://host:port`.
    fn endpoint(&self, at: usize) -> String {
        let uri = &self.endpoints[at];
        match (uri.scheme_str(), uri.authority()) {
            (Some(scheme), Some(authority)) => format!("{scheme}://{authority}"),
            _ => uri.to_string(),
        }
    }

    /// A request to member `at` was lost: the next starts at the next one.
    fn lost(&self, at: usize, detail: String) -> GatewayError {
        let n = self.endpoints.len().max(1);
        self.preferred.store((at + 1) % n, Ordering::Relaxed);
        GatewayError::Lost {
            endpoint: self.endpoint(at),
            detail,
        }
    }
}

/// etcd's error answer as a [`GatewayError::Refused`].
fn refusal(endpoint: &str, status: StatusCode, bytes: &[u8]) -> GatewayError {
    #[derive(Deserialize)]
    struct ErrorAnswer {
        #[serde(default)]
        message: String,
        #[serde(default)]
        error: String,
        #[serde(default)]
        code: i64,
    }
    let (message, code) = match serde_json::from_slice::<ErrorAnswer>(bytes) {
        Ok(a) if !a.message.is_empty() => (a.message, a.code),
        Ok(a) => (a.error, a.code),
        Err(_) => (
            String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned(),
            0,
        ),
    };
    GatewayError::Refused {
        endpoint: endpoint.to_string(),
        status: status.as_u16(),
        code,
        message,
    }
}

/// The end of the range of every key starting with `prefix`: the prefix
/// with its last byte below 0xff incremented (etcd's own rule).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte 0xff (or empty): to the end of the keyspace.
    vec![0]
}

/// The lines of a watch's answer.
pub struct WatchStream {
    endpoint: String,
    body: Incoming,
    buffer: BytesMut,
}

// === impl WatchStream ===

impl WatchStream {
    /// The next message; `Ok(None)` when etcd ended the stream.
    pub async fn next(&mut self) -> Result<Option<WatchBatch>, GatewayError> {
        loop {
            if let Some(at) = self.buffer.iter().position(|b| *b == b'\n') {
                let line = self.buffer.split_to(at + 1);
                let line = line.trim_ascii();
                if line.is_empty() {
                    continue;
                }
                return self.decode(line).map(Some);
            }
            if self.buffer.len() > MAX_ANSWER_BYTES {
                return Err(GatewayError::Malformed {
                    endpoint: self.endpoint.clone(),
                    detail: format!("a watch message longer than {MAX_ANSWER_BYTES} bytes"),
                });
            }
            match self.body.frame().await {
                None => {
                    let rest = self.buffer.split();
                    let rest = rest.trim_ascii();
                    return if rest.is_empty() {
                        Ok(None)
                    } else {
                        self.decode(rest).map(Some)
                    };
                }
                Some(Err(e)) => {
                    return Err(GatewayError::Lost {
                        endpoint: self.endpoint.clone(),
                        detail: format!("the watch broke: {}", ErrorChain(&e)),
                    })
                }
                Some(Ok(frame)) => {
                    if let Ok(mut data) = frame.into_data() {
                        while data.has_remaining() {
                            let chunk = data.chunk();
                            self.buffer.extend_from_slice(chunk);
                            let len = chunk.len();
                            data.advance(len);
                        }
                    }
                }
            }
        }
    }

    fn decode(&self, line: &[u8]) -> Result<WatchBatch, GatewayError> {
        let malformed = |detail: String| GatewayError::Malformed {
            endpoint: self.endpoint.clone(),
            detail,
        };
        let message: WatchLine =
            serde_json::from_slice(line).map_err(|e| malformed(e.to_string()))?;
        let result = match (message.result, message.error) {
            (Some(result), _) => result,
            (None, Some(error)) => {
                return Ok(WatchBatch {
                    revision: 0,
                    created: false,
                    canceled: Some(error.to_string()),
                    events: Vec::new(),
                })
            }
            (None, None) => return Err(malformed("a watch message with no result".to_string())),
        };
        let canceled = if result.canceled {
            Some(if result.compact_revision > 0 {
                format!(
                    "revisions before {} were compacted away",
                    result.compact_revision
                )
            } else if result.cancel_reason.is_empty() {
                "cancelled by etcd".to_string()
            } else {
                result.cancel_reason
            })
        } else {
            None
        };
        let mut events = Vec::with_capacity(result.events.len());
        for event in result.events {
            let kv = event.kv.decode(&self.endpoint)?;
            if event.kind == "DELETE" {
                events.push((kv.key, None));
            } else {
                events.push((kv.key.clone(), Some(kv)));
            }
        }
        Ok(WatchBatch {
            revision: result.header.revision,
            created: result.created,
            canceled,
            events,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_end_of_a_prefix_is_its_last_byte_plus_one() {
        assert_eq!(prefix_end(b"/sy/"), b"/sy0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
    }

    proptest! {
        /// Every key that starts with the prefix is in [prefix, end), and
        /// every key in that range starts with it: the watch and the range
        /// read see the fleet's keys, and no other fleet's.
        #[test]
        fn the_prefix_range_holds_exactly_the_keys_under_it(
            prefix in prop::collection::vec(any::<u8>(), 1..8),
            key in prop::collection::vec(any::<u8>(), 0..12),
        ) {
            prop_assume!(prefix.iter().any(|b| *b != 0xff));
            let end = prefix_end(&prefix);
            let in_range = key.as_slice() >= prefix.as_slice() && key.as_slice() < end.as_slice();
            prop_assert_eq!(in_range, key.starts_with(&prefix));
        }
    }
}
