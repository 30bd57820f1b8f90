//! The deployment files checked against the real thing, one module per subject:
//!
//! - `compose`: the images deploy/Dockerfile builds, running as docker-compose.yml
//!   describes them, with the production scenarios driven through the published
//!   ports. Needs Docker: `#[ignore]`d here, run by scripts/compose-test.sh.
//! - `kubernetes`: the kustomize base, read with a YAML parser (yaml_serde), its
//!   objects checked against each other and against the binary (`switchyard check`,
//!   clap), its container run as a process and probed as the kubelet would; rendered
//!   with `kubectl kustomize` where kubectl is installed. Every check also runs on a
//!   deliberately broken copy, to show it can fail.
//! - `local_cluster`: scripts/local-cluster.sh run for real on free ports.
//! - here: the environment variable names the files use, and the metric names the
//!   README tells operators to alert on.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../common/mod.rs"]
mod common;
mod compose;
mod kubernetes;
mod local_cluster;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde::Deserialize;
use serde_json::Value as J;

const SWITCHYARD: &str = env!("CARGO_BIN_EXE_switchyard");

/// What the Kubernetes base relies on in the proxy image (deploy/Dockerfile, stage
/// `switchyard`); `compose` checks the built image against these.
const IMAGE_USER: &str = "10001:10001";
const IMAGE_HOME: &str = "/var/lib/switchyard";
/// Programs on the proxy image's PATH (it is FROM scratch: nothing else is there).
const IMAGE_PROGRAMS: [&str; 4] = ["switchyard", "git", "ssh", "sh"];
const IMAGE_ENV: [(&str, &str); 3] = [
    ("HOME", IMAGE_HOME),
    ("SWITCHYARD_CONFIG", "/etc/switchyard/config.yaml"),
    ("SWITCHYARD_LOG_FORMAT", "json"),
];

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

// === environment variable names ===

/// Variable names switchyard knows.
struct Known {
    /// `SWITCHYARD_*` names in `switchyard --help` and its subcommands' help.
    help_env: BTreeSet<String>,
    /// `"SWITCHYARD_*"` and `"OTEL_*"` string literals in `proxy/src` (outside tests).
    source_env: BTreeSet<String>,
    flags: BTreeSet<String>,
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
            let out = Command::new(SWITCHYARD).args(args).output().unwrap();
            assert!(out.status.success(), "switchyard {args:?} failed");
            help.push_str(&String::from_utf8_lossy(&out.stdout));
        }
        Known {
            help_env: words(&help)
                .filter(|w| w.starts_with("SWITCHYARD_"))
                .map(String::from)
                .collect(),
            source_env: env_literals(&root().join("proxy/src")),
            flags: words(&help)
                .filter(|w| w.starts_with("--"))
                .map(String::from)
                .collect(),
        }
    })
}

fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        .filter(|w| !w.is_empty())
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

/// A problem if an environment variable the files set is not one switchyard reads
/// (clap ignores variables it does not know, so a misspelt one would pass it).
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

/// The variables docker-compose.yml hands the replicas are ones switchyard reads
/// (the running stack shows that the values work; a misspelt name would be ignored).
#[test]
fn compose_environment_names_are_read_by_switchyard() {
    let compose = yaml_one(&read("docker-compose.yml")).unwrap();
    let mut problems = Vec::new();
    let mut seen = 0;
    for (name, svc) in compose["services"].as_object().unwrap() {
        if !name.starts_with("switchyard") {
            continue;
        }
        for var in svc["environment"].as_object().unwrap().keys() {
            check_env_name(var, &format!("docker-compose.yml {name}"), &mut problems);
            seen += 1;
        }
    }
    assert!(seen >= 10, "replicas' environment: {seen} variables");
    report("docker-compose.yml", &problems);
    let mut broken = Vec::new();
    check_env_name("SWITCHYARD_REDIS_URI", "broken", &mut broken);
    caught("a misspelt variable", &broken, "SWITCHYARD_REDIS_URI");
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
