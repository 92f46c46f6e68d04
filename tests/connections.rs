//! Hostile and idle connections against the real server, in-process, over loopback sockets:
//! half-sent requests, a flood past the connection cap, idle and busy keep-alive connections.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use iris_serve::metrics::Timeout;
use iris_serve::model::Model;
use iris_serve::{AppState, ConnectionLimits, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const ROW: &str = r#"{"features": [5.1, 3.5, 1.4, 0.2]}"#;
const HALF_REQUEST: &[u8] = b"POST /predict HTTP/1.1\r\nHost: x\r\n";

struct Server {
    addr: SocketAddr,
    state: Arc<AppState>,
    stop: Option<oneshot::Sender<()>>,
    served: JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn start(limits: ConnectionLimits) -> Server {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.1:0".parse().expect("addr"))
            .expect("bind");
        // A deep accept queue: the tests open connections in bursts, and a full queue would turn
        // into one-second SYN retries that have nothing to do with the server.
        let listener = socket.listen(4096).expect("listen");
        let addr = listener.local_addr().expect("addr");
        let state = AppState::with_limits(Model::embedded().expect("model"), "conn-test", limits);
        let (stop, stopped) = oneshot::channel::<()>();
        let served = tokio::spawn(serve(
            listener,
            state.clone(),
            Duration::ZERO,
            async move {
                let _ = stopped.await;
            },
            std::future::pending(),
        ));
        Server {
            addr,
            state,
            stop: Some(stop),
            served,
        }
    }

    fn open(&self) -> i64 {
        self.state.metrics().connections_open.get()
    }

    fn timed_out(&self, timeout: Timeout) -> u64 {
        self.state.metrics().timed_out(timeout).get()
    }

    /// Polls until the open-connections gauge reads `n` (it drops just after the socket closes).
    async fn wait_open(&self, n: i64, within: Duration) {
        let deadline = Instant::now() + within;
        while self.open() != n {
            assert!(
                Instant::now() < deadline,
                "{} connections open after {within:?}, expected {n}",
                self.open()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Every test holds a few thousand sockets at most (both ends are in this process).
fn ensure_open_files(needed: u64) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current.is_some_and(|soft| soft < needed) {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            },
        );
    }
    let soft = getrlimit(Resource::Nofile).current;
    assert!(
        soft.is_none_or(|soft| soft >= needed),
        "this test needs {needed} open files and the hard limit allows {soft:?}: raise `ulimit -Hn`"
    );
}

/// One request on `s` (kept alive), its status and body.
async fn exchange(s: &mut TcpStream, method: &str, path: &str, body: &str) -> (u16, String) {
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).await.expect("read response");
        assert!(n > 0, "connection closed before a full response");
        raw.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&raw);
        let Some((head, rest)) = text.split_once("\r\n\r\n") else {
            continue;
        };
        let length: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().expect("length"))
            })
            .expect("content-length");
        if rest.len() >= length {
            let status = head
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .expect("status");
            return (status, rest.to_owned());
        }
    }
}

async fn predict(s: &mut TcpStream) {
    let (status, body) = exchange(s, "POST", "/predict", ROW).await;
    assert_eq!(status, 200, "{body}");
}

/// Waits for the server to close `s`; returns when it did, or `None` if it still hasn't by `within`.
async fn closed_by_server(s: &mut TcpStream, within: Duration) -> Option<Instant> {
    let mut buf = [0u8; 256];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(Instant::now()),
            // Bytes from the server on a connection we expect it to close: not a close.
            Ok(Ok(_)) => {}
        }
    }
}

