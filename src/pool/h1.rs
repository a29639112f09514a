//! HTTP/1.1 to an upstream, spoken in the request's own task.
//!
//! hyper's client connection runs in a task of its own: a request crosses
//! to it through a channel, its response comes back through a oneshot, and
//! every chunk of the response body through another channel, each crossing
//! a wake-up of the other task; and hyper's read buffer is shared with the
//! head it parsed, so each response allocates a new one. Here the request's
//! task writes the request, reads and parses the response head (httparse,
//! as hyper does) and then, as the response body is polled, reads the body
//! from the socket itself. A connection is only a socket, its read buffer
//! and its write buffer, both reused from request to request.
//!
//! What is kept of hyper's client:
//! - The request is written in one `write` where it can be: its head and
//!   whatever of its body is ready. A body with a length goes with
//!   `Content-Length`, one without as `Transfer-Encoding: chunked` (with
//!   its trailers).
//! - The upstream may answer before it has read the whole body. Its answer
//!   is returned at once, and the body goes on being sent while the
//!   response streams (as RFC 9112, 9.3 advises, not if the answer is 300
//!   or above or says it closes: then the rest is dropped). A response
//!   that ends before the upload does ends it: the rest is not sent, and
//!   the connection closes. A connection goes back idle only once both its
//!   request and its response went whole.
//! - Response bodies are framed as RFC 9112 says: none for `HEAD`, 1xx, 204
//!   and 304; `Transfer-Encoding: chunked` (trailers become a trailers
//!   frame); `Content-Length`; else until the upstream closes. Interim 1xx
//!   answers are skipped. A connection is reused only when its response
//!   ended cleanly, said nothing of closing, and left nothing unread.
//! - Heads are bounded: 64 KiB, 100 headers; a chunk-size line must be hex
//!   digits, perhaps an extension, and CRLF, as hyper's decoder requires.

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version};
use hyper::body::{Body, Frame, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use super::connector::{Counted, UpstreamStream};
use super::UpstreamBody;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The longest response head (or trailer section) read.
const MAX_HEAD: usize = 64 * 1024;
/// The most header fields in a response head.
const MAX_HEADERS: usize = 100;
/// Room reserved for each read: one read takes a whole small answer.
const READ_SIZE: usize = 8 * 1024;
/// Room kept for copies of response heads; a longer head is copied alone.
const HEADS_SIZE: usize = 2048;
/// Request body buffered before it is written.
const WRITE_BATCH: usize = 64 * 1024;

/// Why an exchange over HTTP/1.1 failed, apart from the request body's own
/// errors (which are passed on as they are).
#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    #[error("upstream connection failed")]
    Io(#[from] io::Error),
    #[error("the upstream closed the connection before the response ended")]
    Incomplete,
    #[error("malformed response from the upstream: {0}")]
    Malformed(&'static str),
    #[error("the request body did not match its Content-Length")]
    BodyLength,
    /// The request body failed while the response streamed.
    #[error("the request body failed")]
    Upload(#[source] BoxError),
}

pub type Io = TokioIo<Counted<UpstreamStream>>;

/// Read and write buffers larger than this are not kept on an idle
/// connection.
const KEEP_IDLE: usize = 64 * 1024;

/// An HTTP/1.1 connection to an upstream (any transport, for the tests).
/// Boxed: with rustls' state it is over a kilobyte, and a connection moves
/// several times on every request (idle stack, exchange, body).
pub struct H1Conn<T = Io>(Box<Conn<T>>);

pub struct Conn<T> {
    io: T,
    /// What has been read and not yet parsed; empty between exchanges.
    /// Body data is handed out of it without a copy: once those frames are
    /// written and dropped, the room is reused, not reallocated.
    buf: BytesMut,
    /// Where each response head is copied, for its header values to point
    /// into; reused the same way.
    heads: BytesMut,
    /// What is being written.
    out: Vec<u8>,
    /// When it went idle (`client::now_ms`).
    pub(super) idle_since: u64,
    /// `buf` grew past its size: [`H1Conn::trim`] lets it go.
    grown: bool,
}

impl<T> std::ops::Deref for H1Conn<T> {
    type Target = Conn<T>;

    fn deref(&self) -> &Conn<T> {
        &self.0
    }
}

impl<T> std::ops::DerefMut for H1Conn<T> {
    fn deref_mut(&mut self) -> &mut Conn<T> {
        &mut self.0
    }
}

impl<T: AsyncRead + Unpin> Conn<T> {
    /// Reads what the socket has into `buf`; `Ok(0)` at its end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_SIZE / 2 {
            // A long head or chunk line that came in pieces grows it.
            self.grown |= self.buf.len() >= READ_SIZE / 2;
            self.buf.reserve(READ_SIZE);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }
}

impl H1Conn {
    pub fn new(io: Counted<UpstreamStream>) -> H1Conn {
        H1Conn::with_io(TokioIo::new(io))
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> H1Conn<T> {
    pub fn with_io(io: T) -> H1Conn<T> {
        H1Conn(Box::new(Conn {
            io,
            buf: BytesMut::with_capacity(READ_SIZE),
            heads: BytesMut::new(),
            out: Vec::new(),
            idle_since: 0,
            grown: false,
        }))
    }

    /// Whether nothing came on this idle connection: neither the upstream
    /// closing it nor stray bytes. If so, `watch` is woken when something
    /// does. Costs no system call as a rule: tokio knows from the last read
    /// (a short one) and the readiness epoll reported since.
    ///
    /// It reads into a byte on the stack, not into `buf`: the last frame
    /// of the response may still hold `buf`, which would then have to be
    /// allocated anew. A byte read means the connection is not reused.
    pub fn is_quiet(&mut self, watch: &Waker) -> bool {
        let mut cx = Context::from_waker(watch);
        let mut byte = [0u8; 1];
        let mut probe = tokio::io::ReadBuf::new(&mut byte);
        self.buf.is_empty()
            && Pin::new(&mut self.io)
                .poll_read(&mut cx, &mut probe)
                .is_pending()
    }

    /// Lets go of buffers a large exchange grew, before the connection
    /// idles.
    pub fn trim(&mut self) {
        if self.out.capacity() > KEEP_IDLE {
            self.out = Vec::new();
        }
        if std::mem::take(&mut self.grown) {
            self.buf = BytesMut::new();
        }
    }

    /// Sends `request` (origin form, `Host` set) and returns its response,
    /// whose body reads from this connection.
    pub fn send(mut self, request: Request<UpstreamBody>) -> Exchange<T> {
        let (parts, body) = request.into_parts();
        let ended = crate::proxy::ended(&body);
        let framing = framing(&parts.method, &parts.headers, &body, ended);
        self.out.clear();
        encode_head(&parts, framing, &mut self.out);
        // The request's header map, emptied, takes the response's headers:
        // no allocation, as hyper does.
        let mut headers = parts.headers;
        headers.clear();
        Exchange {
            conn: Some(self),
            headers,
            send: Sending {
                body: (!ended).then_some(body),
                framing,
                written: 0,
                flushed: true,
                failed: None,
                dropped: false,
            },
            head: parts.method == Method::HEAD,
        }
    }
}

/// How a request body is framed on the wire.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Out {
    /// No body, and no header saying so.
    None,
    /// `Content-Length`: this many bytes still to come.
    Length(u64),
    Chunked,
}

/// The request body's framing: its exact size if it knows it (or the
/// client's `Content-Length`), else chunked. An empty body is sent with
/// `Content-Length: 0` where the method usually has one.
fn framing(method: &Method, headers: &HeaderMap, body: &UpstreamBody, ended: bool) -> Out {
    if ended {
        let bodiless = matches!(
            *method,
            Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS | Method::TRACE
        );
        return if bodiless && !headers.contains_key(header::CONTENT_LENGTH) {
            Out::None
        } else {
            Out::Length(0)
        };
    }
    if let Some(n) = body.size_hint().exact() {
        return Out::Length(n);
    }
    match content_length(headers) {
        Ok(Some(n)) => Out::Length(n),
        _ => Out::Chunked,
    }
}

/// The request line and headers, with the framing's own header in place of
/// any the request had.
fn encode_head(parts: &http::request::Parts, framing: Out, out: &mut Vec<u8>) {
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        Out::None => {}
        Out::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa(n, &mut [0; 20]));
            out.extend_from_slice(b"\r\n");
        }
        Out::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

/// `n` in decimal, written at the end of `buf`.
pub(crate) fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[at..];
        }
    }
}

