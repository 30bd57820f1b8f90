//! The deployment files — `deploy/Dockerfile`, `docker-compose.yml`, the Kubernetes
//! base in `deploy/kubernetes/`, the collector and Prometheus configs and
//! `scripts/local-cluster.sh` — checked against the real thing, with no Docker engine
//! or cluster needed.
//!
//! The files are parsed and every name they use is looked up: flags and `SWITCHYARD_*`
//! variables in `switchyard --help` (or, for variables the help does not list, in the
//! proxy's source), `OTEL_*` variables in the proxy's source, configs through
//! `switchyard check`, ports against the configs and each other, paths in the
//! repository, build stages, `--bin` and `-p` names in the workspace's manifests.
//! Then replicas are started the way the compose file and the Deployment describe
//! them (with loopback addresses) and probed as Docker, Prometheus and the kubelet
//! would. Every check also runs on a deliberately broken copy, to show it can fail.
//! The local cluster script is run for real on free ports.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use common::*;
use http::{Method, Request, StatusCode};
use serde::Deserialize;
use serde_json::Value as J;

const SWITCHYARD: &str = env!("CARGO_BIN_EXE_switchyard");
const DEMO_UPSTREAM: &str = env!("CARGO_BIN_EXE_demo-upstream");

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn report(what: &str, problems: &[String]) {
    assert!(
        problems.is_empty(),
        "{what}: {} problem(s):\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
}

/// Asserts that a broken copy is caught, by a problem mentioning `needle`.
fn caught(what: &str, problems: &[String], needle: &str) {
    assert!(
        problems.iter().any(|p| p.contains(needle)),
        "{what}: expected a problem mentioning `{needle}`, got: {problems:#?}"
    );
}

/// `text` with `from` replaced once (which must be there).
fn mutate(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "`{from}` not found to mutate");
    text.replacen(from, to, 1)
}

// === what exists ===

/// Names the deployment files may use.
struct Known {
    /// Flags in `switchyard --help` and its subcommands' help.
    flags: BTreeSet<String>,
    /// `SWITCHYARD_*` names in that help.
    help_env: BTreeSet<String>,
    /// `"SWITCHYARD_*"` and `"OTEL_*"` string literals in `proxy/src` (outside tests).
    source_env: BTreeSet<String>,
    demo_flags: BTreeSet<String>,
    workspace: Workspace,
}

fn known() -> &'static Known {
    static K: OnceLock<Known> = OnceLock::new();
    K.get_or_init(|| {
        let mut help = String::new();
        for args in [
            &["--help"][..],
            &["run", "--help"],
            &["check", "--help"],
            &["probe", "--help"],
        ] {
            help.push_str(&stdout_of(SWITCHYARD, args));
        }
        let demo_help = stdout_of(DEMO_UPSTREAM, &["--help"]);
        Known {
            flags: flags_in(&help),
            help_env: words(&help)
                .filter(|w| w.starts_with("SWITCHYARD_"))
                .map(String::from)
                .collect(),
            source_env: env_literals(&root().join("proxy/src")),
            demo_flags: flags_in(&demo_help),
            workspace: Workspace::read(),
        }
    })
}

fn stdout_of(bin: &str, args: &[&str]) -> String {
    let out = Command::new(bin).args(args).output().unwrap();
    assert!(out.status.success(), "{bin} {args:?} failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        .filter(|w| !w.is_empty())
}

fn flags_in(help: &str) -> BTreeSet<String> {
    words(help)
        .filter(|w| {
            (w.starts_with("--") && w.len() > 2)
                || (w.len() == 2 && w.starts_with('-') && w.as_bytes()[1].is_ascii_alphabetic())
        })
        .map(String::from)
        .collect()
}

fn env_literals(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            if p.extension().is_none_or(|e| e != "rs") || p.file_name().unwrap() == "tests.rs" {
                continue;
            }
            let text = std::fs::read_to_string(&p).unwrap();
            for prefix in ["\"SWITCHYARD_", "\"OTEL_"] {
                for (i, _) in text.match_indices(prefix) {
                    let rest = &text[i + 1..];
                    let end = rest
                        .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
                        .unwrap_or(rest.len());
                    if rest[end..].starts_with('"') {
                        out.insert(rest[..end].to_string());
                    }
                }
            }
        }
    }
    out
}

/// A problem if an environment variable the files set is not one switchyard reads.
fn check_env_name(name: &str, what: &str, problems: &mut Vec<String>) {
    let k = known();
    if name.starts_with("SWITCHYARD_") {
        if !k.help_env.contains(name) && !k.source_env.contains(name) {
            problems.push(format!(
                "{what}: env {name} is neither in `switchyard --help` nor read by proxy/src"
            ));
        }
    } else if name.starts_with("OTEL_") && !k.source_env.contains(name) {
        problems.push(format!("{what}: env {name} is not read by proxy/src"));
    }
}

/// Problems with the flags of a `switchyard` (or `demo-upstream`) command line.
fn check_flags(args: &[String], flags: &BTreeSet<String>, what: &str, problems: &mut Vec<String>) {
    for a in args {
        if a.starts_with('-') {
            let name = a.split('=').next().unwrap();
            if !flags.contains(name) {
                problems.push(format!("{what}: flag `{name}` is not in --help"));
            }
        }
    }
}

/// Lets clap itself judge flags, their values and the environment's values:
/// `switchyard ARGS check CONFIG` with ENV (and nothing else) set.
fn check_with_clap(
    args: &[String],
    env: &[(String, String)],
    config: &Path,
    what: &str,
    problems: &mut Vec<String>,
) {
    let args: Vec<&String> = args.iter().filter(|a| a.as_str() != "run").collect();
    let mut cmd = Command::new(SWITCHYARD);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .args(args)
        .arg("check")
        .arg(config);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    if !out.status.success() {
        problems.push(format!(
            "{what}: `switchyard ... check {}` refused it: {}{}",
            config.display(),
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        ));
    }
}

/// `switchyard check FILE`.
fn check_config_file(path: &Path, what: &str, problems: &mut Vec<String>) {
    let out = Command::new(SWITCHYARD)
        .arg("check")
        .arg(path)
        .output()
        .unwrap();
    if !out.status.success() {
        problems.push(format!(
            "{what}: switchyard check: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
}

fn flag_value(args: &[String], flag: &str) -> Option<String> {
    args.iter().enumerate().find_map(|(i, a)| {
        if a == flag {
            args.get(i + 1).cloned()
        } else {
            a.strip_prefix(&format!("{flag}=")).map(String::from)
        }
    })
}

/// `scheme://host[:port]/path` → (scheme, host, port, path).
fn split_url(url: &str) -> Option<(String, String, Option<u16>, String)> {
    let (scheme, rest) = url.split_once("://")?;
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let authority = authority.rsplit('@').next()?;
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, Some(p.parse().ok()?)),
        None => (authority, None),
    };
    Some((scheme.into(), host.into(), port, path.into()))
}

fn port_of(addr: &str) -> Option<u16> {
    addr.rsplit(':').next()?.parse().ok()
}

// === Cargo workspace ===

/// Packages of the workspace and their binaries, from the Cargo.toml files.
struct Workspace {
    /// Member directories, as the root manifest lists them.
    members: Vec<String>,
    packages: BTreeMap<String, BTreeSet<String>>,
    rust_version: String,
}

impl Workspace {
    fn read() -> Workspace {
        let text = read("Cargo.toml");
        let start = text.find("members").expect("workspace members");
        let list = &text[start..start + text[start..].find(']').unwrap()];
        let members: Vec<String> = list
            .split('"')
            .skip(1)
            .step_by(2)
            .map(String::from)
            .collect();
        let rust_version = toml_value(&text, "workspace.package", "rust-version").unwrap();
        let mut packages = BTreeMap::new();
        for m in &members {
            let dir = root().join(m);
            let t = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
            let name = toml_value(&t, "package", "name").unwrap();
            let mut bins = BTreeSet::new();
            let mut declared_paths = BTreeSet::new();
            for section in t.split("[[bin]]").skip(1) {
                let section = section.split("\n[").next().unwrap();
                if let Some(n) = toml_value(&format!("[x]\n{section}"), "x", "name") {
                    bins.insert(n);
                }
                if let Some(p) = toml_value(&format!("[x]\n{section}"), "x", "path") {
                    declared_paths.insert(p);
                }
            }
            if dir.join("src/main.rs").exists() && !declared_paths.contains("src/main.rs") {
                bins.insert(name.clone());
            }
            if let Ok(entries) = std::fs::read_dir(dir.join("src/bin")) {
                for e in entries {
                    let p = e.unwrap().path();
                    let rel = format!("src/bin/{}", p.file_name().unwrap().to_string_lossy());
                    if p.extension().is_some_and(|x| x == "rs") && !declared_paths.contains(&rel) {
                        bins.insert(p.file_stem().unwrap().to_string_lossy().into_owned());
                    }
                }
            }
            packages.insert(name, bins);
        }
        Workspace {
            members,
            packages,
            rust_version,
        }
    }
}

/// `key = "value"` inside `[section]` of a TOML file (just enough for Cargo.toml).
fn toml_value(text: &str, section: &str, key: &str) -> Option<String> {
    let header = format!("[{section}]");
    let body = &text[text.find(&header)? + header.len()..];
    let body = body.split("\n[").next()?;
    body.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"').to_string())
    })
}

fn version_at_least(have: &str, want: &str) -> bool {
    let parse = |v: &str| -> Vec<u32> { v.split('.').filter_map(|p| p.parse().ok()).collect() };
    parse(have) >= parse(want)
}

// === YAML ===

/// Every document of a YAML file, merge keys (`<<`) applied, as JSON values.
fn yaml_docs(text: &str) -> Result<Vec<J>, String> {
    let mut out = Vec::new();
    for doc in yaml_serde::Deserializer::from_str(text) {
        let mut v = yaml_serde::Value::deserialize(doc).map_err(|e| e.to_string())?;
        v.apply_merge().map_err(|e| e.to_string())?;
        if !v.is_null() {
            out.push(serde_json::to_value(&v).map_err(|e| e.to_string())?);
        }
    }
    Ok(out)
}

fn yaml_one(text: &str) -> Result<J, String> {
    yaml_docs(text)?
        .into_iter()
        .next()
        .ok_or_else(|| "empty YAML".to_string())
}

