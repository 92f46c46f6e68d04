//! `cargo xtask bundle --out DIR`: everything a run would pull (the kind node image, the
//! metrics-server image) saved with `docker save`, plus the kind binary, and `bundle.json` with
//! each file's sha256 and each image's id. `e2e --offline --bundle DIR` loads it back, refusing
//! any file whose checksum or image id differs.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail, ensure};
use bollard::Docker;
use bollard::query_parameters::CreateImageOptions;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cluster::{KindConfig, METRICS_SERVER};
use crate::manifests::{self, Object};
use crate::{docker, tools};

pub const MANIFEST: &str = "bundle.json";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The folder to write the bundle into (created; must not hold a bundle already).
    #[arg(long)]
    pub out: PathBuf,
    /// Don't pull missing images; fail instead.
    #[arg(long)]
    pub offline: bool,
    /// Bundle these images instead of the node and metrics-server images (repeatable).
    #[arg(long = "image")]
    pub images: Vec<String>,
    /// Leave kind out (for machines that install it another way).
    #[arg(long)]
    pub without_kind: bool,
}

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
    pub reference: String,
    /// The image id (config digest) as Docker reports it.
    pub id: String,
    pub file: String,
    pub sha256: String,
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

pub fn run(args: &Args) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(crate::signals::interruptible(async {
        let docker = docker::connect().await?;
        let kind = if args.without_kind {
            None
        } else {
            Some(tools::ensure_release_kind(args.offline).await?)
        };
        let images = if args.images.is_empty() {
            images_for_run()?
        } else {
            args.images.clone()
        };
        for image in &images {
            ensure_present(&docker, image, args.offline).await?;
        }
        let manifest = save(&docker, &args.out, &images, kind.as_deref()).await?;
        println!(
            "bundle written to {} ({} images{})",
            args.out.display(),
            manifest.images.len(),
            if manifest.kind.is_some() {
                format!(", kind {}", tools::KIND_VERSION)
            } else {
                String::new()
            }
        );
        Ok(())
    }))
}

async fn ensure_present(docker: &Docker, image: &str, offline: bool) -> anyhow::Result<()> {
    if docker.inspect_image(image).await.is_ok() {
        return Ok(());
    }
    if offline {
        bail!("image {image} is not in the local Docker engine and --offline forbids pulling it");
    }
    eprintln!("  pulling {image}");
    let mut pull = docker.create_image(
        Some(CreateImageOptions {
            from_image: Some(image.to_owned()),
            ..Default::default()
        }),
        None,
        None,
    );
    while let Some(progress) = pull.next().await {
        progress.with_context(|| format!("pulling {image}"))?;
    }
    Ok(())
}

fn file_name(reference: &str) -> String {
    let name: String = reference
        .split('@')
        .next()
        .unwrap_or(reference)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("images/{name}.tar")
}

fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = std::io::Read::read(&mut file, &mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(iris_serve::model::hex(&hasher.finalize()))
}