/// `n` in hexadecimal, written at the end of `buf`.
fn hex(mut n: usize, buf: &mut [u8; 16]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b"0123456789abcdef"[n % 16];
        n /= 16;
        if n == 0 {
            return &buf[at..];
        }
    }
}

/// One request on an [`H1Conn`]: writes it while watching for the answer,
/// which may come before the body has all been sent.
pub struct Exchange<T = Io> {
    /// `Some` until the response head is returned with it.
    conn: Option<H1Conn<T>>,
    /// An empty header map, for the response's.
    headers: HeaderMap,
    send: Sending,
    /// A `HEAD` request: its response has no body, whatever it says.
    head: bool,
}

/// The sending half of an exchange, driven by the exchange and then by the
/// response body.
struct Sending {
    /// The body still to send; `None` once it all went (or never will).
    body: Option<UpstreamBody>,
    framing: Out,
    /// How much of the connection's `out` has been written.
    written: usize,
    /// Whether what was written has been flushed (TLS buffers records).
    flushed: bool,
    /// Writing failed: the upstream may still have answered.
    failed: Option<io::Error>,
    /// The rest of the body was dropped: the upstream refused it.
    dropped: bool,
}

impl Sending {
    /// Nothing to send.
    fn done() -> Sending {
        Sending {
            body: None,
            framing: Out::None,
            written: 0,
            flushed: true,
            failed: None,
            dropped: false,
        }
    }

    /// Whether there is more to write or flush.
    fn is_pending(&self, out: &[u8]) -> bool {
        !self.dropped && (self.body.is_some() || self.written < out.len() || !self.flushed)
    }

    /// Whether the whole request went out.
    fn is_done(&self, out: &[u8]) -> bool {
        !self.dropped && self.failed.is_none() && !self.is_pending(out)
    }

