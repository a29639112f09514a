//! The listener's own HTTP/1.1 path (`src/server/h1.rs`), as a client sees
//! it on the wire: raw requests over one TCP connection, each response read
//! by its framing, so that a byte too many or too few shows in the next one.
//! Requests that path hands to hyper (a body still on its way, chunked
//! uploads) are served on the same connection too.

mod support;

use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One response as it came: status, headers (names lowercase) and the body
/// with its framing removed; `trailers` from a chunked body.
#[derive(Debug)]
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    trailers: Vec<(String, String)>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
}

/// A client connection that reads responses one at a time.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(proxy: &Proxy) -> Conn {
        Conn::to(proxy.addr).await
    }

    async fn to(addr: std::net::SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        Conn {
            stream,
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, raw: &str) {
        self.stream.write_all(raw.as_bytes()).await.expect("write");
        self.stream.flush().await.expect("flush");
    }

    /// Reads until `buf` holds at least `n` bytes; false if the connection
    /// ended first.
    async fn fill(&mut self, n: usize) -> bool {
        while self.buf.len() < n {
            let mut chunk = [0u8; 4096];
            let read = within("the proxy's bytes", self.stream.read(&mut chunk)).await;
            match read {
                Ok(0) | Err(_) => return false,
                Ok(k) => self.buf.extend_from_slice(&chunk[..k]),
            }
        }
        true
    }

    /// Reads one line, without its CRLF.
    async fn line(&mut self) -> String {
        loop {
            if let Some(at) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..at]).into_owned();
                self.buf.drain(..at + 2);
                return line;
            }
            let want = self.buf.len() + 1;
            assert!(self.fill(want).await, "connection ended inside a line");
        }
    }

    async fn take(&mut self, n: usize) -> Vec<u8> {
        assert!(self.fill(n).await, "connection ended inside a body");
        self.buf.drain(..n).collect()
    }

    async fn fields(&mut self) -> Vec<(String, String)> {
        let mut fields = Vec::new();
        loop {
            let line = self.line().await;
            if line.is_empty() {
                return fields;
            }
            let (name, value) = line.split_once(':').expect("a header field");
            fields.push((name.to_ascii_lowercase(), value.trim().to_string()));
        }
    }

    /// The next response; `head` for a response to HEAD (no body).
    async fn response(&mut self, head: bool) -> Raw {
        let status_line = self.line().await;
        let mut parts = status_line.splitn(3, ' ');
        assert_eq!(parts.next(), Some("HTTP/1.1"), "{status_line}");
        let status: u16 = parts.next().and_then(|s| s.parse().ok()).expect("status");
        let headers = self.fields().await;
        let mut raw = Raw {
            status,
            headers,
            body: Vec::new(),
            trailers: Vec::new(),
        };
        if head || status == 204 || status == 304 {
            return raw;
        }
        if raw.header("transfer-encoding") == Some("chunked") {
            loop {
                let size = self.line().await;
                let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16)
                    .expect("chunk size");
                if size == 0 {
                    raw.trailers = self.fields().await;
                    return raw;
                }
                let data = self.take(size).await;
                raw.body.extend_from_slice(&data);
                assert_eq!(self.take(2).await, b"\r\n", "chunk data ends in CRLF");
            }
        }
        let length: usize = raw
            .header("content-length")
            .expect("a response with a body has a length or is chunked")
            .parse()
            .expect("content-length");
        raw.body = self.take(length).await;
        raw
    }

    /// True once the proxy has closed the connection, with nothing more.
    async fn closed(&mut self) -> bool {
        !self.fill(self.buf.len() + 1).await && self.buf.is_empty()
    }
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let (blue, _green, proxy) = iris_blue_green().await;
    let mut conn = Conn::open(&proxy).await;
    conn.send(concat!(
        "GET /echo/one HTTP/1.1\r\nHost: x\r\n\r\n",
        "POST /echo/two HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
        "GET /status/204 HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /echo/three HTTP/1.1\r\nHost: x\r\n\r\n",
    ))
    .await;
    let one = conn.response(false).await;
    assert_eq!(one.status, 200);
    assert_eq!(one.json()["path"], "/echo/one");
    assert_eq!(one.json()["body_len"], 0);
    let two = conn.response(false).await;
    assert_eq!(two.json()["path"], "/echo/two");
    assert_eq!(two.json()["method"], "POST");
    assert_eq!(two.json()["body_len"], 5);
    let none = conn.response(false).await;
    assert_eq!(none.status, 204);
    assert_eq!(none.header("content-length"), None, "{none:?}");
    let three = conn.response(false).await;
    assert_eq!(three.json()["path"], "/echo/three");
    assert_eq!(blue.hits(), 4);
}

