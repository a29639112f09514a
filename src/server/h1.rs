//! Plain HTTP/1.1 requests, served without hyper's connection.
//!
//! Most requests to a model server are plain: HTTP/1.1, an origin-form
//! target, no body or one of `Content-Length` bytes that came in with the
//! head, and no `Expect`, `Upgrade` or `Transfer-Encoding`. This module
//! serves those itself, through the gate like hyper: it parses the head with
//! httparse (as hyper does, with hyper's limits), hands the service a
//! request whose body is the bytes already read, and writes the response
//! head and body to the gate, in one write when the body is ready with its
//! head (as hyper does with `writev(false)`).
//!
//! Every other request, and anything it cannot parse, goes to hyper: its
//! bytes are given back to the gate, unanswered, and hyper's connection
//! serves it, and the connection, until it is parked or ends. hyper answers
//! what is malformed, so the two never disagree on what is refused. The
//! gate follows the same bytes either way, and answers 408, refuses
//! ambiguous framing and times the keep-alive as before.
//!
//! Responses are framed as hyper frames them: the body's exact size, or
//! its `Content-Length`, else chunked; none for `HEAD`, 204 and 304; a
//! `date` unless the response has one; `connection: close` when the
//! connection ends after it (the client asked, or the listener drains).
//! Trailers go out only to a client that said `TE: trailers`, and only
//! those the response names in its `Trailer` header (hyper's rule).

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::{pin, Pin};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame};
use hyper::service::Service;
use tokio::io::AsyncWriteExt;

use super::gate::{Activity, Gate, Transport};
use super::signal::Fired;
use super::{ConnBody, ConnService, RequestBody, Shared, Tracked};
use crate::pool::h1::{add_length, encode_end, encode_frame, itoa, Out};

/// Header fields parsed without hyper at most; a head with more (up to the
/// listener's `max_headers`) goes to hyper.
const MAX_FIELDS: usize = 100;

/// Headers a request may gain on its way through (the proxy's
/// `X-Forwarded-*` and `X-Request-Id`), room kept for in its map.
const ADDED_HEADERS: usize = 6;

/// A read asks for at least this much room.
const READ_SIZE: usize = 8 * 1024;

/// Request heads (and the bodies that came with them) are copied into a
/// buffer of this size, reused while no request still holds its part.
const HEADS_SIZE: usize = 4 * 1024;

/// Response bytes gathered before they are written, when the body has more
/// ready.
const WRITE_BATCH: usize = 64 * 1024;

/// How the plain path ended.
pub(super) enum Outcome {
    /// Idle for the park delay with nothing received: park.
    Park,
    /// The connection is done: the client closed or asked to, the listener
    /// drains, or it failed.
    Close,
    /// A request for hyper: its bytes are back in the gate.
    Hyper,
    /// The drain time ran out.
    Cut,
}

