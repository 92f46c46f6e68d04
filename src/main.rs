use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use iris_serve::model::Model;
use iris_serve::{AppState, serve, served_by_name};
use tokio::signal::unix::{SignalKind, signal};

/// Iris classifier inference server.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on. Without it: 0.0.0.0 and the port in $PORT, else 8080.
    #[arg(long)]
    addr: Option<SocketAddr>,
    /// Model artifact (iris-tree/v1 JSON). Without it: the artifact compiled into the binary.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Seconds to keep serving after SIGTERM/Ctrl-C while /ready answers 503.
    #[arg(long, default_value_t = 5.0)]
    drain_seconds: f64,
}

fn main() -> std::process::ExitCode {
    let started = Instant::now();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    match run(args, started) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(message) => {
            tracing::error!("{message}");
            std::process::ExitCode::from(2)
        }
    }
}

fn run(args: Args, started: Instant) -> Result<(), String> {
    if !(args.drain_seconds.is_finite() && args.drain_seconds >= 0.0) {
        return Err(format!(
            "--drain-seconds must be a number of seconds >= 0, got {}",
            args.drain_seconds
        ));
    }
    let addr = match args.addr {
        Some(addr) => addr,
        None => {
            let port = match std::env::var("PORT") {
                Ok(p) => p
                    .parse::<u16>()
                    .map_err(|_| format!("PORT must be a port number, got {p:?}"))?,
                Err(_) => 8080,
            };
            SocketAddr::from(([0, 0, 0, 0], port))
        }
    };
    let model = match &args.model {
        Some(path) => {
            let bytes = std::fs::read(path)
                .map_err(|e| format!("cannot read --model {}: {e}", path.display()))?;
            Model::from_json(&bytes).map_err(|e| format!("--model {}: {e}", path.display()))?
        }
        None => Model::embedded().map_err(|e| format!("embedded model: {e}"))?,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(async move {
        // Handlers first: a signal that arrives once we say "listening" must drain, not kill.
        let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
        let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            format!("cannot listen on {addr}: {e} (is the port in use? try --addr)")
        })?;
        let local = listener.local_addr().map_err(|e| e.to_string())?;
        let served_by = served_by_name();
        tracing::info!(
            addr = %local,
            served_by,
            model = model.file.name,
            model_sha256 = model.sha256,
            startup_ms = started.elapsed().as_secs_f64() * 1000.0,
            "listening"
        );
        let (first_tx, first_rx) = tokio::sync::oneshot::channel::<()>();
        let (second_tx, second_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            for tx in [first_tx, second_tx] {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = int.recv() => tracing::info!("SIGINT received"),
                }
                let _ = tx.send(());
            }
        });
        let state = AppState::new(model, &served_by);
        serve(
            listener,
            state,
            Duration::from_secs_f64(args.drain_seconds),
            async move {
                let _ = first_rx.await;
            },
            async move {
                let _ = second_rx.await;
            },
        )
        .await
        .map_err(|e| format!("server error: {e}"))?;
        tracing::info!("stopped");
        Ok(())
    })
}