fn scalar(v: &J) -> Option<String> {
    match v {
        J::String(s) => Some(s.clone()),
        J::Number(n) => Some(n.to_string()),
        J::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A list of scalars, or a string split on whitespace.
fn string_list(v: &J) -> Vec<String> {
    match v {
        J::Array(a) => a.iter().filter_map(scalar).collect(),
        J::String(s) => s.split_whitespace().map(String::from).collect(),
        _ => Vec::new(),
    }
}

// === Dockerfile ===

#[derive(Debug)]
struct Stage {
    name: String,
    from: String,
    instrs: Vec<(String, String)>,
}

struct CopyInstr {
    from: Option<String>,
    srcs: Vec<String>,
    dest: String,
}

struct Dockerfile {
    args: BTreeMap<String, String>,
    stages: Vec<Stage>,
}

impl Dockerfile {
    fn parse(text: &str) -> Dockerfile {
        let mut logical = Vec::new();
        let mut cur = String::new();
        for line in text.lines() {
            let t = line.trim();
            if t.starts_with('#') || (t.is_empty() && cur.is_empty()) {
                continue;
            }
            match t.strip_suffix('\\') {
                Some(head) => {
                    cur.push_str(head);
                    cur.push(' ');
                }
                None => {
                    cur.push_str(t);
                    logical.push(std::mem::take(&mut cur));
                }
            }
        }
        let mut df = Dockerfile {
            args: BTreeMap::new(),
            stages: Vec::new(),
        };
        for l in logical {
            let (op, rest) = l.split_once(char::is_whitespace).unwrap_or((&l, ""));
            let (op, rest) = (op.to_ascii_uppercase(), rest.trim().to_string());
            if op == "FROM" {
                let parts: Vec<&str> = rest.split_whitespace().collect();
                let name = match parts.as_slice() {
                    [_, as_, n] if as_.eq_ignore_ascii_case("as") => n.to_ascii_lowercase(),
                    _ => format!("stage-{}", df.stages.len()),
                };
                df.stages.push(Stage {
                    name,
                    from: df.substitute(parts[0]),
                    instrs: Vec::new(),
                });
            } else if let Some(stage) = df.stages.last_mut() {
                stage.instrs.push((op, rest));
            } else if op == "ARG"
                && let Some((k, v)) = rest.split_once('=')
            {
                df.args.insert(k.to_string(), v.to_string());
            }
        }
        df
    }

    fn substitute(&self, s: &str) -> String {
        let mut out = s.to_string();
        for (k, v) in &self.args {
            out = out
                .replace(&format!("${{{k}}}"), v)
                .replace(&format!("${k}"), v);
        }
        out
    }

    fn stage(&self, name: &str) -> Option<&Stage> {
        self.stages.iter().find(|s| s.name == name)
    }

    /// The stage and the stages it is built on, nearest first.
    fn chain(&self, name: &str) -> Vec<&Stage> {
        let mut out = Vec::new();
        let mut next = self.stage(name);
        while let Some(s) = next {
            out.push(s);
            next = self.stage(&s.from);
        }
        out
    }

    fn env(&self, stage: &str) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        for s in self.chain(stage).into_iter().rev() {
            for a in s.all("ENV") {
                for kv in a.split_whitespace() {
                    if let Some((k, v)) = kv.split_once('=') {
                        env.insert(k.to_string(), v.trim_matches('"').to_string());
                    }
                }
            }
        }
        env
    }

    /// The last `op` (USER, HEALTHCHECK, ENTRYPOINT, CMD) in force for a stage.
    fn last(&self, stage: &str, op: &str) -> Option<String> {
        self.chain(stage)
            .into_iter()
            .find_map(|s| s.all(op).last().map(String::from))
    }

    fn json_form(&self, stage: &str, op: &str) -> Option<Vec<String>> {
        let raw = self.last(stage, op)?;
        let json = match op {
            "HEALTHCHECK" => raw[raw.find("CMD")? + 3..].trim().to_string(),
            _ => raw,
        };
        serde_json::from_str(&json).ok()
    }

    fn copies(&self, stage: &str) -> Vec<CopyInstr> {
        let Some(s) = self.stage(stage) else {
            return Vec::new();
        };
        s.all("COPY")
            .map(|a| {
                let mut from = None;
                let mut paths = Vec::new();
                for t in a.split_whitespace() {
                    if let Some(f) = t.strip_prefix("--from=") {
                        from = Some(f.to_string());
                    } else if !t.starts_with("--") {
                        paths.push(t.to_string());
                    }
                }
                let dest = paths.pop().unwrap_or_default();
                CopyInstr {
                    from,
                    srcs: paths,
                    dest,
                }
            })
            .collect()
    }
}

impl Stage {
    fn all<'a>(&'a self, op: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.instrs
            .iter()
            .filter(move |(o, _)| o == op)
            .map(|(_, a)| a.as_str())
    }
}

/// `cargo build` invocations in RUN lines: (packages, bins).
fn cargo_builds(stage: &Stage) -> Vec<(Vec<String>, Vec<String>)> {
    let mut out = Vec::new();
    for run in stage.all("RUN") {
        let tokens: Vec<&str> = run.split_whitespace().collect();
        for (i, w) in tokens.windows(2).enumerate() {
            if w != ["cargo", "build"] {
                continue;
            }
            let (mut pkgs, mut bins) = (Vec::new(), Vec::new());
            let mut j = i + 2;
            while j < tokens.len() && !["&&", ";", "||"].contains(&tokens[j]) {
                let t = tokens[j];
                let next = tokens.get(j + 1).map(|s| s.to_string());
                match t {
                    "-p" | "--package" => pkgs.extend(next),
                    "--bin" => bins.extend(next),
                    _ => {
                        if let Some(v) = t.strip_prefix("--package=") {
                            pkgs.push(v.into());
                        } else if let Some(v) = t.strip_prefix("--bin=") {
                            bins.push(v.into());
                        }
                    }
                }
                j += 1;
            }
            out.push((pkgs, bins));
        }
    }
    out
}

/// Entries of `.dockerignore` that would hide `path` from the build context.
fn dockerignored(path: &str) -> Option<String> {
    let ignore = std::fs::read_to_string(root().join(".dockerignore")).unwrap_or_default();
    let path = path.trim_start_matches("./").trim_end_matches('/');
    ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('!'))
        .find(|pat| {
            let pat = pat.trim_start_matches('/').trim_end_matches('/');
            path == pat || path.starts_with(&format!("{pat}/")) || pat == "*"
        })
        .map(String::from)
}

/// Runtime stages the other files rely on.
const PROXY_STAGE: &str = "switchyard";
const DEMO_STAGE: &str = "demo-upstream";
const REPO_STAGE: &str = "config-repo";

fn check_dockerfile(text: &str) -> Vec<String> {
    let mut p = Vec::new();
    let k = known();
    let df = Dockerfile::parse(text);
    let names: Vec<&str> = df.stages.iter().map(|s| s.name.as_str()).collect();
    for want in [PROXY_STAGE, DEMO_STAGE, REPO_STAGE] {
        if !names.contains(&want) {
            p.push(format!("Dockerfile: no stage `{want}` (stages: {names:?})"));
        }
    }
    if names.last() != Some(&PROXY_STAGE) {
        p.push(format!(
            "Dockerfile: the last (default) stage should be `{PROXY_STAGE}`"
        ));
    }
    let mut seen = BTreeSet::new();
    for (i, stage) in df.stages.iter().enumerate() {
        if !seen.insert(&stage.name) {
            p.push(format!("Dockerfile: stage `{}` defined twice", stage.name));
        }
        for c in df.copies(&stage.name) {
            match &c.from {
                Some(from) => {
                    if !names[..i].contains(&from.as_str()) {
                        p.push(format!(
                            "Dockerfile: COPY --from={from} in `{}`: no earlier stage of that name",
                            stage.name
                        ));
                    }
                }
                None => {
                    for src in &c.srcs {
                        if !root().join(src).exists() {
                            p.push(format!(
                                "Dockerfile: COPY {src}: no such path in the repository"
                            ));
                        } else if let Some(pat) = dockerignored(src) {
                            p.push(format!(
                                "Dockerfile: COPY {src} is excluded by .dockerignore ({pat})"
                            ));
                        }
                    }
                }
            }
        }
        for (pkgs, bins) in cargo_builds(stage) {
            for pkg in &pkgs {
                if !k.workspace.packages.contains_key(pkg) {
                    p.push(format!(
                        "Dockerfile: `-p {pkg}` is not a workspace package ({:?})",
                        k.workspace.packages.keys().collect::<Vec<_>>()
                    ));
                }
            }
            for bin in &bins {
                let owners: Vec<&String> = k
                    .workspace
                    .packages
                    .iter()
                    .filter(|(_, b)| b.contains(bin))
                    .map(|(n, _)| n)
                    .collect();
                if owners.is_empty() {
                    p.push(format!(
                        "Dockerfile: `--bin {bin}` is not a binary of the workspace"
                    ));
                } else if !pkgs.is_empty() && !pkgs.iter().any(|pk| owners.contains(&pk)) {
                    p.push(format!(
                        "Dockerfile: `--bin {bin}` is not in package(s) {pkgs:?}"
                    ));
                }
            }
        }
        for run in stage.all("RUN") {
            for t in run.split_whitespace().filter(|t| t.starts_with("scripts/")) {
                if !root().join(t).exists() {
                    p.push(format!("Dockerfile: RUN uses {t}, which does not exist"));
                }
            }
        }
    }
    // The stage that runs cargo has the whole workspace: every member and the lock file.
    for stage in df.stages.iter().filter(|s| !cargo_builds(s).is_empty()) {
        let copied: Vec<String> = df
            .copies(&stage.name)
            .into_iter()
            .filter(|c| c.from.is_none())
            .flat_map(|c| c.srcs)
            .map(|s| s.trim_end_matches('/').to_string())
            .collect();
        for need in k
            .workspace
            .members
            .iter()
            .map(String::as_str)
            .chain(["Cargo.toml", "Cargo.lock"])
        {
            if !copied.iter().any(|c| c == need) {
                p.push(format!(
                    "Dockerfile: stage `{}` builds the workspace but does not COPY `{need}`",
                    stage.name
                ));
            }
        }
    }
    // The runtime images run unprivileged.
    for stage in [PROXY_STAGE, DEMO_STAGE, REPO_STAGE] {
        if df.stage(stage).is_none() {
            continue;
        }
        match df.last(stage, "USER") {
            None => p.push(format!(
                "Dockerfile: stage `{stage}` runs as root (no USER)"
            )),
            Some(u) if u == "root" || u == "0" || u.starts_with("0:") || u.starts_with("root:") => {
                p.push(format!("Dockerfile: stage `{stage}` runs as root"))
            }
            Some(_) => {}
        }
    }
    // The builder compiles with at least the workspace's rust-version.
    if let Some(v) = df.args.get("RUST_VERSION")
        && !version_at_least(v, &k.workspace.rust_version)
    {
        p.push(format!(
            "Dockerfile: RUST_VERSION {v} is older than the workspace's rust-version {}",
            k.workspace.rust_version
        ));
    }
    let all_builds: Vec<(Vec<String>, Vec<String>)> =
        df.stages.iter().flat_map(cargo_builds).collect();
    for bin in ["switchyard", "demo-upstream"] {
        if !all_builds.iter().any(|(_, b)| b.iter().any(|x| x == bin)) {
            p.push(format!("Dockerfile: no `cargo build ... --bin {bin}`"));
        }
    }
    if !df.stages.iter().any(|s| {
        s.all("RUN")
            .any(|r| r.contains("scripts/build-dashboard.sh"))
    }) {
        p.push("Dockerfile: the dashboard is not built (scripts/build-dashboard.sh)".into());
    }

    // The proxy image.
    if df.stage(PROXY_STAGE).is_some() {
        let env = df.env(PROXY_STAGE);
        for name in env.keys() {
            check_env_name(name, "Dockerfile ENV", &mut p);
        }
        let copies = df.copies(PROXY_STAGE);
        match env.get("SWITCHYARD_DASHBOARD_DIR") {
            None => p.push("Dockerfile: SWITCHYARD_DASHBOARD_DIR is not set".into()),
            Some(dir) => {
                if !copies.iter().any(|c| {
                    c.from.is_some() && c.dest.trim_end_matches('/') == dir.trim_end_matches('/')
                }) {
                    p.push(format!(
                        "Dockerfile: SWITCHYARD_DASHBOARD_DIR={dir}, but nothing is copied there"
                    ));
                }
            }
        }
        match env.get("SWITCHYARD_CONFIG") {
            None => p.push("Dockerfile: SWITCHYARD_CONFIG is not set".into()),
            Some(path) => match copies.iter().find(|c| c.from.is_none() && &c.dest == path) {
                None => p.push(format!(
                    "Dockerfile: SWITCHYARD_CONFIG={path}, but no config is copied there"
                )),
                Some(c) => {
                    check_config_file(&root().join(&c.srcs[0]), "Dockerfile: image config", &mut p)
                }
            },
        }
        let installs_git = df.chain(PROXY_STAGE).iter().any(|s| {
            s.all("RUN")
                .any(|r| r.contains("apt-get install") && r.split_whitespace().any(|w| w == "git"))
        });
        if !installs_git {
            p.push(
                "Dockerfile: the switchyard image does not install git (GitOps needs it)".into(),
            );
        }
        match df.json_form(PROXY_STAGE, "ENTRYPOINT") {
            Some(e) if e.first().map(String::as_str) == Some("switchyard") => {
                if !copies.iter().any(|c| c.dest == "/usr/local/bin/switchyard") {
                    p.push("Dockerfile: ENTRYPOINT switchyard, but the binary is not copied to /usr/local/bin/switchyard".into());
                }
            }
            other => p.push(format!("Dockerfile: switchyard ENTRYPOINT is {other:?}")),
        }
        match df.json_form(PROXY_STAGE, "HEALTHCHECK") {
            None => p.push("Dockerfile: the switchyard stage has no HEALTHCHECK CMD [...]".into()),
            Some(cmd) => {
                if cmd.len() < 3 || cmd[0] != "switchyard" || cmd[1] != "probe" {
                    p.push(format!(
                        "Dockerfile: HEALTHCHECK should be `switchyard probe URL`, is {cmd:?}"
                    ));
                } else {
                    let mut probe_args: Vec<String> = cmd[2..].to_vec();
                    let url = probe_args.pop().unwrap();
                    check_flags(&probe_args, &k.flags, "Dockerfile HEALTHCHECK", &mut p);
                    let image_config =
                        switchyard::config::load(&root().join("deploy/switchyard.yaml"));
                    match (split_url(&url), image_config) {
                        (Some((_, host, Some(port), _)), Ok(c)) => {
                            if host != "127.0.0.1" && host != "localhost" {
                                p.push(format!("Dockerfile: HEALTHCHECK probes {host}, not the container itself"));
                            }
                            if port != c.server.admin_port {
                                p.push(format!(
                                    "Dockerfile: HEALTHCHECK port {port} is not the image config's admin port {}",
                                    c.server.admin_port
                                ));
                            }
                        }
                        (u, c) => p.push(format!(
                            "Dockerfile: HEALTHCHECK URL {url}: {u:?} / {:?}",
                            c.err()
                        )),
                    }
                }
            }
        }
    }

    // The demo upstream image.
    if df.stage(DEMO_STAGE).is_some() {
        match df.json_form(DEMO_STAGE, "ENTRYPOINT") {
            Some(e) if e.first().map(String::as_str) == Some("demo-upstream") => {}
            other => p.push(format!("Dockerfile: demo-upstream ENTRYPOINT is {other:?}")),
        }
        let cmd = df.json_form(DEMO_STAGE, "CMD").unwrap_or_default();
        check_flags(&cmd, &k.demo_flags, "Dockerfile demo-upstream CMD", &mut p);
    }

    // The config repository image.
    if df.stage(REPO_STAGE).is_some() {
        let env = df.env(REPO_STAGE);
        let copies = df.copies(REPO_STAGE);
        match df.json_form(REPO_STAGE, "ENTRYPOINT") {
            Some(e) if e.len() == 1 => {
                if !copies
                    .iter()
                    .any(|c| c.dest.ends_with(&format!("/{}", e[0])))
                {
                    p.push(format!(
                        "Dockerfile: config-repo ENTRYPOINT {} is not copied in",
                        e[0]
                    ));
                }
            }
            other => p.push(format!("Dockerfile: config-repo ENTRYPOINT is {other:?}")),
        }
        if let Some(seed) = env.get("SEED_DIR")
            && !copies.iter().any(|c| c.dest.trim_end_matches('/') == seed)
        {
            p.push(format!(
                "Dockerfile: SEED_DIR={seed}, but the seed is not copied there"
            ));
        }
        let port = env
            .get("GIT_PORT")
            .cloned()
            .unwrap_or_else(|| "9418".into());
        match df.json_form(REPO_STAGE, "HEALTHCHECK") {
            Some(cmd) if cmd.iter().any(|a| a.contains(&format!(":{port}/"))) => {}
            other => p.push(format!(
                "Dockerfile: config-repo HEALTHCHECK {other:?} does not use GIT_PORT {port}"
            )),
        }
    }
    p
}