/// Serves plain requests on `gate` until the connection parks, ends, or
/// sends one that hyper must serve.
pub(super) async fn serve<I, S, B>(
    gate: &mut Gate<I>,
    service: &mut Tracked<S>,
    activity: &Activity,
    shared: &Shared,
) -> Outcome
where
    I: Transport,
    S: ConnService<B>,
    B: ConnBody,
{
    let mut buf = BytesMut::new();
    let mut heads = BytesMut::new();
    let mut out = Vec::new();
    // The last response's header map, emptied, for the next request's (as
    // hyper keeps it): no allocation per request for it.
    let mut spare = HeaderMap::new();
    let max_fields = shared.max_headers.min(MAX_FIELDS);
    // Made once: each new wait on a signal would lock its waiter list.
    let mut stopping = pin!(shared.stopping.fired());
    let mut cut = pin!(shared.cut.fired());
    loop {
        // A whole head, and the body with it, or more to read.
        let (request, plain) = loop {
            skip_empty_lines(&mut buf);
            if !buf.is_empty() {
                match parse(
                    &mut buf,
                    &mut heads,
                    &mut spare,
                    max_fields,
                    shared.gate.max_head,
                ) {
                    Ok(parsed) => break parsed,
                    Err(Unparsed::Partial) => {}
                    Err(Unparsed::Hyper) => {
                        gate.unread(buf.freeze());
                        return Outcome::Hyper;
                    }
                }
            }
            let signals = (stopping.as_mut(), cut.as_mut());
            match read(gate, &mut buf, activity, shared, signals).await {
                Read::Data => {}
                Read::Closed => return Outcome::Close,
                Read::Park => return Outcome::Park,
                Read::Cut => return Outcome::Cut,
            }
        };
        let mut responding = service.call(request);
        let response = tokio::select! {
            biased;
            () = cut.as_mut() => return Outcome::Cut,
            response = &mut responding => response,
            // As hyper: a client that hangs up while its request is served
            // drops it (and the upstream exchange with it).
            () = poll_fn(|cx| poll_gone(gate, &mut buf, cx)) => {
                tracing::debug!(listener = shared.name, "the client closed before its response");
                return Outcome::Close;
            }
        };
        let response = match response {
            Ok(response) => response,
            Err(never) => match never {},
        };
        // A drain that began while the request was served: the response
        // says the connection ends.
        let close = plain.close || shared.stopping.is_fired();
        let writing = Writing {
            out: &mut out,
            spare: &mut spare,
            buf: &mut buf,
        };
        let written = tokio::select! {
            biased;
            () = cut.as_mut() => return Outcome::Cut,
            written = write_response(gate, writing, response, &plain, close) => written,
        };
        match written {
            Ok(true) => {}
            Ok(false) => return Outcome::Close,
            Err(e) => {
                tracing::debug!(listener = shared.name, error = %e, "response not written");
                return Outcome::Close;
            }
        }
        if shared.stopping.is_fired() {
            return Outcome::Close;
        }
    }
}

/// What a read brought.
enum Read {
    Data,
    /// The client closed, the gate ended the connection (keep-alive or
    /// header timeout, a refused head) or the read failed.
    Closed,
    Park,
    Cut,
}

/// Reads more into `buf`. With nothing of a head buffered, a drain ends the
/// connection and the gate's park delay parks it.
async fn read<I: Transport>(
    gate: &mut Gate<I>,
    buf: &mut BytesMut,
    activity: &Activity,
    shared: &Shared,
    (stopping, cut): (Pin<&mut Fired<'_>>, Pin<&mut Fired<'_>>),
) -> Read {
    let between = buf.is_empty();
    if between && shared.stopping.is_fired() {
        return Read::Closed;
    }
    if buf.capacity() - buf.len() < READ_SIZE / 2 {
        buf.reserve(READ_SIZE);
    }
    let reading =
        poll_fn(
            |cx| match tokio_util::io::poll_read_buf(Pin::new(&mut *gate), cx, buf) {
                Poll::Ready(Ok(0)) => Poll::Ready(Read::Closed),
                Poll::Ready(Ok(_)) => Poll::Ready(Read::Data),
                Poll::Ready(Err(e)) => {
                    tracing::debug!(listener = shared.name, error = %e, "read failed");
                    Poll::Ready(Read::Closed)
                }
                Poll::Pending if between && activity.take_park() => Poll::Ready(Read::Park),
                Poll::Pending => Poll::Pending,
            },
        );
    tokio::select! {
        biased;
        read = reading => read,
        () = stopping, if between => Read::Closed,
        () = cut => Read::Cut,
    }
}

/// What the plain path needs to know of a request to answer it.
struct Plain {
    /// `HEAD`: the response has no body.
    head: bool,
    /// The client asked to close after the response.
    close: bool,
    /// The client takes trailers (`TE: trailers`).
    trailers: bool,
}

/// Why a request was not taken from the buffer.
enum Unparsed {
    /// The head is not all here yet.
    Partial,
    /// Not a plain request, or not one httparse reads: hyper's.
    Hyper,
}

