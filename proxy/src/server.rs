//! Starting and stopping a replica: binds the listeners, spawns the proxy, the
//! admin API and the background tasks, and drains on shutdown.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};
use std::time::Duration;

use switchyard_shared::ConfigSourceView;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::admin::{self, AdminState};
use crate::app::App;
use crate::config::Config;
use crate::forward::tls;
use crate::listener;
use crate::state::{MemoryStore, RedisStore, StateStore};

/// A running replica.
pub struct Running {
    pub app: Arc<App>,
    pub proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The HTTPS listener, when `tls:` is configured.
    pub tls_addr: Option<SocketAddr>,
    pub tls: Option<Arc<crate::tls::Tls>>,
    stop: watch::Sender<bool>,
    proxy: JoinHandle<()>,
    https: Option<JoinHandle<()>>,
    /// Proxy workers beyond this runtime's (`server.threads`).
    workers: Vec<Worker>,
    /// Counts the proxies (this runtime's and the workers') still draining.
    drained: Arc<AllDrained>,
    admin: JoinHandle<()>,
    background: Vec<JoinHandle<()>>,
}

/// Where the config came from, for `/admin/config`.
pub fn file_source(path: &str) -> ConfigSourceView {
    ConfigSourceView {
        kind: "file".into(),
        path: path.into(),
        repo: None,
        r#ref: None,
    }
}

/// The default replica id: host name and proxy port.
pub fn default_replica_id(port: u16) -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|| "switchyard".into());
    format!("{host}:{port}")
}

/// Starts a replica: on the embedded store, or on Redis when `cluster.redis_url`
/// is set.
pub async fn start(config: Config, source: ConfigSourceView) -> Result<Running, String> {
    start_with_telemetry(config, source, None, Initial::default()).await
}

/// What the first load found, recorded before the admin API answers (so
/// `/admin/config` never shows a moment without the commit being run).
#[derive(Debug, Default)]
pub struct Initial {
    /// The commit the first config came from.
    pub commit: Option<String>,
    /// Why the configured source could not be used (a fallback config runs).
    pub error: Option<switchyard_shared::ConfigErrorView>,
}

/// [`start`], with OpenTelemetry export attached before the first request and the
/// first load's outcome recorded.
pub async fn start_with_telemetry(
    config: Config,
    source: ConfigSourceView,
    telemetry: Option<Arc<crate::telemetry::otel::Telemetry>>,
    initial: Initial,
) -> Result<Running, String> {
    let mut store_tasks = Vec::new();
    let redis_url = config.cluster.as_ref().and_then(|c| c.redis_url.clone());
    let store: Arc<dyn StateStore> = match (redis_url, &config.cluster) {
        (Some(url), Some(c)) => {
            let on_error = match c.on_store_error {
                crate::config::OnStoreError::Local => "local",
                crate::config::OnStoreError::Allow => "allow",
                crate::config::OnStoreError::Deny => "deny",
            };
            let store = RedisStore::new(&url, &c.name, c.timeout.get(), on_error)?;
            store_tasks = store.spawn();
            info!(cluster = %c.name, "cluster state in Redis");
            store
        }
        _ => Arc::new(MemoryStore::default()),
    };
    let started = start_with_store(config, source, store, telemetry, initial).await;
    match started {
        Ok(mut r) => {
            r.background.extend(store_tasks);
            Ok(r)
        }
        Err(e) => {
            for t in store_tasks {
                t.abort();
            }
            Err(e)
        }
    }
}

