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
//!   is returned at once; the rest of the upload is dropped, and the
//!   connection closes after the response instead of going back idle.
//! - Response bodies are framed as RFC 9112 says: none for `HEAD`, 1xx, 204
//!   and 304; `Transfer-Encoding: chunked` (trailers become a trailers
//!   frame); `Content-Length`; else until the upstream closes. Interim 1xx
//!   answers are skipped. A connection is reused only when its response
//!   ended cleanly, said nothing of closing, and left nothing unread.
//! - Heads are bounded: 64 KiB, 100 headers.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version};
use hyper::body::{Body, Frame, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWrite;

use super::connector::{Counted, UpstreamStream};
use super::UpstreamBody;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The longest response head (or trailer section) read.
const MAX_HEAD: usize = 64 * 1024;
/// The most header fields in a response head.
const MAX_HEADERS: usize = 100;
/// Room reserved for each read: one read takes a whole small answer.
const READ_SIZE: usize = 8 * 1024;
/// Body data up to this size is copied out of the read buffer, which stays
/// the connection's own; longer runs are handed out without a copy, and
/// the next read then needs a new buffer.
const COPY_BELOW: usize = 4 * 1024;
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
}

pub type Io = TokioIo<Counted<UpstreamStream>>;

/// An HTTP/1.1 connection to an upstream.
pub struct H1Conn {
    /// Boxed: with rustls' state it is over a kilobyte, and a connection
    /// moves several times on every request (idle stack, exchange, body).
    io: Box<Io>,
    /// What has been read and not yet parsed; empty between exchanges.
    buf: BytesMut,
    /// What is being written.
    out: Vec<u8>,
    /// When it went idle (`client::now_ms`).
    pub(super) idle_since: u64,
}

impl H1Conn {
    pub fn new(io: Counted<UpstreamStream>) -> H1Conn {
        H1Conn {
            io: Box::new(TokioIo::new(io)),
            buf: BytesMut::with_capacity(READ_SIZE),
            out: Vec::new(),
            idle_since: 0,
        }
    }

    /// Whether nothing came on this idle connection: neither the upstream
    /// closing it nor stray bytes. If so, `watch` is woken when something
    /// does. Costs no system call as a rule: tokio knows from the last read
    /// (a short one) and the readiness epoll reported since.
    pub fn is_quiet(&mut self, watch: &Waker) -> bool {
        let mut cx = Context::from_waker(watch);
        self.buf.is_empty() && self.poll_fill(&mut cx).is_pending()
    }

    /// Reads what the socket has into `buf`; `Ok(0)` at its end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_SIZE / 2 {
            self.buf.reserve(READ_SIZE);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut *self.io), cx, &mut self.buf)
    }

    /// Sends `request` (origin form, `Host` set) and returns its response,
    /// whose body reads from this connection.
    pub fn send(mut self, request: Request<UpstreamBody>) -> Exchange {
        let (parts, body) = request.into_parts();
        let ended = crate::proxy::ended(&body);
        let framing = framing(&parts.method, &parts.headers, &body, ended);
        self.out.clear();
        encode_head(&parts, framing, &mut self.out);
        Exchange {
            conn: Some(self),
            send: Sending {
                body: (!ended).then_some(body),
                framing,
                written: 0,
                failed: None,
            },
            head: parts.method == Method::HEAD,
        }
    }
}

/// How a request body is framed on the wire.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Out {
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
fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
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
pub struct Exchange {
    /// `Some` until the response head is returned with it.
    conn: Option<H1Conn>,
    send: Sending,
    /// A `HEAD` request: its response has no body, whatever it says.
    head: bool,
}

/// The sending half of an exchange.
struct Sending {
    /// The body still to send; `None` once it all went (or never will).
    body: Option<UpstreamBody>,
    framing: Out,
    /// How much of the connection's `out` has been written.
    written: usize,
    /// Writing failed: the upstream may still have answered.
    failed: Option<io::Error>,
}

