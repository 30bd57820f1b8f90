//! Command line: `switchyard [--config FILE] [overrides]` runs a replica,
//! `switchyard check FILE...` validates configs for CI.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use switchyard_shared::validate;

use crate::config::{self, BackendConfig, Config, Int, Strategy, Url, Weight};
use crate::server;
use crate::telemetry::logging;

#[derive(Debug, Parser)]
#[command(
    name = "switchyard",
    version,
    about = "An adaptive HTTP API load balancer"
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

    /// Backend URL (repeatable, or comma-separated; bare host:port means http);
    /// replaces the config's backends.
    #[arg(long = "backend", value_delimiter = ',')]
    pub backends: Vec<String>,

    /// Load-balancing strategy (overrides the config).
    #[arg(long, value_parser = ["round-robin", "least-connections", "adaptive"])]
    pub strategy: Option<String>,

    /// Worker threads (0 = one per CPU; overrides server.threads).
    #[arg(long, env = "SWITCHYARD_THREADS")]
    pub threads: Option<u16>,

    /// Redis for cluster state (overrides cluster.redis_url): redis://[:password@]host:port[/db]
    /// or rediss:// for TLS.
    #[arg(long, env = "SWITCHYARD_REDIS_URL")]
    pub redis_url: Option<String>,

    /// Log format (overrides logging.format).
    #[arg(long, env = "SWITCHYARD_LOG_FORMAT", value_parser = ["text", "json"])]
    pub log_format: Option<String>,
}

#[derive(Debug, Subcommand)]
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
}

/// Entry point behind `main`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::Check { files }) => check(files),
        Some(Command::Run) | None => run(&cli),
    }
}

fn check(files: &[PathBuf]) -> ExitCode {
    let mut ok = true;
    for f in files {
        match config::load(f) {
            Ok(c) => println!(
                "{}: ok ({} backends, strategy {})",
                f.display(),
                c.backends.len(),
                c.strategy().as_str()
            ),
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
    let mut config = if !cli.backends.is_empty() && !Path::new(&cli.config).exists() {
        Config::default()
    } else {
        config::load(&cli.config).map_err(|e| e.to_string())?
    };
    if let Some(addr) = cli.listen {
        config.server.bind = addr.ip();
        config.server.port = addr.port();
    }
    if let Some(addr) = cli.admin_listen {
        config.server.admin_bind = Some(addr.ip());
        config.server.admin_port = addr.port();
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
    let text = yaml_serde::to_string(&config).map_err(|e| e.to_string())?;
    config::parse(&text, "(config with command-line overrides)").map_err(|e| e.to_string())
}

fn run(cli: &Cli) -> ExitCode {
    let config = match load_with_overrides(cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("switchyard: {e}");
            return ExitCode::FAILURE;
        }
    };
    logging::init(&config.logging.format);
    let threads = match config.server.threads.as_usize() {
        0 => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        n => n,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("switchyard: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let source = server::file_source(&cli.config.display().to_string());
    runtime.block_on(async move {
        let running = match server::start(config, source).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("switchyard: {e}");
                return ExitCode::FAILURE;
            }
        };
        server::shutdown_signal().await;
        running.shutdown().await;
        ExitCode::SUCCESS
    })
}
