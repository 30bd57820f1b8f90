//! Backends found by DNS: a service's `discover` block (which name to follow)
//! and the top-level `dns` block (which resolver, and the bounds on re-resolving).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Config;
use super::types::Dur;

/// Members from DNS: every address the name has becomes a backend.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoverConfig {
    /// `name:port` (A and AAAA records, each address a member on `port`), or an SRV
    /// name `_service._proto.name` (each target's addresses on the record's port).
    pub dns: String,
    /// Overrides `dns.min_ttl` for this service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_ttl: Option<Dur>,
    /// Overrides `dns.max_ttl` for this service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ttl: Option<Dur>,
}

/// What a `discover.dns` value asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DnsTarget {
    /// A and AAAA records of `name`, each address on `port`.
    Host { name: String, port: u16 },
    /// SRV records of `name`; targets resolved to their addresses.
    Srv { name: String },
}

impl DiscoverConfig {
    /// The parsed name, or why it is not one.
    pub fn target(&self) -> Result<DnsTarget, String> {
        let s = self.dns.trim();
        if s.starts_with('_') {
            if s.contains(':') {
                return Err(format!(
                    "`{s}`: an SRV name carries its ports in its records: leave out `:port`"
                ));
            }
            valid_name(s)?;
            return Ok(DnsTarget::Srv { name: s.into() });
        }
        let Some((name, port)) = s.rsplit_once(':') else {
            return Err(format!(
                "`{s}`: expected name:port (A/AAAA) or _service._proto.name (SRV)"
            ));
        };
        let port: u16 = match port.parse() {
            Ok(p) if p > 0 => p,
            _ => return Err(format!("`{s}`: the port must be 1-65535")),
        };
        valid_name(name)?;
        Ok(DnsTarget::Host {
            name: name.into(),
            port,
        })
    }

    /// The re-resolve bounds in force for this service.
    pub fn ttl_bounds(&self, dns: &DnsConfig) -> (Duration, Duration) {
        (
            self.min_ttl.unwrap_or(dns.min_ttl).get(),
            self.max_ttl.unwrap_or(dns.max_ttl).get(),
        )
    }
}

fn valid_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').filter(|l| !l.is_empty()).all(|l| {
            l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(format!("`{name}` is not a DNS name"))
    }
}

/// The resolver DNS discovery uses.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// `ip` or `ip:port` (port 53 when left out), asked over UDP then TCP; empty:
    /// the system's resolver configuration (`/etc/resolv.conf`, with its search
    /// domains, so a Kubernetes short name resolves).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// Shortest wait between two resolutions of a name, whatever its TTL.
    pub min_ttl: Dur,
    /// Longest wait between two resolutions of a name, whatever its TTL.
    pub max_ttl: Dur,
    /// How long one query waits for a nameserver's answer (each is tried twice).
    pub timeout: Dur,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            nameservers: Vec::new(),
            min_ttl: Dur::secs(1),
            max_ttl: Dur::secs(300),
            timeout: Dur::secs(2),
        }
    }
}

