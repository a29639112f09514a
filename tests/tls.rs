//! Inbound TLS as a client sees it: HTTP/1.1 and HTTP/2 by ALPN on the proxy
//! listener with `x-forwarded-proto: https` going upstream, the admin API
//! over TLS, certificates reloaded on SIGHUP without dropping a connection
//! (and kept when the new files are broken), plaintext and silent clients on
//! a TLS port turned away, shutdown draining requests over TLS without
//! waiting for handshakes, and `switchyard check` naming a bad `proxy.tls`.
//!
//! Certificates come from a CA made for each test (support/tls.rs). Tests
//! that send SIGHUP hold `reload_lock()`: the signal reaches every proxy in
//! this process.

mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;

use support::inbound_tls::*;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// An upstream for the blue pool (green is another) and a proxy for
/// them serving `proxy.tls` from a certificate `ca` issued, `server.crt`
/// and `server.key` in the proxy's temp dir.
async fn tls_proxy(ca: &TestCa, proxy_extra: &str) -> (Upstream, Upstream, Proxy, ServerCert) {
    tls_proxy_with(ca, proxy_extra, "").await
}

/// [`tls_proxy`] with extra lines for the model (e.g. a pool's protocol).
async fn tls_proxy_with(
    ca: &TestCa,
    proxy_extra: &str,
    model_extra: &str,
) -> (Upstream, Upstream, Proxy, ServerCert) {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
    let cert = ca.issue("switchyard test server");
    let files = cert.write(dir.path(), "server");
    let proxy = Proxy::try_start_with_admin(
        dir,
        &format!("{}{proxy_extra}", files.config_lines()),
        "",
        &format!(
            "{}{model_extra}",
            model("iris", "/", &blue.url(), &green.url())
        ),
    )
    .await
    .expect("proxy starts");
    (blue, green, proxy, cert)
}

/// Reads `tcp` until the proxy closes it, and returns what came before.
async fn until_closed(tcp: &mut tokio::net::TcpStream, what: &str) -> Vec<u8> {
    let mut received = Vec::new();
    // A reset instead of a FIN is a close too.
    let _ = within(what, tcp.read_to_end(&mut received)).await;
    received
}

/// `stem.crt` and `stem.key` in the proxy's temp dir.
fn files_in(proxy: &Proxy, stem: &str) -> CertFiles {
    CertFiles {
        cert: proxy.dir.path().join(format!("{stem}.crt")),
        key: proxy.dir.path().join(format!("{stem}.key")),
    }
}

// === proxy.tls ===

#[tokio::test]
async fn http1_over_tls_reaches_a_plain_upstream_with_x_forwarded_proto_https() {
    let ca = TestCa::new();
    let (blue, _green, proxy, cert) = tls_proxy(&ca, "").await;

    let mut conn = TlsConn::open(proxy.addr, &ca, ALPN_H1).await;
    assert_eq!(conn.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(conn.certificate, cert.der);
    // What the client claims about its scheme is overwritten, not trusted.
    let r = conn
        .get_with("/echo/tls", &[("x-forwarded-proto", "http")])
        .await;
    assert_eq!(
        (r.status, r.pool()),
        (StatusCode::OK, "blue"),
        "{}",
        r.text()
    );
    let echo = r.json();
    assert_eq!(echo["headers"]["x-forwarded-proto"], "https", "{echo}");
    assert_eq!(echo["version"], "HTTP/1.1", "{echo}");
    assert_eq!(blue.hits(), 1);

    // Keep-alive: the same TLS connection serves the next request.
    let r = conn.get("/echo/again").await;
    assert_eq!(r.json()["headers"]["x-forwarded-proto"], "https");
    assert_eq!(blue.hits(), 2);
}

#[tokio::test]
async fn alpn_picks_h2_when_offered_and_a_client_without_alpn_gets_http1() {
    let ca = TestCa::new();
    let (_blue, _green, proxy, _cert) = tls_proxy(&ca, "").await;
    let mut conn = TlsConn::open(proxy.addr, &ca, ALPN_BOTH).await;
    assert_eq!(conn.alpn.as_deref(), Some(&b"h2"[..]));
    let r = conn.get("/echo/both").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["headers"]["x-forwarded-proto"], "https");

    let mut conn = TlsConn::open(proxy.addr, &ca, &[]).await;
    assert_eq!(conn.alpn, None);
    let r = conn.get("/echo/no-alpn").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["headers"]["x-forwarded-proto"], "https");
}

