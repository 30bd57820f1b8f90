//! Backends from DNS: per service with a `discover` block, a task resolves the name
//! and puts every address in as a member through [`App::set_discovered`] (the same
//! rebuild as the admin overlay, so health checks, circuits and metrics follow
//! them, and addresses gone drain), again when the records' TTL runs out, bounded
//! by `min_ttl` and `max_ttl`. A failed resolution keeps the last answer's members
//! and is counted, logged and shown in `/admin/services`; an answer without
//! records (NXDOMAIN, no A/AAAA) is an answer: the set becomes empty.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolverConfig};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::{Resolver, TokioResolver};
use switchyard_shared::validate::{self, BackendUrl};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::app::App;
use crate::config::dns::DnsTarget;
use crate::config::{Config, DEFAULT_SERVICE, DiscoverConfig, DnsConfig};
use crate::events::now_ms;

/// What one service's task follows; a change restarts it.
#[derive(Clone, Debug, PartialEq)]
struct Spec {
    discover: DiscoverConfig,
    dns: DnsConfig,
}

/// Every service's `discover` block, by service name.
fn specs(config: &Config) -> HashMap<String, Spec> {
    let top = config
        .discover
        .as_ref()
        .filter(|_| !config.services.contains_key(DEFAULT_SERVICE))
        .map(|d| (DEFAULT_SERVICE, d));
    let named = config
        .services
        .iter()
        .filter_map(|(n, s)| Some((n.as_str(), s.discover.as_ref()?)));
    top.into_iter()
        .chain(named)
        .map(|(n, d)| {
            let spec = Spec {
                discover: d.clone(),
                dns: config.dns.clone(),
            };
            (n.to_string(), spec)
        })
        .collect()
}

/// Waits until every discovering service has had its first answer (or failure),
/// at most `limit`: a replica starting then serves its members from the first
/// request on, and a dead DNS server only delays the start.
pub async fn settle(app: &App, limit: Duration) {
    let want = specs(&app.config());
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        let seen = app.discovery();
        let done = want.iter().all(|(name, spec)| {
            seen.get(name).is_some_and(|d| {
                d.dns == spec.discover.dns && (d.last_resolved_ms > 0 || d.last_error.is_some())
            })
        });
        if done {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    warn!("dns discovery: no answer yet at start; serving, members join as names resolve");
}

/// Keeps one resolving task per discovering service, following reloads.
pub async fn supervise(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    let mut tasks: HashMap<String, (Spec, JoinHandle<()>)> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut seen: Option<Arc<Config>> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        let config = app.config();
        if seen.as_ref().is_some_and(|s| Arc::ptr_eq(s, &config)) {
            continue;
        }
        let want = specs(&config);
        seen = Some(config);
        tasks.retain(|name, (spec, h)| {
            let keep = want.get(name) == Some(spec);
            if !keep {
                h.abort();
                if !want.contains_key(name) {
                    app.forget_discovery(name);
                }
            }
            keep
        });
        for (name, spec) in want {
            tasks.entry(name).or_insert_with_key(|name| {
                let h = tokio::spawn(follow(app.clone(), name.clone(), spec.clone()));
                (spec, h)
            });
        }
    }
    for (_, (_, h)) in tasks {
        h.abort();
    }
}

