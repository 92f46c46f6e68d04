//! `cargo xtask bundle --out DIR`: everything a run would pull (the kind node image, the
//! metrics-server image) saved with `docker save`, plus the kind binary, and `bundle.json`
//! listing the files. `e2e --offline --bundle DIR` loads it back. An image this repository
//! does not pin (a node image built locally) is recorded as `name:tag@<digest its tar names>`,
//! and a run loads it only when its command line names it so (see [`Trust::for_run`]).
//!
//! A bundle is trusted for nothing: `bundle.json` and the files beside it can be rewritten
//! together. What it may hold is pinned in this repository (the node image by digest in
//! `kind/cluster.yaml`, metrics-server by digest in its manifest, kind by sha256 per platform
//! in `platform/kind.rs`). Each image tar is read before Docker sees it: it may apply no tag but the
//! pinned `name:tag`, and its image must be reachable from the pinned digest through blobs whose
//! content matches their digests (see `oci.rs`). After `docker load`, the tag must resolve to
//! that image and the pinned `name:tag@digest` must resolve too; otherwise everything the load
//! tagged is put back as it was and what it added is removed.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail, ensure};
use bollard::Docker;
use bollard::query_parameters::{CreateImageOptions, ListImagesOptions, RemoveImageOptions};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::domain::cluster::{KindConfig, METRICS_SERVER};
use crate::platform::docker;
use crate::platform::kind;
use crate::platform::manifests::{self, Object};
use crate::platform::oci::containerd_name;
use crate::platform::oci::{self, Verified};

pub const MANIFEST: &str = "bundle.json";
/// v2: images are named by their pinned `name:tag@digest`, one file per `name:tag`.
pub const FORMAT: &str = "iris-serve-bundle/v2";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BundleManifest {
    pub format: String,
    pub kind: Option<BundleFile>,
    pub images: Vec<BundleImage>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BundleFile {
    pub version: String,
    pub platform: String,
    pub file: String,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BundleImage {
    /// As pinned: `name:tag@sha256:...`.
    pub reference: String,
    /// The image id the saving engine reported (informational).
    pub id: String,
    pub file: String,
    pub sha256: String,
}

/// An image a bundle may carry, as this repository pins it.
#[derive(Debug, Clone, PartialEq)]
pub struct Pin {
    /// `name:tag@sha256:<hex>`, exactly as pinned.
    pub reference: String,
    /// `name:tag`: the only tag its tar may apply.
    pub tag_ref: String,
    /// `sha256:<hex>`: the registry's index (or manifest) digest the image must be reached from.
    pub digest: String,
}

impl Pin {
    pub fn parse(reference: &str) -> anyhow::Result<Pin> {
        let (tag_ref, digest) = reference.split_once('@').with_context(|| {
            format!("{reference} is not pinned by digest (name:tag@sha256:...)")
        })?;
        ensure!(
            digest
                .strip_prefix("sha256:")
                .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit())),
            "{reference}: {digest} is not a sha256 digest"
        );
        let (name, tag) = oci::split_tag(tag_ref)
            .with_context(|| format!("{reference} has no tag (name:tag@sha256:...)"))?;
        ensure!(
            !name.is_empty()
                && name.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/:".contains(&b)
                })
                && !tag.is_empty()
                && tag.len() <= 128
                && tag
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)),
            "{reference} is not a plain name:tag@digest reference"
        );
        Ok(Pin {
            reference: reference.to_owned(),
            tag_ref: tag_ref.to_owned(),
            digest: digest.to_lowercase(),
        })
    }

    /// `name@sha256:...`: how a registry (and Docker's pull) addresses the pinned content.
    fn by_digest(&self) -> String {
        let name = oci::split_tag(&self.tag_ref).map_or(self.tag_ref.as_str(), |(n, _)| n);
        format!("{name}@{}", self.digest)
    }
}

/// What a bundle is checked against: this repository's pins (tests bring their own).
#[derive(Debug, Clone)]
pub struct Trust {
    pub images: Vec<Pin>,
    /// The pinned sha256 of kind for this machine's platform.
    pub kind_sha256: Option<String>,
    /// Where a bundled kind is installed.
    pub kind_dest: PathBuf,
}

impl Trust {
    pub fn repository() -> anyhow::Result<Trust> {
        Ok(Trust {
            images: pins_for_run()?,
            kind_sha256: kind::pinned_sha256(&kind::platform()).map(str::to_owned),
            kind_dest: kind::cached_kind(),
        })
    }

    /// The repository's pins, plus the images the run's command line names by digest
    /// (`--node-image`, `--metrics-server-image`): what the user pins there is trusted as if
    /// this repository pinned it (a node image built locally, as CI builds one). A name
    /// without a digest pins nothing and adds nothing.
    pub fn for_run<'a>(overrides: impl IntoIterator<Item = &'a str>) -> anyhow::Result<Trust> {
        let mut trust = Trust::repository()?;
        for reference in overrides {
            if reference.contains('@') {
                let pin = Pin::parse(reference).context("--node-image/--metrics-server-image")?;
                trust.images.retain(|p| p.tag_ref != pin.tag_ref);
                trust.images.push(pin);
            }
        }
        Ok(trust)
    }
}

/// The images a run pulls: every node image of the kind config and every container image of
/// the metrics-server manifests.
pub fn images_for_run() -> anyhow::Result<Vec<String>> {
    let mut images: Vec<String> = KindConfig::load()?
        .nodes
        .iter()
        .filter_map(|n| n.image.clone())
        .collect();
    for object in manifests::load_dir(METRICS_SERVER)? {
        if let Object::Deployment(d) = object {
            let containers = d
                .spec
                .and_then(|s| s.template.spec)
                .map(|p| p.containers)
                .unwrap_or_default();
            images.extend(containers.into_iter().filter_map(|c| c.image));
        }
    }
    images.sort();
    images.dedup();
    Ok(images)
}

