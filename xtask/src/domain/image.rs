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

use crate::platform::docker::{self, ImageFile, Node};
use crate::platform::oci::containerd_name;
use crate::platform::paths::project_root;
use crate::platform::process::cmd;

/// Repository of the server image the harness builds.
pub const REPOSITORY: &str = "iris-serve";
/// Size the server image should stay under.
pub const SIZE_TARGET_BYTES: i64 = 15 * 1000 * 1000;
/// Repository of the load runner's image.
pub const RUNNER_REPOSITORY: &str = "iris-load-runner";

/// An image the harness builds: one static binary of the workspace in `FROM scratch`.
#[derive(Debug, Clone, Copy)]
pub struct Artifact {
    pub package: &'static str,
    pub binary: &'static str,
    pub repository: &'static str,
    /// The Dockerfile after `FROM scratch` and the binary's `COPY`.
    pub tail: &'static str,
    pub size_target_bytes: i64,
}

// Numeric users: there is no /etc/passwd in a scratch image, and "restricted" wants non-root.
pub const SERVER: Artifact = Artifact {
    package: "iris-serve",
    binary: "iris-serve",
    repository: REPOSITORY,
    tail: "USER 65532:65532\nEXPOSE 8080\nENTRYPOINT [\"/iris-serve\"]\n",
    size_target_bytes: SIZE_TARGET_BYTES,
};

pub const RUNNER: Artifact = Artifact {
    package: "iris-load",
    binary: "iris-load-runner",
    repository: RUNNER_REPOSITORY,
    tail: "USER 65532:65532\nENTRYPOINT [\"/iris-load-runner\"]\n",
    size_target_bytes: 10 * 1000 * 1000,
};
const SAVE_CHUNK: usize = 256 * 1024;

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

/// Compiles an artifact's static binary and returns its bytes.
pub async fn compile_static(artifact: &Artifact) -> anyhow::Result<Vec<u8>> {
    let root = project_root();
    let target = static_target();
    cmd("cargo")
        .args(["build", "--release", "--locked", "-p", artifact.package, "--bin", artifact.binary, "--target", &target, "--manifest-path"])
        .arg(root.join("Cargo.toml"))
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .hint(format!("a static build needs the {target} target (`rustup target add {target}`) and glibc's static libraries (libc6-dev)"))
        .run_async()
        .await?;
    let path = root
        .join("target")
        .join(&target)
        .join("release")
        .join(artifact.binary);
    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
}

/// Builds (or finds) the image of the current server code.
pub async fn build(docker: &Docker) -> anyhow::Result<Image> {
    build_artifact(docker, &SERVER).await
}

/// Builds (or finds) the load runner's image of the current engine code.
pub async fn build_runner(docker: &Docker) -> anyhow::Result<Image> {
    build_artifact(docker, &RUNNER).await
}

pub async fn build_artifact(docker: &Docker, artifact: &Artifact) -> anyhow::Result<Image> {
    let binary = compile_static(artifact).await?;
    package_artifact(docker, artifact, &binary).await
}

