//! Test fixtures that use the real Docker engine: a "kind node" that is containerd running in a
//! container built locally from containerd 2.x binaries (kind's node images can't be fetched here,
//! and real kind nodes need --privileged). It stands for kind v0.32.0's nodes (containerd 2.3):
//! same config file shape, container names and labels.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, bail};
use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::CreateContainerOptions;

use crate::platform::docker::{self, ImageFile, KIND_CLUSTER_LABEL, KIND_ROLE_LABEL};
pub use crate::platform::docker::{remove_container_blocking, remove_image_blocking};

/// The engine, or None on a developer's machine without one (loudly). In CI (`CI` set) a missing
/// engine fails the test instead: those tests must run there.
pub async fn docker_or_skip(test: &str) -> Option<Docker> {
    match docker::connect().await {
        Ok(d) => Some(d),
        Err(e) if std::env::var_os("CI").is_some() => {
            panic!("{test} needs Docker and CI is set: {e:#}")
        }
        Err(e) => {
            eprintln!("\n*** SKIPPING {test}: no Docker engine ({e:#}) ***\n");
            None
        }
    }
}

/// Every engine the image tests must pass on: the default one, and the one with Docker's
/// containerd image store (`IRIS_TEST_DOCKER_CONTAINERD_STORE`, started by `.ci/engine.sh`; the
/// default store of fresh Docker 29 installs). In CI both are required.
pub async fn engines_or_skip(test: &str) -> Vec<(&'static str, Docker)> {
    let Some(default) = docker_or_skip(test).await else {
        return Vec::new();
    };
    let mut engines = vec![("classic image store", default)];
    match std::env::var("IRIS_TEST_DOCKER_CONTAINERD_STORE") {
        Ok(host) => match docker::connect_to(Some(&host)).await {
            Ok(d) => engines.push(("containerd image store", d)),
            Err(e) => panic!("{test}: the containerd-image-store engine at {host}: {e:#}"),
        },
        Err(_) if std::env::var_os("CI").is_some() => panic!(
            "{test} must also run on Docker's containerd image store and CI is set: \
             IRIS_TEST_DOCKER_CONTAINERD_STORE is unset (run `eval \"$(bash .ci/engine.sh)\"`)"
        ),
        Err(_) => eprintln!(
            "\n*** {test}: containerd image store NOT tested (IRIS_TEST_DOCKER_CONTAINERD_STORE unset; see .ci/engine.sh) ***\n"
        ),
    }
    engines
}

/// A unique name for this test run's objects.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{prefix}-{}-{nanos:x}", std::process::id())
}

const NODE_BINARIES: [&str; 4] = ["containerd", "ctr", "runc", "containerd-shim-runc-v2"];

/// The oldest versions the tests may run against: what users run (GitHub's ubuntu-24.04 runners
/// have Docker 28; kind v0.32's node image ships containerd 2.3).
pub const MIN_ENGINE_MAJOR: u64 = 28;
pub const MIN_FIXTURE_CONTAINERD_MAJOR: u64 = 2;

/// Where the fixture's containerd binaries come from: `IRIS_FIXTURE_BIN` (set by
/// `.ci/engine.sh`: Debian unstable's containerd 2.x), else this machine's PATH.
pub fn node_binary(name: &str) -> anyhow::Result<std::path::PathBuf> {
    if let Some(dir) = std::env::var_os("IRIS_FIXTURE_BIN") {
        let path = std::path::Path::new(&dir).join(name);
        anyhow::ensure!(
            path.is_file(),
            "IRIS_FIXTURE_BIN has no {name} ({})",
            path.display()
        );
        return Ok(path);
    }
    which::which(name).with_context(|| {
        format!("{name} not found: run `eval \"$(bash .ci/engine.sh)\"` (containerd 2.x for the fixture), or set IRIS_FIXTURE_BIN")
    })
}

/// `containerd --version` of the binary the fixture nodes run, e.g. "2.1.9+unknown".
pub fn fixture_containerd_version() -> anyhow::Result<String> {
    let out = crate::platform::process::cmd(node_binary("containerd")?)
        .arg("--version")
        .read()?;
    // "containerd github.com/containerd/containerd/v2 2.1.9+unknown <commit>"
    out.split_whitespace()
        .nth(2)
        .map(|v| v.trim_start_matches('v').to_owned())
        .with_context(|| format!("unexpected `containerd --version` output: {out}"))
}