    /// Writes what can be written, gathering body frames into one write
    /// while they come without waiting, and flushes. `Err` only for the
    /// body's own errors and a body longer or shorter than its length; a
    /// failed write stops the sending and is kept, since an answer may be
    /// on its way.
    fn poll<T: AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<T>,
        cx: &mut Context<'_>,
    ) -> Result<(), BoxError> {
        loop {
            let mut waiting = false;
            if let Some(body) = &mut self.body {
                while conn.out.len() < WRITE_BATCH {
                    match Pin::new(&mut *body).poll_frame(cx) {
                        Poll::Ready(Some(Ok(frame))) => {
                            encode_frame(frame, &mut self.framing, &mut conn.out)?;
                            if crate::proxy::ended(body) || self.framing == Out::Length(0) {
                                encode_end(self.framing, &mut conn.out)?;
                                self.body = None;
                                break;
                            }
                        }
                        Poll::Ready(None) => {
                            encode_end(self.framing, &mut conn.out)?;
                            self.body = None;
                            break;
                        }
                        Poll::Ready(Some(Err(e))) => return Err(e),
                        Poll::Pending => {
                            waiting = true;
                            break;
                        }
                    }
                }
            }
            while self.written < conn.out.len() {
                match Pin::new(&mut conn.io).poll_write(cx, &conn.out[self.written..]) {
                    Poll::Ready(Ok(n)) if n > 0 => {
                        self.written += n;
                        self.flushed = false;
                    }
                    Poll::Ready(Ok(_)) => {
                        self.fail(conn, io::ErrorKind::WriteZero.into());
                        return Ok(());
                    }
                    Poll::Ready(Err(e)) => {
                        self.fail(conn, e);
                        return Ok(());
                    }
                    Poll::Pending => return Ok(()),
                }
            }
            conn.out.clear();
            self.written = 0;
            if !self.flushed {
                match Pin::new(&mut conn.io).poll_flush(cx) {
                    Poll::Ready(Ok(())) => self.flushed = true,
                    Poll::Ready(Err(e)) => {
                        self.fail(conn, e);
                        return Ok(());
                    }
                    Poll::Pending => return Ok(()),
                }
            }
            if waiting || self.body.is_none() {
                return Ok(());
            }
        }
    }

    fn fail<T>(&mut self, conn: &mut Conn<T>, e: io::Error) {
        self.failed = Some(e);
        self.body = None;
        conn.out.clear();
        self.written = 0;
        self.flushed = true;
    }

    /// Gives up on what is left to send: the upstream answered that it
    /// does not want it.
    fn drop_rest(&mut self, out: &[u8]) {
        if self.is_pending(out) {
            self.body = None;
            self.dropped = true;
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> Future for Exchange<T> {
    type Output = Result<Response<H1Body<T>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let Some(conn) = this.conn.as_mut() else {
            return Poll::Ready(Err(H1Error::Incomplete.into())); // polled after its end
        };
        let conn = &mut *conn.0;
        if this.send.is_pending(&conn.out) {
            this.send.poll(conn, cx)?;
        }
        loop {
            match parse_head(&mut conn.buf, &mut conn.heads, &mut this.headers, this.head) {
                Ok(Some((head, framing, keep_alive))) => {
                    // RFC 9112, 9.3: an answer that refuses the body, or
                    // closes, ends the sending.
                    if head.status.as_u16() >= 300 || !keep_alive {
                        this.send.drop_rest(&conn.out);
                    }
                    // What is left to send goes with the body, boxed: as a
                    // rule nothing is.
                    let sending = this
                        .send
                        .is_pending(&conn.out)
                        .then(|| Box::new(std::mem::replace(&mut this.send, Sending::done())));
                    let body = H1Body {
                        sent: sending.is_none() && this.send.is_done(&conn.out),
                        conn: this.conn.take(),
                        framing,
                        keep_alive: keep_alive && framing != In::Close,
                        sending,
                    };
                    return Poll::Ready(Ok(Response::from_parts(head, body)));
                }
                Ok(None) => {}
                Err(e) => return Poll::Ready(Err(e.into())),
            }
            match ready!(conn.poll_fill(cx)) {
                Ok(0) => {
                    let e = match this.send.failed.take() {
                        Some(e) => H1Error::Io(e),
                        None => H1Error::Incomplete,
                    };
                    return Poll::Ready(Err(e.into()));
                }
                Ok(_) => {}
                Err(e) => return Poll::Ready(Err(H1Error::Io(e).into())),
            }
        }
    }
}

/// Appends one frame of the request body, framed.
pub(crate) fn encode_frame(
    frame: Frame<Bytes>,
    framing: &mut Out,
    out: &mut Vec<u8>,
) -> Result<(), BoxError> {
    let frame = match frame.into_data() {
        Ok(data) => {
            match framing {
                Out::Length(left) => {
                    let n = data.len() as u64;
                    if n > *left {
                        return Err(H1Error::BodyLength.into());
                    }
                    *left -= n;
                    out.extend_from_slice(&data);
                }
                Out::Chunked if !data.is_empty() => {
                    out.extend_from_slice(hex(data.len(), &mut [0; 16]));
                    out.extend_from_slice(b"\r\n");
                    out.extend_from_slice(&data);
                    out.extend_from_slice(b"\r\n");
                }
                Out::Chunked => {}
                Out::None => return Err(H1Error::BodyLength.into()),
            }
            return Ok(());
        }
        Err(frame) => frame,
    };
    // Trailers: only chunked framing carries them; they end the body.
    if let (Ok(trailers), Out::Chunked) = (frame.into_trailers(), *framing) {
        out.extend_from_slice(b"0\r\n");
        for (name, value) in &trailers {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        *framing = Out::None;
    }
    Ok(())
}

/// Appends the end of the request body.
pub(crate) fn encode_end(framing: Out, out: &mut Vec<u8>) -> Result<(), BoxError> {
    match framing {
        Out::Chunked => out.extend_from_slice(b"0\r\n\r\n"),
        Out::Length(0) | Out::None => {}
        Out::Length(_) => return Err(H1Error::BodyLength.into()),
    }
    Ok(())
}

/// How the response body is framed, and how much of it is left.
#[derive(Clone, Copy, Debug, PartialEq)]
enum In {
    /// This many bytes to come.
    Length(u64),
    Chunked(Chunk),
    /// Until the upstream closes the connection.
    Close,
    Done,
}

/// Where a chunked body is.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Chunk {
    /// A chunk-size line is next.
    Size,
    /// This many bytes of chunk data to come.
    Data(u64),
    /// The CRLF after chunk data.
    DataEnd,
    /// The trailer section (perhaps empty) after the last chunk.
    Trailers,
}

/// Parses a response head from the front of `buf`, skipping interim 1xx
/// answers: the head, the body's framing and whether the upstream will
/// keep the connection open. `None` while it is incomplete. The head is
/// copied into `heads`, and its headers go into `headers` (taken).
fn parse_head(
    buf: &mut BytesMut,
    heads: &mut BytesMut,
    headers: &mut HeaderMap,
    head_request: bool,
) -> Result<Option<(http::response::Parts, In, bool)>, H1Error> {
    loop {
        // Left uninitialised for httparse to fill: zeroing 100 fields
        // (3.2 KB) on each parse was half of this function's time.
        let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut response,
            buf,
            &mut fields,
        ) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
                return Err(H1Error::Malformed("response head too large"))
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(H1Error::Malformed("too many response headers"))
            }
            Err(_) => return Err(H1Error::Malformed("invalid response head")),
        };
        let code = response.code.unwrap_or(0);
        let status =
            StatusCode::from_u16(code).map_err(|_| H1Error::Malformed("invalid status code"))?;
        if status == StatusCode::SWITCHING_PROTOCOLS {
            // The proxy never asks for an upgrade.
            return Err(H1Error::Malformed("unrequested protocol switch"));
        }
        if status.is_informational() {
            buf.advance(len);
            continue;
        }
        // A reason phrase of the upstream's own is passed on, as hyper's
        // client and server do (an extension the server writes).
        let reason = response
            .reason
            .filter(|reason| !reason.is_empty() && Some(*reason) != status.canonical_reason())
            .and_then(|reason| hyper::ext::ReasonPhrase::try_from(reason.as_bytes()).ok());
        let version = if response.version == Some(0) {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        // One copy of the head; every value is a slice of it.
        let base = buf.as_ptr() as usize;
        let copy = if len <= HEADS_SIZE {
            if heads.capacity() < len {
                heads.reserve(HEADS_SIZE);
            }
            heads.extend_from_slice(&buf[..len]);
            heads.split().freeze()
        } else {
            // A long head has a copy of its own: `heads` stays small.
            Bytes::copy_from_slice(&buf[..len])
        };
        let mut headers = std::mem::take(headers);
        headers.reserve(response.headers.len());
        // What frames the body, read as the fields go by: no lookup after.
        let mut length = Ok(None);
        let mut has_length = false;
        let mut last_coding: Option<&[u8]> = None;
        let (mut close, mut keep_alive_asked) = (false, false);
        for field in response.headers.iter() {
            let name = HeaderName::from_bytes(field.name.as_bytes())
                .map_err(|_| H1Error::Malformed("invalid header name"))?;
            if name == header::CONTENT_LENGTH {
                has_length = true;
                length = length.and_then(|length| add_length(length, field.value));
            } else if name == header::TRANSFER_ENCODING {
                last_coding = field.value.rsplit(|&b| b == b',').next();
            } else if name == header::CONNECTION {
                for token in field.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                    close |= token.eq_ignore_ascii_case(b"close");
                    keep_alive_asked |= token.eq_ignore_ascii_case(b"keep-alive");
                }
            }
            // httparse's values point into `buf`; one that did not would
            // be copied.
            let value = match (field.value.as_ptr() as usize).checked_sub(base) {
                Some(at) if at + field.value.len() <= len => {
                    HeaderValue::from_maybe_shared(copy.slice(at..at + field.value.len()))
                }
                _ => HeaderValue::from_bytes(field.value),
            }
            .map_err(|_| H1Error::Malformed("invalid header value"))?;
            headers.append(name, value);
        }
        let chunked = last_coding.map(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        buf.advance(len);

        let mut keep_alive = match version {
            Version::HTTP_10 => keep_alive_asked,
            _ => !close,
        };
        let bodiless =
            head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
        let framing = if bodiless {
            In::Done
        } else if let Some(chunked) = chunked {
            if version == Version::HTTP_10 {
                return Err(H1Error::Malformed(
                    "Transfer-Encoding in an HTTP/1.0 response",
                ));
            }
            // With a Content-Length too, the Content-Length goes (it does
            // not frame what the client gets), and the connection is not
            // trusted again (RFC 9112, 6.1 and 6.3).
            if has_length {
                headers.remove(header::CONTENT_LENGTH);
                keep_alive = false;
            }
            if chunked {
                In::Chunked(Chunk::Size)
            } else {
                In::Close
            }
        } else {
            match length {
                Ok(Some(0)) => In::Done,
                Ok(Some(n)) => In::Length(n),
                Ok(None) => In::Close,
                Err(()) => return Err(H1Error::Malformed("invalid Content-Length")),
            }
        };
        let mut parts = Response::new(()).into_parts().0;
        parts.status = status;
        parts.version = version;
        parts.headers = headers;
        if let Some(reason) = reason {
            parts.extensions.insert(reason);
        }
        return Ok(Some((parts, framing, keep_alive)));
    }
}

