//! The layering guard: no import cycle between the top-level modules of any crate
//! under `proxy/`, `switchyard`'s modules import only the layers below theirs
//! (docs/architecture.md), and the HTTP/1.1 wire crate depends on no other
//! Switchyard crate.
//!
//! The module graph is read from the sources: every `crate::a` path (in `use` lists
//! too: `use crate::{a, b::c}`) and every `super::` path that climbs out of a
//! top-level module is an edge from the file's top-level module to `a`. Comments
//! and string literals are skipped; test modules count (a unit test that needs a
//! higher layer is a layering problem too).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// `switchyard`'s layers, low to high; a module may import only modules of lower
/// layers. A module missing here is only checked for cycles.
const LAYERS: &[&[&str]] = &[
    &["config"],
    &["state", "events", "telemetry"],
    &["resilience", "ratelimit", "route"],
    &["backend"],
    &["balance"],
    &["snapshot"],
    &["dataplane"],
    &["errors"],
    &["forward"],
    &["listener"],
    &["app"],
    &["health", "cluster", "gitops", "tls", "discovery"],
    &["admin"],
    &["server"],
    &["cli"],
];

/// The module graph of one crate: top-level module -> modules it imports (with a
/// file that does, for the message).
type Graph = BTreeMap<String, BTreeMap<String, String>>;

