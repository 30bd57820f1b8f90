use super::*;

#[test]
fn add_form_uses_the_proxys_validation() {
    assert_eq!(
        validate_add(" http://127.0.0.1:9004/ ", "2"),
        Ok(Action::Add {
            url: "http://127.0.0.1:9004".into(),
            weight: 2
        })
    );
    assert_eq!(
        validate_add("http://b:80", ""),
        Ok(Action::Add {
            url: "http://b:80".into(),
            weight: 1
        })
    );
    let e = validate_add("ftp://b", "1").unwrap_err();
    assert!(e.contains("unsupported scheme"), "{e}");
    assert!(validate_add("http://b/path", "1").is_err());
    assert!(validate_add("", "1").is_err());
    let e = validate_add("http://b:80", "0").unwrap_err();
    assert!(e.contains("1 to 1000"), "{e}");
    assert!(validate_add("http://b:80", "1001").is_err());
    let e = validate_add("http://b:80", "1.5").unwrap_err();
    assert!(e.contains("whole number"), "{e}");
}

#[test]
fn requests_match_the_admin_api() {
    let add = Action::Add {
        url: "http://b:80".into(),
        weight: 3,
    };
    assert_eq!(add.path(), "../admin/add");
    assert_eq!(add.body(), r#"{"url":"http://b:80","weight":3}"#);
    assert_eq!(add.verb(), "Add");
    assert!(add.question().contains("http://b:80 with weight 3"));
    let drain = Action::Drain {
        url: "http://b:80".into(),
    };
    assert_eq!(drain.path(), "../admin/remove");
    assert_eq!(drain.body(), r#"{"url":"http://b:80"}"#);
    assert!(
        drain
            .question()
            .starts_with("Drain and remove backend http://b:80?")
    );
    let re = Action::ReAdd {
        url: "http://b:80".into(),
        weight: 2,
    };
    assert_eq!(re.path(), "../admin/add");
    assert_eq!(re.url(), "http://b:80");
    assert_eq!(re.verb(), "Re-add");
}

#[test]
fn answers_become_one_line() {
    let ok = outcome(
        200,
        r#"{"ok":true,"message":"backend http://b:80 in the running set with weight 1","url":"http://b:80"}"#,
    );
    assert!(ok.ok);
    assert_eq!(
        ok.message,
        "backend http://b:80 in the running set with weight 1"
    );
    let nf = outcome(
        404,
        r#"{"error":"backend http://x:80 is not in the running set"}"#,
    );
    assert!(!nf.ok);
    assert!(!nf.auth);
    assert_eq!(
        nf.message,
        "refused (HTTP 404): backend http://x:80 is not in the running set"
    );
    let auth = outcome(401, r#"{"error":"missing bearer token"}"#);
    assert!(auth.auth);
    assert!(outcome(403, "").auth);
    assert_eq!(outcome(403, "").message, "refused (HTTP 403): no details");
    assert_eq!(
        outcome(502, "bad gateway\nmore").message,
        "refused (HTTP 502): bad gateway"
    );
    let none = outcome(0, "TypeError: Failed to fetch");
    assert!(!none.ok);
    assert_eq!(
        none.message,
        "no answer from the proxy: TypeError: Failed to fetch"
    );
    assert!(outcome(200, "not json").ok);
    assert!(outcome(500, &"x".repeat(300)).message.ends_with('…'));
}

#[test]
fn token_in_the_stream_url_and_header() {
    assert_eq!(events_url(None), "../admin/events");
    assert_eq!(events_url(Some("")), "../admin/events");
    assert_eq!(
        events_url(Some("abc-123_x.y~z")),
        "../admin/events?access_token=abc-123_x.y~z"
    );
    assert_eq!(
        events_url(Some("a+b/c=&d")),
        "../admin/events?access_token=a%2Bb%2Fc%3D%26d"
    );
    assert_eq!(encode_component("é"), "%C3%A9");
    assert_eq!(bearer(Some(" s3cret ")), Some("Bearer s3cret".into()));
    assert_eq!(bearer(Some("  ")), None);
    assert_eq!(bearer(None), None);
    assert_eq!(probe_url(), "../admin/config");
}