/// The images a run pulls, each of which must be pinned by digest in the repository.
pub fn pins_for_run() -> anyhow::Result<Vec<Pin>> {
    images_for_run()?
        .iter()
        .map(|i| Pin::parse(i).context("every image a run pulls must be pinned by digest"))
        .collect()
}

/// Makes sure the engine has `image`. A pinned image is pulled by its digest (the engine checks
/// the content against it) and then tagged `name:tag`; an existing `name:tag` that is not the
/// pinned image is the user's and is left alone: refused.
pub async fn ensure_present(
    docker: &Docker,
    image: &str,
    pin: Option<&Pin>,
    offline: bool,
) -> anyhow::Result<()> {
    if docker.inspect_image(image).await.is_ok() {
        return Ok(());
    }
    let from = match pin {
        Some(pin) => {
            ensure!(
                docker.inspect_image(&pin.tag_ref).await.is_err(),
                "this engine's {} is not the pinned {}; the harness does not re-point your tags: \
                 remove or rename it (`docker rmi {}`), then rerun",
                pin.tag_ref,
                pin.digest,
                pin.tag_ref
            );
            pin.by_digest()
        }
        None => image.to_owned(),
    };
    if offline {
        bail!("image {image} is not in the local Docker engine and --offline forbids pulling it");
    }
    eprintln!("  pulling {from}");
    let mut pull = docker.create_image(
        Some(CreateImageOptions {
            from_image: Some(from.clone()),
            ..Default::default()
        }),
        None,
        None,
    );
    while let Some(progress) = pull.next().await {
        progress.with_context(|| format!("pulling {from}"))?;
    }
    if let Some(pin) = pin {
        let (repo, tag) = oci::split_tag(&pin.tag_ref).context("pin without a tag")?;
        docker::tag(docker, &from, repo, tag)
            .await
            .with_context(|| format!("tagging {from} as {}", pin.tag_ref))?;
    }
    Ok(())
}

/// `images/<name>-<hash of the reference>.tar`: one file per reference, never two alike.
fn file_name(reference: &str) -> String {
    let tag_ref = reference.split('@').next().unwrap_or(reference);
    let name: String = tag_ref
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let hash = iris_serve::model::sha256_hex(reference.as_bytes());
    format!("images/{name}-{}.tar", &hash[..12])
}

/// A bundle's image file name: `images/` and one plain name (no folders, no `..`, nothing
/// absolute, nothing hidden), as [`file_name`] writes them.
fn check_image_file(file: &str) -> anyhow::Result<()> {
    let name = file.strip_prefix("images/").unwrap_or("");
    ensure!(
        !name.is_empty()
            && !name.starts_with('.')
            && name.ends_with(".tar")
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)),
        "refusing the bundle: {file:?} is not a plain file name under images/"
    );
    Ok(())
}

/// The tag part of each reference must be unique: `docker load` keeps one image per `name:tag`.
fn refuse_duplicate_tags<'a>(references: impl IntoIterator<Item = &'a str>) -> anyhow::Result<()> {
    let mut seen: BTreeMap<String, &str> = BTreeMap::new();
    for reference in references {
        let tag_ref = reference.split('@').next().unwrap_or(reference);
        if let Some(first) = seen.insert(containerd_name(tag_ref), reference) {
            bail!(
                "{first} and {reference} are both {tag_ref}: a bundle holds one image per name:tag \
                 (loading both would leave only one of them tagged)"
            );
        }
    }
    Ok(())
}

/// Writes the bundle into a temporary folder beside `out` and renames it into place at the end,
/// so an interrupted or failed save leaves no half bundle behind. Pinned images are checked as
/// a load would check them before the bundle is written.
pub async fn save(
    docker: &Docker,
    out: &Path,
    images: &[String],
    kind: Option<&Path>,
    pins: &[Pin],
) -> anyhow::Result<BundleManifest> {
    ensure!(
        !out.join(MANIFEST).exists(),
        "{} already holds a bundle; choose another --out",
        out.display()
    );
    refuse_duplicate_tags(images.iter().map(String::as_str))?;
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let staging = tempfile::Builder::new()
        .prefix(".bundle-")
        .tempdir_in(parent)?;
    std::fs::create_dir_all(staging.path().join("images"))?;
    let mut manifest = BundleManifest {
        format: FORMAT.to_owned(),
        kind: None,
        images: Vec::new(),
    };
    for reference in images {
        let pin = pins.iter().find(|p| p.reference == *reference);
        let inspect = match docker.inspect_image(reference).await {
            Ok(inspect) => inspect,
            Err(e) if pin.is_some() => bail!(
                "this engine does not find {reference} by its digest ({e}); an engine with \
                 Docker's classic image store knows only digests it pulled itself and drops the \
                 registry's index on save: bundles need an engine with the containerd image store"
            ),
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("image {reference} is not in the local Docker engine")
                });
            }
        };
        let id = inspect.id.unwrap_or_default();
        // Saved by `name:tag`, so the tar tags exactly that (after checking the tag is the
        // pinned image).
        let export = match pin {
            Some(pin) => {
                let tagged = docker
                    .inspect_image(&pin.tag_ref)
                    .await
                    .ok()
                    .and_then(|i| i.id);
                ensure!(
                    tagged.as_deref() == Some(id.as_str()),
                    "this engine's {} is not the pinned {reference}",
                    pin.tag_ref
                );
                pin.tag_ref.clone()
            }
            None => reference.clone(),
        };
        let file = file_name(reference);
        let path = staging.path().join(&file);
        let mut out_file = std::fs::File::create(&path)?;
        let mut hasher = Sha256::new();
        let mut stream = docker.export_image(&export);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.with_context(|| format!("saving {reference}"))?;
            hasher.update(&chunk);
            out_file.write_all(&chunk)?;
        }
        out_file.flush()?;
        let sha256 = iris_serve::model::hex(&hasher.finalize());
        // An image this repository does not pin (a local build) is recorded by the digest its
        // tar names, so that the run that trusts it can pin it on its command line.
        let (pin, recorded) = match pin {
            Some(pin) => (pin.clone(), reference.clone()),
            None if !reference.contains('@') => {
                let digest = oci::index_digest(kind::open_no_follow(&path)?)
                    .with_context(|| format!("reading the saved {reference}"))?;
                let pin = Pin::parse(&format!("{reference}@{digest}"))?;
                (pin.clone(), pin.reference)
            }
            None => bail!(
                "{reference} is pinned by digest but not by this repository: bundle it by its \
                 name:tag, and the bundle records the digest its saved tar names"
            ),
        };
        let verified = oci::verify_save(kind::open_no_follow(&path)?, &pin.tag_ref, &pin.digest)
            .with_context(|| format!("the saved {reference} would not load from a bundle"))?;
        ensure!(
            verified.sha256 == sha256,
            "{file} changed while it was saved"
        );
        if recorded == *reference {
            eprintln!("  saved {reference} -> {file}");
        } else {
            eprintln!(
                "  saved {reference} -> {file}, as {recorded}: not pinned by this repository, so \
                 `e2e --offline --bundle` loads it only when its command line pins it \
                 (--node-image or --metrics-server-image {recorded})"
            );
        }
        crate::platform::signals::test_pause("bundle-saved-image").await;
        manifest.images.push(BundleImage {
            reference: recorded,
            id,
            file,
            sha256,
        });
    }
    if let Some(kind) = kind {
        let file = "kind".to_owned();
        let platform = kind::platform();
        let pinned = kind::pinned_sha256(&platform)
            .with_context(|| format!("no pinned kind sha256 for {platform}"))?;
        // The copy is what the bundle carries: it is the copy that must be the pinned release.
        kind::install_kind(kind, pinned, &staging.path().join(&file))
            .with_context(|| format!("copying {}", kind.display()))?;
        manifest.kind = Some(BundleFile {
            version: kind::KIND_VERSION.to_owned(),
            platform,
            sha256: pinned.to_owned(),
            file,
        });
    }
    std::fs::write(
        staging.path().join(MANIFEST),
        serde_json::to_vec_pretty(&manifest)?,
    )?;
    if out.exists() {
        ensure!(
            std::fs::read_dir(out)?.next().is_none(),
            "{} exists and is not empty",
            out.display()
        );
        std::fs::remove_dir(out)?;
    }
    // Renamed while the TempDir still owns the folder: if the rename fails, dropping it deletes
    // the staged (possibly multi-GB) bundle.
    std::fs::rename(staging.path(), out)
        .with_context(|| format!("moving the bundle into {}", out.display()))?;
    let _moved = staging.keep();
    Ok(manifest)
}

