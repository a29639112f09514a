//! The upstream connector: hyper-util's `HttpConnector`, wrapped so that
//! every open connection is counted, per endpoint and per pool, for as long
//! as its socket lives. The prober reads the counts to keep the standby warm;
//! status and metrics show them.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use http::uri::Authority;
use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use prometheus::IntGauge;
use tower_service::Service;

/// Counts connections made through it.
#[derive(Clone)]
pub struct CountingConnector {
    inner: HttpConnector,
    /// Per endpoint authority, its open-connection counter.
    endpoints: Arc<[(Authority, Arc<AtomicUsize>)]>,
    /// `switchyard_upstream_connections{model,pool}`.
    pool_gauge: IntGauge,
}

impl CountingConnector {
    pub fn new(
        inner: HttpConnector,
        endpoints: Arc<[(Authority, Arc<AtomicUsize>)]>,
        pool_gauge: IntGauge,
    ) -> CountingConnector {
        CountingConnector {
            inner,
            endpoints,
            pool_gauge,
        }
    }
}

impl Service<Uri> for CountingConnector {
    type Response = Counted<<HttpConnector as Service<Uri>>::Response>;
    type Error = <HttpConnector as Service<Uri>>::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        // Connects are rare next to requests: a scan of the pool's few
        // endpoints here costs nothing on the request path.
        let endpoint = uri.authority().and_then(|a| {
            self.endpoints
                .iter()
                .find(|(e, _)| e == a)
                .map(|(_, count)| Arc::clone(count))
        });
        let gauge = self.pool_gauge.clone();
        let connecting = self.inner.call(uri);
        Box::pin(async move {
            let io = connecting.await?;
            Ok(Counted::new(io, endpoint, gauge))
        })
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
