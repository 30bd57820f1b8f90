use super::*;

const SEED: &str = r#"server:
  port: 8080
  admin_port: 8081
strategy: "round-robin"
backends:
  - url: "http://backend1:80"
    weight: 1
"#;

fn err(text: &str) -> ConfigError {
    match parse(text, "c.yaml") {
        Ok(_) => panic!("expected an error for:\n{text}"),
        Err(e) => e.0.into_iter().next().unwrap(),
    }
}

#[test]
fn seed_file_loads_unchanged() {
    let c = parse(SEED, "config.yaml").unwrap();
    assert_eq!(c.server.port, 8080);
    assert_eq!(c.server.admin_port, 8081);
    assert_eq!(c.strategy(), Strategy::RoundRobin);
    assert_eq!(c.backends.len(), 1);
    assert_eq!(c.backends[0].url.raw, "http://backend1:80");
    assert_eq!(c.backends[0].weight, Weight(1));
}

#[test]
fn strategy_under_server_is_accepted() {
    let c = parse(
        "server:\n  port: 8080\n  admin_port: 8081\n  strategy: least-connections\nbackends: []\n",
        "c.yaml",
    )
    .unwrap();
    assert_eq!(c.strategy(), Strategy::LeastConnections);
}

#[test]
fn repo_example_configs_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            if let Err(e) = load(&path) {
                panic!("{} is invalid:\n{e}", path.display());
            }
            n += 1;
        }
    }
    assert!(n >= 1, "no example configs found in {}", dir.display());
}

#[test]
fn empty_file_is_all_defaults() {
    let c = parse("", "c.yaml").unwrap();
    assert_eq!(c.server.port, 8080);
    assert!(c.backends.is_empty());
}

#[test]
fn unknown_key_names_line_and_field() {
    let e = err("server:\n  port: 8080\n  prot: 1\n");
    assert_eq!(e.line, Some(3));
    assert_eq!(e.field.as_deref(), Some("server.prot"));
    assert!(e.reason.contains("unknown field `prot`"), "{e}");
    let e = err("strategy: round-robin\nbackend: []\n");
    assert_eq!(e.line, Some(2));
    assert!(e.reason.contains("unknown field `backend`"), "{e}");
}

#[test]
fn bad_url_names_line_and_field() {
    let e = err("backends:\n  - url: http://a:80\n  - url: ftp://b\n");
    assert_eq!(e.line, Some(3));
    assert_eq!(e.field.as_deref(), Some("backends[1].url"));
    assert!(e.reason.contains("unsupported scheme"), "{e}");
    assert_eq!(
        e.to_string(),
        format!("c.yaml:3: backends[1].url: {}", e.reason)
    );
}

#[test]
fn bad_weights_are_refused() {
    for (w, needle) in [
        ("0", "from 1 to 1000"),
        ("-2", "from 1 to 1000"),
        ("100000", "from 1 to 1000"),
        ("1.5", "integer"),
        ("heavy", ""),
    ] {
        let e = err(&format!(
            "backends:\n  - url: http://a:80\n    weight: {w}\n"
        ));
        assert_eq!(e.line, Some(3), "{w}: {e}");
        assert_eq!(e.field.as_deref(), Some("backends[0].weight"), "{w}: {e}");
        assert!(e.reason.contains(needle), "{w}: {e}");
    }
}

#[test]
fn duplicate_backends_are_refused_with_the_second_line() {
    let e = err("backends:\n  - url: http://a:80\n  - url: http://b:80\n  - url: HTTP://A/\n");
    assert_eq!(e.line, Some(4));
    assert_eq!(e.field.as_deref(), Some("backends[2].url"));
    assert!(e.reason.contains("duplicate backend http://a:80"), "{e}");
}

#[test]
fn unknown_strategy_is_refused() {
    let e = err("strategy: random\n");
    assert_eq!(e.line, Some(1));
    assert_eq!(e.field.as_deref(), Some("strategy"));
    assert!(e.reason.contains("unknown strategy `random`"), "{e}");
    assert!(e.reason.contains("least-connections"), "{e}");
}

#[test]
fn durations_must_be_strings_with_units() {
    let e = err("timeouts:\n  connect: 5\n");
    assert_eq!(e.line, Some(2));
    assert_eq!(e.field.as_deref(), Some("timeouts.connect"));
    assert!(e.reason.contains("\"5s\""), "{e}");
    let c = parse(
        "timeouts:\n  connect: 500ms\n  request: \"10s\"\n",
        "c.yaml",
    )
    .unwrap();
    assert_eq!(
        c.timeouts.connect.get(),
        std::time::Duration::from_millis(500)
    );
    assert_eq!(c.timeouts.request.get(), std::time::Duration::from_secs(10));
}

