//! Micro-benchmarks of the per-request hot path, through the library's public API:
//!
//! - `balance/*`: picking a backend for each strategy over 3 and 16 backends, as
//!   `forward` does it (`Snapshot::pick`: availability pass + strategy), and the
//!   strategy alone (`Balance::pick` with every member eligible).
//! - `headers/*`: the request-head rewrite `forward::prepare` does (upgrade
//!   detection, hop-by-hop removal, `Expect` removal) and the `X-Forwarded-*` lines
//!   the head is encoded with, on realistic header sets. `prepare` itself is
//!   private; it is mirrored here with the same public `forward::headers` calls in
//!   the same order, the lines written into a buffer as the encoder does.
//! - `ratelimit/*`: `RateLimiter::check` as the proxy calls it with the embedded
//!   (memory) store, i.e. standalone local token buckets (the store is never on the
//!   request path); the clustered lease path with leases refilled from a
//!   `MemoryStore`; and the store's own token bucket (`StateStore::take_tokens`).
//!
//! Run: `cargo bench -p switchyard --bench hot_path` (add `-- --quick` for a fast
//! pass, or a filter such as `-- balance/`).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request};
use tokio::time::Instant;

use switchyard::config::types::in_any;
use switchyard::config::{self, Cidr, Config, OnStoreError};
use switchyard::forward::{Peer, headers};
use switchyard::ratelimit::{Checked, ClusterLink, RateLimiter};
use switchyard::route::Router;
use switchyard::snapshot::{Limiters, Service, Snapshot};
use switchyard::state::{MemoryStore, Overlay, StateStore, TokenRequest};
use switchyard::telemetry::metrics::Metrics;
use switchyard_http1::codec::Extra as _;

fn parse(yaml: &str) -> Config {
    config::parse(yaml, "bench.yaml").expect("bench config parses")
}

// === balance ===

/// A config with `n` backends of mixed weights and the resilience blocks on (so the
/// availability pass checks circuits and ejections as a production config would).
fn balance_config(strategy: &str, n: usize) -> Config {
    // `round-robin+slow_start`: the strategy with a slow-start window in force.
    let (strategy, extra) = match strategy.split_once('+') {
        Some((s, "slow_start")) => (
            s,
            "slow_start: 30s\nconsistent_hash: {key: 'header:x-user-id'}\n",
        ),
        _ => (strategy, "consistent_hash: {key: 'header:x-user-id'}\n"),
    };
    let mut yaml = format!(
        "strategy: {strategy}\n{extra}circuit_breaker: {{}}\noutlier_detection: {{}}\nbackends:\n"
    );
    for i in 0..n {
        yaml.push_str(&format!(
            "  - url: http://10.0.0.{}:8080\n    weight: {}\n",
            i + 1,
            1 + i % 3
        ));
    }
    parse(&yaml)
}

/// A snapshot whose backends look like they have been serving for a while: a few
/// requests in flight and a latency estimate each (the adaptive cost reads both).
fn warm_snapshot(strategy: &str, n: usize, now: Instant) -> Service {
    let cfg = Arc::new(balance_config(strategy, n));
    let tau = cfg.adaptive.decay.get().as_nanos() as f64;
    let snap = Snapshot::build(1, cfg, &Overlay::default(), Limiters::default(), &|_| None)
        .services
        .remove(0);
    for (i, m) in snap.members.iter().enumerate() {
        let b = &m.backend;
        b.stats.active.store((i % 4) as u64, Relaxed);
        let rtt = Duration::from_micros(800 + 450 * (i as u64 % 5));
        b.latency
            .observe(rtt.as_nanos() as f64, i % 7 == 6, b.nanos(now), tau);
    }
    snap
}

