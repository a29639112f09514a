//! The upstream connection pool over real sockets, against a raw HTTP/1.1
//! upstream that shows exactly what arrives on the wire: requests go in
//! origin form with the client's `Host`; sequential requests ride one
//! keep-alive connection, and after a burst the connection used last is
//! reused first; a connection the upstream closed while idle is never used
//! again; a response the client abandoned mid-body takes its connection
//! with it, so the next request never reads its leftovers; a connection
//! still carrying an upload the upstream answered early is not handed to
//! the next request; responses framed every way HTTP/1.1 allows arrive
//! whole, and only those that ended cleanly leave their connection to the
//! next request; a reason phrase of the upstream's own reaches the
//! client; a malformed response is a 502.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

use http::StatusCode;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use support::*;

/// How the raw upstream treats a connection after answering.
#[derive(Clone, Copy, PartialEq)]
enum After {
    /// Keeps it open for the next request.
    KeepAlive,
    /// Closes it, without having said `Connection: close`: to the proxy it
    /// looked reusable.
    Close,
}

/// An HTTP/1.1 upstream on a raw socket; records each request's head with
/// the number of the connection it came on. Answers `GET /big` with 1 MiB
/// of `a`; `GET /hold` once [`RawUpstream::release`] is called; `POST
/// /early` at once, without reading the body, and then reads nothing more
/// from that connection; the paths of [`FRAMED`] with their raw answers
/// (after which `/until-close` closes the connection); anything else with
/// its own name.
struct RawUpstream {
    addr: std::net::SocketAddr,
    /// Connections accepted.
    accepted: Arc<AtomicUsize>,
    /// Request heads received, in order, with their connection's number.
    heads: Arc<Mutex<Vec<(usize, String)>>>,
    released: tokio::sync::watch::Sender<bool>,
}

const BIG: usize = 1 << 20;

/// Raw answers, each framed its own way, and the body each frames.
const FRAMED: [(&str, &str, &str); 5] = [
    (
        "/chunked",
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: 1\r\n\r\n",
        "hello world",
    ),
    (
        "/continue",
        "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nafter",
        "after",
    ),
    (
        "/until-close",
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nall of it",
        "all of it",
    ),
    (
        "/reason",
        "HTTP/1.1 299 Thing Of Our Own\r\ncontent-length: 2\r\n\r\nok",
        "ok",
    ),
    (
        "/bad-length",
        "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd",
        "",
    ),
];

impl RawUpstream {
    async fn start(name: &'static str, after: After) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let released = tokio::sync::watch::Sender::new(false);
        let (a, h, r) = (Arc::clone(&accepted), Arc::clone(&heads), released.clone());
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let conn = a.fetch_add(1, SeqCst);
                let seen = Seen {
                    conn,
                    heads: Arc::clone(&h),
                    released: r.subscribe(),
                };
                tokio::spawn(serve(socket, name, after, seen));
            }
        });
        RawUpstream {
            addr,
            accepted,
            heads,
            released,
        }
    }

    fn release(&self) {
        self.released.send_replace(true);
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Heads of the requests for `path_start` (not the health probes).
    fn heads_for(&self, path_start: &str) -> Vec<String> {
        self.requests_for(path_start)
            .into_iter()
            .map(|(_, h)| h)
            .collect()
    }

    /// Requests for `path_start`: the connection each came on, and its head.
    fn requests_for(&self, path_start: &str) -> Vec<(usize, String)> {
        let line = format!(" {path_start}");
        self.heads
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, h)| h.lines().next().is_some_and(|l| l.contains(&line)))
            .cloned()
            .collect()
    }
}

/// What a connection of the raw upstream records, and what it waits on.
struct Seen {
    conn: usize,
    heads: Arc<Mutex<Vec<(usize, String)>>>,
    released: tokio::sync::watch::Receiver<bool>,
}

