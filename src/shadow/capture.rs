//! A copy of a body as it streams past, for the shadow: the request body on
//! its way to the live pool, the live answer on its way to the client.
//!
//! The copy is made into a buffer of its own, up to a limit: keeping the
//! frames' `Bytes` instead would pin hyper's whole read buffers, so the
//! memory held would not be bounded by the limit. Beyond the limit, or once
//! the mirror has gone, the copy is given up and its memory freed at once.
//! It is handed over through a oneshot when the body ends. A body cut off
//! (client gone, upstream reset) drops the sender, which the mirror reads
//! as "incomplete".

use bytes::{Bytes, BytesMut};
use http::StatusCode;
use tokio::sync::oneshot;

/// A complete copy: the status (answers only) and the body.
#[derive(Debug)]
pub struct Copied {
    pub status: Option<StatusCode>,
    pub body: Bytes,
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
    copy: BytesMut,
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
            copy: BytesMut::new(),
            limit,
            tx: Some(tx),
        };
        (capture, rx)
    }

    /// Copies one data frame's bytes.
    pub fn data(&mut self, bytes: &[u8]) {
        let Some(tx) = self.tx.take() else { return };
        if tx.is_closed() {
            // The mirror has gone: nobody will read the copy.
            self.copy = BytesMut::new();
            return;
        }
        if self.copy.len() + bytes.len() > self.limit {
            self.copy = BytesMut::new();
            let _ = tx.send(Err(Cut::TooLarge));
            return;
        }
        self.copy.extend_from_slice(bytes);
        self.tx = Some(tx);
    }

    /// The body ended: hands the copy over. Later calls do nothing.
    pub fn finish(&mut self) {
        if let Some(tx) = self.tx.take() {
            let copied = Copied {
                status: self.status,
                body: std::mem::take(&mut self.copy).freeze(),
            };
            // The mirror may have given up already; nothing to do then.
            let _ = tx.send(Ok(copied));
        }
    }

    /// Whether the copy is still being made.
    #[cfg(test)]
    fn is_open(&self) -> bool {
        self.tx.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finished_body_is_handed_over_whole() {
        let (mut c, mut rx) = Capture::new(10, Some(StatusCode::OK));
        c.data(b"abc");
        c.data(b"");
        c.data(b"defg");
        assert!(rx.try_recv().is_err(), "not before the end");
        c.finish();
        c.finish();
        assert!(!c.is_open());
        let copied = rx.try_recv().unwrap().unwrap();
        assert_eq!(copied.status, Some(StatusCode::OK));
        assert_eq!(copied.body, Bytes::from_static(b"abcdefg"));
    }

    #[test]
    fn a_body_past_the_limit_is_given_up() {
        let (mut c, mut rx) = Capture::new(4, None);
        c.data(b"abcd");
        assert!(c.is_open(), "at the limit is within it");
        c.data(b"e");
        assert!(!c.is_open());
        assert_eq!(c.copy.capacity(), 0, "memory freed at once");
        c.finish();
        assert_eq!(rx.try_recv().unwrap().unwrap_err(), Cut::TooLarge);
    }

    #[test]
    fn a_copy_nobody_waits_for_is_given_up() {
        let (mut c, rx) = Capture::new(1024, None);
        c.data(b"ab");
        drop(rx);
        c.data(b"cd");
        assert!(!c.is_open());
        assert_eq!(c.copy.capacity(), 0);
    }

    #[test]
    fn a_body_cut_off_is_incomplete() {
        let (mut c, mut rx) = Capture::new(4, None);
        c.data(b"ab");
        drop(c);
        assert!(matches!(
            rx.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        ));
    }
}
