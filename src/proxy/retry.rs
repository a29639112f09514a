//! Retries: a request whose connection to the upstream failed before any of
//! it was sent goes once more, to another endpoint of the same pool. Never
//! to the other pool, never after the body started, never after a timeout
//! or a reset: then the upstream may have seen, and acted on, the request.
//!
//! How the request comes back. The pool's client (`pool/client.rs`) takes
//! the request by value. It gets a connection first (the only source of
//! errors for which `UpstreamError::is_connect` is true) and only then hands
//! the request to it; when that fails, it drops the request untouched. So
//! the head is kept as a copy, and the body rides in a [`RetryBody`] that, when
//! dropped without ever having been polled, hands its inner body back
//! through a oneshot. From its first poll on it never does: some of it may
//! be on the wire.
//!
//! A retry needs both: a connect error (nothing reached an upstream) and the
//! body back (nothing of it was read). Neither alone is enough: an empty
//! body is never polled yet its request's head may have been sent before a
//! reset, and a client that kept the request after a connect error would
//! leave nothing to send again.
//!
//! Cost: a pool with one endpoint pays nothing (no copy, no channel).
//! Otherwise each request pays a copy of its head and one oneshot; a
//! request's body is never buffered.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::request::Parts;
use http::Request;
use http_body_util::{Either, Limited};
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::oneshot;
use tracing::debug;

use crate::metrics::UpstreamErrorKind;
use crate::pool::{InFlight, UpstreamBody, UpstreamError};
use crate::proxy::ClientBody;
use crate::ErrorChain;

/// A request body on its way upstream that returns to the proxy if the
/// attempt drops it before ever polling it.
pub struct RetryBody<B> {
    /// `Some` until the body drops: only `Drop` takes it.
    inner: Option<B>,
    /// The way back; `None` when no retry is possible, and from the first
    /// poll on.
    reclaim: Option<oneshot::Sender<B>>,
}

/// What a retry needs of a request: a copy of its head, and its body once
/// the failed attempt has handed it back.
pub struct Replay<B> {
    head: Parts,
    body: oneshot::Receiver<B>,
}

/// Wraps `body` for its first attempt. With `retry` (the pool has another
/// endpoint to try), also returns what a retry needs; without, allocates
/// nothing.
pub fn arm<B>(head: &Parts, body: B, retry: bool) -> (RetryBody<B>, Option<Replay<B>>) {
    if !retry {
        return (RetryBody::new(body), None);
    }
    let (tx, rx) = oneshot::channel();
    let body = RetryBody {
        inner: Some(body),
        reclaim: Some(tx),
    };
    let replay = Replay {
        head: head.clone(),
        body: rx,
    };
    (body, Some(replay))
}

/// After the first attempt failed with `error`: moves `in_flight` to another
/// endpoint of its pool and returns the request to send there, or `None`
/// when the request may not be retried (the error is not a connect error,
/// the body did not come back, no other endpoint is in rotation).
///
/// On a retry the failed attempt is counted here as it would be without
/// one: a passive failure of its endpoint and a connect error of the pool.
pub fn retry(
    replay: Replay<Limited<ClientBody>>,
    error: &UpstreamError,
    in_flight: &mut InFlight,
) -> Option<Request<UpstreamBody>> {
    if !error.is_connect() {
        return None;
    }
    let (mut head, body) = replay.take()?.into_parts();
    // Only after a failed connect: the common path never clones the pool.
    let pool = Arc::clone(in_flight.pool());
    let (failed, next) = in_flight.move_to_other()?;
    failed.record_outcome(true);
    pool.metrics()
        .count_upstream_error(UpstreamErrorKind::Connect);
    pool.metrics().retries.inc();
    debug!(
        model = pool.model(),
        pool = %pool.name(),
        endpoint = failed.url(),
        retry_endpoint = next.url(),
        cause = %ErrorChain(error),
        "upstream connect failed; retrying on another endpoint of the pool"
    );
    head.uri = next.uri(head.uri.path_and_query());
    Some(Request::from_parts(
        head,
        Either::Left(RetryBody::new(body)),
    ))
}

// === impl RetryBody ===

impl<B> RetryBody<B> {
    /// A body that never comes back: for a pool with one endpoint, and for
    /// the retry itself (there is at most one).
    pub fn new(body: B) -> RetryBody<B> {
        RetryBody {
            inner: Some(body),
            reclaim: None,
        }
    }
}

impl<B: Body + Unpin> Body for RetryBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.get_mut();
        // Polled once, the body may be partly sent: it must never come back.
        this.reclaim = None;
        match &mut this.inner {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(B::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), B::size_hint)
    }
}

impl<B> Drop for RetryBody<B> {
    fn drop(&mut self) {
        if let (Some(tx), Some(body)) = (self.reclaim.take(), self.inner.take()) {
            // Err: the proxy no longer wants it (the request timed out or
            // was answered); the body then drops here.
            let _ = tx.send(body);
        }
    }
}

// === impl Replay ===

impl<B> Replay<B> {
    /// The request as it was first sent, if the attempt handed its body
    /// back: it dropped the body, never polled. `None` if the body was
    /// polled, or is still held.
    fn take(mut self) -> Option<Request<B>> {
        let body = self.body.try_recv().ok()?;
        Some(Request::from_parts(self.head, body))
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};

    use super::*;

    fn head() -> Parts {
        Request::post("http://127.0.0.1:9000/v2/models/iris/infer")
            .header("x-request-id", "abc")
            .body(())
            .unwrap()
            .into_parts()
            .0
    }

    #[test]
    fn a_body_dropped_unpolled_comes_back_with_the_head() {
        let (body, replay) = arm(&head(), Full::new(Bytes::from_static(b"x")), true);
        drop(body);
        let request = replay.expect("armed").take().expect("the body came back");
        assert_eq!(request.uri().path(), "/v2/models/iris/infer");
        assert_eq!(request.headers()["x-request-id"], "abc");
        assert_eq!(request.body().size_hint().exact(), Some(1));
    }

    #[tokio::test]
    async fn a_body_polled_once_never_comes_back() {
        let (mut body, replay) = arm(&head(), Full::new(Bytes::from_static(b"x")), true);
        let frame = body.frame().await.expect("a frame").expect("data");
        assert_eq!(frame.into_data().ok(), Some(Bytes::from_static(b"x")));
        drop(body);
        assert!(replay.expect("armed").take().is_none());
    }

    #[test]
    fn a_body_still_held_is_not_taken() {
        let (body, replay) = arm(&head(), Full::new(Bytes::from_static(b"x")), true);
        assert!(replay.expect("armed").take().is_none());
        // Dropped after the replay gave up: nowhere to go, no panic.
        drop(body);
    }

    #[test]
    fn without_a_retry_nothing_is_armed() {
        let (body, replay) = arm(&head(), Full::new(Bytes::from_static(b"x")), false);
        assert!(replay.is_none());
        assert!(body.reclaim.is_none());
    }
}
