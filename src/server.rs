//! The accept loop every listener shares (proxy, admin, demo model servers):
//! accept, serve HTTP/1.1 and HTTP/2 cleartext on the same port, and on
//! cancel stop accepting and drain the open connections for at most the
//! drain time.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// How long to pause after a failed accept (typically out of file
/// descriptors) before trying again, so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The connection builder: HTTP/1.1 with keep-alive and HTTP/2 with prior
/// knowledge, told apart by the connection preface.
pub fn builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().keep_alive(true).timer(TokioTimer::new());
    builder.http2().timer(TokioTimer::new());
    builder
}

/// Serves `listener` until `token` is cancelled, then drains: connections
/// finish their requests for at most `drain`, and whatever is still open then
/// is cut, so nothing this listener accepted outlives the call.
///
/// `make` builds the service for one connection from the peer's address.
/// `name` labels the log lines (`proxy`, `admin`, ...).
pub async fn serve<M, S, B>(
    name: &'static str,
    listener: TcpListener,
    make: M,
    token: CancellationToken,
    drain: Duration,
) where
    M: Fn(SocketAddr) -> S,
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let builder = builder();
    // Not Clone on purpose: every connection is watched through this one
    // value, and `shutdown` consumes it, so no connection can be added after
    // the drain has started counting.
    let graceful = GracefulShutdown::new();
    // Cancelled when the drain time is up, or if this future is dropped:
    // every connection task listens and drops its connection (closing the
    // socket). Connections run in their own tasks, so without this they
    // would outlive `serve` and a "cut" drain would cut nothing.
    let cut = CancellationToken::new();
    let _cut_on_return = cut.clone().drop_guard();
    loop {
        tokio::select! {
            () = token.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Latency over throughput: inference responses are small
                    // and each extra 40 ms of Nagle would show in p99.
                    if let Err(e) = stream.set_nodelay(true) {
                        debug!(listener = name, %peer, error = %e, "cannot set TCP_NODELAY");
                    }
                    let conn = builder.serve_connection(TokioIo::new(stream), make(peer)).into_owned();
                    let conn = graceful.watch(conn);
                    let cut = cut.clone();
                    tokio::spawn(async move {
                        tokio::select! {
                            result = conn => if let Err(e) = result {
                                debug!(listener = name, %peer, error = %e, "connection ended with an error");
                            },
                            () = cut.cancelled() => {
                                debug!(listener = name, %peer, "connection cut at the end of the drain");
                            }
                        }
                    });
                }
                Err(e) => {
                    warn!(listener = name, error = %e, "accept failed; retrying");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            }
        }
    }
    drop(listener);
    let open = graceful.count();
    if open > 0 {
        info!(listener = name, connections = open, "draining connections");
    }
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(drain) => {
            warn!(listener = name, drain_timeout = ?drain, "drain timed out; closing the remaining connections");
        }
    }
}