async fn serve(mut socket: TcpStream, name: &str, after: After, mut seen: Seen) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        // The requests here have no body: a head is a request.
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let big = head.starts_with("GET /big ");
        let hold = head.starts_with("GET /hold ");
        let early = head.starts_with("POST /early ");
        seen.heads.lock().unwrap().push((seen.conn, head.clone()));
        if hold {
            let _ = seen.released.wait_for(|r| *r).await;
        }
        if early {
            let answer = "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nearly";
            if socket.write_all(answer.as_bytes()).await.is_ok() {
                // Whatever else comes on this connection is the body.
                while matches!(socket.read(&mut chunk).await, Ok(n) if n > 0) {}
            }
            return;
        }
        let path = head.split(' ').nth(1).unwrap_or_default();
        if let Some((_, raw, _)) = FRAMED.iter().find(|(p, _, _)| *p == path) {
            if socket.write_all(raw.as_bytes()).await.is_err() || path == "/until-close" {
                return;
            }
            continue;
        }
        let written = if big {
            let mut answer =
                format!("HTTP/1.1 200 OK\r\ncontent-length: {BIG}\r\n\r\n").into_bytes();
            answer.resize(answer.len() + BIG, b'a');
            socket.write_all(&answer).await
        } else {
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{name}",
                name.len()
            );
            socket.write_all(answer.as_bytes()).await
        };
        if written.is_err() || after == After::Close {
            return;
        }
    }
}

/// One model on `blue` (green elsewhere), probed once at start over one
/// warm connection.
async fn proxy_for(blue: &RawUpstream, green: &RawUpstream) -> Proxy {
    let models = format!(
        "[[models]]\nname = \"iris\"\npath_prefix = \"/\"\nblue.endpoints = [{:?}]\ngreen.endpoints = [{:?}]\nhealth.interval = \"1h\"\nhealth.path = \"/ready\"\nhealth.warm_connections = 1\n",
        blue.url(),
        green.url()
    );
    Proxy::start(&models).await
}

async fn open_connections(proxy: &Proxy, upstream: &RawUpstream) -> u64 {
    endpoint_detail(proxy, "iris", "blue", &upstream.url()).await["open_connections"]
        .as_u64()
        .expect("open_connections in the status")
}

