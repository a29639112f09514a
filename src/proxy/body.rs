//! The response body the proxy sends: an upstream's streamed body carrying
//! its in-flight guard, or a small body switchyard wrote itself (errors).
//!
//! The guard rides inside the body so that a request counts as in flight,
//! and keeps its pool alive, until the last byte has gone to the client (or
//! the client went away), not merely until the headers arrived.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, SizeHint};

use super::stream::Figures;
use crate::pool::{InFlight, UpstreamIncoming};
use crate::server::RequestBody;
use crate::shadow::Capture;
use crate::switch::Admission;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub enum ProxyBody {
    Upstream {
        body: UpstreamIncoming,
        /// Dropped with the body: ends the in-flight count and records the
        /// duration. Its pool's metrics take the streaming figures.
        in_flight: InFlight,
        figures: Figures,
        _admission: Admission,
        /// The answer copied for a shadow mirror, if the request is mirrored.
        copy: Option<Box<Capture>>,
    },
    Local(Full<Bytes>),
}

impl ProxyBody {
    /// The upstream's `body`, streamed; `event_stream` when it is
    /// `text/event-stream`, whose events are counted and timed.
    pub fn upstream(
        body: UpstreamIncoming,
        in_flight: InFlight,
        admission: Admission,
        event_stream: bool,
    ) -> ProxyBody {
        let mut figures = Figures::new(in_flight.started(), event_stream);
        if ended(&body) {
            // hyper will not poll it: the head was the whole answer.
            figures.end(in_flight.pool().metrics());
        }
        ProxyBody::Upstream {
            body,
            in_flight,
            figures,
            _admission: admission,
            copy: None,
        }
    }

    /// Copies the answer for a shadow mirror as it streams to the client.
    pub fn copy_to(mut self, capture: Capture) -> ProxyBody {
        if let ProxyBody::Upstream { body, copy, .. } = &mut self {
            let mut capture = Box::new(capture);
            if ended(body) {
                capture.finish();
            }
            *copy = Some(capture);
        }
        self
    }

    pub fn local(bytes: impl Into<Bytes>) -> ProxyBody {
        ProxyBody::Local(Full::new(bytes.into()))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        // Both variants are Unpin, so projecting through `get_mut` is sound.
        match self.get_mut() {
            ProxyBody::Upstream {
                body,
                in_flight,
                figures,
                copy,
                ..
            } => {
                let polled = Pin::new(&mut *body).poll_frame(cx);
                let done = ended(body);
                if let Some(copy) = copy {
                    tap(copy, &polled, done);
                }
                let metrics = in_flight.pool().metrics();
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(data) = frame.data_ref() {
                            figures.data(data, metrics);
                        }
                        if done {
                            figures.end(metrics);
                        }
                    }
                    Poll::Ready(None) => figures.end(metrics),
                    Poll::Ready(Some(Err(_))) | Poll::Pending => {}
                }
                polled
            }
            ProxyBody::Local(full) => Pin::new(full)
                .poll_frame(cx)
                .map_err(|never| match never {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream { body, .. } => body.is_end_stream(),
            ProxyBody::Local(full) => full.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream { body, .. } => body.size_hint(),
            ProxyBody::Local(full) => full.size_hint(),
        }
    }
}

/// The client's request body on its way upstream. Its errors are tagged
/// [`ClientBodyError`], so a body the client broke off, or framed wrongly,
/// is told apart from an upstream failure (and never counts against the
/// endpoint); and it records when it has been read to the end, so a request
/// timeout while the client is still sending is the client's too.
pub struct ClientBody {
    inner: RequestBody,
    finished: Option<Arc<AtomicBool>>,
    /// The body copied for a shadow mirror, if the request is mirrored.
    copy: Option<Box<Capture>>,
}

/// The client's request body failed (aborted, malformed chunking).
#[derive(Debug, thiserror::Error)]
#[error("the request body could not be read from the client")]
pub struct ClientBodyError(#[source] hyper::Error);

impl ClientBody {
    /// Wraps `inner`; the flag, for a body still to be read, turns true once
    /// it has been read to the end (an empty body allocates none).
    pub fn new(inner: RequestBody) -> (ClientBody, Option<Arc<AtomicBool>>) {
        let finished = (!inner.is_end_stream()).then(|| Arc::new(AtomicBool::new(false)));
        let flag = finished.clone();
        let body = ClientBody {
            inner,
            finished,
            copy: None,
        };
        (body, flag)
    }

    /// Copies the body for a shadow mirror as it streams upstream.
    pub fn copy_to(&mut self, capture: Capture) {
        let mut capture = Box::new(capture);
        if ended(&self.inner) {
            capture.finish();
        }
        self.copy = Some(capture);
    }
}

/// Whether a body has nothing more to send. Also true once a body with a
/// length has sent all of it: hyper stops polling there, and an HTTP/2
/// body may only say `is_end_stream` on a later, empty frame.
pub fn ended<B: Body>(body: &B) -> bool {
    body.is_end_stream() || body.size_hint().exact() == Some(0)
}

/// Feeds one poll's outcome to a copy: data frames are copied, and the end
/// of the body (`None`, or the last frame when the body says it has ended)
/// hands the copy over. An error leaves it unfinished: incomplete.
fn tap<E>(copy: &mut Capture, polled: &Poll<Option<Result<Frame<Bytes>, E>>>, ended: bool) {
    match polled {
        Poll::Ready(Some(Ok(frame))) => {
            if let Some(data) = frame.data_ref() {
                copy.data(data);
            }
            if ended {
                copy.finish();
            }
        }
        Poll::Ready(None) => copy.finish(),
        Poll::Ready(Some(Err(_))) | Poll::Pending => {}
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Some(copy) = &mut this.copy {
            tap(copy, &polled, ended(&this.inner));
        }
        match polled {
            Poll::Ready(None) => {
                if let Some(done) = &this.finished {
                    done.store(true, Ordering::Release);
                }
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(ClientBodyError(e)))),
            other => other.map(|f| f.map(|f| f.map_err(ClientBodyError))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
