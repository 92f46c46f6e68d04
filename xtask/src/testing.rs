//! Test fixtures that use the real Docker engine: a "kind node" that is containerd running in a
//! container built locally from the host's containerd binaries (kind's node images can't be
//! fetched here, and real kind nodes need --privileged).

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, bail};
use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{CreateContainerOptions, RemoveContainerOptions};

pub use crate::docker::remove_image_blocking;
use crate::docker::{self, ImageFile, KIND_CLUSTER_LABEL, KIND_ROLE_LABEL};

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

/// A unique name for this test run's objects.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{prefix}-{}-{nanos:x}", std::process::id())
}

const NODE_BINARIES: [&str; 4] = ["containerd", "ctr", "runc", "containerd-shim-runc-v2"];

/// The image of a containerd-only node, built from this machine's binaries and the libraries
/// they link (Debian's `containerd` and `runc` packages; docker.io depends on them).
pub async fn containerd_node_image(docker: &Docker) -> anyhow::Result<String> {
    // Tests run in parallel: build once, or concurrent builds leave untagged duplicates behind.
    static BUILT: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    BUILT
        .get_or_try_init(|| build_containerd_node_image(docker))
        .await
        .cloned()
}

async fn build_containerd_node_image(docker: &Docker) -> anyhow::Result<String> {
    let mut files = Vec::new();
    let mut hashes = String::new();
    let mut libs = std::collections::BTreeSet::new();
    for name in NODE_BINARIES {
        let path = which::which(name).with_context(|| {
            format!("{name} not found: install Debian's containerd and runc packages (apt-get install containerd runc)")
        })?;
        let bytes = std::fs::read(&path)?;
        hashes.push_str(&iris_serve::model::sha256_hex(&bytes));
        files.push(ImageFile {
            path: format!("/usr/bin/{name}"),
            bytes,
            mode: 0o755,
        });
        let ldd = crate::cmd::cmd("ldd").arg(&path).read().unwrap_or_default();
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
    for dir in ["/tmp", "/run", "/var/lib/containerd", "/etc/containerd"] {
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

/// A running containerd-in-a-container labelled as a node of kind cluster `cluster`.
pub struct FixtureNode {
    pub id: String,
    docker: Docker,
}

impl FixtureNode {
    /// `healthy: false` starts containerd on another socket, so `ctr` in it fails like a broken node.
    pub async fn start(
        docker: &Docker,
        cluster: &str,
        name: &str,
        healthy: bool,
    ) -> anyhow::Result<Self> {
        let image = containerd_node_image(docker).await?;
        let labels = HashMap::from([
            (KIND_CLUSTER_LABEL.to_owned(), cluster.to_owned()),
            (KIND_ROLE_LABEL.to_owned(), "worker".to_owned()),
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
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )
            .await
            .context("creating the containerd fixture node")?;
        let node = FixtureNode {
            id: created.id,
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

/// Removes a container (and its anonymous volumes) from a destructor or a panic path.
pub fn remove_container_blocking(docker: &Docker, id: &str) {
    let (docker, id) = (docker.clone(), id.to_owned());
    docker::block_on_thread(async move {
        let options = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        let _ = docker.remove_container(&id, Some(options)).await;
    });
}

/// A tiny static program's worth of bytes is not needed to test packaging: any file will do.
pub fn fake_binary(seed: &str) -> Vec<u8> {
    format!("not really a binary: {seed}").into_bytes()
}
