//! Validation shared by the config loader, the admin API and the dashboard's form,
//! so a URL the dashboard accepts is exactly a URL the proxy accepts.

use std::fmt;
use std::time::Duration;

/// Smallest accepted backend weight.
pub const MIN_WEIGHT: i64 = 1;
/// Largest accepted backend weight (HAProxy caps at 256, Envoy at 128; we allow a
/// little more room for fine-grained canaries).
pub const MAX_WEIGHT: i64 = 1000;

/// A backend address, checked and split into its parts.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BackendUrl {
    /// `http` or `https`, lower case.
    pub scheme: Scheme,
    /// Host name or IP literal, lower case, IPv6 without brackets.
    pub host: String,
    /// Port, explicit or the scheme's default.
    pub port: u16,
}

/// Upstream protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

impl BackendUrl {
    /// The canonical identity of a backend: `scheme://host:port` with the port always
    /// explicit, so `http://a` and `http://A:80/` name the same backend.
    pub fn key(&self) -> String {
        format!("{}://{}", self.scheme.as_str(), self.authority())
    }

    /// `host:port` (IPv6 hosts bracketed), usable in a `Host` header or to connect.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for BackendUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key())
    }
}

/// Parses a backend URL: `http` or `https`, a host, an optional port, and nothing
/// else (no user info, path, query or fragment: a backend is an address, not a route).
pub fn backend_url(input: &str) -> Result<BackendUrl, String> {
    let s = input.trim();
    if s.is_empty() {
        return Err("backend URL is empty".into());
    }
    let (scheme, rest) = match s.split_once("://") {
        Some((scheme, rest)) => (scheme, rest),
        None => return Err(format!("`{s}` is not a URL: expected http://host[:port]")),
    };
    let scheme = if scheme.eq_ignore_ascii_case("http") {
        Scheme::Http
    } else if scheme.eq_ignore_ascii_case("https") {
        Scheme::Https
    } else {
        return Err(format!(
            "unsupported scheme `{scheme}` in `{s}`: only http and https"
        ));
    };
    // A single trailing slash is harmless and common; anything more is a path.
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['/', '?', '#']) {
        return Err(format!(
            "`{s}` has a path, query or fragment: a backend URL is scheme://host[:port]"
        ));
    }
    if rest.contains('@') {
        return Err(format!(
            "`{s}` has user info: credentials do not belong in a backend URL"
        ));
    }
    let (host, port) = split_host_port(rest).map_err(|e| format!("`{s}`: {e}"))?;
    let port = match port {
        Some(p) => p,
        None => scheme.default_port(),
    };
    Ok(BackendUrl { scheme, host, port })
}

fn split_host_port(authority: &str) -> Result<(String, Option<u16>), String> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| "unclosed `[` in IPv6 host".to_string())?;
        if host.is_empty()
            || !host
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
        {
            return Err(format!("`[{host}]` is not an IPv6 address"));
        }
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| format!("unexpected `{p}` after IPv6 host"))?,
            ),
        };
        (host.to_ascii_lowercase(), port)
    } else {
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        if host.is_empty() {
            return Err("missing host".into());
        }
        let valid = host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
        if !valid || host.len() > 253 {
            return Err(format!("`{host}` is not a valid host name"));
        }
        (host.to_ascii_lowercase(), port)
    };
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(0) | Err(_) => return Err(format!("`{p}` is not a valid port (1-65535)")),
            Ok(p) => Some(p),
        },
    };
    Ok((host, port))
}

/// Checks a backend weight: an integer from [`MIN_WEIGHT`] to [`MAX_WEIGHT`].
pub fn weight(w: i64) -> Result<u32, String> {
    if (MIN_WEIGHT..=MAX_WEIGHT).contains(&w) {
        Ok(w as u32)
    } else {
        Err(format!(
            "weight must be an integer from {MIN_WEIGHT} to {MAX_WEIGHT}, got {w}"
        ))
    }
}

/// Parses `"500ms"`, `"10s"`, `"1m30s"`, `"2h"`, `"100us"`.
pub fn parse_duration(input: &str) -> Result<Duration, String> {
    let s = input.trim();
    if s.is_empty() {
        return Err("empty duration: expected e.g. \"500ms\" or \"10s\"".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!(
                "`{s}` is not a duration: expected e.g. \"500ms\" or \"10s\""
            ));
        }
        let number: f64 = rest[..digits]
            .parse()
            .map_err(|_| format!("`{s}` is not a duration: bad number"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "" => {
                return Err(format!(
                    "`{s}` has no unit: write e.g. \"{s}s\" or \"{s}ms\""
                ));
            }
            other => {
                return Err(format!(
                    "`{s}` has an unknown unit `{other}` (use ns, us, ms, s, m or h)"
                ));
            }
        };
        let secs = number * scale;
        if !secs.is_finite() || secs > 1e9 {
            return Err(format!("`{s}` is too long"));
        }
        total += Duration::from_secs_f64(secs);
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_seed_urls() {
        let u = backend_url("http://backend1:80").unwrap();
        assert_eq!(u.host, "backend1");
        assert_eq!(u.port, 80);
        assert_eq!(u.key(), "http://backend1:80");
        assert_eq!(
            backend_url("HTTP://Backend1/").unwrap().key(),
            "http://backend1:80"
        );
        assert_eq!(backend_url("https://api.example.com").unwrap().port, 443);
        assert_eq!(
            backend_url("http://127.0.0.1:9001").unwrap().authority(),
            "127.0.0.1:9001"
        );
        assert_eq!(
            backend_url("http://[::1]:9001").unwrap().authority(),
            "[::1]:9001"
        );
    }

    #[test]
    fn refuses_bad_urls() {
        for bad in [
            "",
            "backend1:80",
            "ftp://backend1",
            "http://",
            "http://:80",
            "http://host:0",
            "http://host:70000",
            "http://host:port",
            "http://host/path",
            "http://host?q=1",
            "http://user:pw@host",
            "http://bad_host-.example",
            "http://[zz]:80",
            "http://ho st",
        ] {
            assert!(backend_url(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn weight_bounds() {
        assert_eq!(weight(1), Ok(1));
        assert_eq!(weight(1000), Ok(1000));
        assert!(weight(0).is_err());
        assert!(weight(-3).is_err());
        assert!(weight(1001).is_err());
    }
}
