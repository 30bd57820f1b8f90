//! Header rewriting between client and backend on header maps: hop-by-hop removal
//! (RFC 9110 §7.6.1, as [`crate::codec::hop_by_hop`] says) and
//! `X-Forwarded-For`/`-Proto`/`-Host`.

use std::net::IpAddr;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use smallvec::SmallVec;

use crate::codec::{Extra, has_token, hop_by_hop};

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Removes hop-by-hop headers. With `upgrade`, keeps `Upgrade` and sends
/// `Connection: upgrade` so a WebSocket handshake survives the hop.
///
/// One pass over the names finds what is there (most messages carry none of these,
/// or only `Connection`), and only those are removed: no allocation, no hashed
/// removal of names that are absent.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    strip(headers, upgrade, false);
}

/// [`strip_hop_by_hop`] for a request on its way to a backend: `Expect` goes too
/// (the proxy answers `100-continue` itself), found in the same pass.
pub fn strip_for_backend(headers: &mut HeaderMap, upgrade: bool) {
    strip(headers, upgrade, true);
}

fn strip(headers: &mut HeaderMap, upgrade: bool, expect: bool) {
    let mut present: SmallVec<[HeaderName; 4]> = SmallVec::new();
    let mut connection: Option<HeaderValue> = None;
    for (name, value) in headers.iter() {
        if name == header::CONNECTION {
            // Several Connection lines are rare; the first one names the extra headers.
            connection.get_or_insert_with(|| value.clone());
        }
        let drop = hop_by_hop(name, upgrade) || (expect && name == header::EXPECT);
        if drop && !present.contains(name) {
            present.push(name.clone());
        }
    }
    if let Some(conn) = connection {
        for token in conn.as_bytes().split(|&b| b == b',') {
            let token = token.trim_ascii();
            if token.is_empty() || (upgrade && token.eq_ignore_ascii_case(b"upgrade")) {
                continue;
            }
            let listed = headers
                .keys()
                .find(|k| k.as_str().as_bytes().eq_ignore_ascii_case(token))
                .cloned();
            if let Some(name) = listed
                && !present.contains(&name)
            {
                present.push(name);
            }
        }
    }
    for name in present {
        headers.remove(name);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Whether a request asks to switch protocols (HTTP/1.1 `Connection: upgrade`).
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| has_token(v.as_bytes(), b"upgrade"))
}

/// The `X-Forwarded-*` lines a request gets on its way to a backend. From a trusted
/// peer the existing chain is extended and its proto/host kept; from anyone else
/// all three are replaced, so a client cannot forge its address to a backend or to
/// our rate limiter.
///
/// Applied while the request head is encoded (an [`Extra`] for
/// `Exchange::start_forwarded`): the client's lines that are replaced are skipped
/// ([`Forwarded::replaces`]) and ours are written after the others
/// ([`Forwarded::write`]). That costs no hashed insert
/// into the header map, and for an untrusted peer (the usual case) no lookup
/// at all.
#[derive(Debug)]
pub struct Forwarded<'a> {
    /// The peer's address as a header value (made once per connection, see
    /// `forward::Peer`).
    pub ip: &'a [u8],
    pub trusted: bool,
    /// The request's host, for `X-Forwarded-Host`.
    pub host: Option<HeaderValue>,
    /// The client came over TLS (`X-Forwarded-Proto: https`).
    pub https: bool,
}

impl Extra for Forwarded<'_> {
    /// Whether the client's `name` line is left out (ours takes its place).
    fn replaces(&self, name: &HeaderName) -> bool {
        *name == X_FORWARDED_FOR
            || (!self.trusted && (*name == X_FORWARDED_PROTO || *name == X_FORWARDED_HOST))
    }

    /// Writes our lines, given the client's `headers`: `put(name, value parts)`.
    fn write(&self, headers: &HeaderMap, mut put: impl FnMut(&[u8], &[&[u8]])) {
        let name = X_FORWARDED_FOR.as_str().as_bytes();
        match self
            .trusted
            .then(|| headers.get(&X_FORWARDED_FOR))
            .flatten()
        {
            Some(prev) => put(name, &[prev.as_bytes(), b", ", self.ip]),
            None => put(name, &[self.ip]),
        }
        if !(self.trusted && headers.contains_key(&X_FORWARDED_PROTO)) {
            let proto: &[u8] = if self.https { b"https" } else { b"http" };
            put(X_FORWARDED_PROTO.as_str().as_bytes(), &[proto]);
        }
        if !(self.trusted && headers.contains_key(&X_FORWARDED_HOST))
            && let Some(h) = &self.host
        {
            put(X_FORWARDED_HOST.as_str().as_bytes(), &[h.as_bytes()]);
        }
    }
}