#[test]
fn syntax_errors_have_a_line() {
    let e = err("server:\n  port: [8080\n");
    assert!(e.line.is_some(), "{e}");
}

#[test]
fn resilience_values_are_checked() {
    let e = err("circuit_breaker:\n  failure_threshold: -1\n");
    assert_eq!(
        e.field.as_deref(),
        Some("circuit_breaker.failure_threshold")
    );
    assert!(e.reason.contains("from 1 to"), "{e}");
    let e = err("rate_limit:\n  requests_per_second: 0\n  burst: 5\n");
    assert_eq!(e.field.as_deref(), Some("rate_limit.requests_per_second"));
    assert!(e.reason.contains("greater than 0"), "{e}");
    let e = err("rate_limit:\n  requests_per_second: 5\n  burst: 5\n  key: cookie:session\n");
    assert_eq!(e.field.as_deref(), Some("rate_limit.key"));
    assert!(
        e.reason.contains("unknown key kind `cookie:session`"),
        "{e}"
    );
    let e = err("health_check:\n  unhealthy_threshold: 0\n");
    assert_eq!(e.field.as_deref(), Some("health_check.unhealthy_threshold"));
    let e = err("health_check:\n  interval: 1s\n  timeout: 5s\n");
    assert_eq!(e.field.as_deref(), Some("health_check.timeout"));
    assert_eq!(e.line, Some(3));
    let e = err("health_check:\n  expected_status: \"300-200\"\n");
    assert_eq!(e.field.as_deref(), Some("health_check.expected_status"));
    let e = err("outlier_detection:\n  max_ejection_percent: 150\n");
    assert_eq!(
        e.field.as_deref(),
        Some("outlier_detection.max_ejection_percent")
    );
}

#[test]
fn several_cross_field_problems_are_all_reported() {
    let errs = parse(
        "server:\n  port: 9000\n  admin_port: 9000\nbackends:\n  - url: http://a\n  - url: http://a:80\n",
        "c.yaml",
    )
    .unwrap_err();
    assert_eq!(errs.0.len(), 2, "{errs}");
}

#[test]
fn status_ranges() {
    let r = StatusRanges::parse("200-299, 304").unwrap();
    assert!(r.contains(200) && r.contains(299) && r.contains(304));
    assert!(!r.contains(300) && !r.contains(500));
    assert!(StatusRanges::parse("").is_err());
    assert!(StatusRanges::parse("99").is_err());
}

#[test]
fn the_issues_tls_block_loads_as_written() {
    let c = parse(
        r#"tls:
  port: 8443
  certificates:
    - cert: certs/example.pem
      key: certs/example.key
  acme:
    directory_url: https://acme.example/directory
    email: ops@example.com
    domains: [api.example.com]
    challenge: http-01
    ca_file: /path/to/acme-server-ca.pem
  redirect_http: false
"#,
        "c.yaml",
    )
    .unwrap();
    let t = c.tls.unwrap();
    assert_eq!(t.port, 8443);
    assert_eq!(t.certificates[0].cert, "certs/example.pem");
    let a = t.acme.unwrap();
    assert_eq!(a.domains, ["api.example.com"]);
    assert_eq!(a.challenge, tls::Challenge::Http01);
    assert_eq!(a.ca_file.as_deref(), Some("/path/to/acme-server-ca.pem"));
    assert!(!t.redirect_http);
    // The seed has none: TLS stays off.
    assert!(parse(SEED, "c.yaml").unwrap().tls.is_none());
}

