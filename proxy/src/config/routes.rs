//! Services (named pools) and routes (ordered, first match wins): their schema
//! and the rules across them (known service names, actions, shadowed routes).
//!
//! The top-level `backends`, `strategy` and policy blocks form the service
//! `default`, and are what a service's block falls back to when it leaves one out
//! (HAProxy's `defaults` section). The top-level `rate_limit` stays proxy-wide:
//! a service's or route's own `rate_limit` is checked after it.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use super::types::{Dur, Int};
use super::{
    AdaptiveConfig, BackendConfig, CircuitBreakerConfig, Config, ConsistentHashConfig,
    DiscoverConfig, HealthCheckConfig, OutlierConfig, Percent, RateLimitConfig, Retries, Strategy,
    Timeouts, UpstreamConfig,
};

/// The service the top-level backends form, and where unmatched requests go.
pub const DEFAULT_SERVICE: &str = "default";

/// A backend's identity in shared state: its canonical URL key for the service
/// `default` (so the seed's cluster state keeps its Redis keys), `<service>|<key>`
/// for any other service.
pub fn scoped_key(service: &str, key: &str) -> String {
    if service == DEFAULT_SERVICE {
        key.to_string()
    } else {
        format!("{service}|{key}")
    }
}

/// A scoped key's service and URL key (see [`scoped_key`]).
pub fn split_key(scoped: &str) -> (&str, &str) {
    match scoped.split_once('|') {
        Some((service, key)) => (service, key),
        None => (DEFAULT_SERVICE, scoped),
    }
}

/// One named pool. Every block left out is the top-level one.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
    #[serde(default)]
    pub backends: Vec<BackendConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<Timeouts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Retries>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<UpstreamConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adaptive: Option<AdaptiveConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistent_hash: Option<ConsistentHashConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_start: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub panic_threshold: Option<Percent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreakerConfig>,
    /// Checked for requests routed to this service (after the proxy-wide one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitConfig>,
    /// Members found by DNS, beside `backends` (not inherited from the top level).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discover: Option<DiscoverConfig>,
}

/// One route: conditions, and what a matching request gets.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Label in metrics, traces and logs (default `route-<index>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Every condition given must hold (none: matches everything).
    #[serde(default, rename = "match")]
    pub matches: RouteMatch,
    /// Action: send to this service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Action: split between services by weight.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub split: Vec<SplitTarget>,
    /// With `split`: what keeps one client on one side (`header:<Name>`,
    /// `cookie:<name>` or `client_ip`); unset: each request drawn anew.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<StickyKey>,
    /// Action: answer with a redirect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<Redirect>,
    /// Action: answer with a fixed response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub respond: Option<FixedResponse>,
    /// Header rules on the request sent to the backend.
    #[serde(default, skip_serializing_if = "HeaderRules::is_empty")]
    pub request_headers: HeaderRules,
    /// Header rules on the response sent to the client.
    #[serde(default, skip_serializing_if = "HeaderRules::is_empty")]
    pub response_headers: HeaderRules,
    /// Remove the matched path prefix before forwarding (`/api/x` → `/x`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub strip_prefix: bool,
    /// Replace the matched path prefix with this before forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_prefix: Option<String>,
    /// Overrides the service's `timeouts.request`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Dur>,
    /// Overrides the service's `retries`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Retries>,
    /// Checked for requests matching this route (after the proxy-wide and the
    /// service's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitConfig>,
}

impl RouteConfig {
    /// The route's label.
    pub fn label(&self, index: usize) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("route-{index}"))
    }

    /// The path prefix its rewrite applies to.
    pub fn matched_prefix(&self) -> Option<&str> {
        self.matches
            .path_prefix
            .as_deref()
            .or(self.matches.path_segment_prefix.as_deref())
    }
}

