//! The route table: the config's routes compiled for lookup on the request path.
//!
//! First match wins, as written, but a request is only checked against the routes
//! that could match it: routes are indexed by host (exact names in a hash map,
//! `*.domain` wildcards by suffix, the rest host-less), and within a host by path
//! (exact paths in a hash map, prefixes in a hash map probed once per distinct
//! prefix length). The candidates found are few; they are sorted back into config
//! order and checked in full, so the first that matches is the first route of the
//! file that matches.

use std::hash::{BuildHasher, Hash, Hasher};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode};
use rustc_hash::{FxBuildHasher, FxHashMap};
use smallvec::SmallVec;

use crate::config::Retries;
use crate::config::routes::{RouteConfig, StickyKey, ValueMatch, segment_prefix_matches};

/// The compiled routes of one config.
pub struct Router {
    routes: Vec<Route>,
    exact_hosts: FxHashMap<Box<str>, PathIndex>,
    /// Keyed by the suffix with its leading dot (`.example.com`).
    wildcard_hosts: FxHashMap<Box<str>, PathIndex>,
    any_host: PathIndex,
}

/// Routes of one host bucket, by path.
#[derive(Default)]
struct PathIndex {
    exact: FxHashMap<Box<str>, SmallVec<[u32; 2]>>,
    /// Plain and segment-aware prefixes.
    prefixes: FxHashMap<Box<str>, SmallVec<[u32; 2]>>,
    /// Distinct lengths of the keys of `prefixes`, ascending.
    prefix_lens: Vec<usize>,
    any_path: Vec<u32>,
}

/// One compiled route.
pub struct Route {
    /// Its label in metrics, traces and logs (from the config only).
    pub name: Arc<str>,
    /// Position in the config.
    pub index: usize,
    path: PathCond,
    methods: Vec<Method>,
    headers: Vec<(HeaderName, ValueMatch)>,
    query: Vec<(Box<str>, ValueMatch)>,
    pub action: Action,
    pub request_headers: HeaderRules,
    pub response_headers: HeaderRules,
    /// Matched prefix length and what replaces it, when the path is rewritten.
    pub rewrite: Option<(usize, Box<str>)>,
    /// Overrides the service's request timeout.
    pub timeout: Option<Duration>,
    /// Overrides the service's retries.
    pub retries: Option<Retries>,
    /// Responses by service and status class (kept across rebuilds by name).
    pub stats: Arc<RouteStats>,
}

/// A route's answers, per service it sends to (`-` for its own answers), by
/// status class: the `route`/`service` metric labels, from config names only.
#[derive(Debug)]
pub struct RouteStats {
    /// The config this was made for: a changed route starts afresh.
    action: String,
    pub by_service: Vec<(Arc<str>, [AtomicU64; 5])>,
}

impl RouteStats {
    /// Counts one answer given for the service at `slot` of `by_service`.
    pub fn count(&self, service: &str, status: StatusCode) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        if let Some((_, c)) = self.by_service.iter().find(|(s, _)| &**s == service) {
            c[class].fetch_add(1, Relaxed);
        }
    }
}

enum PathCond {
    Any,
    Exact,
    Prefix,
    Segment(Box<str>),
}

/// What a matching request gets.
pub enum Action {
    /// Forwarded to the service at this index of the snapshot.
    Service(usize),
    /// Forwarded to one of these services (index, cumulative weight).
    Split {
        targets: Vec<(usize, u32)>,
        total: u32,
        sticky: Option<StickyKey>,
    },
    Redirect {
        status: StatusCode,
        location: Vec<Part>,
    },
    Respond {
        status: StatusCode,
        body: Bytes,
        content_type: HeaderValue,
    },
}

/// A piece of a redirect's `Location` template.
pub enum Part {
    Lit(Box<str>),
    Scheme,
    Host,
    Path,
    Query,
}

/// Compiled header rules: removed, then set, then added.
#[derive(Default)]
pub struct HeaderRules {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
}

