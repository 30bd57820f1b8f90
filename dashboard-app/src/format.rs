//! Short, human-readable renderings of durations, rates, shares, sizes and times.
//! Pure functions (no clock, no locale) so they are tested natively and render the
//! same in every browser.

/// What a missing value shows as.
pub const NONE: &str = "—";

/// A duration in milliseconds: `0.42 ms`, `12 ms`, `1.25 s`, `2 m 05 s`, `3 h 02 m`.
pub fn duration_ms(ms: f64) -> String {
    if !ms.is_finite() || ms < 0.0 {
        return NONE.into();
    }
    if ms < 1.0 {
        return format!("{ms:.2} ms");
    }
    if ms < 10.0 {
        return format!("{ms:.1} ms");
    }
    if ms < 1000.0 {
        return format!("{ms:.0} ms");
    }
    let s = ms / 1000.0;
    if s < 10.0 {
        return format!("{s:.2} s");
    }
    if s < 60.0 {
        return format!("{s:.1} s");
    }
    duration_s(s as u64)
}

/// A whole number of seconds, two units at most: `42 s`, `5 m 03 s`, `2 h 05 m`, `3 d 04 h`.
pub fn duration_s(s: u64) -> String {
    let (d, h, m, sec) = (s / 86_400, (s / 3600) % 24, (s / 60) % 60, s % 60);
    if d > 0 {
        format!("{d} d {h:02} h")
    } else if h > 0 {
        format!("{h} h {m:02} m")
    } else if m > 0 {
        format!("{m} m {sec:02} s")
    } else {
        format!("{sec} s")
    }
}

/// A latency given in seconds (as the histogram maths returns it), or [`NONE`].
pub fn latency(seconds: Option<f64>) -> String {
    match seconds {
        Some(s) => duration_ms(s * 1000.0),
        None => NONE.into(),
    }
}

/// Events per second: `0/s`, `0.25/s`, `3.5/s`, `42/s`, `1.2k/s`, `3.4M/s`.
pub fn rate(per_s: f64) -> String {
    if !per_s.is_finite() || per_s <= 0.0 {
        return "0/s".into();
    }
    if per_s < 1.0 {
        format!("{per_s:.2}/s")
    } else if per_s < 10.0 {
        format!("{per_s:.1}/s")
    } else if per_s < 1000.0 {
        format!("{per_s:.0}/s")
    } else if per_s < 1_000_000.0 {
        format!("{:.1}k/s", per_s / 1000.0)
    } else {
        format!("{:.1}M/s", per_s / 1_000_000.0)
    }
}

/// A share from 0 to 1 as a percentage, or [`NONE`] when there is nothing to divide.
pub fn percent(share: Option<f64>) -> String {
    let Some(p) = share.filter(|s| s.is_finite()).map(|s| s * 100.0) else {
        return NONE.into();
    };
    if p <= 0.0 {
        "0%".into()
    } else if p < 1.0 {
        format!("{p:.2}%")
    } else if p < 10.0 {
        format!("{p:.1}%")
    } else {
        format!("{p:.0}%")
    }
}

/// A size in bytes with binary units: `512 B`, `1.5 KiB`, `12 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if v < 10.0 {
        format!("{v:.1} {}", UNITS[unit])
    } else {
        format!("{v:.0} {}", UNITS[unit])
    }
}

/// A count with thin grouping: `999`, `12 345`, `1 234 567`.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push('\u{2009}');
        }
        out.push(c);
    }
    out
}

/// How long ago `then_ms` was, seen from `now_ms` (both Unix milliseconds):
/// `just now`, `5 s ago`, `3 m 10 s ago`.
pub fn age(now_ms: u64, then_ms: u64) -> String {
    if then_ms == 0 {
        return NONE.into();
    }
    let ms = now_ms.saturating_sub(then_ms);
    if ms < 1000 {
        "just now".into()
    } else {
        format!("{} ago", duration_s(ms / 1000))
    }
}