pub async fn start_with_store(
    config: Config,
    source: ConfigSourceView,
    store: Arc<dyn StateStore>,
    telemetry: Option<Arc<crate::telemetry::otel::Telemetry>>,
    initial: Initial,
) -> Result<Running, String> {
    tls::configure(&config)?;
    let token = admin::load_token(config.admin.token_file.as_deref())?;
    let workers = workers(&config);
    let mut proxy_listeners = listener::bind_workers(
        SocketAddr::new(config.server.bind, config.server.port),
        "proxy",
        workers,
    )?;
    let proxy_listener = registered(proxy_listeners.remove(0), "proxy")?;
    let proxy_addr = proxy_listener.local_addr().map_err(|e| e.to_string())?;

    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let admin_ip = match (&token, config.server.admin_bind) {
        (Some(_), Some(ip)) => ip,
        (Some(_), None) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        (None, Some(ip)) if !ip.is_loopback() => {
            warn!(requested = %ip, "no admin token configured: admin listener bound to loopback only");
            loopback
        }
        (None, Some(ip)) => ip,
        (None, None) => loopback,
    };
    if token.is_none() {
        warn!(
            "no admin token configured (SWITCHYARD_ADMIN_TOKEN or admin.token_file): admin API open on loopback only"
        );
    }
    let admin_listener =
        listener::bind(SocketAddr::new(admin_ip, config.server.admin_port), "admin").await?;
    let admin_addr = admin_listener.local_addr().map_err(|e| e.to_string())?;

    let replica_id = config
        .cluster
        .as_ref()
        .and_then(|c| c.replica_id.clone())
        .unwrap_or_else(|| default_replica_id(proxy_addr.port()));
    // HTTPS: certificates must load before anything is served.
    let (edge, https_listener, mut https_listeners) = match &config.tls {
        Some(t) => {
            let edge = crate::tls::Tls::new(&config, store.clone(), &replica_id).await?;
            let mut all = listener::bind_workers(
                SocketAddr::new(t.bind.unwrap_or(config.server.bind), t.port),
                "https",
                workers,
            )?;
            let l = registered(all.remove(0), "https")?;
            let _ = edge.listen.set(l.local_addr().map_err(|e| e.to_string())?);
            (Some(edge), Some(l), all)
        }
        None => (None, None, Vec::new()),
    };
    let public_read = config.admin.public_read;
    let cors_origins = config.admin.cors_origins.clone();
    let dashboard_dir = admin::dashboard::resolve(config.admin.dashboard_dir.as_deref());
    match admin::dashboard::describe(&dashboard_dir) {
        (true, what) => info!("dashboard {what}"),
        (false, what) => warn!("dashboard {what}"),
    }
    let app = App::new(config, store.clone(), replica_id, source);
    if let Some(edge) = &edge {
        let _ = app.tls_source.set(edge.clone());
    }
    app.mark_initial(initial.commit, initial.error);
    app.cluster
        .set_addresses(proxy_addr.to_string(), admin_addr.to_string());
    if let Some(t) = telemetry {
        app.set_telemetry(t);
    }
    // Pick up the overlay the store already holds (a restart, or other replicas)
    // before serving, so a restarted replica does not route to drained backends.
    // A store that stays unreachable only delays the start by a few seconds.
    if app.cluster.clustered {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while !store.is_connected() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if !store.is_connected() {
            warn!("state store unreachable at start: serving the config alone until it connects");
        }
    }
    if let Ok(overlay) = store.membership().await {
        app.apply_overlay(overlay);
    }

    let (stop, stop_rx) = watch::channel(false);
    // Members from DNS before serving, like the overlay above.
    let discovery = tokio::spawn(crate::discovery::supervise(app.clone(), stop_rx.clone()));
    crate::discovery::settle(&app, Duration::from_secs(3)).await;
    let intercept = edge
        .clone()
        .map(|e| e as Arc<dyn crate::forward::PlainIntercept>);
    // Worker 0 is this runtime; the others run on threads of their own.
    app.plane().metrics.worker_connections.size(workers);
    let mut extra = Vec::with_capacity(proxy_listeners.len());
    let drained = Arc::new(AllDrained::new(1 + proxy_listeners.len()));
    for (i, proxy) in proxy_listeners.into_iter().enumerate() {
        let https = match &edge {
            Some(edge) if !https_listeners.is_empty() => {
                Some((https_listeners.remove(0), edge.clone()))
            }
            _ => None,
        };
        let listeners = WorkerListeners {
            proxy,
            https,
            intercept: intercept.clone(),
        };
        let spawned = Worker::spawn(
            i + 1,
            listeners,
            app.plane().clone(),
            stop_rx.clone(),
            drained.clone(),
        );
        match spawned {
            Ok(w) => extra.push(w),
            Err(e) => {
                // The workers already running must not wait for proxies that
                // never will.
                drained.abandon();
                return Err(e);
            }
        }
    }
    let proxy = tokio::spawn(listener::serve(
        proxy_listener,
        app.plane().clone(),
        intercept,
        stop_rx.clone(),
    ));
    let https = match (&edge, https_listener) {
        (Some(edge), Some(l)) => Some(tokio::spawn(crate::tls::listener::serve(
            l,
            app.plane().clone(),
            edge.clone(),
            stop_rx.clone(),
        ))),
        _ => None,
    };
    let router = admin::router(AdminState {
        app: app.clone(),
        token,
        public_read,
        dashboard_dir,
        cors_origins,
        tls: edge.clone(),
    });
    let mut admin_stop = stop_rx.clone();
    let admin_edge = edge.clone().filter(|e| e.admin_tls);
    let admin = match admin_edge {
        Some(edge) => tokio::spawn(crate::tls::admin::serve(
            admin_listener,
            router,
            edge,
            stop_rx.clone(),
        )),
        None => tokio::spawn(async move {
            let serve = axum::serve(admin_listener, router).with_graceful_shutdown(async move {
                let _ = admin_stop.changed().await;
            });
            if let Err(e) = serve.await {
                warn!(error = %e, "admin listener failed");
            }
        }),
    };
    let mut background = vec![
        tokio::spawn(housekeeping(app.clone(), stop_rx.clone())),
        tokio::spawn(crate::health::supervise(app.clone(), stop_rx.clone())),
        discovery,
    ];
    if let Some(edge) = &edge {
        background.extend(edge.spawn(app.clone(), stop_rx.clone()));
    }
    background.extend(crate::cluster::spawn(&app, stop_rx));
    let tls_addr = edge.as_ref().and_then(|e| e.listen.get().copied());
    info!(
        proxy = %proxy_addr,
        admin = %admin_addr,
        https = tls_addr.map(|a| a.to_string()).unwrap_or_default(),
        replica = %app.replica.id,
        version = app.replica.version,
        "listening"
    );
    Ok(Running {
        app,
        proxy_addr,
        admin_addr,
        tls_addr,
        tls: edge,
        stop,
        proxy,
        https,
        workers: extra,
        drained,
        admin,
        background,
    })
}

