//! `cargo xtask load` as a user runs it, through the real process: exit codes and plain reasons
//! when nothing succeeded, bad URLs refused, `--json` into a new folder; and the open-file limit:
//! started under a low limit it refuses at once, saying why and what to do; under a low soft limit
//! with room below the hard limit it raises it and runs. Each test lowers the limit only for its
//! own child process (`ulimit` in `sh`, then `exec`), never for the test process.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

mod support;

const XTASK: &str = env!("CARGO_BIN_EXE_xtask");

/// A loopback port nothing listens on: the load never reaches a server.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// `xtask load` with `args`, started by `sh` after `ulimit_args`.
fn load_under(ulimit_args: &str, args: &[&str]) -> (Output, Duration) {
    let url = format!("http://127.0.0.1:{}/predict", closed_port());
    let started = Instant::now();
    let output = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit {ulimit_args} && exec \"$@\""))
        .arg("sh")
        .arg(XTASK)
        .arg("load")
        .arg(url)
        .args(args)
        .output()
        .expect("run sh");
    (output, started.elapsed())
}

fn hard_limit() -> Option<u64> {
    let out = Command::new("sh")
        .args(["-c", "ulimit -Hn"])
        .output()
        .expect("sh");
    match String::from_utf8_lossy(&out.stdout).trim() {
        "unlimited" => Some(u64::MAX),
        n => n.parse().ok(),
    }
}

