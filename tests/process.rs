//! Tests of the real binary as a process: start-up, signals, drain and exit codes.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_iris-serve");

struct Server {
    child: Child,
    addr: SocketAddr,
    log: mpsc::Receiver<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(extra: &[&str], env: &[(&str, &str)]) -> Server {
    let mut cmd = Command::new(BIN);
    cmd.args(["--addr", "127.0.0.1:0"]).args(extra);
    cmd.env("RUST_LOG", "info").env_remove("POD_NAME");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn server");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the server never printed `listening`");
        };
        if line.contains("listening") {
            let addr = line
                .split("addr=")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .expect("addr in log");
            return Server {
                child,
                addr: addr.parse().expect("socket addr"),
                log: rx,
            };
        }
    }
}

fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    read_response(&mut s)
}

fn read_response(s: &mut TcpStream) -> (u16, String, String) {
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("http response");
    let status = head
        .split_whitespace()
        .nth(1)
        .expect("status")
        .parse()
        .expect("code");
    (status, head.to_lowercase(), body.to_owned())
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill {sig} failed");
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "server did not exit within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

const ROW: &str = r#"{"features": [5.1, 3.5, 1.4, 0.2]}"#;

#[test]
fn starts_ready_and_names_itself_from_pod_name() {
    let t0 = Instant::now();
    let server = start(&[], &[("POD_NAME", "iris-serve-7d9f-abcde")]);
    let (status, head, _) = http(server.addr, "GET", "/ready", "");
    let ready_after = t0.elapsed();
    assert_eq!(status, 200);
    assert!(
        head.contains("x-served-by: iris-serve-7d9f-abcde"),
        "{head}"
    );
    // Generous bound for a loaded CI machine; the benchmark reports the real number.
    assert!(
        ready_after < Duration::from_secs(3),
        "ready after {ready_after:?}"
    );
    let (status, _, body) = http(server.addr, "POST", "/predict", ROW);
    assert_eq!(status, 200);
    assert!(body.contains(r#""class":"setosa""#), "{body}");
}

#[test]
fn sigterm_drains_then_finishes_in_flight_requests_and_exits_zero() {
    let mut server = start(&["--drain-seconds", "1"], &[]);
    let addr = server.addr;
    // An in-flight request: headers and half the body sent before the signal.
    let mut in_flight = TcpStream::connect(addr).expect("connect");
    in_flight
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        in_flight,
        "POST /predict HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{}",
        ROW.len(),
        &ROW[..10]
    )
    .expect("write head");
    std::thread::sleep(Duration::from_millis(100));
    let signalled = Instant::now();
    signal(&server.child, "-TERM");

    // During the drain: not ready, but still serving.
    std::thread::sleep(Duration::from_millis(200));
    let (status, _, body) = http(addr, "GET", "/ready", "");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("draining"));
    let (status, _, _) = http(addr, "POST", "/predict", ROW);
    assert_eq!(status, 200);

    // After the drain the listener closes...
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(addr).is_ok() {
        assert!(
            Instant::now() < deadline,
            "listener still open 5s after the drain"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        signalled.elapsed() >= Duration::from_millis(900),
        "closed before the drain ended"
    );
    // ...but the in-flight request still completes.
    assert!(
        server.child.try_wait().expect("try_wait").is_none(),
        "exited with a request in flight"
    );
    in_flight
        .write_all(&ROW.as_bytes()[10..])
        .expect("write rest of body");
    let (status, head, body) = read_response(&mut in_flight);
    assert_eq!(status, 200, "{head}{body}");
    assert!(body.contains(r#""class":"setosa""#), "{body}");

    let exit = wait_exit(&mut server.child, Duration::from_secs(5));
    assert!(exit.success(), "exit status {exit:?}");
    let log: Vec<String> = server.log.try_iter().collect();
    assert!(log.iter().any(|l| l.contains("draining")), "{log:?}");
    assert!(log.iter().any(|l| l.contains("stopped")), "{log:?}");
}

#[test]
fn second_signal_skips_the_rest_of_the_drain() {
    let mut server = start(&["--drain-seconds", "30"], &[]);
    signal(&server.child, "-INT");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(http(server.addr, "GET", "/ready", "").0, 503);
    signal(&server.child, "-INT");
    let exit = wait_exit(&mut server.child, Duration::from_secs(5));
    assert!(exit.success(), "{exit:?}");
}

#[test]
fn bad_configuration_is_a_clear_error_not_a_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"format": "iris-tree/v1"}"#).expect("write");
    let out = Command::new(BIN)
        .args(["--addr", "127.0.0.1:0", "--model"])
        .arg(&bad)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.json") && err.contains("missing field"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    let out = Command::new(BIN)
        .env("PORT", "eighty")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("PORT must be a port number"));

    let out = Command::new(BIN)
        .args(["--drain-seconds", "-1"])
        .output()
        .expect("run");
    assert!(!out.status.success());

    for (flag, value) in [
        ("--header-read-timeout-seconds", "0"),
        ("--idle-timeout-seconds", "-1"),
        ("--idle-timeout-seconds", "inf"),
    ] {
        let out = Command::new(BIN)
            .args(["--addr", "127.0.0.1:0", &format!("{flag}={value}")])
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(2), "{flag} {value}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&flag[2..]) && err.contains("> 0"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let out = Command::new(BIN)
        .args(["--addr", "127.0.0.1:0", "--max-connections", "0"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--max-connections"));
}

#[test]
fn connection_limits_come_from_flags_or_the_environment_and_show_in_info() {
    let server = start(
        &["--header-read-timeout-seconds", "2.5"],
        &[
            ("IRIS_SERVE_IDLE_TIMEOUT_SECONDS", "90"),
            ("IRIS_SERVE_MAX_CONNECTIONS", "7"),
        ],
    );
    let (status, _, body) = http(server.addr, "GET", "/info", "");
    assert_eq!(status, 200);
    let info: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(info["server"]["header_read_timeout_seconds"], 2.5);
    assert_eq!(info["server"]["idle_timeout_seconds"], 90.0);
    assert_eq!(info["server"]["max_connections"], 7);
}

#[test]
fn port_in_use_is_reported() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = held.local_addr().expect("addr").to_string();
    let out = Command::new(BIN)
        .args(["--addr", &addr])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot listen on") && err.contains("port in use"),
        "{err}"
    );
}