#[tokio::test]
async fn h2_over_tls_carries_concurrent_streams_on_one_connection() {
    const STREAMS: usize = 8;
    let ca = TestCa::new();
    let (blue, _green, proxy, _cert) = tls_proxy(&ca, "").await;
    let conn = TlsConn::open(proxy.addr, &ca, ALPN_H2).await;
    assert_eq!(conn.alpn.as_deref(), Some(&b"h2"[..]));

    let mut streams = JoinSet::new();
    for i in 0..STREAMS {
        let mut stream = conn.h2_stream();
        streams.spawn(async move { stream.get(&format!("/hold/{i}")).await });
    }
    // All of them at the upstream at once: the streams are concurrent, not queued.
    blue.wait_held(STREAMS).await;
    blue.release();
    while let Some(done) = within("the held streams", streams.join_next()).await {
        let r = done.expect("stream task");
        assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "blue"));
    }

    let r = conn.h2_stream().get("/echo/h2").await;
    let echo = r.json();
    assert_eq!(echo["headers"]["x-forwarded-proto"], "https", "{echo}");
}

#[tokio::test]
async fn h2_over_tls_reaches_an_h2c_pool() {
    let ca = TestCa::new();
    let (blue, _green, proxy, _cert) = tls_proxy_with(&ca, "", "blue.protocol = \"h2c\"\n").await;
    for alpn in [ALPN_H1, ALPN_H2] {
        let mut conn = TlsConn::open(proxy.addr, &ca, alpn).await;
        let r = conn.get("/echo/grpc-like").await;
        let echo = r.json();
        assert_eq!(echo["version"], "HTTP/2.0", "{echo}");
        assert_eq!(echo["headers"]["x-forwarded-proto"], "https", "{echo}");
    }
    assert_eq!(blue.hits(), 2);
}

// === admin.tls ===

#[tokio::test]
async fn the_admin_api_answers_over_tls() {
    let ca = TestCa::new();
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
    let admin_cert = ca.issue("switchyard test admin");
    let files = admin_cert.write(dir.path(), "admin");
    let proxy = start_with_tls_admin(
        dir,
        "",
        &files.config_lines(),
        &model("iris", "/", &blue.url(), &green.url()),
        &ca,
    )
    .await;

    for alpn in [ALPN_H1, ALPN_H2] {
        let mut conn = TlsConn::open(proxy.admin, &ca, alpn).await;
        assert_eq!(conn.certificate, admin_cert.der);
        let r = conn.get("/readyz").await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        let r = conn.get("/models/iris").await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(r.json()["active"], "blue");
    }
    // Only the admin listener was given TLS: the proxy still speaks plain HTTP.
    let r = get(&proxy.url("/echo/plain")).await;
    assert_eq!(r.json()["headers"]["x-forwarded-proto"], "http");
}

// === reload ===

