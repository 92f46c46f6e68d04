//! `cargo xtask doctor`: can this machine run the end-to-end test? Every finding is OK, WARN or
//! FAIL with the exact fix. Other commands run the checks they need first and stop on a FAIL.

use std::fmt;
use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;

use crate::platform::docker::DOCKER_HINT;
use crate::platform::kind::{self, KIND_INSTALL_HINT, KIND_VERSION, KindStatus};
use iris_load::nofile::{self, HARNESS_FILES, Limit};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Ok => "OK",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        })
    }
}

#[derive(Debug, Clone)]
pub struct Finding {
    pub check: &'static str,
    pub level: Level,
    pub detail: String,
    pub fix: Option<String>,
}

impl Finding {
    fn ok(check: &'static str, detail: impl Into<String>) -> Self {
        Finding {
            check,
            level: Level::Ok,
            detail: detail.into(),
            fix: None,
        }
    }
    fn warn(check: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Finding {
            check,
            level: Level::Warn,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
    fn fail(check: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Finding {
            check,
            level: Level::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// What a command needs checked.
#[derive(Debug, Clone, Copy, Default)]
pub struct Needs {
    pub kind: bool,
    pub host_port: Option<u16>,
    pub offline: bool,
    /// The most connections a load of this run opens (checked against the open-file limit).
    pub connections: Option<usize>,
}

/// Runs the checks, prints them, and fails with the first FAIL's fix.
pub async fn require(needs: Needs) -> anyhow::Result<()> {
    let findings = checks(needs).await;
    eprint!("{}", render(&findings));
    verdict(&findings)
}

/// The findings were printed just before: the error names the failed checks, not again their text.
pub fn verdict(findings: &[Finding]) -> anyhow::Result<()> {
    let failed: Vec<&str> = findings
        .iter()
        .filter(|f| f.level == Level::Fail)
        .map(|f| f.check)
        .collect();
    if failed.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "doctor: {} check(s) failed ({}); each FAIL above says what to fix",
        failed.len(),
        failed.join(", ")
    )
}

pub fn render(findings: &[Finding]) -> String {
    let mut out = String::from("doctor\n");
    for f in findings {
        out.push_str(&format!(
            "  {:<5} {:<10} {}\n",
            f.level.to_string(),
            f.check,
            f.detail
        ));
        if let Some(fix) = &f.fix {
            out.push_str(&format!("  {:<5} {:<10} fix: {fix}\n", "", ""));
        }
    }
    out
}

pub async fn checks(needs: Needs) -> Vec<Finding> {
    let mut findings = vec![docker_check().await];
    if needs.kind {
        findings.push(kind_check(needs.offline).await);
        findings.push(inotify_check(
            read_sysctl("fs/inotify/max_user_watches"),
            read_sysctl("fs/inotify/max_user_instances"),
        ));
    }
    findings.push(disk_check(Path::new("/var/lib/docker")));
    if let Some(port) = needs.host_port {
        findings.push(port_check(port));
    }
    if let Some(connections) = needs.connections {
        findings.push(nofile_check(Limit::current(), connections));
    }
    findings
}

async fn docker_check() -> Finding {
    let docker = match crate::platform::docker::connect().await {
        Ok(d) => d,
        Err(e) => {
            return Finding::fail(
                "docker",
                format!("not reachable: {}", e.root_cause()),
                DOCKER_HINT,
            );
        }
    };
    let version = docker
        .version()
        .await
        .ok()
        .and_then(|v| v.version)
        .unwrap_or_else(|| "?".to_owned());
    let info = docker.info().await.ok();
    let cgroup = info
        .as_ref()
        .map(|i| {
            format!(
                "cgroup driver {}, cgroup v{}",
                i.cgroup_driver
                    .as_ref()
                    .map_or("?".to_owned(), |d| d.to_string()),
                i.cgroup_version
                    .as_ref()
                    .map_or("?".to_owned(), |v| v.to_string())
            )
        })
        .unwrap_or_default();
    // Reachable is not enough: a broken bridge fails every container start (kind's nodes too).
    let mut started = Vec::new();
    for network in ["none", "bridge"] {
        if let Err(e) = crate::platform::docker::probe_container(&docker, network).await {
            crate::platform::docker::remove_probe_image(&docker).await;
            return Finding::fail(
                "docker",
                format!(
                    "Docker {version} answers, but a container on network {network:?} cannot run: {}",
                    e.root_cause()
                ),
                "restart the engine (`sudo systemctl restart docker`); if it persists, see its log (`journalctl -u docker`): kind's nodes need containers on a bridge network",
            );
        }
        started.push(network);
    }
    crate::platform::docker::remove_probe_image(&docker).await;
    Finding::ok(
        "docker",
        format!(
            "Docker {version}, {cgroup}; a container ran on network {}",
            started.join(" and ")
        ),
    )
}

async fn kind_check(offline: bool) -> Finding {
    kind_finding(kind::find_kind(), offline).await
}

async fn kind_finding(status: KindStatus, offline: bool) -> Finding {
    match status {
        KindStatus::Ready { path, from_cache } => Finding::ok(
            "kind",
            format!(
                "kind {KIND_VERSION} at {}{}",
                path.display(),
                if from_cache {
                    " (verified download)"
                } else {
                    ""
                }
            ),
        ),
        KindStatus::Newer { path, version } => Finding::warn(
            "kind",
            format!(
                "kind {version} at {}: newer than the tested {KIND_VERSION} (same config API, kind.x-k8s.io/v1alpha4), used as is",
                path.display()
            ),
            format!(
                "nothing to do; to run the tested release, put kind {KIND_VERSION} first on PATH (`go install sigs.k8s.io/kind@{KIND_VERSION}`)"
            ),
        ),
        KindStatus::Untrusted { path, reason } => Finding::fail(
            "kind",
            format!("refusing the cached kind at {}: {reason}", path.display()),
            format!(
                "delete it (`rm {}`); the next run fetches and verifies the release",
                path.display()
            ),
        ),
        status => {
            let found = match &status {
                KindStatus::OtherVersion { path, version } => format!(
                    "kind {version} at {} is not usable (the pinned {KIND_VERSION} or a later v0.x is)",
                    path.display()
                ),
                _ => "kind is not installed".to_owned(),
            };
            if offline {
                return Finding::fail(
                    "kind",
                    format!("{found}; --offline forbids downloading"),
                    KIND_INSTALL_HINT,
                );
            }
            match download_reachable().await {
                Ok(()) => Finding::warn(
                    "kind",
                    format!("{found}; the pinned release will be downloaded and checksum-verified"),
                    format!("nothing to do (or install kind {KIND_VERSION} on PATH)"),
                ),
                Err(e) => Finding::fail(
                    "kind",
                    format!("{found}, and it cannot be downloaded here ({e})"),
                    KIND_INSTALL_HINT,
                ),
            }
        }
    }
}

async fn download_reachable() -> anyhow::Result<()> {
    let url = format!(
        "{}/{KIND_VERSION}/kind-{}.sha256sum",
        kind::KIND_BASE_URL,
        kind::platform()
    );
    let client = kind::http_client()?;
    let response =
        tokio::time::timeout(std::time::Duration::from_secs(10), client.get(&url).send())
            .await
            .map_err(|_| anyhow::anyhow!("no answer from {url} within 10s"))?
            .map_err(|e| {
                // One line of cause: the innermost error (e.g. the DNS failure), not the chain.
                let cause = anyhow::Error::from(e).root_cause().to_string();
                anyhow::anyhow!("{}: {cause}", kind::KIND_BASE_URL)
            })?;
    response
        .error_for_status()
        .map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
    Ok(())
}

fn read_sysctl(name: &str) -> Option<u64> {
    std::fs::read_to_string(Path::new("/proc/sys").join(name))
        .ok()?
        .trim()
        .parse()
        .ok()
}

pub const INOTIFY_WATCHES: u64 = 524_288;
pub const INOTIFY_INSTANCES: u64 = 512;

pub fn inotify_check(watches: Option<u64>, instances: Option<u64>) -> Finding {
    match (watches, instances) {
        (Some(w), Some(i)) if w >= INOTIFY_WATCHES && i >= INOTIFY_INSTANCES => Finding::ok(
            "inotify",
            format!("max_user_watches {w}, max_user_instances {i}"),
        ),
        (Some(w), Some(i)) => Finding::warn(
            "inotify",
            format!(
                "max_user_watches {w}, max_user_instances {i}: multi-node kind needs >= {INOTIFY_WATCHES} and >= {INOTIFY_INSTANCES} (pods fail with \"too many open files\")"
            ),
            format!(
                "sudo sysctl fs.inotify.max_user_watches={INOTIFY_WATCHES} fs.inotify.max_user_instances={INOTIFY_INSTANCES}"
            ),
        ),
        _ => Finding::warn(
            "inotify",
            "cannot read the inotify limits",
            "check /proc/sys/fs/inotify",
        ),
    }
}

fn disk_check(docker_root: &Path) -> Finding {
    let path = if docker_root.exists() {
        docker_root
    } else {
        Path::new("/")
    };
    match rustix::fs::statvfs(path) {
        Ok(s) => {
            let free_gib = (s.f_bavail as f64 * s.f_frsize as f64) / (1024.0 * 1024.0 * 1024.0);
            let detail = format!("{free_gib:.1} GiB free at {}", path.display());
            let fix =
                "free disk space (`docker system prune` removes unused images and containers)";
            if free_gib < 3.0 {
                Finding::fail("disk", detail + " (a kind cluster needs about 5 GiB)", fix)
            } else if free_gib < 8.0 {
                Finding::warn("disk", detail + " (tight for a kind cluster)", fix)
            } else {
                Finding::ok("disk", detail)
            }
        }
        Err(e) => Finding::warn(
            "disk",
            format!("cannot read free space at {}: {e}", path.display()),
            "check `df -h`",
        ),
    }
}

/// The open-file limit (already raised to the hard limit at start) against the largest load.
pub fn nofile_check(limit: Limit, connections: usize) -> Finding {
    match nofile::check(limit, connections) {
        Ok(()) => Finding::ok(
            "nofile",
            format!(
                "open-file limit {} fits the largest load: {connections} connections + {HARNESS_FILES}",
                limit.soft.map_or("unlimited".to_owned(), |n| n.to_string())
            ),
        ),
        Err(too_low) => Finding::fail("nofile", too_low.detail(), too_low.fix()),
    }
}

pub fn port_check(port: u16) -> Finding {
    match TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
        Ok(_) => Finding::ok(
            "port",
            format!("127.0.0.1:{port} is free for the app's NodePort"),
        ),
        Err(e) => Finding::fail(
            "port",
            format!("127.0.0.1:{port} is not free: {e}"),
            format!(
                "pass --host-port with a free port, or stop what listens there (`ss -ltnp 'sport = :{port}'`)"
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inotify_limits() {
        assert_eq!(inotify_check(Some(524_288), Some(512)).level, Level::Ok);
        let low = inotify_check(Some(8192), Some(128));
        assert_eq!(low.level, Level::Warn);
        assert!(
            low.fix
                .expect("fix")
                .contains("sysctl fs.inotify.max_user_watches=524288")
        );
    }

    #[test]
    fn a_busy_port_fails_with_a_fix() {
        let held = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = held.local_addr().expect("addr").port();
        let f = port_check(port);
        assert_eq!(f.level, Level::Fail);
        assert!(f.fix.expect("fix").contains("--host-port"));
        drop(held);
        assert_eq!(port_check(port).level, Level::Ok);
    }

    #[test]
    fn the_open_file_limit_must_fit_the_largest_load() {
        let desktop = Limit {
            soft: Some(1024),
            hard: Some(1024),
        };
        let f = nofile_check(desktop, 2000);
        assert_eq!(f.level, Level::Fail);
        assert!(f.detail.contains("need 2256 open files"), "{}", f.detail);
        assert!(
            f.fix.as_deref().is_some_and(|x| x.contains("nofile 2256")),
            "{f:?}"
        );
        let raised = Limit {
            soft: Some(1_048_576),
            hard: Some(1_048_576),
        };
        let ok = nofile_check(raised, 2000);
        assert_eq!(ok.level, Level::Ok);
        assert!(ok.detail.contains("1048576"), "{}", ok.detail);
    }

    #[tokio::test]
    async fn a_newer_kind_is_a_warning_naming_both_versions_even_offline() {
        let f = kind_finding(
            KindStatus::Newer {
                path: "/usr/bin/kind".into(),
                version: "v0.33.0".to_owned(),
            },
            true,
        )
        .await;
        assert_eq!(f.level, Level::Warn, "{f:?}");
        assert!(
            f.detail.contains("v0.33.0") && f.detail.contains(&format!("tested {KIND_VERSION}")),
            "{}",
            f.detail
        );
        let older = kind_finding(
            KindStatus::OtherVersion {
                path: "/usr/bin/kind".into(),
                version: "v0.31.0".to_owned(),
            },
            true,
        )
        .await;
        assert_eq!(older.level, Level::Fail, "{older:?}");
        assert!(
            older
                .fix
                .as_deref()
                .is_some_and(|x| x.contains("go install sigs.k8s.io/kind@v0.32.0")),
            "{older:?}"
        );
    }

    #[test]
    fn each_failure_is_said_once_with_its_fix() {
        let findings = vec![
            Finding::ok("docker", "fine"),
            Finding::fail("kind", "missing", "install it"),
            Finding::fail("port", "busy", "--host-port"),
        ];
        let err = verdict(&findings).expect_err("fails").to_string();
        // The rendered findings carry the details and fixes; the error only names the checks.
        assert!(err.contains("2 check(s) failed (kind, port)"), "{err}");
        assert!(!err.contains("install it"), "said twice: {err}");
        let shown = render(&findings);
        assert!(
            shown.contains("FAIL  kind") && shown.contains("fix: install it"),
            "{shown}"
        );
        assert!(verdict(&findings[..1]).is_ok());
    }
}
