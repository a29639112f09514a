//! TLS for the tests: a throwaway CA and server certificates made with rcgen
//! at test time and written into the test's temp dir (no key is ever checked
//! in), a client that trusts only that CA and speaks HTTP/1.1 or HTTP/2 over
//! tokio-rustls as ALPN decides, SIGHUP for this process, and a proxy start
//! for a TLS admin listener, whose readiness is polled over TLS.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use http::{header, Method, Request};
use http_body_util::BodyExt;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, MutexGuard};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::{full_body, BoxError, Proxy, Reply, TestBody};

/// ALPN offers: what a browser or curl sends, and each protocol alone.
pub const ALPN_BOTH: &[&[u8]] = &[b"h2", b"http/1.1"];
pub const ALPN_H1: &[&[u8]] = &[b"http/1.1"];
pub const ALPN_H2: &[&[u8]] = &[b"h2"];

// === certificates ===

/// A certificate authority that exists for one test only.
pub struct TestCa {
    /// The CA's certificate, PEM encoded: what a client told to trust
    /// this CA reads (e.g. `switchyard status --ca-file`).
    pub ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
    roots: Arc<rustls::RootCertStore>,
}

/// A server certificate and its key, PEM encoded, and the DER a client
/// sees in the handshake.
pub struct ServerCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

/// Where a listener's certificate and key live.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

// === impl TestCa ===

impl TestCa {
    pub fn new() -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params
            .distinguished_name
            .push(DnType::CommonName, "switchyard test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(cert.der().clone())
            .expect("the CA is a usable trust anchor");
        TestCa {
            ca_pem: cert.pem(),
            issuer: Issuer::new(params, key),
            roots: Arc::new(roots),
        }
    }

    /// A server certificate for 127.0.0.1 and localhost whose subject's
    /// common name is `name`, signed by this CA with a fresh key.
    pub fn issue(&self, name: &str) -> ServerCert {
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                .expect("server certificate params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().expect("server key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("sign the server certificate");
        ServerCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// A client config trusting only this CA and offering `alpn`.
    pub fn client_config(&self, alpn: &[&[u8]]) -> rustls::ClientConfig {
        let mut config = rustls::ClientConfig::builder_with_provider(switchyard::tls::provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default versions")
            .with_root_certificates(Arc::clone(&self.roots))
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config
    }
}

// === impl ServerCert ===

impl ServerCert {
    /// Writes the certificate and key as `{stem}.crt` and `{stem}.key` in `dir`.
    pub fn write(&self, dir: &Path, stem: &str) -> CertFiles {
        let files = CertFiles {
            cert: dir.join(format!("{stem}.crt")),
            key: dir.join(format!("{stem}.key")),
        };
        self.install(&files);
        files
    }

    /// Replaces `files` with this certificate and key, each by a rename, as
    /// a certificate manager would: a reader sees the old file or the new
    /// one, never half of one.
    pub fn install(&self, files: &CertFiles) {
        replace(&files.cert, &self.cert_pem);
        replace(&files.key, &self.key_pem);
    }
}

/// Writes `text` to `path` through a temporary file and a rename.
pub fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename to {}: {e}", path.display()));
}

// === impl CertFiles ===

impl CertFiles {
    /// The `tls.cert` and `tls.key` lines for `[proxy]` or `[admin]`.
    pub fn config_lines(&self) -> String {
        format!(
            "tls.cert = {:?}\ntls.key = {:?}\n",
            self.cert.display().to_string(),
            self.key.display().to_string()
        )
    }
}

// === client ===

/// A TLS handshake with `addr` (verified as 127.0.0.1) offering `alpn`.
pub async fn handshake(
    addr: SocketAddr,
    ca: &TestCa,
    alpn: &[&[u8]],
) -> std::io::Result<TlsStream<TcpStream>> {
    let connector = TlsConnector::from(Arc::new(ca.client_config(alpn)));
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST).into());
    connector.connect(name, tcp).await
}

/// The certificate a fresh handshake with `addr` presents.
pub async fn presented_certificate(addr: SocketAddr, ca: &TestCa) -> CertificateDer<'static> {
    let tls = super::within("a TLS handshake", handshake(addr, ca, ALPN_BOTH))
        .await
        .unwrap_or_else(|e| panic!("TLS handshake with {addr} failed: {e}"));
    let (_, session) = tls.get_ref();
    session
        .peer_certificates()
        .and_then(|chain| chain.first())
        .expect("the server presents a certificate")
        .clone()
        .into_owned()
}

/// Starts a TLS handshake with `addr` and stops halfway: the ClientHello
/// goes out and the first bytes of the server's answer come back, then the
/// client sends nothing more, so the server waits in its handshake for as
/// long as the returned socket lives.
pub async fn stalled_handshake(addr: SocketAddr, ca: &TestCa) -> TcpStream {
    let name = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST).into());
    let mut client = rustls::ClientConnection::new(Arc::new(ca.client_config(ALPN_BOTH)), name)
        .expect("client connection");
    let mut hello = Vec::new();
    client.write_tls(&mut hello).expect("ClientHello");
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(&hello).await.expect("send the ClientHello");
    let mut first = [0u8; 1];
    super::within(
        "the server's first handshake bytes",
        tcp.read_exact(&mut first),
    )
    .await
    .expect("the server answers the ClientHello");
    tcp
}

