//! Streamed response bodies: `GET /v1/events` (the TIME_WAIT lifecycle as NDJSON, the lines
//! `trace --timewait --json` writes) and any body fed line by line from another task.
//!
//! The owner broadcasts event batches and never waits: a reader that falls behind loses batches
//! in the broadcast channel, and its stream says how many lines it lost.

use std::{
    collections::HashMap,
    convert::Infallible,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use hyper::body::{Body, Frame};
use tokio::sync::{broadcast, mpsc};

use crate::{api::EventBatch, output::push_tw_json_line};

/// Chunks queued per streaming response; past this the producer waits (an event stream's
/// producer then lags behind the broadcast, which counts the loss).
pub const QUEUE: usize = 16;

/// A response body made of the chunks another task sends; it ends when the sender is dropped.
pub enum ChannelBody {
    Bounded(mpsc::Receiver<Bytes>),
    /// For a producer that must never wait for the client (a kill in progress).
    Unbounded(mpsc::UnboundedReceiver<Bytes>),
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let chunk = match &mut *self {
            Self::Bounded(rx) => rx.poll_recv(cx),
            Self::Unbounded(rx) => rx.poll_recv(cx),
        };
        chunk.map(|c| c.map(|b| Ok(Frame::data(b))))
    }
}

/// An `io::Write` whose bytes become body chunks (of about 16 KiB, or at each flush). A client
/// gone away does not fail the writer: the kill it was watching goes on and is audited.
pub struct ChunkWriter {
    tx: mpsc::UnboundedSender<Bytes>,
    buf: Vec<u8>,
}

impl ChunkWriter {
    pub fn new() -> (Self, ChannelBody) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self { tx, buf: Vec::new() }, ChannelBody::Unbounded(rx))
    }
}

impl std::io::Write for ChunkWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        if self.buf.len() >= 16 * 1024 {
            self.flush()?;
        }
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            let _ = self.tx.send(Bytes::from(std::mem::take(&mut self.buf)));
        }
        Ok(())
    }
}

impl Drop for ChunkWriter {
    fn drop(&mut self) {
        let _ = std::io::Write::flush(self);
    }
}

/// The line a stream writes where it had to drop `n` event batches (an API-only line, not in
/// `trace`): the broadcast channel counts batches, not the lines they would have made.
pub fn dropped_line(n: u64) -> Bytes {
    Bytes::from(format!("{{\"event\":\"tw_dropped\",\"batches\":{n},\"reason\":\"slow_reader\"}}\n"))
}

/// Identity fields (`NetnsIdentity::json_fragment`) by namespace cookie.
pub type Identities = HashMap<u64, Vec<u8>>;

/// NDJSON lines of one batch.
pub fn batch_lines(batch: &EventBatch, identities: &Identities) -> Bytes {
    let mut buf = Vec::with_capacity(batch.len() * 160);
    for ev in batch.iter() {
        let id = identities.get(&ev.key.netns_cookie).map_or(&[][..], Vec::as_slice);
        push_tw_json_line(&mut buf, ev, id);
    }
    Bytes::from(buf)
}

/// Forward `events` into a body until the client hangs up or the owner stops.
pub fn stream(mut events: broadcast::Receiver<EventBatch>, identities: Identities) -> ChannelBody {
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::spawn(async move {
        loop {
            let chunk = tokio::select! {
                // A client that hung up stops its stream now, not at the next event.
                _ = tx.closed() => return,
                r = events.recv() => match r {
                    Ok(batch) if batch.is_empty() => continue,
                    Ok(batch) => batch_lines(&batch, &identities),
                    Err(broadcast::error::RecvError::Lagged(n)) => dropped_line(n),
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            };
            if tx.send(chunk).await.is_err() {
                return;
            }
        }
    });
    ChannelBody::Bounded(rx)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use http_body_util::BodyExt;

    use super::*;
    use crate::{
        sock::SockKey,
        tw_event::{TwEvent, TwEventKind},
    };

    fn batch(n: u16) -> EventBatch {
        let key = SockKey {
            netns_cookie: 1,
            laddr: "10.0.0.1".parse().unwrap(),
            lport: n,
            raddr: "10.0.0.2".parse().unwrap(),
            rport: 80,
        };
        Arc::from(vec![TwEvent { ts_ns: 1, key, kind: TwEventKind::Expired }])
    }

    #[tokio::test]
    async fn lines_then_a_drop_count_for_a_slow_reader() {
        let (tx, rx) = broadcast::channel(4);
        let mut body = stream(rx, Identities::new());
        tx.send(batch(1)).unwrap();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&first).unwrap();
        assert_eq!((v["event"].as_str(), v["lport"].as_u64()), (Some("tw_expire"), Some(1)));
        // The reader stops reading; the sender never waits.
        for i in 0..200 {
            tx.send(batch(i)).unwrap();
        }
        let mut dropped = 0;
        let mut lines = 0;
        drop(tx);
        while let Some(f) = body.frame().await {
            for l in String::from_utf8(f.unwrap().into_data().unwrap().to_vec()).unwrap().lines() {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                if v["event"] == "tw_dropped" {
                    dropped += v["batches"].as_u64().unwrap();
                } else {
                    lines += 1;
                }
            }
        }
        assert_eq!(dropped + lines, 200, "every batch delivered or counted");
        assert!(dropped > 0);
    }

    #[tokio::test]
    async fn hang_up_ends_the_task() {
        let (tx, rx) = broadcast::channel::<EventBatch>(4);
        let body = stream(rx, Identities::new());
        assert_eq!(tx.receiver_count(), 1);
        drop(body);
        for _ in 0..100 {
            if tx.receiver_count() == 0 {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("the stream's receiver outlived its client");
    }
}