/// Parses the request at the start of `buf`. On success its bytes are taken
/// from `buf`; otherwise `buf` is left as it was.
fn parse(
    buf: &mut BytesMut,
    heads: &mut BytesMut,
    spare: &mut HeaderMap,
    max_fields: usize,
    max_head: usize,
) -> Result<(Request<RequestBody>, Plain), Unparsed> {
    // Uninitialised for httparse to fill, as hyper does.
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
    let mut req = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut req,
        buf,
        &mut fields[..max_fields],
    ) {
        // hyper answers a head that is too large (431).
        Ok(httparse::Status::Complete(len)) if len <= max_head => len,
        Ok(httparse::Status::Partial) if buf.len() <= max_head => return Err(Unparsed::Partial),
        Ok(httparse::Status::Complete(_)) => return Err(Unparsed::Hyper),
        Ok(httparse::Status::Partial) | Err(_) => return Err(Unparsed::Hyper),
    };
    if req.version != Some(1) {
        return Err(Unparsed::Hyper);
    }
    let (Some(method), Some(path)) = (req.method, req.path) else {
        return Err(Unparsed::Hyper);
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Err(Unparsed::Hyper);
    };
    if method == Method::CONNECT || !path.starts_with('/') {
        return Err(Unparsed::Hyper);
    }
    let mut plain = Plain {
        head: method == Method::HEAD,
        close: false,
        trailers: false,
    };
    let mut length = Ok(None);
    for field in req.headers.iter() {
        let name = field.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            length = length.and_then(|length| add_length(length, field.value));
        } else if name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"expect")
            || name.eq_ignore_ascii_case(b"upgrade")
        {
            return Err(Unparsed::Hyper);
        } else if name.eq_ignore_ascii_case(b"connection") {
            plain.close |= has_token(field.value, b"close");
        } else if name.eq_ignore_ascii_case(b"te") {
            plain.trailers |= has_token(field.value, b"trailers");
        }
    }
    let Ok(length) = length else {
        return Err(Unparsed::Hyper);
    };
    let body_len = match length.map(usize::try_from) {
        None => 0,
        Some(Ok(n)) if n <= buf.len() - len => n,
        // The body is still on its way: hyper streams it to the service.
        Some(_) => return Err(Unparsed::Hyper),
    };
    // One copy of the head and its body; the target, every header value and
    // the body are slices of it.
    let whole = len + body_len;
    if heads.capacity() < whole {
        heads.reserve(whole.max(HEADS_SIZE));
    }
    heads.extend_from_slice(&buf[..whole]);
    let copy = heads.split().freeze();
    let base = buf.as_ptr() as usize;
    // Where a part of the head that httparse found is in the copy (its
    // parts all point into `buf`; one that did not would be copied).
    let at = |part: &[u8]| {
        let start = (part.as_ptr() as usize).checked_sub(base)?;
        let end = start.checked_add(part.len()).filter(|&end| end <= len)?;
        Some(copy.slice(start..end))
    };
    let path = at(path.as_bytes()).unwrap_or_else(|| Bytes::copy_from_slice(path.as_bytes()));
    let Ok(uri) = Uri::from_maybe_shared(path) else {
        return Err(Unparsed::Hyper);
    };
    // Room for the proxy's own headers too (`X-Forwarded-*`, the request id).
    let mut headers = std::mem::take(spare);
    headers.reserve(req.headers.len() + ADDED_HEADERS);
    for field in req.headers.iter() {
        let Ok(name) = HeaderName::from_bytes(field.name.as_bytes()) else {
            return Err(Unparsed::Hyper);
        };
        // httparse has checked the value's bytes, as it has for hyper,
        // which makes its values the same way.
        let value = match at(field.value) {
            Some(value) => HeaderValue::from_maybe_shared(value),
            None => HeaderValue::from_bytes(field.value),
        };
        let Ok(value) = value else {
            return Err(Unparsed::Hyper);
        };
        headers.append(name, value);
    }
    let body = copy.slice(len..whole);
    buf.advance(whole);
    let mut request = Request::new(RequestBody::full(body));
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = headers;
    Ok((request, plain))
}

/// Whether a comma-separated header value lists `token`.
fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// Writes `response`; true if the connection may serve another request.
/// The connection's buffers a response is written with.
struct Writing<'a> {
    out: &'a mut Vec<u8>,
    /// Takes the response's header map, emptied.
    spare: &'a mut HeaderMap,
    /// The read buffer, for what the client sends meanwhile.
    buf: &'a mut BytesMut,
}

