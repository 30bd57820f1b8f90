//! The HTTP/1.1 fuzz targets' corpora (`fuzz/corpus/h1_*`: the seeds, and every
//! finding kept as a regression case) replayed through the same checks the
//! targets run (`fuzz/oracle`), so they hold in the normal test suite.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../../fuzz/oracle/mod.rs"]
mod oracle;

use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let name = path.display().to_string();
        std::panic::catch_unwind(|| check(&data)).unwrap_or_else(|_| panic!("{name}"));
        n += 1;
    }
    assert!(n > 0, "no corpus in {}", dir.display());
}

#[test]
fn request_head_corpus() {
    replay("h1_request", oracle::request_head);
}

#[test]
fn response_head_corpus() {
    replay("h1_response", oracle::response_head);
}

#[test]
fn chunked_corpus() {
    replay("h1_chunked", oracle::chunked);
}

#[test]
fn differential_corpus() {
    replay("h1_differential", oracle::differential);
}