// === docker-compose.yml ===

/// Compose variable interpolation, with the variables unset (their defaults apply).
fn interpolate(s: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(a) = after.strip_prefix('$') {
            out.push('$');
            rest = a;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body.find('}').ok_or("unclosed ${")?;
            let expr = &body[..end];
            if let Some((_, d)) = expr.split_once(":-").or_else(|| expr.split_once('-')) {
                out.push_str(d);
            } else {
                return Err(format!(
                    "${{{expr}}} has no default: `docker compose up` needs it set"
                ));
            }
            rest = &body[end + 1..];
        } else {
            return Err(format!("${} has no default", &after[..after.len().min(20)]));
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn compose_env(svc: &J) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    match &svc["environment"] {
        J::Object(m) => {
            for (k, v) in m {
                if let Some(v) = scalar(v) {
                    out.push((k.clone(), interpolate(&v)?));
                }
            }
        }
        J::Array(a) => {
            for item in a.iter().filter_map(scalar) {
                if let Some((k, v)) = item.split_once('=') {
                    out.push((k.to_string(), interpolate(v)?));
                }
            }
        }
        _ => {}
    }
    Ok(out)
}

fn env_get<'a>(env: &'a [(String, String)], k: &str) -> Option<&'a str> {
    env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
}

/// (host port, container port) of each published port.
fn compose_ports(svc: &J) -> Vec<(Option<u16>, Option<u16>)> {
    let Some(ports) = svc["ports"].as_array() else {
        return Vec::new();
    };
    ports
        .iter()
        .map(|p| match p {
            J::Object(_) => (
                scalar(&p["published"]).and_then(|s| s.parse().ok()),
                scalar(&p["target"]).and_then(|s| s.parse().ok()),
            ),
            _ => {
                let s = scalar(p).unwrap_or_default();
                let s = s.split('/').next().unwrap_or_default().to_string();
                let parts: Vec<&str> = s.split(':').collect();
                let container = parts.last().and_then(|c| c.parse().ok());
                let host = (parts.len() >= 2)
                    .then(|| parts[parts.len() - 2].parse().ok())
                    .flatten();
                (host, container)
            }
        })
        .collect()
}

fn compose_aliases(svc: &J) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    if let Some(nets) = svc["networks"].as_object() {
        for n in nets.values() {
            out.extend(string_list(&n["aliases"]));
        }
    }
    out
}

/// (source, target) of each bind mount or named volume.
fn compose_volumes(svc: &J) -> Vec<(String, String)> {
    let Some(v) = svc["volumes"].as_array() else {
        return Vec::new();
    };
    v.iter()
        .filter_map(|m| match m {
            J::Object(_) => Some((scalar(&m["source"])?, scalar(&m["target"])?)),
            _ => {
                let s = scalar(m)?;
                let mut parts = s.split(':');
                Some((parts.next()?.to_string(), parts.next()?.to_string()))
            }
        })
        .collect()
}

fn build_target(svc: &J) -> Option<String> {
    scalar(&svc["build"]["target"])
}

fn image_is(svc: &J, needle: &str) -> bool {
    scalar(&svc["image"]).is_some_and(|i| i.contains(needle))
}

