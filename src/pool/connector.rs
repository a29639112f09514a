//! The upstream connector: hyper-util's `HttpConnector`, with hyper-rustls's
//! `HttpsConnector` on top for a pool of `https://` endpoints, wrapped so
//! that every open connection is counted, per endpoint and per pool, for as
//! long as its socket lives. The prober reads the counts to keep the standby
//! warm; status and metrics show them.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_rustls::{
    DefaultServerNameResolver, FixedServerNameResolver, HttpsConnector, MaybeHttpsStream,
    ResolveServerName,
};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use prometheus::IntGauge;
use tokio::net::TcpStream;
use tower_service::Service;

use crate::config::UpstreamTls;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One upstream connection: TCP, or TLS over TCP.
pub type UpstreamStream = MaybeHttpsStream<TokioIo<TcpStream>>;

/// Counts connections made through it.
#[derive(Clone)]
pub struct CountingConnector {
    inner: Inner,
    /// Bounds an https connect as a whole, TCP and TLS handshake:
    /// `HttpConnector`'s own timeout covers the TCP connect alone, and an
    /// endpoint that accepts but never answers the handshake would otherwise
    /// hold the connect until the request's timeout.
    connect_timeout: Duration,
    /// `switchyard_upstream_connections{model,pool}`.
    pool_gauge: IntGauge,
}

/// The connector of a pool: one scheme per pool, chosen at build.
#[derive(Clone)]
enum Inner {
    Http(HttpConnector),
    Https(HttpsConnector<HttpConnector>),
}

impl CountingConnector {
    /// Plain TCP through `http`, or with `tls`, TLS on top of it: verified
    /// against `tls.server_name` if set, else the endpoint's host.
    pub fn new(
        http: HttpConnector,
        tls: Option<&UpstreamTls>,
        connect_timeout: Duration,
        pool_gauge: IntGauge,
    ) -> CountingConnector {
        let inner = match tls {
            None => Inner::Http(http),
            Some(tls) => {
                let names: Arc<dyn ResolveServerName + Send + Sync> = match &tls.server_name {
                    Some(name) => Arc::new(FixedServerNameResolver::new(name.clone())),
                    None => Arc::new(DefaultServerNameResolver::default()),
                };
                // `true`: an http:// URI is refused rather than sent in clear.
                Inner::Https(HttpsConnector::new(
                    http,
                    Arc::clone(&tls.client),
                    true,
                    names,
                ))
            }
        };
        CountingConnector {
            inner,
            connect_timeout,
            pool_gauge,
        }
    }

    /// Connects to `uri` (`scheme://authority/`), counting the connection
    /// on `endpoint` (the endpoint's counter, which its slot of the
    /// client hands over: the set of endpoints changes, the connector not)
    /// and on the pool's gauge for as long as the socket lives.
    pub fn connect(
        &self,
        uri: Uri,
        endpoint: Arc<AtomicUsize>,
    ) -> Pin<Box<dyn Future<Output = Result<Counted<UpstreamStream>, BoxError>> + Send>> {
        let endpoint = Some(endpoint);
        let gauge = self.pool_gauge.clone();
        // Both connectors are always ready (`poll_ready` returns at once),
        // and cloning one copies a few `Arc`s.
        match self.inner.clone() {
            Inner::Http(mut http) => {
                let connecting = http.call(uri);
                Box::pin(async move {
                    let io = connecting.await?;
                    Ok(Counted::new(MaybeHttpsStream::Http(io), endpoint, gauge))
                })
            }
            Inner::Https(mut https) => {
                let connecting = https.call(uri);
                let limit = self.connect_timeout;
                Box::pin(async move {
                    let io = tokio::time::timeout(limit, connecting)
                        .await
                        .map_err(|_| {
                            io::Error::new(
                                io::ErrorKind::TimedOut,
                                format!("TCP connect and TLS handshake took longer than {limit:?}"),
                            )
                        })??;
                    Ok(Counted::new(io, endpoint, gauge))
                })
            }
        }
    }
}

/// A connection that is counted until it drops.
pub struct Counted<T> {
    inner: T,
    endpoint: Option<Arc<AtomicUsize>>,
    pool_gauge: IntGauge,
}

impl<T> Counted<T> {
    fn new(inner: T, endpoint: Option<Arc<AtomicUsize>>, pool_gauge: IntGauge) -> Counted<T> {
        if let Some(e) = &endpoint {
            e.fetch_add(1, Ordering::Relaxed);
        }
        pool_gauge.inc();
        Counted {
            inner,
            endpoint,
            pool_gauge,
        }
    }
}

impl<T> Drop for Counted<T> {
    fn drop(&mut self) {
        if let Some(e) = &self.endpoint {
            e.fetch_sub(1, Ordering::Relaxed);
        }
        self.pool_gauge.dec();
    }
}

impl<T: Connection> Connection for Counted<T> {
    fn connected(&self) -> Connected {
        self.inner.connected()
    }
}

impl<T: Read + Unpin> Read for Counted<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: Write + Unpin> Write for Counted<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
}
