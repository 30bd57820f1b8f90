//! Sends held back to the end of the scheduler's turn, so one worker's writes leave
//! in a burst (HAProxy's loop runs every receive before it sends, for the same reason).
//!
//! With one worker, tokio runs the tasks woken by one epoll batch one after the other
//! and each used to write its message as soon as it had it: the writes left a few
//! microseconds apart, a peer that keeps up (a backend, a load generator) fell asleep
//! between two of them, and nearly every send paid for waking it (the wake-up is
//! charged to the sender's system call). A task whose whole message is ready hands it
//! to this thread's flusher instead; the flusher is woken once, runs after the tasks
//! already queued in this turn, and sends everything back to back.
//!
//! Only on a thread that runs a flusher ([`start`] spawns one on a current-thread
//! runtime); anywhere else [`defer`] leaves the message with the caller, who writes
//! it itself. The owner keeps a [`Pending`]: it says what the flusher sent, hands
//! back what the socket did not take (the owner writes the rest the usual way,
//! waiting for writability), and dropping it before the flusher ran cancels the send.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::sync::Arc;
use std::task::{Poll, Waker};

use bytes::Bytes;
use parking_lot::Mutex;
use smallvec::SmallVec;
use tokio::net::TcpStream;
use tokio::runtime::{Handle, RuntimeFlavor};

/// A message: buffers written in order.
pub type Bufs = SmallVec<[Bytes; 4]>;

thread_local! {
    static TURN: RefCell<Turn> = const {
        RefCell::new(Turn { flusher: None, queued: Vec::new(), spare: Vec::new() })
    };
}

/// This thread's flusher and the sends waiting for it.
struct Turn {
    flusher: Option<Waker>,
    queued: Vec<Arc<Slot>>,
    /// Slots whose message is over, kept for the next ones (a hand-over then
    /// allocates nothing).
    spare: Vec<Arc<Slot>>,
}

/// Most slots kept for reuse per thread (about the messages one turn hands over).
const SPARE_MAX: usize = 256;

struct Slot(Mutex<State>);

enum State {
    Queued {
        io: Arc<TcpStream>,
        bufs: Bufs,
        owner: Waker,
    },
    Sent(Sent),
    /// The outcome was taken, or the owner gave up before the flusher ran.
    Over,
}

/// What the flusher did with a message.
#[derive(Debug)]
pub struct Sent {
    /// What the socket did not take, for the owner to write (rarely anything: a
    /// `Vec` keeps this small in the owner's future).
    pub rest: Vec<Bytes>,
    /// The socket took at least one byte.
    pub any: bool,
    pub error: Option<io::Error>,
}

impl Sent {
    /// The outcome of a message whose slot is gone.
    fn broken() -> Self {
        Self {
            rest: Vec::new(),
            any: false,
            error: Some(io::ErrorKind::Other.into()),
        }
    }

    /// Moves the outcome out, leaving an empty one.
    fn take(&mut self) -> Self {
        Self {
            rest: std::mem::take(&mut self.rest),
            any: self.any,
            error: self.error.take(),
        }
    }
}

/// A message handed to the flusher. Dropping it before the flusher ran cancels it.
/// (`None` only while it is being dropped.)
pub struct Pending(Option<Arc<Slot>>);

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pending")
    }
}

/// Starts this thread's flusher if the current runtime is a current-thread one and
/// none runs yet. Must be called from within the runtime.
pub fn start() {
    if Handle::current().runtime_flavor() != RuntimeFlavor::CurrentThread {
        return;
    }
    let fresh = TURN.with(|t| {
        let Ok(mut t) = t.try_borrow_mut() else {
            return false;
        };
        if t.flusher.is_some() {
            return false;
        }
        // Claimed at once so a second `start` does not spawn another; sends
        // deferred before the flusher's first poll wait for that poll.
        t.flusher = Some(Waker::noop().clone());
        true
    });
    if fresh {
        tokio::spawn(run());
    }
}