/// Loads a bundle trusting `trust` ([`Trust::for_run`]). Never touches the network.
pub async fn load(docker: &Docker, dir: &Path, trust: &Trust) -> anyhow::Result<BundleManifest> {
    load_with(docker, dir, trust, &|_| {}).await
}

/// Verifies the bundle against `trust`, loads the images Docker does not have, and installs
/// kind into the tool cache. `before_docker` runs after an image file is verified and before it
/// is handed to Docker (tests use it to change the file in between).
pub async fn load_with(
    docker: &Docker,
    dir: &Path,
    trust: &Trust,
    before_docker: &(dyn Fn(&Path) + Sync),
) -> anyhow::Result<BundleManifest> {
    let listed = dir.join(MANIFEST);
    let bytes = std::fs::read(&listed).with_context(|| {
        format!(
            "{} has no {MANIFEST}; make one with `cargo xtask bundle --out DIR`",
            dir.display()
        )
    })?;
    let manifest: BundleManifest =
        serde_json::from_slice(&bytes).with_context(|| format!("reading {}", listed.display()))?;
    ensure!(
        manifest.format == FORMAT,
        "{} is a {:?} bundle; this harness reads {FORMAT}: make it again with `cargo xtask bundle`",
        dir.display(),
        manifest.format
    );
    // Everything listed is checked before anything is loaded.
    let mut plan = Vec::new();
    let mut files = BTreeSet::new();
    for image in &manifest.images {
        check_image_file(&image.file)?;
        ensure!(
            files.insert(image.file.as_str()),
            "refusing the bundle: {} is listed twice",
            image.file
        );
        let pin = trust
            .images
            .iter()
            .find(|p| p.reference == image.reference)
            .with_context(|| {
                format!(
                    "refusing the bundle: {} is not an image this repository pins, nor one the \
                     command line pins by digest (--node-image/--metrics-server-image NAME:TAG@sha256:...); \
                     trusted: {}",
                    image.reference,
                    trust
                        .images
                        .iter()
                        .map(|p| p.reference.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?;
        plan.push((image, pin));
    }
    refuse_duplicate_tags(manifest.images.iter().map(|i| i.reference.as_str()))?;
    if !plan.is_empty() {
        let images_dir = dir.join("images");
        ensure!(
            images_dir.symlink_metadata().is_ok_and(|m| m.is_dir()),
            "refusing the bundle: {} is not a folder (symlinks are refused)",
            images_dir.display()
        );
    }
    for (image, pin) in plan {
        if let (Ok(pinned), Ok(tagged)) = (
            docker.inspect_image(&pin.reference).await,
            docker.inspect_image(&pin.tag_ref).await,
        ) && pinned.id.is_some()
            && pinned.id == tagged.id
        {
            eprintln!("  {} already loaded", pin.reference);
            continue;
        }
        load_image(
            docker,
            &dir.join(&image.file),
            pin,
            &image.sha256,
            before_docker,
        )
        .await
        .with_context(|| format!("loading {}", image.reference))?;
        eprintln!("  loaded {}", pin.reference);
    }
    if let Some(kind) = &manifest.kind {
        ensure!(
            kind.file == "kind",
            "refusing the bundle: its kind file is {:?}, not \"kind\"",
            kind.file
        );
        if kind.platform == kind::platform() && kind.version == kind::KIND_VERSION {
            let pinned = trust.kind_sha256.as_deref().with_context(|| {
                format!(
                    "refusing the bundled kind: no pinned sha256 for {}",
                    kind.platform
                )
            })?;
            // One read: copied into the cache while hashed, renamed into place only if the
            // copy is the pinned release (the bundle's own checksum proves nothing).
            kind::install_kind(&dir.join(&kind.file), pinned, &trust.kind_dest)
                .context("refusing the bundled kind")?;
        } else {
            eprintln!(
                "  skipping the bundled kind {} for {} (this machine needs {} for {})",
                kind.version,
                kind.platform,
                kind::KIND_VERSION,
                kind::platform()
            );
        }
    }
    Ok(manifest)
}

/// Every tag in the engine and the image it names, plus every image id: the state a failed
/// load is put back to.
#[derive(Debug, Clone, Default)]
struct Snapshot {
    tags: BTreeMap<String, String>,
    ids: BTreeSet<String>,
}

async fn snapshot(docker: &Docker) -> anyhow::Result<Snapshot> {
    let images = docker
        .list_images(Some(ListImagesOptions {
            all: true,
            ..Default::default()
        }))
        .await
        .context("listing the engine's images")?;
    let mut snapshot = Snapshot::default();
    for image in images {
        for tag in &image.repo_tags {
            if tag != "<none>:<none>" {
                snapshot.tags.insert(containerd_name(tag), image.id.clone());
            }
        }
        snapshot.ids.insert(image.id);
    }
    Ok(snapshot)
}

/// Undoes a load: every tag it applied is pointed back at the image it named before (or
/// removed if it is new), and images that did not exist before are removed. Armed until
/// disarmed; a drop while armed (an error, Ctrl-C) undoes from a thread of its own.
struct Rollback {
    docker: Docker,
    before: Snapshot,
    /// Tags the load applied (from its own report) and the one it was allowed to apply.
    tags: Vec<String>,
    /// Images the load reported by id only.
    ids: Vec<String>,
    armed: bool,
}

impl Rollback {
    async fn undo(&mut self) {
        self.armed = false;
        undo(&self.docker, &self.before, &self.tags, &self.ids).await;
    }
}

impl Drop for Rollback {
    fn drop(&mut self) {
        if self.armed {
            let (docker, before) = (self.docker.clone(), self.before.clone());
            let (tags, ids) = (self.tags.clone(), self.ids.clone());
            docker::block_on_thread(async move { undo(&docker, &before, &tags, &ids).await });
        }
    }
}

async fn undo(docker: &Docker, before: &Snapshot, tags: &[String], ids: &[String]) {
    let mut added: BTreeSet<String> = ids
        .iter()
        .filter(|id| !before.ids.contains(*id))
        .cloned()
        .collect();
    let mut done = BTreeSet::new();
    for tag in tags {
        let key = containerd_name(tag);
        if !done.insert(key.clone()) {
            continue;
        }
        let now = docker.inspect_image(tag).await.ok().and_then(|i| i.id);
        let was = before.tags.get(&key);
        if now.as_ref() == was {
            continue;
        }
        if let Some(now) = now.filter(|id| !before.ids.contains(id)) {
            added.insert(now);
        }
        let restored = match was {
            Some(old) => match oci::split_tag(tag) {
                Some((repo, t)) => docker::tag(docker, old, repo, t)
                    .await
                    .map_err(anyhow::Error::from),
                None => Err(anyhow::anyhow!("no tag in {tag}")),
            },
            None => docker
                .remove_image(tag, None::<RemoveImageOptions>, None)
                .await
                .map(|_| ())
                .map_err(anyhow::Error::from),
        };
        match restored {
            Ok(()) => eprintln!("  undone: {tag} restored"),
            Err(e) => eprintln!("  WARNING: could not restore {tag}: {e:#}"),
        }
    }
    for id in added {
        let options = RemoveImageOptions {
            force: true,
            ..Default::default()
        };
        if docker.remove_image(&id, Some(options), None).await.is_ok() {
            eprintln!("  undone: removed {id}");
        }
    }
}

/// Verifies one image tar against its pin, then loads it; any failure after Docker saw it puts
/// the engine's tags back as they were.
async fn load_image(
    docker: &Docker,
    path: &Path,
    pin: &Pin,
    listed_sha256: &str,
    before_docker: &(dyn Fn(&Path) + Sync),
) -> anyhow::Result<()> {
    let mut file = kind::open_no_follow(path)?;
    let verified = oci::verify_save(&mut file, &pin.tag_ref, &pin.digest)
        .with_context(|| format!("refusing {}", path.display()))?;
    ensure!(
        verified.sha256 == listed_sha256,
        "refusing {}: sha256 {} differs from the bundle's {listed_sha256}",
        path.display(),
        verified.sha256
    );
    before_docker(path);
    // The same open file goes to Docker, hashed again on the way: a file changed in place since
    // the check is caught (and undone) after the load.
    file.rewind()?;
    let mut guard = Rollback {
        docker: docker.clone(),
        before: snapshot(docker).await?,
        tags: vec![pin.tag_ref.clone()],
        ids: Vec::new(),
        armed: true,
    };
    let result = load_checked(docker, file, pin, &verified, &mut guard).await;
    match result {
        Ok(()) => {
            guard.armed = false;
            Ok(())
        }
        Err(e) => {
            guard.undo().await;
            Err(e.context("the load was undone: the engine's tags are as they were"))
        }
    }
}

async fn load_checked(
    docker: &Docker,
    file: std::fs::File,
    pin: &Pin,
    verified: &Verified,
    guard: &mut Rollback,
) -> anyhow::Result<()> {
    let hasher = Arc::new(Mutex::new(Sha256::new()));
    let body =
        bollard::body_try_stream(file_chunks(tokio::fs::File::from_std(file), hasher.clone()));
    let mut loading = docker.import_image(
        bollard::query_parameters::ImportImageOptions::default(),
        body,
        None,
    );
    let mut failure = None;
    while let Some(progress) = loading.next().await {
        let info = match progress {
            Ok(info) => info,
            Err(e) => {
                failure = Some(anyhow::Error::from(e));
                break;
            }
        };
        if let Some(line) = &info.stream {
            for line in line.lines() {
                if let Some(tag) = line.strip_prefix("Loaded image: ") {
                    guard.tags.push(tag.trim().to_owned());
                } else if let Some(id) = line.strip_prefix("Loaded image ID: ") {
                    guard.ids.push(id.trim().to_owned());
                }
            }
        }
        if let Some(message) = info.error_detail.and_then(|d| d.message) {
            failure = Some(anyhow::anyhow!("docker load: {message}"));
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    let streamed = iris_serve::model::hex(
        &hasher
            .lock()
            .map_err(|_| anyhow::anyhow!("hasher poisoned"))?
            .clone()
            .finalize(),
    );
    ensure!(
        streamed == verified.sha256,
        "the file changed after it was verified (sha256 {streamed}, verified {})",
        verified.sha256
    );
    let wanted = containerd_name(&pin.tag_ref);
    for tag in &guard.tags {
        ensure!(
            containerd_name(tag) == wanted,
            "docker load tagged {tag}, which the bundle may not touch"
        );
    }
    let id = docker
        .inspect_image(&pin.tag_ref)
        .await
        .ok()
        .and_then(|i| i.id)
        .with_context(|| format!("{} is missing after the load", pin.tag_ref))?;
    ensure!(
        verified.is_id(&id),
        "after the load {} is {id}, not the verified image",
        pin.tag_ref
    );
    let by_digest = docker
        .inspect_image(&pin.reference)
        .await
        .ok()
        .and_then(|i| i.id);
    ensure!(
        by_digest.as_deref() == Some(id.as_str()),
        "this engine does not find {} after loading it (found {by_digest:?}): Docker's classic \
         image store keeps no registry digest on `docker load`, so kind and the nodes could not \
         find the pinned image; offline runs need an engine with the containerd image store",
        pin.reference
    );
    Ok(())
}

fn file_chunks(
    file: tokio::fs::File,
    hasher: Arc<Mutex<Sha256>>,
) -> impl futures::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static {
    futures::stream::unfold(file, move |mut file| {
        let hasher = hasher.clone();
        async move {
            use tokio::io::AsyncReadExt;
            let mut buf = vec![0u8; 256 * 1024];
            match file.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    if let Ok(mut h) = hasher.lock() {
                        h.update(&buf);
                    }
                    Some((Ok(bytes::Bytes::from(buf)), file))
                }
                Err(e) => Some((Err(e), file)),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::oci::testing::{Layout, Spec, layout};
    use crate::testkit::node::{docker_or_skip, engines_or_skip, unique};

    #[test]
    fn a_run_pulls_the_node_image_and_metrics_server_both_pinned_by_digest() {
        let pins = pins_for_run().expect("every image of a run is pinned");
        let references: Vec<&str> = pins.iter().map(|p| p.reference.as_str()).collect();
        assert!(
            references.contains(
                &"kindest/node:v1.36.1@sha256:3489c7674813ba5d8b1a9977baea8a6e553784dab7b84759d1014dbd78f7ebd5"
            ),
            "{references:?}"
        );
        assert!(
            references.contains(
                &"registry.k8s.io/metrics-server/metrics-server:v0.9.0@sha256:d9862115e7c7881280d3d75ca26bda8ffc0fc213315979575bf23ce9826205c0"
            ),
            "{references:?}"
        );
        let metrics = pins
            .iter()
            .find(|p| p.tag_ref.contains("metrics-server"))
            .expect("metrics-server");
        assert_eq!(
            metrics.tag_ref,
            "registry.k8s.io/metrics-server/metrics-server:v0.9.0"
        );
        assert_eq!(
            metrics.by_digest(),
            "registry.k8s.io/metrics-server/metrics-server@sha256:d9862115e7c7881280d3d75ca26bda8ffc0fc213315979575bf23ce9826205c0"
        );
    }

    #[test]
    fn a_command_line_pin_by_digest_is_trusted_and_a_bare_tag_is_not() {
        let digest = format!("sha256:{}", "cd".repeat(32));
        let node = format!("iris-kind/node:v1.36.1-local@{digest}");
        let metrics = format!("registry.k8s.io/metrics-server/metrics-server:v0.9.0@{digest}");
        let repository = Trust::repository().expect("repository pins");
        let trust =
            Trust::for_run([node.as_str(), metrics.as_str(), "local/other:1"]).expect("pins");
        let references: Vec<&str> = trust.images.iter().map(|p| p.reference.as_str()).collect();
        assert!(references.contains(&node.as_str()), "{references:?}");
        // The same name:tag as the repository's pin: the command line's digest replaces it.
        assert!(references.contains(&metrics.as_str()), "{references:?}");
        assert!(
            !references.iter().any(|r| r.contains("d9862115e7c7")),
            "{references:?}"
        );
        // A name without a digest pins nothing.
        assert!(!references.iter().any(|r| r.starts_with("local/other")));
        assert_eq!(trust.images.len(), repository.images.len() + 1);
        let err = Trust::for_run(["iris-kind/node:x@sha256:abc"]).expect_err("short digest");
        assert!(format!("{err:#}").contains("--node-image"), "{err:#}");
    }

    #[test]
    fn pins_need_a_tag_and_a_digest() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        assert!(Pin::parse(&format!("a/b:c@{digest}")).is_ok());
        assert!(Pin::parse(&format!("localhost:5000/b:c@{digest}")).is_ok());
        assert!(Pin::parse("a/b:c").is_err(), "tag only");
        assert!(Pin::parse(&format!("a/b@{digest}")).is_err(), "digest only");
        assert!(Pin::parse("a/b:c@sha256:abc").is_err(), "short digest");
        assert!(
            Pin::parse(&format!("A/b:c@{digest}")).is_err(),
            "upper case"
        );
    }

    #[test]
    fn file_names_are_unique_plain_and_duplicates_are_refused() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        let a = file_name(&format!("a/b:c@{digest}"));
        let b = file_name(&format!("a_b:c@{digest}"));
        assert_ne!(a, b, "names that sanitize alike still get their own file");
        check_image_file(&a).expect("our own names pass");
        for bad in [
            "images/../../etc/passwd.tar",
            "/tmp/x.tar",
            "images//tmp/x.tar",
            "images/a/b.tar",
            "images/.hidden.tar",
            "images/",
            "kind",
            "images/x.tar/..",
        ] {
            assert!(check_image_file(bad).is_err(), "{bad} accepted");
        }
        let other = format!("sha256:{}", "cd".repeat(32));
        let err = refuse_duplicate_tags([
            format!("x/y:1@{digest}").as_str(),
            format!("x/y:1@{other}").as_str(),
        ])
        .expect_err("two digests of one name:tag");
        assert!(err.to_string().contains("one image per name:tag"), "{err}");
        // Docker's short names count as the same name.
        assert!(refuse_duplicate_tags(["ubuntu:22.04", "docker.io/library/ubuntu:22.04"]).is_err());
        assert!(refuse_duplicate_tags(["x/y:1", "x/y:2"]).is_ok());
    }

    /// Images (by tag or id) removed when the test ends, whatever happened.
    struct Cleanup(Docker, Vec<String>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            for r in &self.1 {
                crate::testkit::node::remove_image_blocking(&self.0, r);
            }
        }
    }

    async fn id_of(docker: &Docker, reference: &str) -> Option<String> {
        docker
            .inspect_image(reference)
            .await
            .ok()
            .and_then(|i| i.id)
    }

    /// `docker load` of a tar: stands for a `docker pull` of a registry image in these tests.
    async fn docker_load(docker: &Docker, tar: &[u8]) {
        let mut stream = docker.import_image(
            bollard::query_parameters::ImportImageOptions::default(),
            bollard::body_full(tar.to_vec().into()),
            None,
        );
        while let Some(item) = stream.next().await {
            let info = item.expect("load");
            assert!(info.error_detail.is_none(), "{:?}", info.error_detail);
        }
    }

    /// An image the user already has under `tag`, loaded from a tar rather than built: the
    /// classic builder on the containerd image store loses its intermediate image when another
    /// test's image removal triggers containerd's garbage collection mid-build ("unable to find
    /// image sha256:..."), which failed CI once; a load holds a lease on what it writes.
    async fn victim(docker: &Docker, tag: &str) -> String {
        let payload = format!("victim {tag} {}", unique("v"));
        docker_load(docker, &layout(&Spec::new(payload.as_bytes(), tag)).tar).await;
        id_of(docker, tag).await.expect("victim image loaded")
    }

    /// A bundle folder listing `tar` as the image of `reference`, under `file`.
    fn write_bundle(dir: &Path, reference: &str, file: &str, tar: &[u8]) {
        let images = dir.join("images");
        std::fs::create_dir_all(&images).expect("images");
        if !file.contains("..") && !file.starts_with('/') {
            std::fs::write(dir.join(file), tar).expect("tar");
        }
        let manifest = BundleManifest {
            format: FORMAT.to_owned(),
            kind: None,
            images: vec![BundleImage {
                reference: reference.to_owned(),
                id: String::new(),
                file: file.to_owned(),
                sha256: iris_serve::model::sha256_hex(tar),
            }],
        };
        std::fs::write(
            dir.join(MANIFEST),
            serde_json::to_vec_pretty(&manifest).expect("json"),
        )
        .expect("bundle.json");
    }

    fn trust(pin: &Pin, dir: &Path) -> Trust {
        Trust {
            images: vec![pin.clone()],
            kind_sha256: None,
            kind_dest: dir.join("cache/kind"),
        }
    }

    fn pin_for(tag_ref: &str, l: &Layout) -> Pin {
        Pin::parse(&format!("{tag_ref}@{}", l.index)).expect("pin")
    }

    /// The pinned image stands for a registry image (an index naming two platforms, the tar
    /// holding this one's manifest), "pulled" into the engine. The containerd image store keeps
    /// its index, so a bundle saved there loads back; the classic store drops it, so its save is
    /// refused before any bundle is written.
    #[tokio::test]
    async fn round_trip_of_a_pinned_image_and_tamper_detection() {
        for (store, docker) in engines_or_skip("bundle round trip").await {
            let tag_ref = format!("iris-serve-test/pinned:{}", unique("rt"));
            let l = layout(&Spec::new(unique("payload").as_bytes(), &tag_ref));
            let pin = pin_for(&tag_ref, &l);
            let _cleanup = Cleanup(
                docker.clone(),
                vec![tag_ref.clone(), l.config.clone(), l.index.clone()],
            );
            docker_load(&docker, &l.tar).await;
            let dir = tempfile::tempdir().expect("dir");
            let out = dir.path().join("bundle");
            let images = vec![pin.reference.clone()];
            let saved = save(&docker, &out, &images, None, std::slice::from_ref(&pin)).await;
            if store == "classic image store" {
                let err = saved.expect_err("the classic store cannot prove the pin");
                assert!(
                    format!("{err:#}").contains("containerd image store"),
                    "{err:#}"
                );
                assert_eq!(
                    std::fs::read_dir(dir.path()).expect("dir").count(),
                    0,
                    "{store}: a refused save leaves nothing"
                );
                continue;
            }
            let saved = saved.unwrap_or_else(|e| panic!("{store}: {e:#}"));
            assert_eq!(saved.images.len(), 1);
            assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 1);
            assert!(
                save(&docker, &out, &images, None, std::slice::from_ref(&pin))
                    .await
                    .is_err(),
                "an existing bundle is not overwritten"
            );

            // Gone from Docker, then back from the bundle: tag and digest resolve.
            crate::testkit::node::remove_image_blocking(&docker, &tag_ref);
            crate::testkit::node::remove_image_blocking(&docker, &l.index);
            assert!(id_of(&docker, &tag_ref).await.is_none());
            let trust = trust(&pin, dir.path());
            load_with(&docker, &out, &trust, &|_| {})
                .await
                .unwrap_or_else(|e| panic!("{store}: {e:#}"));
            assert_eq!(id_of(&docker, &pin.reference).await, Some(l.index.clone()));
            assert_eq!(id_of(&docker, &tag_ref).await, Some(l.index.clone()));
            // Loading again is a no-op; a tampered file is refused.
            load_with(&docker, &out, &trust, &|_| {})
                .await
                .expect("again");
            let victim = out.join(&saved.images[0].file);
            let mut bytes = std::fs::read(&victim).expect("read");
            let last = bytes.len() - 1;
            bytes[last] ^= 1;
            std::fs::write(&victim, bytes).expect("write");
            crate::testkit::node::remove_image_blocking(&docker, &tag_ref);
            crate::testkit::node::remove_image_blocking(&docker, &l.index);
            let err = load_with(&docker, &out, &trust, &|_| {})
                .await
                .expect_err("tampered");
            assert!(
                format!("{err:#}").contains("differs from the bundle's"),
                "{err:#}"
            );
            assert!(id_of(&docker, &tag_ref).await.is_none());
        }
    }

    /// Whoever can write the bundle can rewrite bundle.json and the tar together, name other
    /// files, or make the tar tag something else: all refused before Docker sees the tar, and
    /// the engine's tags stay as they were (`victim` stands in for a user's `ubuntu:latest`).
    #[tokio::test]
    async fn a_rewritten_bundle_is_refused_and_the_engine_is_left_as_it_was() {
        for (store, docker) in engines_or_skip("bundle tampering").await {
            let u = unique("tamper");
            let tag_ref = format!("iris-serve-test/pinned:{u}");
            let victim_tag = format!("iris-serve-test/victim-{u}:latest");
            let pinned = layout(&Spec::new(b"the pinned image", &tag_ref));
            let pin = pin_for(&tag_ref, &pinned);
            let mut cleanup = Cleanup(docker.clone(), vec![tag_ref.clone(), victim_tag.clone()]);
            let victim_id = victim(&docker, &victim_tag).await;

            let other = layout(&Spec::new(b"something else entirely", &tag_ref));
            let mut retag = Spec::new(b"the pinned image", &tag_ref);
            retag.repo_tags = vec![victim_tag.clone()];
            let mut both = Spec::new(b"the pinned image", &tag_ref);
            both.repo_tags.push(victim_tag.clone());
            let mut annotated = Spec::new(b"the pinned image", &tag_ref);
            annotated.image_name = containerd_name(&victim_tag);
            let cases: Vec<(&str, String, Vec<u8>, &str)> = vec![
                (
                    "another image, bundle.json rewritten to match",
                    "images/x.tar".into(),
                    other.tar.clone(),
                    "does not hold",
                ),
                (
                    "a tar that tags the victim",
                    "images/x.tar".into(),
                    layout(&retag).tar,
                    &victim_tag,
                ),
                (
                    "a tar that tags the victim too",
                    "images/x.tar".into(),
                    layout(&both).tar,
                    &victim_tag,
                ),
                (
                    "an index.json naming the victim",
                    "images/x.tar".into(),
                    layout(&annotated).tar,
                    "victim",
                ),
                (
                    "a file outside the bundle",
                    "images/../../x.tar".into(),
                    pinned.tar.clone(),
                    "not a plain file name",
                ),
                (
                    "an absolute file",
                    "/tmp/x.tar".into(),
                    pinned.tar.clone(),
                    "not a plain file name",
                ),
            ];
            cleanup.1.push(other.config.clone());
            cleanup.1.push(other.index.clone());
            for (case, file, tar, why) in cases {
                let dir = tempfile::tempdir().expect("dir");
                write_bundle(dir.path(), &pin.reference, &file, &tar);
                let err = load_with(&docker, dir.path(), &trust(&pin, dir.path()), &|_| {})
                    .await
                    .expect_err(case);
                assert!(format!("{err:#}").contains(why), "{store}, {case}: {err:#}");
                assert_eq!(
                    id_of(&docker, &victim_tag).await.as_deref(),
                    Some(victim_id.as_str()),
                    "{store}, {case}: the victim tag moved"
                );
                assert!(
                    id_of(&docker, &tag_ref).await.is_none(),
                    "{store}, {case}: something was loaded"
                );
            }
            // An image the repository does not pin is refused by name.
            let dir = tempfile::tempdir().expect("dir");
            write_bundle(
                dir.path(),
                &format!("{victim_tag}@{}", pinned.index),
                "images/x.tar",
                &pinned.tar,
            );
            let err = load_with(&docker, dir.path(), &trust(&pin, dir.path()), &|_| {})
                .await
                .expect_err("unpinned");
            assert!(
                err.to_string()
                    .contains("not an image this repository pins"),
                "{err}"
            );
        }
    }

    /// The file is verified, then changed in place before Docker reads it (the same open file):
    /// Docker loads the changed tar, which re-points the victim's tag; the harness notices and
    /// puts the tag back and removes what the load added.
    #[tokio::test]
    async fn a_tar_changed_after_its_check_is_undone_and_tags_are_restored() {
        for (store, docker) in engines_or_skip("bundle swap after check").await {
            let u = unique("swap");
            let tag_ref = format!("iris-serve-test/pinned:{u}");
            let victim_tag = format!("iris-serve-test/victim-{u}:latest");
            let pinned = layout(&Spec::new(b"the pinned image", &tag_ref));
            let evil_payload = format!("evil {u}");
            let mut evil = Spec::new(evil_payload.as_bytes(), &tag_ref);
            evil.repo_tags = vec![victim_tag.clone()];
            evil.image_name = containerd_name(&victim_tag);
            let evil = layout(&evil);
            let _cleanup = Cleanup(
                docker.clone(),
                vec![
                    tag_ref.clone(),
                    victim_tag.clone(),
                    evil.config.clone(),
                    evil.index.clone(),
                ],
            );
            let victim_id = victim(&docker, &victim_tag).await;
            let pin = pin_for(&tag_ref, &pinned);
            let dir = tempfile::tempdir().expect("dir");
            write_bundle(dir.path(), &pin.reference, "images/x.tar", &pinned.tar);
            let swap = |path: &Path| {
                // In place: same inode, so the file already opened and checked reads this.
                use std::io::Write as _;
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .truncate(true)
                    .open(path)
                    .expect("open");
                file.write_all(&evil.tar).expect("swap");
            };
            let err = load_with(&docker, dir.path(), &trust(&pin, dir.path()), &swap)
                .await
                .expect_err("swapped");
            let message = format!("{err:#}");
            assert!(message.contains("undone"), "{store}: {message}");
            assert_eq!(
                id_of(&docker, &victim_tag).await.as_deref(),
                Some(victim_id.as_str()),
                "{store}: the victim tag was not restored ({message})"
            );
            assert!(id_of(&docker, &tag_ref).await.is_none(), "{store}");
            for id in [&evil.config, &evil.index] {
                assert!(
                    id_of(&docker, id).await.is_none(),
                    "{store}: the swapped-in image {id} was left behind"
                );
            }
        }
    }

    /// The classic image store loads the pinned image but cannot find it by digest afterwards
    /// (it records no registry digest on load): the load is undone and the tag it had re-pointed
    /// is put back. The containerd image store finds it: the tag moves to the pinned image.
    #[tokio::test]
    async fn a_load_the_engine_cannot_find_by_digest_is_undone() {
        for (store, docker) in engines_or_skip("bundle load by digest").await {
            let tag_ref = format!("iris-serve-test/pinned:{}", unique("digest"));
            let pinned = layout(&Spec::new(unique("pinned").as_bytes(), &tag_ref));
            let pin = pin_for(&tag_ref, &pinned);
            let _cleanup = Cleanup(
                docker.clone(),
                vec![tag_ref.clone(), pinned.config.clone(), pinned.index.clone()],
            );
            // The user already has an (older) image under the same name:tag.
            let stale = victim(&docker, &tag_ref).await;
            let dir = tempfile::tempdir().expect("dir");
            write_bundle(dir.path(), &pin.reference, "images/x.tar", &pinned.tar);
            let loaded = load_with(&docker, dir.path(), &trust(&pin, dir.path()), &|_| {}).await;
            if store == "classic image store" {
                let err = loaded.expect_err("classic store");
                assert!(
                    format!("{err:#}").contains("classic image store"),
                    "{err:#}"
                );
                assert_eq!(
                    id_of(&docker, &tag_ref).await,
                    Some(stale),
                    "tag not restored"
                );
                assert!(
                    id_of(&docker, &pinned.config).await.is_none(),
                    "left behind"
                );
            } else {
                loaded.unwrap_or_else(|e| panic!("{store}: {e:#}"));
                assert_eq!(id_of(&docker, &tag_ref).await, Some(pinned.index.clone()));
                crate::testkit::node::remove_image_blocking(&docker, &stale);
            }
        }
    }

    #[tokio::test]
    async fn a_bundle_holds_one_image_per_tag_and_a_failed_rename_leaves_nothing() {
        let Some(docker) = docker_or_skip("bundle save").await else {
            return;
        };
        let dir = tempfile::tempdir().expect("dir");
        let digest = format!("sha256:{}", "ab".repeat(32));
        let other = format!("sha256:{}", "cd".repeat(32));
        let err = save(
            &docker,
            &dir.path().join("b"),
            &[format!("x/y:1@{digest}"), format!("x/y:1@{other}")],
            None,
            &[],
        )
        .await
        .expect_err("duplicate name:tag");
        assert!(err.to_string().contains("one image per name:tag"), "{err}");
        // The final rename fails (a symlink where the folder goes): the staged bundle is gone.
        let out = dir.path().join("out");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &out).expect("symlink");
        let err = save(&docker, &out, &[], None, &[])
            .await
            .expect_err("rename fails");
        assert!(err.to_string().contains("moving the bundle"), "{err:#}");
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(
            left,
            vec![std::ffi::OsString::from("out")],
            "staging left behind"
        );
    }

    /// A bundle's kind is installed only if its bytes are the pinned ones, whatever bundle.json
    /// says about them.
    #[tokio::test]
    async fn a_bundled_kind_must_be_the_pinned_release() {
        let docker = Docker::connect_with_local_defaults().expect("client (not contacted)");
        let dir = tempfile::tempdir().expect("dir");
        let kind = b"#!/bin/sh\necho the pinned kind\n".to_vec();
        let write = |bytes: &[u8]| {
            std::fs::write(dir.path().join("kind"), bytes).expect("kind");
            let manifest = BundleManifest {
                format: FORMAT.to_owned(),
                kind: Some(BundleFile {
                    version: kind::KIND_VERSION.to_owned(),
                    platform: kind::platform(),
                    file: "kind".to_owned(),
                    sha256: iris_serve::model::sha256_hex(bytes),
                }),
                images: Vec::new(),
            };
            std::fs::write(
                dir.path().join(MANIFEST),
                serde_json::to_vec(&manifest).expect("json"),
            )
            .expect("bundle.json");
        };
        let trust = Trust {
            images: Vec::new(),
            kind_sha256: Some(iris_serve::model::sha256_hex(&kind)),
            kind_dest: dir.path().join("cache/kind"),
        };
        write(b"#!/bin/sh\necho a different kind\n");
        let err = load_with(&docker, dir.path(), &trust, &|_| {})
            .await
            .expect_err("not the pinned kind");
        assert!(
            format!("{err:#}").contains("differs from the pinned"),
            "{err:#}"
        );
        assert!(!trust.kind_dest.exists());
        write(&kind);
        load_with(&docker, dir.path(), &trust, &|_| {})
            .await
            .expect("the pinned kind");
        assert_eq!(std::fs::read(&trust.kind_dest).expect("installed"), kind);
    }
}
