//! Body types of the data path: what goes upstream ([`ReqBody`]) and what goes back
//! to the client ([`ProxyBody`]). Both stream frame by frame; nothing is buffered.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::Instant;

use switchyard_http1::{Conn, UpstreamError};

use crate::backend::Backend;
use crate::dataplane::DataPlane;
pub use switchyard_http1::ClientBody;

/// The backend's response body, as the proxy reads it.
pub type UpstreamBody = switchyard_http1::UpstreamBody<ReqBody>;

/// A request body on its way upstream.
pub enum ReqBody {
    /// No body (also used to replay a bodiless request on another backend).
    Empty,
    /// An HTTP/2 client's body (hyper's server), streamed.
    Incoming(Incoming),
    /// An HTTP/1.1 client's body (our server), streamed.
    Client(ClientBody),
    /// A body the proxy made (a gRPC health check's request, a replayed call's).
    Full(Option<Bytes>),
    /// A gRPC call's body kept for a replay as it is sent (`retries.on_grpc_status`).
    Teed(Box<super::replay::Tee>),
}

impl ReqBody {
    /// hyper's body, or `Empty` when it has already ended.
    pub fn from_incoming(b: Incoming) -> Self {
        if b.is_end_stream() {
            ReqBody::Empty
        } else {
            ReqBody::Incoming(b)
        }
    }
}

/// Why a client's request body could not be read whole.
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    /// An HTTP/2 client's.
    #[error("{0}")]
    Hyper(#[from] hyper::Error),
    /// An HTTP/1.1 client's.
    #[error(transparent)]
    Client(#[from] switchyard_http1::ClientBodyError),
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        match self.get_mut() {
            ReqBody::Empty => Poll::Ready(None),
            ReqBody::Incoming(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(ClientBodyError::Hyper))),
            ReqBody::Client(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(ClientBodyError::Client))),
            ReqBody::Full(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
            ReqBody::Teed(b) => Pin::new(&mut **b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Empty => true,
            ReqBody::Incoming(b) => b.is_end_stream(),
            ReqBody::Client(b) => b.is_end_stream(),
            ReqBody::Full(b) => b.is_none(),
            ReqBody::Teed(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Empty => SizeHint::with_exact(0),
            ReqBody::Incoming(b) => b.size_hint(),
            ReqBody::Client(b) => b.size_hint(),
            ReqBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ReqBody::Teed(b) => b.size_hint(),
        }
    }
}

/// A response body on its way to the client.
#[allow(
    clippy::large_enum_variant,
    reason = "the large variant is the common one; boxing it would cost an allocation per response"
)]
pub enum ProxyBody {
    /// A short body we made ourselves (errors, 429, 503).
    Full(Option<Bytes>),
    /// The backend's body, with the bookkeeping that ends with it.
    Upstream(UpstreamBody, ResponseGuard),
    /// An HTTP/2 backend's body (boxed: the HTTP/1.1 variant stays the size).
    H2(Box<super::h2::H2Body>),
}

impl ProxyBody {
    pub fn full(b: impl Into<Bytes>) -> Self {
        ProxyBody::Full(Some(b.into()))
    }

    pub fn empty() -> Self {
        ProxyBody::Full(None)
    }

    /// `b`, or no body at all when it is empty (a gRPC trailers-only answer ends
    /// with its head).
    pub fn full_or_empty(b: Bytes) -> Self {
        ProxyBody::Full((!b.is_empty()).then_some(b))
    }

    pub fn upstream(mut body: UpstreamBody, mut guard: ResponseGuard) -> Self {
        if body.is_end_stream() {
            // HEAD, 204, 304, empty bodies: hyper may never poll them.
            let conn = body.take_reusable();
            guard.finish(conn);
        }
        ProxyBody::Upstream(body, guard)
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        match self.get_mut() {
            ProxyBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            ProxyBody::Upstream(body, guard) => {
                let polled = Pin::new(&mut *body).poll_frame(cx);
                match &polled {
                    Poll::Ready(None) => guard.finish(body.take_reusable()),
                    Poll::Ready(Some(Err(_))) => guard.finish(None),
                    Poll::Ready(Some(Ok(_))) if body.is_end_stream() => {
                        guard.finish(body.take_reusable())
                    }
                    _ => {}
                }
                polled
            }
            ProxyBody::H2(body) => Pin::new(&mut **body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full(data) => data.is_none(),
            ProxyBody::Upstream(body, _) => body.is_end_stream(),
            ProxyBody::H2(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full(Some(d)) => SizeHint::with_exact(d.len() as u64),
            ProxyBody::Full(None) => SizeHint::with_exact(0),
            ProxyBody::Upstream(body, _) => body.size_hint(),
            ProxyBody::H2(body) => body.size_hint(),
        }
    }
}

/// Ends a proxied request when its response body ends (or is dropped): gives the
/// upstream connection back to the pool if the exchange completed cleanly, and
/// settles the in-flight counts and the duration histogram.
pub struct ResponseGuard {
    plane: Arc<DataPlane>,
    backend: Arc<Backend>,
    max_idle: usize,
    started: Instant,
    trace: Option<super::trace::Trace>,
    done: bool,
}

impl ResponseGuard {
    /// Takes over one in-flight count on `backend` and one on the proxy.
    pub fn new(
        plane: Arc<DataPlane>,
        backend: Arc<Backend>,
        max_idle: usize,
        started: Instant,
        trace: Option<super::trace::Trace>,
    ) -> Self {
        Self {
            plane,
            backend,
            max_idle,
            started,
            trace,
            done: false,
        }
    }

    /// Settles the request; `conn`, when the exchange left it reusable, goes back
    /// to the backend's pool.
    pub fn finish(&mut self, conn: Option<Box<Conn>>) {
        if self.done {
            return;
        }
        self.done = true;
        let now = Instant::now();
        if let Some(conn) = conn {
            self.backend.pool.put(conn, self.max_idle, now);
        }
        self.backend.stats.active.fetch_sub(1, Relaxed);
        let elapsed = now.saturating_duration_since(self.started);
        self.plane.metrics.finish_request(elapsed);
        if let Some(mut t) = self.trace.take() {
            t.finish(elapsed);
        }
    }
}

impl Drop for ResponseGuard {
    fn drop(&mut self) {
        self.finish(None);
    }
}