fn bench_balance(c: &mut Criterion) {
    let mut g = c.benchmark_group("balance");
    for strategy in [
        "round-robin",
        "least-connections",
        "adaptive",
        "consistent-hash",
        "round-robin+slow_start",
        "least-connections+slow_start",
        "consistent-hash+slow_start",
    ] {
        for n in [3usize, 16] {
            // A fixed `now`: the proxy reads the clock once per attempt anyway, and
            // the clock is not what is measured here.
            let now = Instant::now();
            let snap = warm_snapshot(strategy, n, now);
            g.bench_with_input(
                BenchmarkId::new(format!("pick/{strategy}"), n),
                &n,
                |b, _| {
                    b.iter(|| snap.pick(black_box(&[]), black_box(now)));
                },
            );
            // A retry: the first choice is excluded.
            let first = snap.pick(&[], now).expect("a backend");
            g.bench_with_input(
                BenchmarkId::new(format!("pick_retry/{strategy}"), n),
                &n,
                |b, _| b.iter(|| snap.pick(black_box(&[first]), black_box(now))),
            );
            let all = |_: usize| true;
            g.bench_with_input(
                BenchmarkId::new(format!("strategy_only/{strategy}"), n),
                &n,
                |b, _| b.iter(|| snap.balancer.pick(&snap.members, &all, black_box(now))),
            );
            if strategy.starts_with("consistent-hash") {
                // As `forward` does it: the key from the request's header, then the pick.
                let headers = header_map(&[("x-user-id", "user-4711")]);
                let ip = std::net::IpAddr::from([127, 0, 0, 1]);
                g.bench_with_input(
                    BenchmarkId::new(format!("pick_keyed/{strategy}"), n),
                    &n,
                    |b, _| {
                        b.iter(|| {
                            let key = snap.request_key(black_box(&headers), "/", ip);
                            snap.pick_keyed(black_box(&[]), key, black_box(now))
                        })
                    },
                );
            }
        }
    }
    g.finish();
}

// === headers ===

/// A header map built the way hyper's HTTP/1 parser builds a request's: sized for
/// the headers received, then appended to (so it has the same spare room).
fn header_map(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::with_capacity(pairs.len());
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).expect("header name"),
            HeaderValue::from_str(v).expect("header value"),
        );
    }
    h
}

/// A header name and value.
type Pair = (&'static str, &'static str);

