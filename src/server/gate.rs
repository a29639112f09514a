//! The connection gate: an I/O wrapper that reads HTTP/1.1 framing alongside
//! hyper, one step ahead of it, to do what hyper will not:
//!
//! - refuse a request head that carries both `Content-Length` and
//!   `Transfer-Encoding` (hyper would read it by `Transfer-Encoding` and
//!   forward it), conflicting or invalid lengths, a `Transfer-Encoding` that
//!   does not end in `chunked`, and chunked framing that is already broken
//!   in the bytes that complete the head. The refused head never reaches
//!   hyper, so nothing reaches an upstream; the client gets a 400 JSON and the
//!   connection closes.
//! - answer `408` to a client that does not complete a request head within
//!   the header timeout, counted from the head's first byte (from the accept
//!   for a connection's first request, TLS handshake included), then close
//!   (hyper closes without a word); a connection that sent nothing of a head
//!   (empty lines between requests do not count) is closed without one;
//! - close a connection idle longer than the keep-alive timeout: no request
//!   in flight and nothing received for that long (HTTP/2 included);
//! - ask for an idle HTTP/1.1 connection to be parked
//!   ([`GateLimits::park_after`]): the server then drops hyper's connection
//!   and its buffers, and keeps only the socket and its keep-alive deadline
//!   until the client sends again ([`Gate::park`], [`ParkedIo::resume`]);
//!   meanwhile its listener's clock closes it at the deadline, up to a tick
//!   late (`super::clock`).
//!
//! The gate follows message boundaries: head (up to the blank line), then a
//! body of `Content-Length` bytes or chunked framing (the same state machine
//! as hyper's decoder), then the next head, so pipelined requests are read
//! as carefully as the first. It only ever looks at bytes as they pass; it
//! copies a head only when it spans two reads. Where it cannot follow (HTTP/2,
//! a head hyper is about to reject as too large), it steps aside and passes
//! bytes through.
//!
//! The gate's own responses are written only when the connection is quiet:
//! no request in flight ([`Activity`]), and hyper has flushed through the
//! gate since the last one ended (it does so only once its own buffer is
//! empty), so they never interleave with a response hyper is sending.
//!
//! An HTTP/2 connection idle too long ends with the transport closed, not a
//! GOAWAY: the gate ends its reads, as for HTTP/1.1.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

use atomic_waker::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The HTTP/2 connection preface: a connection that starts with it is
/// passed through.
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Requests of one connection that hyper has handed to the service and whose
/// responses have not finished. Shared by the gate and the service wrapper.
#[derive(Debug, Default)]
pub struct Activity {
    in_flight: AtomicUsize,
    /// True from the end of the last request until hyper has flushed all
    /// it buffered for it (it flushes through the gate only once its own
    /// buffer is empty): the gate writes nothing of its own before.
    unsettled: AtomicBool,
    /// The gate's read, waiting for the last request to end to start the
    /// idle period's timer (hyper does not read again until the socket is
    /// readable).
    quiet: AtomicWaker,
    /// Set by the gate once the connection has idled for the park delay;
    /// taken by the server, which then parks it.
    park: AtomicBool,
}

impl Activity {
    /// Counts a request until the guard drops (with its response body).
    pub fn start(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Busy(Arc::clone(self))
    }

    fn idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
    }

    /// Whether the gate asks for the connection to be parked; asks once.
    pub fn take_park(&self) -> bool {
        self.park.swap(false, Ordering::AcqRel)
    }

    /// Whether no request is in flight; if one is, `cx` is woken when the
    /// last one ends.
    fn poll_idle(&self, cx: &mut Context<'_>) -> bool {
        if self.idle() {
            return true;
        }
        self.quiet.register(cx.waker());
        // It may have ended between the check and the registration.
        self.idle()
    }
}

/// One request in flight on a connection; see [`Activity::start`].
#[derive(Debug)]
pub struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.unsettled.store(true, Ordering::Release);
            self.0.quiet.wake();
        }
    }
}

/// The gate's timeouts and the head size it follows.
#[derive(Debug, Clone, Copy)]
pub struct GateLimits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    /// Past this many head bytes hyper answers 431; the gate stops following.
    pub max_head: usize,
    /// After this long idle between HTTP/1.1 requests (no request in flight,
    /// hyper's last response flushed, nothing received), the gate asks for
    /// the connection to be parked; `None` never.
    pub park_after: Option<Duration>,
}