async fn write_response<I: Transport, B: ConnBody>(
    gate: &mut Gate<I>,
    writing: Writing<'_>,
    response: Response<B>,
    plain: &Plain,
    close: bool,
) -> io::Result<bool> {
    let Writing { out, spare, buf } = writing;
    let (parts, body) = response.into_parts();
    if parts.status.is_informational() {
        // Not a final response: as hyper, a 500, and the connection ends.
        out.extend_from_slice(
            b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        );
        gate.write_all(out).await?;
        gate.flush().await?;
        out.clear();
        return Ok(false);
    }
    let (framing, trailers, close) = encode_head(&parts, &body, plain, close, out);
    *spare = parts.headers;
    spare.clear();
    let ended = {
        let mut body = pin!(body);
        let mut framing = framing;
        loop {
            let gathered = poll_fn(|cx| {
                match gather(body.as_mut(), cx, &mut framing, trailers.as_deref(), out) {
                    // As hyper: a client that hangs up while the body waits
                    // drops it.
                    Poll::Pending if poll_gone(gate, buf, cx).is_ready() => {
                        Poll::Ready(Gathered::Gone)
                    }
                    gathered => gathered,
                }
            })
            .await;
            match gathered {
                Gathered::Ended => break true,
                Gathered::Failed => break false,
                Gathered::Gone => return Ok(false),
                Gathered::More => {
                    gate.write_all(out).await?;
                    gate.flush().await?;
                    out.clear();
                }
            }
        }
        // The body drops here, ending the request's count before the
        // last flush, after which the gate may park the connection.
    };
    gate.write_all(out).await?;
    gate.flush().await?;
    out.clear();
    if out.capacity() > 2 * WRITE_BATCH {
        // A large frame made it grow: not kept for the connection's life.
        *out = Vec::new();
    }
    Ok(ended && !close)
}

