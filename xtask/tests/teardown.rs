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
    let mut command = Command::new(XTASK);
    command.args(args).env("XTASK_TEST_PAUSE", point);
    let (log, status, _) = kill_when(command, &format!("paused at {point}"), signal);
    (log, status)
}

/// Runs `command`, waits for a stderr line containing `ready`, sends `signal`; returns stderr,
/// the exit status, and how long the process took to exit after the signal.
fn kill_when(
    mut command: Command,
    ready: &str,
    signal: &str,
) -> (String, std::process::ExitStatus, Duration) {
    let point = ready;
    let mut child = command
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
            panic!("xtask never printed {point:?}:\n{log}");
        };
        log.push_str(&line);
        log.push('\n');
        if line.contains(point) {
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
    let signalled = Instant::now();
    let status = child.wait().expect("wait");
    let took = signalled.elapsed();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(2)) {
        log.push_str(&line);
        log.push('\n');
    }
    (log, status, took)
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
    // Two images (a bundle holds one per name:tag), so the save pauses between them.
    let tag = format!("iris-serve-test/teardown:{}", std::process::id());
    let second = format!("iris-serve-test/teardown:{}-2", std::process::id());
    build_image(&tag);
    build_image(&second);
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
                &second,
            ],
            "bundle-saved-image",
            signal,
        );
        assert_eq!(status.code(), Some(130), "{signal}: exit {status:?}\n{log}");
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
    remove_image(&second);
}

#[test]
fn an_e2e_interrupted_before_the_cluster_leaves_nothing() {
    if !docker_available("e2e teardown") {
        return;
    }
    let out = tempfile::tempdir().expect("dir");
    let out_arg = out.path().to_string_lossy().into_owned();
    // Only what this run could make: its cluster's nodes. (It is stopped before the doctor, so
    // it starts no probe container; other tests in this binary create and remove containers of
    // their own at the same time, the doctor's probes among them, so those are not counted.)
    let ours = || {
        let out = Command::new("docker")
            .args([
                "ps",
                "-aq",
                "--filter",
                "label=io.x-k8s.kind.cluster=iris-teardown-test",
            ])
            .output()
            .expect("docker ps");
        assert!(out.status.success(), "docker ps failed");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let before = ours();
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
    assert_eq!(status.code(), Some(130), "{log}");
    assert!(log.contains("error: SIGTERM during the doctor"), "{log}");
    assert_eq!(before, ours(), "the run left containers behind");
    assert!(
        leftovers(out.path()).is_empty(),
        "{:?}",
        leftovers(out.path())
    );
}

/// Removes what a run under cluster name `name` wrote under target/e2e (its state folder and log
/// exports), so the tests leave the checkout as they found it.
fn remove_run_state(name: &str) {
    let e2e = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/e2e");
    for entry in std::fs::read_dir(&e2e).into_iter().flatten().flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        if file == name || file.starts_with(&format!("{name}-")) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A stand-in for kind v0.32.0 on PATH: `version` answers like kind; `create` makes the node
/// containers as kind names and labels them (when `FAKE_KIND_IMAGE` names a local image to make
/// them from), then hangs like a slow `kind create cluster` (its pid recorded); `delete` removes
/// the containers labelled with the cluster's name, as kind does. Every call is logged.
fn fake_kind(dir: &Path) -> std::path::PathBuf {
    let calls = dir.join("calls.log");
    let script = format!(
        r#"#!/bin/sh
echo "$*" >> {calls}
name=""
prev=""
for a in "$@"; do [ "$prev" = "--name" ] && name="$a"; prev="$a"; done
case "$1" in
  version) echo 'kind v0.32.0 go1.24.0 linux/amd64' ;;
  create)
    if [ -n "$FAKE_KIND_IMAGE" ]; then
      for n in control-plane worker; do
        docker create --name "$name-$n" --label "io.x-k8s.kind.cluster=$name"           --label "io.x-k8s.kind.role=$n" "$FAKE_KIND_IMAGE" /payload >/dev/null
      done
    fi
    echo $$ > {pid}; echo 'Creating cluster (fake kind sleeping)' >&2; exec sleep 120 ;;
  delete)
    ids=$(docker ps -aq --filter "label=io.x-k8s.kind.cluster=$name")
    [ -z "$ids" ] || docker rm -f $ids >/dev/null ;;
esac
exit 0
"#,
        calls = calls.display(),
        pid = dir.join("create.pid").display()
    );
    let path = dir.join("kind");
    std::fs::write(&path, script).expect("fake kind");
    std::process::Command::new("chmod")
        .args(["755"])
        .arg(&path)
        .status()
        .expect("chmod");
    calls
}

