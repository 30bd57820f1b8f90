use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Wake;

use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

use super::*;

async fn pair() -> (Arc<TcpStream>, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let a = TcpStream::connect(l.local_addr().expect("addr"))
        .await
        .expect("connect");
    let (b, _) = l.accept().await.expect("accept");
    (Arc::new(a), b)
}

/// Counts how often the owner was woken.
#[derive(Default)]
struct Owner(AtomicUsize);

impl Wake for Owner {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn bufs(parts: &[&'static [u8]]) -> Bufs {
    parts.iter().map(|p| Bytes::from_static(p)).collect()
}

async fn read_exact(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut got = vec![0u8; n];
    s.read_exact(&mut got).await.expect("read");
    got
}

#[tokio::test]
async fn without_a_flusher_the_message_comes_back() {
    let (a, _b) = pair().await;
    let owner = Waker::from(Arc::new(Owner::default()));
    let mut msg = bufs(&[b"x"]);
    assert!(
        defer(&a, &mut msg, &owner).is_none(),
        "no flusher on this thread"
    );
    assert_eq!(&msg[0][..], b"x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_multi_thread_runtime_starts_no_flusher() {
    start();
    let (a, _b) = pair().await;
    let owner = Waker::from(Arc::new(Owner::default()));
    assert!(defer(&a, &mut bufs(&[b"x"]), &owner).is_none());
}

#[tokio::test]
async fn deferred_messages_leave_when_the_flusher_runs_in_order() {
    start();
    let (a, mut b) = pair().await;
    let (c, mut d) = pair().await;
    let owner = Arc::new(Owner::default());
    let waker = Waker::from(owner.clone());
    let first = defer(&a, &mut bufs(&[b"GET / HTTP/1.1\r\n", b"\r\n"]), &waker).expect("a flusher");
    let second = defer(&c, &mut bufs(&[b"second"]), &waker).expect("a flusher");
    // Nothing is sent until the flusher's turn comes.
    let first = first.outcome().expect_err("still queued");
    tokio::task::yield_now().await;
    let sent = first.outcome().expect("sent");
    assert!(sent.any && sent.rest.is_empty() && sent.error.is_none());
    let sent = second.outcome().expect("sent");
    assert!(sent.any && sent.rest.is_empty());
    assert_eq!(read_exact(&mut b, 18).await, b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(read_exact(&mut d, 6).await, b"second");
    // A complete send does not wake the owner.
    assert_eq!(owner.0.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_dropped_message_is_never_sent() {
    start();
    let (a, mut b) = pair().await;
    let waker = Waker::from(Arc::new(Owner::default()));
    drop(defer(&a, &mut bufs(&[b"cancelled"]), &waker).expect("a flusher"));
    tokio::task::yield_now().await;
    // What the peer reads first is what was written after the cancel.
    a.try_write(b"after").expect("write");
    assert_eq!(read_exact(&mut b, 5).await, b"after");
}

#[tokio::test]
async fn settle_takes_an_unsent_message_back_whole() {
    start();
    let (a, _b) = pair().await;
    let waker = Waker::from(Arc::new(Owner::default()));
    let p = defer(&a, &mut bufs(&[b"one", b"two"]), &waker).expect("a flusher");
    let sent = p.settle();
    assert!(!sent.any && sent.error.is_none());
    assert_eq!(sent.rest.len(), 2);
    tokio::task::yield_now().await;
    // The flusher found nothing to send: the socket is still writable from empty.
    a.try_write(b"z").expect("write");
}

#[tokio::test]
async fn what_a_full_socket_leaves_goes_back_to_the_owner_who_is_woken() {
    start();
    let (a, mut b) = pair().await;
    let owner = Arc::new(Owner::default());
    let waker = Waker::from(owner.clone());
    // Far more than a loopback socket's buffers take in one send.
    let big = Bytes::from(vec![7u8; 64 << 20]);
    let p = defer(&a, &mut std::iter::once(big).collect(), &waker).expect("a flusher");
    tokio::task::yield_now().await;
    let sent = p.outcome().expect("the flusher ran");
    assert!(sent.any, "some of it was sent");
    let rest: usize = sent.rest.iter().map(|b| b.len()).sum();
    assert!(rest > 0 && rest < 64 << 20, "rest {rest}");
    assert_eq!(owner.0.load(Ordering::SeqCst), 1, "the owner is woken");
    // The bytes sent and the rest add up to the message.
    let written = (64 << 20) - rest;
    assert_eq!(read_exact(&mut b, written).await, vec![7u8; written]);
}

#[test]
fn a_runtime_that_ends_takes_its_flusher_with_it() {
    let rt = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    };
    let first = rt();
    first.block_on(async {
        start();
        tokio::task::yield_now().await;
    });
    drop(first);
    // A later runtime on this thread has no flusher until it starts one.
    rt().block_on(async {
        let (a, _b) = pair().await;
        let waker = Waker::from(Arc::new(Owner::default()));
        assert!(defer(&a, &mut bufs(&[b"x"]), &waker).is_none());
        start();
        assert!(defer(&a, &mut bufs(&[b"x"]), &waker).is_some());
    });
}

fn slot_of(p: &Pending) -> (u32, u64) {
    let (_, index, generation) = p.0.as_ref().expect("a slot");
    (*index, *generation)
}

/// Messages handed over and not finished on this thread.
fn live() -> usize {
    TURN.with(|t| t.borrow().slots.as_ref().map_or(0, |s| s.lock().live()))
}

/// A message that went out whole frees its slot at once, before its owner looks
/// (an idle connection holds none), and the next message reuses it: a steady
/// stream of messages allocates no slots.
#[tokio::test]
async fn a_message_sent_whole_frees_its_slot_for_the_next() {
    start();
    let (a, mut b) = pair().await;
    let waker = Waker::from(Arc::new(Owner::default()));
    let first = defer(&a, &mut bufs(&[b"one"]), &waker).expect("a flusher");
    let (index, generation) = slot_of(&first);
    assert_eq!(live(), 1);
    tokio::task::yield_now().await;
    assert_eq!(
        live(),
        0,
        "freed by the flusher, the owner still holding its handle"
    );
    let second = defer(&a, &mut bufs(&[b"two"]), &waker).expect("a flusher");
    assert_eq!(
        slot_of(&second),
        (index, generation + 1),
        "the same slot, reused"
    );
    // The first owner's handle names the old generation: sent whole.
    let sent = first.outcome().expect("sent");
    assert!(sent.any && sent.rest.is_empty() && sent.error.is_none());
    assert_eq!(live(), 1, "the second message's slot is untouched");
    tokio::task::yield_now().await;
    let sent = second.outcome().expect("sent");
    assert!(sent.any && sent.rest.is_empty() && sent.error.is_none());
    assert_eq!(read_exact(&mut b, 6).await, b"onetwo");
    assert_eq!(live(), 0);
}

/// A message cancelled while queued frees its slot at once; the next message may
/// take it, and the flusher sends only that one.
#[tokio::test]
async fn a_cancelled_slot_is_reused_and_only_the_new_message_is_sent() {
    start();
    let (a, mut b) = pair().await;
    let waker = Waker::from(Arc::new(Owner::default()));
    let p = defer(&a, &mut bufs(&[b"cancelled"]), &waker).expect("a flusher");
    let (index, generation) = slot_of(&p);
    drop(p);
    assert_eq!(live(), 0);
    let next = defer(&a, &mut bufs(&[b"next"]), &waker).expect("a flusher");
    assert_eq!(slot_of(&next), (index, generation + 1));
    tokio::task::yield_now().await;
    assert!(next.outcome().expect("sent").rest.is_empty());
    a.try_write(b"!").expect("write");
    assert_eq!(read_exact(&mut b, 5).await, b"next!");
}

/// What the flusher could not send stays in the slot for its owner, who frees it
/// by taking it (or by dropping the handle).
#[tokio::test]
async fn a_partly_sent_message_is_kept_until_its_owner_takes_it() {
    start();
    let (a, _b) = pair().await;
    let waker = Waker::from(Arc::new(Owner::default()));
    let big = Bytes::from(vec![7u8; 64 << 20]);
    let p = defer(&a, &mut std::iter::once(big.clone()).collect(), &waker).expect("a flusher");
    tokio::task::yield_now().await;
    assert_eq!(live(), 1, "the rest waits for its owner");
    assert!(!p.outcome().expect("the flusher ran").rest.is_empty());
    assert_eq!(live(), 0);
    let (c, _d) = pair().await;
    let q = defer(&c, &mut std::iter::once(big).collect(), &waker).expect("a flusher");
    tokio::task::yield_now().await;
    assert_eq!(live(), 1);
    drop(q);
    assert_eq!(live(), 0);
}

/// After a burst of more messages in one turn than the table keeps, it lets go of
/// its entries once all are free, and a handle from before names no new message.
#[tokio::test]
async fn the_table_shrinks_after_a_burst_and_old_handles_stay_whole() {
    start();
    let (a, mut b) = pair().await;
    let waker = Waker::from(Arc::new(Owner::default()));
    let burst: Vec<Pending> = (0..KEEP + 44)
        .map(|_| defer(&a, &mut bufs(&[b"x"]), &waker).expect("a flusher"))
        .collect();
    let old = slot_of(&burst[0]);
    tokio::task::yield_now().await;
    assert_eq!(live(), 0);
    let entries = TURN.with(|t| {
        t.borrow()
            .slots
            .as_ref()
            .map_or(0, |s| s.lock().entries.len())
    });
    assert_eq!(entries, 0, "all free past {KEEP}: let go of");
    let next = defer(&a, &mut bufs(&[b"y"]), &waker).expect("a flusher");
    assert_eq!(slot_of(&next).0, old.0, "index 0 again");
    assert!(slot_of(&next).1 > old.1, "at a newer generation");
    for p in burst {
        let sent = p.outcome().expect("sent");
        assert!(sent.rest.is_empty() && sent.error.is_none());
    }
    tokio::task::yield_now().await;
    assert!(next.outcome().expect("sent").rest.is_empty());
    assert_eq!(read_exact(&mut b, KEEP + 45).await.len(), KEEP + 45);
}