/// Hands the message in `bufs` for `io` to this thread's flusher (taking it out of
/// `bufs`); `owner` is woken if the flusher could not send all of it. `None`, with
/// `bufs` left as they were, when this thread has no flusher.
pub fn defer(io: &Arc<TcpStream>, bufs: &mut Bufs, owner: &Waker) -> Option<Pending> {
    TURN.with(|t| {
        let mut t = t.try_borrow_mut().ok()?;
        let flusher = t.flusher.as_ref()?;
        if t.queued.is_empty() {
            flusher.wake_by_ref();
        }
        let state = State::Queued {
            io: io.clone(),
            bufs: std::mem::take(bufs),
            owner: owner.clone(),
        };
        // A spare slot is only ever held by the list, so it is ours alone.
        let slot = match t.spare.pop() {
            Some(mut slot) => match Arc::get_mut(&mut slot) {
                Some(only) => {
                    *only.0.get_mut() = state;
                    slot
                }
                None => Arc::new(Slot(Mutex::new(state))),
            },
            None => Arc::new(Slot(Mutex::new(state))),
        };
        t.queued.push(slot.clone());
        Some(Pending(Some(slot)))
    })
}

impl Pending {
    /// What became of the message; `Err(self)` while it waits for the flusher.
    pub fn outcome(self) -> Result<Sent, Pending> {
        let Some(slot) = self.0.as_deref() else {
            return Ok(Sent::broken());
        };
        let taken = match &mut *slot.0.lock() {
            State::Sent(sent) => Some(sent.take()),
            State::Over => Some(Sent::broken()),
            State::Queued { .. } => None,
        };
        taken.ok_or(self)
    }

    /// The outcome now: a message the flusher has not sent yet is taken back
    /// whole (for the owner to write before anything that must follow it).
    pub fn settle(self) -> Sent {
        let Some(slot) = self.0.as_deref() else {
            return Sent::broken();
        };
        let mut s = slot.0.lock();
        let sent = match &mut *s {
            State::Sent(sent) => sent.take(),
            State::Queued { bufs, .. } => Sent {
                rest: std::mem::take(bufs).into_vec(),
                any: false,
                error: None,
            },
            State::Over => Sent::broken(),
        };
        // Not sent by the flusher now, if it still holds the slot.
        *s = State::Over;
        sent
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let Some(mut slot) = self.0.take() else {
            return;
        };
        match Arc::get_mut(&mut slot) {
            // The flusher is done with it: kept for the next message.
            Some(only) => {
                *only.0.get_mut() = State::Over;
                let _ = TURN.try_with(|t| {
                    if let Ok(mut t) = t.try_borrow_mut()
                        && t.flusher.is_some()
                        && t.spare.len() < SPARE_MAX
                    {
                        t.spare.push(slot);
                    }
                });
            }
            // Still queued: cancelled (the flusher skips it, then frees it).
            None => *slot.0.lock() = State::Over,
        }
    }
}

impl Slot {
    fn send(&self) {
        let mut s = self.0.lock();
        let State::Queued { io, bufs, owner } = &mut *s else {
            return;
        };
        let (any, error) = match crate::sockio::try_write_bufs(io, bufs) {
            Ok(n) => {
                crate::sockio::consume(bufs, n);
                (n > 0, None)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => (false, None),
            Err(e) => (false, Some(e)),
        };
        let done = bufs.is_empty() && error.is_none();
        let (rest, wake) = if done {
            (Vec::new(), None)
        } else {
            let owner = std::mem::replace(owner, Waker::noop().clone());
            (std::mem::take(bufs).into_vec(), Some(owner))
        };
        // Drops the socket handle and the owner's waker with the queued state.
        *s = State::Sent(Sent { rest, any, error });
        drop(s);
        if let Some(owner) = wake {
            owner.wake();
        }
    }
}

/// Clears this thread's registration when the flusher task ends (its runtime shut
/// down), so a later runtime on the same thread starts its own.
struct Registered;

impl Drop for Registered {
    fn drop(&mut self) {
        let _ = TURN.try_with(|t| {
            if let Ok(mut t) = t.try_borrow_mut() {
                t.flusher = None;
                t.queued.clear();
                t.spare.clear();
            }
        });
    }
}

/// The flusher: each time it is woken, sends what was deferred since.
async fn run() {
    let _registered = Registered;
    let mut batch: Vec<Arc<Slot>> = Vec::new();
    poll_fn(|cx| {
        TURN.with(|t| {
            // Never borrowed elsewhere while this runs (one thread, no re-entry).
            let Ok(mut t) = t.try_borrow_mut() else {
                return;
            };
            if !t.flusher.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                t.flusher = Some(cx.waker().clone());
            }
            std::mem::swap(&mut t.queued, &mut batch);
        });
        for slot in batch.drain(..) {
            slot.send();
        }
        Poll::<()>::Pending
    })
    .await
}

#[cfg(test)]
mod tests;
