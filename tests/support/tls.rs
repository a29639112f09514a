//! TLS test support: a throwaway PKI made with rcgen when a test runs (a CA,
//! server certificates it signs, a client certificate for mTLS; no key is
//! ever checked in), and [`TlsUpstream`], the test upstream behind TLS.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::{upstream_handle, within, UpstreamState};

// === pki ===

/// A CA of its own, in a temp dir: `ca.pem`, and the client certificate it
/// signed, `client.pem` and `client.key`.
pub struct Pki {
    dir: tempfile::TempDir,
    issuer: Issuer<'static, KeyPair>,
    ca: CertificateDer<'static>,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut params = CertificateParams::new(Vec::new()).expect("CA params");
        params
            .distinguished_name
            .push(DnType::CommonName, "switchyard test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        std::fs::write(dir.path().join("ca.pem"), cert.pem()).expect("write ca.pem");
        let pki = Pki {
            dir,
            issuer: Issuer::new(params, key),
            ca: cert.der().clone(),
        };
        let (chain, key) = pki.leaf("switchyard", &[], ExtendedKeyUsagePurpose::ClientAuth);
        std::fs::write(pki.client_cert(), chain).expect("write client.pem");
        std::fs::write(pki.client_key(), key).expect("write client.key");
        pki
    }

    /// The CA bundle, for `tls.ca`.
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The client certificate, for `tls.cert`.
    pub fn client_cert(&self) -> PathBuf {
        self.dir.path().join("client.pem")
    }

    /// Its private key, for `tls.key`.
    pub fn client_key(&self) -> PathBuf {
        self.dir.path().join("client.key")
    }

    /// A TLS server for `names` (DNS names or IP addresses), its certificate
    /// signed by this CA; ALPN `h2` and `http/1.1`.
    pub fn server(&self, names: &[&str]) -> Arc<ServerConfig> {
        self.server_config(names, None)
    }