fn proxy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// Every crate under `proxy/`: (package directory, its `src/`).
fn crates() -> Vec<PathBuf> {
    let root = proxy_dir();
    let mut out = vec![root.clone()];
    for e in std::fs::read_dir(&root).expect("proxy/") {
        let p = e.expect("entry").path();
        if p.join("Cargo.toml").exists() && p.join("src").is_dir() {
            out.push(p);
        }
    }
    out.sort();
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("source directory") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The module path of a file under `src/` (`a/b.rs` and `a/b/mod.rs`: [a, b]);
/// `None` for crate roots (`lib.rs`, `main.rs`, `src/bin/*`).
fn module_path(src: &Path, file: &Path) -> Option<Vec<String>> {
    let rel = file.strip_prefix(src).ok()?;
    let mut parts: Vec<String> = rel
        .iter()
        .map(|c| c.to_string_lossy().into_owned())
        .collect();
    if parts.first().map(String::as_str) == Some("bin") {
        return None;
    }
    let last = parts.pop()?;
    let stem = last.trim_end_matches(".rs").to_string();
    if parts.is_empty() && (stem == "lib" || stem == "main") {
        return None;
    }
    if stem != "mod" {
        parts.push(stem);
    }
    Some(parts)
}

/// The source without comments, string and char literals (so `crate::` in a doc
/// or a message is not an import).
fn code_only(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            let mut depth = 0;
            while i < b.len() {
                if b[i..].starts_with(b"/*") {
                    depth += 1;
                    i += 2;
                } else if b[i..].starts_with(b"*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if b[i] == b'r' && (b[i..].starts_with(b"r\"") || b[i..].starts_with(b"r#")) {
            // Raw string: r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while j < b.len() && b[j] == b'#' {
                hashes += 1;
                j += 1;
            }
            if j < b.len() && b[j] == b'"' {
                let close: Vec<u8> = std::iter::once(b'"')
                    .chain(std::iter::repeat_n(b'#', hashes))
                    .collect();
                j += 1;
                while j < b.len() && !b[j..].starts_with(&close) {
                    j += 1;
                }
                i = (j + close.len()).min(b.len());
                out.push_str("\"\"");
            } else {
                out.push('r');
                i += 1;
            }
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == b'\'' && i + 2 < b.len() && (b[i + 2] == b'\'' || b[i + 1] == b'\\') {
            // A char literal ('a', '\n'); lifetimes ('a) are left alone.
            i += 1;
            while i < b.len() && b[i] != b'\'' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("' '");
        } else {
            let ch = src[i..].chars().next().unwrap_or(' ');
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

/// Identifiers and `::`/`{`/`}`/`,` as tokens.
fn tokens(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = code.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c.is_alphanumeric() || c == '_' {
            let mut end = i + c.len_utf8();
            while let Some(&(j, d)) = chars.peek() {
                if d.is_alphanumeric() || d == '_' {
                    end = j + d.len_utf8();
                    chars.next();
                } else {
                    break;
                }
            }
            out.push(code[i..end].to_string());
        } else if c == ':' && chars.peek().is_some_and(|&(_, d)| d == ':') {
            chars.next();
            out.push("::".into());
        } else if "{},;".contains(c) {
            out.push(c.to_string());
        }
    }
    out
}

/// The top-level modules one file's code refers to, given the file's module path.
fn imports(code: &str, module: &[String]) -> BTreeSet<String> {
    let t = tokens(code);
    let mut found = BTreeSet::new();
    // Inline modules (`mod tests { ... }`) deepen the path `super` climbs from.
    let mut inline: Vec<usize> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < t.len() {
        match t[i].as_str() {
            "mod" if t.get(i + 2).map(String::as_str) == Some("{") => {
                inline.push(depth);
                depth += 1;
                i += 3;
                continue;
            }
            "{" => depth += 1,
            "}" => {
                depth = depth.saturating_sub(1);
                if inline.last() == Some(&depth) {
                    inline.pop();
                }
            }
            // Not after `::` (a path of another crate that happens to say `crate`).
            "crate"
                if t.get(i + 1).map(String::as_str) == Some("::")
                    && (i == 0 || t[i - 1] != "::") =>
            {
                collect(&t, i + 2, &mut found);
            }
            "super" if i == 0 || t[i - 1] != "::" => {
                // Climb: each `super` leaves one module (inline ones first).
                let mut level = module.len() + inline.len();
                let mut j = i;
                while t.get(j).map(String::as_str) == Some("super")
                    && t.get(j + 1).map(String::as_str) == Some("::")
                {
                    level = level.saturating_sub(1);
                    j += 2;
                }
                if j > i && level == 0 {
                    // Reached the crate root: what follows names a top-level module.
                    collect(&t, j, &mut found);
                }
            }
            _ => {}
        }
        i += 1;
    }
    found
}

/// The first segment(s) after `crate::` at `at`: one name, or each name of a
/// `{...}` list.
fn collect(t: &[String], at: usize, found: &mut BTreeSet<String>) {
    match t.get(at).map(String::as_str) {
        Some("{") => {
            let mut depth = 0;
            let mut expect_name = true;
            for tok in &t[at..] {
                match tok.as_str() {
                    "{" => {
                        depth += 1;
                        expect_name = depth == 1;
                    }
                    "}" => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    "," if depth == 1 => expect_name = true,
                    name if depth == 1 && expect_name => {
                        if is_module_name(name) {
                            found.insert(name.to_string());
                        }
                        expect_name = false;
                    }
                    _ => {}
                }
            }
        }
        Some(name) if is_module_name(name) => {
            found.insert(name.to_string());
        }
        _ => {}
    }
}

/// An identifier that can name a module (not `self`, punctuation or a glob).
fn is_module_name(t: &str) -> bool {
    t != "self"
        && t.chars()
            .next()
            .is_some_and(|c| c.is_alphabetic() || c == '_')
}

/// The top-level module graph of the crate in `dir`.
fn graph(dir: &Path) -> Graph {
    let src = dir.join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut g = Graph::new();
    for f in &files {
        let Some(module) = module_path(&src, f) else {
            continue;
        };
        let text = std::fs::read_to_string(f).expect("source file");
        let top = module[0].clone();
        let entry = g.entry(top.clone()).or_default();
        for m in imports(&code_only(&text), &module) {
            if m != top {
                entry.entry(m).or_insert_with(|| f.display().to_string());
            }
        }
    }
    // Names that are not modules of this crate (a re-exported item at the root,
    // `crate::Foo`) are not edges.
    let modules: BTreeSet<String> = g.keys().cloned().collect();
    for targets in g.values_mut() {
        targets.retain(|m, _| modules.contains(m));
    }
    g
}

/// A cycle in `g`, as the modules in order (first == last), if there is one.
fn find_cycle(g: &Graph) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    fn visit(
        g: &Graph,
        n: &str,
        marks: &mut BTreeMap<String, Mark>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        marks.insert(n.to_string(), Mark::Active);
        stack.push(n.to_string());
        for m in g.get(n).into_iter().flat_map(|t| t.keys()) {
            match marks.get(m).copied().unwrap_or(Mark::New) {
                Mark::Active => {
                    let start = stack.iter().position(|s| s == m).unwrap_or(0);
                    let mut cycle = stack[start..].to_vec();
                    cycle.push(m.clone());
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(c) = visit(g, m, marks, stack) {
                        return Some(c);
                    }
                }
                Mark::Done => {}
            }
        }
        stack.pop();
        marks.insert(n.to_string(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for n in g.keys() {
        if marks.get(n).copied().unwrap_or(Mark::New) == Mark::New {
            let mut stack = Vec::new();
            if let Some(c) = visit(g, n, &mut marks, &mut stack) {
                return Some(c);
            }
        }
    }
    None
}

/// Edges of `g` that do not go down the layers.
fn upward_edges(g: &Graph, layers: &[&[&str]]) -> Vec<String> {
    let layer = |m: &str| layers.iter().position(|l| l.contains(&m));
    let mut bad = Vec::new();
    for (from, targets) in g {
        let Some(lf) = layer(from) else { continue };
        for (to, file) in targets {
            if let Some(lt) = layer(to)
                && lt >= lf
            {
                bad.push(format!(
                    "{from} (layer {lf}) imports {to} (layer {lt}) in {file}"
                ));
            }
        }
    }
    bad
}

fn describe(cycle: &[String], g: &Graph) -> String {
    cycle
        .windows(2)
        .map(|w| format!("{} -> {} ({})", w[0], w[1], g[&w[0]][&w[1]]))
        .collect::<Vec<_>>()
        .join("\n  ")
}

#[test]
fn no_crate_under_proxy_has_an_import_cycle_between_top_level_modules() {
    let crates = crates();
    assert!(crates.len() >= 3, "proxy, http1, demo: {crates:?}");
    for dir in crates {
        let g = graph(&dir);
        // The scan sees the crates' modules (a crate of one file has none).
        let expect = match dir.file_name().and_then(|n| n.to_str()) {
            Some("proxy") => Some("forward"),
            Some("http1") => Some("codec"),
            _ => None,
        };
        if let Some(m) = expect {
            assert!(
                g.contains_key(m),
                "no module `{m}` in {}: {g:?}",
                dir.display()
            );
        }
        if let Some(cycle) = find_cycle(&g) {
            panic!(
                "import cycle between top-level modules of {}:\n  {}",
                dir.display(),
                describe(&cycle, &g)
            );
        }
    }
}

#[test]
fn switchyard_modules_import_only_lower_layers() {
    let g = graph(&proxy_dir());
    let bad = upward_edges(&g, LAYERS);
    assert!(
        bad.is_empty(),
        "imports against the layers (docs/architecture.md):\n  {}",
        bad.join("\n  ")
    );
    // The table names real modules (a renamed module must be renamed here too).
    for name in LAYERS.iter().flat_map(|l| l.iter()) {
        assert!(
            g.contains_key(*name),
            "layer table names `{name}`, not a module"
        );
    }
}

#[test]
fn the_wire_crate_depends_on_no_other_switchyard_crate() {
    let manifest = std::fs::read_to_string(proxy_dir().join("http1/Cargo.toml")).expect("manifest");
    let deps: Vec<&str> = manifest
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("switchyard"))
        .collect();
    assert!(deps.is_empty(), "proxy/http1 depends on {deps:?}");
}

// === the checker itself ===

/// A crate laid out in a temporary directory: (relative path, source).
fn fake_crate(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for (path, text) in files {
        let p = dir.path().join("src").join(path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, text).expect("write");
    }
    dir
}

#[test]
fn the_checker_finds_a_cycle_through_use_lists_and_super_paths() {
    let dir = fake_crate(&[
        ("lib.rs", "pub mod a; pub mod b; pub mod c;"),
        ("a.rs", "use crate::{b::Thing, config};\n"),
        ("b/mod.rs", "mod inner;\n"),
        // b/inner.rs climbs to the root with two supers: b -> c.
        ("b/inner.rs", "fn f() { super::super::c::g(); }\n"),
        ("c.rs", "pub fn g() { let _ = crate::a::X; }\n"),
    ]);
    let g = graph(dir.path());
    let cycle = find_cycle(&g).expect("a -> b -> c -> a is a cycle");
    assert_eq!(cycle.first(), cycle.last());
    assert_eq!(cycle.len(), 4, "{cycle:?}");
    // `config` is not a module of this crate: no edge.
    assert!(!g["a"].contains_key("config"));
}

#[test]
fn the_checker_ignores_comments_strings_and_module_local_paths() {
    let dir = fake_crate(&[
        ("lib.rs", "pub mod a; pub mod b;"),
        (
            "a.rs",
            "//! See [`crate::b`].\nfn f() { let s = \"crate::b\"; /* crate::b */ }\n\
             mod tests { use super::*; use super::super::a; }\n",
        ),
        ("b.rs", "use crate::a;\npub(crate) fn g() {}\n"),
    ]);
    let g = graph(dir.path());
    assert!(find_cycle(&g).is_none(), "{g:?}");
    assert!(g["b"].contains_key("a"));
    assert!(g["a"].is_empty(), "{g:?}");
}

#[test]
fn the_checker_reports_imports_against_the_layers() {
    let dir = fake_crate(&[
        ("lib.rs", "pub mod low; pub mod high;"),
        ("low.rs", "use crate::high::Thing;\n"),
        ("high.rs", "pub struct Thing;\n"),
    ]);
    let g = graph(dir.path());
    let bad = upward_edges(&g, &[&["low"], &["high"]]);
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert!(bad[0].starts_with("low (layer 0) imports high (layer 1)"));
}
