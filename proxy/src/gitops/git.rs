//! Following a branch of a git repository with the `git` command-line tool.
//!
//! Why the CLI rather than libgit2 or gitoxide: it speaks every transport users
//! have (local paths, `file://`, `git://`, `https://` with tokens, `ssh://` with
//! keys and the user's `known_hosts`) with the exact behaviour of the git they
//! already debug with; it adds no C build dependencies (libgit2 drags in OpenSSL and
//! libssh2) and no large crate graph (gitoxide's network transports); and its cost —
//! one short process per poll, every ten seconds by default — is nothing next to a
//! proxy's work. The price is a runtime dependency on `git` (in the container image).
//!
//! Fetches go into a private bare repository (the cache), so the operator's own
//! clone is never touched, and the commit last applied stays available to compare
//! histories. Credentials never appear on a command line: an HTTPS token goes in as
//! an `http.extraHeader` through `GIT_CONFIG_*` variables of the child only, an SSH
//! key through `GIT_SSH_COMMAND`. Git never prompts (`GIT_TERMINAL_PROMPT=0`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

/// A git repository to follow.
#[derive(Clone, Debug)]
pub struct GitSource {
    /// Path or URL.
    pub repo: String,
    pub reference: String,
    /// File inside the repository.
    pub path: String,
    /// Private bare repository fetches go to.
    pub cache: PathBuf,
    /// Environment variable holding an HTTPS token.
    pub token_env: String,
    /// SSH private key for `ssh://` repositories.
    pub ssh_key: Option<String>,
}

/// One fetched revision.
#[derive(Clone, Debug)]
pub struct Revision {
    pub commit: String,
    /// The file's text, or `None` if the commit lacks it.
    pub text: Option<String>,
}

/// Upper bound on one git command (a hung server must not stall reloads forever).
const GIT_TIMEOUT: Duration = Duration::from_secs(60);

impl GitSource {
    /// The repository as shown to operators, without credentials.
    pub fn display_repo(&self) -> String {
        redact(&self.repo)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("git");
        cmd.arg("--git-dir")
            .arg(&self.cache)
            .args(args)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_ASKPASS", "true")
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Ok(token) = std::env::var(&self.token_env) {
            let token = token.trim();
            if !token.is_empty() {
                let user = std::env::var("SWITCHYARD_GIT_USER")
                    .unwrap_or_else(|_| "x-access-token".into());
                let basic = base64(format!("{user}:{token}").as_bytes());
                cmd.env("GIT_CONFIG_COUNT", "1")
                    .env("GIT_CONFIG_KEY_0", "http.extraHeader")
                    .env(
                        "GIT_CONFIG_VALUE_0",
                        format!("Authorization: Basic {basic}"),
                    );
            }
        }
        if let Some(key) = &self.ssh_key {
            cmd.env(
                "GIT_SSH_COMMAND",
                format!(
                    "ssh -i {} -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=accept-new",
                    shell_quote(key)
                ),
            );
        }
        cmd
    }

    async fn run(&self, args: &[&str]) -> Result<(bool, String, String), String> {
        let out = tokio::time::timeout(GIT_TIMEOUT, self.command(args).output())
            .await
            .map_err(|_| format!("git {} timed out after {GIT_TIMEOUT:?}", args[0]))?
            .map_err(|e| format!("cannot run git: {e}"))?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }

    async fn ensure_cache(&self) -> Result<(), String> {
        if self.cache.join("HEAD").exists() {
            return Ok(());
        }
        std::fs::create_dir_all(&self.cache)
            .map_err(|e| format!("cannot create git cache {}: {e}", self.cache.display()))?;
        let out = tokio::time::timeout(
            GIT_TIMEOUT,
            Command::new("git")
                .args(["init", "--bare", "--quiet"])
                .arg(&self.cache)
                .stdin(Stdio::null())
                .output(),
        )
        .await
        .map_err(|_| "git init timed out".to_string())?
        .map_err(|e| format!("cannot run git: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "git init failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(())
    }

    /// Fetches the branch and reads the file at its head.
    pub async fn fetch(&self) -> Result<Revision, String> {
        self.ensure_cache().await?;
        let refspec = format!("+refs/heads/{}:refs/switchyard/head", self.reference);
        let (ok, _, err) = self
            .run(&[
                "fetch",
                "--quiet",
                "--no-tags",
                "--no-write-fetch-head",
                &self.repo,
                &refspec,
            ])
            .await?;
        if !ok {
            return Err(format!(
                "cannot fetch {} ({}): {}",
                self.display_repo(),
                self.reference,
                first_line(&redact(&err))
            ));
        }
        let (ok, out, err) = self
            .run(&["rev-parse", "--verify", "refs/switchyard/head^{commit}"])
            .await?;
        if !ok {
            return Err(format!(
                "fetched branch has no commit: {}",
                first_line(&err)
            ));
        }
        let commit = out.trim().to_string();
        let spec = format!("{commit}:{}", self.path.trim_start_matches('/'));
        let (ok, out, _) = self.run(&["cat-file", "blob", &spec]).await?;
        Ok(Revision {
            commit,
            text: ok.then_some(out),
        })
    }

    /// Whether two commits share any history (false after a force-push of an
    /// unrelated history). Unknown commits count as unrelated.
    pub async fn related(&self, a: &str, b: &str) -> Result<bool, String> {
        let (ok, _, _) = self.run(&["merge-base", a, b]).await?;
        Ok(ok)
    }
}

/// A default cache directory for `repo`, stable across restarts.
pub fn default_cache(repo: &str) -> PathBuf {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    repo.hash(&mut h);
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("switchyard")
        .join(format!("git-{:016x}", h.finish()))
}

/// Removes user info from a URL (`https://user:token@host/x` → `https://***@host/x`).
pub fn redact(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for word in s.split_inclusive(char::is_whitespace) {
        match (word.find("://"), word.find('@')) {
            (Some(scheme_end), Some(at)) if at > scheme_end => {
                out.push_str(&word[..scheme_end + 3]);
                out.push_str("***");
                out.push_str(&word[at..]);
            }
            _ => out.push_str(word),
        }
    }
    out
}

fn first_line(s: &str) -> &str {
    s.lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("(no detail)")
        .trim()
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn base64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn credentials_are_redacted() {
        assert_eq!(
            redact("https://u:secret@git.example/x.git"),
            "https://***@git.example/x.git"
        );
        assert_eq!(
            redact("fatal: unable to access 'https://tok@h/r/': 403"),
            "fatal: unable to access 'https://***@h/r/': 403"
        );
        assert_eq!(redact("/srv/config.git"), "/srv/config.git");
        assert_eq!(
            redact("git@github.com:org/repo.git"),
            "git@github.com:org/repo.git"
        );
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("/k/id_ed25519"), "'/k/id_ed25519'");
        assert_eq!(shell_quote("a'b"), "'a'\\''b'");
    }
}