impl DnsConfig {
    /// The configured nameservers' addresses.
    pub fn nameserver_addrs(&self) -> Result<Vec<SocketAddr>, String> {
        self.nameservers
            .iter()
            .map(|s| {
                s.parse::<SocketAddr>()
                    .or_else(|_| s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                    .map_err(|_| format!("`{s}`: expected ip or ip:port"))
            })
            .collect()
    }
}

/// The rules of the `dns` block and of every `discover` block.
pub(super) fn validate(c: &Config) -> Vec<(String, String)> {
    let mut errs = Vec::new();
    if let Err(e) = c.dns.nameserver_addrs() {
        errs.push(("dns.nameservers".into(), e));
    }
    if c.dns.timeout.get().is_zero() {
        errs.push(("dns.timeout".into(), "must be greater than 0".into()));
    }
    let mut blocks: Vec<(String, &DiscoverConfig)> = Vec::new();
    if let Some(d) = &c.discover {
        blocks.push(("discover".into(), d));
    }
    for (name, s) in &c.services {
        if let Some(d) = &s.discover {
            blocks.push((format!("services.{name}.discover"), d));
        }
    }
    let mut bounds = vec![("dns".to_string(), c.dns.min_ttl, c.dns.max_ttl)];
    for (at, d) in &blocks {
        if let Err(e) = d.target() {
            errs.push((format!("{at}.dns"), e));
        }
        let (min, max) = d.ttl_bounds(&c.dns);
        bounds.push((at.clone(), Dur(min), Dur(max)));
    }
    for (at, min, max) in bounds {
        if min.get().is_zero() {
            errs.push((format!("{at}.min_ttl"), "must be greater than 0".into()));
        } else if max < min {
            errs.push((format!("{at}.max_ttl"), "must be at least min_ttl".into()));
        }
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> DiscoverConfig {
        DiscoverConfig {
            dns: s.into(),
            min_ttl: None,
            max_ttl: None,
        }
    }

    #[test]
    fn names_parse_as_host_port_or_srv() {
        assert_eq!(
            d("api.internal:8080").target(),
            Ok(DnsTarget::Host {
                name: "api.internal".into(),
                port: 8080
            })
        );
        assert_eq!(
            d("_http._tcp.api.internal").target(),
            Ok(DnsTarget::Srv {
                name: "_http._tcp.api.internal".into()
            })
        );
        for bad in [
            "api.internal",
            "api.internal:0",
            "api.internal:x",
            ":80",
            "a b:80",
            "_http._tcp.api:80",
        ] {
            assert!(d(bad).target().is_err(), "{bad}");
        }
    }

    #[test]
    fn discover_parses_per_service_and_at_the_top_with_the_dns_block() {
        let c = crate::config::parse(
            "discover: {dns: 'web.internal:80'}\nservices:\n  api:\n    discover: {dns: '_http._tcp.api.internal', max_ttl: 30s}\ndns:\n  nameservers: ['127.0.0.1:5353']\n  min_ttl: 2s\n",
            "t.yaml",
        )
        .unwrap();
        assert_eq!(c.dns.nameservers, ["127.0.0.1:5353"]);
        let top = c.service_config("default").unwrap().discover.unwrap();
        assert_eq!(top.dns, "web.internal:80");
        assert_eq!(
            top.ttl_bounds(&c.dns),
            (Duration::from_secs(2), Duration::from_secs(300))
        );
        let api = c.service_config("api").unwrap().discover.unwrap();
        assert_eq!(
            api.ttl_bounds(&c.dns),
            (Duration::from_secs(2), Duration::from_secs(30))
        );
        // A named service does not inherit the top-level discover.
        let c = crate::config::parse(
            "discover: {dns: 'web.internal:80'}\nservices:\n  api:\n    backends: [{url: 'http://a:80'}]\n",
            "t.yaml",
        )
        .unwrap();
        assert!(c.service_config("api").unwrap().discover.is_none());
    }

    #[test]
    fn bad_discover_and_dns_blocks_are_refused_with_their_field() {
        for (yaml, field) in [
            ("discover: {dns: 'web.internal'}\n", "discover.dns"),
            (
                "services:\n  api:\n    discover: {dns: 'a:80', min_ttl: 10s, max_ttl: 1s}\n",
                "services.api.discover.max_ttl",
            ),
            ("dns: {nameservers: ['ns1']}\n", "dns.nameservers"),
            ("dns: {min_ttl: 0s}\n", "dns.min_ttl"),
            ("dns: {timeout: 0s}\n", "dns.timeout"),
            (
                "discover: {dns: 'a:80'}\nservices:\n  default:\n    discover: {dns: 'b:80'}\n",
                "services.default",
            ),
            ("discover: {dns: 'a:80', extra: 1}\n", "extra"),
        ] {
            let e = crate::config::parse(yaml, "t.yaml")
                .expect_err(yaml)
                .to_string();
            assert!(e.contains(field), "{yaml}: {e}");
        }
    }

    #[test]
    fn nameservers_take_an_optional_port() {
        let c = DnsConfig {
            nameservers: vec!["127.0.0.1:5353".into(), "::1".into()],
            ..DnsConfig::default()
        };
        assert_eq!(
            c.nameserver_addrs(),
            Ok(vec![
                "127.0.0.1:5353".parse().unwrap(),
                "[::1]:53".parse().unwrap()
            ])
        );
        let bad = DnsConfig {
            nameservers: vec!["dns.example".into()],
            ..DnsConfig::default()
        };
        assert!(bad.nameserver_addrs().is_err());
    }
}