impl HeaderRules {
    fn compile(c: &crate::config::routes::HeaderRules) -> Self {
        let pairs = |m: &std::collections::BTreeMap<String, String>| {
            m.iter()
                .filter_map(|(k, v)| {
                    Some((
                        HeaderName::from_bytes(k.as_bytes()).ok()?,
                        HeaderValue::from_str(v).ok()?,
                    ))
                })
                .collect()
        };
        Self {
            remove: c
                .remove
                .iter()
                .filter_map(|k| HeaderName::from_bytes(k.as_bytes()).ok())
                .collect(),
            set: pairs(&c.set),
            add: pairs(&c.add),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    pub fn apply(&self, h: &mut HeaderMap) {
        for k in &self.remove {
            h.remove(k);
        }
        for (k, v) in &self.set {
            h.insert(k.clone(), v.clone());
        }
        for (k, v) in &self.add {
            h.append(k.clone(), v.clone());
        }
    }
}

impl Router {
    /// Compiles `routes`; `service` maps a service name to its index (the config is
    /// validated, so every name is known; an unknown one sends to index 0). Route
    /// counters of `old` with the same name and action carry over.
    pub fn build(
        routes: &[RouteConfig],
        service: &dyn Fn(&str) -> Option<usize>,
        old: Option<&Router>,
    ) -> Self {
        let mut r = Router {
            routes: Vec::with_capacity(routes.len()),
            exact_hosts: FxHashMap::default(),
            wildcard_hosts: FxHashMap::default(),
            any_host: PathIndex::default(),
        };
        for (i, c) in routes.iter().enumerate() {
            let m = &c.matches;
            let bucket = match &m.host {
                None => &mut r.any_host,
                Some(h) => {
                    let h = h.to_ascii_lowercase();
                    match h.strip_prefix('*') {
                        Some(suffix) => r.wildcard_hosts.entry(suffix.into()).or_default(),
                        None => r.exact_hosts.entry(h.into()).or_default(),
                    }
                }
            };
            let id = i as u32;
            let path = if let Some(p) = &m.path {
                bucket.exact.entry(p.as_str().into()).or_default().push(id);
                PathCond::Exact
            } else if let Some(p) = &m.path_prefix {
                bucket.add_prefix(p, id);
                PathCond::Prefix
            } else if let Some(p) = &m.path_segment_prefix {
                bucket.add_prefix(p, id);
                PathCond::Segment(p.as_str().into())
            } else {
                bucket.any_path.push(id);
                PathCond::Any
            };
            let svc = |name: &str| service(name).unwrap_or(0);
            let action = if let Some(s) = &c.service {
                Action::Service(svc(s))
            } else if !c.split.is_empty() {
                let mut total = 0u32;
                let targets = c
                    .split
                    .iter()
                    .filter(|t| t.weight.get() > 0)
                    .map(|t| {
                        total += t.weight.get() as u32;
                        (svc(&t.service), total)
                    })
                    .collect();
                Action::Split {
                    targets,
                    total,
                    sticky: c.sticky.clone(),
                }
            } else if let Some(rd) = &c.redirect {
                Action::Redirect {
                    status: StatusCode::from_u16(rd.status.get() as u16)
                        .unwrap_or(StatusCode::FOUND),
                    location: template(&rd.location),
                }
            } else if let Some(f) = &c.respond {
                Action::Respond {
                    status: StatusCode::from_u16(f.status.get() as u16).unwrap_or(StatusCode::OK),
                    body: Bytes::from(f.body.clone()),
                    content_type: HeaderValue::from_str(&f.content_type)
                        .unwrap_or(HeaderValue::from_static("text/plain")),
                }
            } else {
                Action::Service(0)
            };
            let rewrite = match (c.matched_prefix(), &c.replace_prefix, c.strip_prefix) {
                (Some(p), Some(to), _) => Some((p.len(), to.as_str().into())),
                (Some(p), None, true) => Some((p.len(), "".into())),
                _ => None,
            };
            let name: Arc<str> = c.label(i).into();
            let action_key = format!(
                "{:?}{:?}{:?}{:?}",
                c.service, c.split, c.redirect, c.respond
            );
            let stats = old
                .and_then(|o| o.routes.iter().find(|x| x.name == name))
                .map(|x| x.stats.clone())
                .filter(|st| st.action == action_key)
                .unwrap_or_else(|| {
                    let mut names: Vec<Arc<str>> = c
                        .service
                        .iter()
                        .chain(c.split.iter().map(|t| &t.service))
                        .map(|s| Arc::from(s.as_str()))
                        .collect();
                    if names.is_empty() {
                        names.push("-".into());
                    }
                    Arc::new(RouteStats {
                        action: action_key,
                        by_service: names.into_iter().map(|n| (n, Default::default())).collect(),
                    })
                });
            r.routes.push(Route {
                stats,
                name,
                index: i,
                path,
                methods: m
                    .method
                    .0
                    .iter()
                    .filter_map(|x| Method::from_bytes(x.as_bytes()).ok())
                    .collect(),
                headers: m
                    .headers
                    .iter()
                    .filter_map(|(k, v)| {
                        Some((HeaderName::from_bytes(k.as_bytes()).ok()?, v.clone()))
                    })
                    .collect(),
                query: m
                    .query
                    .iter()
                    .map(|(k, v)| (k.as_str().into(), v.clone()))
                    .collect(),
                action,
                request_headers: HeaderRules::compile(&c.request_headers),
                response_headers: HeaderRules::compile(&c.response_headers),
                rewrite,
                timeout: c.timeout.map(|t| t.get()),
                retries: c.retries.clone(),
            });
        }
        r
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The first route `req` matches.
    pub fn find<B>(&self, req: &Request<B>) -> Option<&Route> {
        let host = request_host(req);
        self.lookup(host, req.uri().path(), req)
    }

    fn lookup<B>(&self, host: Option<&str>, path: &str, req: &Request<B>) -> Option<&Route> {
        let mut cands: SmallVec<[u32; 16]> = SmallVec::new();
        // Host names compare without case; lower-case only when needed.
        let lowered;
        let host = match host {
            Some(h) if h.bytes().any(|b| b.is_ascii_uppercase()) => {
                lowered = h.to_ascii_lowercase();
                Some(lowered.as_str())
            }
            h => h,
        };
        if let Some(h) = host {
            if !self.exact_hosts.is_empty()
                && let Some(ix) = self.exact_hosts.get(h)
            {
                ix.candidates(path, &mut cands);
            }
            if !self.wildcard_hosts.is_empty() {
                let mut rest = h;
                while let Some(dot) = rest.find('.') {
                    let suffix = &rest[dot..];
                    if let Some(ix) = self.wildcard_hosts.get(suffix) {
                        ix.candidates(path, &mut cands);
                    }
                    rest = &rest[dot + 1..];
                }
            }
        }
        self.any_host.candidates(path, &mut cands);
        if cands.len() > 1 {
            cands.sort_unstable();
        }
        cands
            .into_iter()
            .map(|i| &self.routes[i as usize])
            .find(|r| r.matches_rest(path, req))
    }
}

impl PathIndex {
    fn add_prefix(&mut self, p: &str, id: u32) {
        self.prefixes.entry(p.into()).or_default().push(id);
        if let Err(at) = self.prefix_lens.binary_search(&p.len()) {
            self.prefix_lens.insert(at, p.len());
        }
    }

    fn candidates(&self, path: &str, out: &mut SmallVec<[u32; 16]>) {
        if !self.exact.is_empty()
            && let Some(v) = self.exact.get(path)
        {
            push_all(out, v);
        }
        for &len in &self.prefix_lens {
            let Some(head) = path.get(..len) else { break };
            if let Some(v) = self.prefixes.get(head) {
                push_all(out, v);
            }
        }
        push_all(out, &self.any_path);
    }
}

/// `out.extend_from_slice(ids)` without its reserve call for the usual zero or one id.
fn push_all(out: &mut SmallVec<[u32; 16]>, ids: &[u32]) {
    match ids {
        [] => {}
        [id] => out.push(*id),
        _ => out.extend_from_slice(ids),
    }
}

impl Route {
    /// The conditions the index did not already decide.
    fn matches_rest<B>(&self, path: &str, req: &Request<B>) -> bool {
        if let PathCond::Segment(p) = &self.path
            && !segment_prefix_matches(p, path)
        {
            return false;
        }
        if !self.methods.is_empty() && !self.methods.contains(req.method()) {
            return false;
        }
        for (name, cond) in &self.headers {
            let v = req.headers().get(name);
            let ok = match cond {
                ValueMatch::Present => v.is_some(),
                ValueMatch::Absent => v.is_none(),
                ValueMatch::Exact(want) => v.is_some_and(|v| v.as_bytes() == want.as_bytes()),
            };
            if !ok {
                return false;
            }
        }
        if !self.query.is_empty() {
            let q = req.uri().query().unwrap_or("");
            for (name, cond) in &self.query {
                let v = query_value(q, name);
                let ok = match cond {
                    ValueMatch::Present => v.is_some(),
                    ValueMatch::Absent => v.is_none(),
                    ValueMatch::Exact(want) => v == Some(want.as_str()),
                };
                if !ok {
                    return false;
                }
            }
        }
        true
    }

    /// The path the backend gets, when this route rewrites it.
    pub fn rewritten(&self, path: &str) -> Option<String> {
        let (len, to) = self.rewrite.as_ref()?;
        let rest = path.get(*len..).unwrap_or("");
        let mut out = String::with_capacity(to.len() + rest.len() + 1);
        out.push_str(to);
        if out.ends_with('/') && rest.starts_with('/') {
            out.pop();
        }
        out.push_str(rest);
        if !out.starts_with('/') {
            out.insert(0, '/');
        }
        Some(out)
    }
}

impl Action {
    /// The service a forwarding action sends `req` to (`None`: answered here).
    pub fn service<B>(&self, req: &Request<B>, client: IpAddr) -> Option<usize> {
        match self {
            Action::Service(i) => Some(*i),
            Action::Split {
                targets,
                total,
                sticky,
            } => {
                if *total == 0 {
                    return targets.first().map(|t| t.0);
                }
                let roll = match sticky.as_ref().and_then(|k| sticky_hash(k, req, client)) {
                    Some(h) => (h % u64::from(*total)) as u32,
                    None => fastrand::u32(..*total),
                };
                targets.iter().find(|(_, upto)| roll < *upto).map(|t| t.0)
            }
            Action::Redirect { .. } | Action::Respond { .. } => None,
        }
    }
}

/// A stable hash of the sticky key's value (the same on every replica).
fn sticky_hash<B>(key: &StickyKey, req: &Request<B>, client: IpAddr) -> Option<u64> {
    let h = key_hash(key, req.headers(), req.uri().path(), client)?;
    // Spread the low bits (Fx leaves them weak for short keys).
    Some(h.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 16)
}

/// A stable hash of a request key's value (the same on every replica, not
/// mixed: callers spread it as they need), or `None` when the request lacks it.
pub fn key_hash(key: &StickyKey, headers: &HeaderMap, path: &str, client: IpAddr) -> Option<u64> {
    let mut h = FxBuildHasher.build_hasher();
    match key {
        StickyKey::ClientIp => client.hash(&mut h),
        StickyKey::Path => h.write(path.as_bytes()),
        StickyKey::Header(name) => h.write(headers.get(name)?.as_bytes()),
        StickyKey::Cookie(name) => {
            let v = headers
                .get_all(header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .find_map(|kv| {
                    let (k, v) = kv.trim().split_once('=')?;
                    (k == name).then_some(v)
                })?;
            h.write(v.as_bytes());
        }
    }
    Some(h.finish())
}

/// The request's host name: `Host`, or the URI's authority (HTTP/2), port removed.
pub fn request_host<B>(req: &Request<B>) -> Option<&str> {
    let raw = match req.headers().get(header::HOST) {
        Some(h) => h.to_str().ok()?,
        None => req.uri().authority()?.as_str(),
    };
    Some(strip_port(raw))
}

fn strip_port(h: &str) -> &str {
    if h.starts_with('[') {
        return match h.find(']') {
            Some(end) => &h[..=end],
            None => h,
        };
    }
    // By hand: `rsplit_once(':')` costs a reverse searcher per request (measured:
    // ~200 instructions for `127.0.0.1:8080`), this a few per byte of the port.
    let b = h.as_bytes();
    let mut i = b.len();
    while i > 0 && b[i - 1].is_ascii_digit() {
        i -= 1;
    }
    if i > 0 && b[i - 1] == b':' {
        &h[..i - 1]
    } else {
        h
    }
}

/// The raw value of query parameter `name` (as sent: no percent-decoding).
fn query_value<'q>(q: &'q str, name: &str) -> Option<&'q str> {
    q.split('&').find_map(|kv| match kv.split_once('=') {
        Some((k, v)) if k == name => Some(v),
        None if kv == name => Some(""),
        _ => None,
    })
}

fn template(t: &str) -> Vec<Part> {
    let mut parts = Vec::new();
    let mut rest = t;
    while !rest.is_empty() {
        let next = ["{scheme}", "{host}", "{path}", "{query}"]
            .iter()
            .filter_map(|v| rest.find(v).map(|at| (at, *v)))
            .min_by_key(|(at, _)| *at);
        match next {
            None => {
                parts.push(Part::Lit(rest.into()));
                break;
            }
            Some((at, var)) => {
                if at > 0 {
                    parts.push(Part::Lit(rest[..at].into()));
                }
                parts.push(match var {
                    "{scheme}" => Part::Scheme,
                    "{host}" => Part::Host,
                    "{path}" => Part::Path,
                    _ => Part::Query,
                });
                rest = &rest[at + var.len()..];
            }
        }
    }
    parts
}

/// Fills a `Location` template.
pub fn render(parts: &[Part], scheme: &str, host: &str, path: &str, query: Option<&str>) -> String {
    let mut out = String::new();
    for p in parts {
        match p {
            Part::Lit(s) => out.push_str(s),
            Part::Scheme => out.push_str(scheme),
            Part::Host => out.push_str(host),
            Part::Path => out.push_str(path),
            Part::Query => {
                if let Some(q) = query.filter(|q| !q.is_empty()) {
                    out.push('?');
                    out.push_str(q);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
