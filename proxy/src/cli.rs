//! Command line: `switchyard [--config FILE] [overrides]` runs a replica,
//! `switchyard check FILE...` validates configs for CI.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use switchyard_shared::validate;

use std::sync::Arc;

use crate::config::{self, BackendConfig, Config, Int, Strategy, Url, Weight};
use crate::gitops;
use crate::server;
use crate::telemetry::logging;

#[derive(Clone, Debug, Parser)]
#[command(
    name = "switchyard",
    version,
    about = "An adaptive HTTP API load balancer",
    after_help = "Environment (beside the [env: ...] of the options above):\n  \
    SWITCHYARD_ADMIN_TOKEN     bearer token for the admin API (else admin.token_file; without one the\n                             admin listener binds to loopback only)\n  \
    SWITCHYARD_DASHBOARD_DIR   directory of a built dashboard, when admin.dashboard_dir is unset (default: the copy embedded in the binary)\n  \
    SWITCHYARD_GIT_TOKEN       HTTPS token for --config-repo (the variable name can be changed with gitops.token_env)\n  \
    SWITCHYARD_GIT_USER        user name sent with that token (default x-access-token)\n  \
    RUST_LOG                   log level and filters (default info; the access log's target is `access`)\n  \
    OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_PROTOCOL, OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES,\n  \
    OTEL_TRACES_SAMPLER, OTEL_TRACES_SAMPLER_ARG, OTEL_METRIC_EXPORT_INTERVAL, OTEL_BSP_*, OTEL_SDK_DISABLED\n                             OpenTelemetry export (see README: Observability)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Config file.
    #[arg(
        short,
        long,
        env = "SWITCHYARD_CONFIG",
        default_value = "config/config.yaml",
        global = true
    )]
    pub config: PathBuf,

    /// Proxy listen address (overrides server.bind and server.port).
    #[arg(long, env = "SWITCHYARD_LISTEN")]
    pub listen: Option<SocketAddr>,

    /// Admin listen address (overrides server.admin_bind and server.admin_port).
    #[arg(long, env = "SWITCHYARD_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,

    /// HTTPS listen address (overrides tls.bind and tls.port; certificates come from
    /// the config's `tls:` block, without which HTTPS stays off).
    #[arg(long, env = "SWITCHYARD_TLS_LISTEN")]
    pub tls_listen: Option<SocketAddr>,

    /// Backend URL (repeatable, or comma-separated; bare host:port means http);
    /// replaces the config's backends.
    #[arg(long = "backend", value_delimiter = ',')]
    pub backends: Vec<String>,

    /// Load-balancing strategy (overrides the config).
    #[arg(long, value_parser = ["round-robin", "least-connections", "adaptive", "consistent-hash"])]
    pub strategy: Option<String>,

    /// Worker threads (0 = one per CPU; overrides server.threads).
    #[arg(long, env = "SWITCHYARD_THREADS")]
    pub threads: Option<u16>,

    /// Redis for cluster state (overrides cluster.redis_url): redis://[:password@]host:port[/db],
    /// rediss:// for TLS, redis+sentinel://[:password@]host:26379[,…]/<master>[/<db>] or
    /// redis+cluster://[:password@]host:6379[,…].
    #[arg(long, env = "SWITCHYARD_REDIS_URL")]
    pub redis_url: Option<String>,

    /// Follow the config in this git repository (path or URL: file://, git://,
    /// https:// with the token in $SWITCHYARD_GIT_TOKEN, ssh:// with --git-ssh-key).
    #[arg(long, env = "SWITCHYARD_CONFIG_REPO")]
    pub config_repo: Option<String>,

    /// Branch to follow [default: main].
    #[arg(long, env = "SWITCHYARD_CONFIG_REF")]
    pub config_ref: Option<String>,

    /// Config file inside the repository [default: config.yaml].
    #[arg(long, env = "SWITCHYARD_CONFIG_PATH")]
    pub config_path: Option<String>,

    /// How often to fetch the repository [default: 10s] or check the file [default: 1s].
    #[arg(long, env = "SWITCHYARD_POLL_INTERVAL", value_parser = crate::config::types::parse_duration)]
    pub poll_interval: Option<std::time::Duration>,

    /// Where fetched revisions are kept (a private bare repository).
    #[arg(long, env = "SWITCHYARD_GIT_CACHE")]
    pub git_cache: Option<PathBuf>,

    /// SSH private key for ssh:// repositories.
    #[arg(long, env = "SWITCHYARD_GIT_SSH_KEY")]
    pub git_ssh_key: Option<String>,

    /// Log format (overrides logging.format).
    #[arg(long, env = "SWITCHYARD_LOG_FORMAT", value_parser = ["text", "json"])]
    pub log_format: Option<String>,
}