/// The `Content-Length`: `Ok(None)` without one, `Err` unless every value
/// is the same number.
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, ()> {
    headers
        .get_all(header::CONTENT_LENGTH)
        .iter()
        .try_fold(None, |length, value| add_length(length, value.as_bytes()))
}

/// `length` so far, with one more `Content-Length` value (a list of equal
/// numbers is one number): `Err` for anything but digits, or a different
/// number.
pub(crate) fn add_length(mut length: Option<u64>, value: &[u8]) -> Result<Option<u64>, ()> {
    for part in value.split(|&b| b == b',') {
        let part = part.trim_ascii();
        if part.is_empty() {
            return Err(());
        }
        let n = part.iter().try_fold(0u64, |n, &b| {
            let digit = b.wrapping_sub(b'0');
            if digit > 9 {
                return None;
            }
            n.checked_mul(10)?.checked_add(u64::from(digit))
        });
        match n {
            Some(n) if length.is_none_or(|l| l == n) => length = Some(n),
            _ => return Err(()),
        }
    }
    Ok(length)
}

/// A response body, read from its connection as it is polled; the rest of
/// the request is sent meanwhile. Once both have ended cleanly,
/// [`H1Body::take_idle`] hands the connection back.
pub struct H1Body<T = Io> {
    conn: Option<H1Conn<T>>,
    framing: In,
    /// The upstream keeps the connection open after this response.
    keep_alive: bool,
    /// The rest of the request, while there is some to send.
    sending: Option<Box<Sending>>,
    /// The whole request went out.
    sent: bool,
}

impl<T> H1Body<T> {
    pub fn is_done(&self) -> bool {
        self.framing == In::Done
    }