/// Proxy workers for `config`: `server.threads`, 0 meaning one per CPU available
/// to the process.
pub fn workers(config: &Config) -> usize {
    match config.server.threads.as_usize() {
        0 => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        n => n,
    }
}

/// A listening socket registered with the calling runtime.
fn registered(l: std::net::TcpListener, what: &str) -> Result<tokio::net::TcpListener, String> {
    tokio::net::TcpListener::from_std(l)
        .map_err(|e| format!("cannot register the {what} listener: {e}"))
}

/// What one extra worker accepts on: its own sockets of the proxy (and HTTPS)
/// listener.
struct WorkerListeners {
    proxy: std::net::TcpListener,
    https: Option<(std::net::TcpListener, Arc<crate::tls::Tls>)>,
    intercept: Option<Arc<dyn crate::forward::PlainIntercept>>,
}

/// A proxy worker beside the main runtime: a thread running a current-thread
/// runtime that accepts on its own sockets and serves its connections start to
/// end (their upstream connections, timers and send batching stay on it), sharing
/// only the data plane (snapshot, atomics) with the others.
struct Worker {
    thread: std::thread::JoinHandle<()>,
    /// Fires (or is dropped) when the worker has drained and its runtime is gone.
    done: tokio::sync::oneshot::Receiver<()>,
}

/// How many proxies (the main runtime's and each worker's) are still draining
/// their connections at shutdown. A worker whose own connections have ended keeps
/// its runtime up until every proxy has drained: HTTP/2 upstream connections are
/// pooled for all workers but run on the runtime that dialed them, so another
/// worker's streams in flight may still need this one's.
struct AllDrained {
    left: AtomicUsize,
    done: tokio::sync::Notify,
}

