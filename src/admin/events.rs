//! `GET /events`: the event log as one JSON document, or followed as
//! server-sent events (`?follow=true`) that resume after `Last-Event-ID`.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{AdminError, AdminResponse};
use crate::events::{Event, Events, CAPACITY};

/// How often an idle stream sends a comment line, so intermediaries keep it
/// open and a client that went away is noticed.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// The events after `since`, newest last.
pub(super) fn list(events: &Events, since: u64, limit: usize) -> Value {
    let read = events.since(since, limit);
    let listed: Vec<&Event> = read.events.iter().map(|e| &**e).collect();
    json!({
        "events": listed,
        // Events after `since` that the log had already dropped.
        "missed": read.missed,
        // The watch is set just after the ring: never below the last listed.
        "newest_id": events.newest().max(listed.last().map_or(0, |e| e.id)),
    })
}

/// The id an `EventSource` reconnecting sends, if any.
pub(super) fn last_event_id(headers: &HeaderMap) -> Result<Option<u64>, AdminError> {
    let Some(value) = headers.get("last-event-id") else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .map(Some)
        .ok_or_else(|| {
            AdminError::BadQuery(format!(
                "Last-Event-ID is {value:?}; expected the id of an event"
            ))
        })
}

/// The event stream: the events after `since` (none if `None`: only what
/// happens from now on), then each new one as it is recorded, until the
/// client goes away or `closing` is cancelled. For `HEAD`, the headers only.
pub(super) fn follow(
    events: Events,
    since: Option<u64>,
    head: bool,
    closing: CancellationToken,
) -> AdminResponse {
    // Where to start is fixed now, before the response goes out: whatever
    // is recorded after the client sees the headers is delivered.
    let after = since.unwrap_or_else(|| events.newest());
    let body = if head {
        // The headers are the whole answer: nothing to feed.
        http_body_util::Empty::new().boxed_unsync()
    } else {
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(feed(events, after, tx, closing));
        EventStream { rx }.boxed_unsync()
    };
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// Copies events from the log into the stream. Reads the log itself on each
/// wake-up, so a burst of events is never lost to a full channel: the
/// stream only falls behind, and the log holds the rest. Every wait also
/// watches `closing`, so a client that stopped reading cannot hold the
/// drain open.
async fn feed(events: Events, mut after: u64, tx: mpsc::Sender<Bytes>, closing: CancellationToken) {
    let send = |bytes: Bytes| {
        let (tx, closing) = (&tx, &closing);
        async move {
            tokio::select! {
                biased;
                () = closing.cancelled() => false,
                sent = tx.send(bytes) => sent.is_ok(),
            }
        }
    };
    let mut newest = events.subscribe();
    let mut keepalive = tokio::time::interval(KEEPALIVE);
    keepalive.reset();
    if !send(Bytes::from_static(b"retry: 1000\n\n")).await {
        return;
    }
    loop {
        // Seen before reading: an event recorded after this is a change.
        newest.borrow_and_update();
        let read = events.since(after, CAPACITY);
        if read.missed > 0 {
            let note = format!(
                ": {} event(s) left the log before they could be sent\n\n",
                read.missed
            );
            if !send(Bytes::from(note)).await {
                return;
            }
        }
        for event in read.events {
            after = event.id;
            if !send(frame(&event)).await {
                return;
            }
        }
        tokio::select! {
            biased;
            () = closing.cancelled() => return,
            changed = newest.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = keepalive.tick() => {
                if !send(Bytes::from_static(b": keepalive\n\n")).await {
                    return;
                }
            }
        }
    }
}

/// One event as an SSE message: `id`, `event` (its type) and `data` (its JSON).
fn frame(event: &Event) -> Bytes {
    let data = serde_json::to_value(event).unwrap_or(Value::Null);
    let kind = data["type"].as_str().unwrap_or("event").to_string();
    // Compact JSON holds no newline, so it is one `data:` line.
    Bytes::from(format!("id: {}\nevent: {kind}\ndata: {data}\n\n", event.id))
}

/// The response body of a followed stream.
struct EventStream {
    rx: mpsc::Receiver<Bytes>,
}

impl Body for EventStream {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|bytes| Ok(Frame::data(bytes))))
    }
}
