//! The dashboard in a real browser: headless Chromium driven through chromedriver
//! (WebDriver), against `switchyard` processes started from a directory with no
//! checkout (so the dashboard they serve is the one embedded in the binary), with
//! demo upstreams, all on ephemeral loopback ports.
//!
//! Needs `chromedriver` and `chromium` (Debian: `chromium-driver`, `chromium`) and a
//! dashboard built before the binary (`scripts/build-dashboard.sh`, then cargo);
//! `scripts/test.sh` provides all three. Without them the test says so and passes
//! without running.

mod common;

use std::future::Future;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use futures_util::FutureExt;
use hyper_util::client::legacy::connect::HttpConnector;
use serde::Deserialize;
use switchyard_demo::DemoServer;
use tokio::time::Instant;

const CHROME_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
];

/// Bound on waits for things that normally take well under a second.
const STEP: Duration = Duration::from_secs(15);

// === prerequisites ===

fn on_path(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    names.iter().find_map(|name| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("proxy/ has a parent")
        .to_path_buf()
}

struct Tools {
    chromedriver: PathBuf,
    chromium: PathBuf,
    /// An empty working directory for the proxies: no `dashboard-app/dist` there.
    nowhere: tempfile::TempDir,
}

fn tools() -> Result<Tools, String> {
    let chromedriver = on_path(&["chromedriver"])
        .ok_or("chromedriver not found on PATH (Debian package chromium-driver)")?;
    let chromium = on_path(&["chromium", "chromium-browser", "google-chrome"])
        .ok_or("chromium not found on PATH (Debian package chromium)")?;
    let dist = workspace_root().join("dashboard-app/dist");
    for f in ["index.html", "dashboard_app.js", "dashboard_app_bg.wasm"] {
        if !dist.join(f).is_file() {
            return Err(format!(
                "{} is missing: build the dashboard with scripts/build-dashboard.sh",
                dist.join(f).display()
            ));
        }
    }
    Ok(Tools {
        chromedriver,
        chromium,
        nowhere: tempfile::tempdir().map_err(|e| e.to_string())?,
    })
}

/// A `switchyard` process started from a directory with no checkout.
fn switchyard(tools: &Tools, yaml: &str) -> Proc {
    Proc::start_in(yaml, tools.nowhere.path())
}

// === chromedriver ===

/// A chromedriver process of ours; it and the browsers it started are killed on drop.
struct Driver {
    child: Child,
    url: String,
    profile: tempfile::TempDir,
}

impl Driver {
    async fn start(tools: &Tools) -> Driver {
        let profile = tempfile::tempdir().expect("temp dir");
        for _ in 0..5 {
            // Ask the OS for a free port, then hand it over (retried if taken meanwhile).
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free port")
                .port();
            let mut child = Command::new(&tools.chromedriver)
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn chromedriver");
            let deadline = Instant::now() + STEP;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // exited: most likely the port was taken; try another
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Driver {
                        child,
                        url: format!("http://127.0.0.1:{port}"),
                        profile,
                    };
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("chromedriver did not start");
    }

    async fn browser(&self, tools: &Tools) -> Client {
        let mut args: Vec<String> = CHROME_FLAGS.iter().map(|s| s.to_string()).collect();
        args.push(format!("--user-data-dir={}", self.profile.path().display()));
        args.push("--window-size=1280,1800".into());
        let caps = serde_json::json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": tools.chromium.to_string_lossy(),
                "args": args,
            },
        });
        let serde_json::Value::Object(caps) = caps else {
            unreachable!()
        };
        ClientBuilder::new(HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("WebDriver session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Browsers the driver started and left behind (a failed test may not have
        // closed its session): found by our private profile directory, killed by pid.
        let marker = self.profile.path().to_string_lossy().into_owned();
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return;
        };
        for p in procs.flatten() {
            let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&marker) {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
        }
    }
}

// === page helpers ===

