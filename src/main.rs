use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use clap::builder::TypedValueParser as _;
use iris_serve::model::Model;
use iris_serve::{AppState, ConnectionLimits, serve, served_by_name};
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
    /// Seconds a client may take to send a request's head (from connecting, or from the first byte
    /// of a later request); slower connections are closed.
    #[arg(
        long,
        env = "IRIS_SERVE_HEADER_READ_TIMEOUT_SECONDS",
        default_value_t = iris_serve::DEFAULT_HEADER_READ_TIMEOUT.as_secs_f64()
    )]
    header_read_timeout_seconds: f64,
    /// Seconds a keep-alive connection may wait for its next request before it is closed. Keep it
    /// longer than the idle time of the clients and proxies in front.
    #[arg(
        long,
        env = "IRIS_SERVE_IDLE_TIMEOUT_SECONDS",
        default_value_t = iris_serve::DEFAULT_IDLE_TIMEOUT.as_secs_f64()
    )]
    idle_timeout_seconds: f64,
    /// Connections open at once; past it, new connections are closed as soon as accepted.
    #[arg(
        long,
        env = "IRIS_SERVE_MAX_CONNECTIONS",
        default_value_t = iris_serve::DEFAULT_MAX_CONNECTIONS,
        value_parser = clap::value_parser!(u32).range(1..).map(|n: u32| n as usize)
    )]
    max_connections: usize,
}

/// A positive, finite number of seconds, for the flag `name`.
fn seconds(name: &str, value: f64) -> Result<Duration, String> {
    if value.is_finite() && value > 0.0 && value <= 1e9 {
        Ok(Duration::from_secs_f64(value))
    } else {
        Err(format!(
            "--{name} must be a number of seconds > 0, got {value}"
        ))
    }
}

/// Connections the kernel may queue for `accept`. tokio's `TcpListener::bind` asks for 1,024; a
/// burst of new connections past that is dropped and retried by the clients a second later, a
/// stall that looks like server latency. Linux caps it at `net.core.somaxconn` (4,096 by default).
const ACCEPT_BACKLOG: u32 = 4096;

fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As `TcpListener::bind` does: a restarted server can bind while old connections linger.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(ACCEPT_BACKLOG)
}

/// File descriptors the process needs besides its connections (listener, epoll, stdio, ...).
const OTHER_FILES: u64 = 64;

/// Raises the open-file soft limit to the hard limit, as Go programs do (a container's soft limit
/// may be 1,024: too few for --max-connections), and returns the soft limit now in force.
fn raise_open_file_limit() -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let before = getrlimit(Resource::Nofile);
    if let (Some(soft), Some(hard)) = (before.current, before.maximum)
        && hard > soft
    {
        // Failing leaves the limit as it was; the warning below still tells.
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(hard),
                maximum: Some(hard),
            },
        );
    }
    getrlimit(Resource::Nofile).current
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
    let limits = ConnectionLimits {
        header_read_timeout: seconds(
            "header-read-timeout-seconds",
            args.header_read_timeout_seconds,
        )?,
        idle_timeout: seconds("idle-timeout-seconds", args.idle_timeout_seconds)?,
        max_connections: args.max_connections,
    };
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
        let listener = listen(addr).map_err(|e| {
            format!("cannot listen on {addr}: {e} (is the port in use? try --addr)")
        })?;
        let local = listener.local_addr().map_err(|e| e.to_string())?;
        let served_by = served_by_name();
        let open_files = raise_open_file_limit();
        if let Some(open_files) = open_files
            && open_files < limits.max_connections as u64 + OTHER_FILES
        {
            tracing::warn!(
                open_files,
                max_connections = limits.max_connections,
                "the open-file limit is below --max-connections: past it, new connections wait \
                 in the backlog instead of being refused (raise `ulimit -n`)"
            );
        }
        tracing::info!(
            addr = %local,
            served_by,
            model = model.file.name,
            model_sha256 = model.sha256,
            max_connections = limits.max_connections,
            header_read_timeout_s = limits.header_read_timeout.as_secs_f64(),
            idle_timeout_s = limits.idle_timeout.as_secs_f64(),
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
        let state = AppState::with_limits(model, &served_by, limits);
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