/// A browser/SPA calling a JSON API over HTTP/1.1 keep-alive.
const BROWSER: &[(&str, &str)] = &[
    ("host", "api.example.com"),
    (
        "user-agent",
        "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
    ),
    ("accept", "application/json, text/plain, */*"),
    ("accept-language", "en-US,en;q=0.9,de;q=0.7"),
    ("accept-encoding", "gzip, deflate, br, zstd"),
    (
        "authorization",
        "Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    ),
    ("content-type", "application/json"),
    ("content-length", "348"),
    ("origin", "https://app.example.com"),
    ("referer", "https://app.example.com/orders?page=2"),
    (
        "cookie",
        "session=8f14e45fceea167a5a36dedd4bea2543; theme=dark; _ga=GA1.2.1234567890.1700000000",
    ),
    ("x-request-id", "6f1c2b9e-5d1a-4c7e-9a8b-3f2e1d0c9b8a"),
    (
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    ),
    ("sec-fetch-mode", "cors"),
    ("sec-fetch-site", "same-site"),
    ("connection", "keep-alive"),
    // Forged: replaced for an untrusted peer.
    ("x-forwarded-for", "6.6.6.6"),
];

/// From a trusted L4/L7 hop in front of us: an existing chain to extend.
const BEHIND_LB: &[(&str, &str)] = &[
    ("host", "api.example.com"),
    ("user-agent", "okhttp/4.12.0"),
    ("accept", "application/json"),
    ("accept-encoding", "gzip"),
    ("authorization", "Bearer 2YotnFZFEjr1zCsicMWpAA"),
    ("content-type", "application/json; charset=utf-8"),
    ("content-length", "1024"),
    ("x-request-id", "0b7d3c1e-8f4a-4e2b-9c6d-5a4b3c2d1e0f"),
    ("x-forwarded-for", "203.0.113.7, 198.51.100.23"),
    ("x-forwarded-proto", "https"),
    ("x-forwarded-host", "api.example.com"),
    ("x-real-ip", "198.51.100.23"),
    ("connection", "keep-alive"),
];

/// Every kind of hop-by-hop header, including one named by `Connection`.
const HOP_HEAVY: &[(&str, &str)] = &[
    ("host", "api.example.com"),
    ("user-agent", "curl/8.5.0"),
    ("accept", "*/*"),
    ("connection", "keep-alive, x-internal-token, te"),
    ("keep-alive", "timeout=5, max=1000"),
    ("x-internal-token", "s3cr3t"),
    ("te", "trailers"),
    ("transfer-encoding", "chunked"),
    ("trailer", "x-checksum"),
    ("proxy-authorization", "Basic dXNlcjpwYXNz"),
    ("proxy-connection", "keep-alive"),
    ("expect", "100-continue"),
    ("content-type", "application/octet-stream"),
];

/// A WebSocket handshake (the upgrade survives the hop).
const WEBSOCKET: &[(&str, &str)] = &[
    ("host", "api.example.com"),
    ("user-agent", "Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0"),
    ("origin", "https://app.example.com"),
    ("connection", "Upgrade"),
    ("upgrade", "websocket"),
    ("sec-websocket-version", "13"),
    ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    (
        "sec-websocket-extensions",
        "permessage-deflate; client_max_window_bits",
    ),
    ("cookie", "session=8f14e45fceea167a5a36dedd4bea2543"),
];

/// The header part of `forward::prepare` (private), with the same public calls in
/// the same order (`forward` computes `upgrade` just before calling it), and the
/// `X-Forwarded-*` lines the encoder then writes; returns those lines.
fn rewrite(headers: &mut HeaderMap, peer: &Peer, trusted_proxies: &[Cidr]) -> Vec<u8> {
    let upgrade = headers::wants_upgrade(headers);
    let host = headers.get(header::HOST).cloned();
    headers::strip_hop_by_hop(headers, upgrade);
    headers.remove(header::EXPECT);
    let forwarded = headers::Forwarded {
        ip: &peer.ip,
        trusted: in_any(trusted_proxies, peer.addr.ip()),
        host,
        https: peer.https,
    };
    let mut lines = Vec::with_capacity(128);
    forwarded.write(headers, |name, value| {
        lines.extend_from_slice(name);
        lines.extend_from_slice(b": ");
        value.iter().for_each(|v| lines.extend_from_slice(v));
        lines.extend_from_slice(b"\r\n");
    });
    lines
}

fn bench_headers(c: &mut Criterion) {
    let cfg = parse("server:\n  trusted_proxies: [\"10.0.0.0/8\", \"192.168.0.0/16\"]\n");
    let trusted_proxies = cfg.server.trusted_proxies.clone();
    let client = Peer::new(SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)),
        51234,
    ));
    let lb = Peer::new(SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)),
        40000,
    ));
    let cases: [(&str, &[Pair], &Peer); 4] = [
        ("browser_untrusted", BROWSER, &client),
        ("trusted_chain", BEHIND_LB, &lb),
        ("hop_by_hop_heavy", HOP_HEAVY, &client),
        ("websocket_upgrade", WEBSOCKET, &client),
    ];
    let mut g = c.benchmark_group("headers");
    for (name, pairs, peer) in cases {
        // Sanity: the rewrite does what the proxy relies on.
        let mut check = header_map(pairs);
        let lines = rewrite(&mut check, peer, &trusted_proxies);
        assert!(lines.starts_with(b"x-forwarded-for: "));
        assert!(!check.contains_key("keep-alive") && !check.contains_key("te"));
        // Each iteration rewrites a freshly built map, built outside the timed part
        // (the proxy rewrites the parsed request's own map in place). Not a clone:
        // a clone has no spare room, so the first insert would reallocate, which the
        // parser's map does not. Small batches keep the maps in cache, as a request
        // just parsed is.
        g.bench_function(format!("rewrite/{name}"), |b| {
            b.iter_batched(
                || header_map(pairs),
                |mut h| {
                    let lines = rewrite(&mut h, peer, &trusted_proxies);
                    (h, lines)
                },
                BatchSize::NumIterations(16),
            );
        });
    }
    g.finish();
}