/// The conditions of a route.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    /// `api.example.com` (exact, any case, port ignored) or `*.example.com` (any
    /// name ending in `.example.com`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The path starts with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// The path is exactly this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The path is this or continues with `/` after it (`/api` matches `/api` and
    /// `/api/x`, not `/apiv2`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_segment_prefix: Option<String>,
    /// One method or a list.
    #[serde(default, skip_serializing_if = "Methods::is_empty")]
    pub method: Methods,
    /// Header name → exact value, or `true` (present) / `false` (absent).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, ValueMatch>,
    /// Query parameter → exact value, or `true` (present) / `false` (absent).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub query: BTreeMap<String, ValueMatch>,
}

/// A header or query condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ValueMatch {
    Present,
    Absent,
    Exact(String),
}

impl<'de> Deserialize<'de> for ValueMatch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ValueMatch;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a value to match exactly, or true (present) / false (absent)")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<ValueMatch, E> {
                Ok(if v {
                    ValueMatch::Present
                } else {
                    ValueMatch::Absent
                })
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ValueMatch, E> {
                Ok(ValueMatch::Exact(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ValueMatch, E> {
                Ok(ValueMatch::Exact(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ValueMatch, E> {
                Ok(ValueMatch::Exact(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<ValueMatch, E> {
                Ok(ValueMatch::Exact(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for ValueMatch {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ValueMatch::Present => s.serialize_bool(true),
            ValueMatch::Absent => s.serialize_bool(false),
            ValueMatch::Exact(v) => s.serialize_str(v),
        }
    }
}

/// Methods a route accepts (empty: any), upper-case.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Methods(pub Vec<String>);

impl Methods {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'de> Deserialize<'de> for Methods {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        fn method<E: de::Error>(v: &str) -> Result<String, E> {
            let m = v.trim().to_ascii_uppercase();
            if m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-') {
                return Err(E::custom(format!("`{v}` is not an HTTP method")));
            }
            Ok(m)
        }
        impl<'de> Visitor<'de> for V {
            type Value = Methods;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a method such as GET, or a list of them")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Methods, E> {
                Ok(Methods(vec![method(v)?]))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Methods, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = seq.next_element::<String>()? {
                    out.push(method(&v)?);
                }
                Ok(Methods(out))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Methods {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

/// One side of a weighted split.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SplitTarget {
    pub service: String,
    /// Relative share, 0..=10000 (0: none while kept in the file).
    pub weight: Int<0, 10_000>,
}

/// What keeps one client on one side of a split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StickyKey {
    ClientIp,
    /// The request path (without the query).
    Path,
    /// Lower-case header name.
    Header(http::HeaderName),
    Cookie(String),
}

impl fmt::Display for StickyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StickyKey::ClientIp => f.write_str("client_ip"),
            StickyKey::Path => f.write_str("path"),
            StickyKey::Header(h) => write!(f, "header:{h}"),
            StickyKey::Cookie(c) => write!(f, "cookie:{c}"),
        }
    }
}

impl<'de> Deserialize<'de> for StickyKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let s = String::deserialize(d)?;
        match s.as_str() {
            "client_ip" => return Ok(StickyKey::ClientIp),
            "path" => return Ok(StickyKey::Path),
            _ => {}
        }
        if let Some(name) = s.strip_prefix("header:") {
            return http::HeaderName::from_bytes(name.trim().as_bytes())
                .map(StickyKey::Header)
                .map_err(|_| D::Error::custom(format!("`{name}` is not a valid header name")));
        }
        if let Some(name) = s.strip_prefix("cookie:")
            && !name.trim().is_empty()
        {
            return Ok(StickyKey::Cookie(name.trim().to_string()));
        }
        Err(D::Error::custom(format!(
            "unknown key `{s}` (expected client_ip, path, header:<Name> or cookie:<name>)"
        )))
    }
}

impl Serialize for StickyKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A redirect answer.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Redirect {
    /// 301, 302 (default), 303, 307 or 308.
    #[serde(default = "default_redirect_status")]
    pub status: Int<300, 399>,
    /// `Location` template: `{scheme}`, `{host}` (as the client sent it), `{path}`
    /// (after any prefix rewrite) and `{query}` (`?a=b`, or nothing) are filled in.
    pub location: String,
}

fn default_redirect_status() -> Int<300, 399> {
    Int(302)
}

/// A fixed answer.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FixedResponse {
    pub status: Int<200, 599>,
    #[serde(default)]
    pub body: String,
    #[serde(default = "default_content_type")]
    pub content_type: String,
}

fn default_content_type() -> String {
    "text/plain; charset=utf-8".into()
}

/// Headers to add (appended), set (replacing) or remove.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeaderRules {
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

impl HeaderRules {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.set.is_empty() && self.remove.is_empty()
    }
}

// === the services in force ===

impl Config {
    /// Every service's name, `default` first, then the `services:` map in name order.
    pub fn service_names(&self) -> Vec<&str> {
        let mut out = vec![DEFAULT_SERVICE];
        out.extend(
            self.services
                .keys()
                .map(String::as_str)
                .filter(|n| *n != DEFAULT_SERVICE),
        );
        out
    }

    /// The settings one service runs with: a config whose top-level backends,
    /// strategy and blocks are the service's (falling back to the top-level ones),
    /// so every policy reads a service the way it reads the single pool. `None` for
    /// an unknown name. Routes, services and the proxy-wide rate limit are left out.
    pub fn service_config(&self, name: &str) -> Option<Config> {
        let mut c = self.clone();
        c.routes = Vec::new();
        c.services = BTreeMap::new();
        c.rate_limit = None;
        let Some(s) = self.services.get(name) else {
            return (name == DEFAULT_SERVICE).then_some(c);
        };
        if s.strategy.is_some() {
            c.strategy = s.strategy;
            c.server.strategy = None;
        }
        c.backends = s.backends.clone();
        c.discover = s.discover.clone();
        macro_rules! inherit {
            ($($f:ident),*) => {$(
                if let Some(v) = &s.$f {
                    c.$f = v.clone();
                }
            )*};
        }
        inherit!(
            timeouts,
            retries,
            upstream,
            adaptive,
            consistent_hash,
            panic_threshold
        );
        macro_rules! inherit_opt {
            ($($f:ident),*) => {$(
                if s.$f.is_some() {
                    c.$f = s.$f.clone();
                }
            )*};
        }
        inherit_opt!(
            health_check,
            outlier_detection,
            circuit_breaker,
            rate_limit,
            slow_start
        );
        Some(c)
    }
}

// === validation ===

/// Whether `name` is usable as a service or route name (a metric label value).
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// The rules across services and routes: `(field path, reason)` each.
pub(super) fn validate(c: &Config) -> Vec<(String, String)> {
    let mut errs = Vec::new();
    for name in c.services.keys() {
        if !valid_name(name) {
            errs.push((
                format!("services.{name}"),
                "service names use letters, digits, `-`, `_` or `.` (at most 64)".into(),
            ));
        }
    }
    if c.services.contains_key(DEFAULT_SERVICE) && (!c.backends.is_empty() || c.discover.is_some())
    {
        errs.push((
            format!("services.{DEFAULT_SERVICE}"),
            "the top-level backends already form the service `default`: configure it in one place"
                .into(),
        ));
    }
    for name in c.service_names() {
        let Some(sc) = c.service_config(name) else {
            continue;
        };
        if name == DEFAULT_SERVICE && !c.services.contains_key(name) {
            continue; // the top-level blocks: validated as such
        }
        for (field, reason) in super::validate_pool(&sc) {
            errs.push((format!("services.{name}.{field}"), reason));
        }
    }
    let known = |s: &str| s == DEFAULT_SERVICE || c.services.contains_key(s);
    let mut labels: HashMap<String, usize> = HashMap::new();
    for (i, r) in c.routes.iter().enumerate() {
        let at = |f: &str| format!("routes[{i}].{f}");
        let label = r.label(i);
        if !valid_name(&label) {
            errs.push((
                at("name"),
                "route names use letters, digits, `-`, `_` or `.` (at most 64)".into(),
            ));
        }
        if let Some(first) = labels.insert(label.clone(), i) {
            errs.push((
                at("name"),
                format!("duplicate route name `{label}` (already routes[{first}])"),
            ));
        }
        let actions = [
            r.service.is_some(),
            !r.split.is_empty(),
            r.redirect.is_some(),
            r.respond.is_some(),
        ];
        match actions.iter().filter(|a| **a).count() {
            1 => {}
            0 => errs.push((
                format!("routes[{i}]"),
                "needs one action: service, split, redirect or respond".into(),
            )),
            _ => errs.push((
                format!("routes[{i}]"),
                "has more than one action (service, split, redirect, respond): keep one".into(),
            )),
        }
        if let Some(s) = &r.service
            && !known(s)
        {
            errs.push((at("service"), format!("unknown service `{s}`")));
        }
        for (j, t) in r.split.iter().enumerate() {
            if !known(&t.service) {
                errs.push((
                    format!("routes[{i}].split[{j}].service"),
                    format!("unknown service `{}`", t.service),
                ));
            }
        }
        if !r.split.is_empty() && r.split.iter().all(|t| t.weight.get() == 0) {
            errs.push((at("split"), "at least one weight must be above 0".into()));
        }
        if r.sticky.is_some() && r.split.is_empty() {
            errs.push((at("sticky"), "only applies to a split".into()));
        }
        if let Some(rd) = &r.redirect
            && !matches!(rd.status.get(), 301 | 302 | 303 | 307 | 308)
        {
            errs.push((
                at("redirect.status"),
                "must be 301, 302, 303, 307 or 308".into(),
            ));
        }
        if let Some(rd) = &r.redirect
            && http::HeaderValue::from_str(&rd.location).is_err()
        {
            errs.push((
                at("redirect.location"),
                "is not a valid header value".into(),
            ));
        }
        validate_match(&r.matches, &at, &mut errs);
        if (r.strip_prefix || r.replace_prefix.is_some()) && r.matched_prefix().is_none() {
            errs.push((
                at(if r.strip_prefix {
                    "strip_prefix"
                } else {
                    "replace_prefix"
                }),
                "needs match.path_prefix or match.path_segment_prefix".into(),
            ));
        }
        if r.strip_prefix && r.replace_prefix.is_some() {
            errs.push((
                at("replace_prefix"),
                "strip_prefix and replace_prefix exclude each other".into(),
            ));
        }
        if let Some(p) = &r.replace_prefix
            && !p.starts_with('/')
        {
            errs.push((
                at("replace_prefix"),
                format!("must start with `/`, got `{p}`"),
            ));
        }
        for (side, rules) in [
            ("request_headers", &r.request_headers),
            ("response_headers", &r.response_headers),
        ] {
            for (kind, map) in [("add", &rules.add), ("set", &rules.set)] {
                for (k, v) in map {
                    if http::HeaderName::from_bytes(k.as_bytes()).is_err() {
                        errs.push((
                            format!("routes[{i}].{side}.{kind}.{k}"),
                            "is not a valid header name".into(),
                        ));
                    }
                    if http::HeaderValue::from_str(v).is_err() {
                        errs.push((
                            format!("routes[{i}].{side}.{kind}.{k}"),
                            "is not a valid header value".into(),
                        ));
                    }
                }
            }
            for (j, k) in rules.remove.iter().enumerate() {
                if http::HeaderName::from_bytes(k.as_bytes()).is_err() {
                    errs.push((
                        format!("routes[{i}].{side}.remove[{j}]"),
                        "is not a valid header name".into(),
                    ));
                }
            }
        }
        if r.timeout.is_some_and(|t| t.get().is_zero()) {
            errs.push((at("timeout"), "must be greater than 0".into()));
        }
    }
    for (j, later) in c.routes.iter().enumerate() {
        if let Some(i) = (0..j).find(|&i| covers(&c.routes[i].matches, &later.matches)) {
            errs.push((
                format!("routes[{j}]"),
                format!(
                    "is shadowed by routes[{i}] (`{}`), which matches every request it does: it would never be used",
                    c.routes[i].label(i)
                ),
            ));
        }
    }
    errs
}

fn validate_match(m: &RouteMatch, at: &dyn Fn(&str) -> String, errs: &mut Vec<(String, String)>) {
    if let Some(h) = &m.host {
        let name = h.strip_prefix("*.").unwrap_or(h);
        if name.is_empty()
            || name.contains('*')
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            errs.push((
                at("match.host"),
                format!("`{h}`: expected a host name or `*.domain`"),
            ));
        }
    }
    let paths = [
        ("match.path_prefix", &m.path_prefix),
        ("match.path", &m.path),
        ("match.path_segment_prefix", &m.path_segment_prefix),
    ];
    for (field, p) in paths {
        if let Some(p) = p
            && !p.starts_with('/')
        {
            errs.push((at(field), format!("must start with `/`, got `{p}`")));
        }
    }
    if paths.iter().filter(|(_, p)| p.is_some()).count() > 1 {
        errs.push((
            at("match"),
            "give one of path, path_prefix, path_segment_prefix".into(),
        ));
    }
    for k in m.headers.keys() {
        if http::HeaderName::from_bytes(k.as_bytes()).is_err() {
            errs.push((
                at(&format!("match.headers.{k}")),
                "is not a valid header name".into(),
            ));
        }
    }
}

/// The path condition of a match, normalised.
#[derive(Clone, Copy)]
enum PathCond<'a> {
    Any,
    Prefix(&'a str),
    Exact(&'a str),
    Segment(&'a str),
}

fn path_cond(m: &RouteMatch) -> PathCond<'_> {
    if let Some(p) = &m.path {
        PathCond::Exact(p)
    } else if let Some(p) = &m.path_prefix {
        PathCond::Prefix(p)
    } else if let Some(p) = &m.path_segment_prefix {
        PathCond::Segment(p)
    } else {
        PathCond::Any
    }
}

/// Whether a path matches a segment-aware prefix.
pub fn segment_prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || prefix.ends_with('/') || rest.starts_with('/'),
        None => false,
    }
}

/// Whether every request `b` matches is matched by `a` too (then `b`, after `a`,
/// is never used). Conservative: `false` when unsure.
pub fn covers(a: &RouteMatch, b: &RouteMatch) -> bool {
    let host = match (&a.host, &b.host) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(x), Some(y)) => {
            let (x, y) = (x.to_ascii_lowercase(), y.to_ascii_lowercase());
            match x.strip_prefix('*') {
                None => x == y,
                // `*.example.com` covers `a.example.com` and `*.x.example.com`.
                Some(suffix) => y.ends_with(suffix) && y.len() > suffix.len(),
            }
        }
    };
    let path = match (path_cond(a), path_cond(b)) {
        (PathCond::Any, _) => true,
        (_, PathCond::Any) => false,
        (PathCond::Exact(x), PathCond::Exact(y)) => x == y,
        (PathCond::Exact(_), _) => false,
        (PathCond::Prefix(x), PathCond::Exact(y) | PathCond::Prefix(y) | PathCond::Segment(y)) => {
            y.starts_with(x)
        }
        (PathCond::Segment(x), PathCond::Exact(y) | PathCond::Segment(y)) => {
            segment_prefix_matches(x, y)
        }
        // A plain prefix `y` also matches `y` + anything: covered only when `y`
        // itself ends past a segment boundary of `x`.
        (PathCond::Segment(x), PathCond::Prefix(y)) => {
            segment_prefix_matches(x, y) && (y.len() > x.len() || x.ends_with('/'))
        }
    };
    let method = a.method.is_empty()
        || (!b.method.is_empty() && b.method.0.iter().all(|m| a.method.0.contains(m)));
    let values = |x: &BTreeMap<String, ValueMatch>, y: &BTreeMap<String, ValueMatch>, ci: bool| {
        x.iter().all(|(k, cond)| {
            let found = if ci {
                y.iter()
                    .find(|(k2, _)| k2.eq_ignore_ascii_case(k))
                    .map(|(_, v)| v)
            } else {
                y.get(k)
            };
            match (cond, found) {
                (_, None) => false,
                (ValueMatch::Present, Some(ValueMatch::Exact(_) | ValueMatch::Present)) => true,
                (c, Some(d)) => c == d,
            }
        })
    };
    host && path
        && method
        && values(&a.headers, &b.headers, true)
        && values(&a.query, &b.query, false)
}
