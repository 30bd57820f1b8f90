//! Which worker this thread is. With several workers, each runs its own
//! current-thread runtime with its own listening socket; what a connection
//! creates (its upstream connections, its flusher) stays on the worker that
//! accepted it, so state kept per worker ([`crate::pool::Pool`]'s idle lists) is
//! indexed by this number. Threads that never call [`enter`] are worker 0.

use std::cell::Cell;

thread_local! {
    static ID: Cell<usize> = const { Cell::new(0) };
}

/// Marks the calling thread as worker `id` (once, when the worker starts).
pub fn enter(id: usize) {
    ID.set(id);
}

/// The calling thread's worker number.
pub fn id() -> usize {
    ID.get()
}
