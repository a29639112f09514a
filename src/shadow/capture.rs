//! A copy of a body as it streams past, for the shadow: the request body on
//! its way to the live pool, the live answer on its way to the client.
//!
//! The copy keeps the frames' `Bytes` (a reference count each, no memcpy)
//! up to a limit; beyond it the copy is given up and its memory freed at
//! once. It is handed over through a oneshot when the body ends. A body cut
//! off (client gone, upstream reset) drops the sender, which the mirror
//! reads as "incomplete".

use bytes::Bytes;
use http::StatusCode;
use tokio::sync::oneshot;

/// A complete copy: the status (answers only) and the body's chunks.
#[derive(Debug)]
pub struct Copied {
    pub status: Option<StatusCode>,
    pub chunks: Vec<Bytes>,
}

impl Copied {
    /// The body in one piece.
    pub fn body(&self) -> Bytes {
        match self.chunks.as_slice() {
            [] => Bytes::new(),
            [one] => one.clone(),
            many => many.concat().into(),
        }
    }
}

/// Why there is no copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// The body passed the limit.
    TooLarge,
}

/// What the mirror receives: the copy, the limit passed, or (sender
/// dropped) nothing because the body never completed.
pub type CopyReceiver = oneshot::Receiver<Result<Copied, Cut>>;

/// The copying end, ridden by a body.
#[derive(Debug)]
pub struct Capture {
    status: Option<StatusCode>,
    chunks: Vec<Bytes>,
    len: usize,
    limit: usize,
    /// `None` once the copy was handed over or given up.
    tx: Option<oneshot::Sender<Result<Copied, Cut>>>,
}

// === impl Capture ===

impl Capture {
    /// A copy of at most `limit` bytes of body; `status` for an answer.
    pub fn new(limit: usize, status: Option<StatusCode>) -> (Capture, CopyReceiver) {
        let (tx, rx) = oneshot::channel();
        let capture = Capture {
            status,
            chunks: Vec::new(),
            len: 0,
            limit,
            tx: Some(tx),
        };
        (capture, rx)
    }

    /// Copies one data frame's bytes.
    pub fn data(&mut self, bytes: &Bytes) {
        let Some(tx) = self.tx.take() else { return };
        self.len += bytes.len();
        if self.len > self.limit {
            self.chunks = Vec::new();
            let _ = tx.send(Err(Cut::TooLarge));
            return;
        }
        if !bytes.is_empty() {
            self.chunks.push(bytes.clone());
        }
        self.tx = Some(tx);
    }

    /// The body ended: hands the copy over. Later calls do nothing.
    pub fn finish(&mut self) {
        if let Some(tx) = self.tx.take() {
            let copied = Copied {
                status: self.status,
                chunks: std::mem::take(&mut self.chunks),
            };
            // The mirror may have given up already; nothing to do then.
            let _ = tx.send(Ok(copied));
        }
    }

    /// Whether the copy is still being made.
    pub fn is_open(&self) -> bool {
        self.tx.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finished_body_is_handed_over_whole() {
        let (mut c, mut rx) = Capture::new(10, Some(StatusCode::OK));
        c.data(&Bytes::from_static(b"abc"));
        c.data(&Bytes::new());
        c.data(&Bytes::from_static(b"defg"));
        assert!(rx.try_recv().is_err(), "not before the end");
        c.finish();
        c.finish();
        assert!(!c.is_open());
        let copied = rx.try_recv().unwrap().unwrap();
        assert_eq!(copied.status, Some(StatusCode::OK));
        assert_eq!(copied.body(), Bytes::from_static(b"abcdefg"));
    }

    #[test]
    fn a_body_past_the_limit_is_given_up() {
        let (mut c, mut rx) = Capture::new(4, None);
        c.data(&Bytes::from_static(b"abcd"));
        assert!(c.is_open(), "at the limit is within it");
        c.data(&Bytes::from_static(b"e"));
        assert!(!c.is_open());
        assert!(c.chunks.is_empty(), "memory freed at once");
        c.finish();
        assert_eq!(rx.try_recv().unwrap().unwrap_err(), Cut::TooLarge);
    }

    #[test]
    fn a_body_cut_off_is_incomplete() {
        let (mut c, mut rx) = Capture::new(4, None);
        c.data(&Bytes::from_static(b"ab"));
        drop(c);
        assert!(matches!(
            rx.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        ));
    }
}