#[tokio::test]
async fn http1_requests_go_in_origin_form_with_the_clients_host() {
    let blue = RawUpstream::start("blue", After::KeepAlive).await;
    let green = RawUpstream::start("green", After::KeepAlive).await;
    let proxy = proxy_for(&blue, &green).await;

    let reply = get(&proxy.url("/v2/models/iris/infer?trace=1")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "blue");

    let heads = blue.heads_for("/v2/");
    assert_eq!(heads.len(), 1, "{heads:?}");
    let mut lines = heads[0].lines();
    assert_eq!(
        lines.next(),
        Some("GET /v2/models/iris/infer?trace=1 HTTP/1.1"),
        "origin form, not the endpoint's absolute URI"
    );
    let hosts: Vec<_> = lines
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.eq_ignore_ascii_case("host"))
        .map(|(_, v)| v.trim().to_string())
        .collect();
    assert_eq!(
        hosts,
        [proxy.addr.to_string()],
        "exactly one Host: the one the client sent"
    );
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn sequential_requests_ride_one_keep_alive_connection() {
    let blue = RawUpstream::start("blue", After::KeepAlive).await;
    let green = RawUpstream::start("green", After::KeepAlive).await;
    let proxy = proxy_for(&blue, &green).await;

    for _ in 0..20 {
        let reply = get(&proxy.url("/v2/models/iris/infer")).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.text(), "blue");
    }
    assert_eq!(blue.heads_for("/v2/").len(), 20);
    // The probe's connection, reused by every request after it.
    assert_eq!(
        blue.accepted.load(SeqCst),
        1,
        "connections accepted by blue"
    );
    assert_eq!(open_connections(&proxy, &blue).await, 1);
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn a_connection_the_upstream_closed_while_idle_is_never_used() {
    let blue = RawUpstream::start("blue", After::Close).await;
    let green = RawUpstream::start("green", After::KeepAlive).await;
    let proxy = proxy_for(&blue, &green).await;

    for round in 1..=5 {
        // The upstream has closed the last connection; once the proxy has
        // seen it go, a request must take a new one, not fail on the old.
        eventually("blue's closed connection to be noticed", || async {
            open_connections(&proxy, &blue).await == 0
        })
        .await;
        let reply = get(&proxy.url("/v2/models/iris/infer")).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "round {round}: {}",
            reply.text()
        );
        assert_eq!(reply.text(), "blue");
    }
    // The probe's connection and one per request.
    assert_eq!(blue.accepted.load(SeqCst), 6);
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn a_response_abandoned_mid_body_does_not_leave_its_rest_for_the_next_request() {
    let blue = RawUpstream::start("blue", After::KeepAlive).await;
    let green = RawUpstream::start("green", After::KeepAlive).await;
    let proxy = proxy_for(&blue, &green).await;

    // Read the head and the first bytes of a 1 MiB answer, then hang up.
    let mut conn = h1_connection(proxy.addr).await;
    let request = http::Request::get("/big")
        .header("host", proxy.addr.to_string())
        .body(full_body(""))
        .unwrap();
    let response = within("the big answer's head", conn.send_request(request))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let first = within("the first bytes", body.frame()).await;
    assert!(first.is_some_and(|f| f.is_ok()));
    drop(body);
    drop(conn);

    // Every later request gets its own answer, never the rest of "aaa...".
    for _ in 0..10 {
        let reply = get(&proxy.url("/v2/models/iris/infer")).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.text(), "blue");
    }
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn after_a_burst_the_connection_used_last_is_reused_first() {
    let blue = RawUpstream::start("blue", After::KeepAlive).await;
    let green = RawUpstream::start("green", After::KeepAlive).await;
    let proxy = proxy_for(&blue, &green).await;

    // Four requests at once: four connections.
    let held: Vec<_> = (0..4)
        .map(|_| {
            let url = proxy.url("/hold");
            tokio::spawn(async move { get(&url).await })
        })
        .collect();
    eventually("four requests held at blue", || async {
        blue.requests_for("/hold").len() == 4
    })
    .await;
    blue.release();
    for h in held {
        assert_eq!(h.await.unwrap().status, StatusCode::OK);
    }
    assert!(blue.accepted.load(SeqCst) >= 4);

    // One at a time now: every one on the same connection, not a round of
    // all the idle ones (which would keep the burst's surplus alive).
    for _ in 0..8 {
        assert_eq!(
            get(&proxy.url("/v2/models/iris/infer")).await.text(),
            "blue"
        );
    }
    let conns: Vec<usize> = blue
        .requests_for("/v2/")
        .into_iter()
        .map(|(conn, _)| conn)
        .collect();
    assert_eq!(conns.len(), 8);
    assert!(
        conns.iter().all(|c| *c == conns[0]),
        "connections used, in order: {conns:?}"
    );
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn a_connection_still_carrying_an_upload_answered_early_is_not_reused_meanwhile() {
    let blue = RawUpstream::start("blue", After::KeepAlive).await;
    let green = RawUpstream::start("green", After::KeepAlive).await;
    let models = format!(
        "[[models]]\nname = \"iris\"\npath_prefix = \"/\"\nblue.endpoints = [{:?}]\ngreen.endpoints = [{:?}]\nhealth.interval = \"1h\"\nhealth.path = \"/ready\"\nhealth.warm_connections = 1\n",
        blue.url(),
        green.url()
    );
    let proxy = Proxy::start_with("request_timeout = \"3s\"", &models).await;

    // An upload that stalls after its first chunk; the upstream answers it
    // at once without reading it.
    let (tx, body) = channel_body();
    tx.send(Ok(hyper::body::Frame::data(bytes::Bytes::from_static(
        b"first chunk",
    ))))
    .await
    .unwrap();
    let client = client();
    let request = http::Request::post(proxy.url("/early")).body(body).unwrap();
    let response = within("the early answer", client.request(request))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let answer = within("the early answer's body", response.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(&answer[..], b"early");

    // The upload goes on (tx is alive); other requests must not wait for it.
    for _ in 0..3 {
        let reply = get(&proxy.url("/v2/models/iris/infer")).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(reply.text(), "blue");
    }
    let early_conn = blue.requests_for("/early")[0].0;
    assert!(
        blue.requests_for("/v2/")
            .iter()
            .all(|(c, _)| *c != early_conn),
        "a request went on the connection still carrying the upload"
    );
    drop(tx);
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn responses_framed_every_way_arrive_whole_and_only_clean_ends_are_reused() {
    let blue = RawUpstream::start("blue", After::KeepAlive).await;
    let green = RawUpstream::start("green", After::KeepAlive).await;
    let proxy = proxy_for(&blue, &green).await;

    for (path, _, body) in &FRAMED[..3] {
        let reply = get(&proxy.url(path)).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.text());
        assert_eq!(reply.text(), *body, "{path}");
        // The next request: on the same connection, unless this one was
        // delimited by its closing.
        let reply = get(&proxy.url("/v2/models/iris/infer")).await;
        assert_eq!(reply.text(), "blue", "after {path}");
        let (answered_on, _) = blue.requests_for(path)[0];
        let (next_on, _) = *blue.requests_for("/v2/").last().unwrap();
        if *path == "/until-close" {
            assert_ne!(next_on, answered_on, "{path}: its connection ended with it");
        } else {
            assert_eq!(next_on, answered_on, "{path}: its connection is reused");
        }
    }
    // The probe's connection, and one after /until-close.
    assert_eq!(blue.accepted.load(SeqCst), 2);
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn a_malformed_response_is_a_502_and_its_connection_is_dropped() {
    let blue = RawUpstream::start("blue", After::KeepAlive).await;
    let green = RawUpstream::start("green", After::KeepAlive).await;
    let proxy = proxy_for(&blue, &green).await;

    let reply = get(&proxy.url("/bad-length")).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.text());
    assert_eq!(reply.pool(), "blue");
    assert!(
        reply.text().contains(&blue.addr.to_string()),
        "{}",
        reply.text()
    );
    assert!(
        reply
            .text()
            .contains("sent a malformed response: invalid Content-Length"),
        "{}",
        reply.text()
    );
    eventually("the malformed response's connection to close", || async {
        open_connections(&proxy, &blue).await == 0
    })
    .await;
    let reply = get(&proxy.url("/v2/models/iris/infer")).await;
    assert_eq!(
        (reply.status, reply.text()),
        (StatusCode::OK, "blue".to_string())
    );
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn a_reason_phrase_of_the_upstreams_own_reaches_the_client() {
    let blue = RawUpstream::start("blue", After::KeepAlive).await;
    let green = RawUpstream::start("green", After::KeepAlive).await;
    let proxy = proxy_for(&blue, &green).await;

    let mut conn = h1_connection(proxy.addr).await;
    for (path, status, reason) in [
        ("/reason", 299, Some("Thing Of Our Own")),
        // The usual phrase is hyper's own: no extension.
        ("/v2/models/iris/infer", 200, None),
    ] {
        let request = http::Request::get(path)
            .header("host", proxy.addr.to_string())
            .body(full_body(""))
            .unwrap();
        let response = conn.send_request(request).await.unwrap();
        assert_eq!(response.status().as_u16(), status, "{path}");
        let seen = response
            .extensions()
            .get::<hyper::ext::ReasonPhrase>()
            .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned());
        assert_eq!(seen.as_deref(), reason, "{path}");
        read_body(response.into_body()).await;
    }
    proxy.stop().await.unwrap();
}
