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
        RefCell::new(Turn { flusher: None, slots: None, queued: Vec::new() })
    };
}

/// This thread's flusher and the sends waiting for it.
struct Turn {
    flusher: Option<Waker>,
    /// The messages handed over and not finished, shared with their owners.
    slots: Option<Arc<Mutex<Slots>>>,
    /// Slots to send in this turn (index, generation), in hand-over order.
    queued: Vec<(u32, u64)>,
}

/// The messages of one thread's flusher. A slot is taken for each message and
/// freed as soon as nobody needs it: by the flusher when the message went out
/// whole (the usual case), else by the owner when it takes the outcome or gives
/// up. Owners and the flusher's queue name a slot by index and generation, so a
/// freed slot is reused at once without confusing them: an owner that finds its
/// slot's generation moved on knows its message went out whole. A connection
/// between requests thus holds no slot (it held one per connection, 192 bytes,
/// until its next wake-up), and a steady stream of messages allocates nothing.
#[derive(Default)]
struct Slots {
    entries: Vec<Slot>,
    free: Vec<u32>,
    /// The generation a new entry starts at: above every generation any entry
    /// had before the table last shrank, so no handle from then names a new one.
    next_generation: u64,
}

/// Entries the table keeps when all are free; beyond that it lets go of them (a
/// burst of messages in one turn does not leave its peak allocated).
const KEEP: usize = 256;

struct Slot {
    generation: u64,
    state: State,
}

enum State {
    Free,
    Queued {
        io: Arc<TcpStream>,
        bufs: Bufs,
        owner: Waker,
    },
    /// The flusher could not send all of it: the outcome, for the owner.
    Sent(Sent),
}

impl Slots {
    fn take(&mut self, state: State) -> (u32, u64) {
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.entries.push(Slot {
                    generation: self.next_generation,
                    state: State::Free,
                });
                u32::try_from(self.entries.len() - 1).unwrap_or(u32::MAX)
            }
        };
        let slot = &mut self.entries[index as usize];
        slot.state = state;
        (index, slot.generation)
    }

    /// The slot `(index, generation)` names, while it is still that message's.
    fn get(&mut self, index: u32, generation: u64) -> Option<&mut Slot> {
        self.entries
            .get_mut(index as usize)
            .filter(|s| s.generation == generation && !matches!(s.state, State::Free))
    }

    fn release(&mut self, index: u32) {
        if let Some(slot) = self.entries.get_mut(index as usize) {
            slot.generation += 1;
            slot.state = State::Free;
            self.free.push(index);
        }
        if self.free.len() == self.entries.len() && self.entries.len() > KEEP {
            let newest = self.entries.iter().map(|s| s.generation).max();
            self.next_generation = newest.unwrap_or(0).max(self.next_generation);
            self.entries = Vec::with_capacity(KEEP);
            self.free = Vec::with_capacity(KEEP);
        }
    }

    /// Messages handed over and not finished.
    #[cfg(test)]
    fn live(&self) -> usize {
        self.entries.len() - self.free.len()
    }
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
    /// The outcome of a message that went out whole.
    fn whole() -> Self {
        Self {
            rest: Vec::new(),
            any: true,
            error: None,
        }
    }
}

/// A message handed to the flusher. Dropping it before the flusher ran cancels it.
/// (`None` only once its outcome was taken.)
pub struct Pending(Option<(Arc<Mutex<Slots>>, u32, u64)>);

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
        t.slots = Some(Arc::default());
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
        let slots = t.slots.clone()?;
        if t.queued.is_empty() {
            flusher.wake_by_ref();
        }
        let (index, generation) = slots.lock().take(State::Queued {
            io: io.clone(),
            bufs: std::mem::take(bufs),
            owner: owner.clone(),
        });
        t.queued.push((index, generation));
        Some(Pending(Some((slots, index, generation))))
    })
}

