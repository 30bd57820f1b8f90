use super::*;

#[test]
fn backoff_doubles_caps_and_resets() {
    let mut b = Backoff::new(500.0, 4_000.0);
    assert_eq!(b.fail(1.0), 500.0);
    assert_eq!(b.fail(1.0), 1_000.0);
    assert_eq!(b.fail(1.0), 2_000.0);
    assert_eq!(b.fail(1.0), 4_000.0);
    assert_eq!(b.fail(1.0), 4_000.0, "capped");
    assert_eq!(b.failures(), 5);
    assert_eq!(b.fail(0.0), 2_000.0, "jitter draws from the upper half");
    for _ in 0..100 {
        b.fail(1.0);
    }
    assert_eq!(b.fail(1.0), 4_000.0, "no overflow after many failures");
    b.reset();
    assert_eq!(b.fail(0.5), 375.0);
}

#[test]
fn happy_path_and_staleness() {
    let mut l = Link::default();
    assert!(!l.is_stale(0.0));
    assert_eq!(l.start(0.0), Command::Connect);
    assert_eq!(l.status(1_000.0).state, "connecting");
    assert!(l.is_stale(3_500.0), "nothing after 3 s of connecting");
    assert_eq!(l.status(3_500.0).state, "stale");
    l.on_snapshot(3_600.0);
    assert_eq!(l.status(4_000.0).state, "live");
    assert!(!l.is_stale(6_600.0));
    assert!(l.is_stale(6_601.0));
    let s = l.status(8_000.0);
    assert_eq!(s.state, "stale");
    assert_eq!(s.text, "stale — no update for 4 s");
    assert_eq!(s.tone, crate::model::Tone::Warn);
    assert_eq!(l.on_tick(8_000.0), None);
}

#[test]
fn errors_probe_then_back_off() {
    let mut l = Link::new(Backoff::new(1_000.0, 8_000.0));
    l.start(0.0);
    l.on_snapshot(100.0);
    assert_eq!(l.on_error(), Some(Command::Probe));
    assert_eq!(l.on_error(), None, "one probe at a time");
    assert_eq!(l.status(200.0).state, "reconnecting");
    assert_eq!(l.on_probe(200.0, Probe::Retry, 1.0), Some(1_000.0));
    let s = l.status(300.0);
    assert_eq!(s.state, "reconnecting");
    assert!(
        s.text.contains("reconnecting in 1 s (attempt 2)"),
        "{}",
        s.text
    );
    assert_eq!(l.on_tick(1_100.0), None);
    assert_eq!(l.on_tick(1_200.0), Some(Command::Connect));
    // fails again before any snapshot: the delay doubles
    assert_eq!(l.on_error(), Some(Command::Probe));
    assert_eq!(l.on_probe(1_300.0, Probe::Retry, 1.0), Some(2_000.0));
    assert_eq!(l.on_tick(3_300.0), Some(Command::Connect));
    // a snapshot resets the backoff
    l.on_snapshot(3_400.0);
    l.on_error();
    assert_eq!(l.on_probe(3_500.0, Probe::Retry, 1.0), Some(1_000.0));
    // a probe answer that arrives when nobody asked changes nothing
    assert_eq!(l.on_probe(3_600.0, Probe::Unauthorized, 1.0), None);
    assert!(matches!(l.phase(), Phase::Waiting { .. }));
}

#[test]
fn token_needed_waits_for_the_user() {
    let mut l = Link::default();
    l.start(0.0);
    l.on_error();
    assert_eq!(l.on_probe(10.0, Probe::Unauthorized, 0.5), None);
    assert_eq!(l.phase(), &Phase::NeedsToken { wrong: false });
    assert_eq!(l.status(20.0).state, "token");
    assert_eq!(l.status(20.0).text, "admin token needed");
    assert_eq!(l.on_tick(60_000.0), None, "no retries without a token");
    assert_eq!(l.on_error(), None);
    assert_eq!(l.start(60_000.0), Command::Connect);
    l.on_error();
    l.on_probe(60_010.0, Probe::Forbidden, 0.5);
    assert_eq!(l.status(60_020.0).text, "admin token refused");
}

#[test]
fn silent_streams_are_restarted() {
    let mut l = Link::default();
    l.start(0.0);
    assert_eq!(l.on_tick(SILENT_RESTART_MS), None);
    assert_eq!(l.on_tick(SILENT_RESTART_MS + 1.0), Some(Command::Probe));
    let mut l = Link::default();
    l.start(0.0);
    l.on_snapshot(1_000.0);
    assert_eq!(l.on_tick(5_000.0), None);
    assert_eq!(
        l.on_tick(1_000.0 + SILENT_RESTART_MS + 1.0),
        Some(Command::Probe)
    );
    assert_eq!(l.phase(), &Phase::Checking);
}
