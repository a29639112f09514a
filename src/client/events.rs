//! `switchyard events`: the event log listed (`GET /events`), or followed as
//! server-sent events (`GET /events?follow=true`), one line per event as it
//! arrives; with `--json`, one JSON object per line (the event's data).

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
    let mut body = client.stream(&path).await?;
    let mut parser = Parser::default();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ClientError::Request {
            url: path.clone(),
            source: e.into(),
        })?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        for message in parser.push(data) {
            match serde_json::from_str::<Value>(&message) {
                Ok(event) => show(&event)?,
                // Not an event the client understands: shown as it came.
                Err(_) => print(&format!("{message}\n"))?,
            }
        }
    }
    Err(ClientError::StreamEnded)
}

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
}

impl Parser {
    fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut done = Vec::new();
        for &b in bytes {
            if b != b'\n' {
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
            } else if let Some(value) = line.strip_prefix("data:") {
                self.data
                    .push(value.strip_prefix(' ').unwrap_or(value).to_string());
            }
        }
        done
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
            let mut got = p.push(&stream[..split]);
            got.extend(p.push(&stream[split..]));
            assert_eq!(got, vec!["{\"id\":5}", "{\"id\":6}"], "split at {split}");
        }
    }
}