#[tokio::test]
async fn sighup_serves_a_new_certificate_and_keeps_open_connections() {
    let _reloading = reload_lock().await;
    let ca = TestCa::new();
    let (blue, _green, proxy, old) = tls_proxy(&ca, "").await;
    let files = files_in(&proxy, "server");

    // A connection from before the reload, with a request in flight across it.
    let mut before = TlsConn::open(proxy.addr, &ca, ALPN_H1).await;
    assert_eq!(before.certificate, old.der);
    let held = tokio::spawn(async move {
        let r = before.get("/hold/across-reload").await;
        (before, r)
    });
    blue.wait_held(1).await;

    let new = ca.issue("switchyard test server, renewed");
    assert_ne!(new.der, old.der);
    new.install(&files);
    sighup();
    eventually("a new handshake to present the new certificate", || async {
        presented_certificate(proxy.addr, &ca).await == new.der
    })
    .await;

    // The old connection lost nothing: its held request finishes and it
    // carries the next one, on the session it started with.
    blue.release();
    let (mut before, r) = within("the request held across the reload", held)
        .await
        .expect("held request task");
    assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "blue"));
    let r = before.get("/echo/after-reload").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(before.certificate, old.der);

    let mut after = TlsConn::open(proxy.addr, &ca, ALPN_BOTH).await;
    assert_eq!(after.certificate, new.der);
    assert_eq!(after.get("/echo/new").await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_reload_with_a_broken_key_keeps_the_old_certificate() {
    let _reloading = reload_lock().await;
    let ca = TestCa::new();
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
    let proxy_cert = ca.issue("switchyard test server");
    let proxy_files = proxy_cert.write(dir.path(), "server");
    let admin_files = ca.issue("switchyard test admin").write(dir.path(), "admin");
    let proxy = start_with_tls_admin(
        dir,
        &proxy_files.config_lines(),
        &admin_files.config_lines(),
        &model("iris", "/", &blue.url(), &green.url()),
        &ca,
    )
    .await;

    // Break the proxy's key; renew the admin's certificate. One SIGHUP
    // reloads the proxy's certificate, then the admin's: once the admin
    // presents its new one, the proxy's broken files have been tried.
    replace(&proxy_files.key, "-----BEGIN PRIVATE KEY-----\nbroken\n");
    let admin_renewed = ca.issue("switchyard test admin, renewed");
    admin_renewed.install(&admin_files);
    sighup();
    eventually(
        "the admin listener to present its renewed certificate",
        || async { presented_certificate(proxy.admin, &ca).await == admin_renewed.der },
    )
    .await;

    let mut conn = TlsConn::open(proxy.addr, &ca, ALPN_BOTH).await;
    assert_eq!(conn.certificate, proxy_cert.der);
    assert_eq!(conn.get("/echo/still").await.status, StatusCode::OK);

    // Fixed files are picked up by the next SIGHUP.
    let fixed = ca.issue("switchyard test server, fixed");
    fixed.install(&proxy_files);
    sighup();
    eventually("the proxy to present the fixed certificate", || async {
        presented_certificate(proxy.addr, &ca).await == fixed.der
    })
    .await;
}

// === plaintext on a TLS port ===

#[tokio::test]
async fn plaintext_http_to_a_tls_listener_is_closed_without_reaching_the_upstream() {
    let ca = TestCa::new();
    let (blue, green, proxy, _cert) = tls_proxy(&ca, "").await;

    // Raw bytes, to see exactly what comes back: no HTTP answer, then EOF,
    // well before the handshake timeout (header_read_timeout, 30 s here).
    let mut tcp = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("connect");
    tcp.write_all(b"GET /echo/plain HTTP/1.1\r\nHost: iris\r\n\r\n")
        .await
        .expect("write");
    let answer = until_closed(&mut tcp, "the proxy to close the plaintext connection").await;
    assert!(
        !answer.starts_with(b"HTTP/"),
        "a TLS listener answered plaintext: {:?}",
        String::from_utf8_lossy(&answer)
    );

    // An HTTP client fails rather than hangs.
    let result = within(
        "a plain HTTP client against the TLS listener",
        try_send(
            &client(),
            http::Method::GET,
            &proxy.url("/echo/plain"),
            full_body(""),
        ),
    )
    .await;
    assert!(result.is_err(), "got a response: {result:?}");
    assert_eq!((blue.hits(), green.hits()), (0, 0));
}

#[tokio::test]
async fn a_client_that_never_starts_the_handshake_is_closed_after_header_read_timeout() {
    let ca = TestCa::new();
    let (_blue, _green, proxy, _cert) = tls_proxy(&ca, "header_read_timeout = \"1s\"\n").await;
    let mut tcp = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("connect");
    let answer = until_closed(&mut tcp, "the proxy to close a silent connection").await;
    assert!(answer.is_empty(), "{answer:?}");
}

// === shutdown ===

#[tokio::test]
async fn shutdown_drains_requests_over_tls_and_closes_handshakes_in_progress() {
    let ca = TestCa::new();
    let (blue, _green, proxy, _cert) = tls_proxy(
        &ca,
        "drain_timeout = \"60s\"\nheader_read_timeout = \"60s\"\n",
    )
    .await;
    let mut conn = TlsConn::open(proxy.addr, &ca, ALPN_BOTH).await;
    let held = tokio::spawn(async move { conn.get("/hold/drain").await });
    blue.wait_held(1).await;
    let mut stalled = stalled_handshake(proxy.addr, &ca).await;

    let stopping = tokio::spawn(proxy.stop());
    // The handshake carries no request, so there is nothing to drain: it is
    // closed when shutdown begins (as hyper closes a plaintext connection
    // waiting for its first request), not when either 60 s timeout is up.
    until_closed(&mut stalled, "the proxy to close the stalled handshake").await;
    assert!(
        !stopping.is_finished(),
        "shutdown finished while a request was still held"
    );

    blue.release();
    let r = within("the held request", held)
        .await
        .expect("request task");
    assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "blue"));
    within("shutdown", stopping)
        .await
        .expect("stop task")
        .expect("run returns Ok after draining");
}

