//! Socket reads that do not end in a wasted `EAGAIN`, buffer-list writes, and the
//! acceptor whose connections are not registered with the reactor until they wait.
//!
//! tokio marks a socket readable when epoll says so and only forgets it when a
//! read fails with `WouldBlock`, so every wait for the next message costs one read
//! that returns nothing. But a TCP read that returns less than the space offered
//! has emptied the socket's receive queue: nothing is left to read until new data
//! arrives, and new data raises a fresh (edge-triggered) event. These reads clear
//! the readiness themselves in that case, so the next wait goes straight to epoll
//! (HAProxy does the same: two receive calls per proxied request where we made
//! three). Safe against the races: the clearing is tied to the readiness event seen
//! before the read, so an event that arrives later is never lost, and a peer's
//! close (`READ_CLOSED`) is never cleared.

use std::io;
use std::task::{Context, Poll, ready};

use bytes::BytesMut;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Reads into `buf`'s spare capacity (reserve first); `WouldBlock` when nothing is
/// there. A short read also forgets the socket's readiness.
pub fn try_read(io: &TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    let space = buf.capacity() - buf.len();
    let mut got = 0;
    let r = io.try_io(Interest::READABLE, || {
        let n = io.try_read_buf(&mut *buf)?;
        got = n;
        if n > 0 && n < space {
            Err(io::ErrorKind::WouldBlock.into())
        } else {
            Ok(n)
        }
    });
    match r {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => Ok(got),
        r => r,
    }
}

/// [`try_read`], waiting for readiness.
pub fn poll_read(
    io: &TcpStream,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    loop {
        ready!(io.poll_read_ready(cx))?;
        match try_read(io, buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            r => return Poll::Ready(r),
        }
    }
}

/// Writes as much of `bufs` as the socket takes now, in order: one `send` for a
/// single buffer, a vectored write for several. `WouldBlock` when it takes nothing.
pub fn try_write_bufs(io: &TcpStream, bufs: &[bytes::Bytes]) -> io::Result<usize> {
    if let [one] = bufs {
        return io.try_write(one);
    }
    let slices: smallvec::SmallVec<[io::IoSlice<'_>; 6]> =
        bufs.iter().map(|b| io::IoSlice::new(b)).collect();
    io.try_write_vectored(&slices)
}

/// [`try_write_bufs`] on a socket not registered with the reactor (see
/// [`Acceptor`]): `WouldBlock` when it takes nothing.
pub fn write_bufs_plain(io: &std::net::TcpStream, bufs: &[bytes::Bytes]) -> io::Result<usize> {
    use std::io::Write;
    let mut io = io;
    if let [one] = bufs {
        return io.write(one);
    }
    let slices: smallvec::SmallVec<[io::IoSlice<'_>; 6]> =
        bufs.iter().map(|b| io::IoSlice::new(b)).collect();
    io.write_vectored(&slices)
}

/// Reads what a socket not registered with the reactor has, into `buf` (up to
/// `max` bytes): through a scratch area of the thread's, as `BytesMut`'s spare room
/// cannot be handed to `read` without `unsafe`; the copy is the bytes read, not the
/// room offered. `WouldBlock` when nothing is there yet.
pub fn read_plain(io: &std::net::TcpStream, buf: &mut BytesMut, max: usize) -> io::Result<usize> {
    use std::cell::RefCell;
    use std::io::Read;
    thread_local! {
        static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }
    SCRATCH.with(|s| {
        let mut s = s.try_borrow_mut().map_err(|_| io::ErrorKind::WouldBlock)?;
        if s.len() < max {
            s.resize(max, 0);
        }
        let mut io = io;
        let n = io.read(&mut s[..max])?;
        buf.extend_from_slice(&s[..n]);
        Ok(n)
    })
}

/// A listening socket whose connections come out as plain (non-blocking) std
/// sockets, not registered with the reactor: a connection whose request is already
/// there and whose answer goes out at once is served and closed without ever
/// entering epoll (no `epoll_ctl` to add it and none to remove it: what HAProxy
/// does, and two of the ten system calls a `Connection: close` request cost). The
/// server registers the socket as soon as it has to wait on it.
pub struct Acceptor(tokio::io::unix::AsyncFd<mio::net::TcpListener>);

impl Acceptor {
    /// Takes over a listening socket of the calling runtime's.
    #[allow(
        deprecated,
        reason = "deprecated as unsound for a `T` that may close its fd while registered; \
                  a mio listener owns its fd and the AsyncFd owns it, and the safe \
                  replacement is an `unsafe fn` (this workspace forbids `unsafe`)"
    )]
    pub fn new(listener: tokio::net::TcpListener) -> io::Result<Self> {
        let l = mio::net::TcpListener::from_std(listener.into_std()?);
        tokio::io::unix::AsyncFd::with_interest(l, Interest::READABLE).map(Self)
    }

    /// The next connection: non-blocking, close-on-exec (`accept4`).
    pub async fn accept(&self) -> io::Result<(std::net::TcpStream, std::net::SocketAddr)> {
        loop {
            let mut ready = self.0.readable().await?;
            match ready.try_io(|l| l.get_ref().accept()) {
                Ok(r) => return r.map(|(s, a)| (std::net::TcpStream::from(s), a)),
                Err(_would_block) => continue,
            }
        }
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.0.get_ref().local_addr()
    }
}