/// A client address as a header value (IPv4-mapped IPv6 shown as IPv4).
pub fn ip_value(ip: IpAddr) -> Bytes {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    match ip {
        // Digits by hand: `to_string` goes through the formatting machinery, about
        // 700 instructions, once per client connection.
        IpAddr::V4(v4) => {
            let mut text = [0u8; 15];
            let mut n = 0;
            for (i, o) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text[n] = b'.';
                    n += 1;
                }
                if o >= 100 {
                    text[n] = b'0' + o / 100;
                    n += 1;
                }
                if o >= 10 {
                    text[n] = b'0' + o / 10 % 10;
                    n += 1;
                }
                text[n] = b'0' + o % 10;
                n += 1;
            }
            Bytes::copy_from_slice(&text[..n])
        }
        // An IP address always renders as a valid header value.
        IpAddr::V6(_) => Bytes::from(ip.to_string()),
    }
}

/// The client address as the trust rules allow: the right-most untrusted entry of
/// `X-Forwarded-For` when the peer is trusted, else the peer itself.
pub fn client_ip(headers: &HeaderMap, peer: IpAddr, trusted: &dyn Fn(IpAddr) -> bool) -> IpAddr {
    if !trusted(peer) {
        return peer;
    }
    let mut client = peer;
    for v in headers.get_all(&X_FORWARDED_FOR).iter().rev() {
        let Ok(s) = v.to_str() else { return client };
        for part in s.rsplit(',') {
            match part.trim().parse::<IpAddr>() {
                Ok(ip) => {
                    client = ip;
                    if !trusted(ip) {
                        return ip;
                    }
                }
                Err(_) => return client,
            }
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hand-written IPv4 digits agree with the standard rendering, for every
    /// octet value in every position; IPv4-mapped IPv6 shows as IPv4.
    #[test]
    fn client_addresses_render_as_the_standard_text() {
        for o in 0..=255u8 {
            for ip in [
                std::net::Ipv4Addr::new(o, 0, 0, 1),
                std::net::Ipv4Addr::new(10, o, 7, 255),
                std::net::Ipv4Addr::new(255, 99, o, 100),
                std::net::Ipv4Addr::new(1, 22, 133, o),
            ] {
                assert_eq!(&ip_value(IpAddr::V4(ip))[..], ip.to_string().as_bytes());
            }
        }
        let mapped: IpAddr = "::ffff:192.0.2.33".parse().expect("v6");
        assert_eq!(&ip_value(mapped)[..], b"192.0.2.33");
        let v6: IpAddr = "2001:db8::7".parse().expect("v6");
        assert_eq!(&ip_value(v6)[..], b"2001:db8::7");
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic x"),
            ("x-keep", "yes"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-keep"], "yes");
    }

    #[test]
    fn a_request_for_a_backend_loses_expect_too() {
        let mut h = map(&[
            ("expect", "100-continue"),
            ("connection", "close"),
            ("x-keep", "yes"),
        ]);
        strip_hop_by_hop(&mut h.clone(), false);
        strip_for_backend(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-keep"], "yes");
        // Between other hops, Expect stays.
        let mut h = map(&[("expect", "100-continue")]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h["expect"], "100-continue");
    }

    #[test]
    fn upgrade_survives_when_asked() {
        let mut h = map(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "k"),
        ]);
        assert!(wants_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["sec-websocket-key"], "k");
    }

    /// What the backend sees as a header map, for a peer at 10.0.0.1 and the
    /// request's host `api.local`.
    fn forwarded_map(h: &HeaderMap, trusted: bool) -> HeaderMap {
        let ip = ip_value("10.0.0.1".parse().unwrap());
        let f = fwd(&ip, trusted, Some("api.local"));
        let pairs = encoded(h, &f);
        let pairs: Vec<(&str, &str)> = pairs.iter().map(|(n, v)| (&**n, &**v)).collect();
        map(&pairs)
    }

    fn fwd<'a>(ip: &'a [u8], trusted: bool, host: Option<&'static str>) -> Forwarded<'a> {
        Forwarded {
            ip,
            trusted,
            host: host.map(HeaderValue::from_static),
            https: false,
        }
    }

    #[test]
    fn a_tls_client_is_forwarded_as_https() {
        let ip = ip_value("10.0.0.1".parse().unwrap());
        let mut f = fwd(&ip, false, Some("api.local"));
        f.https = true;
        let pairs = encoded(&map(&[("x-forwarded-proto", "http")]), &f);
        let protos: Vec<&str> = pairs
            .iter()
            .filter(|(n, _)| n == "x-forwarded-proto")
            .map(|(_, v)| &**v)
            .collect();
        assert_eq!(protos, ["https"]);
    }

    #[test]
    fn forwarded_headers_replaced_for_untrusted_peers() {
        let h = map(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil"),
        ]);
        let h = forwarded_map(&h, false);
        assert_eq!(h["x-forwarded-for"], "10.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "api.local");
    }

    #[test]
    fn forwarded_headers_extended_for_trusted_peers() {
        let h = map(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
        ]);
        let h = forwarded_map(&h, true);
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 10.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "api.local");
    }

    /// The lines a request's head gets: what the client sent, minus what is
    /// replaced, then ours (as `codec::encode_request` writes them).
    fn encoded(h: &HeaderMap, f: &Forwarded<'_>) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = h
            .iter()
            .filter(|(n, _)| !f.replaces(n))
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        f.write(h, |name, value| {
            let v: Vec<u8> = value.concat();
            out.push((
                String::from_utf8(name.to_vec()).unwrap(),
                String::from_utf8(v).unwrap(),
            ));
        });
        out
    }

    fn lines(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn an_untrusted_peer_gets_all_three_forwarded_lines_replaced() {
        let ip = ip_value("10.0.0.1".parse().unwrap());
        let h = map(&[
            ("accept", "*/*"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil"),
        ]);
        let f = fwd(&ip, false, Some("api.local"));
        assert_eq!(
            encoded(&h, &f),
            lines(&[
                ("accept", "*/*"),
                ("x-forwarded-for", "10.0.0.1"),
                ("x-forwarded-proto", "http"),
                ("x-forwarded-host", "api.local"),
            ])
        );
        // Without a host the client's X-Forwarded-Host is still dropped.
        let f = fwd(&ip, false, None);
        assert_eq!(
            encoded(&h, &f),
            lines(&[
                ("accept", "*/*"),
                ("x-forwarded-for", "10.0.0.1"),
                ("x-forwarded-proto", "http"),
            ])
        );
    }

    #[test]
    fn a_trusted_peer_has_its_chain_extended_and_its_proto_and_host_kept() {
        let ip = ip_value("10.0.0.1".parse().unwrap());
        let h = map(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "shop.example"),
        ]);
        let f = fwd(&ip, true, Some("api.local"));
        assert_eq!(
            encoded(&h, &f),
            lines(&[
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "shop.example"),
                ("x-forwarded-for", "1.2.3.4, 10.0.0.1"),
            ])
        );
        // A trusted peer that sent none gets them all from us.
        let f = fwd(&ip, true, Some("api.local"));
        assert_eq!(
            encoded(&map(&[]), &f),
            lines(&[
                ("x-forwarded-for", "10.0.0.1"),
                ("x-forwarded-proto", "http"),
                ("x-forwarded-host", "api.local"),
            ])
        );
    }

    #[test]
    fn client_ip_walks_trusted_hops() {
        let trusted = |ip: IpAddr| ip.to_string().starts_with("10.");
        let h = map(&[("x-forwarded-for", "7.7.7.7, 1.2.3.4, 10.0.0.9")]);
        assert_eq!(
            client_ip(&h, "10.0.0.1".parse().unwrap(), &trusted),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        // untrusted peer: its own address, whatever it claims
        assert_eq!(
            client_ip(&h, "5.5.5.5".parse().unwrap(), &trusted),
            "5.5.5.5".parse::<IpAddr>().unwrap()
        );
        // garbage stops the walk
        let h = map(&[("x-forwarded-for", "nonsense, 10.0.0.2")]);
        assert_eq!(
            client_ip(&h, "10.0.0.1".parse().unwrap(), &trusted),
            "10.0.0.2".parse::<IpAddr>().unwrap()
        );
    }
}