#[test]
fn tls_mistakes_are_named() {
    let e = err("tls:\n  port: 8443\n");
    assert_eq!(e.field.as_deref(), Some("tls"));
    assert!(e.reason.contains("certificates"), "{e}");
    let e = err(
        "tls:\n  certificates: []\n  acme:\n    directory_url: https://a/dir\n    domains: [\"*.example.com\"]\n",
    );
    assert_eq!(e.field.as_deref(), Some("tls.acme.domains[0]"));
    let e = err("tls:\n  self_signed: [a.test]\n  min_version: \"1.1\"\n");
    assert_eq!(e.field.as_deref(), Some("tls.min_version"));
    let e = err(
        "tls:\n  self_signed: [a.test]\n  acme:\n    directory_url: https://a/dir\n    domains: [a.test]\n    challenge: dns-01\n",
    );
    assert!(e.reason.contains("dns-01"), "{e}");
    let e = err("admin:\n  tls: true\n");
    assert_eq!(e.field.as_deref(), Some("admin.tls"));
    let e = err("backends:\n  - url: https://b:443\n    tls:\n      cert: c.pem\n");
    assert_eq!(e.field.as_deref(), Some("backends[0].tls"));
    let e = err("tls:\n  self_signed: [a.test]\n  hsts: \"1 year\"\n");
    assert_eq!(e.field.as_deref(), Some("tls.hsts"));
}

#[test]
fn protocols_and_grpc_health_checks_load_and_mismatches_are_refused() {
    let c = parse(
        "backends:\n  - url: \"http://a:50051\"\n    protocol: h2c\n  - url: \"https://b:443\"\n    protocol: h2\n  - url: \"http://c:80\"\nhealth_check:\n  kind: grpc\n  service: \"\"\n",
        "c.yaml",
    )
    .unwrap();
    let protocols: Vec<_> = c.backends.iter().map(|b| b.protocol).collect();
    assert_eq!(protocols, [Protocol::H2c, Protocol::H2, Protocol::Http1]);
    let hc = c.health_check.as_ref().unwrap();
    assert_eq!((hc.kind, hc.service.as_str()), (HealthKind::Grpc, ""));
    // Written back, it loads the same (http1 is left out as the default).
    let again = parse(&yaml_serde::to_string(&c).unwrap(), "c.yaml").unwrap();
    assert_eq!(again.backends[1].protocol, Protocol::H2);

    let e = err("backends:\n  - url: \"https://a:443\"\n    protocol: h2c\n");
    assert_eq!(e.field.as_deref(), Some("backends[0].protocol"));
    assert_eq!(e.line, Some(3));
    assert!(e.reason.contains("without TLS"), "{}", e.reason);
    let e = err("backends:\n  - url: \"http://a:80\"\n    protocol: h2\n");
    assert!(e.reason.contains("over TLS"), "{}", e.reason);
    let e = err("backends:\n  - url: \"http://a:80\"\n    protocol: http3\n");
    assert!(
        e.reason.contains("unknown protocol `http3`"),
        "{}",
        e.reason
    );
    let e = err("health_check:\n  kind: tcp\n");
    assert!(
        e.reason.contains("unknown health check kind"),
        "{}",
        e.reason
    );
}

const ROUTED: &str = r#"backends:
  - url: "http://backend1:80"
services:
  api:
    strategy: adaptive
    backends:
      - url: "http://10.0.0.5:8080"
        weight: 1
  web:
    backends:
      - url: "http://10.0.0.9:80"
routes:
  - match: { host: "api.example.com", path_prefix: "/v1" }
    service: api
  - match: { path_prefix: "/" }
    service: web
"#;

#[test]
fn the_issue_contract_example_loads() {
    let c = parse(ROUTED, "c.yaml").unwrap();
    assert_eq!(c.service_names(), ["default", "api", "web"]);
    assert_eq!(c.routes.len(), 2);
    let api = c.service_config("api").unwrap();
    assert_eq!(api.strategy(), Strategy::Adaptive);
    assert_eq!(api.backends[0].url.raw, "http://10.0.0.5:8080");
    // What the service leaves out is the top level's.
    assert_eq!(api.timeouts.request, c.timeouts.request);
    // It serializes back to the same thing.
    let again = parse(&to_yaml(&c).unwrap(), "again.yaml").unwrap();
    assert_eq!(again.routes.len(), 2);
    assert_eq!(again.services.len(), 2);
}

#[test]
fn unknown_service_references_are_refused_with_their_line() {
    let e = err("routes:\n  - match: { path_prefix: /a }\n    service: nope\n");
    assert_eq!(e.line, Some(3), "{e}");
    assert!(e.reason.contains("unknown service `nope`"), "{e}");
    let e = err(
        "services:\n  a: {}\nroutes:\n  - match: {path: /x}\n    split:\n      - {service: a, weight: 1}\n      - {service: b, weight: 1}\n",
    );
    assert_eq!(
        e.field.as_deref(),
        Some("routes[0].split[1].service"),
        "{e}"
    );
    assert_eq!(e.line, Some(7), "{e}");
}