#[test]
fn a_load_over_the_limit_is_refused_up_front() {
    // `ulimit -n` sets the soft and the hard limit: xtask cannot raise it back.
    let (out, took) = load_under("-n 64", &["-c", "500", "-d", "10s", "-q"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("exit {:?} after {took:?}:\n{stderr}", out.status.code());
    assert!(!out.status.success(), "ran instead of refusing:\n{stderr}");
    // Refused before the load's 10 s, not after a storm of connect errors.
    assert!(took < Duration::from_secs(5), "took {took:?}");
    for part in [
        "500 connections need 756 open files",
        "the limit is 64 (hard limit 64)",
        "fix:",
        "nofile 756",
        "/etc/security/limits.conf",
        "LimitNOFILE=756",
    ] {
        assert!(stderr.contains(part), "{part:?} missing from:\n{stderr}");
    }
    assert!(out.stdout.is_empty(), "no summary for a refused load");
}

#[test]
fn a_low_soft_limit_is_raised_to_the_hard_limit() {
    match hard_limit() {
        Some(hard) if hard >= 756 => {}
        other => {
            assert!(
                std::env::var_os("CI").is_none(),
                "the hard open-file limit {other:?} is below 756 on CI"
            );
            eprintln!("\n*** SKIPPING: the hard open-file limit {other:?} is below 756 ***\n");
            return;
        }
    }
    let (out, took) = load_under("-Sn 64", &["-c", "500", "-d", "300ms", "-q"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "exit {:?} after {took:?}:\n{stdout}{stderr}",
        out.status.code()
    );
    // It ran (against the closed port, so nothing answered, which is an error exit).
    assert!(stdout.contains("500 connections"), "{stdout}");
    assert!(stdout.contains("0 responses"), "{stdout}");
    assert!(
        stderr.contains("every attempt failed to connect"),
        "{stderr}"
    );
}

fn xtask_load(args: &[&str]) -> Output {
    Command::new(XTASK)
        .arg("load")
        .args(args)
        .output()
        .expect("run xtask load")
}

#[test]
fn nothing_succeeded_is_a_failure_with_one_plain_reason() {
    let url = format!("http://127.0.0.1:{}/predict", closed_port());
    let out = xtask_load(&[&url, "-c", "2", "-d", "500ms", "-q"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "exit 0 with nothing answered:\n{stdout}{stderr}"
    );
    assert!(
        stderr.contains(&format!("every attempt failed to connect to {url}")),
        "{stderr}"
    );
    // The summary still comes first, and its headline rate counts successes only.
    assert!(stdout.contains("Requests/sec:       0.00"), "{stdout}");
}

#[test]
fn a_port_that_is_no_tcp_port_is_refused_before_any_load() {
    for url in ["http://127.0.0.1:99999/", "http://127.0.0.1:0/"] {
        let out = xtask_load(&[url, "-d", "5s", "-q"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{url}");
        assert!(stderr.contains("is not a TCP port"), "{url}: {stderr}");
        assert!(out.stdout.is_empty(), "{url}: a load ran");
    }
}

#[test]
fn json_goes_into_a_folder_made_for_it_and_bad_paths_fail_before_the_run() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("new/sub/run.json");
    let url = format!("http://127.0.0.1:{}/predict", closed_port());
    let out = xtask_load(&[
        &url,
        "-c",
        "1",
        "-d",
        "200ms",
        "-q",
        "--json",
        path.to_str().expect("utf8"),
    ]);
    assert!(path.exists(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
    assert!(
        json["totals"]["errors"]["connect"]
            .as_u64()
            .is_some_and(|n| n > 0),
        "{json}"
    );
    // A path under a file cannot be made: refused before the load starts.
    let blocked = dir.path().join("new/sub/run.json/x.json");
    let started = Instant::now();
    let out = xtask_load(&[
        &url,
        "-d",
        "10s",
        "-q",
        "--json",
        blocked.to_str().expect("utf8"),
    ]);
    assert!(!out.status.success());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the load ran first"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("--json"));
}

/// `xtask load` of 2 connections for 30 s against `addr`, with `extra` arguments; output piped.
fn spawn_30s_load(addr: std::net::SocketAddr, extra: &[&std::ffi::OsStr]) -> std::process::Child {
    Command::new(XTASK)
        .args([
            "load",
            &format!("http://{addr}/predict"),
            "-c",
            "2",
            "-d",
            "30s",
        ])
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn xtask load")
}

/// Sends `signal` to `pid`.
fn kill(signal: &str, pid: u32) {
    assert!(
        Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("kill")
            .success()
    );
}

#[test]
fn the_first_ctrl_c_keeps_the_results_so_far() {
    let addr = support::real_server("pod-under-test");
    let dir = tempfile::tempdir().expect("dir");
    let json = dir.path().join("run.json");
    let child = spawn_30s_load(addr, &["--json".as_ref(), json.as_os_str()]);
    std::thread::sleep(Duration::from_millis(2500));
    let signalled = Instant::now();
    kill("-INT", child.id());
    let out = child.wait_with_output().expect("wait");
    let took = signalled.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "exit {:?} {took:?} after SIGINT:\n{stdout}{stderr}",
        out.status.code()
    );
    // Interrupted: the shell's code for SIGINT, so a script knows the numbers are partial.
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(took < Duration::from_secs(5), "took {took:?} to stop");
    assert!(stdout.contains("INTERRUPTED after "), "{stdout}");
    assert!(stdout.contains("Requests/sec:"), "no summary:\n{stdout}");
    assert!(stderr.contains("interrupted after"), "{stderr}");
    let outcome: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("--json written")).expect("json");
    let after = outcome["interrupted_after_s"]
        .as_f64()
        .expect("interrupted_after_s");
    assert!((1.0..10.0).contains(&after), "{after}");
    assert!(
        outcome["totals"]["responses"]
            .as_u64()
            .is_some_and(|n| n > 0),
        "{outcome}"
    );
    assert!(
        outcome["windows"].as_array().is_some_and(|w| !w.is_empty()),
        "{outcome}"
    );
}

#[test]
fn a_second_ctrl_c_quits_at_once() {
    // A server that accepts and never answers: after the first Ctrl-C the workers wait on their
    // responses for the grace period, and the second one must not wait for it.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming().map_while(Result::ok) {
            held.push(conn);
        }
    });
    let child = spawn_30s_load(addr, &[]);
    std::thread::sleep(Duration::from_millis(1500));
    kill("-INT", child.id());
    std::thread::sleep(Duration::from_millis(300));
    let second = Instant::now();
    kill("-INT", child.id());
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("second signal: quitting without a summary"),
        "{stderr}"
    );
    assert!(
        second.elapsed() < Duration::from_millis(900),
        "{:?}",
        second.elapsed()
    );
    assert!(out.stdout.is_empty(), "a summary was printed");
}