    /// The connection, once the response has ended, if it can take another
    /// request: the request went whole too, and nothing is left unread.
    pub fn take_idle(&mut self) -> Option<H1Conn<T>> {
        let conn = self.conn.as_ref()?;
        let idle = self.is_done() && self.keep_alive && self.sent && conn.buf.is_empty();
        if idle {
            self.conn.take()
        } else {
            None
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> Body for H1Body<T> {
    type Data = Bytes;
    type Error = H1Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        let this = self.get_mut();
        let Some(conn) = this.conn.as_mut() else {
            return Poll::Ready(None);
        };
        let conn = &mut *conn.0;
        if let Some(sending) = this.sending.as_mut().filter(|_| this.framing != In::Done) {
            if let Err(e) = sending.poll(conn, cx) {
                this.sending = None;
                this.keep_alive = false;
                return Poll::Ready(Some(Err(H1Error::Upload(e))));
            }
            if !sending.is_pending(&conn.out) {
                this.sent = sending.is_done(&conn.out);
                this.sending = None;
            }
        }
        loop {
            match decode(&mut conn.buf, &mut this.framing) {
                Ok(Some(frame)) => return Poll::Ready(Some(Ok(frame))),
                Ok(None) if this.framing == In::Done => return Poll::Ready(None),
                Ok(None) => {}
                Err(e) => {
                    this.keep_alive = false;
                    return Poll::Ready(Some(Err(e)));
                }
            }
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if this.framing == In::Close => {
                    this.framing = In::Done;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    this.keep_alive = false;
                    return Poll::Ready(Some(Err(H1Error::Incomplete)));
                }
                Ok(_) => {}
                Err(e) => {
                    this.keep_alive = false;
                    return Poll::Ready(Some(Err(H1Error::Io(e))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            In::Length(n) => SizeHint::with_exact(n),
            In::Done => SizeHint::with_exact(0),
            In::Chunked(_) | In::Close => SizeHint::default(),
        }
    }
}

/// The next frame of a response body from what `buf` holds; `None` when
/// it needs more bytes, or when the body has ended (`framing` is then
/// `Done`).
fn decode(buf: &mut BytesMut, framing: &mut In) -> Result<Option<Frame<Bytes>>, H1Error> {
    loop {
        match framing {
            In::Done => return Ok(None),
            In::Length(left) => {
                if buf.is_empty() {
                    return Ok(None);
                }
                let n = (*left).min(buf.len() as u64);
                *left -= n;
                let data = take(buf, n as usize);
                if *left == 0 {
                    *framing = In::Done;
                }
                return Ok(Some(Frame::data(data)));
            }
            In::Close => {
                if buf.is_empty() {
                    return Ok(None);
                }
                let n = buf.len();
                return Ok(Some(Frame::data(take(buf, n))));
            }
            In::Chunked(chunk) => match *chunk {
                Chunk::Size => match chunk_size(buf)? {
                    Some((len, size)) => {
                        buf.advance(len);
                        *chunk = if size == 0 {
                            Chunk::Trailers
                        } else {
                            Chunk::Data(size)
                        };
                    }
                    None => return Ok(None),
                },
                Chunk::Data(left) => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let n = left.min(buf.len() as u64);
                    *chunk = if n == left {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(left - n)
                    };
                    return Ok(Some(Frame::data(take(buf, n as usize))));
                }
                Chunk::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(None);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(H1Error::Malformed("chunk data not followed by CRLF"));
                    }
                    buf.advance(2);
                    *chunk = Chunk::Size;
                }
                Chunk::Trailers => {
                    if buf.starts_with(b"\r\n") {
                        buf.advance(2);
                        *framing = In::Done;
                        return Ok(None);
                    }
                    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    match httparse::parse_headers(buf, &mut fields) {
                        Ok(httparse::Status::Complete((len, fields))) => {
                            let mut trailers = HeaderMap::with_capacity(fields.len());
                            for field in fields.iter() {
                                let name = HeaderName::from_bytes(field.name.as_bytes())
                                    .map_err(|_| H1Error::Malformed("invalid trailer name"))?;
                                let value = HeaderValue::from_bytes(field.value)
                                    .map_err(|_| H1Error::Malformed("invalid trailer value"))?;
                                trailers.append(name, value);
                            }
                            buf.advance(len);
                            *framing = In::Done;
                            return Ok(Some(Frame::trailers(trailers)));
                        }
                        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
                            return Err(H1Error::Malformed("trailers too large"))
                        }
                        Ok(httparse::Status::Partial) => return Ok(None),
                        Err(_) => return Err(H1Error::Malformed("invalid trailers")),
                    }
                }
            },
        }
    }
}

/// The longest chunk-size line, extensions included (hyper's limit).
const MAX_CHUNK_LINE: usize = 16 * 1024;

/// A chunk-size line at the front of `buf`: its length with the CRLF and
/// the size; `None` while it is incomplete. Hex digits (at most 16), then
/// nothing or an extension (`;`, after optional whitespace), then CRLF: an
/// empty line, a bare LF or anything else is an error.
fn chunk_size(buf: &[u8]) -> Result<Option<(usize, u64)>, H1Error> {
    let invalid = H1Error::Malformed("invalid chunk size line");
    let Some(end) = buf.iter().position(|&b| b == b'\r' || b == b'\n') else {
        return if buf.len() > MAX_CHUNK_LINE {
            Err(H1Error::Malformed("chunk size line too long"))
        } else {
            Ok(None)
        };
    };
    if buf[end] == b'\n' {
        return Err(invalid);
    }
    match buf.get(end + 1) {
        None => return Ok(None),
        Some(b'\n') => {}
        Some(_) => return Err(invalid),
    }
    let line = &buf[..end];
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err(invalid);
    }
    let rest = line[digits..].trim_ascii_start();
    if !rest.is_empty() && rest[0] != b';' {
        return Err(invalid);
    }
    let size = line[..digits].iter().fold(0u64, |size, &d| {
        // At most 16 hex digits: no overflow.
        (size << 4) | u64::from((d as char).to_digit(16).unwrap_or(0))
    });
    Ok(Some((end + 2, size)))
}

/// The first `n` bytes of `buf`, without a copy.
fn take(buf: &mut BytesMut, n: usize) -> Bytes {
    buf.split_to(n).freeze()
}

