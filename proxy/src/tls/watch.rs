//! Keeps the served certificates current without a restart: certificate files are
//! re-read when their contents change (checked every `tls.watch_interval`, by
//! content, so an atomic rename and a Kubernetes secret's symlink swap are both
//! seen), at once on `SIGHUP`, and a reloaded config's `tls:` block is applied.

use std::sync::Arc;

use tokio::sync::watch;
use tracing::{info, warn};

use super::Tls;
use crate::app::App;

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
    loop {
        let every = applied
            .tls
            .as_ref()
            .map(|t| t.watch_interval.get())
            .unwrap_or(std::time::Duration::from_secs(1));
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = async {
                match hup.as_mut() {
                    Some(h) => { h.recv().await; }
                    None => std::future::pending::<()>().await,
                }
            } => info!("SIGHUP: checking certificate files"),
            _ = stop.changed() => return,
        }
        let config = app.config();
        if !Arc::ptr_eq(&config, &applied) {
            if let Some(t) = &config.tls {
                tls.apply_config(t);
            }
            applied = config;
        }
        tls.check_files();
    }
}
