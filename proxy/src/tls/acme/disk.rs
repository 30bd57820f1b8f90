//! The ACME account and certificates on disk, for a replica on the embedded store
//! (nothing else outlives its restart). Files are JSON, written atomically (a
//! temporary file renamed over the old one) and readable by the owner only.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::warn;

use crate::config::tls::AcmeConfig;

/// `tls.acme.storage_dir`; by default `~/.local/share/switchyard/acme` on the
/// embedded store, and nothing with Redis (the store is the source of truth).
pub fn dir(cfg: &AcmeConfig, store_kind: &str) -> Option<PathBuf> {
    if let Some(d) = &cfg.storage_dir {
        return Some(PathBuf::from(d));
    }
    if store_kind != "memory" {
        return None;
    }
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    Some(base.join("switchyard").join("acme"))
}

pub fn read<T: DeserializeOwned>(dir: &Path, name: &str) -> Option<T> {
    let bytes = std::fs::read(dir.join(name)).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(v) => Some(v),
        Err(e) => {
            warn!(file = %dir.join(name).display(), error = %e, "unreadable ACME file; ignored");
            None
        }
    }
}

/// Writes `value`; a failure is logged (the store still has it).
pub fn write<T: Serialize>(dir: &Path, name: &str, value: &T) {
    if let Err(e) = try_write(dir, name, value) {
        warn!(dir = %dir.display(), error = %e, "cannot keep the ACME state on disk");
    }
}

fn try_write<T: Serialize>(dir: &Path, name: &str, value: &T) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let bytes = serde_json::to_vec_pretty(value)?;
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(name))
}
