use super::*;
use crate::config;

fn router(yaml: &str) -> (config::Config, Router) {
    let c = config::parse(yaml, "t.yaml").unwrap();
    let names = c
        .service_names()
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
    let r = Router::build(&c.routes, &|n| names.iter().position(|x| x == n), None);
    (c, r)
}

fn req(method: &str, host: &str, uri: &str, headers: &[(&str, &str)]) -> Request<()> {
    let mut b = Request::builder()
        .method(method)
        .uri(uri)
        .header("host", host);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap()
}

fn hit(r: &Router, q: &Request<()>) -> Option<String> {
    r.find(q).map(|x| x.name.to_string())
}

const SERVICES: &str = "services:\n  api: {backends: [{url: 'http://a:1'}]}\n  web: {backends: [{url: 'http://w:1'}]}\n";

#[test]
fn first_match_wins_across_index_buckets() {
    let (_, r) = router(&format!(
        "{SERVICES}routes:
  - {{name: any-get, match: {{method: POST}}, service: web}}
  - {{name: host, match: {{host: api.example.com, path_prefix: /v1}}, service: api}}
  - {{name: wild, match: {{host: '*.example.com'}}, service: web}}
  - {{name: seg, match: {{path_segment_prefix: /api}}, service: api}}
  - {{name: exact, match: {{path: /apiv2}}, service: web}}
  - {{name: hdr, match: {{headers: {{x-canary: '1'}}}}, service: api}}
  - {{name: qry, match: {{query: {{debug: true}}}}, service: api}}
"
    ));
    assert_eq!(
        hit(&r, &req("POST", "api.example.com", "/v1/x", &[])).as_deref(),
        Some("any-get")
    );
    assert_eq!(
        hit(&r, &req("GET", "API.Example.com:8080", "/v1/x", &[])).as_deref(),
        Some("host")
    );
    assert_eq!(
        hit(&r, &req("GET", "api.example.com", "/v2", &[])).as_deref(),
        Some("wild")
    );
    assert_eq!(
        hit(&r, &req("GET", "a.b.example.com", "/", &[])).as_deref(),
        Some("wild")
    );
    assert_eq!(
        hit(&r, &req("GET", "example.com", "/api", &[])).as_deref(),
        Some("seg")
    );
    assert_eq!(
        hit(&r, &req("GET", "other", "/api/x", &[])).as_deref(),
        Some("seg")
    );
    assert_eq!(
        hit(&r, &req("GET", "other", "/apiv2", &[])).as_deref(),
        Some("exact")
    );
    assert_eq!(
        hit(&r, &req("GET", "other", "/z", &[("x-canary", "1")])).as_deref(),
        Some("hdr")
    );
    assert_eq!(
        hit(&r, &req("GET", "other", "/z", &[("x-canary", "2")])),
        None
    );
    assert_eq!(
        hit(&r, &req("GET", "other", "/z?a=1&debug", &[])).as_deref(),
        Some("qry")
    );
    assert_eq!(hit(&r, &req("GET", "other", "/z?a=1", &[])), None);
}

#[test]
fn split_follows_weights_and_sticky_keys() {
    let (_, r) = router(&format!(
        "{SERVICES}routes:
  - match: {{path_prefix: /}}
    split: [{{service: api, weight: 95}}, {{service: web, weight: 5}}]
    sticky: header:x-user
"
    ));
    let route = &r.routes()[0];
    let ip: IpAddr = "127.0.0.1".parse().unwrap();
    let mut web = 0;
    for i in 0..10_000 {
        let q = req("GET", "h", "/", &[("x-user", &format!("user-{i}"))]);
        let first = route.action.service(&q, ip).unwrap();
        assert_eq!(route.action.service(&q, ip), Some(first), "sticky");
        if first == 2 {
            web += 1;
        }
    }
    assert!((300..=700).contains(&web), "{web} of 10000 on the 5% side");
}

#[test]
fn rewrites_and_templates() {
    let (_, r) = router(&format!(
        "{SERVICES}routes:
  - {{match: {{path_prefix: /api}}, service: api, strip_prefix: true}}
  - {{match: {{path_segment_prefix: /old}}, service: web, replace_prefix: /new/}}
"
    ));
    assert_eq!(
        r.routes()[0].rewritten("/api/users").as_deref(),
        Some("/users")
    );
    assert_eq!(r.routes()[0].rewritten("/api").as_deref(), Some("/"));
    assert_eq!(r.routes()[1].rewritten("/old/a").as_deref(), Some("/new/a"));
    let t = template("https://{host}{path}{query}");
    assert_eq!(
        render(&t, "http", "x.org", "/a", Some("b=1")),
        "https://x.org/a?b=1"
    );
    assert_eq!(render(&t, "http", "x.org", "/a", None), "https://x.org/a");
}

#[test]
fn many_routes_find_the_right_one() {
    let mut y = String::from(SERVICES);
    y.push_str("routes:\n");
    for i in 0..1000 {
        y.push_str(&format!(
            "  - {{match: {{host: h{i}.example.com}}, service: api}}\n"
        ));
    }
    for i in 0..1000 {
        y.push_str(&format!(
            "  - {{match: {{path_segment_prefix: /p{i}}}, service: web}}\n"
        ));
    }
    let (_, r) = router(&y);
    assert_eq!(
        r.find(&req("GET", "h999.example.com", "/p3", &[]))
            .unwrap()
            .index,
        999
    );
    assert_eq!(
        r.find(&req("GET", "nope", "/p999/x", &[])).unwrap().index,
        1999
    );
    assert!(r.find(&req("GET", "nope", "/p9999", &[])).is_none());
}

#[test]
fn the_port_is_taken_off_a_host_only_when_it_is_one() {
    for (raw, host) in [
        ("api.example.com:8080", "api.example.com"),
        ("api.example.com", "api.example.com"),
        ("api.example.com:", "api.example.com"),
        ("127.0.0.1:18099", "127.0.0.1"),
        ("[::1]:8443", "[::1]"),
        ("[::1]", "[::1]"),
        ("a:b", "a:b"),
        ("a:1x", "a:1x"),
        ("8080", "8080"),
        (":80", ""),
        ("", ""),
    ] {
        assert_eq!(strip_port(raw), host, "{raw}");
    }
}