/// Whether the client has gone (its end of the stream, or a failed read)
/// while a request is served, as hyper watches for it: a read while
/// nothing is buffered; once the client has sent more (a pipelined
/// request), it is kept and the watch ends, so a client that sends its
/// requests and then closes its side is still answered.
fn poll_gone<I: Transport>(
    gate: &mut Gate<I>,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<()> {
    if !buf.is_empty() {
        return Poll::Pending;
    }
    // Readiness first: the gate's read, which would wait as a rule, does
    // more to find that out.
    if gate.poll_read_ready(cx).is_pending() {
        return Poll::Pending;
    }
    if buf.capacity() < READ_SIZE / 2 {
        buf.reserve(READ_SIZE);
    }
    match tokio_util::io::poll_read_buf(Pin::new(&mut *gate), cx, buf) {
        Poll::Ready(Ok(0) | Err(_)) => Poll::Ready(()),
        Poll::Ready(Ok(_)) | Poll::Pending => Poll::Pending,
    }
}

/// Drops the empty lines (CRLF or LF) before a request line, which
/// httparse skips too; a lone CR that is not the start of one stays, for
/// the parse to refuse.
fn skip_empty_lines(buf: &mut BytesMut) {
    loop {
        if buf.starts_with(b"\r\n") {
            buf.advance(2);
        } else if buf.starts_with(b"\n") {
            buf.advance(1);
        } else {
            return;
        }
    }
}

/// The status line and headers, with the framing's own; returns the
/// framing, the trailer fields the client may get, and whether the
/// connection closes after the response.
fn encode_head<B: Body>(
    parts: &http::response::Parts,
    body: &B,
    plain: &Plain,
    mut close: bool,
    out: &mut Vec<u8>,
) -> (Out, Option<Vec<HeaderName>>, bool) {
    let status = parts.status;
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    let reason = parts
        .extensions
        .get::<hyper::ext::ReasonPhrase>()
        .map(|reason| reason.as_bytes())
        .or_else(|| status.canonical_reason().map(str::as_bytes));
    out.extend_from_slice(reason.unwrap_or_default());
    out.extend_from_slice(b"\r\n");
    // 1xx, 204 and 304 have no body; 1xx and 204 no length either.
    let no_body = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let may_have_length = !(status.is_informational() || status == StatusCode::NO_CONTENT);
    let kind = if body.is_end_stream() {
        Kind::Empty
    } else {
        body.size_hint().exact().map_or(Kind::Unknown, Kind::Known)
    };
    let mut length: Option<u64> = None;
    let (mut wrote_length, mut dated, mut says_close) = (false, false, false);
    let mut trailers: Option<Vec<HeaderName>> = None;
    for (name, value) in &parts.headers {
        if name == header::TRANSFER_ENCODING {
            // The framing is this module's.
            continue;
        }
        if name == header::CONTENT_LENGTH {
            if !may_have_length || wrote_length {
                continue;
            }
            match kind {
                // The body knows its length: its header is trusted, as hyper
                // trusts it.
                Kind::Known(n) => length = Some(n),
                Kind::Unknown => match add_length(None, value.as_bytes()) {
                    Ok(Some(n)) => length = Some(n),
                    _ => continue,
                },
                // No body: only a HEAD's length says more than 0, and only a
                // HEAD's is kept.
                Kind::Empty if plain.head => {}
                Kind::Empty => continue,
            }
            wrote_length = true;
        } else if name == header::CONNECTION {
            says_close |= has_token(value.as_bytes(), b"close");
        } else if name == header::DATE {
            dated = true;
        } else if name == header::TRAILER && plain.trailers {
            let names = value.as_bytes().split(|&b| b == b',');
            let names = names.filter_map(|n| HeaderName::from_bytes(n.trim_ascii()).ok());
            trailers.get_or_insert_with(Vec::new).extend(names);
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let framing = match (length, kind) {
        _ if no_body || plain.head => {
            // A HEAD's body of known size says the length a GET would get;
            // an empty one, and a 304's, say nothing.
            if let (true, false, false, Kind::Known(n @ 1..)) =
                (plain.head, no_body, wrote_length, kind)
            {
                write_length(n, out);
            }
            Out::None
        }
        (Some(n), _) => Out::Length(n),
        (None, Kind::Empty) => {
            write_length(0, out);
            Out::Length(0)
        }
        (None, Kind::Known(n)) => {
            write_length(n, out);
            Out::Length(n)
        }
        (None, Kind::Unknown) => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
            Out::Chunked
        }
    };
    close |= says_close;
    if close && !says_close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    if !dated {
        out.extend_from_slice(b"date: ");
        date::extend(out);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    // Trailers go out on a chunked body only, as hyper sends them.
    let trailers = trailers.filter(|_| framing == Out::Chunked);
    (framing, trailers, close)
}

/// What the response body says of its length.
#[derive(Clone, Copy)]
enum Kind {
    /// Ended already.
    Empty,
    Known(u64),
    Unknown,
}

fn write_length(n: u64, out: &mut Vec<u8>) {
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(itoa(n, &mut [0; 20]));
    out.extend_from_slice(b"\r\n");
}

enum Gathered {
    /// The body has ended, framed to its end in `out`.
    Ended,
    /// `out` is worth writing before more of the body.
    More,
    /// The body failed, or sent more or less than its length: the
    /// connection ends after what `out` holds.
    Failed,
    /// The client hung up.
    Gone,
}

/// Frames into `out` what the body has ready.
fn gather<B: Body>(
    mut body: Pin<&mut B>,
    cx: &mut Context<'_>,
    framing: &mut Out,
    trailers: Option<&[HeaderName]>,
    out: &mut Vec<u8>,
) -> Poll<Gathered> {
    loop {
        if *framing == Out::None || *framing == Out::Length(0) {
            // All the body there is to send: as hyper, no poll for its end.
            return Poll::Ready(Gathered::Ended);
        }
        if out.len() >= WRITE_BATCH {
            return Poll::Ready(Gathered::More);
        }
        match body.as_mut().poll_frame(cx) {
            Poll::Pending if out.is_empty() => return Poll::Pending,
            Poll::Pending => return Poll::Ready(Gathered::More),
            Poll::Ready(None) => {
                return Poll::Ready(match encode_end(*framing, out) {
                    Ok(()) => Gathered::Ended,
                    Err(_) => Gathered::Failed,
                });
            }
            Poll::Ready(Some(Err(_))) => return Poll::Ready(Gathered::Failed),
            Poll::Ready(Some(Ok(frame))) => {
                let frame = frame.map_data(|mut data| data.copy_to_bytes(data.remaining()));
                // Trailers, as hyper sends them: those the response's
                // `Trailer` header names, to a client that said `TE:
                // trailers`, and none that only a head may carry. With
                // none, the body ends without.
                let frame = match frame.into_trailers() {
                    Ok(fields) => {
                        let allowed = trailers.unwrap_or_default();
                        let mut kept = HeaderMap::new();
                        for (name, value) in &fields {
                            if allowed.contains(name) && trailer_allowed(name) {
                                kept.append(name.clone(), value.clone());
                            }
                        }
                        if kept.is_empty() {
                            Frame::data(Bytes::new())
                        } else {
                            Frame::trailers(kept)
                        }
                    }
                    Err(frame) => frame,
                };
                // Trailers end a chunked body (`Out::None`, above).
                if encode_frame(frame, framing, out).is_err() {
                    return Poll::Ready(Gathered::Failed);
                }
            }
        }
    }
}

/// Whether a field may be sent as a trailer (hyper's list).
fn trailer_allowed(name: &HeaderName) -> bool {
    !matches!(
        *name,
        header::AUTHORIZATION
            | header::CACHE_CONTROL
            | header::CONTENT_ENCODING
            | header::CONTENT_LENGTH
            | header::CONTENT_RANGE
            | header::CONTENT_TYPE
            | header::HOST
            | header::MAX_FORWARDS
            | header::SET_COOKIE
            | header::TRAILER
            | header::TRANSFER_ENCODING
            | header::TE
    )
}

/// The `date` header's value, formatted once a second per thread.
mod date {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    /// "Sun, 06 Nov 1994 08:49:37 GMT"
    const LEN: usize = 29;

    struct Cached {
        second: u64,
        value: [u8; LEN],
    }

    thread_local! {
        static CACHED: RefCell<Cached> = const { RefCell::new(Cached { second: u64::MAX, value: [0; LEN] }) };
    }

    pub(super) fn extend(out: &mut Vec<u8>) {
        let now = SystemTime::now();
        let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        CACHED.with(|cached| {
            let mut cached = cached.borrow_mut();
            if cached.second != second {
                let text = httpdate::fmt_http_date(now);
                if text.len() == LEN {
                    cached.value.copy_from_slice(text.as_bytes());
                    cached.second = second;
                } else {
                    out.extend_from_slice(text.as_bytes());
                    return;
                }
            }
            out.extend_from_slice(&cached.value);
        });
    }
}

/// What the plain path makes of some bytes, for the fuzz target
/// (`fuzz/fuzz_targets/request.rs`): the method, target and body length of
/// each request it takes, then why it stopped: `"hyper"` (the rest is
/// hyper's, given back untouched) or `"incomplete"`. The bytes are fed
/// `step` at a time, as reads would bring them; `max_fields` as the
/// listener's `max_headers`.
#[doc(hidden)]
pub fn read_requests(
    data: &[u8],
    step: usize,
    max_fields: usize,
) -> (Vec<(String, String, usize)>, &'static str) {
    let (step, max_fields) = (step.max(1), max_fields.clamp(1, MAX_FIELDS));
    let max_head = 64 * 1024;
    let (mut buf, mut heads, mut spare) = (BytesMut::new(), BytesMut::new(), HeaderMap::new());
    let mut fed = 0;
    let mut taken = Vec::new();
    loop {
        skip_empty_lines(&mut buf);
        let before = buf.clone();
        match parse(&mut buf, &mut heads, &mut spare, max_fields, max_head) {
            Ok((request, _)) => {
                // Every Content-Length value, each a list of numbers: all one
                // number, the body's length.
                let declared: Vec<Option<usize>> = request
                    .headers()
                    .get_all(header::CONTENT_LENGTH)
                    .iter()
                    .flat_map(|v| v.as_bytes().split(|&b| b == b','))
                    .map(|n| std::str::from_utf8(n.trim_ascii()).ok()?.parse().ok())
                    .collect();
                let (parts, body) = request.into_parts();
                let length = body.size_hint().exact().unwrap_or(u64::MAX) as usize;
                if declared.is_empty() {
                    assert_eq!(length, 0, "a body without a Content-Length");
                }
                for n in declared {
                    assert_eq!(n, Some(length), "a body of another length");
                }
                assert!(before.len() - buf.len() > length, "the head took no bytes");
                taken.push((parts.method.to_string(), parts.uri.to_string(), length));
            }
            Err(Unparsed::Hyper) => {
                assert_eq!(buf, before, "bytes for hyper were not given back whole");
                return (taken, "hyper");
            }
            Err(Unparsed::Partial) => {
                assert_eq!(buf, before, "a partial head took bytes");
                if fed == data.len() {
                    return (taken, "incomplete");
                }
                let next = (fed + step).min(data.len());
                buf.extend_from_slice(&data[fed..next]);
                fed = next;
            }
        }
    }
}