#[derive(Clone, Debug, Subcommand)]
pub enum Command {
    /// Run the proxy (the default).
    Run,
    /// Validate config files and exit: non-zero with `file:line: field: reason`
    /// for each problem.
    Check {
        /// Files to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// GET a URL and exit 0 on a 2xx answer (for container HEALTHCHECKs, where no
    /// curl is installed): `switchyard probe http://127.0.0.1:8081/healthz`.
    Probe {
        url: String,
        /// Give up after this long.
        #[arg(long, default_value = "3s", value_parser = crate::config::types::parse_duration)]
        timeout: std::time::Duration,
    },
}

/// Entry point behind `main`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::Check { files }) => check(files),
        Some(Command::Probe { url, timeout }) => probe(url, *timeout),
        Some(Command::Run) | None => run(&cli),
    }
}

fn probe(url: &str, timeout: std::time::Duration) -> ExitCode {
    use http_body_util::{BodyExt, Empty};
    let Ok(uri) = url.parse::<http::Uri>() else {
        eprintln!("probe: `{url}` is not a URL");
        return ExitCode::FAILURE;
    };
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return ExitCode::FAILURE;
    };
    let result = rt.block_on(async move {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<Empty<bytes::Bytes>>();
        let resp = tokio::time::timeout(timeout, client.get(uri))
            .await
            .map_err(|_| "timed out".to_string())?;
        let resp = resp.map_err(|e| e.to_string())?;
        let status = resp.status();
        let _ = resp.into_body().collect().await;
        Ok::<_, String>(status)
    });
    match result {
        Ok(s) if s.is_success() => ExitCode::SUCCESS,
        Ok(s) => {
            eprintln!("probe: {url} answered {s}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("probe: {url}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn check(files: &[PathBuf]) -> ExitCode {
    let mut ok = true;
    for f in files {
        match config::load(f) {
            Ok(c) => {
                let routed = if c.services.is_empty() && c.routes.is_empty() {
                    String::new()
                } else {
                    format!(
                        ", {} more services, {} routes",
                        c.services.len(),
                        c.routes.len()
                    )
                };
                println!(
                    "{}: ok ({} backends, strategy {}{routed})",
                    f.display(),
                    c.backends.len(),
                    c.strategy().as_str()
                )
            }
            Err(errs) => {
                ok = false;
                eprintln!("{errs}");
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Loads the config file (or defaults when only `--backend` is given) and applies
/// the command-line overrides, validated like the file.
pub fn load_with_overrides(cli: &Cli) -> Result<Config, String> {
    let config = if !cli.backends.is_empty() && !Path::new(&cli.config).exists() {
        Config::default()
    } else {
        config::load(&cli.config).map_err(|e| e.to_string())?
    };
    apply_overrides(cli, config)
}

/// The command-line overrides, applied to every config this process runs (the
/// first and every reload), then validated like a file.
pub fn apply_overrides(cli: &Cli, mut config: Config) -> Result<Config, String> {
    if let Some(addr) = cli.listen {
        config.server.bind = addr.ip();
        config.server.port = addr.port();
    }
    if let Some(addr) = cli.admin_listen {
        config.server.admin_bind = Some(addr.ip());
        config.server.admin_port = addr.port();
    }
    // Only an address: without a `tls:` block (certificates) HTTPS stays off, so a
    // replica that starts on a fallback config still serves plain HTTP.
    match (cli.tls_listen, config.tls.as_mut()) {
        (Some(addr), Some(tls)) => {
            tls.bind = Some(addr.ip());
            tls.port = addr.port();
        }
        (Some(addr), None) => tracing::warn!(
            %addr,
            "--tls-listen / SWITCHYARD_TLS_LISTEN given but the config has no `tls:` block: HTTPS is off"
        ),
        (None, _) => {}
    }
    if !cli.backends.is_empty() {
        config.backends = cli
            .backends
            .iter()
            .map(|raw| {
                // Bare `host:port` means http (handy for quick runs and benchmarks).
                let raw = if raw.contains("://") {
                    raw.clone()
                } else {
                    format!("http://{raw}")
                };
                let parsed = validate::backend_url(&raw).map_err(|e| format!("--backend: {e}"))?;
                Ok(BackendConfig {
                    url: Url {
                        raw: raw.trim().trim_end_matches('/').to_string(),
                        parsed,
                    },
                    weight: Weight(1),
                    health_check_path: None,
                    protocol: Default::default(),
                    tls: None,
                })
            })
            .collect::<Result<_, String>>()?;
    }
    if let Some(s) = &cli.strategy {
        config.strategy = Some(s.parse::<Strategy>()?);
        config.server.strategy = None;
    }
    if let Some(t) = cli.threads {
        config.server.threads = Int(i64::from(t));
    }
    if let Some(url) = &cli.redis_url {
        config
            .cluster
            .get_or_insert_with(Default::default)
            .redis_url = Some(url.clone());
    }
    if let Some(f) = &cli.log_format {
        config.logging.format = f.clone();
    }
    // Re-validate the merged result the same way a file is validated.
    let text = config::to_yaml(&config)?;
    config::parse(&text, "(config with command-line overrides)").map_err(|e| e.to_string())
}

/// Where the config comes from: `--config-repo` (or the file's `gitops:` block),
/// else the file itself when it exists.
pub fn source_of(cli: &Cli) -> Result<Option<gitops::Source>, String> {
    let block = if cli.config_repo.is_none() && Path::new(&cli.config).exists() {
        config::load(&cli.config)
            .ok()
            .and_then(|c| c.gitops)
            .filter(|g| !g.repo.is_empty())
    } else {
        None
    };
    let repo = cli
        .config_repo
        .clone()
        .or_else(|| block.as_ref().map(|g| g.repo.clone()));
    let Some(repo) = repo else {
        return Ok(Path::new(&cli.config)
            .exists()
            .then(|| gitops::Source::File(cli.config.clone())));
    };
    let defaults = block.unwrap_or_default();
    // A local path is made absolute: git runs against its own cache directory.
    let repo = if !repo.contains("://") && Path::new(&repo).exists() {
        std::fs::canonicalize(&repo)
            .map(|p| p.display().to_string())
            .unwrap_or(repo)
    } else {
        repo
    };
    Ok(Some(gitops::Source::Git(gitops::GitSource {
        cache: cli
            .git_cache
            .clone()
            .unwrap_or_else(|| gitops::git::default_cache(&repo)),
        reference: cli.config_ref.clone().unwrap_or(defaults.r#ref),
        path: cli.config_path.clone().unwrap_or(defaults.path),
        token_env: defaults
            .token_env
            .unwrap_or_else(|| "SWITCHYARD_GIT_TOKEN".into()),
        ssh_key: cli.git_ssh_key.clone().or(defaults.ssh_key),
        repo,
    })))
}

fn poll_interval(cli: &Cli, source: Option<&gitops::Source>) -> std::time::Duration {
    if let Some(gitops::Source::File(_)) = source {
        return cli
            .poll_interval
            .unwrap_or(std::time::Duration::from_secs(1));
    }
    cli.poll_interval
        .or_else(|| {
            config::load(&cli.config)
                .ok()
                .and_then(|c| c.gitops)
                .map(|g| g.poll_interval.get())
        })
        .unwrap_or(std::time::Duration::from_secs(10))
}

type First = (
    Config,
    gitops::Applied,
    Option<switchyard_shared::ConfigErrorView>,
);

/// The first config: from the source, or — if a repository cannot be used yet — the
/// local file, or defaults, with the reason kept for `/admin/config`.
fn first_config(
    cli: &Cli,
    source: Option<&gitops::Source>,
    adjust: &gitops::Adjust,
) -> Result<First, String> {
    let Some(source) = source else {
        return Ok((load_with_overrides(cli)?, gitops::Applied::default(), None));
    };
    let boot = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    match boot.block_on(gitops::initial(source, adjust)) {
        Ok((config, applied)) => Ok((config, applied, None)),
        Err(e) => match source {
            gitops::Source::File(_) => Err(format!(
                "{}{}: {}",
                e.file,
                e.line.map(|l| format!(":{l}")).unwrap_or_default(),
                e.reason
            )),
            gitops::Source::Git(_) => {
                eprintln!(
                    "switchyard: config repository not usable yet ({}); starting with the local file or defaults",
                    e.reason
                );
                let fallback = if Path::new(&cli.config).exists() {
                    load_with_overrides(cli)?
                } else {
                    apply_overrides(cli, Config::default())?
                };
                Ok((fallback, gitops::Applied::default(), Some(e)))
            }
        },
    }
}

fn run(cli: &Cli) -> ExitCode {
    let source = match source_of(cli) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("switchyard: {e}");
            return ExitCode::FAILURE;
        }
    };
    let overrides = cli.clone();
    let adjust: gitops::Adjust = Arc::new(move |c| apply_overrides(&overrides, c));
    let (config, applied, initial_error) = match first_config(cli, source.as_ref(), &adjust) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("switchyard: {e}");
            return ExitCode::FAILURE;
        }
    };
    let otel_settings = match crate::telemetry::otel::settings(&config.telemetry) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("switchyard: telemetry: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The main runtime is worker 0 and runs the control plane (admin, health
    // checks, cluster, config); `server.threads` beyond one start workers of their
    // own (see `server::start`). Each is tokio's current-thread scheduler: no work
    // stealing, no atomics on every wake-up, and its sends batched per turn.
    let built = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let runtime = match built {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("switchyard: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let view = match &source {
        Some(s) => s.view(),
        None => server::file_source(&cli.config.display().to_string()),
    };
    let poll = poll_interval(cli, source.as_ref());
    runtime.block_on(async move {
        let replica = config
            .cluster
            .as_ref()
            .and_then(|c| c.replica_id.clone())
            .unwrap_or_else(|| server::default_replica_id(config.server.port));
        let (telemetry, tracer) = match otel_settings {
            None => (None, None),
            Some(s) => match crate::telemetry::otel::Telemetry::start(s, &replica) {
                Ok((t, tracer)) => (Some(Arc::new(t)), tracer),
                Err(e) => {
                    eprintln!("switchyard: telemetry: {e}");
                    return ExitCode::FAILURE;
                }
            },
        };
        logging::init(&config.logging.format, tracer);
        if let Some(t) = &telemetry {
            tracing::info!(
                traces = t.settings.traces_endpoint.as_deref().unwrap_or("off"),
                metrics = t.settings.metrics_endpoint.as_deref().unwrap_or("off"),
                sampler_ratio = t.settings.ratio,
                parent_based = t.settings.parent_based,
                "OpenTelemetry export on"
            );
        }
        let running = match server::start_with_telemetry(
            config,
            view,
            telemetry.clone(),
            server::Initial {
                commit: applied.commit.clone(),
                error: initial_error,
            },
        )
        .await
        {
            Ok(r) => r,
            Err(e) => {
                eprintln!("switchyard: {e}");
                return ExitCode::FAILURE;
            }
        };
        if let Some(source) = source {
            let handle = gitops::spawn(
                running.app.clone(),
                source,
                adjust,
                applied,
                poll,
                running.stop_signal(),
            );
            let _ = running.app.reloader.set(handle);
        }
        server::shutdown_signal().await;
        running.shutdown().await;
        if let Some(t) = telemetry {
            t.shutdown();
        }
        ExitCode::SUCCESS
    })
}