impl Sending {
    fn is_pending(&self, conn: &H1Conn) -> bool {
        self.body.is_some() || self.written < conn.out.len()
    }

    /// Writes what can be written, gathering body frames into one write
    /// while they come without waiting. `Err` only for the body's own
    /// errors and a body longer or shorter than its length; a failed
    /// write stops the sending and is kept, since an answer may be on its
    /// way.
    fn poll(&mut self, conn: &mut H1Conn, cx: &mut Context<'_>) -> Result<(), BoxError> {
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
                match Pin::new(&mut *conn.io).poll_write(cx, &conn.out[self.written..]) {
                    Poll::Ready(Ok(n)) if n > 0 => self.written += n,
                    Poll::Ready(Ok(_)) => {
                        self.fail(io::ErrorKind::WriteZero.into());
                        return Ok(());
                    }
                    Poll::Ready(Err(e)) => {
                        self.fail(e);
                        return Ok(());
                    }
                    Poll::Pending => return Ok(()),
                }
            }
            conn.out.clear();
            self.written = 0;
            if waiting || self.body.is_none() {
                return Ok(());
            }
        }
    }

    fn fail(&mut self, e: io::Error) {
        self.failed = Some(e);
        self.body = None;
    }

    /// Whether the whole request went out.
    fn is_done(&self) -> bool {
        self.body.is_none() && self.failed.is_none() && self.written == 0
    }
}