// === switchyard check ===

/// Runs `switchyard check --config PATH` to completion.
async fn check(config: &Path) -> Output {
    let config = config.to_path_buf();
    let run = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(["check", "--config"])
            .arg(&config)
            .output()
            .expect("run switchyard check")
    });
    within("switchyard check", run).await.expect("check thread")
}

/// A config with `proxy_tls` lines under `[proxy]`, written as
/// `switchyard.toml` in `dir`; returns its path and text.
fn config_with_proxy_tls(dir: &Path, proxy_tls: &str) -> (std::path::PathBuf, String) {
    let text = format!(
        "[proxy]\nlisten = \"127.0.0.1:8080\"\n{proxy_tls}\n[admin]\nlisten = \"127.0.0.1:9901\"\n\n[state]\npath = \"state.json\"\n\n{}",
        model("iris", "/", "http://127.0.0.1:8001", "http://127.0.0.1:8002")
    );
    let path = dir.join("switchyard.toml");
    std::fs::write(&path, &text).expect("write config");
    (path, text)
}

/// The 1-based line of `text` that starts with `prefix`.
fn line_starting(text: &str, prefix: &str) -> usize {
    text.lines()
        .position(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starts with {prefix:?}"))
        + 1
}

#[tokio::test]
async fn check_names_proxy_tls_when_the_certificate_is_missing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = TestCa::new();
    let files = ca
        .issue("switchyard test server")
        .write(dir.path(), "server");
    std::fs::remove_file(&files.cert).expect("remove the certificate");
    let (path, text) = config_with_proxy_tls(dir.path(), &files.config_lines());

    let out = check(&path).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let at = format!("{}:{}:", path.display(), line_starting(&text, "tls.cert"));
    assert!(stderr.contains(&at), "want {at:?} in:\n{stderr}");
    assert!(stderr.contains("proxy.tls"), "{stderr}");
    assert!(
        stderr.contains(&files.cert.display().to_string()),
        "the message names the missing file:\n{stderr}"
    );
}

#[tokio::test]
async fn check_names_proxy_tls_when_the_key_does_not_match_the_certificate() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = TestCa::new();
    let files = ca
        .issue("switchyard test server")
        .write(dir.path(), "server");
    let other = ca.issue("another server").write(dir.path(), "other");
    let mismatched = CertFiles {
        cert: files.cert.clone(),
        key: other.key.clone(),
    };
    let (path, text) = config_with_proxy_tls(dir.path(), &mismatched.config_lines());

    let out = check(&path).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    // Neither file is wrong on its own: the blame is on the `tls` table,
    // which starts at `tls.cert`.
    let at = format!("{}:{}:", path.display(), line_starting(&text, "tls.cert"));
    assert!(stderr.contains(&at), "want {at:?} in:\n{stderr}");
    assert!(stderr.contains("proxy.tls"), "{stderr}");
    assert!(stderr.contains("other.key"), "{stderr}");

    // The matching pair passes, named relative to the config file's directory.
    let relative = CertFiles {
        cert: "server.crt".into(),
        key: "server.key".into(),
    };
    let (path, _) = config_with_proxy_tls(dir.path(), &relative.config_lines());
    let out = check(&path).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
