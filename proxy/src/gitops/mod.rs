//! Config reloads: a git branch (every replica follows the same branch and
//! converges on the same commit) or a plain file, through one path:
//! fetch → parse → validate (the `switchyard check` code) → build a snapshot → swap.
//!
//! - A new revision that parses and validates is applied atomically: requests in
//!   flight finish on the snapshot they started with, kept backends keep their live
//!   state, removed ones drain, new ones start cold.
//! - Anything else — a YAML error, an invalid value, a missing file, an unreachable
//!   repository, a force-push to an unrelated history — is refused: the last good
//!   config keeps serving and the error (commit, file, line, reason) shows in
//!   `GET /admin/config`, the `switchyard_config_reloads_total{result="refused"}`
//!   metric and the log (once per distinct bad revision). The next good revision is
//!   applied normally.
//! - Files are polled (every second by default) by content, so editors' atomic renames and
//!   Kubernetes' ConfigMap symlink swaps are seen (an inotify watch on the file
//!   itself misses both; Traefik #5589, #10409). `SIGHUP` and `POST /admin/reload`
//!   reload at once.
//! - Settings read only at start (listeners, threads, the cluster store) are applied
//!   at the next restart; the reload says which.

pub mod git;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use switchyard_shared::{ConfigErrorView, ConfigSourceView};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

pub use self::git::GitSource;
use crate::app::App;
use crate::config::{self, Config, ConfigErrors};
use crate::events::now_ms;

/// Where the config comes from.
#[derive(Clone, Debug)]
pub enum Source {
    File(PathBuf),
    Git(GitSource),
}

/// Turns a fetched config into the one to run (command-line overrides).
pub type Adjust = Arc<dyn Fn(Config) -> Result<Config, String> + Send + Sync>;

impl Source {
    pub fn view(&self) -> ConfigSourceView {
        match self {
            Source::File(p) => ConfigSourceView {
                kind: "file".into(),
                path: p.display().to_string(),
                repo: None,
                r#ref: None,
            },
            Source::Git(g) => ConfigSourceView {
                kind: "git".into(),
                path: g.path.clone(),
                repo: Some(g.display_repo()),
                r#ref: Some(g.reference.clone()),
            },
        }
    }

    fn file_label(&self) -> String {
        match self {
            Source::File(p) => p.display().to_string(),
            Source::Git(g) => g.path.clone(),
        }
    }

    /// Reads the current revision: (commit, text).
    pub async fn fetch(&self) -> Result<(Option<String>, String), ConfigErrorView> {
        match self {
            Source::File(p) => tokio::fs::read_to_string(p)
                .await
                .map(|t| (None, t))
                .map_err(|e| error(None, &self.file_label(), None, format!("cannot read: {e}"))),
            Source::Git(g) => {
                let rev = g.fetch().await.map_err(|e| error(None, &g.path, None, e))?;
                match rev.text {
                    Some(t) => Ok((Some(rev.commit), t)),
                    None => Err(error(
                        Some(rev.commit.clone()),
                        &g.path,
                        None,
                        format!("no such file in commit {}", short(&rev.commit)),
                    )),
                }
            }
        }
    }

    /// Fetches, parses and validates; the config to run, or why not.
    pub async fn load(&self, adjust: &Adjust) -> Result<(Option<String>, Config), ConfigErrorView> {
        let (commit, text) = self.fetch().await?;
        let config = parse(&text, &self.file_label(), commit.as_deref(), adjust)?;
        Ok((commit, config))
    }
}

fn error(commit: Option<String>, file: &str, line: Option<u32>, reason: String) -> ConfigErrorView {
    ConfigErrorView {
        commit,
        file: file.to_string(),
        line,
        reason,
        at_ms: now_ms(),
    }
}

fn parse(
    text: &str,
    file: &str,
    commit: Option<&str>,
    adjust: &Adjust,
) -> Result<Config, ConfigErrorView> {
    let config = config::parse(text, file).map_err(|ConfigErrors(errs)| {
        let reason = errs
            .iter()
            .map(|e| match &e.field {
                Some(f) => format!("{f}: {}", e.reason),
                None => e.reason.clone(),
            })
            .collect::<Vec<_>>()
            .join("; ");
        error(
            commit.map(str::to_string),
            file,
            errs.first().and_then(|e| e.line),
            reason,
        )
    })?;
    adjust(config).map_err(|e| error(commit.map(str::to_string), file, None, e))
}

