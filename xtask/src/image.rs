//! `cargo xtask image build|load`: the server image, built offline, loaded into kind's nodes.
//!
//! `build`: a static release binary on the host, then `FROM scratch` + the binary through bollard.
//! The tag is the binary's content hash, so an unchanged build is a no-op.
//!
//! `load`: what `kind load docker-image` does, natively: ask each node whether it has the image
//! already, `docker save` once (one platform), stream the tar into `ctr images import` on every node
//! that needs it, concurrently with a progress bar each, then verify every node has it.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context, bail, ensure};
use bollard::Docker;
use bytes::Bytes;
use futures::StreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::cmd::cmd;
use crate::docker::{self, ImageFile, Node};
use crate::project_root;

/// Repository of the image the harness builds.
pub const REPOSITORY: &str = "iris-serve";
/// Size the image should stay under.
pub const SIZE_TARGET_BYTES: i64 = 15 * 1000 * 1000;
const SAVE_CHUNK: usize = 256 * 1024;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Build the static server binary and the FROM scratch image (offline; no-op when unchanged).
    Build,
    /// Load the image into every node of a kind cluster (skips nodes that have it; verifies).
    Load(LoadArgs),
}

#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// The kind cluster's name.
    #[arg(long, default_value = crate::cluster::DEFAULT_NAME)]
    pub cluster_name: String,
    /// The image to load (default: build it first, or reuse the unchanged build).
    #[arg(long)]
    pub image: Option<String>,
}

pub fn run(command: Command) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(crate::signals::interruptible(async {
        let docker = docker::connect().await?;
        match command {
            Command::Build => {
                let image = build(&docker).await?;
                println!(
                    "{} (id {}, {:.1} MB, {})",
                    image.reference,
                    image.id,
                    image.size as f64 / 1e6,
                    if image.built { "built" } else { "unchanged" }
                );
            }
            Command::Load(args) => {
                let reference = match args.image {
                    Some(r) => r,
                    None => build(&docker).await?.reference,
                };
                load(&docker, &reference, &args.cluster_name).await?;
            }
        }
        anyhow::Ok(())
    }))
}

#[derive(Debug, Clone)]
pub struct Image {
    pub reference: String,
    pub id: String,
    pub size: i64,
    /// False when an image with this content hash already existed.
    pub built: bool,
}

/// The Rust target triple of a static Linux build for this machine.
pub fn static_target() -> String {
    format!("{}-unknown-linux-gnu", std::env::consts::ARCH)
}

/// Compiles the static server binary and returns its bytes.
pub fn compile_static_binary() -> anyhow::Result<Vec<u8>> {
    let root = project_root();
    let target = static_target();
    cmd("cargo")
        .args(["build", "--release", "--locked", "-p", "iris-serve", "--target", &target, "--manifest-path"])
        .arg(root.join("Cargo.toml"))
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .hint(format!("a static build needs the {target} target (`rustup target add {target}`) and glibc's static libraries (libc6-dev)"))
        .run()?;
    let path = root.join("target").join(&target).join("release/iris-serve");
    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
}

/// Builds (or finds) the image of the current server code.
pub async fn build(docker: &Docker) -> anyhow::Result<Image> {
    let binary = compile_static_binary()?;
    package(docker, &binary).await
}