/// The node containers of cluster `name` the run left behind (the answer), removed now with the
/// fake node image `tag` so that a failed test leaves the machine clean.
fn remove_leftover_nodes(name: &str, tag: &str) -> Vec<String> {
    let left = kind_node_containers(name);
    for c in &left {
        let _ = Command::new("docker").args(["rm", "-f", c]).output();
    }
    remove_image(tag);
    left
}

/// Container names labelled as nodes of kind cluster `name`.
fn kind_node_containers(name: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args(["ps", "-a", "--format", "{{.Names}}", "--filter"])
        .arg(format!("label=io.x-k8s.kind.cluster={name}"))
        .output()
        .expect("docker ps");
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    names.sort();
    names
}

fn path_with(dir: &Path) -> String {
    format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

#[test]
fn a_users_own_kind_cluster_of_the_same_name_is_never_deleted() {
    if !docker_available("a user's own cluster") {
        return;
    }
    let tag = format!("iris-serve-test/user-node:{}", std::process::id());
    build_image(&tag);
    let name = format!("iris-users-{}", std::process::id());
    // The user's cluster: node containers named and labelled as kind does, no record of ours.
    for role in ["control-plane", "worker"] {
        let ok = Command::new("docker")
            .args(["create", "--name", &format!("{name}-{role}"), "--label"])
            .arg(format!("io.x-k8s.kind.cluster={name}"))
            .arg("--label")
            .arg(format!("io.x-k8s.kind.role={role}"))
            .args([tag.as_str(), "/payload"])
            .status()
            .expect("docker create");
        assert!(ok.success());
    }
    let before = kind_node_containers(&name);
    assert_eq!(before.len(), 2);
    let out_dir = tempfile::tempdir().expect("out");
    let out_arg = out_dir.path().to_string_lossy().into_owned();
    for args in [
        vec!["cluster", "up", "--cluster-name", &name],
        vec!["cluster", "down", "--cluster-name", &name],
        vec!["e2e", "--cluster-name", &name, "--out", &out_arg],
    ] {
        let dir = tempfile::tempdir().expect("dir");
        let calls = fake_kind(dir.path());
        let out = Command::new(XTASK)
            .args(&args)
            .env("PATH", path_with(dir.path()))
            .output()
            .expect("run");
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded:\n{log}");
        assert!(log.contains("did not create it"), "{args:?}:\n{log}");
        assert!(
            log.contains("kind delete cluster --name"),
            "{args:?}: no hint:\n{log}"
        );
        let called = std::fs::read_to_string(&calls).unwrap_or_default();
        assert!(
            !called.contains("delete") && !called.contains("create"),
            "{args:?} ran kind on the user's cluster:\n{called}"
        );
        assert_eq!(kind_node_containers(&name), before, "{args:?}");
    }
    remove_run_state(&name);
    for c in before {
        let _ = Command::new("docker").args(["rm", "-f", &c]).output();
    }
    remove_image(&tag);
}

#[test]
fn a_signal_during_kind_create_stops_kind_and_tears_down_within_seconds() {
    if !docker_available("signal during kind create") {
        return;
    }
    for signal in ["-INT", "-TERM"] {
        let dir = tempfile::tempdir().expect("dir");
        let calls = fake_kind(dir.path());
        let path = format!(
            "{}:{}",
            dir.path().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let name = format!("iris-sig-{}", std::process::id());
        let tag = format!("iris-serve-test/sig-node:{}", std::process::id());
        build_image(&tag);
        let mut command = Command::new(XTASK);
        command
            .args(["cluster", "up", "--cluster-name", &name])
            .env("PATH", path)
            .env("FAKE_KIND_IMAGE", &tag);
        let (log, status, took) = kill_when(command, "fake kind sleeping", signal);
        remove_run_state(&name);
        // The interrupted create's nodes are this run's (made after its record): deleted.
        let left = remove_leftover_nodes(&name, &tag);
        assert!(
            left.is_empty(),
            "{signal}: the interrupted run's nodes were left: {left:?}\n{log}"
        );
        eprintln!("{signal}: exited {took:.2?} after the signal");
        assert_eq!(status.code(), Some(130), "{signal}: {status:?}\n{log}");
        assert!(
            took < Duration::from_secs(4),
            "{signal}: took {took:?}\n{log}"
        );
        assert!(log.contains("cleaned up"), "{signal}:\n{log}");
        let pid = std::fs::read_to_string(dir.path().join("create.pid")).expect("pid");
        let proc = format!("/proc/{}", pid.trim());
        let alive = Path::new(&proc).exists()
            && !std::fs::read_to_string(format!("{proc}/stat"))
                .unwrap_or_default()
                .contains(") Z ");
        assert!(
            !alive,
            "{signal}: `kind create` (pid {pid}) outlived the harness"
        );
        let called = std::fs::read_to_string(&calls).expect("calls");
        assert!(
            called
                .lines()
                .any(|l| l.starts_with("delete cluster --name")),
            "{signal}: the teardown did not delete the half-made cluster:\n{called}"
        );
    }
}

#[test]
fn a_failed_kind_create_keeps_its_nodes_for_the_log_export_then_deletes() {
    if !docker_available("failed kind create") {
        return;
    }
    let dir = tempfile::tempdir().expect("dir");
    let calls = fake_kind(dir.path());
    // This kind's create fails at once, as a real one does when a node never comes up.
    let script = std::fs::read_to_string(dir.path().join("kind")).expect("script");
    let failing = script.replace(
        "exec sleep 120",
        "echo 'ERROR: failed to create cluster: node never became ready' >&2; exit 1",
    );
    std::fs::write(dir.path().join("kind"), failing).expect("write");
    let tag = format!("iris-serve-test/fake-node:{}", std::process::id());
    build_image(&tag);
    let name = format!("iris-fail-{}", std::process::id());
    let out = Command::new(XTASK)
        .args(["cluster", "up", "--cluster-name", &name])
        .env("PATH", path_with(dir.path()))
        .env("FAKE_KIND_IMAGE", &tag)
        .output()
        .expect("run");
    remove_run_state(&name);
    // The nodes the failed create left were this run's (its record names them): deleted.
    let left = remove_leftover_nodes(&name, &tag);
    assert!(
        left.is_empty(),
        "the failed run's nodes were left: {left:?}"
    );
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{log}");
    let called = std::fs::read_to_string(&calls).expect("calls");
    let order: Vec<&str> = called
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|verb| *verb != "version")
        .collect();
    assert_eq!(order, ["create", "export", "delete"], "{called}\n{log}");
    assert!(
        called
            .lines()
            .any(|l| l.starts_with("create cluster --retain ")),
        "kind create must run with --retain, or its nodes are gone before the log export:\n{called}"
    );
    assert!(log.contains("logs of the failed run"), "{log}");
}

/// The server image, built (or found unchanged) by the harness itself.
fn server_image() -> String {
    let built = Command::new(XTASK)
        .args(["image", "build"])
        .output()
        .expect("xtask image build");
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    String::from_utf8_lossy(&built.stdout)
        .split_whitespace()
        .next()
        .expect("the image reference")
        .to_owned()
}

/// The calibration container named on stderr (`... in container NAME (...`).
fn calibration_container(log: &str) -> String {
    log.split("in container ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no container named in:\n{log}"))
        .to_owned()
}