/// Writes the bundle into a temporary folder beside `out` and renames it into place at the end,
/// so an interrupted save leaves no half bundle behind.
pub async fn save(
    docker: &Docker,
    out: &Path,
    images: &[String],
    kind: Option<&Path>,
) -> anyhow::Result<BundleManifest> {
    ensure!(
        !out.join(MANIFEST).exists(),
        "{} already holds a bundle; choose another --out",
        out.display()
    );
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
        format: "iris-serve-bundle/v1".to_owned(),
        kind: None,
        images: Vec::new(),
    };
    for reference in images {
        let inspect = docker
            .inspect_image(reference)
            .await
            .with_context(|| format!("image {reference} is not in the local Docker engine"))?;
        let file = file_name(reference);
        let path = staging.path().join(&file);
        let mut out_file = std::fs::File::create(&path)?;
        let mut hasher = Sha256::new();
        let mut stream = docker.export_image(reference);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.with_context(|| format!("saving {reference}"))?;
            hasher.update(&chunk);
            out_file.write_all(&chunk)?;
        }
        out_file.flush()?;
        let sha256 = iris_serve::model::hex(&hasher.finalize());
        eprintln!("  saved {reference} -> {file}");
        crate::signals::test_pause("bundle-saved-image").await;
        manifest.images.push(BundleImage {
            reference: reference.clone(),
            id: inspect.id.unwrap_or_default(),
            file,
            sha256,
        });
    }
    if let Some(kind) = kind {
        let file = "kind".to_owned();
        let platform = tools::platform();
        let pinned = tools::pinned_sha256(&platform)
            .with_context(|| format!("no pinned kind sha256 for {platform}"))?;
        // The copy is what the bundle carries: it is the copy that must be the pinned release.
        tools::install_kind(kind, pinned, &staging.path().join(&file))
            .with_context(|| format!("copying {}", kind.display()))?;
        manifest.kind = Some(BundleFile {
            version: tools::KIND_VERSION.to_owned(),
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
    let staged = staging.keep();
    std::fs::rename(&staged, out)
        .with_context(|| format!("moving the bundle into {}", out.display()))?;
    Ok(manifest)
}

/// Verifies every file, loads the images Docker does not have (checking their ids), and installs
/// kind into the tool cache. Never touches the network.
pub async fn load(docker: &Docker, dir: &Path) -> anyhow::Result<BundleManifest> {
    let manifest: BundleManifest =
        serde_json::from_slice(&std::fs::read(dir.join(MANIFEST)).with_context(|| {
            format!(
                "{} has no {MANIFEST}; make one with `cargo xtask bundle --out DIR`",
                dir.display()
            )
        })?)
        .with_context(|| format!("reading {}", dir.join(MANIFEST).display()))?;
    for image in &manifest.images {
        let path = dir.join(&image.file);
        let actual = sha256_file(&path)?;
        ensure!(
            actual == image.sha256,
            "refusing {}: sha256 {actual} differs from the bundle's {}",
            path.display(),
            image.sha256
        );
        if docker
            .inspect_image(&image.reference)
            .await
            .ok()
            .and_then(|i| i.id)
            .as_deref()
            == Some(image.id.as_str())
        {
            eprintln!("  {} already loaded", image.reference);
            continue;
        }
        let file = tokio::fs::File::open(&path).await?;
        let body = bollard::body_try_stream(file_chunks(file));
        let mut loading = docker.import_image(
            bollard::query_parameters::ImportImageOptions::default(),
            body,
            None,
        );
        while let Some(progress) = loading.next().await {
            let info = progress.with_context(|| format!("loading {}", image.file))?;
            if let Some(message) = info.error_detail.and_then(|d| d.message) {
                bail!("loading {}: {message}", image.file);
            }
        }
        let id = docker
            .inspect_image(&image.reference)
            .await
            .ok()
            .and_then(|i| i.id);
        ensure!(
            id.as_deref() == Some(image.id.as_str()),
            "after loading {}, {} has id {id:?}, not the bundle's {}",
            image.file,
            image.reference,
            image.id
        );
        eprintln!("  loaded {}", image.reference);
    }
    if let Some(kind) = &manifest.kind {
        ensure!(
            kind.file == "kind",
            "refusing the bundle: its kind file is {:?}, not \"kind\"",
            kind.file
        );
        if kind.platform == tools::platform() && kind.version == tools::KIND_VERSION {
            let pinned = tools::pinned_sha256(&kind.platform).with_context(|| {
                format!(
                    "refusing the bundled kind: no pinned sha256 for {}",
                    kind.platform
                )
            })?;
            // One read: copied into the cache while hashed, renamed into place only if the
            // copy is the pinned release (the bundle's own checksum proves nothing).
            tools::install_kind(&dir.join(&kind.file), pinned, &tools::cached_kind())
                .context("refusing the bundled kind")?;
        } else {
            eprintln!(
                "  skipping the bundled kind {} for {} (this machine needs {} for {})",
                kind.version,
                kind.platform,
                tools::KIND_VERSION,
                tools::platform()
            );
        }
    }
    Ok(manifest)
}

fn file_chunks(
    file: tokio::fs::File,
) -> impl futures::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static {
    futures::stream::unfold(file, |mut file| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 256 * 1024];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(bytes::Bytes::from(buf)), file))
            }
            Err(e) => Some((Err(e), file)),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{docker_or_skip, fake_binary, remove_image_blocking, unique};

    #[test]
    fn a_run_pulls_the_node_image_and_metrics_server() {
        let images = images_for_run().expect("images");
        assert!(
            images
                .iter()
                .any(|i| i.starts_with("kindest/node:v1.36.1@sha256:")),
            "{images:?}"
        );
        assert!(
            images.contains(&"registry.k8s.io/metrics-server/metrics-server:v0.9.0".to_owned()),
            "{images:?}"
        );
    }

    #[tokio::test]
    async fn round_trip_with_locally_built_images_and_tamper_detection() {
        let Some(docker) = docker_or_skip("bundle round trip").await else {
            return;
        };
        let tag = unique("bundle");
        let mut references = Vec::new();
        for name in ["node", "metrics"] {
            let reference = format!("iris-serve-test/{name}:{tag}");
            let files = [docker::ImageFile {
                path: "/payload".into(),
                bytes: fake_binary(&format!("{name}{tag}")),
                mode: 0o644,
            }];
            docker::build_scratch_image(&docker, &reference, &files, "", &Default::default())
                .await
                .expect("build");
            references.push(reference);
        }
        struct Cleanup(Docker, Vec<String>);
        impl Drop for Cleanup {
            fn drop(&mut self) {
                for r in &self.1 {
                    remove_image_blocking(&self.0, r);
                }
            }
        }
        let _cleanup = Cleanup(docker.clone(), references.clone());
        let dir = tempfile::tempdir().expect("dir");
        let out = dir.path().join("bundle");
        let saved = save(&docker, &out, &references, None).await.expect("save");
        assert_eq!(saved.images.len(), 2);
        assert!(out.join(MANIFEST).exists());
        // Nothing but the bundle is left beside it.
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 1);
        assert!(
            save(&docker, &out, &references, None).await.is_err(),
            "an existing bundle is not overwritten"
        );

        // Gone from Docker, then back from the bundle with the same ids.
        for r in &references {
            remove_image_blocking(&docker, r);
            assert!(docker.inspect_image(r).await.is_err());
        }
        let loaded = load(&docker, &out).await.expect("load");
        for image in &loaded.images {
            let id = docker
                .inspect_image(&image.reference)
                .await
                .expect("back")
                .id
                .expect("id");
            assert_eq!(id, image.id);
        }
        // Loading again is a no-op; a tampered file is refused.
        load(&docker, &out).await.expect("again");
        let victim = out.join(&saved.images[0].file);
        let mut bytes = std::fs::read(&victim).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&victim, bytes).expect("write");
        let err = load(&docker, &out).await.expect_err("tampered");
        assert!(
            err.to_string().contains("differs from the bundle's"),
            "{err}"
        );
    }
}