/// See the module docs.
pub struct Gate<I> {
    inner: I,
    activity: Arc<Activity>,
    /// The listener's, shared: every connection keeps them.
    limits: Arc<GateLimits>,
    reader: Reader,
    timer: Pin<Box<Sleep>>,
    armed: Option<Timer>,
    /// When the current idle period began, and whether its park delay has
    /// run out already.
    idle_since: Instant,
    park_fired: bool,
    /// A response the gate writes itself, then the connection ends. Boxed:
    /// rare, and every idle connection would keep room for it.
    refusal: Option<Box<Refusal>>,
    /// Bytes read and inspected already that hyper has not parsed: the
    /// first bytes (read to tell HTTP/2 from HTTP/1.1), or those hyper had
    /// read when its connection was taken apart. Read first.
    unread: bytes::Bytes,
    /// hyper wrote bytes it has not flushed yet.
    unflushed: bool,
    /// Woken when a flush completes, if a refusal waits for it.
    read_waker: Option<Waker>,
    eof: bool,
}

/// Follows a connection's bytes through HTTP/1.1 message framing.
#[derive(Debug)]
struct Reader {
    framing: Framing,
    /// The bytes of a head that spans reads, so far.
    partial: Vec<u8>,
    /// Empty lines arrived since the last message ended: hyper holds them
    /// unparsed, and a hyper connection holding bytes is not idle, so the
    /// connection is not parked until the next head is complete.
    blank: bool,
    max_head: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    Header,
    Idle,
    /// The first part of an idle period: the park delay, then `Idle` for the
    /// rest of the keep-alive timeout.
    Park,
}

struct Refusal {
    response: Vec<u8>,
    written: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// Nothing read yet: HTTP/1.1 or the HTTP/2 preface.
    Start,
    /// At or inside an HTTP/1.1 request head.
    Head,
    /// Inside a body of this many remaining bytes.
    Length(u64),
    Chunked(Chunk),
    /// Not followed: bytes pass as they are.
    Opaque,
}

/// hyper's chunked decoder states (`proto/h1/decode.rs`), so the gate
/// accepts exactly what hyper accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Start,
    Size(u64),
    SizeLws(u64),
    Extension(u64),
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    Trailer,
    TrailerLf,
    EndCr,
    EndLf,
}

/// What the gate decided about the bytes of one read.
enum Verdict {
    /// Pass them all.
    Pass,
    /// Pass the first `keep` bytes; refuse the request that starts after.
    Refuse { keep: usize, why: &'static str },
}

// === impl Gate ===

impl<I> Gate<I> {
    /// `first_head_by`: when the connection's first request head must be
    /// in (the accept plus the header timeout: a TLS handshake counts).
    pub fn new(
        inner: I,
        activity: Arc<Activity>,
        limits: Arc<GateLimits>,
        first_head_by: Instant,
    ) -> Gate<I> {
        // Armed for the first request head from the accept on.
        let armed = Some(Timer::Header);
        Gate::with(
            inner,
            activity,
            limits,
            Framing::Start,
            armed,
            first_head_by,
        )
    }

    /// A gate whose reader is at `framing`, its timer at `timer_at` and
    /// `armed` as such; nothing else read or written yet.
    fn with(
        inner: I,
        activity: Arc<Activity>,
        limits: Arc<GateLimits>,
        framing: Framing,
        armed: Option<Timer>,
        timer_at: Instant,
    ) -> Gate<I> {
        Gate {
            inner,
            activity,
            reader: Reader {
                framing,
                ..Reader::new(limits.max_head)
            },
            limits,
            timer: Box::pin(tokio::time::sleep_until(timer_at)),
            armed,
            idle_since: timer_at,
            park_fired: false,
            refusal: None,
            unread: bytes::Bytes::new(),
            unflushed: false,
            read_waker: None,
            eof: false,
        }
    }