/// `FROM scratch` + the binary, tagged with the binary's content hash.
pub async fn package(docker: &Docker, binary: &[u8]) -> anyhow::Result<Image> {
    let hash = iris_serve::model::sha256_hex(binary);
    let reference = format!("{REPOSITORY}:{}", &hash[..16]);
    if let Ok(existing) = docker.inspect_image(&reference).await {
        eprintln!("  image {reference} is up to date");
        return Ok(Image {
            reference,
            id: existing.id.unwrap_or_default(),
            size: existing.size.unwrap_or(0),
            built: false,
        });
    }
    let labels = HashMap::from([
        (
            "org.opencontainers.image.title".to_owned(),
            "iris-serve".to_owned(),
        ),
        ("io.iris-serve.binary-sha256".to_owned(), hash.clone()),
    ]);
    let files = [ImageFile {
        path: "/iris-serve".to_owned(),
        bytes: binary.to_vec(),
        mode: 0o755,
    }];
    // Numeric user: there is no /etc/passwd in a scratch image, and "restricted" wants non-root.
    let tail = "USER 65532:65532\nEXPOSE 8080\nENTRYPOINT [\"/iris-serve\"]\n";
    let built = docker::build_scratch_image(docker, &reference, &files, tail, &labels).await?;
    let id = built.id.context("built image has no id")?;
    let size = built.size.unwrap_or(0);
    eprintln!(
        "  built {reference} ({:.1} MB{})",
        size as f64 / 1e6,
        if size > SIZE_TARGET_BYTES {
            ", over the 15 MB target"
        } else {
            ""
        }
    );
    Ok(Image {
        reference,
        id,
        size,
        built: true,
    })
}

/// What happened on one node.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeLoad {
    AlreadyPresent(String),
    Loaded(String),
}

/// The name containerd gives an image imported from `docker save` (Docker's short names are
/// expanded the way Docker expands them).
pub fn containerd_name(reference: &str) -> String {
    let first = reference.split('/').next().unwrap_or("");
    let has_registry = reference.contains('/')
        && (first.contains('.') || first.contains(':') || first == "localhost");
    if has_registry {
        reference.to_owned()
    } else if reference.contains('/') {
        format!("docker.io/{reference}")
    } else {
        format!("docker.io/library/{reference}")
    }
}

async fn node_has_image(docker: &Docker, node: &Node, reference: &str) -> anyhow::Result<bool> {
    let out = docker::exec(
        docker,
        &node.id,
        &["ctr", "--namespace=k8s.io", "images", "ls", "-q"],
        None,
    )
    .await
    .with_context(|| format!("asking node {} for its images", node.name))?;
    ensure!(
        out.exit_code == 0,
        "node {}: `ctr images ls` failed ({}): {}",
        node.name,
        out.exit_code,
        out.stderr.trim()
    );
    let wanted = containerd_name(reference);
    Ok(out.stdout.lines().any(|l| l.trim() == wanted))
}

/// The snapshotter the node's containerd uses for Kubernetes' images (kind reads it the same way).
async fn snapshotter(docker: &Docker, node: &Node) -> String {
    let Ok(out) = docker::exec(docker, &node.id, &["containerd", "config", "dump"], None).await
    else {
        return "overlayfs".to_owned();
    };
    parse_snapshotter(&out.stdout).unwrap_or_else(|| "overlayfs".to_owned())
}

/// The first `snapshotter = "..."` in a containerd config dump.
pub fn parse_snapshotter(config: &str) -> Option<String> {
    config.lines().find_map(|line| {
        let (key, value) = line.trim().split_once('=')?;
        (key.trim() == "snapshotter")
            .then(|| value.trim().trim_matches('"').to_owned())
            .filter(|v| !v.is_empty())
    })
}

fn platform() -> String {
    format!("linux/{}", crate::tools::go_arch())
}