/// Resolves one service's name for as long as the config asks.
async fn follow(app: Arc<App>, service: String, spec: Spec) {
    let name = spec.discover.dns.clone();
    let (min, max) = spec.discover.ttl_bounds(&spec.dns);
    // After a failure: again in a second, within the bounds.
    let retry = Duration::from_secs(1).clamp(min, max);
    // Every query bounded by the resolver's timeout and attempts; SRV targets are
    // looked up together after the SRV query.
    let deadline = spec.dns.timeout.get() * 5;
    let mut failing: Option<String> = None;
    let mut resolver = None;
    loop {
        let outcome = match &resolver {
            Some(r) => resolve(r, &spec.discover, deadline).await,
            None => match build(&spec.dns) {
                Ok(r) => resolve(resolver.insert(r), &spec.discover, deadline).await,
                Err(e) => Err(e),
            },
        };
        let wait = match outcome {
            Ok((urls, ttl)) => {
                let wait = ttl.clamp(min, max);
                let n = urls.len();
                let next = now_ms() + wait.as_millis() as u64;
                if let Some(diff) = app.set_discovered(&service, &name, urls, next) {
                    info!(
                        service = %service,
                        dns = %name,
                        members = n,
                        added = diff.added.len(),
                        removed = diff.removed.len(),
                        "dns discovery: members changed"
                    );
                }
                if failing.take().is_some() {
                    info!(service = %service, dns = %name, "dns discovery: resolving again");
                }
                wait
            }
            Err(e) => {
                let next = now_ms() + retry.as_millis() as u64;
                app.discovery_failed(&service, &name, e.clone(), next);
                if failing.as_deref() != Some(&e) {
                    warn!(
                        service = %service,
                        dns = %name,
                        error = %e,
                        "dns discovery: resolution failed, keeping the last known members"
                    );
                } else {
                    debug!(service = %service, dns = %name, error = %e, "dns discovery: still failing");
                }
                failing = Some(e);
                retry
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// A resolver for `dns`: its nameservers (UDP, then TCP), or the system's.
fn build(dns: &DnsConfig) -> Result<TokioResolver, String> {
    let addrs = dns.nameserver_addrs()?;
    let mut builder = if addrs.is_empty() {
        TokioResolver::builder_tokio()
            .map_err(|e| format!("the system's resolver configuration: {e}"))?
    } else {
        let servers = addrs
            .iter()
            .map(|a| {
                let mut ns = NameServerConfig::udp_and_tcp(a.ip());
                for c in &mut ns.connections {
                    c.port = a.port();
                }
                ns
            })
            .collect();
        Resolver::builder_with_config(
            ResolverConfig::from_name_servers(servers),
            TokioRuntimeProvider::default(),
        )
    };
    let o = builder.options_mut();
    o.timeout = dns.timeout.get();
    o.attempts = 2;
    // We schedule by TTL ourselves; a cache would answer a stopped server's records.
    o.cache_size = 0;
    o.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    builder.build().map_err(|e| format!("resolver: {e}"))
}

/// The members `discover` names now, and the shortest TTL of the records that
/// gave them (`None` answers: the longest wait).
async fn resolve(
    r: &TokioResolver,
    discover: &DiscoverConfig,
    deadline: Duration,
) -> Result<(Vec<BackendUrl>, Duration), String> {
    let target = discover.target()?;
    let work = async {
        match target {
            DnsTarget::Host { name, port } => {
                let (ips, ttl) = addresses(r, &name).await?;
                Ok((urls(ips.into_iter().map(|ip| (ip, port)))?, secs(ttl)))
            }
            DnsTarget::Srv { name } => srv(r, &name).await,
        }
    };
    match tokio::time::timeout(deadline, work).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {deadline:?}")),
    }
}

/// Whether an error is an answer saying the name has no such records.
fn no_records(e: &NetError) -> bool {
    e.is_no_records_found()
}

/// A name's A and AAAA addresses and their shortest TTL.
async fn addresses(r: &TokioResolver, name: &str) -> Result<(Vec<IpAddr>, Option<u32>), String> {
    match r.lookup_ip(name).await {
        Ok(l) => {
            let records = l.as_lookup().answers();
            let ttl = records
                .iter()
                .filter(|rec| rec.data.ip_addr().is_some())
                .map(|rec| rec.ttl)
                .min();
            Ok((l.iter().collect(), ttl))
        }
        Err(e) if no_records(&e) => Ok((Vec::new(), None)),
        Err(e) => Err(format!("{name}: {e}")),
    }
}

/// An SRV name's targets, each resolved, on the record's port.
async fn srv(r: &TokioResolver, name: &str) -> Result<(Vec<BackendUrl>, Duration), String> {
    let lookup = match r.srv_lookup(name).await {
        Ok(l) => l,
        Err(e) if no_records(&e) => return Ok((Vec::new(), Duration::MAX)),
        Err(e) => return Err(format!("{name}: {e}")),
    };
    let mut ttl = None::<u32>;
    let mut targets = Vec::new();
    for rec in lookup.answers() {
        if let RData::SRV(s) = &rec.data {
            ttl = Some(ttl.map_or(rec.ttl, |t| t.min(rec.ttl)));
            targets.push((s.target.to_string(), s.port));
        }
    }
    let answers = futures_util::future::join_all(
        targets
            .iter()
            .map(|(host, port)| async move { (addresses(r, host).await, *port) }),
    )
    .await;
    let mut found = Vec::new();
    for (res, port) in answers {
        let (ips, t) = res?;
        if let Some(t) = t {
            ttl = Some(ttl.map_or(t, |x| x.min(t)));
        }
        found.extend(ips.into_iter().map(|ip| (ip, port)));
    }
    Ok((urls(found)?, secs(ttl)))
}

fn secs(ttl: Option<u32>) -> Duration {
    ttl.map_or(Duration::MAX, |t| Duration::from_secs(t.into()))
}

/// `http://<ip>:<port>` each.
fn urls(addrs: impl IntoIterator<Item = (IpAddr, u16)>) -> Result<Vec<BackendUrl>, String> {
    addrs
        .into_iter()
        .map(|(ip, port)| {
            let url = match ip {
                IpAddr::V4(v4) => format!("http://{v4}:{port}"),
                IpAddr::V6(v6) => format!("http://[{v6}]:{port}"),
            };
            validate::backend_url(&url)
        })
        .collect()
}
