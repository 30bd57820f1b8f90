//! A request goes out with the body bytes at hand in the same write as its head
//! (issue #24): each write is recorded, so a head sent on its own fails these.

use std::collections::VecDeque;
use std::convert::Infallible;

use super::*;

/// A request body that yields what its script says, one step per poll.
struct Scripted(VecDeque<Step>);

enum Step {
    Data(Vec<u8>),
    Trailers(&'static str),
    /// Nothing at hand now (the task is not woken: the test polls again).
    Wait,
}

impl Body for Scripted {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut().0.pop_front() {
            None => Poll::Ready(None),
            Some(Step::Wait) => Poll::Pending,
            Some(Step::Data(d)) => Poll::Ready(Some(Ok(Frame::data(Bytes::from(d))))),
            Some(Step::Trailers(name)) => {
                let mut t = HeaderMap::new();
                t.insert(HeaderName::from_static(name), HeaderValue::from_static("1"));
                Poll::Ready(Some(Ok(Frame::trailers(t))))
            }
        }
    }
}

/// Records every write it is given: one entry per call, all bytes taken.
#[derive(Default)]
struct Recorder {
    writes: Vec<Vec<u8>>,
}

impl AsyncWrite for Recorder {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().writes.push(buf.to_vec());
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let one: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
        let n = one.len();
        self.get_mut().writes.push(one);
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl Sink for Recorder {
    fn plain(&self) -> Option<&Arc<TcpStream>> {
        None
    }
}

const HEAD: &[u8] = b"POST /up HTTP/1.1\r\nhost: b\r\n\r\n";

fn writer(framing: Out, steps: Vec<Step>) -> Writer<Scripted> {
    Writer {
        body: Scripted(steps.into()),
        framing,
        queue: smallvec![Bytes::from_static(HEAD)],
        body_done: false,
        touched: false,
        written: false,
        deferred: None,
        offered: false,
        send_timeout: None,
        stall: None,
        moved: false,
    }
}

fn poll(w: &mut Writer<Scripted>, sink: &mut Recorder) -> Poll<Result<(), UpstreamError>> {
    w.poll_out(sink, &mut Context::from_waker(Waker::noop()))
}

fn joined(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

#[test]
fn a_body_at_hand_goes_out_in_the_heads_write() {
    let mut w = writer(Out::Length(5), vec![Step::Data(b"hello".to_vec())]);
    let mut sink = Recorder::default();
    assert!(matches!(poll(&mut w, &mut sink), Poll::Ready(Ok(()))));
    assert_eq!(sink.writes, [joined(&[HEAD, b"hello"])]);
}

#[test]
fn a_chunked_body_at_hand_goes_out_whole_in_one_write() {
    let mut w = writer(
        Out::Chunked,
        vec![
            Step::Data(b"wiki".to_vec()),
            Step::Data(b"pedia".to_vec()),
            Step::Trailers("x-sum"),
        ],
    );
    let mut sink = Recorder::default();
    assert!(matches!(poll(&mut w, &mut sink), Poll::Ready(Ok(()))));
    assert_eq!(
        sink.writes,
        [joined(&[
            HEAD,
            b"4\r\nwiki\r\n5\r\npedia\r\n",
            b"0\r\nx-sum: 1\r\n\r\n"
        ])]
    );
}

/// What was read with the head goes with it; the rest follows as it comes.
#[test]
fn a_body_prefix_goes_with_the_head_and_the_rest_streams() {
    let mut w = writer(
        Out::Length(8),
        vec![
            Step::Data(b"abc".to_vec()),
            Step::Wait,
            Step::Data(b"defgh".to_vec()),
        ],
    );
    let mut sink = Recorder::default();
    assert!(poll(&mut w, &mut sink).is_pending());
    assert_eq!(sink.writes, [joined(&[HEAD, b"abc"])]);
    assert!(matches!(poll(&mut w, &mut sink), Poll::Ready(Ok(()))));
    assert_eq!(sink.writes.len(), 2);
    assert_eq!(sink.writes[1], b"defgh");
}

/// A body that arrives faster than it is written is gathered only so far: the
/// queue stays bounded, and every byte still goes out in order.
#[test]
fn gathering_a_large_body_at_hand_is_bounded() {
    let piece = 16 * 1024;
    let steps = (0..16u8)
        .map(|i| Step::Data(vec![b'a' + i; piece]))
        .collect();
    let mut w = writer(Out::Length(16 * piece as u64), steps);
    let mut sink = Recorder::default();
    assert!(matches!(poll(&mut w, &mut sink), Poll::Ready(Ok(()))));
    assert!(sink.writes.len() > 1, "{} write(s)", sink.writes.len());
    for write in &sink.writes {
        assert!(write.len() <= HEAD.len() + GATHER_BYTES, "{}", write.len());
    }
    let all: Vec<u8> = sink.writes.concat();
    let mut want = HEAD.to_vec();
    for i in 0..16u8 {
        want.extend(std::iter::repeat_n(b'a' + i, piece));
    }
    assert_eq!(all, want);
}

/// On a thread with a flusher, a whole small request is handed to it as one
/// message (head and body), not the head alone.
#[tokio::test]
async fn a_whole_small_request_is_one_message_for_the_flusher() {
    flush::start();
    let (tcp, mut server) = tcp_pair().await;
    let mut io = Io::Plain(Arc::new(tcp));
    let mut w = writer(Out::Length(5), vec![Step::Data(b"hello".to_vec())]);
    let first = poll_fn(|cx| Poll::Ready(w.poll_out(&mut io, cx))).await;
    assert!(first.is_pending(), "handed to the flusher");
    assert!(w.deferred.is_some() && w.body_done && w.queue.is_empty());
    // The flusher sends it at the end of the turn (and wakes the owner only if
    // the socket did not take all of it): the backend reads it whole.
    let mut got = vec![0u8; HEAD.len() + 5];
    within(server.stream.read_exact(&mut got))
        .await
        .expect("read");
    assert_eq!(got, joined(&[HEAD, b"hello"]));
    let done = poll_fn(|cx| Poll::Ready(w.poll_out(&mut io, cx))).await;
    assert!(matches!(done, Poll::Ready(Ok(()))));
}