/// The leading number of a version string ("28.5.2+dfsg4" -> 28).
pub fn major_version(version: &str) -> Option<u64> {
    version
        .trim_start_matches('v')
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// The node's `/etc/containerd/config.toml`, shaped like the one kind v0.32.0's node image ships
/// (kind's `images/base/files/etc/containerd/config.toml`): a version 2 file whose CRI plugin names
/// the snapshotter. containerd 2.x migrates it on start, so `containerd config dump` then reports
/// version 3 (2.0/2.1) or 4 (2.2+) with the value moved to `io.containerd.cri.v1.images`: the
/// path the image load has to read. Only what matters to image loading is kept.
pub const KIND_NODE_CONTAINERD_CONFIG: &str = r#"version = 2

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.10"
  tolerate_missing_hugepages_controller = true
  restrict_oom_score_adj = false

[plugins."io.containerd.grpc.v1.cri".containerd]
  discard_unpacked_layers = true
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
"#;

/// The image of a containerd-only node, built from the fixture's binaries and the libraries
/// they link, with kind's containerd config.
pub async fn containerd_node_image(docker: &Docker) -> anyhow::Result<String> {
    let mut files = vec![ImageFile {
        path: "/etc/containerd/config.toml".to_owned(),
        bytes: KIND_NODE_CONTAINERD_CONFIG.as_bytes().to_vec(),
        mode: 0o644,
    }];
    let mut hashes = iris_serve::model::sha256_hex(KIND_NODE_CONTAINERD_CONFIG.as_bytes());
    let mut libs = std::collections::BTreeSet::new();
    for name in NODE_BINARIES {
        let path = node_binary(name)?;
        let bytes = std::fs::read(&path)?;
        hashes.push_str(&iris_serve::model::sha256_hex(&bytes));
        files.push(ImageFile {
            path: format!("/usr/bin/{name}"),
            bytes,
            mode: 0o755,
        });
        let ldd = crate::platform::process::cmd("ldd")
            .arg(&path)
            .read()
            .unwrap_or_default();
        for lib in ldd.split_whitespace().filter(|w| w.starts_with('/')) {
            libs.insert(lib.to_owned());
        }
    }
    for lib in libs {
        let real = std::fs::canonicalize(&lib)?;
        files.push(ImageFile {
            path: lib.clone(),
            bytes: std::fs::read(&real)?,
            mode: 0o755,
        });
    }
    for dir in ["/tmp", "/run", "/var/lib/containerd"] {
        files.push(ImageFile {
            path: format!("{dir}/.keep"),
            bytes: Vec::new(),
            mode: 0o644,
        });
    }
    let tag = format!(
        "iris-serve-test/containerd-node:{}",
        &iris_serve::model::sha256_hex(hashes.as_bytes())[..12]
    );
    // Tests run in parallel, on one engine or two: build once per engine and tag, or concurrent
    // builds leave untagged duplicates behind.
    static BUILDS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _one_at_a_time = BUILDS.lock().await;
    if docker.inspect_image(&tag).await.is_err() {
        docker::build_scratch_image(
            docker,
            &tag,
            &files,
            "ENV PATH=/usr/bin:/usr/sbin:/bin\nENTRYPOINT [\"containerd\"]\n",
            &HashMap::new(),
        )
        .await?;
    }
    Ok(tag)
}

/// A running containerd-in-a-container named and labelled as kind names and labels its nodes.
pub struct FixtureNode {
    pub id: String,
    pub name: String,
    docker: Docker,
}

impl FixtureNode {
    /// A node of kind cluster `cluster` with `role` ("control-plane" or "worker") and kind's
    /// container name for it. `healthy: false` starts containerd on another socket, so `ctr` in it
    /// fails like a broken node.
    pub async fn start(
        docker: &Docker,
        cluster: &str,
        name: &str,
        role: &str,
        healthy: bool,
    ) -> anyhow::Result<Self> {
        let image = containerd_node_image(docker).await?;
        let labels = HashMap::from([
            (KIND_CLUSTER_LABEL.to_owned(), cluster.to_owned()),
            (KIND_ROLE_LABEL.to_owned(), role.to_owned()),
        ]);
        let cmd = if healthy {
            vec![]
        } else {
            vec!["--address".to_owned(), "/run/elsewhere.sock".to_owned()]
        };
        let created = docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name.to_owned()),
                    ..Default::default()
                }),
                ContainerCreateBody {
                    image: Some(image),
                    cmd: Some(cmd),
                    labels: Some(labels),
                    // overlayfs inside needs a non-overlay /var/lib/containerd, and mount rights.
                    volumes: Some(vec!["/var/lib/containerd".to_owned()]),
                    host_config: Some(HostConfig {
                        cap_add: Some(vec!["SYS_ADMIN".to_owned()]),
                        security_opt: Some(vec![
                            "seccomp=unconfined".to_owned(),
                            "apparmor=unconfined".to_owned(),
                        ]),
                        // Image loading needs no network (and the containerd-store test engine
                        // runs without a bridge).
                        network_mode: Some("none".to_owned()),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )
            .await
            .context("creating the containerd fixture node")?;
        let node = FixtureNode {
            id: created.id,
            name: name.to_owned(),
            docker: docker.clone(),
        };
        docker
            .start_container(
                &node.id,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await
            .context("starting the containerd fixture node")?;
        if healthy {
            node.wait_ready().await?;
        }
        Ok(node)
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
        for _ in 0..100 {
            if let Ok(out) = docker::exec(&self.docker, &self.id, &["ctr", "version"], None).await
                && out.exit_code == 0
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bail!("containerd in the fixture node never answered `ctr version`")
    }
}

impl Drop for FixtureNode {
    fn drop(&mut self) {
        remove_container_blocking(&self.docker, &self.id);
    }
}

/// The nodes of a fixture kind cluster: `<cluster>-control-plane`, then `<cluster>-worker`,
/// `<cluster>-worker2`, ... as kind names them.
pub async fn fixture_cluster(
    docker: &Docker,
    cluster: &str,
    workers: usize,
) -> anyhow::Result<Vec<FixtureNode>> {
    let mut names = vec![(format!("{cluster}-control-plane"), "control-plane")];
    for i in 1..=workers {
        let suffix = if i == 1 { String::new() } else { i.to_string() };
        names.push((format!("{cluster}-worker{suffix}"), "worker"));
    }
    let started = futures::future::join_all(
        names
            .iter()
            .map(|(name, role)| FixtureNode::start(docker, cluster, name, role, true)),
    )
    .await;
    started.into_iter().collect()
}

/// A tiny static program's worth of bytes is not needed to test packaging: any file will do.
pub fn fake_binary(seed: &str) -> Vec<u8> {
    format!("not really a binary: {seed}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stack the tests ran against, printed, and held to what users run.
    #[tokio::test]
    async fn the_tests_meet_the_versions_users_run() {
        let Some(docker) = docker_or_skip("stack versions").await else {
            return;
        };
        let engine = docker.version().await.expect("engine version");
        let server = engine.version.clone().unwrap_or_default();
        let containerd = fixture_containerd_version().expect("fixture containerd");
        eprintln!(
            "stack under test: Docker Engine {server} (API {}, client speaks {}), fixture containerd {containerd} (stands for kind v0.32.0's containerd 2.3)",
            engine.api_version.as_deref().unwrap_or("?"),
            docker.client_version()
        );
        let engine_ok = major_version(&server).is_some_and(|m| m >= MIN_ENGINE_MAJOR);
        let containerd_ok =
            major_version(&containerd).is_some_and(|m| m >= MIN_FIXTURE_CONTAINERD_MAJOR);
        if std::env::var_os("CI").is_some() {
            assert!(
                engine_ok,
                "Docker Engine {server} is older than {MIN_ENGINE_MAJOR}: users and GitHub's runners run 28+ (see .ci/engine.sh)"
            );
            assert!(
                containerd_ok,
                "the fixture's containerd {containerd} is older than {MIN_FIXTURE_CONTAINERD_MAJOR}.0: kind v0.32's nodes run 2.3 (see .ci/engine.sh)"
            );
        } else if !(engine_ok && containerd_ok) {
            eprintln!(
                "\n*** the stack under test is OLDER than what users run (Docker {server}, containerd {containerd}): run `eval \"$(bash .ci/engine.sh)\"` ***\n"
            );
        }
        // The client must speak the engine's version (or bollard's, if the engine is newer), not
        // bollard's newer default against an older engine.
        let numeric =
            |v: &str| -> Vec<u32> { v.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
        let server_api = engine.api_version.clone().unwrap_or_default();
        let bollard_default = bollard::API_DEFAULT_VERSION.to_string();
        let expected = std::cmp::min_by_key(server_api, bollard_default, |v| numeric(v));
        assert_eq!(
            docker.client_version().to_string(),
            expected,
            "the client did not negotiate the API version with the engine"
        );
    }

    #[test]
    fn major_versions() {
        assert_eq!(major_version("28.5.2+dfsg4"), Some(28));
        assert_eq!(major_version("v2.1.9+unknown"), Some(2));
        assert_eq!(major_version("1.6.20~ds1"), Some(1));
        assert_eq!(major_version("dev"), None);
    }
}