/// Loads `reference` into every node of `cluster`; returns what happened per node.
pub async fn load(
    docker: &Docker,
    reference: &str,
    cluster: &str,
) -> anyhow::Result<Vec<NodeLoad>> {
    let nodes: Vec<Node> = docker::kind_nodes(docker, cluster)
        .await?
        .into_iter()
        .filter(|n| n.running)
        .collect();
    ensure!(
        !nodes.is_empty(),
        "no running node of kind cluster {cluster:?} (containers labelled {}={cluster}); create it with `cargo xtask cluster up`",
        docker::KIND_CLUSTER_LABEL
    );
    docker
        .inspect_image(reference)
        .await
        .with_context(|| format!("image {reference} is not in the local Docker engine; build it with `cargo xtask image build`"))?;

    let checks =
        futures::future::join_all(nodes.iter().map(|n| node_has_image(docker, n, reference))).await;
    let mut results = Vec::new();
    let mut missing = Vec::new();
    for (node, has) in nodes.iter().zip(checks) {
        if has? {
            eprintln!("  {}: already has {reference}", node.name);
            results.push(NodeLoad::AlreadyPresent(node.name.clone()));
        } else {
            missing.push(node.clone());
        }
    }
    if missing.is_empty() {
        return Ok(results);
    }

    // `docker save` once, one platform (the engine's own), shared by every node.
    let mut chunks = Vec::new();
    let mut saved = docker.export_image(reference);
    while let Some(chunk) = saved.next().await {
        chunks.push(chunk.with_context(|| format!("saving {reference}"))?);
    }
    let tar: Bytes = chunks.concat().into();
    let total = tar.len() as u64;
    let parts: Vec<Bytes> = (0..tar.len())
        .step_by(SAVE_CHUNK)
        .map(|at| tar.slice(at..(at + SAVE_CHUNK).min(tar.len())))
        .collect();

    let bars = MultiProgress::new();
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        bars.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let style = ProgressStyle::with_template("  {prefix:30} {bar:30} {bytes}/{total_bytes}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    let loads = missing.iter().map(|node| {
        let bar = Arc::new(bars.add(ProgressBar::new(total)));
        bar.set_style(style.clone());
        bar.set_prefix(node.name.clone());
        let parts = parts.clone();
        async move {
            let snapshotter = snapshotter(docker, node).await;
            let snapshotter_flag = format!("--snapshotter={snapshotter}");
            let platform_flag = format!("--platform={}", platform());
            let progress = {
                let bar = bar.clone();
                move |n: usize| bar.inc(n as u64)
            };
            let out = docker::exec(
                docker,
                &node.id,
                &[
                    "ctr",
                    "--namespace=k8s.io",
                    "images",
                    "import",
                    "--digests",
                    &platform_flag,
                    &snapshotter_flag,
                    "-",
                ],
                Some((parts, &progress)),
            )
            .await
            .with_context(|| format!("loading {reference} into node {}", node.name))?;
            bar.finish();
            if out.exit_code != 0 {
                bail!(
                    "loading {reference} into node {} failed (ctr exit {}): {}{}",
                    node.name,
                    out.exit_code,
                    out.stderr.trim(),
                    out.stdout.trim()
                );
            }
            eprintln!(
                "  {}: imported {reference} ({:.1} MB)",
                node.name,
                total as f64 / 1e6
            );
            anyhow::Ok(())
        }
    });
    let outcomes = futures::future::join_all(loads).await;
    let failures: Vec<String> = outcomes
        .into_iter()
        .filter_map(Result::err)
        .map(|e| format!("{e:#}"))
        .collect();
    ensure!(failures.is_empty(), "{}", failures.join("\n"));

    for node in &missing {
        ensure!(
            node_has_image(docker, node, reference).await?,
            "node {} does not list {} after the import: the load failed there",
            node.name,
            containerd_name(reference)
        );
        results.push(NodeLoad::Loaded(node.name.clone()));
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{FixtureNode, docker_or_skip, fake_binary, remove_image_blocking, unique};

    struct ImageGuard(Docker, String);
    impl Drop for ImageGuard {
        fn drop(&mut self) {
            remove_image_blocking(&self.0, &self.1);
        }
    }

    #[tokio::test]
    async fn package_is_offline_content_addressed_and_a_noop_when_unchanged() {
        let Some(docker) = docker_or_skip("image::package").await else {
            return;
        };
        let binary = fake_binary(&unique("bin"));
        let first = package(&docker, &binary).await.expect("build");
        let _guard = ImageGuard(docker.clone(), first.reference.clone());
        assert!(first.built);
        let hash = iris_serve::model::sha256_hex(&binary);
        assert_eq!(first.reference, format!("iris-serve:{}", &hash[..16]));
        let again = package(&docker, &binary).await.expect("no-op");
        assert!(!again.built);
        assert_eq!(again.id, first.id);
        let inspect = docker
            .inspect_image(&first.reference)
            .await
            .expect("inspect");
        let config = inspect.config.expect("config");
        assert_eq!(config.user.as_deref(), Some("65532:65532"));
        assert_eq!(config.entrypoint, Some(vec!["/iris-serve".to_owned()]));
        assert!(
            config
                .exposed_ports
                .expect("ports")
                .iter()
                .any(|p| p.starts_with("8080"))
        );
        assert!(first.size < SIZE_TARGET_BYTES);
    }

    #[tokio::test]
    async fn load_streams_into_every_node_then_skips_nodes_that_have_it() {
        let Some(docker) = docker_or_skip("image::load").await else {
            return;
        };
        let cluster = unique("iris-load");
        let image = package(&docker, &fake_binary(&cluster))
            .await
            .expect("build");
        let _guard = ImageGuard(docker.clone(), image.reference.clone());
        let _a = FixtureNode::start(&docker, &cluster, &format!("{cluster}-worker"), true)
            .await
            .expect("node a");
        let _b = FixtureNode::start(&docker, &cluster, &format!("{cluster}-worker2"), true)
            .await
            .expect("node b");
        let first = load(&docker, &image.reference, &cluster)
            .await
            .expect("load");
        assert_eq!(
            first,
            vec![
                NodeLoad::Loaded(format!("{cluster}-worker")),
                NodeLoad::Loaded(format!("{cluster}-worker2"))
            ]
        );
        let second = load(&docker, &image.reference, &cluster)
            .await
            .expect("second load");
        assert_eq!(
            second,
            vec![
                NodeLoad::AlreadyPresent(format!("{cluster}-worker")),
                NodeLoad::AlreadyPresent(format!("{cluster}-worker2"))
            ]
        );
    }

    #[tokio::test]
    async fn load_fails_loudly_naming_the_broken_node() {
        let Some(docker) = docker_or_skip("image::load broken node").await else {
            return;
        };
        let cluster = unique("iris-broken");
        let image = package(&docker, &fake_binary(&cluster))
            .await
            .expect("build");
        let _guard = ImageGuard(docker.clone(), image.reference.clone());
        let _ok = FixtureNode::start(&docker, &cluster, &format!("{cluster}-worker"), true)
            .await
            .expect("node");
        let _bad = FixtureNode::start(&docker, &cluster, &format!("{cluster}-worker2"), false)
            .await
            .expect("node");
        let err = load(&docker, &image.reference, &cluster)
            .await
            .expect_err("must fail");
        assert!(
            format!("{err:#}").contains(&format!("{cluster}-worker2")),
            "{err:#}"
        );
    }

    #[tokio::test]
    async fn load_without_a_cluster_says_how_to_make_one() {
        let Some(docker) = docker_or_skip("image::load no cluster").await else {
            return;
        };
        let err = load(&docker, "iris-serve:none", &unique("absent"))
            .await
            .expect_err("no nodes");
        assert!(err.to_string().contains("cargo xtask cluster up"), "{err}");
    }

    #[test]
    fn names_and_snapshotters() {
        assert_eq!(
            containerd_name("iris-serve:abc"),
            "docker.io/library/iris-serve:abc"
        );
        assert_eq!(containerd_name("me/app:1"), "docker.io/me/app:1");
        assert_eq!(
            containerd_name("registry.k8s.io/metrics-server/metrics-server:v0.9.0"),
            "registry.k8s.io/metrics-server/metrics-server:v0.9.0"
        );
        assert_eq!(containerd_name("localhost/x:1"), "localhost/x:1");
        let dump = "[plugins]\n  [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n    default_runtime_name = \"runc\"\n    snapshotter = \"overlayfs\"\n";
        assert_eq!(parse_snapshotter(dump).as_deref(), Some("overlayfs"));
        assert_eq!(parse_snapshotter("nothing here"), None);
    }
}