/// A switchyard replica as the compose file runs it.
#[derive(Clone, Debug)]
struct ComposeReplica {
    service: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

struct Compose {
    doc: J,
    replicas: Vec<ComposeReplica>,
}

fn parse_compose(text: &str) -> Result<Compose, String> {
    let doc = yaml_one(text)?;
    let services = doc["services"].as_object().ok_or("no services")?;
    let df = Dockerfile::parse(&read("deploy/Dockerfile"));
    let mut replicas = Vec::new();
    for (name, svc) in services {
        if build_target(svc).as_deref() == Some(PROXY_STAGE) || image_is(svc, "switchyard:") {
            // Image ENV first, the service's environment over it.
            let mut env: Vec<(String, String)> = df.env(PROXY_STAGE).into_iter().collect();
            for (k, v) in compose_env(svc)? {
                env.retain(|(n, _)| n != &k);
                env.push((k, v));
            }
            let args = string_list(&svc["command"])
                .iter()
                .map(|a| interpolate(a))
                .collect::<Result<_, _>>()?;
            replicas.push(ComposeReplica {
                service: name.clone(),
                args,
                env,
            });
        }
    }
    Ok(Compose { doc, replicas })
}

/// Listen ports of a replica: the flag, else the env var, else the config file.
fn listen_ports(
    args: &[String],
    env: &[(String, String)],
    config: Option<&str>,
) -> (Option<u16>, Option<u16>) {
    let from = |flag: &str, var: &str, fallback: Option<u16>| {
        flag_value(args, flag)
            .or_else(|| env_get(env, var).map(String::from))
            .and_then(|a| a.parse::<SocketAddr>().ok().map(|s| s.port()))
            .or(fallback)
    };
    let cfg = config.and_then(|t| switchyard::config::parse(t, "config").ok());
    (
        from(
            "--listen",
            "SWITCHYARD_LISTEN",
            cfg.as_ref().map(|c| c.server.port),
        ),
        from(
            "--admin-listen",
            "SWITCHYARD_ADMIN_LISTEN",
            cfg.as_ref().map(|c| c.server.admin_port),
        ),
    )
}

/// The seed of the config repository and the path the replicas read in it.
fn compose_config_file(r: &ComposeReplica) -> PathBuf {
    let path = flag_value(&r.args, "--config-path")
        .or_else(|| env_get(&r.env, "SWITCHYARD_CONFIG_PATH").map(String::from))
        .unwrap_or_else(|| "config.yaml".into());
    root().join("deploy/config-repo").join(path)
}

fn check_compose(text: &str) -> Vec<String> {
    let mut p = Vec::new();
    let k = known();
    let compose = match parse_compose(text) {
        Ok(c) => c,
        Err(e) => return vec![format!("docker-compose.yml: {e}")],
    };
    let doc = &compose.doc;
    let services = doc["services"].as_object().unwrap();
    let df = Dockerfile::parse(&read("deploy/Dockerfile"));
    // Names reachable on the compose network.
    let mut dns: BTreeSet<String> = services.keys().cloned().collect();
    for svc in services.values() {
        dns.extend(compose_aliases(svc));
    }
    let find = |pred: &dyn Fn(&J) -> bool| -> Vec<(&String, &J)> {
        services.iter().filter(|(_, s)| pred(s)).collect()
    };

    // Every service: builds, mounts, dependencies.
    for (name, svc) in services {
        let what = format!("docker-compose.yml: {name}");
        if svc["build"].is_object() {
            let context = scalar(&svc["build"]["context"]).unwrap_or_else(|| ".".into());
            let dockerfile =
                scalar(&svc["build"]["dockerfile"]).unwrap_or_else(|| "Dockerfile".into());
            let path = root().join(&context).join(&dockerfile);
            if !path.exists() {
                p.push(format!(
                    "{what}: build dockerfile {} does not exist",
                    path.display()
                ));
            } else if let Some(t) = build_target(svc)
                && !Dockerfile::parse(&std::fs::read_to_string(&path).unwrap())
                    .stages
                    .iter()
                    .any(|s| s.name == t)
            {
                p.push(format!(
                    "{what}: build target `{t}` is not a stage of {dockerfile}"
                ));
            }
        } else if svc["image"].is_null() {
            p.push(format!("{what}: neither build nor image"));
        }
        for (src, _) in compose_volumes(svc) {
            if src.starts_with('.') || src.starts_with('/') {
                if !root().join(&src).exists() {
                    p.push(format!("{what}: mounts {src}, which does not exist"));
                }
            } else if doc["volumes"].get(&src).is_none() {
                p.push(format!(
                    "{what}: volume `{src}` is not declared under volumes:"
                ));
            }
        }
        if let Some(cfgs) = svc["configs"].as_array() {
            for c in cfgs {
                let src = scalar(&c["source"])
                    .or_else(|| scalar(c))
                    .unwrap_or_default();
                if doc["configs"].get(&src).is_none() {
                    p.push(format!(
                        "{what}: config `{src}` is not declared under configs:"
                    ));
                }
            }
        }
        let deps: Vec<(String, Option<String>)> = match &svc["depends_on"] {
            J::Array(a) => a.iter().filter_map(scalar).map(|d| (d, None)).collect(),
            J::Object(m) => m
                .iter()
                .map(|(d, v)| (d.clone(), scalar(&v["condition"])))
                .collect(),
            _ => Vec::new(),
        };
        for (dep, cond) in deps {
            let Some(d) = services.get(&dep) else {
                p.push(format!(
                    "{what}: depends on `{dep}`, which is not a service"
                ));
                continue;
            };
            if cond.as_deref() == Some("service_healthy") {
                let has = !d["healthcheck"].is_null()
                    || build_target(d).is_some_and(|t| df.last(&t, "HEALTHCHECK").is_some());
                if !has {
                    p.push(format!(
                        "{what}: waits for `{dep}` to be healthy, but it has no healthcheck"
                    ));
                }
            }
        }
    }

    // The replicas.
    if compose.replicas.len() < 2 {
        let scaled = compose
            .replicas
            .first()
            .and_then(|r| services[&r.service]["deploy"]["replicas"].as_u64())
            .unwrap_or(1);
        if scaled < 2 {
            p.push("docker-compose.yml: fewer than 2 switchyard replicas".into());
        }
    } else {
        let mut shared: Option<BTreeSet<String>> = None;
        for r in &compose.replicas {
            let mut a = compose_aliases(&services[&r.service]);
            a.insert(r.service.clone());
            shared = Some(match shared {
                None => a,
                Some(s) => s.intersection(&a).cloned().collect(),
            });
        }
        if shared.is_none_or(|s| s.is_empty()) {
            p.push(
                "docker-compose.yml: the switchyard replicas share no DNS name (network alias)"
                    .into(),
            );
        }
    }
    let healthcheck_port = df
        .json_form(PROXY_STAGE, "HEALTHCHECK")
        .and_then(|c| c.last().cloned())
        .and_then(|u| split_url(&u))
        .and_then(|(_, _, port, _)| port);
    let collector = collector_info();
    let mut seed_published = (false, false);
    let mut tokens = BTreeSet::new();
    let mut admin_ports = BTreeSet::new();
    for r in &compose.replicas {
        let what = format!("docker-compose.yml: {}", r.service);
        let svc = &services[&r.service];
        check_flags(&r.args, &k.flags, &what, &mut p);
        for (name, _) in &r.env {
            check_env_name(name, &what, &mut p);
        }
        let config = compose_config_file(r);
        check_config_file(&config, &format!("{what}: config repository seed"), &mut p);
        check_with_clap(&r.args, &r.env, &config, &what, &mut p);
        let config_text = std::fs::read_to_string(&config).ok();
        let (proxy, admin) = listen_ports(&r.args, &r.env, config_text.as_deref());
        admin_ports.extend(admin);
        if admin != healthcheck_port {
            p.push(format!(
                "{what}: admin port {admin:?}, but the image's HEALTHCHECK probes {healthcheck_port:?}"
            ));
        }
        // The HTTPS listener (`--tls-listen` / `SWITCHYARD_TLS_LISTEN`, else `tls.port`).
        let https = flag_value(&r.args, "--tls-listen")
            .or_else(|| env_get(&r.env, "SWITCHYARD_TLS_LISTEN").map(String::from))
            .and_then(|a| a.parse::<SocketAddr>().ok().map(|s| s.port()))
            .or_else(|| {
                config_text
                    .as_deref()
                    .and_then(|t| switchyard::config::parse(t, "config").ok())
                    .and_then(|c| c.tls.map(|t| t.port))
            });
        for (host, container) in compose_ports(svc) {
            if container != proxy && container != admin && container != https {
                p.push(format!(
                    "{what}: publishes container port {container:?}, but it listens on {proxy:?} (proxy) and {admin:?} (admin)"
                ));
            }
            if host == Some(8080) && container == proxy {
                seed_published.0 = true;
            }
            if host == Some(8081) && container == admin {
                seed_published.1 = true;
            }
        }
        match env_get(&r.env, "SWITCHYARD_ADMIN_TOKEN") {
            Some(t) if !t.is_empty() => {
                tokens.insert(t.to_string());
            }
            _ => p.push(format!(
                "{what}: no SWITCHYARD_ADMIN_TOKEN: the admin listener stays on loopback, out of reach"
            )),
        }
        // The config repository.
        match flag_value(&r.args, "--config-repo")
            .or_else(|| env_get(&r.env, "SWITCHYARD_CONFIG_REPO").map(String::from))
        {
            None => p.push(format!("{what}: does not follow a config repository")),
            Some(url) => match split_url(&url) {
                Some((scheme, host, port, path)) if scheme == "git" => match services.get(&host) {
                    Some(s) if build_target(s).as_deref() == Some(REPO_STAGE) => {
                        let want = df
                            .env(REPO_STAGE)
                            .get("GIT_PORT")
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(9418);
                        if port.unwrap_or(9418) != want {
                            p.push(format!(
                                "{what}: {url}: the config-repo service listens on {want}"
                            ));
                        }
                        let script = read("deploy/git-daemon.sh");
                        if !script.contains(&format!("\"$root/{path}\"")) {
                            p.push(format!(
                                "{what}: {url}: deploy/git-daemon.sh does not create `{path}`"
                            ));
                        }
                    }
                    _ => p.push(format!(
                        "{what}: {url}: `{host}` is not the config-repo service"
                    )),
                },
                other => p.push(format!(
                    "{what}: config repo {url} ({other:?}): expected git://config-repo/..."
                )),
            },
        }
        // Redis.
        match env_get(&r.env, "SWITCHYARD_REDIS_URL").map(split_url) {
            Some(Some((_, host, port, _))) => {
                if !services.get(&host).is_some_and(|s| image_is(s, "redis")) {
                    p.push(format!(
                        "{what}: SWITCHYARD_REDIS_URL names `{host}`, not a redis service"
                    ));
                }
                if port.unwrap_or(6379) != 6379 {
                    p.push(format!(
                        "{what}: SWITCHYARD_REDIS_URL port {port:?} is not Redis' 6379"
                    ));
                }
            }
            _ => p.push(format!("{what}: no SWITCHYARD_REDIS_URL")),
        }
        // OpenTelemetry.
        match env_get(&r.env, "OTEL_EXPORTER_OTLP_ENDPOINT").map(split_url) {
            Some(Some((_, host, port, _))) => {
                let protocol = env_get(&r.env, "OTEL_EXPORTER_OTLP_PROTOCOL").unwrap_or("grpc");
                let want = if protocol == "grpc" {
                    collector.grpc
                } else {
                    collector.http
                };
                if !find(&|s: &J| image_is(s, "opentelemetry-collector"))
                    .iter()
                    .any(|(n, _)| **n == host)
                {
                    p.push(format!(
                        "{what}: OTEL_EXPORTER_OTLP_ENDPOINT names `{host}`, not the collector"
                    ));
                }
                if port != want {
                    p.push(format!("{what}: OTLP {protocol} goes to port {port:?}, the collector receives it on {want:?}"));
                }
            }
            _ => p.push(format!("{what}: no OTEL_EXPORTER_OTLP_ENDPOINT")),
        }
        if env_get(&r.env, "OTEL_SERVICE_NAME").is_none() {
            p.push(format!("{what}: no OTEL_SERVICE_NAME"));
        }
        // Backends: the demo upstreams, on the ports they listen on.
        if let Some(text) = &config_text
            && let Ok(c) = switchyard::config::parse(text, "config")
        {
            for b in &c.backends {
                let Some((_, host, port, _)) = split_url(&b.url.raw) else {
                    continue;
                };
                match services.get(&host) {
                    Some(s) if build_target(s).as_deref() == Some(DEMO_STAGE) => {
                        let args = match string_list(&s["command"]) {
                            a if a.is_empty() => {
                                df.json_form(DEMO_STAGE, "CMD").unwrap_or_default()
                            }
                            a => a,
                        };
                        let listen = flag_value(&args, "--listen").and_then(|l| port_of(&l));
                        if listen != Some(port.unwrap_or(80)) {
                            p.push(format!(
                                "{what}: backend {} but `{host}` listens on {listen:?}",
                                b.url.raw
                            ));
                        }
                    }
                    _ => p.push(format!(
                        "{what}: backend {}: `{host}` is not a demo-upstream service",
                        b.url.raw
                    )),
                }
            }
        }
    }
    if !seed_published.0 || !seed_published.1 {
        p.push("docker-compose.yml: no replica publishes the seed's ports 8080 (proxy) and 8081 (admin)".into());
    }

    // Demo upstreams.
    let demos = find(&|s: &J| build_target(s).as_deref() == Some(DEMO_STAGE));
    if demos.len() < 3 {
        p.push(format!(
            "docker-compose.yml: {} demo upstreams, want 3",
            demos.len()
        ));
    }
    for (name, svc) in &demos {
        let args = string_list(&svc["command"]);
        check_flags(
            &args,
            &k.demo_flags,
            &format!("docker-compose.yml: {name}"),
            &mut p,
        );
        let listen = flag_value(&args, "--listen").and_then(|l| port_of(&l));
        for (_, container) in compose_ports(svc) {
            if container != listen {
                p.push(format!(
                    "docker-compose.yml: {name} publishes {container:?} but listens on {listen:?}"
                ));
            }
        }
    }

    // Jaeger: UI published, OTLP gRPC reachable from the collector.
    let jaegers = find(&|s: &J| image_is(s, "jaeger"));
    match jaegers.first() {
        None => p.push("docker-compose.yml: no jaeger service".into()),
        Some((jname, j)) => {
            if !compose_ports(j)
                .iter()
                .any(|(h, c)| *h == Some(16686) && *c == Some(16686))
            {
                p.push("docker-compose.yml: Jaeger's UI is not published on 16686".into());
            }
            let cmd = string_list(&j["command"]);
            let grpc = cmd
                .iter()
                .find_map(|a| a.strip_prefix("--set=receivers.otlp.protocols.grpc.endpoint="))
                .map(String::from);
            match (&grpc, &collector.jaeger) {
                (Some(listen), Some((host, port))) => {
                    if !listen.starts_with("0.0.0.0:") {
                        p.push(format!("docker-compose.yml: Jaeger's OTLP gRPC listens on {listen}, not reachable"));
                    }
                    if host != *jname || port_of(listen) != Some(*port) {
                        p.push(format!(
                            "deploy/otel-collector.yaml: traces go to {host}:{port}, Jaeger's OTLP gRPC is {jname} {listen}"
                        ));
                    }
                }
                _ => p.push(format!(
                    "docker-compose.yml: Jaeger OTLP {grpc:?} / collector exporter {:?}",
                    collector.jaeger
                )),
            }
        }
    }
    p.extend(collector.problems.iter().cloned());

    // The collector reads the config file it is given.
    for (name, svc) in find(&|s: &J| image_is(s, "opentelemetry-collector")) {
        let cmd = string_list(&svc["command"]);
        let path = cmd
            .iter()
            .find_map(|a| a.strip_prefix("--config="))
            .unwrap_or("/etc/otelcol-contrib/config.yaml");
        if !compose_volumes(svc).iter().any(|(src, dst)| {
            dst == path && src.trim_start_matches("./") == "deploy/otel-collector.yaml"
        }) {
            p.push(format!(
                "docker-compose.yml: {name} does not mount deploy/otel-collector.yaml at {path}"
            ));
        }
    }

    // Prometheus.
    let proms = find(&|s: &J| image_is(s, "prom/prometheus"));
    match proms.first() {
        None => p.push("docker-compose.yml: no prometheus service".into()),
        Some((name, svc)) => {
            let cmd = string_list(&svc["command"]);
            let path = cmd
                .iter()
                .find_map(|a| a.strip_prefix("--config.file="))
                .unwrap_or("/etc/prometheus/prometheus.yml");
            if !compose_volumes(svc).iter().any(|(src, dst)| {
                dst == path && src.trim_start_matches("./") == "deploy/prometheus.yml"
            }) {
                p.push(format!(
                    "docker-compose.yml: {name} does not mount deploy/prometheus.yml at {path}"
                ));
            }
            let mounted_configs: BTreeMap<String, String> = svc["configs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| Some((scalar(&c["target"])?, scalar(&c["source"])?)))
                .collect();
            match yaml_one(&read("deploy/prometheus.yml")) {
                Err(e) => p.push(format!("deploy/prometheus.yml: {e}")),
                Ok(prom) => {
                    let jobs = prom["scrape_configs"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default();
                    let mut scrapes_replicas = false;
                    for job in &jobs {
                        let jn = scalar(&job["job_name"]).unwrap_or_default();
                        let what = format!("deploy/prometheus.yml: job {jn}");
                        let mut targets: Vec<(String, Option<u16>)> = Vec::new();
                        for sd in job["dns_sd_configs"].as_array().into_iter().flatten() {
                            for n in string_list(&sd["names"]) {
                                targets.push((n, sd["port"].as_u64().map(|x| x as u16)));
                            }
                        }
                        for sc in job["static_configs"].as_array().into_iter().flatten() {
                            for t in string_list(&sc["targets"]) {
                                let (h, port) = t.rsplit_once(':').unwrap_or((&t, ""));
                                targets.push((h.to_string(), port.parse().ok()));
                            }
                        }
                        for (host, port) in &targets {
                            if host == "localhost" {
                                continue;
                            }
                            if !dns.contains(host) {
                                p.push(format!(
                                    "{what}: `{host}` is no name on the compose network"
                                ));
                                continue;
                            }
                            let is_replica = compose.replicas.iter().any(|r| {
                                r.service == *host
                                    || compose_aliases(&services[&r.service]).contains(host)
                            });
                            if is_replica {
                                scrapes_replicas = true;
                                if !port.is_some_and(|x| admin_ports.contains(&x)) {
                                    p.push(format!("{what}: scrapes {host}:{port:?}, the replicas' admin port is {admin_ports:?}"));
                                }
                                let mp = scalar(&job["metrics_path"])
                                    .unwrap_or_else(|| "/metrics".into());
                                if mp != "/metrics" {
                                    p.push(format!(
                                        "{what}: metrics_path {mp}: switchyard serves /metrics"
                                    ));
                                }
                                match scalar(&job["authorization"]["credentials_file"]) {
                                    None => p.push(format!("{what}: no credentials_file, but /metrics needs the admin token")),
                                    Some(f) => match mounted_configs.get(&f) {
                                        None => p.push(format!("{what}: credentials_file {f} is not mounted into {name}")),
                                        Some(src) => {
                                            let content = scalar(&doc["configs"][src]["content"]).map(|c| interpolate(&c));
                                            match content {
                                                Some(Ok(c)) if tokens.contains(&c) => {}
                                                other => p.push(format!(
                                                    "{what}: config `{src}` ({other:?}) is not the replicas' admin token"
                                                )),
                                            }
                                        }
                                    },
                                }
                            } else if image_is(&services[host], "opentelemetry-collector")
                                && *port != collector.prometheus
                            {
                                p.push(format!(
                                    "{what}: scrapes {host}:{port:?}, the collector's prometheus exporter is on {:?}",
                                    collector.prometheus
                                ));
                            }
                        }
                    }
                    if !scrapes_replicas {
                        p.push(
                            "deploy/prometheus.yml: no job scrapes the switchyard replicas".into(),
                        );
                    }
                }
            }
        }
    }
    p
}

/// What deploy/otel-collector.yaml receives and where it sends it.
struct CollectorInfo {
    grpc: Option<u16>,
    http: Option<u16>,
    jaeger: Option<(String, u16)>,
    prometheus: Option<u16>,
    problems: Vec<String>,
}

fn collector_info() -> CollectorInfo {
    let mut info = CollectorInfo {
        grpc: None,
        http: None,
        jaeger: None,
        prometheus: None,
        problems: Vec::new(),
    };
    let c = match yaml_one(&read("deploy/otel-collector.yaml")) {
        Ok(c) => c,
        Err(e) => {
            info.problems
                .push(format!("deploy/otel-collector.yaml: {e}"));
            return info;
        }
    };
    let otlp = &c["receivers"]["otlp"]["protocols"];
    info.grpc = scalar(&otlp["grpc"]["endpoint"]).and_then(|e| port_of(&e));
    info.http = scalar(&otlp["http"]["endpoint"]).and_then(|e| port_of(&e));
    if info.grpc != Some(4317) || info.http != Some(4318) {
        info.problems.push(format!(
            "deploy/otel-collector.yaml: OTLP receivers on {:?}/{:?}, want grpc 4317 and http 4318",
            info.grpc, info.http
        ));
    }
    let pipelines = c["service"]["pipelines"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    for (pname, pipe) in &pipelines {
        for (kind, section) in [
            ("receivers", "receivers"),
            ("processors", "processors"),
            ("exporters", "exporters"),
        ] {
            for comp in string_list(&pipe[kind]) {
                if c[section].get(&comp).is_none() {
                    info.problems.push(format!(
                        "deploy/otel-collector.yaml: pipeline {pname} uses {kind} `{comp}`, which is not defined"
                    ));
                }
            }
        }
    }
    for ext in string_list(&c["service"]["extensions"]) {
        if c["extensions"].get(&ext).is_none() {
            info.problems.push(format!(
                "deploy/otel-collector.yaml: extension `{ext}` is not defined"
            ));
        }
    }
    for exp in string_list(&pipelines.get("traces").cloned().unwrap_or_default()["exporters"]) {
        if (exp == "otlp" || exp.starts_with("otlp/"))
            && let Some((_, host, Some(port), _)) = scalar(&c["exporters"][&exp]["endpoint"])
                .and_then(|e| split_url(&format!("grpc://{e}")))
        {
            info.jaeger = Some((host, port));
        }
    }
    if info.jaeger.is_none() {
        info.problems
            .push("deploy/otel-collector.yaml: traces are not exported over OTLP".into());
    }
    for exp in string_list(&pipelines.get("metrics").cloned().unwrap_or_default()["exporters"]) {
        if exp == "prometheus" || exp.starts_with("prometheus/") {
            info.prometheus = scalar(&c["exporters"][&exp]["endpoint"]).and_then(|e| port_of(&e));
        }
    }
    if info.prometheus.is_none() {
        info.problems
            .push("deploy/otel-collector.yaml: metrics are not exported to Prometheus".into());
    }
    info
}

// === Kubernetes ===

const K8S_DIR: &str = "deploy/kubernetes";

fn k8s_files() -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(root().join(K8S_DIR)).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            out.insert(
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            );
        }
    }
    out
}

/// The Deployment's switchyard container, ready to run: args, env (secrets
/// resolved), the files it mounts.
struct PodSpec {
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// mount path → (file name → content), from ConfigMap volumes.
    config_mounts: BTreeMap<String, BTreeMap<String, String>>,
    readiness: Option<String>,
    liveness: Option<String>,
}

fn b64decode(s: &str) -> Option<String> {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in s.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=') {
        bits = (bits << 6) | A.iter().position(|x| *x == c)? as u32;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
            bits &= (1 << n) - 1;
        }
    }
    String::from_utf8(out).ok()
}

