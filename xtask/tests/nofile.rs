//! The open-file limit, through the real process: `cargo xtask load` started under a low limit
//! refuses at once, saying why and what to do; one started under a low soft limit with room below
//! the hard limit raises it and runs. Each test lowers the limit only for its own child process
//! (`ulimit` in `sh`, then `exec`), never for the test process.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

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
    assert!(out.status.success(), "{stderr}");
    // It ran (against the closed port, so nothing answered).
    assert!(stdout.contains("500 connections"), "{stdout}");
    assert!(stdout.contains("0 responses"), "{stdout}");
}
