//! Switchyard's HTTP/1.1 wire layer, for both hops of a proxy:
//!
//! - [`codec`]: the one set of wire rules — reading and writing request and
//!   response heads, framing and request-smuggling rules;
//! - [`body`]: bodies read off the wire (length, chunked with trailers, to the
//!   close), the same reader in both directions;
//! - [`server`]: the client side's connection loop, generic over a
//!   [`server::Handler`] (it knows nothing of forwarding);
//! - [`client`]: the upstream connection, one exchange at a time, driven inline by
//!   the request's task; [`pool`]: idle keep-alive connections and connecting;
//! - [`headers`]: header rewriting between the hops (hop-by-hop removal,
//!   `X-Forwarded-*`);
//! - [`flush`] and [`sockio`]: sends gathered to the end of a scheduler turn, and
//!   socket reads and writes without wasted system calls;
//! - [`worker`]: which worker thread this is (state kept per worker).
//!
//! It depends on no other Switchyard crate.

pub mod body;
pub mod client;
pub mod codec;
pub mod flush;
pub mod headers;
pub mod pool;
pub mod server;
pub mod sockio;
pub mod worker;

pub use client::{Conn, Exchange, Io, SendError, UpstreamBody, UpstreamError};
pub use codec::{Ambiguity, Refusal};
pub use pool::{ConnectError, Pool};
pub use server::{ClientBody, ClientBodyError, ClientIo, ClientUpgrade, Handler, Limits, Upgraded};