    /// Which timer applies now, while the client is sending nothing. With
    /// `cx`, a connection waiting for its requests to end is woken when they
    /// do, so the idle clock starts then.
    fn wanted_timer(&self, cx: Option<&mut Context<'_>>) -> Option<Timer> {
        match self.reader.framing {
            Framing::Start => Some(Timer::Header),
            Framing::Head if !self.reader.partial.is_empty() => Some(Timer::Header),
            Framing::Head | Framing::Opaque => {
                let idle = match cx {
                    Some(cx) => self.activity.poll_idle(cx),
                    None => self.activity.idle(),
                };
                idle.then_some(Timer::Idle)
            }
            _ => None,
        }
    }

    /// Whether an idle period that starts now begins with the park delay:
    /// HTTP/1.1 between requests, and hyper's last response all flushed.
    fn parks(&self) -> bool {
        self.limits
            .park_after
            .is_some_and(|after| after < self.limits.idle_timeout)
            && self.reader.framing == Framing::Head
            && self.reader.partial.is_empty()
            && !self.reader.blank
            && self.unread.is_empty()
            && !self.unflushed
            && !self.activity.unsettled.load(Ordering::Acquire)
    }

    /// The connection is parked: of the gate, it keeps its socket and when
    /// its keep-alive timeout runs out, and gives up the rest (its timer
    /// among it: see [`super::clock`]) until [`ParkedIo::resume`].
    pub fn park(self) -> ParkedIo<I> {
        // A park is asked for only between requests with nothing of a head
        // received and nothing of the gate's own to write (`parks`), so all
        // the gate gives up here is at its start state.
        debug_assert!(
            self.reader.partial.is_empty()
                && self.unread.is_empty()
                && self.refusal.is_none()
                && !self.eof
        );
        ParkedIo::new(self.inner, self.idle_since + self.limits.idle_timeout)
    }

    /// Ready when a read would not wait: bytes given back, the gate's own
    /// end, or the transport's readiness (always, for TLS). A cheap look
    /// before a read that would likely wait.
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>
    where
        I: Transport,
    {
        if !self.unread.is_empty() || self.eof || self.refusal.is_some() {
            return Poll::Ready(Ok(()));
        }
        self.inner.poll_read_ready(cx)
    }

    /// Gives back bytes read but not parsed yet (see the `unread` field);
    /// the next reads return them first.
    pub fn unread(&mut self, bytes: bytes::Bytes) {
        if self.unread.is_empty() {
            self.unread = bytes;
        } else if !bytes.is_empty() {
            // Bytes the gate had not handed out yet come after them.
            let mut both = bytes::BytesMut::with_capacity(bytes.len() + self.unread.len());
            both.extend_from_slice(&bytes);
            both.extend_from_slice(&self.unread);
            self.unread = both.freeze();
        }
    }

    fn refuse(&mut self, status: &str, why: &str) {
        let body = format!("{{\"error\":\"{why}\"}}");
        let response = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        self.refusal = Some(Box::new(Refusal {
            response: response.into_bytes(),
            written: 0,
        }));
    }
}

/// A connection's transport, as the gate needs it to park.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Whether a connection on it can be parked: whether it can say when
    /// the client has sent something without holding a read buffer.
    const PARKS: bool;

    /// Ready when a read would not wait (or would fail).
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl Transport for tokio::net::TcpStream {
    const PARKS: bool = true;

    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        tokio::net::TcpStream::poll_read_ready(self, cx)
    }
}

/// TLS keeps decrypted bytes of its own, which socket readiness does not
/// show: its connections are not parked.
impl Transport for tokio_rustls::server::TlsStream<tokio::net::TcpStream> {
    const PARKS: bool = false;