impl Pending {
    /// What became of the message; `Err(self)` while it waits for the flusher.
    pub fn outcome(mut self) -> Result<Sent, Pending> {
        let Some((slots, index, generation)) = self.0.take() else {
            return Ok(Sent::whole());
        };
        let mut s = slots.lock();
        let sent = match s.get(index, generation) {
            // Freed by the flusher: it went out whole.
            None => Sent::whole(),
            Some(Slot {
                state: State::Queued { .. },
                ..
            }) => {
                drop(s);
                self.0 = Some((slots, index, generation));
                return Err(self);
            }
            Some(slot) => {
                let State::Sent(sent) = std::mem::replace(&mut slot.state, State::Free) else {
                    return Ok(Sent::whole());
                };
                s.release(index);
                sent
            }
        };
        Ok(sent)
    }

    /// The outcome now: a message the flusher has not sent yet is taken back
    /// whole (for the owner to write before anything that must follow it).
    pub fn settle(mut self) -> Sent {
        let Some((slots, index, generation)) = self.0.take() else {
            return Sent::whole();
        };
        let mut s = slots.lock();
        let Some(slot) = s.get(index, generation) else {
            return Sent::whole();
        };
        let sent = match std::mem::replace(&mut slot.state, State::Free) {
            State::Sent(sent) => sent,
            State::Queued { bufs, .. } => Sent {
                rest: bufs.into_vec(),
                any: false,
                error: None,
            },
            State::Free => Sent::whole(),
        };
        // Freed: the flusher's queue names an older generation now and skips it.
        s.release(index);
        sent
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let Some((slots, index, generation)) = self.0.take() else {
            return;
        };
        let mut s = slots.lock();
        // Queued: cancelled (the flusher skips it); sent in part: nobody wants the rest.
        if s.get(index, generation).is_some() {
            s.release(index);
        }
    }
}

impl Slots {
    /// Sends one queued message; the owner's waker when it is to be woken.
    fn send(&mut self, index: u32, generation: u64) -> Option<Waker> {
        let slot = self.get(index, generation)?;
        let State::Queued { io, bufs, .. } = &mut slot.state else {
            return None;
        };
        let (any, error) = match crate::sockio::try_write_bufs(io, bufs) {
            Ok(n) => {
                crate::sockio::consume(bufs, n);
                (n > 0, None)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => (false, None),
            Err(e) => (false, Some(e)),
        };
        if bufs.is_empty() && error.is_none() {
            // Whole: the owner learns it from the generation, and is not woken.
            self.release(index);
            return None;
        }
        // Drops the socket handle with the queued state.
        let State::Queued { bufs, owner, .. } = std::mem::replace(&mut slot.state, State::Free)
        else {
            return None;
        };
        slot.state = State::Sent(Sent {
            rest: bufs.into_vec(),
            any,
            error,
        });
        Some(owner)
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
                t.slots = None;
                t.queued.clear();
            }
        });
    }
}

/// The flusher: each time it is woken, sends what was deferred since.
async fn run() {
    let _registered = Registered;
    let mut batch: Vec<(u32, u64)> = Vec::new();
    let mut woken: Vec<Waker> = Vec::new();
    poll_fn(|cx| {
        let slots = TURN.with(|t| {
            // Never borrowed elsewhere while this runs (one thread, no re-entry).
            let Ok(mut t) = t.try_borrow_mut() else {
                return None;
            };
            if !t.flusher.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                t.flusher = Some(cx.waker().clone());
            }
            std::mem::swap(&mut t.queued, &mut batch);
            t.slots.clone()
        });
        if let Some(slots) = slots {
            let mut s = slots.lock();
            for (index, generation) in batch.drain(..) {
                woken.extend(s.send(index, generation));
            }
        }
        batch.clear();
        // Owners are woken once the slots are let go of.
        for w in woken.drain(..) {
            w.wake();
        }
        Poll::<()>::Pending
    })
    .await
}

#[cfg(test)]
mod tests;