fn container_exists(name: &str) -> bool {
    let out = Command::new("docker")
        .args(["ps", "-a", "-q", "--filter", &format!("name=^/{name}$")])
        .output()
        .expect("docker ps");
    !String::from_utf8_lossy(&out.stdout).trim().is_empty()
}

#[test]
fn ctrl_c_or_sigterm_during_a_calibration_removes_its_container() {
    if !docker_available("calibrate Ctrl-C") {
        return;
    }
    let image = server_image();
    let out = tempfile::tempdir().expect("dir");
    let out_arg = out.path().to_string_lossy().into_owned();
    let args = [
        "calibrate",
        "--image",
        &image,
        "--stage",
        "2s",
        "--out",
        &out_arg,
    ];
    // Ctrl-C once the container is up, before the load.
    let (log, status) = kill_at(&args, "calibrate-stages", "-INT");
    let name = calibration_container(&log);
    assert!(!status.success(), "{log}");
    assert!(log.contains("interrupted (SIGINT)"), "{log}");
    assert!(!container_exists(&name), "{name} left behind:\n{log}");
    // SIGTERM in the middle of the load: the second stage is running.
    let mut command = Command::new(XTASK);
    command.args(args);
    let (log, status, _) = kill_when(command, "req/s offered", "-TERM");
    let name = calibration_container(&log);
    assert!(!status.success(), "{log}");
    assert!(log.contains("terminated (SIGTERM)"), "{log}");
    assert!(!container_exists(&name), "{name} left behind:\n{log}");
    // Nothing was written for a run that did not finish.
    assert!(
        leftovers(out.path()).is_empty(),
        "{:?}",
        leftovers(out.path())
    );
}
