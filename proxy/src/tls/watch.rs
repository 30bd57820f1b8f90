//! Keeps the served certificates current without a restart: certificate files are
//! re-read when their contents change (checked every `tls.watch_interval`, by
//! content, so an atomic rename and a Kubernetes secret's symlink swap are both
//! seen), at once on `SIGHUP`, and a reloaded config's `tls:` block is applied
//! (looked for every second: one pointer comparison).

use std::sync::Arc;

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

use super::Tls;
use crate::app::App;

/// How often a reloaded config is looked for.
const CONFIG_POLL: Duration = Duration::from_secs(1);

pub async fn run(tls: Arc<Tls>, app: Arc<App>, mut stop: watch::Receiver<bool>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            warn!(error = %e, "cannot listen for SIGHUP; certificate files are still polled");
            None
        }
    };
    let mut applied = app.config();
    let mut last_check = Instant::now();
    loop {
        let every = applied
            .tls
            .as_ref()
            .map(|t| t.watch_interval.get())
            .unwrap_or(CONFIG_POLL);
        let hup_now = tokio::select! {
            _ = tokio::time::sleep(every.min(CONFIG_POLL)) => false,
            _ = async {
                match hup.as_mut() {
                    Some(h) => { h.recv().await; }
                    None => std::future::pending::<()>().await,
                }
            } => {
                info!("SIGHUP: checking certificate files");
                true
            }
            _ = stop.changed() => return,
        };
        let config = app.config();
        if !Arc::ptr_eq(&config, &applied) {
            if let Some(t) = &config.tls {
                tls.apply_config(t);
            }
            applied = config;
        }
        if hup_now || last_check.elapsed() >= every {
            last_check = Instant::now();
            tls.check_files();
        }
    }
}