fn named<'a>(objs: &'a [J], kind: &str, name: &str) -> Option<&'a J> {
    objs.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
}

fn secret_value(objs: &[J], name: &str, key: &str) -> Option<String> {
    let s = named(objs, "Secret", name)?;
    scalar(&s["stringData"][key]).or_else(|| scalar(&s["data"][key]).and_then(|v| b64decode(&v)))
}

/// `labels` holds every pair of `selector`.
fn selects(selector: &J, labels: &J) -> bool {
    selector
        .as_object()
        .is_some_and(|m| !m.is_empty() && m.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

fn check_kubernetes(files: &BTreeMap<String, String>) -> (Vec<String>, Option<PodSpec>) {
    let mut p = Vec::new();
    let k = known();
    let Some(kust) = files.get("kustomization.yaml") else {
        return (vec![format!("{K8S_DIR}: no kustomization.yaml")], None);
    };
    let kust = match yaml_one(kust) {
        Ok(v) => v,
        Err(e) => return (vec![format!("kustomization.yaml: {e}")], None),
    };
    let resources = string_list(&kust["resources"]);
    for f in files.keys().filter(|f| *f != "kustomization.yaml") {
        if !resources.contains(f) {
            p.push(format!(
                "{K8S_DIR}/{f} is not listed in kustomization.yaml resources"
            ));
        }
    }
    let mut objs = Vec::new();
    for r in &resources {
        match files.get(r).map(|t| yaml_docs(t)) {
            None => p.push(format!("kustomization.yaml: resource {r} does not exist")),
            Some(Err(e)) => p.push(format!("{K8S_DIR}/{r}: {e}")),
            Some(Ok(docs)) => objs.extend(docs),
        }
    }
    let kinds = |kind: &str| -> Vec<&J> { objs.iter().filter(|o| o["kind"] == kind).collect() };
    for want in [
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "ConfigMap",
        "Secret",
    ] {
        if kinds(want).is_empty() {
            p.push(format!("{K8S_DIR}: no {want}"));
        }
    }
    let Some(dep) = kinds("Deployment").first().cloned().cloned() else {
        return (p, None);
    };
    let dep_name = scalar(&dep["metadata"]["name"]).unwrap_or_default();
    let replicas = dep["spec"]["replicas"].as_u64().unwrap_or(1);
    if replicas != 3 {
        p.push(format!("Deployment: {replicas} replicas, want 3"));
    }
    let pod_labels = &dep["spec"]["template"]["metadata"]["labels"];
    if !selects(&dep["spec"]["selector"]["matchLabels"], pod_labels) {
        p.push("Deployment: selector does not match the pod template's labels".into());
    }
    let pod = &dep["spec"]["template"]["spec"];
    let images: Vec<String> = kust["images"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| scalar(&i["name"]))
        .collect();
    let Some(c) = pod["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| scalar(&c["image"]).is_some_and(|i| i.split(':').next() == Some("switchyard")))
        .cloned()
    else {
        p.push("Deployment: no container with image `switchyard`".into());
        return (p, None);
    };
    if !images.iter().any(|i| i == "switchyard") {
        p.push("kustomization.yaml: images[] does not name the `switchyard` image".into());
    }
    let what = "Deployment";
    let args = string_list(&c["args"]);
    check_flags(&args, &k.flags, what, &mut p);
    if !string_list(&c["command"]).is_empty() {
        p.push(
            "Deployment: `command` replaces the image's ENTRYPOINT (switchyard); use args".into(),
        );
    }
    let df = Dockerfile::parse(&read("deploy/Dockerfile"));
    let mut env: Vec<(String, String)> = df.env(PROXY_STAGE).into_iter().collect();
    for e in c["env"].as_array().into_iter().flatten() {
        let name = scalar(&e["name"]).unwrap_or_default();
        check_env_name(&name, what, &mut p);
        let value = if let Some(v) = scalar(&e["value"]) {
            Some(v)
        } else if let Some(r) = e["valueFrom"]["secretKeyRef"].as_object() {
            let (sn, key) = (
                scalar(&r["name"]).unwrap_or_default(),
                scalar(&r["key"]).unwrap_or_default(),
            );
            let v = secret_value(&objs, &sn, &key);
            if v.is_none() && r.get("optional") != Some(&J::Bool(true)) {
                p.push(format!(
                    "Deployment: env {name} needs key `{key}` of Secret `{sn}`, which is not there"
                ));
            }
            v
        } else if let Some(r) = e["valueFrom"]["configMapKeyRef"].as_object() {
            let (cn, key) = (
                scalar(&r["name"]).unwrap_or_default(),
                scalar(&r["key"]).unwrap_or_default(),
            );
            let v = named(&objs, "ConfigMap", &cn).and_then(|m| scalar(&m["data"][&key]));
            if v.is_none() {
                p.push(format!(
                    "Deployment: env {name} needs key `{key}` of ConfigMap `{cn}`"
                ));
            }
            v
        } else {
            Some("from-the-pod".into())
        };
        if let Some(v) = value {
            env.retain(|(n, _)| n != &name);
            env.push((name, v));
        }
    }
    if env_get(&env, "SWITCHYARD_ADMIN_TOKEN").is_none_or(str::is_empty) {
        p.push(
            "Deployment: no SWITCHYARD_ADMIN_TOKEN: the admin listener (probes) stays on loopback"
                .into(),
        );
    }
    // Volumes and mounts.
    let volumes: BTreeMap<String, J> = pod["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| Some((scalar(&v["name"])?, v.clone())))
        .collect();
    let mut config_mounts = BTreeMap::new();
    let mut writable = Vec::new();
    for m in c["volumeMounts"].as_array().into_iter().flatten() {
        let (vn, path) = (
            scalar(&m["name"]).unwrap_or_default(),
            scalar(&m["mountPath"]).unwrap_or_default(),
        );
        let Some(v) = volumes.get(&vn) else {
            p.push(format!(
                "Deployment: mount {path} uses volume `{vn}`, which is not declared"
            ));
            continue;
        };
        if m["readOnly"] != J::Bool(true) && !v["emptyDir"].is_null() {
            writable.push(path.clone());
        }
        if let Some(cm) = scalar(&v["configMap"]["name"]) {
            match named(&objs, "ConfigMap", &cm) {
                None => p.push(format!(
                    "Deployment: volume `{vn}` uses ConfigMap `{cm}`, which does not exist"
                )),
                Some(obj) => {
                    let data: BTreeMap<String, String> = obj["data"]
                        .as_object()
                        .into_iter()
                        .flatten()
                        .filter_map(|(k, v)| Some((k.clone(), scalar(v)?)))
                        .collect();
                    if !m["subPath"].is_null() {
                        p.push(format!("Deployment: {path} uses subPath: ConfigMap updates would not reach the pod"));
                    }
                    config_mounts.insert(path.clone(), data);
                }
            }
        }
    }
    let config_path = flag_value(&args, "--config")
        .or_else(|| flag_value(&args, "-c"))
        .or_else(|| env_get(&env, "SWITCHYARD_CONFIG").map(String::from));
    let config_text = config_path.as_ref().and_then(|path| {
        config_mounts.iter().find_map(|(dir, data)| {
            let name = path.strip_prefix(&format!("{}/", dir.trim_end_matches('/')))?;
            data.get(name).cloned()
        })
    });
    let tmp = tempfile::tempdir().unwrap();
    let parsed = match (&config_path, &config_text) {
        (Some(path), Some(text)) => {
            let file = tmp.path().join("config.yaml");
            std::fs::write(&file, text).unwrap();
            check_config_file(&file, &format!("Deployment: {path} (ConfigMap)"), &mut p);
            check_with_clap(&args, &env, &file, what, &mut p);
            switchyard::config::parse(text, "configmap").ok()
        }
        (path, _) => {
            p.push(format!(
                "Deployment: config {path:?} is not a file of a mounted ConfigMap"
            ));
            None
        }
    };
    // Ports: the container's, the listeners', the config's, the Services'.
    let ports: BTreeMap<String, u16> = c["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| Some((scalar(&x["name"])?, x["containerPort"].as_u64()? as u16)))
        .collect();
    let (proxy, admin) = listen_ports(&args, &env, config_text.as_deref());
    if ports.get("http").copied() != proxy || ports.get("admin").copied() != admin {
        p.push(format!(
            "Deployment: container ports {ports:?}, but the replica listens on {proxy:?} (proxy) and {admin:?} (admin)"
        ));
    }
    if let Some(cfg) = &parsed
        && (Some(cfg.server.port) != proxy || Some(cfg.server.admin_port) != admin)
    {
        p.push(format!(
            "ConfigMap: server.port {} / admin_port {} differ from the listeners {proxy:?} / {admin:?}",
            cfg.server.port, cfg.server.admin_port
        ));
    }
    let resolve = |port: &J| -> Option<u16> {
        match port {
            J::Number(n) => n.as_u64().map(|n| n as u16),
            J::String(s) => ports.get(s).copied(),
            _ => None,
        }
    };
    let mut probe = |kind: &str, want: &str| -> Option<String> {
        let get = &c[kind]["httpGet"];
        let path = scalar(&get["path"]);
        if path.as_deref() != Some(want) {
            p.push(format!("Deployment: {kind} path {path:?}, want {want}"));
        }
        if resolve(&get["port"]) != admin || admin.is_none() {
            p.push(format!(
                "Deployment: {kind} port {:?} is not the admin port {admin:?}",
                get["port"]
            ));
        }
        path
    };
    let readiness = probe("readinessProbe", "/readyz");
    let liveness = probe("livenessProbe", "/healthz");
    // Shutdown: the kubelet must wait for preStop + the drain.
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap_or(30);
    let pre_stop = {
        let ps = &c["lifecycle"]["preStop"];
        ps["sleep"]["seconds"].as_u64().or_else(|| {
            let cmd = string_list(&ps["exec"]["command"]);
            (cmd.first().map(String::as_str) == Some("sleep"))
                .then(|| cmd.get(1)?.parse().ok())
                .flatten()
        })
    }
    .unwrap_or(0);
    if let Some(cfg) = &parsed {
        let drain = cfg.server.grace_period.get().as_secs();
        if grace <= drain + pre_stop {
            p.push(format!(
                "Deployment: terminationGracePeriodSeconds {grace} is not longer than preStop {pre_stop}s + server.grace_period {drain}s"
            ));
        }
    }
    for r in ["cpu", "memory"] {
        if c["resources"]["requests"][r].is_null() {
            p.push(format!("Deployment: no {r} request"));
        }
    }
    // A read-only root: whatever switchyard writes must be on a writable mount.
    if c["securityContext"]["readOnlyRootFilesystem"] == J::Bool(true) {
        for var in ["SWITCHYARD_GIT_CACHE", "HOME"] {
            match env_get(&env, var) {
                Some(dir) if writable.iter().any(|w| dir == w || dir.starts_with(&format!("{w}/"))) => {}
                other => p.push(format!("Deployment: read-only root, but {var}={other:?} is not on a writable mount ({writable:?})")),
            }
        }
    }
    // The image's user (numeric, so runAsNonRoot can verify it).
    if let Some(u) = df.last(PROXY_STAGE, "USER") {
        let uid = u.split(':').next().and_then(|x| x.parse::<u64>().ok());
        let run_as = pod["securityContext"]["runAsUser"]
            .as_u64()
            .or(c["securityContext"]["runAsUser"].as_u64());
        if uid.is_none() || (run_as.is_some() && run_as != uid) {
            p.push(format!(
                "Deployment: runAsUser {run_as:?} vs the image's USER {u}"
            ));
        }
    }

    // Services, PDB, HPA.
    let services = kinds("Service");
    if !services.iter().any(|s| s["spec"]["clusterIP"] == "None") {
        p.push("Kubernetes: no headless Service (clusterIP: None) for DNS discovery".into());
    }
    for s in &services {
        let sn = scalar(&s["metadata"]["name"]).unwrap_or_default();
        if !selects(&s["spec"]["selector"], pod_labels) {
            p.push(format!(
                "Service {sn}: selector does not select the Deployment's pods"
            ));
        }
        for port in s["spec"]["ports"].as_array().into_iter().flatten() {
            let target = if port["targetPort"].is_null() {
                &port["port"]
            } else {
                &port["targetPort"]
            };
            if resolve(target).is_none_or(|t| !ports.values().any(|x| *x == t)) {
                p.push(format!(
                    "Service {sn}: targetPort {target} is not a container port"
                ));
            }
        }
    }
    for pdb in kinds("PodDisruptionBudget") {
        if !selects(&pdb["spec"]["selector"]["matchLabels"], pod_labels) {
            p.push("PodDisruptionBudget: selector does not select the Deployment's pods".into());
        }
        if let Some(min) = pdb["spec"]["minAvailable"].as_u64()
            && min >= replicas
        {
            p.push(format!("PodDisruptionBudget: minAvailable {min} blocks every eviction at {replicas} replicas"));
        }
    }
    for hpa in kinds("HorizontalPodAutoscaler") {
        let t = &hpa["spec"]["scaleTargetRef"];
        if t["kind"] != "Deployment" || scalar(&t["name"]).as_deref() != Some(dep_name.as_str()) {
            p.push(format!(
                "HorizontalPodAutoscaler: scales {t}, not Deployment {dep_name}"
            ));
        }
        let (min, max) = (
            hpa["spec"]["minReplicas"].as_u64().unwrap_or(1),
            hpa["spec"]["maxReplicas"].as_u64().unwrap_or(0),
        );
        if min > max || min > replicas {
            p.push(format!(
                "HorizontalPodAutoscaler: min {min} / max {max} vs {replicas} replicas"
            ));
        }
    }

    let spec = PodSpec {
        args,
        env,
        config_mounts,
        readiness,
        liveness,
    };
    (p, Some(spec))
}

// === running what the files describe ===

/// `git daemon` run by deploy/git-daemon.sh (the config-repo image's entry point) on a
/// free loopback port. Killed (by PID) on drop.
struct ConfigRepoService {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl ConfigRepoService {
    fn start() -> ConfigRepoService {
        let dir = tempfile::tempdir().unwrap();
        for _ in 0..5 {
            let port = free_port();
            let mut child = Command::new(root().join("deploy/git-daemon.sh"))
                .env("SEED_DIR", root().join("deploy/config-repo"))
                .env("GIT_ROOT", dir.path().join("git"))
                .env("GIT_LISTEN", "127.0.0.1")
                .env("GIT_PORT", port.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while tokio::time::Instant::now() < deadline {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return ConfigRepoService {
                        child,
                        port,
                        _dir: dir,
                    };
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("deploy/git-daemon.sh did not start");
    }
}

impl Drop for ConfigRepoService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET with optional headers.
async fn get_with(url: &str, headers: &[(&str, &str)]) -> Result<Resp, String> {
    use http_body_util::BodyExt;
    let mut req = Request::builder().method(Method::GET).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client()
        .request(req.body(full(bytes::Bytes::new())).unwrap())
        .await
        .map_err(|e| format!("{e:?}"))?;
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Resp {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    })
}

/// What Prometheus 3 sends when it scrapes.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";

/// Environment with the addresses only Docker's network has replaced by loopback ones.
fn localize(env: &[(String, String)], replace: &[(&str, String)]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = env
        .iter()
        .filter(|(k, _)| !replace.iter().any(|(r, _)| r == k))
        .cloned()
        .collect();
    for (k, v) in replace {
        out.push((k.to_string(), v.clone()));
    }
    out
}

/// Runs a compose replica as the compose file describes it — its command, the image's
/// and its environment — against deploy/git-daemon.sh serving the seed, a real Redis
/// and a collector address nobody listens on, then checks what Docker (HEALTHCHECK),
/// Prometheus (token + Accept) and a git push see.
async fn run_compose_replica(compose_text: &str, push: bool) -> Vec<String> {
    let mut p = Vec::new();
    let compose = match parse_compose(compose_text) {
        Ok(c) => c,
        Err(e) => return vec![e],
    };
    let Some(r) = compose.replicas.first().cloned() else {
        return vec!["no replica".into()];
    };
    let repo = ConfigRepoService::start();
    let redis = RedisServer::start();
    let cache = tempfile::tempdir().unwrap();
    let dead_collector = format!("http://127.0.0.1:{}", free_port());
    // The compose network's names, as this machine reaches them.
    let mut args: Vec<String> = r
        .args
        .iter()
        .map(|a| {
            a.replace(
                "git://config-repo/",
                &format!("git://127.0.0.1:{}/", repo.port),
            )
        })
        .collect();
    let cache_dir = cache.path().join("git").display().to_string();
    args.extend([
        "--git-cache".into(),
        cache_dir,
        "--log-format".into(),
        "json".into(),
    ]);
    let df = Dockerfile::parse(&read("deploy/Dockerfile"));
    let image_config = df
        .copies(PROXY_STAGE)
        .into_iter()
        .find(|c| Some(&c.dest) == df.env(PROXY_STAGE).get("SWITCHYARD_CONFIG"))
        .map(|c| root().join(&c.srcs[0]).display().to_string())
        .unwrap_or_default();
    let env = localize(
        &r.env,
        &[
            ("SWITCHYARD_LISTEN", "127.0.0.1:0".into()),
            ("SWITCHYARD_ADMIN_LISTEN", "127.0.0.1:0".into()),
            ("SWITCHYARD_TLS_LISTEN", "127.0.0.1:0".into()),
            ("SWITCHYARD_REDIS_URL", redis.url()),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", dead_collector),
            ("SWITCHYARD_CONFIG", image_config),
            (
                "SWITCHYARD_DASHBOARD_DIR",
                root().join("dashboard-app/dist").display().to_string(),
            ),
        ],
    );
    let args_ref: Vec<&str> = args.iter().map(String::as_str).collect();
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let proc = Proc::spawn(&args_ref, &env_ref);
    let token = env_get(&r.env, "SWITCHYARD_ADMIN_TOKEN")
        .unwrap_or_default()
        .to_string();
    let bearer = format!("Bearer {token}");
    let auth = [("authorization", bearer.as_str())];

    // It follows the repository that deploy/git-daemon.sh seeded.
    let seeded_dir = tempfile::tempdir().unwrap();
    let url = format!("git://127.0.0.1:{}/config.git", repo.port);
    git(seeded_dir.path(), &["clone", "-q", &url, "clone"]);
    let clone = seeded_dir.path().join("clone");
    let head = git(&clone, &["rev-parse", "HEAD"]);
    let status = get_with(&url_of(proc.admin, "/admin/config"), &auth).await;
    match status {
        Ok(s) if s.status == StatusCode::OK && s.json()["commit"] == head.as_str() => {}
        other => p.push(format!(
            "compose replica: not running the seeded commit {head}: {:?}\n{}",
            other.map(|s| s.body),
            proc.logs()
        )),
    }
    // The OTEL_* settings were taken (a bad value would have stopped the start).
    if !proc.logs().contains("OpenTelemetry export on") {
        p.push(format!(
            "compose replica: OTLP export not on with the compose environment:\n{}",
            proc.logs()
        ));
    }
    // Docker's HEALTHCHECK, pointed at this replica's admin port.
    if let Some(cmd) = df.json_form(PROXY_STAGE, "HEALTHCHECK") {
        let mut cmd = cmd.clone();
        let last = cmd.len() - 1;
        cmd[last] = cmd[last].replace(":8081/", &format!(":{}/", proc.admin.port()));
        let ok = Command::new(SWITCHYARD)
            .args(&cmd[1..])
            .status()
            .unwrap()
            .success();
        if !ok {
            p.push(format!("compose replica: HEALTHCHECK {cmd:?} failed"));
        }
    }
    // Prometheus' scrape: the token from the `configs:` it mounts, its Accept header.
    let prom_token = compose.doc["configs"]["admin-token"]["content"]
        .as_str()
        .map(interpolate)
        .and_then(Result::ok)
        .unwrap_or_default();
    let prom_bearer = format!("Bearer {prom_token}");
    match get_with(
        &url_of(proc.admin, "/metrics"),
        &[
            ("authorization", &prom_bearer),
            ("accept", PROMETHEUS_ACCEPT),
        ],
    )
    .await
    {
        Ok(m) if m.status == StatusCode::OK && m.body.contains("switchyard_requests_total") => {
            let ct = m
                .headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !(ct.starts_with("application/openmetrics-text") || ct.starts_with("text/plain")) {
                p.push(format!(
                    "compose replica: /metrics answered {ct} to Prometheus"
                ));
            }
        }
        other => p.push(format!(
            "compose replica: Prometheus' scrape of /metrics failed: {:?}",
            other.map(|m| (m.status, m.body.chars().take(200).collect::<String>()))
        )),
    }
    if !p.is_empty() || !push {
        return p;
    }
    // A push to the config repository reaches the replica.
    let text = std::fs::read_to_string(clone.join("config.yaml")).unwrap();
    let changed = text.replacen("weight: 1", "weight: 3", 1);
    std::fs::write(clone.join("config.yaml"), changed).unwrap();
    git(&clone, &["commit", "-q", "-am", "weight 3"]);
    git(&clone, &["push", "-q", "origin", "main"]);
    let pushed = git(&clone, &["rev-parse", "HEAD"]);
    let poll = flag_value(&r.args, "--poll-interval")
        .and_then(|v| switchyard::config::types::parse_duration(&v).ok())
        .unwrap_or(Duration::from_secs(10));
    let deadline = tokio::time::Instant::now() + poll * 3;
    loop {
        let s = get_with(&url_of(proc.admin, "/admin/config"), &auth).await;
        if s.is_ok_and(|s| s.json()["commit"] == pushed.as_str()) {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            p.push(format!(
                "compose replica: pushed commit {pushed} not applied within {:?}",
                poll * 3
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    p
}

fn url_of(addr: SocketAddr, path: &str) -> String {
    format!("http://{addr}{path}")
}

/// Runs the Deployment's container as written (config from the ConfigMap, secrets
/// from the Secret, a real Redis) and probes it as the kubelet would.
async fn run_deployment(files: &BTreeMap<String, String>) -> Vec<String> {
    let (problems, spec) = check_kubernetes(files);
    let Some(spec) = spec else {
        return problems;
    };
    let mut p = Vec::new();
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut args = spec.args.clone();
    for (mount, data) in &spec.config_mounts {
        let local = dir.path().join(mount.trim_start_matches('/'));
        std::fs::create_dir_all(&local).unwrap();
        for (name, content) in data {
            std::fs::write(local.join(name), content).unwrap();
        }
        for a in &mut args {
            if a.starts_with(mount.as_str()) {
                *a = format!("{}{}", local.display(), &a[mount.len()..]);
            }
        }
    }
    args.extend(["--log-format".into(), "json".into()]);
    let env = localize(
        &spec.env,
        &[
            ("SWITCHYARD_LISTEN", "127.0.0.1:0".into()),
            ("SWITCHYARD_ADMIN_LISTEN", "127.0.0.1:0".into()),
            ("SWITCHYARD_REDIS_URL", redis.url()),
            (
                "SWITCHYARD_GIT_CACHE",
                dir.path().join("git").display().to_string(),
            ),
            ("HOME", dir.path().display().to_string()),
            (
                "SWITCHYARD_DASHBOARD_DIR",
                root().join("dashboard-app/dist").display().to_string(),
            ),
        ],
    );
    let args_ref: Vec<&str> = args.iter().map(String::as_str).collect();
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let proc = Proc::spawn(&args_ref, &env_ref);
    for (kind, path) in [
        ("readinessProbe", &spec.readiness),
        ("livenessProbe", &spec.liveness),
    ] {
        let Some(path) = path else { continue };
        match get_with(&url_of(proc.admin, path), &[]).await {
            Ok(r) if r.status == StatusCode::OK => {}
            other => p.push(format!(
                "Deployment: {kind} GET {path} answered {:?}",
                other.map(|r| r.status)
            )),
        }
    }
    if proc.logs().contains("loopback only") {
        p.push("Deployment: the replica says its admin API is on loopback only (no token?)".into());
    }
    let token = env_get(&env, "SWITCHYARD_ADMIN_TOKEN").unwrap_or_default();
    let bearer = format!("Bearer {token}");
    match get_with(
        &url_of(proc.admin, "/admin/cluster"),
        &[("authorization", &bearer)],
    )
    .await
    {
        Ok(r) if r.status == StatusCode::OK && r.json()["store"]["connected"] == true => {}
        other => p.push(format!(
            "Deployment: not connected to Redis: {:?}",
            other.map(|r| r.body)
        )),
    }
    p
}

// === the tests: files as they are ===

#[test]
fn dockerfile_uses_real_stages_binaries_packages_and_paths() {
    report(
        "deploy/Dockerfile",
        &check_dockerfile(&read("deploy/Dockerfile")),
    );
}

#[test]
fn compose_file_is_consistent_with_the_binaries_configs_and_images() {
    report(
        "docker-compose.yml",
        &check_compose(&read("docker-compose.yml")),
    );
}

#[test]
fn kubernetes_base_is_consistent() {
    let (problems, _) = check_kubernetes(&k8s_files());
    report(K8S_DIR, &problems);
}

#[test]
fn kustomize_renders_the_base_when_kubectl_is_installed() {
    let Ok(out) = Command::new("kubectl")
        .args(["kustomize"])
        .arg(root().join(K8S_DIR))
        .output()
    else {
        eprintln!("kubectl not installed: kustomize rendering not checked");
        return;
    };
    assert!(
        out.status.success(),
        "kubectl kustomize: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs = yaml_docs(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert_eq!(
        docs.len(),
        k8s_files().len() - 1,
        "one object per resource file"
    );
    assert!(
        docs.iter()
            .all(|d| d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "switchyard")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_replica_runs_follows_the_config_repo_and_answers_probes_and_prometheus() {
    report(
        "compose replica",
        &run_compose_replica(&read("docker-compose.yml"), true).await,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_replica_runs_and_answers_the_kubelet_probes() {
    report("Deployment", &run_deployment(&k8s_files()).await);
}

/// Variables the help does not list are accepted when the source reads them; say which.
#[test]
fn env_vars_outside_the_help_are_named() {
    let k = known();
    let outside: Vec<&String> = k
        .source_env
        .iter()
        .filter(|v| {
            v.starts_with("SWITCHYARD_")
                && v.len() > "SWITCHYARD_".len()
                && !k.help_env.contains(*v)
        })
        .collect();
    eprintln!("SWITCHYARD_* read by proxy/src but not listed in --help: {outside:?}");
    assert!(k.flags.contains("--config-repo") && k.help_env.contains("SWITCHYARD_REDIS_URL"));
}

/// The metric names the README's operating notes tell people to alert on exist.
#[test]
fn readme_alerts_use_real_metric_names() {
    let readme = read("README.md");
    let start = readme
        .find("## Operating notes")
        .expect("README: Operating notes");
    let section = &readme[start..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
    let metrics = read("proxy/src/telemetry/metrics.rs");
    let defined: BTreeSet<&str> = metrics
        .split('"')
        .filter(|w| w.starts_with("switchyard_"))
        .collect();
    let used: BTreeSet<&str> = words(section)
        .filter(|w| w.starts_with("switchyard_"))
        .map(|w| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| w.strip_suffix(s))
                .unwrap_or(w)
        })
        .collect();
    assert!(used.len() >= 10, "{used:?}");
    let unknown: Vec<&&str> = used.iter().filter(|u| !defined.contains(**u)).collect();
    assert!(
        unknown.is_empty(),
        "README names metrics that do not exist: {unknown:?}"
    );
}

// === the tests: broken copies are caught ===

#[test]
fn broken_dockerfiles_are_caught() {
    let text = read("deploy/Dockerfile");
    let cases = [
        ("--bin switchyard", "--bin switchyardd", "switchyardd"),
        ("-p switchyard", "-p proxy", "-p proxy"),
        ("COPY shared shared", "COPY shard shared", "shard"),
        (
            "COPY dashboard-app dashboard-app\n",
            "",
            "does not COPY `dashboard-app`",
        ),
        ("AS config-repo", "AS config-repository", "config-repo"),
        (
            "SWITCHYARD_DASHBOARD_DIR=",
            "SWITCHYARD_DASHBORD_DIR=",
            "SWITCHYARD_DASHBORD_DIR",
        ),
        (
            "http://127.0.0.1:8081/healthz",
            "http://127.0.0.1:9081/healthz",
            "HEALTHCHECK port 9081",
        ),
        (
            "USER 10001:10001\nEXPOSE 8080",
            "USER root\nEXPOSE 8080",
            "runs as root",
        ),
        (
            "ARG RUST_VERSION=1.95",
            "ARG RUST_VERSION=1.80",
            "RUST_VERSION",
        ),
        (
            "\"probe\", \"--timeout\"",
            "\"probe\", \"--timeoutt\"",
            "--timeoutt",
        ),
    ];
    for (from, to, needle) in cases {
        caught(
            &format!("Dockerfile {from} -> {to}"),
            &check_dockerfile(&mutate(&text, from, to)),
            needle,
        );
    }
}

#[test]
fn broken_compose_files_are_caught() {
    let text = read("docker-compose.yml");
    let cases = [
        (
            "- --poll-interval",
            "- --poll-intervall",
            "--poll-intervall",
        ),
        ("    - 5s", "    - 5 seconds", "refused it"),
        (
            "SWITCHYARD_REDIS_URL: redis",
            "SWITCHYARD_REDIS_URI: redis",
            "SWITCHYARD_REDIS_URI",
        ),
        (
            "OTEL_SERVICE_NAME:",
            "OTEL_SERVICENAME:",
            "OTEL_SERVICENAME",
        ),
        ("\"127.0.0.1:8081:8081\"", "\"127.0.0.1:8081:8091\"", "8091"),
        ("otel-collector:4317", "otel-collector:4318", "4318"),
        (
            "git://config-repo/config.git",
            "git://config-repo/configs.git",
            "configs.git",
        ),
        ("redis://redis:6379/0", "redis://cache:6379/0", "cache"),
        (
            "target: demo-upstream",
            "target: demo-upstreams",
            "demo-upstreams",
        ),
        (
            "./deploy/prometheus.yml:",
            "./deploy/prometheus.yaml:",
            "prometheus.yaml",
        ),
        ("--name, backend1]", "--nam, backend1]", "--nam"),
        (
            "SWITCHYARD_ADMIN_LISTEN: 0.0.0.0:8081",
            "SWITCHYARD_ADMIN_LISTEN: 0.0.0.0:9081",
            "HEALTHCHECK",
        ),
        (
            "content: ${SWITCHYARD_ADMIN_TOKEN:-switchyard-demo-token}",
            "content: other-token",
            "admin token",
        ),
        (
            "SWITCHYARD_LISTEN: 0.0.0.0:8080",
            "SWITCHYARD_LISTEN: 0.0.0.0:80800",
            "refused it",
        ),
        (
            "    hostname: switchyard-2\n    networks:\n      default:\n        aliases: [switchyard]",
            "    hostname: switchyard-2",
            "share no DNS name",
        ),
    ];
    for (from, to, needle) in cases {
        caught(
            &format!("compose {from} -> {to}"),
            &check_compose(&mutate(&text, from, to)),
            needle,
        );
    }
}

#[test]
fn broken_kubernetes_manifests_are_caught() {
    let files = k8s_files();
    let cases = [
        (
            "deployment.yaml",
            "terminationGracePeriodSeconds: 45",
            "terminationGracePeriodSeconds: 30",
            "terminationGracePeriodSeconds",
        ),
        (
            "deployment.yaml",
            "name: SWITCHYARD_GIT_CACHE",
            "name: SWITCHYARD_GIT_CASH",
            "SWITCHYARD_GIT_CASH",
        ),
        ("deployment.yaml", "- --config\n", "- --conf\n", "--conf"),
        (
            "deployment.yaml",
            "key: admin-token",
            "key: admin_token",
            "admin_token",
        ),
        ("deployment.yaml", "path: /readyz", "path: /ready", "/ready"),
        (
            "deployment.yaml",
            "containerPort: 8081",
            "containerPort: 9081",
            "container ports",
        ),
        (
            "deployment.yaml",
            "  replicas: 3",
            "  replicas: 2",
            "replicas",
        ),
        (
            "deployment.yaml",
            "value: /var/lib/switchyard/git",
            "value: /srv/git",
            "writable",
        ),
        (
            "service.yaml",
            "targetPort: admin",
            "targetPort: admn",
            "admn",
        ),
        (
            "configmap.yaml",
            "    strategy: round-robin",
            "    strategy: fastest",
            "switchyard check",
        ),
        (
            "configmap.yaml",
            "      grace_period: 30s",
            "      grace_period: 60s",
            "terminationGracePeriodSeconds",
        ),
        (
            "hpa.yaml",
            "    name: switchyard\n  minReplicas",
            "    name: switchyards\n  minReplicas",
            "HorizontalPodAutoscaler",
        ),
        (
            "pdb.yaml",
            "matchLabels:\n      app.kubernetes.io/name: switchyard",
            "matchLabels:\n      app.kubernetes.io/name: switchyrd",
            "PodDisruptionBudget",
        ),
        (
            "kustomization.yaml",
            "  - hpa.yaml\n",
            "",
            "hpa.yaml is not listed",
        ),
        (
            "service-headless.yaml",
            "clusterIP: None",
            "clusterIP: \"\"",
            "headless",
        ),
    ];
    for (file, from, to, needle) in cases {
        let mut broken = files.clone();
        let text = broken.get_mut(file).unwrap();
        *text = mutate(text, from, to);
        let (problems, _) = check_kubernetes(&broken);
        caught(&format!("{file}: {from} -> {to}"), &problems, needle);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_copies_fail_when_run() {
    // The compose replica following a repository path git-daemon.sh does not serve.
    let compose = mutate(
        &read("docker-compose.yml"),
        "git://config-repo/config.git",
        "git://config-repo/configs.git",
    );
    caught(
        "compose with a wrong repository path",
        &run_compose_replica(&compose, false).await,
        "not running the seeded commit",
    );
    // Prometheus with a token the replicas do not have.
    let compose = mutate(
        &read("docker-compose.yml"),
        "content: ${SWITCHYARD_ADMIN_TOKEN:-switchyard-demo-token}",
        "content: not-the-token",
    );
    caught(
        "compose with Prometheus' token wrong",
        &run_compose_replica(&compose, false).await,
        "Prometheus' scrape",
    );
    // A readiness probe on a path the admin API does not serve.
    let mut files = k8s_files();
    let dep = files.get_mut("deployment.yaml").unwrap();
    *dep = mutate(dep, "path: /readyz", "path: /ready");
    caught(
        "Deployment probing /ready",
        &run_deployment(&files).await,
        "GET /ready answered",
    );
}

// === scripts/local-cluster.sh ===

/// The script running on free ports; SIGTERM and then SIGKILL (by PID, to what it
/// started) on drop if a test fails half-way.
struct LocalCluster {
    child: Child,
    dir: tempfile::TempDir,
    base: u16,
    upstream_base: u16,
    out: Arc<parking_lot::Mutex<Vec<String>>>,
}

/// `base..base+6`, `upstream..upstream+3` and the HTTPS ports `base+20..base+23` all
/// free (outside 18080-18099, below the ephemeral range).
fn free_ranges() -> (u16, u16) {
    for _ in 0..50 {
        let base = 20000 + 2 * fastrand::u16(0..4000);
        let upstream = base + 10;
        let ports: Vec<u16> = (base..base + 6)
            .chain(upstream..upstream + 3)
            .chain(base + 20..base + 23)
            .collect();
        let listeners: Vec<_> = ports
            .iter()
            .map_while(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).ok())
            .collect();
        if listeners.len() == ports.len() {
            return (base, upstream);
        }
    }
    panic!("no free port range found");
}

impl LocalCluster {
    fn start() -> LocalCluster {
        let (base, upstream_base) = free_ranges();
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new("bash")
            .arg(root().join("scripts/local-cluster.sh"))
            .process_group(0)
            .env("SWITCHYARD_BASE_PORT", base.to_string())
            .env("SWITCHYARD_UPSTREAM_BASE_PORT", upstream_base.to_string())
            .env("SWITCHYARD_TLS_BASE_PORT", (base + 20).to_string())
            .env("SWITCHYARD_CLUSTER_DIR", dir.path())
            .env("SWITCHYARD_BIN", SWITCHYARD)
            .env("DEMO_UPSTREAM_BIN", DEMO_UPSTREAM)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let (out, tx) = (out.clone(), tx.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if line == "local-cluster: ready" {
                        let _ = tx.send(());
                    }
                    out.lock().push(line);
                }
            });
        }
        let cluster = LocalCluster {
            child,
            dir,
            base,
            upstream_base,
            out,
        };
        if rx.recv_timeout(Duration::from_secs(90)).is_err() {
            panic!("local-cluster.sh did not get ready:\n{}", cluster.output());
        }
        cluster
    }

    fn output(&self) -> String {
        self.out.lock().join("\n")
    }

    fn proxy(&self, replica: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.base + 2 * (replica - 1)))
    }

    fn admin(&self, replica: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.base + 2 * (replica - 1) + 1))
    }

    fn repo(&self) -> PathBuf {
        self.dir.path().join("config-repo")
    }

    /// (name, pid, start time) of everything the script says it started.
    fn started(&self) -> Vec<(String, u32, String)> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(self.dir.path().join("pids")).unwrap() {
            let p = e.unwrap().path();
            let pid: u32 = std::fs::read_to_string(&p).unwrap().trim().parse().unwrap();
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            out.push((name, pid, start_time(pid).unwrap_or_default()));
        }
        out.sort();
        out
    }

    fn sigterm(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    /// The script exits, nothing it started is left (same PID and start time), and
    /// nothing runs out of its directory (e.g. a git under a replica).
    fn assert_all_stopped(&mut self, started: &[(String, u32, String)]) {
        let status = self.wait_exit(Duration::from_secs(60));
        assert!(
            status.is_some(),
            "the script did not exit:\n{}",
            self.output()
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let left: Vec<_> = started
                .iter()
                .filter(|(_, pid, start)| still_running(*pid, start))
                .collect();
            if left.is_empty() {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "left behind: {left:?}\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let dir = self.dir.path().display().to_string();
        let strays: Vec<String> = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .chars()
                    .all(|c| c.is_ascii_digit())
            })
            .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .filter(|c| c.contains(&dir))
            .collect();
        assert!(strays.is_empty(), "still running: {strays:?}");
        assert!(self.output().contains("==> stopped"), "{}", self.output());
        assert!(!self.dir.path().join("redis/redis.sock").exists());
    }

    fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if tokio::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.sigterm();
            if self.wait_exit(Duration::from_secs(60)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        for (_, pid, start) in self.started() {
            if still_running(pid, &start) {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
    }
}

/// Field 22 of /proc/PID/stat (start time), to tell a process from a later one with
/// the same PID.
fn start_time(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    Some(format!("{}:{}", fields.first()?, fields.get(19)?))
}

/// The same process (same start time), not a zombie.
fn still_running(pid: u32, start: &str) -> bool {
    match start_time(pid) {
        Some(now) => {
            let same = now.split(':').nth(1) == start.split(':').nth(1);
            same && !now.starts_with("Z:")
        }
        None => false,
    }
}

async fn served_by(proxy: SocketAddr, n: usize) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for _ in 0..n {
        if let Ok(r) = get_with(&url_of(proxy, "/"), &[]).await {
            seen.insert(r.backend());
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_cluster_serves_follows_git_and_stops_everything_it_started() {
    for tool in ["redis-server", "git"] {
        assert!(
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .stdout(Stdio::null())
                .status()
                .unwrap()
                .success(),
            "{tool} is needed (apt-get install redis-server git)"
        );
    }
    let mut cluster = LocalCluster::start();
    let started = cluster.started();
    let names: Vec<&str> = started.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "backend1", "backend2", "backend3", "redis", "replica1", "replica2", "replica3"
        ],
        "{}",
        cluster.output()
    );
    for (name, pid, start) in &started {
        assert!(still_running(*pid, start), "{name} ({pid}) is not running");
    }
    let out = cluster.output();
    assert!(
        out.contains(&cluster.repo().display().to_string()),
        "the repository is named:\n{out}"
    );
    assert!(
        out.contains("git commit"),
        "how to change backends is shown:\n{out}"
    );

    // Every replica routes to all three upstreams.
    let all: BTreeSet<String> = ["backend1", "backend2", "backend3"]
        .map(String::from)
        .into();
    for r in 1..=3 {
        assert_eq!(served_by(cluster.proxy(r), 6).await, all, "replica {r}");
    }
    // HTTPS too, with the certificate the script made (verified against it).
    let cert = std::fs::read_to_string(cluster.dir.path().join("tls/localhost.pem")).unwrap();
    for r in 0..3u16 {
        let addr: SocketAddr = ([127, 0, 0, 1], cluster.base + 20 + r).into();
        let s = common::tls::connect(addr, "localhost", common::tls::verifying_config(&cert, &[]))
            .await
            .unwrap_or_else(|e| panic!("HTTPS on {addr}: {e}"));
        let (status, _, body) = common::tls::get_over(s, "localhost", "/").await;
        assert_eq!(status, 200, "HTTPS on {addr}: {body}");
    }
    // They are one cluster: each sees the three replicas through Redis.
    let admin2 = cluster.admin(2);
    wait_until(
        Duration::from_secs(5),
        "three replicas in the registry",
        || async move {
            let view = get(&url_of(admin2, "/admin/cluster")).await.json();
            view["store"]["connected"] == true
                && view["replicas"].as_array().map(Vec::len) == Some(3)
        },
    )
    .await;

    // A drain on replica 1 reaches replica 3.
    let b1 = format!("http://127.0.0.1:{}", cluster.upstream_base);
    let r = post(
        &url_of(cluster.admin(1), "/admin/remove"),
        &format!("{{\"url\":\"{b1}\"}}"),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let admin3 = cluster.admin(3);
    let b1_key = b1.clone();
    wait_until(Duration::from_secs(3), "replica 3 sees the drain", || {
        let b1 = b1_key.clone();
        async move {
            backend_view(admin3, &b1)
                .await
                .is_none_or(|b| b["draining"] == true)
        }
    })
    .await;
    assert!(!served_by(cluster.proxy(3), 6).await.contains("backend1"));
    let r = post(
        &url_of(cluster.admin(1), "/admin/add"),
        &format!("{{\"url\":\"{b1}\",\"weight\":1}}"),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);

    // A git commit in the printed repository swaps backend3 for a new upstream.
    let backend4 = demo("backend4").await;
    let cfg = cluster.repo().join("config.yaml");
    let b3 = format!("http://127.0.0.1:{}", cluster.upstream_base + 2);
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, mutate(&text, &b3, &backend4.url())).unwrap();
    // As a user would: the repository has an identity of its own.
    let out = Command::new("git")
        .current_dir(cluster.repo())
        .args(["commit", "-q", "-am", "backend4 instead of backend3"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let head = git(&cluster.repo(), &["rev-parse", "HEAD"]);
    for r in 1..=3 {
        let admin = cluster.admin(r);
        let head = head.clone();
        wait_until(Duration::from_secs(10), "the commit applied", || {
            let head = head.clone();
            async move { get(&url_of(admin, "/admin/config")).await.json()["commit"] == head.as_str() }
        })
        .await;
    }
    for r in 1..=3 {
        let proxy = cluster.proxy(r);
        wait_until(
            Duration::from_secs(5),
            "backend4 served, backend3 gone",
            || async move {
                let seen = served_by(proxy, 6).await;
                seen.contains("backend4") && !seen.contains("backend3")
            },
        )
        .await;
    }

    // SIGTERM to the script: it stops, and so does everything it started.
    cluster.sigterm();
    cluster.assert_all_stopped(&started);
}

/// Ctrl-C in a terminal: SIGINT to the whole foreground process group (the script
/// and its children at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_cluster_stops_on_ctrl_c() {
    let mut cluster = LocalCluster::start();
    let started = cluster.started();
    assert_eq!(started.len(), 7, "{}", cluster.output());
    assert_eq!(
        get(&url_of(cluster.proxy(3), "/")).await.status,
        StatusCode::OK
    );
    let ok = Command::new("kill")
        .args(["-INT", "--", &format!("-{}", cluster.child.id())])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -INT to the process group");
    cluster.assert_all_stopped(&started);
}