    /// As [`Pki::server`], but requiring a client certificate this CA signed.
    pub fn mtls_server(&self, names: &[&str]) -> Arc<ServerConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone()).expect("CA as root");
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .expect("client verifier");
        self.server_config(names, Some(verifier))
    }

    fn server_config(
        &self,
        names: &[&str],
        clients: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
    ) -> Arc<ServerConfig> {
        let (chain, key) = self.leaf("upstream", names, ExtendedKeyUsagePurpose::ServerAuth);
        let chain = CertificateDer::pem_slice_iter(chain.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("server chain");
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("server key");
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions");
        let builder = match clients {
            Some(verifier) => builder.with_client_cert_verifier(verifier),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .expect("server certificate");
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }

    /// A server certificate for `names` and its key, written as PEM files
    /// into this PKI's directory under `stem` (`stem.pem`, `stem.key`), for
    /// a server that reads files (etcd). Good for client auth too: etcd's
    /// JSON gateway presents it to etcd's own gRPC port.
    pub fn server_files(&self, stem: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let (chain, key) = self.leaf_for(
            stem,
            names,
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        );
        let cert_path = self.dir.path().join(format!("{stem}.pem"));
        let key_path = self.dir.path().join(format!("{stem}.key"));
        std::fs::write(&cert_path, chain).expect("write server certificate");
        std::fs::write(&key_path, key).expect("write server key");
        (cert_path, key_path)
    }

    /// A certificate for `names` signed by this CA: (PEM chain, PEM key).
    fn leaf(&self, cn: &str, names: &[&str], usage: ExtendedKeyUsagePurpose) -> (String, String) {
        self.leaf_for(cn, names, vec![usage])
    }

    /// [`Pki::leaf`] with any extended key usages.
    fn leaf_for(
        &self,
        cn: &str,
        names: &[&str],
        usages: Vec<ExtendedKeyUsagePurpose>,
    ) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = usages;
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("leaf certificate");
        (cert.pem(), key.serialize_pem())
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

// === upstream ===

/// What the TLS handshakes of a [`TlsUpstream`] came to.
#[derive(Debug, Clone, Default)]
pub struct Handshakes {
    pub ok: usize,
    pub failed: usize,
    /// Of the ones that succeeded, how many presented a client certificate.
    pub with_client_cert: usize,
    /// The ALPN protocol each successful handshake agreed on ("" for none).
    pub alpn: Vec<String>,
}

/// The test upstream of [`super::Upstream`] (same paths and counters) behind
/// TLS on `127.0.0.1:0`: HTTP/1.1, or HTTP/2 when ALPN says `h2`.
pub struct TlsUpstream {
    pub name: &'static str,
    pub addr: SocketAddr,
    state: Arc<UpstreamState>,
    shared: Arc<Shared>,
    token: CancellationToken,
    task: JoinHandle<()>,
}

struct Shared {
    acceptor: Mutex<TlsAcceptor>,
    /// Bumped by [`TlsUpstream::rotate`]: open connections of an older
    /// generation close.
    generation: watch::Sender<u64>,
    handshakes: watch::Sender<Handshakes>,
}

impl TlsUpstream {
    pub async fn start(name: &'static str, tls: Arc<ServerConfig>) -> TlsUpstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("upstream address");
        let state = Arc::new(UpstreamState::new(name));
        let shared = Arc::new(Shared {
            acceptor: Mutex::new(TlsAcceptor::from(tls)),
            generation: watch::Sender::new(0),
            handshakes: watch::Sender::new(Handshakes::default()),
        });
        let token = CancellationToken::new();
        let task = tokio::spawn(accept_loop(
            listener,
            Arc::clone(&state),
            Arc::clone(&shared),
            token.clone(),
        ));
        TlsUpstream {
            name,
            addr,
            state,
            shared,
            token,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Requests this upstream has received, health probes not included.
    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    /// Health probes this upstream has answered.
    pub fn probes(&self) -> usize {
        self.state.probes.load(Ordering::SeqCst)
    }

    pub fn handshakes(&self) -> Handshakes {
        self.shared.handshakes.borrow().clone()
    }

    /// Waits until the handshakes so far satisfy `check`.
    pub async fn wait_handshakes(&self, what: &str, check: impl FnMut(&Handshakes) -> bool) {
        let mut rx = self.shared.handshakes.subscribe();
        within(
            &format!("{what} at upstream {}", self.name),
            rx.wait_for(check),
        )
        .await
        .expect("upstream alive");
    }

    /// Serves `tls` from now on and closes every open connection, as a
    /// server whose certificate was replaced and restarted would.
    pub fn rotate(&self, tls: Arc<ServerConfig>) {
        *self.shared.acceptor.lock().expect("acceptor lock") = TlsAcceptor::from(tls);
        self.shared.generation.send_modify(|g| *g += 1);
    }

    /// Stops the server, closing its connections, and waits until its port is closed.
    pub async fn stop(self) {
        self.token.cancel();
        let _ = self.task.await;
    }
}

async fn accept_loop(
    listener: TcpListener,
    state: Arc<UpstreamState>,
    shared: Arc<Shared>,
    token: CancellationToken,
) {
    // Dropped when the loop ends: every connection closes with it.
    let mut connections = JoinSet::new();
    loop {
        let stream = tokio::select! {
            () = token.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
        };
        while connections.try_join_next().is_some() {}
        state.connections.fetch_add(1, Ordering::SeqCst);
        let acceptor = shared.acceptor.lock().expect("acceptor lock").clone();
        let mut generation = shared.generation.subscribe();
        let (state, shared) = (Arc::clone(&state), Arc::clone(&shared));
        connections.spawn(async move {
            let tls = match acceptor.accept(stream).await {
                Ok(tls) => tls,
                Err(_) => {
                    shared.handshakes.send_modify(|h| h.failed += 1);
                    return;
                }
            };
            let (_, session) = tls.get_ref();
            let alpn = String::from_utf8_lossy(session.alpn_protocol().unwrap_or_default());
            let client_cert = session.peer_certificates().is_some();
            shared.handshakes.send_modify(|h| {
                h.ok += 1;
                h.with_client_cert += usize::from(client_cert);
                h.alpn.push(alpn.into_owned());
            });
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let state = Arc::clone(&state);
                    let req = req.map(switchyard::server::RequestBody::from);
                    async move { Ok::<_, Infallible>(upstream_handle(&state, req).await) }
                });
            let builder = auto::Builder::new(TokioExecutor::new());
            let serving = builder.serve_connection(TokioIo::new(tls), service);
            tokio::select! {
                _ = serving => {}
                _ = generation.changed() => {}
            }
        });
    }
}