// === rate limiting ===

fn request(pairs: &[(&str, &str)]) -> Request<()> {
    let mut req = Request::builder()
        .method(Method::GET)
        .uri("/api/v1/orders?page=2")
        .body(())
        .expect("request");
    *req.headers_mut() = header_map(pairs);
    req
}

fn limiter(yaml: &str, link: Option<Arc<ClusterLink>>) -> RateLimiter {
    let cfg = parse(yaml);
    let rl = cfg.rate_limit.as_ref().expect("rate_limit block");
    RateLimiter::new(rl, &cfg.server.trusted_proxies, link)
}

/// Limits far above the offered load: the check admits, as it does for nearly all
/// traffic. Two path rules that do not match, as a typical config has.
fn limit_yaml(key: &str) -> String {
    format!(
        "server:\n  trusted_proxies: [\"10.0.0.0/8\"]\n\
         rate_limit:\n  requests_per_second: 100000000\n  burst: 100000000\n  key: \"{key}\"\n  \
         rules:\n    - path_prefix: /api/expensive\n      requests_per_second: 5\n      burst: 5\n    \
         - path_prefix: /upload\n      requests_per_second: 50\n      burst: 100\n"
    )
}

fn bench_ratelimit(c: &mut Criterion) {
    let metrics = Metrics::default();
    let client = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)), 51234);
    let lb = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)), 40000);
    let api_req = request(&[
        ("host", "api.example.com"),
        ("user-agent", "okhttp/4.12.0"),
        ("accept", "application/json"),
        ("x-api-key", "k_live_51HqLyjWDarjtT1zdp7dc"),
        ("x-request-id", "0b7d3c1e-8f4a-4e2b-9c6d-5a4b3c2d1e0f"),
    ]);
    let lb_req = request(&[
        ("host", "api.example.com"),
        ("accept", "application/json"),
        ("x-forwarded-for", "203.0.113.7, 198.51.100.23"),
    ]);
    let mut g = c.benchmark_group("ratelimit");

    let admit = |l: &RateLimiter, req: &Request<()>, peer: SocketAddr| {
        assert!(
            l.check(req, peer, &metrics).admitted_now(),
            "bench expects admits"
        );
    };

    let l = limiter(&limit_yaml("client_ip"), None);
    admit(&l, &api_req, client);
    g.bench_function("check/client_ip_one_client", |b| {
        b.iter(|| l.check(black_box(&api_req), black_box(client), &metrics));
    });

    // 10,000 distinct clients in turn: buckets spread over every shard, cache misses.
    let l = limiter(&limit_yaml("client_ip"), None);
    let peers: Vec<SocketAddr> = (0..10_000u32)
        .map(|i| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + i * 7919)), 40_000))
        .collect();
    for &p in &peers {
        admit(&l, &api_req, p);
    }
    let mut next = 0usize;
    g.bench_function("check/client_ip_10k_clients", |b| {
        b.iter(|| {
            next = (next + 1) % peers.len();
            l.check(black_box(&api_req), peers[next], &metrics)
        });
    });

    // Behind a trusted proxy: the client is read from X-Forwarded-For.
    let l = limiter(&limit_yaml("client_ip"), None);
    admit(&l, &lb_req, lb);
    g.bench_function("check/client_ip_via_trusted_xff", |b| {
        b.iter(|| l.check(black_box(&lb_req), black_box(lb), &metrics));
    });

    let l = limiter(&limit_yaml("header:x-api-key"), None);
    admit(&l, &api_req, client);
    g.bench_function("check/header_key", |b| {
        b.iter(|| l.check(black_box(&api_req), black_box(client), &metrics));
    });

    let l = limiter(&limit_yaml("global"), None);
    admit(&l, &api_req, client);
    g.bench_function("check/global", |b| {
        b.iter(|| l.check(black_box(&api_req), black_box(client), &metrics));
    });

    // An exhausted bucket: every check is a refusal (a 429 error value, dropped).
    let l = limiter(
        "rate_limit:\n  requests_per_second: 0.001\n  burst: 1\n  key: client_ip\n",
        None,
    );
    admit(&l, &api_req, client);
    assert!(matches!(
        l.check(&api_req, client, &metrics),
        Checked::Done(Err(_))
    ));
    g.bench_function("check/client_ip_rejected", |b| {
        b.iter(|| l.check(black_box(&api_req), black_box(client), &metrics));
    });

    // Clustered: checks spend leased tokens; every 64 checks the replica syncs with
    // the store (a `MemoryStore` here, standing in for Redis), outside the timing,
    // as the background task does every 50 ms.
    let store = MemoryStore::default();
    let link = Arc::new(ClusterLink::new(
        "bench",
        OnStoreError::Local,
        Duration::from_millis(500),
        true,
    ));
    let l = limiter(&limit_yaml("client_ip"), Some(link));
    let sync = |l: &RateLimiter| {
        // The first check of a key waits for a fetch; then the periodic round.
        l.fetch(&store)
            .now_or_never()
            .expect("the memory store answers at once")
            .expect("the memory store does not fail");
        l.sync(&store)
            .now_or_never()
            .expect("the memory store answers at once")
            .expect("the memory store does not fail");
    };
    const ROUND: u64 = 64;
    for _ in 0..4 {
        for _ in 0..ROUND {
            let _ = l.check(&api_req, client, &metrics);
        }
        sync(&l);
    }
    admit(&l, &api_req, client);
    g.bench_function("check/cluster_leased", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            let mut done = 0;
            while done < iters {
                let round = ROUND.min(iters - done);
                let t = Instant::now();
                for _ in 0..round {
                    let _ = black_box(l.check(black_box(&api_req), black_box(client), &metrics));
                }
                spent += t.elapsed();
                done += round;
                sync(&l);
            }
            spent
        });
    });

    // The store's own token bucket: one sync round for 64 active clients.
    let store = MemoryStore::default();
    let round: Vec<TokenRequest> = (0..64)
        .map(|i| TokenRequest {
            bucket: format!("{:016x}", 0x9e37_79b9_7f4a_7c15u64.wrapping_mul(i + 1)),
            rate: 100.0,
            burst: 200.0,
            want: 8,
            debt: 1,
        })
        .collect();
    g.bench_function("memory_store/take_tokens_64_buckets", |b| {
        b.iter_batched(
            || round.clone(),
            |reqs| store.take_tokens(reqs).now_or_never(),
            BatchSize::NumIterations(16),
        );
    });
    g.finish();
}

