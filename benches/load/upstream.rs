//! The model server behind the load comparison (`benches/load/run.sh`): as
//! fast as a server can be, so the proxies are what the comparison measures.
//! Every answer is fixed; nothing is computed per request.
//!
//! - `POST` or `GET /v2/models/iris/infer`: a fixed Open Inference Protocol
//!   response (about 120 bytes, like the demo's), after reading the body.
//! - `GET /v2/health/ready`: 200, for switchyard's probes.
//! - `GET /sse?events=N&interval_ms=M`: `text/event-stream`, N events
//!   `data: {...}\n\n`, one every M ms (the first at once), each its own
//!   chunk, so a proxy that holds chunks back shows in the arrival times.
//!
//! HTTP/1.1 keep-alive and HTTP/2 cleartext on the same port (the accept
//! loop is `switchyard::server::serve`). One thread: `run.sh` pins it to the
//! load generator's CPU, where a second thread would only compete.
//!
//! `cargo run --release --example bench-upstream -- --name blue --listen 127.0.0.1:18001`

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Either, Full, Limited};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio::time::Interval;
use tokio_util::sync::CancellationToken;

/// Request bodies larger than this are refused (the bench sends about 200 bytes).
const MAX_BODY: usize = 1 << 20;
/// Bounds on `/sse` so a mistyped query cannot hold a connection for hours.
const MAX_EVENTS: u32 = 100_000;
const MAX_INTERVAL_MS: u64 = 60_000;
/// How long a stopping server lets open connections finish.
const DRAIN: Duration = Duration::from_secs(1);

#[derive(Parser)]
#[command(about = "Fixed-answer model server for benches/load/run.sh")]
struct Args {
    /// Names the server in its answers (`model_version`) and its log line.
    #[arg(long, default_value = "blue")]
    name: String,
    /// Address to listen on; repeat for several ports.
    #[arg(long, required = true)]
    listen: Vec<SocketAddr>,
}

/// What every connection shares: the prebuilt answer bodies.
#[derive(Clone)]
struct Answers {
    infer: Bytes,
}

type AnswerBody = Either<Full<Bytes>, EventStream>;

// === impl Answers ===

impl Answers {
    fn new(name: &str) -> Answers {
        let infer = format!(
            r#"{{"model_name":"iris","model_version":"{name}","outputs":[{{"name":"predict","datatype":"INT64","shape":[1],"data":[1]}}]}}"#
        );
        Answers {
            infer: Bytes::from(infer),
        }
    }

    async fn handle(self, req: Request<switchyard::server::RequestBody>) -> Response<AnswerBody> {
        match (req.method(), req.uri().path()) {
            (&Method::POST | &Method::GET, "/v2/models/iris/infer") => {
                // Read the whole body, as a model server must, so the
                // connection is clean for the next request.
                if Limited::new(req.into_body(), MAX_BODY)
                    .collect()
                    .await
                    .is_err()
                {
                    return fixed(StatusCode::BAD_REQUEST, Bytes::from_static(b"{}"));
                }
                fixed(StatusCode::OK, self.infer.clone())
            }
            (&Method::GET, "/v2/health/ready") => fixed(StatusCode::OK, Bytes::from_static(b"{}")),
            (&Method::GET, "/sse") => match EventStream::from_query(req.uri().query()) {
                Some(events) => {
                    let mut response = Response::new(Either::Right(events));
                    let headers = response.headers_mut();
                    headers.insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("text/event-stream"),
                    );
                    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
                    response
                }
                None => fixed(
                    StatusCode::BAD_REQUEST,
                    Bytes::from_static(br#"{"error":"expected /sse?events=N&interval_ms=M"}"#),
                ),
            },
            _ => fixed(StatusCode::NOT_FOUND, Bytes::from_static(b"{}")),
        }
    }
}

fn fixed(status: StatusCode, body: Bytes) -> Response<AnswerBody> {
    let mut response = Response::new(Either::Left(Full::new(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The `/sse` body: one data frame per tick, `events` frames in all.
struct EventStream {
    ticks: Interval,
    sent: u32,
    events: u32,
}

// === impl EventStream ===

impl EventStream {
    /// Reads `events=N&interval_ms=M` (both required); `None` when either is
    /// missing, not a number or out of bounds.
    fn from_query(query: Option<&str>) -> Option<EventStream> {
        let (mut events, mut interval_ms) = (None, None);
        for pair in query?.split('&') {
            match pair.split_once('=')? {
                ("events", v) => events = v.parse::<u32>().ok(),
                ("interval_ms", v) => interval_ms = v.parse::<u64>().ok(),
                _ => {}
            }
        }
        let (events, interval_ms) = (events?, interval_ms?);
        if events > MAX_EVENTS || interval_ms == 0 || interval_ms > MAX_INTERVAL_MS {
            return None;
        }
        // The default `Burst` keeps event i at i * interval from the start:
        // the client measures each arrival against exactly that schedule.
        Some(EventStream {
            ticks: tokio::time::interval(Duration::from_millis(interval_ms)),
            sent: 0,
            events,
        })
    }
}

impl Body for EventStream {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.sent >= this.events {
            return Poll::Ready(None);
        }
        ready!(this.ticks.poll_tick(cx));
        let event = format!(
            "data: {{\"event\":{},\"of\":{}}}\n\n",
            this.sent, this.events
        );
        this.sent += 1;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(event)))))
    }

    fn is_end_stream(&self) -> bool {
        self.sent >= self.events
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let answers = Answers::new(&args.name);
    let token = CancellationToken::new();
    let mut servers = JoinSet::new();
    for addr in &args.listen {
        let listener = TcpListener::bind(addr).await?;
        eprintln!(
            "bench-upstream {}: listening on {}",
            args.name,
            listener.local_addr()?
        );
        let answers = answers.clone();
        let make = move |_: &switchyard::server::Accepted| {
            let answers = answers.clone();
            hyper::service::service_fn(move |req| {
                let answers = answers.clone();
                Box::pin(async move { Ok::<_, Infallible>(answers.handle(req).await) })
            })
        };
        let listening = switchyard::server::Listening {
            name: "bench-upstream",
            tls: None,
            token: token.child_token(),
            drain: DRAIN,
            // Room for the memory run's 10,000 client connections beside
            // the proxies' pooled ones (run.sh raises the fd limit to 20,000).
            limits: switchyard::server::Limits {
                max_connections: 19_000,
                ..switchyard::server::Limits::default()
            },
            gauges: switchyard::server::ConnectionGauges::unregistered(),
        };
        servers.spawn(switchyard::server::serve_with(listener, make, listening));
    }
    stop_signal().await;
    token.cancel();
    while servers.join_next().await.is_some() {}
    Ok(())
}

/// Resolves on SIGTERM (what `run.sh` sends when it cleans up) or SIGINT.
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        // Without handlers the default action (exit) still stops the process.
        _ => std::future::pending().await,
    }
}
