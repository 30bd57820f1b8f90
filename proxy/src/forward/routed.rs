//! The route's part of a request: which route and service it goes to, the answers
//! a route makes itself (redirect, fixed response, 404 for no route), and the
//! route's rewrites of the request sent on.

use http::request::Parts;
use http::{HeaderValue, Request, Response, Uri, header};

use super::Peer;
use super::body::ProxyBody;
use crate::errors::ProxyError;
use crate::route::{self, Action, Route};
use crate::snapshot::{Service, Snapshot};

/// Where a request goes.
pub(super) enum Selected<'s> {
    /// Forwarded to a service (through a route, or unmatched to `default`).
    Forward(Option<&'s Route>, &'s Service),
    /// Answered by the route itself (redirect, fixed response).
    Answer(&'s Route),
    /// No route matched and `default` has no backends.
    NoRoute,
}

/// The route and service for `req`: without routes, `default` at no cost.
pub(super) fn select<'s, B>(snap: &'s Snapshot, req: &Request<B>, peer: &Peer) -> Selected<'s> {
    let Some(router) = &snap.router else {
        return Selected::Forward(None, snap.default_service());
    };
    match router.find(req) {
        None => {
            let default = snap.default_service();
            if default.members.is_empty() {
                Selected::NoRoute
            } else {
                Selected::Forward(None, default)
            }
        }
        Some(r) => match r.action.service(req, peer.addr.ip()) {
            Some(i) => Selected::Forward(Some(r), &snap.services[i.min(snap.services.len() - 1)]),
            None => Selected::Answer(r),
        },
    }
}

/// The answer a route makes itself, or the 404 of no route.
pub(super) fn answer<B>(
    req: &Request<B>,
    route: Option<&Route>,
    peer: &Peer,
) -> Response<ProxyBody> {
    let mut resp = match route.map(|r| (r, &r.action)) {
        Some((r, Action::Redirect { status, location })) => {
            let path = r.rewritten(req.uri().path());
            let host = req
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .or_else(|| req.uri().authority().map(|a| a.as_str()))
                .unwrap_or("");
            let scheme = if peer.https { "https" } else { "http" };
            let loc = route::render(
                location,
                scheme,
                host,
                path.as_deref().unwrap_or(req.uri().path()),
                req.uri().query(),
            );
            let mut resp = Response::new(ProxyBody::empty());
            *resp.status_mut() = *status;
            if let Ok(v) = HeaderValue::from_str(&loc) {
                resp.headers_mut().insert(header::LOCATION, v);
            }
            resp
        }
        Some((
            _,
            Action::Respond {
                status,
                body,
                content_type,
            },
        )) => {
            let mut resp = Response::new(ProxyBody::full(body.clone()));
            *resp.status_mut() = *status;
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, content_type.clone());
            resp
        }
        _ if super::grpc::is_grpc(req.headers()) => ProxyError::NoRoute
            .into_grpc_response()
            .map(ProxyBody::full_or_empty),
        _ => ProxyError::NoRoute.into_response().map(ProxyBody::full),
    };
    if let Some(r) = route {
        r.response_headers.apply(resp.headers_mut());
    }
    resp
}

/// Applies the route's path rewrite and request header rules to the head sent on.
pub(super) fn rewrite(route: &Route, parts: &mut Parts) {
    if let Some(path) = route.rewritten(parts.uri.path()) {
        let pq = match parts.uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        if let Ok(uri) = pq.parse::<Uri>() {
            parts.uri = uri;
        }
    }
    if !route.request_headers.is_empty() {
        route.request_headers.apply(&mut parts.headers);
    }
}