/// Route lookup with 1,000 host routes and 1,000 path-prefix routes (issue #19:
/// at most 200 ns a match), for a request matching a host route, one matching a
/// prefix route, and one matching nothing.
fn bench_routes(c: &mut Criterion) {
    let mut yaml =
        String::from("services:\n  api:\n    backends: [{url: 'http://127.0.0.1:1'}]\nroutes:\n");
    for i in 0..1000 {
        yaml.push_str(&format!(
            "  - {{match: {{host: h{i}.example.com}}, service: api}}\n"
        ));
    }
    for i in 0..1000 {
        yaml.push_str(&format!(
            "  - {{match: {{path_segment_prefix: /svc{i}/v1}}, service: api}}\n"
        ));
    }
    let cfg = parse(&yaml);
    let names = cfg.service_names();
    let router = Router::build(&cfg.routes, &|n| names.iter().position(|x| *x == n), None);
    let req = |host: &str, path: &str| {
        Request::builder()
            .uri(path)
            .header(header::HOST, host)
            .body(())
            .expect("request")
    };
    let mut g = c.benchmark_group("routes");
    for (name, r) in [
        ("host_match", req("h777.example.com", "/users/42")),
        (
            "prefix_match",
            req("other.example.org", "/svc777/v1/users/42"),
        ),
        ("no_match", req("other.example.org", "/none/users/42")),
    ] {
        g.bench_function(format!("find_2000/{name}"), |b| {
            b.iter(|| router.find(black_box(&r)).map(|x| x.index))
        });
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50)
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_balance, bench_headers, bench_ratelimit, bench_routes
}
criterion_main!(benches);