#[tokio::test]
async fn a_body_sent_after_its_head_arrives_whole() {
    let (_blue, _green, proxy) = iris_blue_green().await;
    let mut conn = Conn::open(&proxy).await;
    conn.send("POST /echo/late HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n")
        .await;
    // The head is read alone (or not): either way the body follows it.
    tokio::task::yield_now().await;
    conn.send("hello world").await;
    let late = conn.response(false).await;
    assert_eq!(late.status, 200);
    assert_eq!(late.json()["body_len"], 11);
    // A chunked upload, then a plain request, on the same connection.
    conn.send(concat!(
        "POST /echo/chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
        "5\r\nhello\r\n0\r\n\r\n",
        "GET /echo/after HTTP/1.1\r\nHost: x\r\n\r\n",
    ))
    .await;
    let chunked = conn.response(false).await;
    assert_eq!(chunked.json()["body_len"], 5);
    let after = conn.response(false).await;
    assert_eq!(after.json()["path"], "/echo/after");
}

#[tokio::test]
async fn a_head_response_has_the_length_and_no_body() {
    let (_blue, _green, proxy) = iris_blue_green().await;
    let mut conn = Conn::open(&proxy).await;
    conn.send("GET /status/200 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let get = conn.response(false).await;
    assert_eq!(get.body, b"blue");
    conn.send(
        "HEAD /status/200 HTTP/1.1\r\nHost: x\r\n\r\nGET /echo/next HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    let head = conn.response(true).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("4"), "{head:?}");
    assert_eq!(
        head.headers
            .iter()
            .filter(|(n, _)| n == "content-length")
            .count(),
        1
    );
    // Had the HEAD's answer carried a body, this would read it as a head.
    let next = conn.response(false).await;
    assert_eq!(next.json()["path"], "/echo/next");
}

/// The upstream answers HEAD with the body it would send to GET: the
/// listener (the same accept loop as the proxy's) sends its length only.
#[tokio::test]
async fn a_head_request_gets_no_body_from_a_service_that_gives_one() {
    let blue = Upstream::start("blue").await;
    let addr = blue
        .url()
        .trim_start_matches("http://")
        .parse()
        .expect("address");
    let mut conn = Conn::to(addr).await;
    conn.send(
        "HEAD /status/200 HTTP/1.1\r\nHost: x\r\n\r\nGET /echo/next HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    let head = conn.response(true).await;
    assert_eq!(head.header("content-length"), Some("4"), "{head:?}");
    let next = conn.response(false).await;
    assert_eq!(next.json()["path"], "/echo/next");
}

#[tokio::test]
async fn connection_close_is_answered_in_kind_and_honoured() {
    let (_blue, _green, proxy) = iris_blue_green().await;
    let mut conn = Conn::open(&proxy).await;
    conn.send("GET /echo/bye HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await;
    let bye = conn.response(false).await;
    assert_eq!(bye.status, 200);
    assert_eq!(bye.header("connection"), Some("close"));
    assert!(conn.closed().await, "the connection stays open");
}

#[tokio::test]
async fn responses_carry_a_date_and_the_upstream_framing_is_replaced() {
    let (_blue, _green, proxy) = iris_blue_green().await;
    let mut conn = Conn::open(&proxy).await;
    conn.send("GET /echo/date HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let r = conn.response(false).await;
    let date = r.header("date").expect("a date header");
    let when = httpdate::parse_http_date(date).expect("an HTTP date");
    let off = std::time::SystemTime::now()
        .duration_since(when)
        .unwrap_or_default();
    assert!(off < Duration::from_secs(60), "{date}");
    assert_eq!(
        r.headers.iter().filter(|(n, _)| n == "date").count(),
        1,
        "{r:?}"
    );
    assert_eq!(
        r.header("content-length").map(str::parse::<usize>),
        Some(Ok(r.body.len()))
    );
}

#[tokio::test]
async fn a_stream_is_chunked_and_each_part_sent_as_it_comes() {
    let (blue, _green, proxy) = iris_blue_green().await;
    let mut conn = Conn::open(&proxy).await;
    conn.send("GET /stream HTTP/1.1\r\nHost: x\r\n\r\n").await;
    blue.wait_held(1).await;
    let status = conn.line().await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let fields = conn.fields().await;
    assert!(
        fields
            .iter()
            .any(|(n, v)| n == "transfer-encoding" && v == "chunked"),
        "{fields:?}"
    );
    // The first part arrives while the upstream holds back the rest.
    assert_eq!(conn.line().await, "6");
    assert_eq!(conn.take(8).await, b"first\n\r\n");
    blue.release();
    assert_eq!(conn.line().await, "5");
    assert_eq!(conn.take(7).await, b"last\n\r\n");
    assert_eq!(conn.line().await, "0");
    assert_eq!(conn.fields().await, Vec::<(String, String)>::new());
    conn.send("GET /echo/then HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    assert_eq!(conn.response(false).await.json()["path"], "/echo/then");
}

#[tokio::test]
async fn trailers_reach_a_client_that_takes_them() {
    let (_blue, _green, proxy) = iris_blue_green().await;
    let mut conn = Conn::open(&proxy).await;
    conn.send("POST /grpc HTTP/1.1\r\nHost: x\r\nTE: trailers\r\nContent-Length: 3\r\n\r\nabc")
        .await;
    let with = conn.response(false).await;
    assert_eq!(with.body, b"abc");
    assert!(
        with.trailers
            .contains(&("grpc-status".to_string(), "0".to_string())),
        "{with:?}"
    );
    assert!(
        with.trailers
            .contains(&("grpc-message".to_string(), "ok-blue".to_string())),
        "{with:?}"
    );
    // Sent, but not declared in the response's `Trailer` header.
    assert!(
        !with.trailers.iter().any(|(n, _)| n == "x-undeclared"),
        "{with:?}"
    );
    conn.send("POST /grpc HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
        .await;
    let without = conn.response(false).await;
    assert_eq!(without.body, b"abc");
    assert!(without.trailers.is_empty(), "{without:?}");
}

#[tokio::test]
async fn a_client_that_hangs_up_ends_its_request_upstream() {
    let (blue, _green, proxy) = iris_blue_green().await;
    let in_flight = r#"switchyard_in_flight{model="iris",pool="blue"}"#;
    let mut conn = Conn::open(&proxy).await;
    conn.send("GET /hold HTTP/1.1\r\nHost: x\r\n\r\n").await;
    blue.wait_held(1).await;
    assert_eq!(metric_value(&proxy, in_flight).await, Some(1.0));
    // Gone before the upstream answered: the exchange is dropped, not
    // left waiting for an answer nobody reads.
    drop(conn);
    eventually("the request to end", || async {
        metric_value(&proxy, in_flight).await == Some(0.0)
    })
    .await;
    blue.release();
}

/// A client that pipelines two requests and closes its side at once (as
/// `nc -N` does) gets the first answered: the hang-up watch ends once a
/// request waits behind the one served, as hyper's does.
#[tokio::test]
async fn a_request_with_another_behind_it_is_answered_after_a_half_close() {
    let (_blue, _green, proxy) = iris_blue_green().await;
    let mut conn = Conn::open(&proxy).await;
    conn.send("GET /echo/a HTTP/1.1\r\nHost: x\r\n\r\nGET /echo/b HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    conn.stream.shutdown().await.expect("half-close");
    let a = conn.response(false).await;
    assert_eq!(a.json()["path"], "/echo/a");
}

/// Empty lines before a request are skipped, as httparse skips them; a
/// lone CR is not an empty line, and hyper refuses the head it starts.
#[tokio::test]
async fn empty_lines_before_a_request_are_skipped_and_a_lone_cr_is_refused() {
    let (blue, _green, proxy) = iris_blue_green().await;
    let mut conn = Conn::open(&proxy).await;
    conn.send("\r\n\nGET /echo/after-blank HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    assert_eq!(
        conn.response(false).await.json()["path"],
        "/echo/after-blank"
    );
    conn.send("\rGET /echo/cr HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    assert_eq!(conn.response(false).await.status, 400);
    assert_eq!(blue.hits(), 1);
}

/// The same over HTTP/2 (hyper's server): a stream the client resets
/// drops its request, and the upstream exchange with it.
#[tokio::test]
async fn an_http2_stream_reset_ends_its_request_upstream() {
    let (blue, _green, proxy) = iris_blue_green().await;
    let in_flight = r#"switchyard_in_flight{model="iris",pool="blue"}"#;
    let mut h2 = h2_connection(proxy.addr).await;
    let request = http::Request::builder()
        .uri(proxy.url("/hold"))
        .body(full_body(""))
        .expect("request");
    let pending = tokio::spawn(async move { h2.send_request(request).await });
    blue.wait_held(1).await;
    assert_eq!(metric_value(&proxy, in_flight).await, Some(1.0));
    // Dropping the response future resets the stream.
    pending.abort();
    eventually("the request to end", || async {
        metric_value(&proxy, in_flight).await == Some(0.0)
    })
    .await;
    blue.release();
}
