//! `switchyard events`: the event log listed (`GET /events`), or followed as
//! server-sent events (`GET /events?follow=true`), one line per event as it
//! arrives; with `--json`, one JSON object per line (the event's data).

use std::time::Duration;

use http_body_util::BodyExt;
use serde_json::Value;

use super::api::AdminClient;
use super::render::{self, Paint};
use super::{print, ClientError, Outcome};

pub(super) async fn run(
    client: &AdminClient,
    follow: bool,
    since: Option<u64>,
    json: bool,
    paint: Paint,
) -> Result<Outcome, ClientError> {
    let show = |event: &Value| {
        if json {
            print(&format!("{event}\n"))
        } else {
            print(&render::event(event, paint))
        }
    };
    if !follow {
        let path = match since {
            Some(id) => format!("/events?since={id}"),
            None => "/events".to_string(),
        };
        let body = client.get(&path).await?.into_ok()?;
        if let Some(missed @ 1..) = body["missed"].as_u64() {
            eprintln!("note: {missed} event(s) after the given id already left the log");
        }
        for event in body["events"].as_array().into_iter().flatten() {
            show(event)?;
        }
        return Ok(Outcome::Done);
    }

    let path = match since {
        Some(id) => format!("/events?follow=true&since={id}"),
        None => "/events?follow=true".to_string(),
    };
    let url = client.url(&path);
    let mut body = client.stream(&path).await?;
    let mut parser = Parser::default();
    loop {
        let frame = tokio::time::timeout(SILENCE, body.frame())
            .await
            .map_err(|_| ClientError::StreamSilent {
                url: url.clone(),
                after: SILENCE,
            })?;
        let Some(frame) = frame else {
            break;
        };
        let frame = frame.map_err(|e| ClientError::Request {
            url: url.clone(),
            source: e.into(),
        })?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        let messages = parser
            .push(data)
            .map_err(|TooLarge| ClientError::TooLarge {
                url: url.clone(),
                limit: "1 MiB (one event)",
            })?;
        for message in messages {
            match serde_json::from_str::<Value>(&message) {
                Ok(event) => show(&event)?,
                // Not an event the client understands: shown as it came.
                Err(_) => print(&format!("{message}\n"))?,
            }
        }
    }
    Err(ClientError::StreamEnded)
}

/// How long a followed stream may say nothing before the client gives up
/// on it: three of the server's keepalives
/// (`KEEPALIVE` in `src/admin/events.rs`, 15 s).
const SILENCE: Duration = Duration::from_secs(45);

/// The most a line, or the joined `data:` of one message, may hold.
const MAX_MESSAGE: usize = 1 << 20;

/// A line or a message past [`MAX_MESSAGE`].
#[derive(Debug, PartialEq, Eq)]
struct TooLarge;

/// Reads an event stream as its bytes arrive: lines end at `\n` (a `\r`
/// before it dropped), a blank line ends a message, whose `data:` lines
/// (joined by `\n`) are what [`Parser::push`] returns. Comments (`:`),
/// `id:`, `event:` and `retry:` lines carry nothing the client prints: the
/// JSON holds the id and the type.
#[derive(Default)]
struct Parser {
    /// The bytes of a line not yet ended.
    partial: Vec<u8>,
    /// The `data:` lines of the message being read.
    data: Vec<String>,
    /// Their joined length so far.
    data_len: usize,
}

impl Parser {
    fn push(&mut self, bytes: &[u8]) -> Result<Vec<String>, TooLarge> {
        let mut done = Vec::new();
        for &b in bytes {
            if b != b'\n' {
                if self.partial.len() >= MAX_MESSAGE {
                    return Err(TooLarge);
                }
                self.partial.push(b);
                continue;
            }
            let mut line = std::mem::take(&mut self.partial);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8_lossy(&line);
            if line.is_empty() {
                if !self.data.is_empty() {
                    done.push(std::mem::take(&mut self.data).join("\n"));
                }
                self.data_len = 0;
            } else if let Some(value) = line.strip_prefix("data:") {
                let value = value.strip_prefix(' ').unwrap_or(value);
                let joined = self.data_len + usize::from(!self.data.is_empty()) + value.len();
                if joined > MAX_MESSAGE {
                    return Err(TooLarge);
                }
                self.data_len = joined;
                self.data.push(value.to_string());
            }
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_cut_at_blank_lines_whatever_the_chunks() {
        let stream = b"retry: 1000\n\n: keepalive\n\nid: 5\nevent: switch\ndata: {\"id\":5}\n\nid: 6\r\ndata: {\"id\":6}\r\n\r\n";
        for split in 0..stream.len() {
            let mut p = Parser::default();
            let mut got = p.push(&stream[..split]).unwrap();
            got.extend(p.push(&stream[split..]).unwrap());
            assert_eq!(got, vec!["{\"id\":5}", "{\"id\":6}"], "split at {split}");
        }
    }

    #[test]
    fn a_line_or_a_message_past_1_mib_is_refused() {
        // One line that never ends.
        let mut p = Parser::default();
        let chunk = vec![b'x'; 64 << 10];
        let mut result = Ok(Vec::new());
        for _ in 0..17 {
            result = p.push(&chunk);
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(TooLarge));

        // Many short data lines of one message.
        let mut p = Parser::default();
        let line = format!("data: {}\n", "y".repeat(1000));
        let mut result = Ok(Vec::new());
        for _ in 0..1100 {
            result = p.push(line.as_bytes());
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(TooLarge));

        // Up to the cap is fine, and the count starts again per message.
        let mut p = Parser::default();
        let half = format!("data: {}\n\n", "z".repeat(MAX_MESSAGE / 2 + 1));
        for _ in 0..3 {
            assert_eq!(p.push(half.as_bytes()).unwrap().len(), 1);
        }
    }
}
