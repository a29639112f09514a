//! Streaming figures of one upstream response, taken as its body passes to
//! the client: the time to its first byte (for an LLM behind an OpenAI-style
//! API, the time to first token) and, for `text/event-stream`, each
//! server-sent event and the gap since the one before (token cadence).
//!
//! Cost on the request path: a flag test per frame, and one clock read for
//! the first frame. Only event streams are scanned, a byte at a time with a
//! two-flag state that carries across frames (an event may end in a later
//! frame than it started), and read the clock once per frame that ends an
//! event.

use tokio::time::Instant;

use crate::metrics::PoolMetrics;

/// What is measured of one response.
pub struct Figures {
    started: Instant,
    first_byte_seen: bool,
    /// For `text/event-stream` responses.
    events: Option<EventScan>,
}

impl Figures {
    /// For a response to a request that started at `started`; `event_stream`
    /// when its content type is `text/event-stream`.
    pub fn new(started: Instant, event_stream: bool) -> Figures {
        Figures {
            started,
            first_byte_seen: false,
            events: event_stream.then(EventScan::default),
        }
    }

    /// A data frame is on its way to the client.
    pub fn data(&mut self, data: &[u8], metrics: &PoolMetrics) {
        if data.is_empty() {
            return;
        }
        let mut now = None;
        if !self.first_byte_seen {
            self.first_byte_seen = true;
            let at = *now.get_or_insert_with(Instant::now);
            metrics
                .first_byte
                .observe(at.duration_since(self.started).as_secs_f64());
        }
        if let Some(scan) = &mut self.events {
            let ended = scan.feed(data);
            if ended > 0 {
                let at = *now.get_or_insert_with(Instant::now);
                metrics.stream_events.inc_by(ended);
                if let Some(last) = scan.last_event {
                    metrics
                        .stream_event_gap
                        .observe(at.duration_since(last).as_secs_f64());
                }
                // Events ended in the same frame reach the client together.
                for _ in 1..ended {
                    metrics.stream_event_gap.observe(0.0);
                }
                scan.last_event = Some(at);
            }
        }
    }

    /// The body ended: a response without a byte of body had its "first
    /// byte" when it was complete.
    pub fn end(&mut self, metrics: &PoolMetrics) {
        if !self.first_byte_seen {
            self.first_byte_seen = true;
            metrics
                .first_byte
                .observe(self.started.elapsed().as_secs_f64());
        }
    }
}

/// Finds where server-sent events end: at a blank line after at least one
/// field line. Comment lines (`: keep-alive`) are not events. `\r\n` line
/// ends count as `\n`.
struct EventScan {
    /// The next byte starts a line.
    line_start: bool,
    /// The event being read has a field line.
    has_field: bool,
    last_event: Option<Instant>,
}

impl Default for EventScan {
    fn default() -> EventScan {
        EventScan {
            // A stream starts at the start of a line.
            line_start: true,
            has_field: false,
            last_event: None,
        }
    }
}

impl EventScan {
    /// Feeds bytes; returns how many events they ended.
    fn feed(&mut self, data: &[u8]) -> u64 {
        let mut ended = 0;
        for &b in data {
            if b == b'\r' {
                continue;
            }
            if self.line_start {
                if b == b'\n' {
                    if self.has_field {
                        ended += 1;
                        self.has_field = false;
                    }
                    continue;
                }
                self.line_start = false;
                // A comment line (`:`) is no field.
                self.has_field |= b != b':';
            } else if b == b'\n' {
                self.line_start = true;
            }
        }
        ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(chunks: &[&str]) -> Vec<u64> {
        let mut scan = EventScan::default();
        chunks.iter().map(|c| scan.feed(c.as_bytes())).collect()
    }

    #[test]
    fn an_event_ends_at_a_blank_line() {
        assert_eq!(count(&["data: a\n\n"]), [1]);
        assert_eq!(count(&["data: a\n\ndata: b\n\n"]), [2]);
        assert_eq!(count(&["event: token\ndata: a\nid: 1\n\n"]), [1]);
    }

    #[test]
    fn an_event_split_across_frames_is_counted_where_it_ends() {
        assert_eq!(
            count(&["data: a", "\n", "\n", "data: b\n", "\n"]),
            [0, 0, 1, 0, 1]
        );
        assert_eq!(count(&["da", "ta: a\r\n\r", "\n"]), [0, 0, 1]);
    }

    #[test]
    fn crlf_line_ends_work_like_lf() {
        assert_eq!(count(&["data: a\r\n\r\ndata: b\r\n\r\n"]), [2]);
    }

    #[test]
    fn comments_and_extra_blank_lines_are_not_events() {
        assert_eq!(count(&[": keep-alive\n\n"]), [0]);
        assert_eq!(count(&["\n\n\n"]), [0]);
        assert_eq!(count(&["data: a\n\n\n\n: ping\n\ndata: b\n\n"]), [2]);
    }
}
