//! Kill the harness at several points and check nothing it created is left behind: the
//! Docker-only steps this machine can run (no kind here). The process gets SIGINT or SIGTERM while
//! paused at a named point (`XTASK_TEST_PAUSE`), exactly as a user's Ctrl-C would arrive.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const XTASK: &str = env!("CARGO_BIN_EXE_xtask");

fn docker_available(test: &str) -> bool {
    let ok = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test} needs Docker and CI is set"
        );
        eprintln!("\n*** SKIPPING {test}: no Docker engine ***\n");
    }
    ok
}

/// Runs xtask with `args`, waits for it to pause at `point`, sends `signal`; returns stderr and
/// the exit status.
fn kill_at(args: &[&str], point: &str, signal: &str) -> (String, std::process::ExitStatus) {
    let mut child = Command::new(XTASK)
        .args(args)
        .env("XTASK_TEST_PAUSE", point)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn xtask");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut log = String::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("xtask never paused at {point}:\n{log}");
        };
        log.push_str(&line);
        log.push('\n');
        if line.contains(&format!("paused at {point}")) {
            break;
        }
    }
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args([signal, &pid])
            .status()
            .expect("kill")
            .success()
    );
    let status = child.wait().expect("wait");
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(2)) {
        log.push_str(&line);
        log.push('\n');
    }
    (log, status)
}

fn build_image(tag: &str) {
    // A tiny image built from a local context (nothing to pull): the bundle's payload.
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("Dockerfile"),
        "FROM scratch\nCOPY payload /payload\n",
    )
    .expect("dockerfile");
    std::fs::write(dir.path().join("payload"), tag).expect("payload");
    let ok = Command::new("docker")
        .args(["build", "-q", "-t", tag])
        .arg(dir.path())
        .output()
        .expect("docker build");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

fn remove_image(tag: &str) {
    let _ = Command::new("docker").args(["rmi", "-f", tag]).output();
}

fn leftovers(parent: &Path) -> Vec<String> {
    std::fs::read_dir(parent)
        .expect("dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn a_bundle_interrupted_mid_save_leaves_nothing() {
    if !docker_available("bundle teardown") {
        return;
    }
    let tag = format!("iris-serve-test/teardown:{}", std::process::id());
    build_image(&tag);
    for signal in ["-INT", "-TERM"] {
        let parent = tempfile::tempdir().expect("dir");
        let out = parent.path().join("bundle");
        let out_arg = out.to_string_lossy().into_owned();
        let (log, status) = kill_at(
            &[
                "bundle",
                "--out",
                &out_arg,
                "--offline",
                "--without-kind",
                "--image",
                &tag,
                "--image",
                &tag,
            ],
            "bundle-saved-image",
            signal,
        );
        assert!(!status.success(), "{signal}: exit {status:?}\n{log}");
        assert!(log.contains("cleaned up"), "{signal}:\n{log}");
        assert!(
            !out.exists(),
            "{signal}: a half bundle was left at {}",
            out.display()
        );
        assert!(
            leftovers(parent.path()).is_empty(),
            "{signal}: left behind {:?}",
            leftovers(parent.path())
        );
    }
    remove_image(&tag);
}

#[test]
fn an_e2e_interrupted_before_the_cluster_leaves_nothing() {
    if !docker_available("e2e teardown") {
        return;
    }
    let out = tempfile::tempdir().expect("dir");
    let out_arg = out.path().to_string_lossy().into_owned();
    let before = Command::new("docker")
        .args(["ps", "-aq"])
        .output()
        .expect("docker ps")
        .stdout;
    let (log, status) = kill_at(
        &[
            "e2e",
            "--out",
            &out_arg,
            "--cluster-name",
            "iris-teardown-test",
        ],
        "e2e-doctor",
        "-TERM",
    );
    assert!(!status.success(), "{log}");
    assert!(log.contains("terminated (SIGTERM)"), "{log}");
    let after = Command::new("docker")
        .args(["ps", "-aq"])
        .output()
        .expect("docker ps")
        .stdout;
    assert_eq!(before, after, "containers changed");
    assert!(
        leftovers(out.path()).is_empty(),
        "{:?}",
        leftovers(out.path())
    );
}