    fn poll_read_ready(&self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// What a parked connection keeps of its gate ([`Gate::park`]).
pub struct ParkedIo<I> {
    inner: I,
    /// When the keep-alive timeout runs out.
    deadline: Instant,
}

impl<I> ParkedIo<I> {
    /// `inner`, parked until `deadline`.
    pub fn new(inner: I, deadline: Instant) -> ParkedIo<I> {
        ParkedIo { inner, deadline }
    }

    /// When the keep-alive timeout runs out, counted from the start of the
    /// idle period in which it was parked.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The gate for the connection's next requests, once the client has
    /// sent something: between requests, as it was parked.
    pub fn resume(self, activity: Arc<Activity>, limits: Arc<GateLimits>) -> Gate<I> {
        // No timer armed: the next read that waits starts a new idle period
        // (or a head's clock). A resumption with nothing to read after all
        // (a spurious readiness) idles anew, for up to a full timeout.
        Gate::with(
            self.inner,
            activity,
            limits,
            Framing::Head,
            None,
            self.deadline,
        )
    }
}

impl<I: Transport> ParkedIo<I> {
    /// Ready once the client has sent something (or the socket failed,
    /// which the next read reports).
    pub fn poll_sent(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.inner.poll_read_ready(cx).map(|_| ())
    }
}

// === impl Reader ===

impl Reader {
    fn new(max_head: usize) -> Reader {
        Reader {
            framing: Framing::Start,
            partial: Vec::new(),
            blank: false,
            max_head,
        }
    }

    /// Follows `bytes` through the framing, returning what to do with them.
    fn inspect(&mut self, bytes: &[u8]) -> Verdict {
        let mut at = 0;
        while at < bytes.len() {
            let rest = &bytes[at..];
            match self.framing {
                Framing::Opaque => return Verdict::Pass,
                Framing::Start => {
                    // Decide on as few bytes as the preface allows.
                    let seen = self.partial.len();
                    let take = rest.len().min(H2_PREFACE.len() - seen);
                    if H2_PREFACE[seen..seen + take] == rest[..take] {
                        if seen + take == H2_PREFACE.len() {
                            self.partial = Vec::new();
                            self.framing = Framing::Opaque;
                            return Verdict::Pass;
                        }
                        self.partial.extend_from_slice(rest);
                        return Verdict::Pass;
                    }
                    // HTTP/1.1: what was held back is the head's beginning.
                    self.framing = Framing::Head;
                }
                Framing::Head => {
                    let start = at;
                    let (consumed, done) = match self.head(rest) {
                        Ok(step) => step,
                        Err(why) => {
                            // A head that began in an earlier read: hyper has
                            // its beginning, never its end.
                            return Verdict::Refuse { keep: start, why };
                        }
                    };
                    at += consumed;
                    if done && self.framing != Framing::Opaque {
                        // Chunked framing already broken in the bytes that
                        // complete the head: refuse before hyper sees it.
                        if let Err(why) = self.body(&bytes[at..]).map(|n| at += n) {
                            return Verdict::Refuse { keep: start, why };
                        }
                    }
                }
                Framing::Length(_) | Framing::Chunked(_) => match self.body(rest) {
                    Ok(n) => at += n,
                    // The head went through in an earlier read: hyper's own
                    // decoder fails the same way and ends the body.
                    Err(_) => {
                        self.framing = Framing::Opaque;
                        return Verdict::Pass;
                    }
                },
            }
        }
        Verdict::Pass
    }

    /// Reads head bytes from `bytes`: how many it took, and whether the head
    /// is complete (its framing set). Copies only a head split across reads.
    fn head(&mut self, bytes: &[u8]) -> Result<(usize, bool), &'static str> {
        if self.partial.is_empty() {
            // Empty lines between messages are ignored (RFC 9112 2.2), as
            // hyper does: they do not start a head, nor its clock.
            let blank = bytes
                .iter()
                .take_while(|&&b| b == b'\r' || b == b'\n')
                .count();
            self.blank |= blank > 0;
            if blank == bytes.len() {
                return Ok((blank, false));
            }
            // The common case, a head whole in one read: one pass.
            if let Some((end, framing)) = scan_head(bytes) {
                self.framing = framing?;
                self.blank = false;
                return Ok((end, true));
            }
        }
        let before = self.partial.len();
        // Search only where the end can be: from a few bytes back.
        let from = before.saturating_sub(3);
        self.partial.extend_from_slice(bytes);
        match head_end(&self.partial, from) {
            Some(end) => {
                let result = match scan_head(&self.partial[..end]) {
                    Some((_, framing)) => framing,
                    // Not reached: it ends where `head_end` found its end.
                    None => Err("malformed request head"),
                };
                // It may have taken body bytes along; keep no large buffer
                // for the connection's life.
                if self.partial.capacity() > 4096 {
                    self.partial = Vec::new();
                } else {
                    self.partial.clear();
                }
                self.framing = result?;
                self.blank = false;
                Ok((end - before, true))
            }
            None => {
                if self.partial.len() > self.max_head {
                    // hyper answers 431; nothing to follow after that.
                    self.partial = Vec::new();
                    self.framing = Framing::Opaque;
                }
                Ok((bytes.len(), false))
            }
        }
    }

    /// Follows body bytes; returns how many belong to the current body.
    fn body(&mut self, bytes: &[u8]) -> Result<usize, &'static str> {
        let mut at = 0;
        loop {
            match self.framing {
                Framing::Length(0) => {
                    self.framing = Framing::Head;
                    return Ok(at);
                }
                Framing::Length(n) => {
                    let take = n.min((bytes.len() - at) as u64);
                    at += take as usize;
                    self.framing = Framing::Length(n - take);
                    if n - take > 0 {
                        return Ok(at);
                    }
                }
                Framing::Chunked(Chunk::Data(n)) => {
                    let take = n.min((bytes.len() - at) as u64);
                    at += take as usize;
                    self.framing = Framing::Chunked(if n == take {
                        Chunk::DataCr
                    } else {
                        Chunk::Data(n - take)
                    });
                    if at == bytes.len() {
                        return Ok(at);
                    }
                }
                Framing::Chunked(state) => {
                    let Some(&b) = bytes.get(at) else {
                        return Ok(at);
                    };
                    at += 1;
                    self.framing = match chunk_step(state, b)? {
                        Some(next) => Framing::Chunked(next),
                        None => Framing::Head,
                    };
                    if self.framing == Framing::Head {
                        return Ok(at);
                    }
                }
                Framing::Head | Framing::Start | Framing::Opaque => return Ok(at),
            }
        }
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> Gate<I> {
    /// Writes the refusal once the connection is quiet; ready when done (or
    /// when the client is gone).
    fn poll_refusal(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.activity.poll_idle(cx) {
            // hyper is still answering an earlier request.
            return Poll::Pending;
        }
        if self.unflushed || self.activity.unsettled.load(Ordering::Acquire) {
            // hyper's next flush wakes this.
            self.read_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let Some(refusal) = self.refusal.as_mut() else {
            return Poll::Ready(());
        };
        while refusal.written < refusal.response.len() {
            match ready!(
                Pin::new(&mut self.inner).poll_write(cx, &refusal.response[refusal.written..])
            ) {
                Ok(0) | Err(_) => break,
                Ok(n) => refusal.written += n,
            }
        }
        let _ = ready!(Pin::new(&mut self.inner).poll_flush(cx));
        self.refusal = None;
        self.eof = true;
        Poll::Ready(())
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncRead for Gate<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.refusal.is_some() {
            ready!(this.poll_refusal(cx));
        }
        if this.eof {
            return Poll::Ready(Ok(()));
        }
        if !this.unread.is_empty() {
            let n = this.unread.len().min(buf.remaining());
            buf.put_slice(&this.unread.split_to(n));
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let read = buf.filled().len() - before;
                if read == 0 {
                    return Poll::Ready(Ok(()));
                }
                let verdict = this.reader.inspect(&buf.filled()[before..]);
                // Data moved the connection on: the idle clock restarts, and
                // a header clock only when a new head begins.
                if matches!(this.armed, Some(Timer::Idle | Timer::Park))
                    || this.wanted_timer(None) != Some(Timer::Header)
                {
                    this.armed = None;
                }
                this.activity.park.store(false, Ordering::Release);
                if let Verdict::Refuse { keep, why } = verdict {
                    buf.set_filled(before + keep);
                    this.refuse("400 Bad Request", why);
                    if keep == 0 {
                        // Nothing to hand over: go straight to the refusal.
                        ready!(this.poll_refusal(cx));
                        return Poll::Ready(Ok(()));
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let wanted = this.wanted_timer(Some(cx));
                if wanted.is_none() {
                    this.armed = None;
                    return Poll::Pending;
                }
                // An idle period in its park delay is still idle.
                let armed = match (this.armed, wanted) {
                    (Some(Timer::Park), Some(Timer::Idle)) => wanted,
                    (armed, _) => armed,
                };
                let park_after = this.limits.park_after.unwrap_or_default();
                if armed != wanted {
                    let now = Instant::now();
                    if wanted == Some(Timer::Header) {
                        this.timer.as_mut().reset(now + this.limits.header_timeout);
                        this.armed = wanted;
                    } else {
                        // A new idle period.
                        this.idle_since = now;
                        this.park_fired = false;
                        if this.parks() {
                            this.timer.as_mut().reset(now + park_after);
                            this.armed = Some(Timer::Park);
                        } else {
                            this.timer.as_mut().reset(now + this.limits.idle_timeout);
                            this.armed = Some(Timer::Idle);
                        }
                    }
                } else if this.armed == Some(Timer::Idle) && !this.park_fired && this.parks() {
                    // It became parkable later in the period (hyper's last
                    // flush had to wait for a slow reader): the park delay
                    // still counts from the period's start.
                    this.timer.as_mut().reset(this.idle_since + park_after);
                    this.armed = Some(Timer::Park);
                } else if this.armed == Some(Timer::Idle)
                    && !this.park_fired
                    && this.limits.park_after.is_some()
                    && (this.unflushed || this.activity.unsettled.load(Ordering::Acquire))
                {
                    // Not parkable only because hyper's last flush waits for
                    // a slow reader. hyper does not read again by itself
                    // once it has flushed: the flush wakes this read, which
                    // then starts the park delay (above).
                    this.read_waker = Some(cx.waker().clone());
                }
                if this.armed == Some(Timer::Park) {
                    ready!(this.timer.as_mut().poll(cx));
                    // Parked or not, the idle clock runs on to the end of
                    // the keep-alive timeout.
                    this.park_fired = true;
                    this.timer
                        .as_mut()
                        .reset(this.idle_since + this.limits.idle_timeout);
                    this.armed = Some(Timer::Idle);
                    this.activity.park.store(true, Ordering::Release);
                    // Registers the waker for the rest.
                    ready!(this.timer.as_mut().poll(cx));
                    this.armed = None;
                    this.eof = true;
                    return Poll::Ready(Ok(()));
                }
                ready!(this.timer.as_mut().poll(cx));
                this.armed = None;
                match wanted {
                    // Nothing of a head arrived (a preconnect, a client
                    // that went quiet): close without a word.
                    Some(Timer::Header) if this.reader.partial.is_empty() => this.eof = true,
                    Some(Timer::Header) => {
                        this.refuse("408 Request Timeout", "request head not received in time");
                        ready!(this.poll_refusal(cx));
                    }
                    _ => this.eof = true,
                }
                Poll::Ready(Ok(()))
            }
        }
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Gate<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        this.unflushed |= n > 0;
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, bufs))?;
        this.unflushed |= n > 0;
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
        this.unflushed = false;
        this.activity.unsettled.store(false, Ordering::Release);
        if let Some(waker) = this.read_waker.take() {
            waker.wake();
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

// === framing ===

/// The length of the head at the start of `bytes` (through its blank line),
/// if it is all there, looking for the blank line from `from` on. Empty
/// lines before the request line belong to the head, as in httparse.
fn head_end(bytes: &[u8], from: usize) -> Option<usize> {
    let start = bytes.iter().position(|&b| b != b'\r' && b != b'\n')?;
    let mut at = from.max(start);
    loop {
        // Each line ends in LF; the head ends at a line that is empty.
        let nl = at + memchr::memchr(b'\n', &bytes[at..])?;
        match &bytes[nl + 1..] {
            [b'\n', ..] => return Some(nl + 2),
            [b'\r', b'\n', ..] => return Some(nl + 3),
            [] | [b'\r'] => return None,
            _ => at = nl + 1,
        }
    }
}

/// Where the head at the start of `bytes` ends (past its blank line), and
/// the body framing it declares or why it is refused; `None` while its blank
/// line has not come. Leading empty lines are skipped, as in `head_end`.
///
/// hyper's rules (`proto/h1/role.rs`), plus one: a head with both
/// `Content-Length` and `Transfer-Encoding` is refused, where hyper would
/// read it by `Transfer-Encoding`.
///
/// A header counts only as `name:` at the start of its line: hyper refuses
/// a head with white space before a colon, or a line without one.
fn scan_head(bytes: &[u8]) -> Option<(usize, Result<Framing, &'static str>)> {
    const CONTENT_LENGTH: &[u8] = b"content-length:";
    const TRANSFER_ENCODING: &[u8] = b"transfer-encoding:";
    let mut length: Option<u64> = None;
    let mut has_length = false;
    let mut chunked: Option<bool> = None;
    // The first reason to refuse; the head is still read to its end.
    let mut refused: Option<&'static str> = None;
    let start = bytes.iter().position(|&b| b != b'\r' && b != b'\n')?;
    // The request line is not a header.
    let mut at = start + memchr::memchr(b'\n', &bytes[start..])? + 1;
    loop {
        let end = at + memchr::memchr(b'\n', &bytes[at..])?;
        let line = &bytes[at..end];
        at = end + 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if refused.is_some() {
            continue;
        }
        if let Some(value) = field(line, CONTENT_LENGTH) {
            has_length = true;
            match digits(trim(value)) {
                Some(n) if length.is_none_or(|prev| prev == n) => length = Some(n),
                Some(_) => refused = Some("conflicting Content-Length headers"),
                None => refused = Some("invalid Content-Length"),
            }
        } else if let Some(value) = field(line, TRANSFER_ENCODING) {
            let last = value.rsplit(|&b| b == b',').next().map(trim);
            chunked = Some(last.is_some_and(|t| t.eq_ignore_ascii_case(b"chunked")));
        }
    }
    let framing = match (refused, chunked, has_length) {
        (Some(why), _, _) => Err(why),
        (None, Some(_), true) => Err("both Content-Length and Transfer-Encoding"),
        (None, Some(false), false) => Err("Transfer-Encoding must end with chunked"),
        (None, Some(true), false) => Ok(Framing::Chunked(Chunk::Start)),
        (None, None, _) => Ok(Framing::Length(length.unwrap_or(0))),
    };
    Some((at, framing))
}

/// The value of `line` if it is the header `name` (given with its colon,
/// in lower case), matched without regard to case.
fn field<'a>(line: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    match line.split_at_checked(name.len()) {
        Some((head, value)) if head.eq_ignore_ascii_case(name) => Some(value),
        _ => None,
    }
}

/// One byte of chunked framing: the next state, or `None` at the end of the
/// body (after any trailers).
fn chunk_step(state: Chunk, b: u8) -> Result<Option<Chunk>, &'static str> {
    use Chunk::*;
    const BAD: &str = "malformed chunked body";
    let next = match (state, b) {
        (Start, _) => Size(hex(b).ok_or(BAD)?),
        (Size(n), _) if hex(b).is_some() => Size(
            n.checked_mul(16)
                .and_then(|n| n.checked_add(hex(b)?))
                .ok_or(BAD)?,
        ),
        (Size(n) | SizeLws(n), b'\t' | b' ') => SizeLws(n),
        (Size(n) | SizeLws(n), b';') => Extension(n),
        (Size(n) | SizeLws(n) | Extension(n), b'\r') => SizeLf(n),
        (Extension(_), b'\n') => return Err(BAD),
        (Extension(n), _) => Extension(n),
        (SizeLf(0), b'\n') => EndCr,
        (SizeLf(n), b'\n') => Data(n),
        (DataCr, b'\r') => DataLf,
        (DataLf, b'\n') => Start,
        (Trailer, b'\r') => TrailerLf,
        (Trailer, _) => Trailer,
        (TrailerLf, b'\n') => EndCr,
        (EndCr, b'\r') => EndLf,
        (EndCr, _) => Trailer,
        (EndLf, b'\n') => return Ok(None),
        _ => return Err(BAD),
    };
    Ok(Some(next))
}

fn hex(b: u8) -> Option<u64> {
    (b as char).to_digit(16).map(u64::from)
}

fn digits(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |n, &b| {
        if b.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Feeds `stream` to a fresh reader in pieces cut at `cuts`; returns the
    /// refusal reason and the offset of the refused head, if any.
    fn follow(stream: &[u8], cuts: &[usize]) -> (Option<(usize, &'static str)>, Framing) {
        let mut reader = Reader::new(64 * 1024);
        let mut at = 0;
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
        points.push(stream.len());
        points.sort_unstable();
        for end in points {
            if end <= at {
                continue;
            }
            if let Verdict::Refuse { keep, why } = reader.inspect(&stream[at..end]) {
                return (Some((at + keep, why)), reader.framing);
            }
            at = end;
        }
        (None, reader.framing)
    }

    const PIPELINE: &[u8] = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n\
POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n\
5;ext=1\r\nhello\r\nA \r\n0123456789\r\n0\r\nTrailer: t\r\n\r\n\
\r\nGET /d HTTP/1.1\nHost: x\n\n";

    #[test]
    fn a_pipeline_of_valid_requests_passes_whole() {
        assert_eq!(follow(PIPELINE, &[]), (None, Framing::Head));
    }

    #[test]
    fn ambiguous_and_broken_framing_is_refused_at_its_head() {
        let cases: [(&[u8], &str); 7] = [
            (
                b"POST / HTTP/1.1\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG",
                "both Content-Length and Transfer-Encoding",
            ),
            (
                b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n",
                "both Content-Length and Transfer-Encoding",
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: cow\r\n\r\n0\r\n\r\n",
                "Transfer-Encoding must end with chunked",
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
                "conflicting Content-Length headers",
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: +4\r\n\r\nabcd",
                "invalid Content-Length",
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                "malformed chunked body",
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n",
                "malformed chunked body",
            ),
        ];
        for (stream, why) in cases {
            assert_eq!(
                follow(stream, &[]).0,
                Some((0, why)),
                "{}",
                String::from_utf8_lossy(stream)
            );
        }
    }

    #[test]
    fn a_header_is_matched_by_its_whole_name_in_any_case() {
        let head = |fields: &str| format!("\r\nPOST / HTTP/1.1\r\n{fields}\r\n\r\n");
        let framed = |fields: &str| {
            let head = head(fields);
            let (end, framing) = scan_head(head.as_bytes()).expect("a whole head");
            assert_eq!(end, head.len());
            framing
        };
        assert!(matches!(framed("CONTENT-length:7"), Ok(Framing::Length(7))));
        assert!(matches!(
            framed("Content-Lengthy: 5"),
            Ok(Framing::Length(0))
        ));
        assert!(matches!(
            framed("X-Content-Length: 5"),
            Ok(Framing::Length(0))
        ));
        assert!(matches!(
            framed("Transfer-Encoding: gzip, CHUNKED"),
            Ok(Framing::Chunked(Chunk::Start))
        ));
        assert!(matches!(
            framed("Transfer-Encodings: chunked"),
            Ok(Framing::Length(0))
        ));
        assert!(matches!(
            scan_head(b"GET / HTTP/1.1\r\n\r\nnext"),
            Some((18, Ok(Framing::Length(0))))
        ));
        // Not yet whole.
        assert!(scan_head(b"\r\nPOST / HTTP/1.1\r\ncontent-length: 1\r\n").is_none());
        assert!(scan_head(b"POST / HTTP/1.1\r\n\r").is_none());
    }

    #[test]
    fn the_http2_preface_is_passed_through() {
        let mut stream = H2_PREFACE.to_vec();
        stream.extend_from_slice(b"\x00\x00\x00anything at all");
        assert_eq!(follow(&stream, &[3, 10]), (None, Framing::Opaque));
        // "P" then not the preface: an HTTP/1.1 POST.
        assert_eq!(
            follow(b"POST / HTTP/1.1\r\n\r\n", &[1]),
            (None, Framing::Head)
        );
    }

    #[test]
    fn a_head_larger_than_the_limit_is_left_to_hyper() {
        let mut reader = Reader::new(16);
        assert!(matches!(
            reader.inspect(b"GET / HTTP/1.1\r\nX-Long: "),
            Verdict::Pass
        ));
        assert!(matches!(reader.inspect(&[b'a'; 64]), Verdict::Pass));
        assert_eq!(reader.framing, Framing::Opaque);
    }

    proptest! {
        /// However the bytes are cut into reads, the reader ends where the
        /// stream does, and a smuggling attempt behind valid requests is
        /// refused exactly at its head.
        #[test]
        fn framing_is_independent_of_how_reads_are_cut(cuts in prop::collection::vec(0usize..400, 0..12)) {
            prop_assert_eq!(follow(PIPELINE, &cuts), (None, Framing::Head));
            let mut smuggle = PIPELINE.to_vec();
            let bad = smuggle.len();
            smuggle.extend_from_slice(b"POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
            let (refused, _) = follow(&smuggle, &cuts);
            let (at, why) = refused.expect("refused");
            prop_assert_eq!(why, "both Content-Length and Transfer-Encoding");
            // Everything before the bad head is handed over, never the
            // whole bad head (hyper may hold its beginning, waiting).
            let head_len = smuggle[bad..].windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            prop_assert!(at < bad + head_len, "handed over {} of {}", at, bad + head_len);
        }
    }
}
