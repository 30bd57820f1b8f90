//! `demo-upstream`: a backend for demos and tests (see the library, `switchyard_demo`).

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use switchyard_demo::{Behaviour, Control, DemoServer};
use switchyard_shared::validate::parse_duration;

#[derive(Debug, Parser)]
#[command(
    name = "demo-upstream",
    version,
    about = "A demo backend that can be made slow, failing or hung"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9001")]
    listen: SocketAddr,
    /// Name it answers with (default: backend-<port>).
    #[arg(long)]
    name: Option<String>,
    /// Added latency per request, e.g. 50ms.
    #[arg(long, value_parser = parse_duration)]
    latency: Option<std::time::Duration>,
    /// Share of requests answered with 500 (0..1).
    #[arg(long)]
    fail_rate: Option<f64>,
    /// Answer /health with 503.
    #[arg(long)]
    fail_health: bool,
    /// Never answer.
    #[arg(long)]
    hang: bool,
}

/// Resolves on SIGINT or SIGTERM. Handlers are installed explicitly (whatever the
/// process inherited: started in the background by a non-interactive shell, it has
/// SIGINT ignored), before anything else, so an early signal is not lost.
fn stop_signals() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("demo-upstream: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let stopped = match stop_signals() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("demo-upstream: cannot handle signals: {e}");
                return ExitCode::FAILURE;
            }
        };
        let listener = match tokio::net::TcpListener::bind(args.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("demo-upstream: cannot listen on {}: {e}", args.listen);
                return ExitCode::FAILURE;
            }
        };
        let addr = listener.local_addr().unwrap_or(args.listen);
        let name = args
            .name
            .unwrap_or_else(|| format!("backend-{}", addr.port()));
        let control = Control::new(&name);
        control.apply(&Behaviour {
            latency_ms: args.latency.map(|d| d.as_secs_f64() * 1e3),
            fail_rate: args.fail_rate,
            fail_health: Some(args.fail_health),
            hang: Some(args.hang),
        });
        let _server = DemoServer::serve(listener, control);
        println!("demo-upstream {name} listening on {addr}");
        stopped.await;
        ExitCode::SUCCESS
    })
}