/// `FROM scratch` + an artifact's binary, tagged with the binary's content hash.
pub async fn package_artifact(
    docker: &Docker,
    artifact: &Artifact,
    binary: &[u8],
) -> anyhow::Result<Image> {
    let hash = iris_serve::model::sha256_hex(binary);
    let reference = format!("{}:{}", artifact.repository, &hash[..16]);
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
            artifact.repository.to_owned(),
        ),
        ("io.iris-serve.binary-sha256".to_owned(), hash.clone()),
    ]);
    let files = [ImageFile {
        path: format!("/{}", artifact.binary),
        bytes: binary.to_vec(),
        mode: 0o755,
    }];
    let built =
        docker::build_scratch_image(docker, &reference, &files, artifact.tail, &labels).await?;
    let id = built.id.context("built image has no id")?;
    let size = built.size.unwrap_or(0);
    eprintln!(
        "  built {reference} ({:.1} MB{})",
        size as f64 / 1e6,
        if size > artifact.size_target_bytes {
            format!(
                ", over the {} MB target",
                artifact.size_target_bytes / 1_000_000
            )
        } else {
            String::new()
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

/// The digest of the image the node's containerd (namespace `k8s.io`, where the kubelet looks)
/// has under `name`, if it has one: `ctr images ls name==<name>`'s DIGEST column.
async fn node_image_digest(
    docker: &Docker,
    node: &Node,
    name: &str,
) -> anyhow::Result<Option<String>> {
    let filter = format!("name=={name}");
    let out = docker::exec(
        docker,
        &node.id,
        &["ctr", "--namespace=k8s.io", "images", "ls", &filter],
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
    Ok(parse_images_ls(&out.stdout, name))
}

/// The DIGEST column of `name`'s row in `ctr images ls` output (REF TYPE DIGEST SIZE ...).
pub fn parse_images_ls(listing: &str, name: &str) -> Option<String> {
    listing.lines().skip(1).find_map(|line| {
        let mut columns = line.split_whitespace();
        (columns.next() == Some(name))
            .then(|| columns.nth(1).map(str::to_owned))
            .flatten()
    })
}

/// Our own builds are tagged with their binary's content hash (`iris-serve:<16 hex>`): a node
/// that lists the name has the content. Anything else (metrics-server from a bundle, an image
/// passed with --image) can change under the same name, so nodes are compared by digest.
pub fn is_content_addressed(reference: &str) -> bool {
    reference
        .strip_prefix(REPOSITORY)
        .and_then(|r| r.strip_prefix(':'))
        .is_some_and(|tag| {
            tag.len() == 16
                && tag
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
}

/// The snapshotter the node's containerd uses for Kubernetes' images, read from
/// `containerd config dump` the way kind reads it.
async fn snapshotter(docker: &Docker, node: &Node) -> anyhow::Result<String> {
    let out = docker::exec(docker, &node.id, &["containerd", "config", "dump"], None)
        .await
        .with_context(|| format!("asking node {} for its containerd config", node.name))?;
    ensure!(
        out.exit_code == 0,
        "node {}: `containerd config dump` failed ({}): {}",
        node.name,
        out.exit_code,
        out.stderr.trim()
    );
    parse_snapshotter(&out.stdout).with_context(|| {
        format!(
            "node {}: reading the snapshotter from `containerd config dump`",
            node.name
        )
    })
}

/// The CRI image snapshotter in a containerd config dump, by the dump's config version (as kind's
/// `nodeutils.parseSnapshotter` does): version 2 (containerd 1.x, and 2.x reading a v2 file) keeps it
/// at `plugins."io.containerd.grpc.v1.cri".containerd.snapshotter`; versions 3 (containerd 2.0/2.1)
/// and 4 (2.2+, kind v0.32's nodes run 2.3) at `plugins."io.containerd.cri.v1.images".snapshotter`.
/// Absent: containerd's default, `overlayfs`.
pub fn parse_snapshotter(dump: &str) -> anyhow::Result<String> {
    let config: toml::Table = dump.parse().context("the dump is not valid TOML")?;
    let version = config
        .get("version")
        .and_then(toml::Value::as_integer)
        .context("the dump has no integer `version`")?;
    let path: &[&str] = match version {
        2 => &[
            "plugins",
            "io.containerd.grpc.v1.cri",
            "containerd",
            "snapshotter",
        ],
        3 | 4 => &["plugins", "io.containerd.cri.v1.images", "snapshotter"],
        other => bail!(
            "unknown containerd config version {other} (known: 2 for containerd 1.x, 3 and 4 for 2.x)"
        ),
    };
    let mut value = config.get(path[0]);
    for key in &path[1..] {
        value = value.and_then(|v| v.get(key));
    }
    match value {
        None => Ok("overlayfs".to_owned()),
        Some(toml::Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(other) => bail!("{} is {other:?}, not a snapshotter name", path.join(".")),
    }
}

fn platform() -> String {
    format!("linux/{}", crate::platform::kind::go_arch())
}

async fn export(docker: &Docker, reference: &str) -> anyhow::Result<Bytes> {
    let mut chunks = Vec::new();
    let mut saved = docker.export_image(reference);
    while let Some(chunk) = saved.next().await {
        chunks.push(chunk.with_context(|| format!("saving {reference}"))?);
    }
    Ok(chunks.concat().into())
}

/// What a node must hold for `reference`: the name containerd gives the image, and (for images
/// not named by their content) the digest that name must point at; for a reference pinned by
/// digest, also the `name@digest` the kubelet resolves it by.
struct Wanted {
    name: String,
    digest: Option<String>,
    by_digest: Option<String>,
}

impl Wanted {
    fn holds(&self, name: Option<&str>, by_digest: Option<&str>) -> bool {
        let name_ok = match (&self.digest, name) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(wanted), Some(found)) => wanted == found,
        };
        name_ok
            && match &self.by_digest {
                None => true,
                Some(_) => by_digest.is_some() && by_digest == self.digest.as_deref(),
            }
    }
}

async fn node_state(
    docker: &Docker,
    node: &Node,
    wanted: &Wanted,
) -> anyhow::Result<(Option<String>, Option<String>)> {
    let name = node_image_digest(docker, node, &wanted.name).await?;
    let by_digest = match &wanted.by_digest {
        Some(d) => node_image_digest(docker, node, d).await?,
        None => None,
    };
    Ok((name, by_digest))
}

/// Loads `reference` into every node of `cluster`; returns what happened per node. A reference
/// may be pinned (`name:tag@sha256:...`): the engine's image must then be that digest, and the
/// nodes get the `name@sha256:...` name too, which is how the kubelet resolves a pinned image.
pub async fn load(
    docker: &Docker,
    reference: &str,
    cluster: &str,
) -> anyhow::Result<Vec<NodeLoad>> {
    let nodes = docker::running_kind_nodes(docker, cluster).await?;
    docker
        .inspect_image(reference)
        .await
        .with_context(|| format!("image {reference} is not in the local Docker engine; build it (`cargo xtask image build` for the Iris server, your own build for your service) or pull it"))?;

    let (tag_ref, pinned) = match reference.split_once('@') {
        Some((tag_ref, digest)) => (tag_ref, Some(digest)),
        None => (reference, None),
    };
    let own = is_content_addressed(reference);
    // `docker save` once, one platform (the engine's own), shared by every node. Images not
    // named by their content are saved first: the saved tar says which digest the nodes'
    // containerd will record for them, and that is what the nodes are compared by.
    let mut saved = None;
    let mut wanted = Wanted {
        name: containerd_name(tag_ref),
        digest: None,
        by_digest: None,
    };
    if !own {
        let tar = export(docker, tag_ref).await?;
        let digest = crate::platform::oci::index_digest(&tar[..])
            .with_context(|| format!("reading the saved {tag_ref}"))?;
        if let Some(pinned) = pinned {
            ensure!(
                digest == pinned,
                "this engine's {tag_ref} is {digest}, not the pinned {pinned}"
            );
            let name = wanted
                .name
                .rsplit_once(':')
                .map_or(wanted.name.as_str(), |(n, _)| n);
            wanted.by_digest = Some(format!("{name}@{pinned}"));
        }
        wanted.digest = Some(digest);
        saved = Some(tar);
    }

    let checks =
        futures::future::join_all(nodes.iter().map(|n| node_state(docker, n, &wanted))).await;
    let mut results = Vec::new();
    let mut missing = Vec::new();
    for (node, state) in nodes.iter().zip(checks) {
        let (name, by_digest) = state?;
        if wanted.holds(name.as_deref(), by_digest.as_deref()) {
            eprintln!("  {}: already has {reference}", node.name);
            results.push(NodeLoad::AlreadyPresent(node.name.clone()));
        } else {
            if let Some(stale) = name {
                eprintln!(
                    "  {}: has {} at {stale}, not {}: importing again",
                    node.name,
                    wanted.name,
                    wanted.digest.as_deref().unwrap_or("?")
                );
            }
            missing.push(node.clone());
        }
    }
    if missing.is_empty() {
        return Ok(results);
    }

    let tar: Bytes = match saved {
        Some(tar) => tar,
        None => export(docker, tag_ref).await?,
    };
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
    let wanted = &wanted;
    let loads = missing.iter().map(|node| {
        let bar = Arc::new(bars.add(ProgressBar::new(total)));
        bar.set_style(style.clone());
        bar.set_prefix(node.name.clone());
        let parts = parts.clone();
        import_into(docker, node, reference, wanted, parts, bar, total)
    });
    let outcomes = futures::future::join_all(loads).await;
    let failures: Vec<String> = outcomes
        .into_iter()
        .filter_map(Result::err)
        .map(|e| format!("{e:#}"))
        .collect();
    ensure!(failures.is_empty(), "{}", failures.join("\n"));

    for node in &missing {
        let (name, by_digest) = node_state(docker, node, wanted).await?;
        ensure!(
            wanted.holds(name.as_deref(), by_digest.as_deref()),
            "node {} does not list {}{} after the import: the load failed there (found {name:?})",
            node.name,
            wanted.name,
            wanted
                .digest
                .as_deref()
                .map(|d| format!(" at {d}"))
                .unwrap_or_default()
        );
        results.push(NodeLoad::Loaded(node.name.clone()));
    }
    Ok(results)
}

/// `ctr images import` of the saved tar (`parts`) into one node, with its progress on `bar`;
/// a pinned image is named by its digest there too.
async fn import_into(
    docker: &Docker,
    node: &Node,
    reference: &str,
    wanted: &Wanted,
    parts: Vec<Bytes>,
    bar: Arc<ProgressBar>,
    total: u64,
) -> anyhow::Result<()> {
    let snapshotter = snapshotter(docker, node).await?;
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
    if let Some(by_digest) = &wanted.by_digest {
        let tagged = docker::exec(
            docker,
            &node.id,
            &[
                "ctr",
                "--namespace=k8s.io",
                "images",
                "tag",
                "--force",
                &wanted.name,
                by_digest,
            ],
            None,
        )
        .await?;
        ensure!(
            tagged.exit_code == 0,
            "node {}: naming {by_digest} failed: {}",
            node.name,
            tagged.stderr.trim()
        );
    }
    eprintln!(
        "  {}: imported {reference} ({:.1} MB)",
        node.name,
        total as f64 / 1e6
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::node::{
        FixtureNode, docker_or_skip, engines_or_skip, fake_binary, fixture_cluster,
        remove_image_blocking, unique,
    };

    struct ImageGuard(Docker, String);
    impl Drop for ImageGuard {
        fn drop(&mut self) {
            remove_image_blocking(&self.0, &self.1);
        }
    }

    #[tokio::test]
    async fn package_is_offline_content_addressed_and_a_noop_when_unchanged() {
        for (store, docker) in engines_or_skip("image::package").await {
            eprintln!("image::package on the {store}");
            let binary = fake_binary(&unique("bin"));
            let first = package_artifact(&docker, &SERVER, &binary)
                .await
                .expect("build");
            let _guard = ImageGuard(docker.clone(), first.reference.clone());
            assert!(first.built);
            let hash = iris_serve::model::sha256_hex(&binary);
            assert_eq!(first.reference, format!("iris-serve:{}", &hash[..16]));
            let again = package_artifact(&docker, &SERVER, &binary)
                .await
                .expect("no-op");
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
    }

    /// The real server image, built once for the whole test run (the same static build and
    /// `FROM scratch` packaging `cargo xtask image build` does).
    async fn real_server_image(docker: &Docker) -> Image {
        static BINARY: tokio::sync::OnceCell<Vec<u8>> = tokio::sync::OnceCell::const_new();
        let binary = BINARY
            .get_or_try_init(|| compile_static(&SERVER))
            .await
            .expect("static server build");
        package_artifact(docker, &SERVER, binary)
            .await
            .expect("package")
    }

    /// What the kubelet would find on a node: the CRI plugin looks images up in containerd's
    /// `k8s.io` namespace by the normalized reference the Pod names; the content must be
    /// complete and unpacked for the snapshotter, or the container cannot start.
    async fn kubelet_would_find(docker: &Docker, node: &FixtureNode, reference: &str) {
        let name = containerd_name(reference);
        let check = docker::exec(
            docker,
            &node.id,
            &[
                "ctr",
                "--namespace=k8s.io",
                "images",
                "check",
                &format!("name=={name}"),
            ],
            None,
        )
        .await
        .expect("ctr images check");
        assert_eq!(check.exit_code, 0, "{}", check.stderr);
        let line = check
            .stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name.as_str()))
            .unwrap_or_else(|| panic!("{}: no {name} in k8s.io:\n{}", node.name, check.stdout));
        assert!(line.contains("complete"), "{}: {line}", node.name);
        // The node's CRI plugin (what the kubelet asks) indexed it: it labels the images it
        // manages, on the import event (so allow it a moment).
        let mut listed = String::new();
        for _ in 0..20 {
            listed = docker::exec(
                docker,
                &node.id,
                &[
                    "ctr",
                    "--namespace=k8s.io",
                    "images",
                    "ls",
                    &format!("name=={name}"),
                ],
                None,
            )
            .await
            .expect("ctr images ls")
            .stdout;
            if listed.contains("io.cri-containerd.image=managed") {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert!(
            listed.contains("io.cri-containerd.image=managed"),
            "{}: the CRI plugin does not manage {name}:\n{listed}",
            node.name
        );
        let unpacked = docker::exec(
            docker,
            &node.id,
            &[
                "ctr",
                "--namespace=k8s.io",
                "snapshots",
                "--snapshotter=overlayfs",
                "ls",
            ],
            None,
        )
        .await
        .expect("ctr snapshots ls");
        assert!(
            unpacked.stdout.lines().count() > 1,
            "{}: nothing unpacked into overlayfs:\n{}{}",
            node.name,
            unpacked.stdout,
            unpacked.stderr
        );
    }

    #[tokio::test]
    async fn load_the_server_image_into_three_containerd2_nodes_then_skip() {
        for (store, docker) in engines_or_skip("image::load").await {
            let cluster = unique("iris-load");
            let image = real_server_image(&docker).await;
            let _guard = image
                .built
                .then(|| ImageGuard(docker.clone(), image.reference.clone()));
            let nodes = fixture_cluster(&docker, &cluster, 2)
                .await
                .expect("fixture cluster");
            let names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
            assert_eq!(
                names,
                [
                    format!("{cluster}-control-plane"),
                    format!("{cluster}-worker"),
                    format!("{cluster}-worker2")
                ]
            );
            let started = std::time::Instant::now();
            let first = load(&docker, &image.reference, &cluster)
                .await
                .unwrap_or_else(|e| panic!("load ({store}): {e:#}"));
            let took = started.elapsed();
            eprintln!(
                "{store}: loaded {} ({:.1} MB) into 3 containerd {} nodes in {took:.2?}",
                image.reference,
                image.size as f64 / 1e6,
                crate::testkit::node::fixture_containerd_version().unwrap_or_default()
            );
            assert_eq!(
                first,
                names
                    .iter()
                    .cloned()
                    .map(NodeLoad::Loaded)
                    .collect::<Vec<_>>(),
                "{store}"
            );
            for node in &nodes {
                kubelet_would_find(&docker, node, &image.reference).await;
            }
            let second = load(&docker, &image.reference, &cluster)
                .await
                .unwrap_or_else(|e| panic!("second load ({store}): {e:#}"));
            assert_eq!(
                second,
                names
                    .iter()
                    .cloned()
                    .map(NodeLoad::AlreadyPresent)
                    .collect::<Vec<_>>(),
                "{store}"
            );
        }
    }

    #[tokio::test]
    async fn load_fails_loudly_naming_the_broken_node() {
        for (store, docker) in engines_or_skip("image::load broken node").await {
            let cluster = unique("iris-broken");
            let image = package_artifact(&docker, &SERVER, &fake_binary(&cluster))
                .await
                .expect("build");
            let _guard = ImageGuard(docker.clone(), image.reference.clone());
            let _ok = FixtureNode::start(
                &docker,
                &cluster,
                &format!("{cluster}-worker"),
                "worker",
                true,
            )
            .await
            .expect("node");
            let _bad = FixtureNode::start(
                &docker,
                &cluster,
                &format!("{cluster}-worker2"),
                "worker",
                false,
            )
            .await
            .expect("node");
            let err = load(&docker, &image.reference, &cluster)
                .await
                .expect_err("must fail");
            assert!(
                format!("{err:#}").contains(&format!("{cluster}-worker2")),
                "{store}: {err:#}"
            );
        }
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

    fn as_node(node: &FixtureNode) -> Node {
        Node {
            id: node.id.clone(),
            name: node.name.clone(),
            role: "worker".to_owned(),
            running: true,
            created_unix_s: 0,
        }
    }

    async fn scratch(docker: &Docker, reference: &str, payload: &str) -> String {
        let files = [ImageFile {
            path: "/payload".to_owned(),
            bytes: fake_binary(payload),
            mode: 0o644,
        }];
        docker::build_scratch_image(docker, reference, &files, "", &HashMap::new())
            .await
            .expect("build")
            .id
            .expect("id")
    }

    /// A node that has an older image under the same name (not one of our content-hash tags)
    /// gets the new one: nodes are compared by digest, not by name.
    #[tokio::test]
    async fn a_stale_image_under_the_same_name_is_replaced_on_the_nodes() {
        for (store, docker) in engines_or_skip("image::load stale").await {
            let cluster = unique("iris-stale");
            let reference = format!("iris-serve-test/stale:{}", unique("v"));
            let first_id = scratch(&docker, &reference, &format!("{cluster} one")).await;
            let _first = ImageGuard(docker.clone(), first_id);
            let _tag = ImageGuard(docker.clone(), reference.clone());
            let nodes = fixture_cluster(&docker, &cluster, 1)
                .await
                .expect("fixture cluster");
            let loaded = load(&docker, &reference, &cluster)
                .await
                .unwrap_or_else(|e| panic!("{store}: {e:#}"));
            assert!(
                loaded.iter().all(|l| matches!(l, NodeLoad::Loaded(_))),
                "{loaded:?}"
            );
            let name = containerd_name(&reference);
            let old = node_image_digest(&docker, &as_node(&nodes[0]), &name)
                .await
                .expect("ls")
                .expect("listed");

            // The same name now means other content.
            let second_id = scratch(&docker, &reference, &format!("{cluster} two")).await;
            let _second = ImageGuard(docker.clone(), second_id);
            let again = load(&docker, &reference, &cluster)
                .await
                .unwrap_or_else(|e| panic!("{store}: {e:#}"));
            assert!(
                again.iter().all(|l| matches!(l, NodeLoad::Loaded(_))),
                "{store}: a node with a stale {name} was not refreshed: {again:?}"
            );
            let saved = export(&docker, &reference).await.expect("save");
            let wanted = crate::platform::oci::index_digest(&saved[..]).expect("digest");
            for node in &nodes {
                let now = node_image_digest(&docker, &as_node(node), &name)
                    .await
                    .expect("ls");
                assert_eq!(
                    now.as_deref(),
                    Some(wanted.as_str()),
                    "{store}: {}",
                    node.name
                );
                assert_ne!(now.as_deref(), Some(old.as_str()));
                kubelet_would_find(&docker, node, &reference).await;
            }
            let third = load(&docker, &reference, &cluster).await.expect("third");
            assert!(
                third
                    .iter()
                    .all(|l| matches!(l, NodeLoad::AlreadyPresent(_))),
                "{third:?}"
            );
        }
    }

    /// A reference pinned by digest (as metrics-server's is) reaches the nodes under that digest
    /// too, which is the name the kubelet looks a pinned image up by. The classic image store
    /// cannot find an image by a digest it did not pull itself: refused there.
    #[tokio::test]
    async fn a_pinned_image_is_named_by_its_digest_on_the_nodes() {
        for (store, docker) in engines_or_skip("image::load pinned").await {
            let cluster = unique("iris-pinned");
            let tag_ref = format!("iris-serve-test/pinned:{}", unique("v"));
            let l = crate::platform::oci::testing::layout(
                &crate::platform::oci::testing::Spec::new(cluster.as_bytes(), &tag_ref),
            );
            let _guards = [
                ImageGuard(docker.clone(), tag_ref.clone()),
                ImageGuard(docker.clone(), l.config.clone()),
                ImageGuard(docker.clone(), l.index.clone()),
            ];
            let mut loading = docker.import_image(
                bollard::query_parameters::ImportImageOptions::default(),
                bollard::body_full(l.tar.clone().into()),
                None,
            );
            while let Some(item) = loading.next().await {
                item.expect("docker load");
            }
            let reference = format!("{tag_ref}@{}", l.index);
            let nodes = fixture_cluster(&docker, &cluster, 0)
                .await
                .expect("fixture cluster");
            let result = load(&docker, &reference, &cluster).await;
            if store == "classic image store" {
                let err = result.expect_err("classic store");
                assert!(
                    format!("{err:#}").contains("not in the local Docker engine"),
                    "{err:#}"
                );
                continue;
            }
            result.unwrap_or_else(|e| panic!("{store}: {e:#}"));
            let by_digest = format!("docker.io/iris-serve-test/pinned@{}", l.index);
            let found = node_image_digest(&docker, &as_node(&nodes[0]), &by_digest)
                .await
                .expect("ls");
            assert_eq!(found.as_deref(), Some(l.index.as_str()));
            kubelet_would_find(&docker, &nodes[0], &tag_ref).await;
            let again = load(&docker, &reference, &cluster).await.expect("again");
            assert!(matches!(again[0], NodeLoad::AlreadyPresent(_)), "{again:?}");
        }
    }

    #[test]
    fn content_addressed_names_and_image_listings() {
        assert!(is_content_addressed("iris-serve:0123456789abcdef"));
        assert!(!is_content_addressed("iris-serve:latest"));
        assert!(!is_content_addressed("iris-serve:0123456789ABCDEF"));
        assert!(!is_content_addressed("iris-serve:0123456789abcdef0"));
        assert!(!is_content_addressed("me/iris-serve:0123456789abcdef"));
        assert!(!is_content_addressed(
            "registry.k8s.io/metrics-server/metrics-server:v0.9.0"
        ));
        // containerd 2.1's `ctr images ls name==...` (the fixture's), as printed.
        let listing = "REF                        TYPE                                    DIGEST                                                                  SIZE    PLATFORMS               LABELS                          \nregistry.example/exp/ms:v1 application/vnd.oci.image.index.v1+json sha256:874836ee1f350eb606f87990c417d47b4813d2f9d49ce73264d773b58d340d15 1.2 KiB linux/amd64,linux/arm64 io.cri-containerd.image=managed \n";
        assert_eq!(
            parse_images_ls(listing, "registry.example/exp/ms:v1").as_deref(),
            Some("sha256:874836ee1f350eb606f87990c417d47b4813d2f9d49ce73264d773b58d340d15")
        );
        assert_eq!(parse_images_ls(listing, "registry.example/exp/ms"), None);
        assert_eq!(
            parse_images_ls("REF TYPE DIGEST SIZE PLATFORMS LABELS\n", "x"),
            None
        );
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
    }

    #[test]
    fn snapshotter_by_config_version_like_kind() {
        // containerd 1.x (and 2.x reading a version 2 file before migration): double quotes.
        let v2 = "version = 2\n[plugins]\n  [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n    default_runtime_name = \"runc\"\n    snapshotter = \"overlayfs\"\n";
        assert_eq!(parse_snapshotter(v2).expect("v2"), "overlayfs");
        // containerd 2.1's dump of kind's node config (migrated to version 3): single quotes.
        let v3 = "version = 3\nroot = '/var/lib/containerd'\n[plugins]\n  [plugins.'io.containerd.cri.v1.images']\n    snapshotter = 'overlayfs'\n    discard_unpacked_layers = true\n  [plugins.'io.containerd.cri.v1.runtime']\n    enable_selinux = false\n";
        assert_eq!(parse_snapshotter(v3).expect("v3"), "overlayfs");
        // containerd 2.2+ (kind v0.32's nodes run 2.3): version 4, same path.
        let v4 = "version = 4\n[plugins.'io.containerd.cri.v1.images']\n  snapshotter = 'native'\n";
        assert_eq!(parse_snapshotter(v4).expect("v4"), "native");
        // No snapshotter configured: containerd's default.
        assert_eq!(
            parse_snapshotter("version = 3\n[plugins.'io.containerd.cri.v1.images']\n  max_concurrent_downloads = 3\n").expect("none"),
            "overlayfs"
        );
        let unknown = parse_snapshotter("version = 9\n").expect_err("unknown version");
        assert!(unknown.to_string().contains("version 9"), "{unknown}");
        assert!(
            parse_snapshotter("snapshotter = 'overlayfs'\n").is_err(),
            "no version"
        );
        assert!(parse_snapshotter("not toml [").is_err());
    }

    #[test]
    fn snapshotter_from_the_fixture_containerd_dump() {
        // The real `containerd config dump` of the fixture's containerd 2.x, given kind's config.
        let Ok(containerd) = crate::testkit::node::node_binary("containerd") else {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI needs the fixture's containerd"
            );
            eprintln!("\n*** SKIPPING: no containerd binary for the fixture ***\n");
            return;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("config.toml");
        std::fs::write(&config, crate::testkit::node::KIND_NODE_CONTAINERD_CONFIG).expect("write");
        let dump = crate::platform::process::cmd(containerd)
            .arg("--config")
            .arg(config.as_os_str())
            .args(["config", "dump"])
            .read()
            .expect("config dump");
        let version = crate::testkit::node::fixture_containerd_version().expect("version");
        eprintln!(
            "fixture containerd {version} dumps: {}",
            dump.lines().next().unwrap_or("")
        );
        assert_eq!(
            parse_snapshotter(&dump).expect("parse"),
            "overlayfs",
            "{dump}"
        );
    }
}
