//! A gRPC call's request body kept for a replay (`retries.on_grpc_status`).
//!
//! The body is not awaited whole before it is forwarded: a client- or
//! bidi-streaming call would wait on an answer that waits on it. Instead a
//! [`Tee`] keeps each data frame as it passes (a `Bytes` handle, not a copy), up
//! to `retries.replay_buffer_bytes`. A call can be replayed only when its body
//! ended within that bound: past it the copy is dropped, and a body that broke
//! off or carried trailers (gRPC clients send none) is not kept either. Only
//! calls the opt-in applies to are wrapped; every other request's body goes out
//! as it came.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use parking_lot::Mutex;
use smallvec::SmallVec;

use super::body::ReqBody;

/// What is kept of a request body so far.
enum Kept {
    /// Still arriving: the data frames so far, `len` bytes together.
    Filling {
        chunks: SmallVec<[Bytes; 2]>,
        len: usize,
        limit: usize,
    },
    /// Ended; all of it is here.
    Whole(SmallVec<[Bytes; 2]>),
    /// Past the bound, broken off, or with trailers: cannot be replayed.
    Lost,
}

impl Kept {
    fn push(&mut self, data: &Bytes) {
        if let Kept::Filling { chunks, len, limit } = self {
            *len = len.saturating_add(data.len());
            if *len > *limit {
                *self = Kept::Lost;
            } else if !data.is_empty() {
                chunks.push(data.clone());
            }
        }
    }

    fn ended(&mut self) {
        if let Kept::Filling { chunks, .. } = self {
            *self = Kept::Whole(std::mem::take(chunks));
        }
    }
}

/// The kept body of one request, shared with the [`Tee`] that fills it.
pub(super) struct Replay(Arc<Mutex<Kept>>);

impl Replay {
    /// Wraps `body` so that up to `limit` bytes of it are kept as it is sent.
    pub fn keep(body: ReqBody, limit: usize) -> (Replay, ReqBody) {
        if body.is_end_stream() {
            let kept = Kept::Whole(SmallVec::new());
            return (Replay(Arc::new(Mutex::new(kept))), body);
        }
        let (replay, tee) = tee(body, limit);
        (replay, ReqBody::Teed(Box::new(tee)))
    }

    /// The body to send again, when all of it was received and kept (the chunks
    /// are joined once, on the first replay).
    pub fn body(&self) -> Option<ReqBody> {
        let mut kept = self.0.lock();
        let Kept::Whole(chunks) = &mut *kept else {
            return None;
        };
        let whole = match chunks.len() {
            0 => return Some(ReqBody::Empty),
            1 => chunks[0].clone(),
            _ => {
                let mut joined = BytesMut::with_capacity(chunks.iter().map(Bytes::len).sum());
                for c in chunks.iter() {
                    joined.extend_from_slice(c);
                }
                let joined = joined.freeze();
                *chunks = SmallVec::from_iter([joined.clone()]);
                joined
            }
        };
        Some(ReqBody::Full(Some(whole)))
    }
}

impl Drop for Replay {
    /// The call's fate is settled: what the tee still holds, or would keep of an
    /// upload still streaming, is let go.
    fn drop(&mut self) {
        *self.0.lock() = Kept::Lost;
    }
}

/// `inner`, keeping up to `limit` bytes of it as it is read.
fn tee<B>(inner: B, limit: usize) -> (Replay, Tee<B>) {
    let kept = Arc::new(Mutex::new(Kept::Filling {
        chunks: SmallVec::new(),
        len: 0,
        limit,
    }));
    let tee = Tee {
        inner,
        kept: kept.clone(),
    };
    (Replay(kept), tee)
}

/// A request body on its way to a backend that keeps what passes (see the
/// module docs).
pub struct Tee<B = ReqBody> {
    inner: B,
    kept: Arc<Mutex<Kept>>,
}

impl<B: Body<Data = Bytes> + Unpin> Body for Tee<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                let mut kept = self.kept.lock();
                match frame.data_ref() {
                    Some(data) => kept.push(data),
                    None => *kept = Kept::Lost,
                }
                // Marked before the last frame goes out: the backend cannot
                // answer the whole call before the body is known whole.
                if self.inner.is_end_stream() {
                    kept.ended();
                }
            }
            Poll::Ready(Some(Err(_))) => *self.kept.lock() = Kept::Lost,
            Poll::Ready(None) => self.kept.lock().ended(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// A client's body of these frames, teed.
    fn teed(
        chunks: &[&'static [u8]],
        limit: usize,
    ) -> (
        Replay,
        Tee<impl Body<Data = Bytes, Error = std::io::Error> + Unpin>,
    ) {
        let frames: Vec<_> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c))))
            .collect();
        tee(
            http_body_util::StreamBody::new(futures_util::stream::iter(frames)),
            limit,
        )
    }

    async fn drain(body: impl Body<Data = Bytes, Error: std::fmt::Debug>) -> Bytes {
        body.collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn a_body_within_the_bound_is_kept_whole_and_joined() {
        let (replay, body) = teed(&[b"ab", b"cd", b"e"], 5);
        assert!(replay.body().is_none(), "not replayable before it ended");
        assert_eq!(drain(body).await, "abcde");
        for _ in 0..2 {
            assert_eq!(drain(replay.body().unwrap()).await, "abcde");
        }
    }

    #[tokio::test]
    async fn a_body_past_the_bound_is_dropped() {
        let (replay, body) = teed(&[b"abc", b"def"], 5);
        assert_eq!(drain(body).await, "abcdef", "still forwarded whole");
        assert!(replay.body().is_none());
    }

    #[tokio::test]
    async fn a_body_not_read_to_its_end_is_not_replayable() {
        let (replay, mut body) = teed(&[b"ab", b"cd"], 100);
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.data_ref().unwrap(), "ab");
        drop(body);
        assert!(replay.body().is_none());
    }

    #[tokio::test]
    async fn the_tee_lets_go_once_the_call_is_settled() {
        let (replay, mut body) = teed(&[b"ab", b"cd"], 100);
        body.frame().await.unwrap().unwrap();
        let kept = replay.0.clone();
        drop(replay);
        assert_eq!(drain(body).await, "cd", "the rest still streams");
        assert!(matches!(*kept.lock(), Kept::Lost));
    }

    #[tokio::test]
    async fn an_empty_body_replays_empty() {
        let (replay, body) = Replay::keep(ReqBody::Empty, 0);
        assert!(matches!(body, ReqBody::Empty));
        assert!(replay.body().unwrap().is_end_stream());
    }
}