#[test]
fn shadowed_routes_are_refused_with_their_line() {
    let e = err(
        "routes:\n  - match: { path_prefix: /api }\n    service: default\n  - match: { path_prefix: /api/v2, method: GET }\n    service: default\n",
    );
    assert_eq!(e.field.as_deref(), Some("routes[1]"), "{e}");
    assert_eq!(e.line, Some(4), "{e}");
    assert!(e.reason.contains("shadowed by routes[0]"), "{e}");
    // Not shadowed: narrower first, or a different host, or a segment boundary.
    for ok in [
        "routes:\n  - {match: {path_prefix: /api/v2}, service: default}\n  - {match: {path_prefix: /api}, service: default}\n",
        "routes:\n  - {match: {host: a.example.com}, service: default}\n  - {match: {host: b.example.com}, service: default}\n",
        "routes:\n  - {match: {path_segment_prefix: /api}, service: default}\n  - {match: {path_prefix: /apiv2}, service: default}\n",
        "routes:\n  - {match: {method: GET}, service: default}\n  - {match: {method: [GET, POST]}, service: default}\n",
        "routes:\n  - {match: {headers: {x-a: '1'}}, service: default}\n  - {match: {headers: {x-a: true}}, service: default}\n",
    ] {
        parse(ok, "c.yaml").unwrap_or_else(|e| panic!("{ok}\n{e}"));
    }
    for bad in [
        "routes:\n  - {match: {host: '*.example.com'}, service: default}\n  - {match: {host: a.example.com, path: /x}, service: default}\n",
        "routes:\n  - {match: {path_segment_prefix: /api}, service: default}\n  - {match: {path_prefix: /api/}, service: default}\n",
        "routes:\n  - {match: {headers: {x-a: true}}, service: default}\n  - {match: {headers: {X-A: '1'}, path: /}, service: default}\n",
        "routes:\n  - {service: default}\n  - {match: {path: /}, respond: {status: 200}}\n",
    ] {
        let e = err(bad);
        assert!(e.reason.contains("shadowed"), "{bad}\n{e}");
    }
}

#[test]
fn route_actions_and_rewrites_are_checked() {
    let e = err("routes:\n  - match: { path: /x }\n");
    assert!(e.reason.contains("needs one action"), "{e}");
    let e = err("routes:\n  - {match: {path: /x}, service: default, respond: {status: 200}}\n");
    assert!(e.reason.contains("more than one action"), "{e}");
    let e = err("routes:\n  - {match: {host: a}, service: default, strip_prefix: true}\n");
    assert!(e.reason.contains("needs match.path_prefix"), "{e}");
    let e = err("routes:\n  - {redirect: {status: 300, location: /x}}\n");
    assert!(e.reason.contains("301, 302"), "{e}");
    let e = err("services:\n  Bad Name: {}\n");
    assert!(e.reason.contains("service names"), "{e}");
    let e = err(
        "backends: [{url: 'http://a:1'}]\nservices:\n  default: {backends: [{url: 'http://b:1'}]}\n",
    );
    assert!(e.reason.contains("in one place"), "{e}");
    let e = err("services:\n  api:\n    backends: [{url: 'http://a:1'}, {url: 'http://a:1/'}]\n");
    assert_eq!(
        e.field.as_deref(),
        Some("services.api.backends[1].url"),
        "{e}"
    );
    assert_eq!(e.line, Some(3), "{e}");
}

#[test]
fn consistent_hash_and_slow_start_load_and_services_inherit_them() {
    let c = parse(
        r#"strategy: consistent-hash
consistent_hash:
  key: "header:X-User-Id"
  balance_factor: 0.5
slow_start: 30s
backends:
  - url: "http://a:80"
services:
  api:
    backends:
      - url: "http://b:80"
  web:
    strategy: round-robin
    slow_start: 0s
    consistent_hash:
      key: path
    backends:
      - url: "http://c:80"
"#,
        "c.yaml",
    )
    .unwrap();
    assert_eq!(c.strategy(), Strategy::ConsistentHash);
    assert_eq!(c.consistent_hash.key.to_string(), "header:x-user-id");
    assert_eq!(c.consistent_hash.balance_factor.0, 0.5);
    let api = c.service_config("api").unwrap();
    assert_eq!(api.strategy(), Strategy::ConsistentHash);
    assert_eq!(api.consistent_hash.balance_factor.0, 0.5);
    assert_eq!(api.slow_start, Some(Dur::secs(30)));
    let web = c.service_config("web").unwrap();
    assert_eq!(web.consistent_hash.key, StickyKey::Path);
    assert_eq!(
        web.consistent_hash.balance_factor.0, 0.25,
        "the block's default"
    );
    assert_eq!(web.slow_start_window(), None, "0s is off");
    let again = parse(&to_yaml(&c).unwrap(), "again.yaml").unwrap();
    assert_eq!(again.slow_start, Some(Dur::secs(30)));
    // defaults: client_ip, 0.25, no slow start
    let d = parse("backends: []\n", "c.yaml").unwrap();
    assert_eq!(d.consistent_hash.key, StickyKey::ClientIp);
    assert_eq!(d.consistent_hash.balance_factor.0, 0.25);
    assert_eq!(d.slow_start, None);
}