/// What the upstream response reader made of some bytes, for the fuzz
/// target (`fuzz/fuzz_targets/upstream.rs`): the status, the body's length
/// and whether the connection would be reused; or why the response was
/// refused. The bytes are fed `step` at a time, as reads would bring them.
#[doc(hidden)]
pub fn read_response(
    data: &[u8],
    head_request: bool,
    step: usize,
) -> Result<(u16, u64, bool), String> {
    let step = step.max(1);
    let mut buf = BytesMut::new();
    let mut fed = 0;
    let mut feed = |buf: &mut BytesMut| {
        let next = (fed + step).min(data.len());
        buf.extend_from_slice(&data[fed..next]);
        let more = next > fed;
        fed = next;
        more
    };
    let (mut heads, mut headers) = (BytesMut::new(), HeaderMap::new());
    let (head, mut framing, keep_alive) = loop {
        match parse_head(&mut buf, &mut heads, &mut headers, head_request) {
            Ok(Some(parsed)) => break parsed,
            Ok(None) if !feed(&mut buf) => return Err("incomplete head".into()),
            Ok(None) => {}
            Err(e) => return Err(e.to_string()),
        }
    };
    let declared = match framing {
        In::Length(n) => Some(n),
        _ => None,
    };
    let mut length = 0u64;
    loop {
        match decode(&mut buf, &mut framing) {
            Ok(Some(frame)) => {
                if let Some(data) = frame.data_ref() {
                    length += data.len() as u64;
                }
            }
            Ok(None) if framing == In::Done => break,
            Ok(None) if !feed(&mut buf) => {
                if framing == In::Close {
                    break;
                }
                return Err("incomplete body".into());
            }
            Ok(None) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    if let Some(n) = declared {
        assert_eq!(length, n, "a Content-Length body of another length");
    }
    assert!(length <= data.len() as u64, "more body than bytes");
    Ok((head.status.as_u16(), length, keep_alive && buf.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(
        buf: &mut BytesMut,
        head_request: bool,
    ) -> Result<Option<(http::response::Parts, In, bool)>, H1Error> {
        parse_head(
            buf,
            &mut BytesMut::new(),
            &mut HeaderMap::new(),
            head_request,
        )
    }

    fn head(raw: &str) -> Result<Option<(http::response::Parts, In, bool)>, H1Error> {
        parse(&mut BytesMut::from(raw), false)
    }

    /// The body `raw` decodes to with `framing`, fed `step` bytes at a
    /// time: its data, its trailers and what was left unread.
    fn body(raw: &[u8], mut framing: In, step: usize) -> (Vec<u8>, Option<HeaderMap>, usize) {
        let mut buf = BytesMut::new();
        let (mut data, mut trailers) = (Vec::new(), None);
        let mut fed = 0;
        loop {
            while let Some(frame) = decode(&mut buf, &mut framing).unwrap() {
                match frame.into_data() {
                    Ok(d) => data.extend_from_slice(&d),
                    Err(f) => trailers = f.into_trailers().ok(),
                }
            }
            if framing == In::Done || fed == raw.len() {
                return (data, trailers, buf.len() + raw.len() - fed);
            }
            let next = (fed + step).min(raw.len());
            buf.extend_from_slice(&raw[fed..next]);
            fed = next;
        }
    }

    #[test]
    fn a_content_length_body_is_framed_by_it() {
        let (parts, framing, keep) = head("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(parts.status, StatusCode::OK);
        assert_eq!(framing, In::Length(5));
        assert!(keep);
        for step in [1, 2, 7] {
            let (data, _, left) = body(b"helloEXTRA", In::Length(5), step);
            assert_eq!(data, b"hello");
            assert_eq!(left, 5, "the bytes after the body are not the body's");
        }
    }

    #[test]
    fn a_chunked_body_decodes_whatever_the_reads_split_it_into() {
        let raw = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: 42\r\n\r\nNEXT";
        for step in 1..=raw.len() {
            let (data, trailers, left) = body(raw, In::Chunked(Chunk::Size), step);
            assert_eq!(data, b"hello world", "step {step}");
            assert_eq!(trailers.unwrap()["x-checksum"], "42", "step {step}");
            assert_eq!(left, 4, "step {step}");
        }
        let (data, trailers, left) = body(b"3\r\nabc\r\n0\r\n\r\n", In::Chunked(Chunk::Size), 1);
        assert_eq!((data.as_slice(), trailers, left), (&b"abc"[..], None, 0));
    }

    #[test]
    fn chunk_size_lines_are_read_as_strictly_as_hyper_reads_them() {
        assert_eq!(chunk_size(b"1f\r\nx").unwrap(), Some((4, 31)));
        assert_eq!(chunk_size(b"5 ;name=\"v\"\r\n").unwrap(), Some((13, 5)));
        assert_eq!(
            chunk_size(b"ffffffffffffffff\r\n").unwrap(),
            Some((18, u64::MAX))
        );
        assert_eq!(chunk_size(b"5;ext").unwrap(), None, "incomplete");
        assert_eq!(chunk_size(b"5\r").unwrap(), None, "incomplete");
        for bad in [
            &b"\r\n"[..],
            b"5\n",
            b"5\rx",
            b"5x\r\n",
            b";ext\r\n",
            b"-1\r\n",
            b"10000000000000000\r\n",
        ] {
            assert!(
                chunk_size(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(chunk_size(&[b'1'; MAX_CHUNK_LINE + 1]).is_err(), "endless");
    }

    #[test]
    fn malformed_chunking_is_an_error() {
        for raw in [
            &b"zz\r\n"[..],
            b"3\r\nabcXY",
            b"3\r\nabc\r\n0\r\n\x01bad\r\n\r\n",
            b"5\r\nhello\r\n\r\n\r\n",
        ] {
            let mut buf = BytesMut::from(raw);
            let mut framing = In::Chunked(Chunk::Size);
            let result = (0..8).try_for_each(|_| decode(&mut buf, &mut framing).map(drop));
            assert!(result.is_err(), "{:?}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let framing = |raw: &str, head_request: bool| {
            let (_, framing, keep) = parse(&mut BytesMut::from(raw), head_request)
                .unwrap()
                .unwrap();
            (framing, keep)
        };
        let chunked = In::Chunked(Chunk::Size);
        assert_eq!(
            framing(
                "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
                false
            ),
            (chunked, true)
        );
        let (parts, both, keep) =
            head("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n")
                .unwrap()
                .unwrap();
        assert_eq!((both, keep), (chunked, false), "both: chunked, not reused");
        assert!(
            !parts.headers.contains_key("content-length"),
            "nor passed on"
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n", false).0,
            In::Close
        );
        assert_eq!(framing("HTTP/1.1 200 OK\r\n\r\n", false).0, In::Close);
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n", true).0,
            In::Done,
            "HEAD"
        );
        assert_eq!(
            framing("HTTP/1.1 204 No Content\r\n\r\n", false),
            (In::Done, true)
        );
        assert_eq!(
            framing(
                "HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n",
                false
            )
            .0,
            In::Done
        );
        assert_eq!(
            framing(
                "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\n",
                false
            ),
            (In::Length(1), false)
        );
        assert_eq!(
            framing("HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n", false),
            (In::Length(1), false)
        );
        assert_eq!(
            framing(
                "HTTP/1.0 200 OK\r\nconnection: Keep-Alive\r\ncontent-length: 1\r\n\r\n",
                false
            ),
            (In::Length(1), true)
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ncontent-length: 4, 4\r\n\r\n", false).0,
            In::Length(4)
        );
    }

    #[test]
    fn interim_answers_are_skipped_and_a_partial_head_waits() {
        let mut buf = BytesMut::from(&b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nx-a: 1\r\nx-a: 2\r\ncontent-length: 0\r\n\r\n"[..]);
        let (parts, framing, _) = parse(&mut buf, false).unwrap().unwrap();
        assert_eq!(parts.status, StatusCode::CREATED);
        let values: Vec<_> = parts.headers.get_all("x-a").iter().collect();
        assert_eq!(values, ["1", "2"]);
        assert_eq!(framing, In::Done);
        assert!(buf.is_empty());
        assert!(head("HTTP/1.1 200 OK\r\ncontent-len").unwrap().is_none());
    }

    #[test]
    fn malformed_heads_are_errors() {
        for raw in [
            "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: +3\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 3, 4\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 18446744073709551616\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
            "HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "SSH-2.0-OpenSSH\r\n\r\n",
        ] {
            assert!(head(raw).is_err(), "{raw:?}");
        }
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: v\r\n")).collect();
        assert!(head(&format!("HTTP/1.1 200 OK\r\n{many}\r\n")).is_err());
        let long = format!("HTTP/1.1 200 OK\r\nx: {}", "v".repeat(MAX_HEAD));
        assert!(head(&long).is_err(), "an endless head");
    }

    #[test]
    fn the_request_head_carries_its_framing_only() {
        let request = Request::post("/v2/models/iris/infer?x=1")
            .header("host", "10.0.0.1:8000")
            .header("content-length", "999")
            .header("transfer-encoding", "chunked")
            .header("x-request-id", "abc")
            .body(())
            .unwrap();
        let (parts, ()) = request.into_parts();
        let mut out = Vec::new();
        encode_head(&parts, Out::Length(12), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /v2/models/iris/infer?x=1 HTTP/1.1\r\nhost: 10.0.0.1:8000\r\nx-request-id: abc\r\ncontent-length: 12\r\n\r\n"
        );
        let mut out = Vec::new();
        encode_head(&parts, Out::Chunked, &mut out);
        assert!(String::from_utf8(out)
            .unwrap()
            .ends_with("x-request-id: abc\r\ntransfer-encoding: chunked\r\n\r\n"));
    }

    #[test]
    fn a_chunked_request_body_ends_with_its_trailers() {
        let mut framing = Out::Chunked;
        let mut out = Vec::new();
        encode_frame(
            Frame::data(Bytes::from_static(b"hello")),
            &mut framing,
            &mut out,
        )
        .unwrap();
        encode_frame(Frame::data(Bytes::new()), &mut framing, &mut out).unwrap();
        let mut trailers = HeaderMap::new();
        trailers.insert("x-sum", HeaderValue::from_static("7"));
        encode_frame(Frame::trailers(trailers), &mut framing, &mut out).unwrap();
        encode_end(framing, &mut out).unwrap();
        assert_eq!(out, b"5\r\nhello\r\n0\r\nx-sum: 7\r\n\r\n");

        let mut framing = Out::Length(3);
        let mut out = Vec::new();
        let long = encode_frame(
            Frame::data(Bytes::from_static(b"four")),
            &mut framing,
            &mut out,
        );
        assert!(long.is_err(), "more than Content-Length");
        assert!(encode_end(Out::Length(1), &mut out).is_err(), "less");
    }

    #[test]
    fn numbers_are_written_in_decimal_and_hex() {
        for n in [0, 7, 10, 120, u64::MAX] {
            assert_eq!(itoa(n, &mut [0; 20]), n.to_string().as_bytes());
        }
        for n in [0, 9, 10, 255, 4096, usize::MAX] {
            assert_eq!(hex(n, &mut [0; 16]), format!("{n:x}").as_bytes());
        }
    }

    use http_body_util::{BodyExt, Either, Full};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    /// A proxy-side connection and the upstream's end of it, whose buffer
    /// holds `room` bytes.
    fn pair(room: usize) -> (H1Conn<DuplexStream>, DuplexStream) {
        let (ours, theirs) = tokio::io::duplex(room);
        (H1Conn::with_io(ours), theirs)
    }

    fn post(body: &'static [u8]) -> Request<UpstreamBody> {
        Request::post("/infer")
            .header("host", "up")
            .body(Either::Right(Full::new(Bytes::from_static(body))))
            .unwrap()
    }

    /// Reads from the upstream's end until `n` bytes came.
    async fn read_n(theirs: &mut DuplexStream, n: usize) -> Vec<u8> {
        let mut got = vec![0; n];
        theirs.read_exact(&mut got).await.unwrap();
        got
    }

    async fn within<F: Future>(what: &str, f: F) -> F::Output {
        tokio::time::timeout(std::time::Duration::from_secs(10), f)
            .await
            .unwrap_or_else(|_| panic!("timed out: {what}"))
    }

    #[tokio::test]
    async fn an_exchange_writes_the_request_reads_the_response_and_frees_the_connection() {
        let (conn, mut theirs) = pair(64 * 1024);
        let upstream = tokio::spawn(async move {
            let expect = b"POST /infer HTTP/1.1\r\nhost: up\r\ncontent-length: 4\r\n\r\nping";
            assert_eq!(read_n(&mut theirs, expect.len()).await, expect);
            theirs
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\npong")
                .await
                .unwrap();
            theirs
        });
        let response = within("the response", conn.send(post(b"ping")))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let mut body = response.into_body();
        let mut got = Vec::new();
        while let Some(frame) = within("the body", body.frame()).await {
            got.extend_from_slice(&frame.unwrap().into_data().unwrap());
        }
        assert_eq!(got, b"pong");
        assert!(
            body.take_idle().is_some(),
            "clean: the connection is reusable"
        );
        drop(upstream.await.unwrap());
    }

    /// An upstream that answers 413 after the head, without reading the
    /// body, which fills the socket: the rest is not sent, and the
    /// connection, which still owes the upstream most of a body, is never
    /// reused.
    #[tokio::test]
    async fn a_body_refused_early_is_dropped_and_its_connection_not_reused() {
        static BIG: [u8; 256 * 1024] = [b'x'; 256 * 1024];
        let (conn, mut theirs) = pair(4096);
        let upstream = tokio::spawn(async move {
            read_n(&mut theirs, 16).await;
            theirs
                .write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
            theirs
        });
        let response = within("the 413", conn.send(post(&BIG))).await.unwrap();
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let mut body = response.into_body();
        assert!(body.is_done());
        assert!(
            body.take_idle().is_none(),
            "most of the body was never sent"
        );
        drop(upstream.await.unwrap());
    }

    /// An upstream that answers 200 at once and only then reads the body,
    /// which is larger than the socket holds: the body goes on being sent
    /// while the response is read, and then the connection is reusable.
    #[tokio::test]
    async fn a_body_answered_early_with_success_is_still_sent_whole() {
        static BIG: [u8; 256 * 1024] = [b'y'; 256 * 1024];
        let (conn, mut theirs) = pair(4096);
        let upstream = tokio::spawn(async move {
            let head = b"POST /infer HTTP/1.1\r\nhost: up\r\ncontent-length: 262144\r\n\r\n";
            read_n(&mut theirs, head.len()).await;
            theirs
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n")
                .await
                .unwrap();
            let body = read_n(&mut theirs, BIG.len()).await;
            assert!(body.iter().all(|&b| b == b'y'));
            theirs.write_all(b"done").await.unwrap();
            theirs
        });
        let response = within("the early 200", conn.send(post(&BIG)))
            .await
            .unwrap();
        let mut body = response.into_body();
        let got = within("the body", (&mut body).collect())
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(&got[..], b"done");
        assert!(
            body.take_idle().is_some(),
            "request and response went whole"
        );
        drop(upstream.await.unwrap());
    }

    /// A transport that, like TLS, keeps what is written until flushed.
    struct Buffering {
        inner: DuplexStream,
        held: Vec<u8>,
    }

    impl AsyncRead for Buffering {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Buffering {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.held.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            let this = &mut *self;
            while !this.held.is_empty() {
                let n = ready!(Pin::new(&mut this.inner).poll_write(cx, &this.held))?;
                this.held.drain(..n);
            }
            Pin::new(&mut this.inner).poll_flush(cx)
        }

        fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.poll_flush(cx)
        }
    }

    #[tokio::test]
    async fn what_is_written_is_flushed() {
        let (ours, mut theirs) = tokio::io::duplex(64 * 1024);
        let conn = H1Conn::with_io(Buffering {
            inner: ours,
            held: Vec::new(),
        });
        let upstream = tokio::spawn(async move {
            let expect = b"POST /infer HTTP/1.1\r\nhost: up\r\ncontent-length: 4\r\n\r\nping";
            assert_eq!(read_n(&mut theirs, expect.len()).await, expect);
            theirs
                .write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                .await
                .unwrap();
            theirs
        });
        let response = within("the response", conn.send(post(b"ping")))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        drop(upstream.await.unwrap());
    }

    #[tokio::test]
    async fn a_response_cut_short_is_an_error_and_frees_nothing() {
        let (conn, mut theirs) = pair(64 * 1024);
        let request = Request::get("/")
            .body(Either::Right(Full::new(Bytes::new())))
            .unwrap();
        let upstream = tokio::spawn(async move {
            read_n(&mut theirs, 18).await;
            theirs
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nonly")
                .await
                .unwrap();
            // Closed: 6 bytes short.
        });
        let response = within("the head", conn.send(request)).await.unwrap();
        upstream.await.unwrap();
        let mut body = response.into_body();
        let first = within("data", body.frame()).await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "only");
        let end = within("the end", body.frame()).await.unwrap();
        assert!(matches!(end, Err(H1Error::Incomplete)), "{end:?}");
        assert!(body.take_idle().is_none());
    }

    /// Reads one request head (no body) from the upstream's end.
    async fn read_head(theirs: &mut DuplexStream) -> String {
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(theirs.read_u8().await.unwrap());
        }
        String::from_utf8(head).unwrap()
    }

    /// Two exchanges on one connection, the first response's header values
    /// and body still held while the second is read: its bytes must not
    /// change, though the second needs more room than the buffers have
    /// left; nor may the request's headers show in the response's, whose
    /// header map was the request's.
    #[tokio::test]
    async fn a_reused_connection_leaves_the_last_responses_bytes_intact() {
        let (conn, mut theirs) = pair(64 * 1024);
        let long = "v".repeat(1500);
        let answers = [
            format!(
                "HTTP/1.1 200 OK\r\nx-res: first\r\ncontent-length: 5000\r\n\r\n{}",
                "a".repeat(5000)
            ),
            format!(
                "HTTP/1.1 200 OK\r\nx-long: {long}\r\ncontent-length: 6000\r\n\r\n{}",
                "b".repeat(6000)
            ),
        ];
        let upstream = tokio::spawn(async move {
            for answer in answers {
                read_head(&mut theirs).await;
                theirs.write_all(answer.as_bytes()).await.unwrap();
            }
            theirs
        });
        let get = |n: &str| {
            Request::get("/")
                .header("host", "up")
                .header("x-req", n)
                .body(Either::Right(Full::new(Bytes::new())))
                .unwrap()
        };
        let (first, body) = within("the first", conn.send(get("1")))
            .await
            .unwrap()
            .into_parts();
        let mut body = body;
        let mut kept = Vec::new();
        while let Some(frame) = within("the first body", body.frame()).await {
            kept.push(frame.unwrap().into_data().unwrap());
        }
        let conn = body.take_idle().expect("reusable");
        let (second, mut body) = within("the second", conn.send(get("2")))
            .await
            .unwrap()
            .into_parts();
        let got = within("the second body", (&mut body).collect())
            .await
            .unwrap()
            .to_bytes();

        assert_eq!(first.headers["x-res"], "first");
        assert_eq!(kept.concat(), "a".repeat(5000).as_bytes());
        assert_eq!(second.headers["x-long"], long.as_str());
        assert!(!second.headers.contains_key("x-req") && !second.headers.contains_key("host"));
        assert!(!first.headers.contains_key("x-req"));
        assert_eq!(&got[..], "b".repeat(6000).as_bytes());
        assert!(body.take_idle().is_some());
        drop(upstream.await.unwrap());
    }
}
