//! TLS session resumption across the cluster: ticket keys are shared through Redis,
//! so a session saved from replica 1 (`openssl s_client -sess_out`) resumes on
//! replica 2 (`-sess_in`, `Reused` in its output); replicas that share nothing do
//! not resume each other's sessions (the check can fail).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};

use common::tls::{self as t, Ca};
use common::*;

/// One `openssl s_client` TLS 1.3 session to `addr`: an HTTP request, with the
/// session saved to or read from `sess`; its output.
fn s_client(addr: SocketAddr, sess: &Path, save: bool) -> String {
    use std::io::Write;
    let mut cmd = Command::new("openssl");
    cmd.args([
        "s_client",
        "-connect",
        &addr.to_string(),
        "-servername",
        "a.test",
        "-tls1_3",
        "-ign_eof",
    ]);
    cmd.arg(if save { "-sess_out" } else { "-sess_in" })
        .arg(sess);
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn replica(
    redis: Option<&RedisServer>,
    pair: &(std::path::PathBuf, std::path::PathBuf),
    backend: &switchyard_demo::DemoServer,
) -> switchyard::server::Running {
    let cluster = match redis {
        Some(r) => format!("cluster:\n  redis_url: \"{}\"\n  name: tickets\n", r.url()),
        None => String::new(),
    };
    let yaml = format!(
        "{}{}{cluster}tls:\n  port: 0\n  certificates:\n    - cert: \"{}\"\n      key: \"{}\"\n",
        server_yaml(),
        backends_yaml(&[(backend, 1)]),
        pair.0.display(),
        pair.1.display()
    );
    proxy(&yaml).await
}

#[tokio::test]
async fn a_session_from_one_replica_resumes_on_another_through_shared_ticket_keys() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let pair = t::write_pair(dir.path(), "a", &ca.leaf(&["a.test"]));
    let backend = demo("b1").await;
    let redis = RedisServer::start();
    let r1 = replica(Some(&redis), &pair, &backend).await;
    let r2 = replica(Some(&redis), &pair, &backend).await;
    let sess = dir.path().join("session.pem");
    let (a1, a2) = (r1.tls_addr.unwrap(), r2.tls_addr.unwrap());
    let out = tokio::task::spawn_blocking({
        let sess = sess.clone();
        move || s_client(a1, &sess, true)
    })
    .await
    .unwrap();
    assert!(out.contains("New, TLSv1.3"), "{out}");
    assert!(out.contains("b1"), "the request went through: {out}");
    let out = tokio::task::spawn_blocking({
        let sess = sess.clone();
        move || s_client(a2, &sess, false)
    })
    .await
    .unwrap();
    assert!(
        out.contains("Reused, TLSv1.3"),
        "resumed on replica 2: {out}"
    );
    assert_eq!(
        r2.tls.as_ref().unwrap().view().resumed,
        1,
        "replica 2 counted a resumed handshake"
    );
    assert_eq!(
        get(&url(r2.admin_addr, "/admin/tls")).await.json()["ticket_keys"],
        4,
        "the current key, two older ones kept, and the next one"
    );

    // Two replicas that share nothing: a full handshake.
    let lone1 = replica(None, &pair, &backend).await;
    let lone2 = replica(None, &pair, &backend).await;
    let (l1, l2) = (lone1.tls_addr.unwrap(), lone2.tls_addr.unwrap());
    let sess2 = dir.path().join("session2.pem");
    let s2 = sess2.clone();
    tokio::task::spawn_blocking(move || s_client(l1, &s2, true))
        .await
        .unwrap();
    let out = tokio::task::spawn_blocking(move || s_client(l2, &sess2, false))
        .await
        .unwrap();
    assert!(out.contains("New, TLSv1.3"), "{out}");
    for r in [r1, r2, lone1, lone2] {
        r.shutdown().await;
    }
}

#[tokio::test]
async fn a_self_signed_certificate_is_made_once_and_served_by_every_replica() {
    let redis = RedisServer::start();
    let backend = demo("b1").await;
    let yaml = format!(
        "{}{}cluster:\n  redis_url: \"{}\"\n  name: selfsigned\ntls:\n  port: 0\n  self_signed: [localhost, 127.0.0.1]\n",
        server_yaml(),
        backends_yaml(&[(&backend, 1)]),
        redis.url()
    );
    let r1 = proxy(&yaml).await;
    let r2 = proxy(&yaml).await;
    let a = t::cert_for(r1.tls_addr.unwrap(), "localhost")
        .await
        .unwrap();
    let b = t::cert_for(r2.tls_addr.unwrap(), "localhost")
        .await
        .unwrap();
    assert_eq!(a.names, ["localhost"]);
    assert_eq!(a.serial, b.serial, "one certificate for the cluster");
    let v = get(&url(r2.admin_addr, "/admin/tls")).await.json();
    assert_eq!(v["certificates"][0]["source"], "self-signed");
    assert_eq!(v["certificates"][0]["default"], true);
    for r in [r1, r2] {
        r.shutdown().await;
    }
}