impl Future for Exchange {
    type Output = Result<Response<H1Body>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let Some(conn) = this.conn.as_mut() else {
            return Poll::Pending; // polled after it was ready
        };
        if this.send.is_pending(conn) {
            this.send.poll(conn, cx)?;
        }
        loop {
            match parse_head(&mut conn.buf, this.head) {
                Ok(Some((head, framing, keep_alive))) => {
                    let sent = this.send.is_done();
                    // Whatever of the body is left is not sent.
                    this.send.body = None;
                    let conn = this.conn.take();
                    let reusable = keep_alive && sent && framing != In::Close;
                    return Poll::Ready(Ok(Response::from_parts(
                        head,
                        H1Body::new(conn, framing, reusable),
                    )));
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
fn encode_frame(frame: Frame<Bytes>, framing: &mut Out, out: &mut Vec<u8>) -> Result<(), BoxError> {
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
fn encode_end(framing: Out, out: &mut Vec<u8>) -> Result<(), BoxError> {
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
/// keep the connection open. `None` while it is incomplete.
fn parse_head(
    buf: &mut BytesMut,
    head_request: bool,
) -> Result<Option<(http::response::Parts, In, bool)>, H1Error> {
    loop {
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut fields);
        let len = match response.parse(buf) {
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
        let version = if response.version == Some(0) {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        // One copy of the head; every value is a slice of it.
        let base = buf.as_ptr() as usize;
        let copy = Bytes::copy_from_slice(&buf[..len]);
        let mut headers = HeaderMap::with_capacity(response.headers.len());
        for field in response.headers.iter() {
            let name = HeaderName::from_bytes(field.name.as_bytes())
                .map_err(|_| H1Error::Malformed("invalid header name"))?;
            let at = field.value.as_ptr() as usize - base;
            let value = HeaderValue::from_maybe_shared(copy.slice(at..at + field.value.len()))
                .map_err(|_| H1Error::Malformed("invalid header value"))?;
            headers.append(name, value);
        }
        buf.advance(len);

        let mut keep_alive = match version {
            Version::HTTP_10 => connection_has(&headers, "keep-alive"),
            _ => !connection_has(&headers, "close"),
        };
        let bodiless =
            head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
        let framing = if bodiless {
            In::Done
        } else if headers.contains_key(header::TRANSFER_ENCODING) {
            // With a Content-Length too, the connection is not trusted
            // again (RFC 9112, 6.1).
            keep_alive &= !headers.contains_key(header::CONTENT_LENGTH);
            if version == Version::HTTP_11 && ends_chunked(&headers) {
                In::Chunked(Chunk::Size)
            } else {
                In::Close
            }
        } else {
            match content_length(&headers) {
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
        return Ok(Some((parts, framing, keep_alive)));
    }
}

/// The `Content-Length`: `Ok(None)` without one, `Err` unless every value
/// is the same number.
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, ()> {
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for part in value.as_bytes().split(|&b| b == b',') {
            let part = part.trim_ascii();
            if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
                return Err(());
            }
            let n = std::str::from_utf8(part)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or(())?;
            if length.is_some_and(|l| l != n) {
                return Err(());
            }
            length = Some(n);
        }
    }
    Ok(length)
}

/// Whether the last transfer coding is `chunked`.
fn ends_chunked(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .next_back()
        .and_then(|v| v.as_bytes().rsplit(|&b| b == b',').next())
        .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// Whether a `Connection` header lists `token`.
fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers.get_all(header::CONNECTION).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// A response body, read from its connection as it is polled. Once it has
/// ended cleanly, [`H1Body::take_idle`] hands the connection back.
pub struct H1Body {
    conn: Option<H1Conn>,
    framing: In,
    reusable: bool,
}

impl H1Body {
    fn new(conn: Option<H1Conn>, framing: In, reusable: bool) -> H1Body {
        H1Body {
            conn,
            framing,
            reusable,
        }
    }

    pub fn is_done(&self) -> bool {
        self.framing == In::Done
    }

    /// The connection, once the body has ended, if it can take another
    /// request.
    pub fn take_idle(&mut self) -> Option<H1Conn> {
        if !self.is_done() || !self.reusable {
            return None;
        }
        let conn = self.conn.take()?;
        conn.buf.is_empty().then_some(conn)
    }
}

impl Body for H1Body {
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
        loop {
            match decode(&mut conn.buf, &mut this.framing) {
                Ok(Some(frame)) => return Poll::Ready(Some(Ok(frame))),
                Ok(None) if this.framing == In::Done => return Poll::Ready(None),
                Ok(None) => {}
                Err(e) => {
                    this.reusable = false;
                    return Poll::Ready(Some(Err(e)));
                }
            }
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if this.framing == In::Close => {
                    this.framing = In::Done;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    this.reusable = false;
                    return Poll::Ready(Some(Err(H1Error::Incomplete)));
                }
                Ok(_) => {}
                Err(e) => {
                    this.reusable = false;
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
                Chunk::Size => match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((len, 0))) => {
                        buf.advance(len);
                        *chunk = Chunk::Trailers;
                    }
                    Ok(httparse::Status::Complete((len, size))) => {
                        buf.advance(len);
                        *chunk = Chunk::Data(size);
                    }
                    Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
                        return Err(H1Error::Malformed("chunk size line too long"))
                    }
                    Ok(httparse::Status::Partial) => return Ok(None),
                    Err(_) => return Err(H1Error::Malformed("invalid chunk size")),
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

/// The first `n` bytes of `buf`: copied when short, so the buffer stays
/// the connection's own for the next read; handed out as they are when
/// long.
fn take(buf: &mut BytesMut, n: usize) -> Bytes {
    if n < COPY_BELOW {
        let data = Bytes::copy_from_slice(&buf[..n]);
        buf.advance(n);
        data
    } else {
        buf.split_to(n).freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> Result<Option<(http::response::Parts, In, bool)>, H1Error> {
        parse_head(&mut BytesMut::from(raw), false)
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
    fn malformed_chunking_is_an_error() {
        for raw in [
            &b"zz\r\n"[..],
            b"3\r\nabcXY",
            b"3\r\nabc\r\n0\r\n\x01bad\r\n\r\n",
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
            let (_, framing, keep) = parse_head(&mut BytesMut::from(raw), head_request)
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
        assert_eq!(
            framing(
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n",
                false
            ),
            (chunked, false),
            "both: chunked, and the connection is not reused"
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
        let (parts, framing, _) = parse_head(&mut buf, false).unwrap().unwrap();
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
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
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
}