/// Drops the first `n` bytes of a write queue (what the socket accepted).
pub fn consume<A: smallvec::Array<Item = bytes::Bytes>>(
    queue: &mut smallvec::SmallVec<A>,
    mut n: usize,
) {
    while n > 0 {
        let Some(first) = queue.first_mut() else {
            return;
        };
        if n >= first.len() {
            n -= first.len();
            queue.remove(0);
        } else {
            let _ = first.split_to(n);
            n = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    use super::*;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let (c, s) = tokio::join!(TcpStream::connect(addr), l.accept());
        (s.expect("accept").0, c.expect("connect"))
    }

    async fn read(io: &TcpStream, buf: &mut BytesMut) -> usize {
        buf.reserve(4096);
        tokio::time::timeout(
            Duration::from_secs(5),
            std::future::poll_fn(|cx| poll_read(io, cx, buf)),
        )
        .await
        .expect("data in time")
        .expect("read")
    }

    /// After a short read the socket waits for epoll, and data (or a close) that
    /// comes later is still seen: a lost wake-up would time out here.
    #[tokio::test]
    async fn a_short_read_does_not_lose_what_comes_next() {
        let (server, mut client) = pair().await;
        let mut buf = BytesMut::new();
        for round in 0..50u32 {
            let msg = format!("message {round}");
            client.write_all(msg.as_bytes()).await.expect("write");
            let mut got = 0;
            while got < msg.len() {
                got += read(&server, &mut buf).await;
            }
            assert_eq!(&buf.split()[..], msg.as_bytes());
            // Drained: no data now, and no system call needed to learn it.
            assert_eq!(
                try_read(&server, &mut buf).map_err(|e| e.kind()),
                Err(io::ErrorKind::WouldBlock)
            );
        }
        client.write_all(b"last").await.expect("write");
        drop(client);
        let mut got = 0;
        while got < 4 {
            got += read(&server, &mut buf).await;
        }
        assert_eq!(read(&server, &mut buf).await, 0, "the close is seen");
    }

    /// A read that fills the space offered leaves the rest for the next read.
    #[tokio::test]
    async fn a_full_read_keeps_the_socket_readable() {
        let (server, mut client) = pair().await;
        client.write_all(&[7u8; 10_000]).await.expect("write");
        let mut buf = BytesMut::with_capacity(16);
        let mut total = 0;
        while total < 10_000 {
            buf.clear();
            buf.reserve(16);
            total += read(&server, &mut buf).await;
        }
        assert_eq!(total, 10_000);
    }
}