fn short(commit: &str) -> &str {
    &commit[..commit.len().min(12)]
}

/// What a reload did and how one is asked for (kept with the state they report on).
pub use crate::app::{Outcome, ReloadHandle, ReloadRequest};

/// What has been applied, to recognise "nothing new".
#[derive(Clone, Debug, Default)]
pub struct Applied {
    pub commit: Option<String>,
    pub hash: u64,
}

fn hash(text: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

/// The first load, at start: the config to run (if any) and what was applied.
pub async fn initial(
    source: &Source,
    adjust: &Adjust,
) -> Result<(Config, Applied), ConfigErrorView> {
    let (commit, text) = source.fetch().await?;
    let config = parse(&text, &source.file_label(), commit.as_deref(), adjust)?;
    Ok((
        config,
        Applied {
            commit,
            hash: hash(&text),
        },
    ))
}

struct Reloader {
    app: Arc<App>,
    source: Source,
    adjust: Adjust,
    applied: Applied,
    /// The last refused revision (commit or content hash), so it is reported once.
    refused: Option<(Option<String>, u64, String)>,
}

/// Starts following `source`, checking every `poll`; returns the handle for
/// `POST /admin/reload`.
pub fn spawn(
    app: Arc<App>,
    source: Source,
    adjust: Adjust,
    applied: Applied,
    poll: Duration,
    mut stop: watch::Receiver<bool>,
) -> ReloadHandle {
    let (tx, mut rx) = mpsc::channel::<ReloadRequest>(8);
    let every = poll;
    let mut r = Reloader {
        app,
        source,
        adjust,
        applied,
        refused: None,
    };
    tokio::spawn(async move {
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            let reply = tokio::select! {
                _ = tick.tick() => None,
                asked = rx.recv() => match asked {
                    Some(reply) => Some(reply),
                    None => return,
                },
                _ = async {
                    match hup.as_mut() {
                        Some(h) => { h.recv().await; }
                        None => std::future::pending::<()>().await,
                    }
                } => {
                    info!("SIGHUP: reloading the config");
                    None
                }
                _ = stop.changed() => return,
            };
            let allow_unrelated = reply.as_ref().is_some_and(|r| r.allow_unrelated);
            let outcome = r.reload(allow_unrelated).await;
            if let Some(req) = reply {
                let _ = req.reply.send(outcome);
            }
        }
    });
    ReloadHandle::new(tx)
}

impl Reloader {
    /// Fetches the source and applies what is new; `allow_unrelated` accepts one
    /// revision whose history does not descend from the applied one.
    async fn reload(&mut self, allow_unrelated: bool) -> Outcome {
        let (commit, text) = match self.fetch_settled().await {
            Ok(x) => x,
            Err(e) => return self.refuse(None, 0, e),
        };
        let h = hash(&text);
        let same = match (&commit, &self.applied.commit) {
            (Some(new), Some(old)) => new == old,
            _ => h == self.applied.hash,
        };
        if same {
            return Outcome::Unchanged { commit };
        }
        if let (Source::Git(g), Some(new), Some(old)) =
            (&self.source, &commit, &self.applied.commit)
            && let Ok(false) = g.related(old, new).await
        {
            let e = error(
                Some(new.clone()),
                &g.path,
                None,
                format!(
                    "history rewritten: {} shares no history with the applied {} (force-push?); \
                         refused until `POST /admin/reload?allow_unrelated=true` or a restart",
                    short(new),
                    short(old)
                ),
            );
            if !allow_unrelated {
                return self.refuse(Some(new.clone()), h, e);
            }
        }
        let config = match parse(
            &text,
            &self.source.file_label(),
            commit.as_deref(),
            &self.adjust,
        ) {
            Ok(c) => c,
            Err(e) => return self.refuse(commit, h, e),
        };
        // Upstream TLS files (CA, client certificates) must load, else refused.
        if let Err(e) = crate::forward::tls::configure(&config) {
            let e = error(commit.clone(), &self.source.file_label(), None, e);
            return self.refuse(commit, h, e);
        }
        let restart_needed = restart_needed(&self.app.config(), &config);
        if !restart_needed.is_empty() {
            warn!(settings = ?restart_needed, "config applied; these settings take effect after a restart");
        }
        let diff = self.app.apply_config(config, commit.clone());
        self.app.metrics.config_reloads.fetch_add(1, Relaxed);
        self.applied = Applied {
            commit: commit.clone(),
            hash: h,
        };
        self.refused = None;
        Outcome::Applied {
            commit,
            added: diff.added,
            removed: diff.removed,
            changed: diff.changed,
            restart_needed,
        }
    }