/// A client sending requests back to back (10 ms apart) on one keep-alive connection until told
/// to stop; returns every request's latency.
fn steady_client(addr: SocketAddr, stop: oneshot::Receiver<()>) -> JoinHandle<Vec<Duration>> {
    tokio::spawn(async move {
        let mut stop = stop;
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let mut latencies = Vec::new();
        loop {
            let t = Instant::now();
            predict(&mut s).await;
            latencies.push(t.elapsed());
            tokio::select! {
                _ = &mut stop => return latencies,
                () = tokio::time::sleep(Duration::from_millis(10)) => {}
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_are_closed_after_the_header_timeout_while_others_are_served() {
    const HALF_OPEN: usize = 2000;
    ensure_open_files(2 * HALF_OPEN as u64 + 256);
    let header_timeout = Duration::from_secs(1);
    let server = Server::start(ConnectionLimits {
        header_read_timeout: header_timeout,
        idle_timeout: Duration::from_secs(60),
        max_connections: 5000,
    })
    .await;
    let (stop_client, client_stop) = oneshot::channel();
    let client = steady_client(server.addr, client_stop);

    let t0 = Instant::now();
    let mut watchers = Vec::with_capacity(HALF_OPEN);
    for _ in 0..HALF_OPEN {
        let mut s = TcpStream::connect(server.addr).await.expect("connect");
        s.write_all(HALF_REQUEST)
            .await
            .expect("write half a request");
        let sent = Instant::now();
        watchers.push(tokio::spawn(async move {
            let closed = closed_by_server(&mut s, Duration::from_secs(20)).await;
            closed.map(|at| at - sent)
        }));
    }
    let opened_in = t0.elapsed();
    let mut lifetimes = Vec::with_capacity(HALF_OPEN);
    for w in watchers {
        lifetimes.push(
            w.await
                .expect("watcher")
                .expect("a half-open connection was still open after 20 s"),
        );
    }
    let _ = stop_client.send(());
    let mut latencies = client.await.expect("client");

    lifetimes.sort();
    latencies.sort();
    let (shortest, longest) = (lifetimes[0], lifetimes[HALF_OPEN - 1]);
    let slowest = latencies[latencies.len() - 1];
    let median = latencies[latencies.len() / 2];
    eprintln!(
        "{HALF_OPEN} half-open connections opened in {opened_in:?}, closed {shortest:?} to {longest:?} after their last byte; \
         meanwhile {} requests on a keep-alive connection, median {median:?}, slowest {slowest:?}",
        latencies.len()
    );
    // Not before the timeout (the clock starts at accept, just before the bytes were sent)...
    assert!(
        shortest >= header_timeout - Duration::from_millis(100),
        "closed after {shortest:?}"
    );
    // ...and not much after it.
    assert!(
        longest <= header_timeout + Duration::from_secs(1),
        "closed after {longest:?}"
    );
    assert!(latencies.len() >= 20, "{latencies:?}");
    assert!(median < Duration::from_millis(50), "median {median:?}");
    assert!(slowest < Duration::from_millis(500), "slowest {slowest:?}");
    assert_eq!(server.timed_out(Timeout::HeaderRead), HALF_OPEN as u64);
    assert_eq!(server.timed_out(Timeout::Idle), 0);
    server.wait_open(0, Duration::from_secs(5)).await;
    assert_eq!(
        server.state.metrics().connections_accepted.get(),
        HALF_OPEN as u64 + 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_cap_new_connections_are_closed_at_once_and_counted() {
    const CAP: usize = 50;
    const EXCESS: usize = 20;
    ensure_open_files(2 * (CAP + EXCESS) as u64 + 256);
    let server = Server::start(ConnectionLimits {
        max_connections: CAP,
        ..ConnectionLimits::default()
    })
    .await;
    // The cap's worth of keep-alive connections, each having been served once.
    let mut held = Vec::new();
    for _ in 0..CAP {
        let mut s = TcpStream::connect(server.addr).await.expect("connect");
        predict(&mut s).await;
        held.push(s);
    }
    assert_eq!(server.open(), CAP as i64);

    for _ in 0..EXCESS {
        // The kernel completes the handshake; the server closes it as soon as it accepts it.
        let mut s = TcpStream::connect(server.addr).await.expect("connect");
        let _ = s
            .write_all(b"GET /health HTTP/1.1\r\nhost: t\r\n\r\n")
            .await;
        let t = Instant::now();
        let closed = closed_by_server(&mut s, Duration::from_secs(5)).await;
        let after = closed.map(|at| at - t);
        assert!(
            after.is_some_and(|d| d < Duration::from_millis(500)),
            "a connection past the cap was not closed at once: {after:?}"
        );
    }
    let metrics = server.state.metrics();
    assert_eq!(metrics.connections_refused.get(), EXCESS as u64);
    assert_eq!(metrics.connections_accepted.get(), CAP as u64);

    // The held connections are still served...
    for s in held.iter_mut().take(5) {
        predict(s).await;
    }
    // ...and once some go, new ones are accepted again.
    held.truncate(CAP - 10);
    server
        .wait_open((CAP - 10) as i64, Duration::from_secs(5))
        .await;
    let mut s = TcpStream::connect(server.addr).await.expect("connect");
    let (status, metrics_text) = exchange(&mut s, "GET", "/metrics", "").await;
    assert_eq!(status, 200);
    for needle in [
        "# TYPE iris_serve_connections_open gauge",
        &format!("iris_serve_connections_open {}", CAP - 9),
        &format!("iris_serve_connections_refused_total {EXCESS}"),
        &format!("iris_serve_connections_accepted_total {}", CAP + 1),
        r#"iris_serve_connections_timed_out_total{timeout="header_read"} 0"#,
        r#"iris_serve_connections_timed_out_total{timeout="idle"} 0"#,
    ] {
        assert!(
            metrics_text.contains(needle),
            "missing {needle:?} in:\n{metrics_text}"
        );
    }
    assert!(metrics_text.ends_with("# EOF\n"), "{metrics_text}");
    assert_eq!(exchange(&mut s, "GET", "/health", "").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_close_after_the_idle_timeout_busy_ones_do_not() {
    // The idle timeout is longer than the header timeout, as by default: waiting for a request
    // is held to the first, sending one to the second.
    let header = Duration::from_millis(500);
    let idle = Duration::from_millis(1500);
    let server = Server::start(ConnectionLimits {
        header_read_timeout: header,
        idle_timeout: idle,
        max_connections: 100,
    })
    .await;
    let connect = || TcpStream::connect(server.addr);

    // Idle after one request: closed once the idle timeout has passed.
    let mut idle_conn = connect().await.expect("connect");
    predict(&mut idle_conn).await;
    let answered = Instant::now();
    let idle_task = tokio::spawn(async move {
        closed_by_server(&mut idle_conn, Duration::from_secs(10))
            .await
            .map(|at| at - answered)
    });

    // Quiet for longer than the header timeout but shorter than the idle timeout: still served.
    let mut pausing = connect().await.expect("connect");
    predict(&mut pausing).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    predict(&mut pausing).await;
    drop(pausing);

    // A request every 300 ms for over twice the idle timeout: never closed.
    let mut busy = connect().await.expect("connect");
    let busy_until = Instant::now() + 2 * idle;
    let mut requests = 0;
    while Instant::now() < busy_until {
        predict(&mut busy).await;
        requests += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    predict(&mut busy).await;
    drop(busy);

    let idle_for = idle_task
        .await
        .expect("task")
        .expect("the idle connection was never closed");
    eprintln!(
        "idle keep-alive connection closed {idle_for:?} after its response; busy one served {requests} requests"
    );
    assert!(
        idle_for >= idle - Duration::from_millis(100) && idle_for <= idle + Duration::from_secs(1),
        "closed {idle_for:?} after its response"
    );
    assert_eq!(server.timed_out(Timeout::Idle), 1);
    assert_eq!(server.timed_out(Timeout::HeaderRead), 0);

    // Half of a second request on a kept-alive connection: the header timeout, from its first byte.
    let mut stalling = connect().await.expect("connect");
    predict(&mut stalling).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    stalling.write_all(HALF_REQUEST).await.expect("write");
    let sent = Instant::now();
    let closed = closed_by_server(&mut stalling, Duration::from_secs(10))
        .await
        .expect("the stalled head was never closed");
    let after = closed - sent;
    assert!(
        after >= header - Duration::from_millis(100) && after <= header + Duration::from_secs(1),
        "closed {after:?} after the half head"
    );
    assert_eq!(server.timed_out(Timeout::HeaderRead), 1);
    assert_eq!(server.timed_out(Timeout::Idle), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_silent_connections_at_once_and_half_sent_ones_at_their_timeout() {
    let header = Duration::from_millis(800);
    let mut server = Server::start(ConnectionLimits {
        header_read_timeout: header,
        ..ConnectionLimits::default()
    })
    .await;
    let mut silent = TcpStream::connect(server.addr).await.expect("connect");
    let mut idle = TcpStream::connect(server.addr).await.expect("connect");
    predict(&mut idle).await;
    let mut half = TcpStream::connect(server.addr).await.expect("connect");
    half.write_all(HALF_REQUEST).await.expect("write");
    server.wait_open(3, Duration::from_secs(5)).await;

    let stopped = Instant::now();
    let _ = server.stop.take().expect("stop").send(());
    for (name, s) in [("silent", &mut silent), ("idle", &mut idle)] {
        let closed = closed_by_server(s, Duration::from_secs(5)).await;
        assert!(
            closed.is_some_and(|at| at - stopped < Duration::from_millis(300)),
            "the {name} connection was not closed at shutdown: {:?}",
            closed.map(|at| at - stopped)
        );
    }
    // The half-sent request may still complete until its header timeout; then it is closed too,
    // and serve returns: a stalled client can't hold the shutdown.
    let result = tokio::time::timeout(Duration::from_secs(5), &mut server.served)
        .await
        .expect("serve did not return")
        .expect("join");
    result.expect("serve");
    let took = stopped.elapsed();
    assert!(
        took >= header - Duration::from_millis(300) && took < header + Duration::from_secs(1),
        "{took:?}"
    );
    assert!(
        closed_by_server(&mut half, Duration::from_secs(1))
            .await
            .is_some()
    );
    assert!(TcpStream::connect(server.addr).await.is_err());
}