#[test]
fn bad_consistent_hash_settings_are_refused() {
    let e = err("consistent_hash:\n  key: body\n");
    assert!(e.reason.contains("unknown key `body`"), "{e}");
    let e = err("consistent_hash:\n  balance_factor: 0\n");
    assert!(e.reason.contains("greater than 0"), "{e}");
    let e = err("slow_start: soon\n");
    assert!(
        e.field.as_deref().unwrap_or("").contains("slow_start"),
        "{e}"
    );
}

#[test]
fn grpc_retries_load_by_code_or_name_and_default_off() {
    let c = parse("", "c.yaml").unwrap();
    assert!(c.retries.on_grpc_status.is_empty());
    assert_eq!(c.retries.replay_buffer_bytes, Int(65_536));
    let c = parse(
        "retries:\n  attempts: 2\n  on_grpc_status: [14, unavailable, RESOURCE_EXHAUSTED]\n  replay_buffer_bytes: 1024\nservices:\n  api:\n    backends: []\n    retries: { on_grpc_status: [UNAVAILABLE] }\nroutes:\n  - match: { path_prefix: /x }\n    service: api\n    retries: { attempts: 1, on_grpc_status: [13] }\n",
        "c.yaml",
    )
    .unwrap();
    assert_eq!(
        c.retries.on_grpc_status,
        [GrpcCode(14), GrpcCode(14), GrpcCode(8)]
    );
    assert_eq!(c.retries.replay_buffer_bytes, Int(1024));
    let svc = c.services["api"].retries.as_ref().unwrap();
    assert_eq!(svc.on_grpc_status, [GrpcCode(14)]);
    assert_eq!(svc.replay_buffer_bytes, Int(65_536), "the default");
    let route = c.routes[0].retries.as_ref().unwrap();
    assert_eq!(route.on_grpc_status, [GrpcCode(13)]);
    // The existing keys are unchanged.
    let c = parse("retries:\n  attempts: 2\n  on_status: [503]\n", "c.yaml").unwrap();
    assert_eq!(c.retries.on_status, [Int(503)]);
    assert!(c.retries.on_grpc_status.is_empty());
}

#[test]
fn bad_grpc_retry_settings_are_refused() {
    for (bad, says) in [
        ("[0]", "from 1 to 16 (0 is OK"),
        ("[17]", "from 1 to 16"),
        ("[-1]", "from 1 to 16"),
        ("[OK]", "`OK`: not a gRPC status code other than OK"),
        ("[NOPE]", "`NOPE`: not a gRPC status code"),
        ("[1.5]", "from 1 to 16"),
        ("14", "a sequence"),
    ] {
        let e = err(&format!("retries:\n  on_grpc_status: {bad}\n"));
        assert!(
            e.field
                .as_deref()
                .is_some_and(|f| f.starts_with("retries.on_grpc_status")),
            "{bad}: {e}"
        );
        assert!(e.reason.contains(says), "{bad}: {e}");
        assert_eq!(e.line, Some(2), "{bad}: {e}");
    }
    for bad in ["-1", "16777217", "64KiB"] {
        let e = err(&format!("retries:\n  replay_buffer_bytes: {bad}\n"));
        assert_eq!(
            e.field.as_deref(),
            Some("retries.replay_buffer_bytes"),
            "{bad}: {e}"
        );
        assert!(e.reason.contains("from 0 to 16777216"), "{bad}: {e}");
    }
    let e = err("services:\n  api:\n    backends: []\n    retries:\n      on_grpc_status: [99]\n");
    assert!(
        e.field
            .as_deref()
            .unwrap_or_default()
            .contains("on_grpc_status"),
        "{e}"
    );
}