/// `HH:MM:SS` (UTC) of a Unix time in milliseconds.
pub fn clock_utc(at_ms: u64) -> String {
    let s = at_ms / 1000;
    format!("{:02}:{:02}:{:02}", (s / 3600) % 24, (s / 60) % 60, s % 60)
}

/// `YYYY-MM-DD HH:MM:SS UTC` of a Unix time in milliseconds, or [`NONE`] for 0.
pub fn date_time_utc(at_ms: u64) -> String {
    if at_ms == 0 {
        return NONE.into();
    }
    let (y, m, d) = civil_from_days((at_ms / 86_400_000) as i64);
    format!("{y:04}-{m:02}-{d:02} {} UTC", clock_utc(at_ms))
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// A config commit shortened to 8 characters, or [`NONE`].
pub fn commit(c: Option<&str>) -> String {
    match c {
        Some(c) if !c.is_empty() => c.chars().take(8).collect(),
        _ => NONE.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration_ms(0.42), "0.42 ms");
        assert_eq!(duration_ms(7.25), "7.2 ms");
        assert_eq!(duration_ms(12.4), "12 ms");
        assert_eq!(duration_ms(999.0), "999 ms");
        assert_eq!(duration_ms(1250.0), "1.25 s");
        assert_eq!(duration_ms(12_500.0), "12.5 s");
        assert_eq!(duration_ms(125_000.0), "2 m 05 s");
        assert_eq!(duration_ms(-1.0), NONE);
        assert_eq!(duration_ms(f64::NAN), NONE);
        assert_eq!(duration_s(0), "0 s");
        assert_eq!(duration_s(59), "59 s");
        assert_eq!(duration_s(3 * 3600 + 2 * 60 + 9), "3 h 02 m");
        assert_eq!(duration_s(2 * 86_400 + 4 * 3600), "2 d 04 h");
        assert_eq!(latency(None), NONE);
        assert_eq!(latency(Some(0.0075)), "7.5 ms");
    }

    #[test]
    fn rates_and_shares() {
        assert_eq!(rate(0.0), "0/s");
        assert_eq!(rate(-3.0), "0/s");
        assert_eq!(rate(f64::INFINITY), "0/s");
        assert_eq!(rate(0.25), "0.25/s");
        assert_eq!(rate(3.46), "3.5/s");
        assert_eq!(rate(42.4), "42/s");
        assert_eq!(rate(1234.0), "1.2k/s");
        assert_eq!(rate(3_400_000.0), "3.4M/s");
        assert_eq!(percent(None), NONE);
        assert_eq!(percent(Some(0.0)), "0%");
        assert_eq!(percent(Some(0.0012)), "0.12%");
        assert_eq!(percent(Some(0.015)), "1.5%");
        assert_eq!(percent(Some(1.0)), "100%");
    }

    #[test]
    fn sizes_and_counts() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(12 * 1024 * 1024), "12 MiB");
        assert_eq!(bytes(u64::MAX), "16384 PiB");
        assert_eq!(count(999), "999");
        assert_eq!(count(12_345), "12\u{2009}345");
        assert_eq!(count(1_234_567), "1\u{2009}234\u{2009}567");
    }

    #[test]
    fn times() {
        assert_eq!(age(10_000, 9_500), "just now");
        assert_eq!(age(10_000, 4_000), "6 s ago");
        assert_eq!(age(200_000, 10_000), "3 m 10 s ago");
        assert_eq!(age(1_000, 5_000), "just now", "clock skew is not negative");
        assert_eq!(age(1_000, 0), NONE);
        // 2026-11-25 01:30:55 UTC
        assert_eq!(date_time_utc(1_795_570_255_000), "2026-11-25 01:30:55 UTC");
        assert_eq!(date_time_utc(0), NONE);
        assert_eq!(date_time_utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(clock_utc(1_795_570_255_999), "01:30:55");
        assert_eq!(commit(Some("0cee271abcdef")), "0cee271a");
        assert_eq!(commit(Some("")), NONE);
        assert_eq!(commit(None), NONE);
    }
}