impl AllDrained {
    fn new(proxies: usize) -> Self {
        Self {
            left: AtomicUsize::new(proxies),
            done: tokio::sync::Notify::new(),
        }
    }

    /// One proxy has drained.
    fn one_done(&self) {
        if self.left.fetch_sub(1, AcqRel) == 1 {
            self.done.notify_waiters();
        }
    }

    /// Start failed part way: nobody waits for the proxies that never ran.
    fn abandon(&self) {
        self.left.store(0, Release);
        self.done.notify_waiters();
    }

    /// Until every proxy has drained.
    async fn all(&self) {
        loop {
            let notified = self.done.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before the check: a last `one_done` in between still wakes it.
            notified.as_mut().enable();
            if self.left.load(Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Worker {
    fn spawn(
        id: usize,
        listeners: WorkerListeners,
        plane: Arc<crate::dataplane::DataPlane>,
        stop: watch::Receiver<bool>,
        drained: Arc<AllDrained>,
    ) -> Result<Self, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start worker {id}: {e}"))?;
        let (done_tx, done) = tokio::sync::oneshot::channel();
        let thread = std::thread::Builder::new()
            .name(format!("switchyard-w{id}"))
            .spawn(move || {
                switchyard_http1::worker::enter(id);
                runtime.block_on(async {
                    run_worker(listeners, plane, stop).await;
                    drained.one_done();
                    drained.all().await;
                });
                drop(runtime);
                let _ = done_tx.send(());
            })
            .map_err(|e| format!("cannot start worker {id}: {e}"))?;
        Ok(Self { thread, done })
    }

    /// Waits until the worker has drained its connections and stopped.
    async fn finished(self) {
        let _ = self.done.await;
        // The thread is past its runtime: joining returns at once.
        let _ = self.thread.join();
    }
}

async fn run_worker(
    listeners: WorkerListeners,
    plane: Arc<crate::dataplane::DataPlane>,
    stop: watch::Receiver<bool>,
) {
    let proxy = match registered(listeners.proxy, "proxy") {
        Ok(l) => l,
        Err(e) => {
            warn!(error = %e, "worker not started");
            return;
        }
    };
    let plain = listener::serve(proxy, plane.clone(), listeners.intercept, stop.clone());
    match listeners.https {
        Some((l, edge)) => match registered(l, "https") {
            Ok(l) => {
                let tls = crate::tls::listener::serve(l, plane, edge, stop);
                tokio::join!(plain, tls);
            }
            Err(e) => {
                warn!(error = %e, "worker's HTTPS listener not started");
                plain.await;
            }
        },
        None => plain.await,
    }
}

impl Running {
    /// Fires when shutdown begins (for tasks started beside the replica).
    pub fn stop_signal(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// Stops accepting, lets in-flight requests finish within the grace period,
    /// stops the background tasks.
    pub async fn shutdown(self) {
        self.app.shutting_down.store(true, Relaxed);
        let _ = self.stop.send(true);
        let _ = self.proxy.await;
        if let Some(h) = self.https {
            let _ = h.await;
        }
        self.drained.one_done();
        for w in self.workers {
            w.finished().await;
        }
        let grace = self.app.config().server.grace_period.get();
        let _ = tokio::time::timeout(grace.min(Duration::from_secs(5)), self.admin).await;
        for t in self.background {
            t.abort();
        }
        info!("stopped");
    }
}

/// Periodic chores: forget drained backends, age out idle upstream connections.
async fn housekeeping(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut last_evict = Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        app.prune_draining();
        app.expire_ejections();
        let now = Instant::now();
        if now.duration_since(last_evict) >= Duration::from_secs(1) {
            last_evict = now;
            let snap = app.snapshot();
            for (svc, m) in snap.all_members() {
                m.backend.pool.evict(svc.config.timeouts.idle.get(), now);
            }
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => info!("SIGINT: shutting down"),
    }
}