    /// A file caught mid-write reads as garbage; read again after a moment and use
    /// the text once two reads agree. The text in force (same hash) is taken as it
    /// is: a file polled every second is not parsed every second.
    async fn fetch_settled(&self) -> Result<(Option<String>, String), ConfigErrorView> {
        let (commit, text) = self.source.fetch().await?;
        if matches!(self.source, Source::Git(_))
            || hash(&text) == self.applied.hash
            || config::parse(&text, "").is_ok()
        {
            return Ok((commit, text));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.source.fetch().await
    }

    fn refuse(&mut self, commit: Option<String>, h: u64, e: ConfigErrorView) -> Outcome {
        let again = self
            .refused
            .as_ref()
            .is_some_and(|(c, rh, reason)| *c == commit && *rh == h && *reason == e.reason);
        if !again {
            self.app.metrics.config_failures.fetch_add(1, Relaxed);
            warn!(
                commit = commit.as_deref().unwrap_or(""),
                file = %e.file,
                line = e.line.unwrap_or(0),
                reason = %e.reason,
                "config refused; the last good config keeps serving"
            );
            self.app.refuse_config(e.clone());
            self.refused = Some((commit, h, e.reason.clone()));
        }
        Outcome::Refused { error: e }
    }
}

/// Settings the running process reads only at start.
pub fn restart_needed(old: &Config, new: &Config) -> Vec<String> {
    let (o, n) = (&old.server, &new.server);
    let mut out = Vec::new();
    let mut check = |name: &str, changed: bool| {
        if changed {
            out.push(name.to_string());
        }
    };
    check("server.port", o.port != n.port);
    check("server.admin_port", o.admin_port != n.admin_port);
    check("server.bind", o.bind != n.bind);
    check("server.admin_bind", o.admin_bind != n.admin_bind);
    check("server.threads", o.threads != n.threads);
    check(
        "server.max_connections",
        o.max_connections != n.max_connections,
    );
    check(
        "server.max_header_bytes",
        o.max_header_bytes != n.max_header_bytes,
    );
    check("server.max_headers", o.max_headers != n.max_headers);
    check(
        "server.header_read_timeout",
        o.header_read_timeout != n.header_read_timeout,
    );
    check("server.http2", o.http2 != n.http2);
    let cluster = |c: &Config| {
        c.cluster
            .as_ref()
            .map(|c| (c.redis_url.clone(), c.name.clone(), c.replica_id.clone()))
    };
    check("cluster", cluster(old) != cluster(new));
    check(
        "admin",
        old.admin.token_file != new.admin.token_file
            || old.admin.public_read != new.admin.public_read,
    );
    check(
        "telemetry",
        yaml_serde::to_string(&old.telemetry).ok() != yaml_serde::to_string(&new.telemetry).ok(),
    );
    check("logging.format", old.logging.format != new.logging.format);
    let tls = |c: &Config| {
        c.tls.as_ref().map(|t| {
            (
                t.port,
                t.bind,
                t.session_tickets,
                t.ticket_rotation,
                t.ticket_keys,
                t.acme.is_some(),
                t.self_signed.clone(),
            )
        })
    };
    check(
        "tls (listener, session tickets, acme on/off)",
        tls(old) != tls(new),
    );
    check("admin.tls", old.admin.tls != new.admin.tls);
    out
}