/// What the page shows, read in one script so that re-renders between WebDriver calls
/// cannot give a torn view.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Page {
    link: Option<String>,
    /// The page marks its data stale (no snapshot for more than 3 s).
    stale: bool,
    backends: Vec<Row>,
    gone: Vec<String>,
    confirm: Option<String>,
    token_dialog: bool,
    token_reason: Option<String>,
    result: Option<Outcome>,
    add_error: Option<String>,
    events: usize,
    overflow: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Row {
    url: String,
    status: String,
    circuit: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Outcome {
    ok: bool,
    text: String,
}

const READ_PAGE: &str = r#"
const q = (s) => document.querySelector(s);
const text = (e) => e ? e.textContent.trim() : null;
const result = q('[data-testid=action-result]');
return {
  link: q('[data-testid=link-status]')?.dataset.state ?? null,
  stale: !!q('#main')?.classList.contains('stale'),
  backends: Array.from(document.querySelectorAll('[data-testid=backend-row]')).map((e) => ({
    url: e.dataset.url,
    status: text(e.querySelector('[data-testid=status]')) ?? '',
    circuit: text(e.querySelector('[data-testid=circuit]')) ?? '',
  })),
  gone: Array.from(document.querySelectorAll('[data-testid=gone-row]')).map((e) => e.dataset.url),
  confirm: text(q('[data-testid=confirm-text]')),
  token_dialog: !!q('[data-testid=token-dialog]'),
  token_reason: text(q('[data-testid=token-reason]')),
  result: result ? { ok: result.dataset.ok === 'true', text: text(result) } : null,
  add_error: text(q('[data-testid=add-error]')),
  events: document.querySelectorAll('[data-testid=event-row]').length,
  overflow: document.documentElement.scrollWidth > window.innerWidth + 1,
};
"#;

async fn page(c: &Client) -> Page {
    match c.execute(READ_PAGE, vec![]).await {
        Ok(v) => serde_json::from_value(v).unwrap_or_default(),
        Err(_) => Page::default(),
    }
}

/// Polls `f` until it yields a value, panicking after `limit`.
async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the page satisfies `cond`, returning that view of it.
async fn page_until(c: &Client, limit: Duration, what: &str, cond: impl Fn(&Page) -> bool) -> Page {
    let deadline = Instant::now() + limit;
    loop {
        let p = page(c).await;
        if cond(&p) {
            return p;
        }
        if Instant::now() > deadline {
            panic!(
                "timed out after {limit:?} waiting for the page to show {what}; it shows {p:#?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Clicks the element `css` selects (found afresh, since rows re-render).
async fn click(c: &Client, css: &str) {
    eventually(STEP, &format!("a clickable {css}"), || async move {
        c.find(Locator::Css(css)).await.ok()?.click().await.ok()
    })
    .await
}

async fn type_into(c: &Client, css: &str, text: &str) {
    let e = c.find(Locator::Css(css)).await.expect(css);
    e.clear().await.expect("clear");
    e.send_keys(text).await.expect("type");
}

fn row<'a>(p: &'a Page, url: &str) -> Option<&'a Row> {
    p.backends.iter().find(|r| r.url == url)
}

/// Confirms the pending change in the page's dialog and returns the server's answer.
async fn confirm(c: &Client, expect_in_question: &str) -> Outcome {
    let p = page_until(c, STEP, "the confirmation dialog", |p| p.confirm.is_some()).await;
    let question = p.confirm.unwrap_or_default();
    assert!(
        question.contains(expect_in_question),
        "dialog asks {question:?}, expected it to mention {expect_in_question}"
    );
    click(c, "[data-testid=confirm-yes]").await;
    page_until(c, STEP, "the server's answer", |p| {
        p.confirm.is_none() && p.result.is_some()
    })
    .await
    .result
    .unwrap_or_default()
}

// === traffic helpers ===

/// Which demo upstream answered each of `n` requests through the proxy.
async fn route(proxy: SocketAddr, n: usize) -> Vec<String> {
    let mut seen = Vec::with_capacity(n);
    for _ in 0..n {
        seen.push(get(&url(proxy, "/")).await.backend());
    }
    seen
}

async fn circuit_of(admin: SocketAddr, key: &str) -> String {
    backend_view(admin, key)
        .await
        .and_then(|v| v["circuit"].as_str().map(str::to_string))
        .unwrap_or_default()
}

fn config(backends: &[(&DemoServer, u32)], extra: &str) -> String {
    format!(
        "{}{}circuit_breaker:\n  failure_threshold: 3\n  open_duration: 30s\nadmin:\n  cors_origins: []\n{extra}",
        server_yaml(),
        backends_yaml(backends),
    )
}

fn save_screenshot(png: &[u8], name: &str) -> PathBuf {
    let dir = workspace_root().join("test-artifacts");
    std::fs::create_dir_all(&dir).expect("create test-artifacts/");
    let path = dir.join(name);
    std::fs::write(&path, png).expect("write screenshot");
    path
}

// === the scenarios ===

/// Lists, add, drain, re-add and a circuit opening, all through the page.
async fn operate_the_cluster(c: &Client, tools: &Tools) {
    let b1 = demo("backend1").await;
    let b2 = demo("backend2").await;
    let b3 = demo("backend3").await;
    let b4 = demo("backend4").await; // not in the config: added through the page
    let p = switchyard(tools, &config(&[(&b1, 1), (&b2, 1), (&b3, 1)], ""));
    // The binary serves the app itself: page, script and module, right types.
    for (path, ty) in [
        ("/dashboard/", "text/html; charset=utf-8"),
        (
            "/dashboard/dashboard_app.js",
            "text/javascript; charset=utf-8",
        ),
        ("/dashboard/dashboard_app_bg.wasm", "application/wasm"),
    ] {
        let r = get(&url(p.admin, path)).await;
        assert_eq!(
            r.status,
            http::StatusCode::OK,
            "{path}: is the dashboard embedded? (build it, then cargo build): {}",
            r.body
        );
        assert_eq!(r.headers["content-type"], ty, "{path}");
    }
    c.goto(&url(p.admin, "/dashboard/"))
        .await
        .expect("open the dashboard");

    // Every backend is listed, and the stream is live.
    let configured = [b1.url(), b2.url(), b3.url()];
    page_until(c, STEP, "the three configured backends, live", |pg| {
        pg.link.as_deref() == Some("live")
            && pg.backends.len() == 3
            && configured.iter().all(|u| row(pg, u).is_some())
    })
    .await;

    // The form checks input with the proxy's own validation before sending anything.
    type_into(c, "#add-url", "ftp://127.0.0.1:1").await;
    click(c, "#add-submit").await;
    let pg = page_until(c, STEP, "a validation error", |pg| pg.add_error.is_some()).await;
    assert!(
        pg.confirm.is_none(),
        "nothing to confirm for an invalid URL"
    );
    assert!(pg.add_error.unwrap_or_default().contains("scheme"));

    // Add backend4 through the form; the proxy routes to it.
    type_into(c, "#add-url", &b4.url()).await;
    type_into(c, "#add-weight", "1").await;
    click(c, "#add-submit").await;
    let answer = confirm(c, &b4.url()).await;
    assert!(answer.ok, "add refused: {}", answer.text);
    assert!(
        answer.text.contains("in the running set"),
        "{}",
        answer.text
    );
    page_until(c, STEP, "backend4's row", |pg| row(pg, &b4.url()).is_some()).await;
    let seen = route(p.proxy, 12).await;
    assert!(
        seen.iter().any(|b| b == "backend4"),
        "no request reached the added backend: {seen:?}"
    );

    // Drain backend2: its traffic stops.
    click(
        c,
        &format!(
            "[data-testid=backend-row][data-url=\"{}\"] [data-testid=drain]",
            b2.url()
        ),
    )
    .await;
    let answer = confirm(c, &b2.url()).await;
    assert!(answer.ok, "drain refused: {}", answer.text);
    assert!(answer.text.contains("draining"), "{}", answer.text);
    let seen = route(p.proxy, 24).await;
    assert!(
        !seen.iter().any(|b| b == "backend2"),
        "a drained backend still got requests: {seen:?}"
    );
    assert!(seen.iter().any(|b| b == "backend1"), "{seen:?}");
    page_until(c, STEP, "backend2 draining or removed", |pg| {
        pg.gone.contains(&b2.url())
            || row(pg, &b2.url()).is_some_and(|r| r.status.contains("draining"))
    })
    .await;

    // Re-add it from the page: traffic comes back.
    let readd = format!(
        "[data-testid=gone-row][data-url=\"{u}\"] [data-testid=readd], \
         [data-testid=backend-row][data-url=\"{u}\"] [data-testid=readd]",
        u = b2.url()
    );
    click(c, &readd).await;
    let answer = confirm(c, &b2.url()).await;
    assert!(answer.ok, "re-add refused: {}", answer.text);
    page_until(c, STEP, "backend2 serving again", |pg| {
        row(pg, &b2.url()).is_some_and(|r| r.status == "serving") && !pg.gone.contains(&b2.url())
    })
    .await;
    let seen = route(p.proxy, 12).await;
    assert!(seen.iter().any(|b| b == "backend2"), "{seen:?}");

    // backend1 fails every request: once the proxy opens its circuit, the page says so
    // within 2 s, without a reload.
    b1.control.set_fail_rate(1.0);
    let b1_key = b1.url();
    eventually(STEP, "the proxy to open backend1's circuit", || {
        let key = b1_key.clone();
        async move {
            let _ = get(&url(p.proxy, "/")).await;
            (circuit_of(p.admin, &key).await == "open").then_some(())
        }
    })
    .await;
    let opened = Instant::now();
    let pg = page_until(c, Duration::from_secs(2), "backend1's circuit open", |pg| {
        row(pg, &b1.url()).is_some_and(|r| r.circuit == "open")
    })
    .await;
    eprintln!(
        "page showed the open circuit {:?} after the API did",
        opened.elapsed()
    );
    assert!(row(&pg, &b1.url()).is_some_and(|r| r.status.contains("circuit open")));
    assert!(pg.events > 0, "the event log lists what happened");

    let png = c.screenshot().await.expect("screenshot");
    let path = save_screenshot(&png, "dashboard.png");
    eprintln!("screenshot: {}", path.display());

    // Phone width: still usable, nothing wider than the screen.
    c.set_window_size(390, 1400).await.expect("resize");
    let pg = page_until(c, STEP, "the phone layout", |pg| pg.link.is_some()).await;
    assert!(!pg.overflow, "the page scrolls sideways at phone width");
    save_screenshot(
        &c.screenshot().await.expect("screenshot"),
        "dashboard-phone.png",
    );
    c.set_window_size(1280, 1800).await.expect("resize");
}

/// The proxy goes away and comes back on the same admin address: the page says its
/// data is stale and that it is reconnecting, then goes live again by itself.
async fn reconnects(c: &Client, tools: &Tools) {
    let b1 = demo("backend1").await;
    let mut p = switchyard(tools, &config(&[(&b1, 1)], ""));
    let admin = p.admin;
    c.goto(&url(admin, "/dashboard/"))
        .await
        .expect("open the dashboard");
    page_until(c, STEP, "backend1, live", |pg| {
        pg.link.as_deref() == Some("live") && pg.backends.len() == 1 && !pg.stale
    })
    .await;

    p.signal("TERM");
    let code = tokio::task::block_in_place(|| p.wait_exit(Duration::from_secs(30)));
    assert!(code.is_some(), "the proxy did not stop");
    page_until(c, STEP, "the reconnecting indicator", |pg| {
        pg.link.as_deref() == Some("reconnecting")
    })
    .await;
    page_until(c, STEP, "the data marked stale", |pg| pg.stale).await;

    // A new proxy on the same admin address (the one the OS gave the first), with
    // another backend so the page must show fresh data.
    let b2 = demo("backend2").await;
    let yaml = format!(
        "server:\n  port: 0\n  admin_port: {}\n  bind: 127.0.0.1\n{}",
        admin.port(),
        backends_yaml(&[(&b2, 1)]),
    );
    let _p2 = switchyard(tools, &yaml);
    page_until(c, STEP, "live again with the new proxy's backend", |pg| {
        pg.link.as_deref() == Some("live")
            && !pg.stale
            && pg.backends.len() == 1
            && row(pg, &b2.url()).is_some()
    })
    .await;
}

/// With an admin token the page asks for it, keeps it for the tab, and uses it for
/// the stream (query) and for changes (bearer header).
async fn token_flow(c: &Client, tools: &Tools) {
    const TOKEN: &str = "e2e-token_42";
    let dir = tempfile::tempdir().expect("temp dir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("write token");
    let b1 = demo("backend1").await;
    let b2 = demo("backend2").await;
    let extra = format!("  token_file: \"{}\"\n", token_file.display());
    let p = switchyard(tools, &config(&[(&b1, 1), (&b2, 1)], &extra));
    c.goto(&url(p.admin, "/dashboard/"))
        .await
        .expect("open the dashboard");

    page_until(c, STEP, "the token prompt", |pg| {
        pg.token_dialog && pg.link.as_deref() == Some("token")
    })
    .await;
    type_into(c, "#token-input", "wrong").await;
    click(c, "#token-submit").await;
    let pg = page_until(c, STEP, "the token prompt again for a wrong token", |pg| {
        pg.token_dialog && pg.link.as_deref() == Some("token")
    })
    .await;
    let reason = pg.token_reason.unwrap_or_default();
    assert!(reason.contains("refused"), "{reason}");
    type_into(c, "#token-input", TOKEN).await;
    click(c, "#token-submit").await;
    page_until(c, STEP, "both backends, live", |pg| {
        !pg.token_dialog && pg.link.as_deref() == Some("live") && pg.backends.len() == 2
    })
    .await;
    let stored = c
        .execute(
            "return [sessionStorage.getItem('switchyard.admin-token'), localStorage.length]",
            vec![],
        )
        .await
        .expect("read storage");
    assert_eq!(stored, serde_json::json!([TOKEN, 0]), "tab-only storage");

    // A change goes through with the bearer token.
    click(
        c,
        &format!(
            "[data-testid=backend-row][data-url=\"{}\"] [data-testid=drain]",
            b2.url()
        ),
    )
    .await;
    let answer = confirm(c, &b2.url()).await;
    assert!(answer.ok, "drain with token refused: {}", answer.text);
    let seen = route(p.proxy, 6).await;
    assert!(!seen.iter().any(|b| b == "backend2"), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_a_real_browser() {
    let tools = match tools() {
        Ok(t) => t,
        Err(why) => {
            eprintln!("SKIPPED dashboard browser test: {why}");
            return;
        }
    };
    let driver = Driver::start(&tools).await;
    let c = driver.browser(&tools).await;
    let run = async {
        operate_the_cluster(&c, &tools).await;
        reconnects(&c, &tools).await;
        token_flow(&c, &tools).await;
    };
    let outcome = std::panic::AssertUnwindSafe(run).catch_unwind().await;
    if outcome.is_err()
        && let Ok(png) = c.screenshot().await
    {
        let path = save_screenshot(&png, "dashboard-failure.png");
        eprintln!("failure screenshot: {}", path.display());
    }
    let _ = c.close().await;
    drop(driver);
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}