/// One client TLS connection carrying HTTP/1.1 or HTTP/2, whichever the
/// server chose by ALPN (HTTP/1.1 when it chose none).
pub struct TlsConn {
    /// The protocol ALPN settled on, e.g. `Some(b"h2")`.
    pub alpn: Option<Vec<u8>>,
    /// The certificate the server presented in this connection's handshake.
    pub certificate: CertificateDer<'static>,
    addr: SocketAddr,
    sender: Sender,
}

enum Sender {
    H1(http1::SendRequest<TestBody>),
    H2(http2::SendRequest<TestBody>),
}

// === impl TlsConn ===

impl TlsConn {
    /// Connects to `addr` offering `alpn`; panics if that fails.
    pub async fn open(addr: SocketAddr, ca: &TestCa, alpn: &[&[u8]]) -> TlsConn {
        super::within("a TLS connection", TlsConn::connect(addr, ca, alpn))
            .await
            .unwrap_or_else(|e| panic!("TLS connection to {addr} failed: {e}"))
    }

    pub async fn connect(
        addr: SocketAddr,
        ca: &TestCa,
        alpn: &[&[u8]],
    ) -> Result<TlsConn, BoxError> {
        let tls = handshake(addr, ca, alpn).await?;
        let (_, session) = tls.get_ref();
        let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
        let certificate = session
            .peer_certificates()
            .and_then(|chain| chain.first())
            .ok_or("the server presented no certificate")?
            .clone()
            .into_owned();
        let io = TokioIo::new(tls);
        let sender = if alpn.as_deref() == Some(b"h2") {
            let (sender, conn) = http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(conn);
            Sender::H2(sender)
        } else {
            let (sender, conn) = http1::handshake(io).await?;
            tokio::spawn(conn);
            Sender::H1(sender)
        };
        Ok(TlsConn {
            alpn,
            certificate,
            addr,
            sender,
        })
    }

    /// Another stream on the same HTTP/2 connection.
    pub fn h2_stream(&self) -> TlsConn {
        match &self.sender {
            Sender::H2(sender) => TlsConn {
                alpn: self.alpn.clone(),
                certificate: self.certificate.clone(),
                addr: self.addr,
                sender: Sender::H2(sender.clone()),
            },
            Sender::H1(_) => panic!("an HTTP/1.1 connection carries one request at a time"),
        }
    }

    /// Sends a request with `headers` and reads the whole response; `Err`
    /// on transport errors.
    pub async fn try_send(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Reply, BoxError> {
        let addr = self.addr;
        let mut req = Request::builder().method(method);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let response = match &mut self.sender {
            Sender::H1(sender) => {
                let req = req
                    .uri(path)
                    .header(header::HOST, addr.to_string())
                    .body(full_body(""))?;
                sender.ready().await?;
                sender.send_request(req).await?
            }
            Sender::H2(sender) => {
                let req = req
                    .uri(format!("https://{addr}{path}"))
                    .body(full_body(""))?;
                sender.ready().await?;
                sender.send_request(req).await?
            }
        };
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// GETs `path`; panics on a transport error or after the deadline.
    pub async fn get(&mut self, path: &str) -> Reply {
        self.get_with(path, &[]).await
    }

    /// GETs `path` with extra request headers; panics as [`TlsConn::get`].
    pub async fn get_with(&mut self, path: &str, headers: &[(&str, &str)]) -> Reply {
        super::within(
            &format!("GET {path} over TLS"),
            self.try_send(Method::GET, path, headers),
        )
        .await
        .unwrap_or_else(|e| panic!("GET {path} over TLS failed: {e}"))
    }
}

// === SIGHUP ===

/// SIGHUP reaches every proxy in this test process: tests that send it hold
/// this lock for their whole run, so no other test's signal makes a proxy
/// read certificate files a test is still changing.
static RELOADING: Mutex<()> = Mutex::const_new(());

pub async fn reload_lock() -> MutexGuard<'static, ()> {
    RELOADING.lock().await
}

/// Sends SIGHUP to this process, as `kill -HUP <pid>` would to switchyard.
/// Only once a proxy has started: `run` registers its handler before
/// serving, and from then on SIGHUP no longer takes its default action
/// (terminating the process) for the rest of the process's life.
pub fn sighup() {
    let pid = std::process::id().to_string();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -HUP {pid} failed");
}

// === proxy ===

/// [`Proxy::try_start_with_admin`] for an `admin_extra` that turns on
/// `admin.tls`: readiness (the first probe round in `/readyz`) is polled over
/// TLS, trusting `ca`, since a plain HTTP request to that listener fails.
pub async fn start_with_tls_admin(
    dir: Arc<tempfile::TempDir>,
    proxy_extra: &str,
    admin_extra: &str,
    models: &str,
    ca: &TestCa,
) -> Proxy {
    assert!(
        admin_extra.contains("tls."),
        "admin_extra must set admin.tls"
    );
    Proxy::try_launch(dir, proxy_extra, admin_extra, models, |admin| async move {
        let mut conn = TlsConn::connect(admin, ca, ALPN_BOTH).await.ok()?;
        conn.try_send(Method::GET, "/readyz", &[])
            .await
            .ok()
            .map(|r| r.body)
    })
    .await
    .unwrap_or_else(|e| panic!("proxy failed to start: {}", switchyard::ErrorChain(&e)))
}
