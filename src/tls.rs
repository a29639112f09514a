//! TLS with rustls and the ring provider: PEM loading, the inbound
//! certificate that SIGHUP swaps without touching open connections, and the
//! client configuration for `https://` upstreams.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// ALPN protocols the listeners offer, most preferred first.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Why a certificate, key or CA bundle could not be used. Each variant names
/// the file; the cause is its `source` (print with [`crate::ErrorChain`]).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} holds no PEM certificate", .0.display())]
    NoCertificate(PathBuf),
    #[error("{} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)", .0.display())]
    NoKey(PathBuf),
    #[error("{} and {} do not make a usable certificate", cert.display(), key.display())]
    Pair {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
    #[error("{} cannot be used", path.display())]
    Rustls {
        path: PathBuf,
        source: rustls::Error,
    },
}

/// A certificate chain and its private key, as files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The crypto provider every TLS config uses: ring, so the build needs no C
/// toolchain beyond what ring carries.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate in the PEM file at `path`, in order.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read = |source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    };
    let pem = std::fs::read(path).map_err(read)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read(io::Error::new(io::ErrorKind::InvalidData, e)))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.to_path_buf()));
    }
    Ok(certs)
}

/// The first private key in the PEM file at `path`.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|_| TlsError::NoKey(path.to_path_buf()))
}

/// Loads `files` as a certificate rustls can serve, checking that the key
/// belongs to the certificate.
pub fn load_certified_key(
    files: &TlsFiles,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let certs = load_certs(&files.cert)?;
    let key = load_key(&files.key)?;
    CertifiedKey::from_der(certs, key, provider).map_err(|source| TlsError::Pair {
        cert: files.cert.clone(),
        key: files.key.clone(),
        source,
    })
}

/// The TLS side of one listener. The certificate sits behind an `ArcSwap`:
/// [`ServerTls::reload`] re-reads the files and later handshakes use the new
/// one, while open connections keep the session they have.
pub struct ServerTls {
    files: TlsFiles,
    current: Arc<Resolver>,
    acceptor: TlsAcceptor,
}

#[derive(Debug)]
struct Resolver(ArcSwap<CertifiedKey>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

// === impl ServerTls ===

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.files)
            .finish()
    }
}

impl ServerTls {
    /// Loads the certificate and builds the acceptor (TLS 1.2 and 1.3, ALPN
    /// `h2` and `http/1.1`).
    pub fn new(files: &TlsFiles) -> Result<ServerTls, TlsError> {
        let provider = provider();
        let key = load_certified_key(files, &provider)?;
        let current = Arc::new(Resolver(ArcSwap::from_pointee(key)));
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|source| TlsError::Rustls {
                path: files.cert.clone(),
                source,
            })?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&current) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        Ok(ServerTls {
            files: files.clone(),
            current,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// Re-reads the certificate and key. On error the served certificate
    /// stays as it was.
    pub fn reload(&self) -> Result<(), TlsError> {
        let key = load_certified_key(&self.files, &provider())?;
        self.current.0.store(Arc::new(key));
        Ok(())
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }
}

/// Client TLS for upstreams: trusts the PEM bundle `ca` when given, else the
/// webpki (Mozilla) roots; presents `identity` (mTLS) when given.
pub fn client_config(
    ca: Option<&Path>,
    identity: Option<&TlsFiles>,
) -> Result<rustls::ClientConfig, TlsError> {
    let provider = provider();
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            for cert in load_certs(path)? {
                roots.add(cert).map_err(|source| TlsError::Rustls {
                    path: path.to_path_buf(),
                    source,
                })?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let blame = ca.map_or_else(|| PathBuf::from("webpki roots"), Path::to_path_buf);
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls {
            path: blame.clone(),
            source,
        })?
        .with_root_certificates(roots);
    match identity {
        None => Ok(builder.with_no_client_auth()),
        Some(files) => builder
            .with_client_auth_cert(load_certs(&files.cert)?, load_key(&files.key)?)
            .map_err(|source| TlsError::Pair {
                cert: files.cert.clone(),
                key: files.key.clone(),
                source,
            }),
    }
}
