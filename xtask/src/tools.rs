//! Tool provisioning: kind, pinned to one release. A `kind` on PATH is used when it is that
//! release; otherwise the release binary is downloaded into a cache folder and verified against
//! the published `.sha256sum` and the checksum pinned here. Any mismatch is refused.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail, ensure};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

pub const KIND_VERSION: &str = "v0.32.0";
pub const KIND_BASE_URL: &str = "https://kind.sigs.k8s.io/dl";
/// sha256 of the release binaries, as pinned by this project (checked in addition to the
/// published `.sha256sum`). Platforms not listed rely on the published checksum alone.
pub const KIND_PINNED_SHA256: &[(&str, &str)] = &[(
    "linux-amd64",
    "50030de23cf40a18505f20426f6a8506bedf13c6e509244bd1fa9463721b0f54",
)];

pub const KIND_INSTALL_HINT: &str = "install kind v0.32.0 yourself and put it on PATH \
(https://kind.sigs.k8s.io/docs/user/quick-start/#installation, or `go install sigs.k8s.io/kind@v0.32.0`), \
or copy a verified kind v0.32.0 binary to ~/.cache/iris-serve/kind/v0.32.0/kind";

/// This machine's architecture as Go (kind, Docker, containerd) names it: `amd64`, `arm64`.
pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// `linux-amd64`, `darwin-arm64`, ... as kind names its release binaries.
pub fn platform() -> String {
    format!("{}-{}", std::env::consts::OS, go_arch())
}

pub fn pinned_sha256(platform: &str) -> Option<&'static str> {
    KIND_PINNED_SHA256
        .iter()
        .find(|(p, _)| *p == platform)
        .map(|(_, s)| *s)
}

/// Where downloaded tools live: `$XDG_CACHE_HOME/iris-serve`, else `~/.cache/iris-serve`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("iris-serve");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".cache/iris-serve"),
        None => crate::project_root().join("target/tools"),
    }
}

pub fn cached_kind() -> PathBuf {
    cache_dir().join("kind").join(KIND_VERSION).join("kind")
}

/// What `kind version` says, e.g. `v0.32.0`.
pub fn kind_version(path: &Path) -> Option<String> {
    let out = duct::cmd(path, ["version"])
        .stdout_capture()
        .stderr_null()
        .unchecked()
        .run()
        .ok()?;
    parse_kind_version(&String::from_utf8_lossy(&out.stdout))
}

pub fn parse_kind_version(text: &str) -> Option<String> {
    text.split_whitespace()
        .find(|w| w.starts_with('v') && w[1..].starts_with(|c: char| c.is_ascii_digit()))
        .map(str::to_owned)
}

#[derive(Debug, Clone, PartialEq)]
pub enum KindStatus {
    /// The pinned release, usable as is.
    Ready {
        path: PathBuf,
        from_cache: bool,
    },
    /// A kind of another version on PATH (the pinned one will be fetched).
    OtherVersion {
        path: PathBuf,
        version: String,
    },
    Missing,
}

pub fn find_kind() -> KindStatus {
    let cached = cached_kind();
    let on_path = which::which("kind").ok();
    if let Some(path) = &on_path
        && kind_version(path).as_deref() == Some(KIND_VERSION)
    {
        return KindStatus::Ready {
            path: path.clone(),
            from_cache: false,
        };
    }
    if cached.exists() && kind_version(&cached).as_deref() == Some(KIND_VERSION) {
        return KindStatus::Ready {
            path: cached,
            from_cache: true,
        };
    }
    match on_path {
        Some(path) => KindStatus::OtherVersion {
            version: kind_version(&path).unwrap_or_else(|| "unknown".to_owned()),
            path,
        },
        None => KindStatus::Missing,
    }
}

/// A path to the pinned kind, downloading it unless `offline`.
pub async fn ensure_kind(offline: bool) -> anyhow::Result<PathBuf> {
    match find_kind() {
        KindStatus::Ready { path, .. } => Ok(path),
        status if offline => bail!(
            "kind {KIND_VERSION} is needed and --offline forbids downloading it ({}); {KIND_INSTALL_HINT}",
            match status {
                KindStatus::OtherVersion { version, .. } => format!("PATH has kind {version}"),
                _ => "no kind on PATH".to_owned(),
            }
        ),
        _ => {
            let platform = platform();
            download_verified(
                KIND_BASE_URL,
                KIND_VERSION,
                &platform,
                pinned_sha256(&platform),
                &cached_kind(),
            )
            .await
            .with_context(|| {
                format!("could not provision kind {KIND_VERSION}; {KIND_INSTALL_HINT}")
            })
        }
    }
}

pub fn http_client() -> anyhow::Result<reqwest::Client> {
    // reqwest is built without a bundled crypto provider; use ring, as kube does.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Ok(reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(10))
        .timeout(std::time::Duration::from_secs(600))
        .build()?)
}

/// Downloads `{base}/{version}/kind-{platform}` to `dest`, verified against the `.sha256sum`
/// beside it and, when given, the pinned checksum. Nothing is left at `dest` unless verified.
pub async fn download_verified(
    base: &str,
    version: &str,
    platform: &str,
    pinned: Option<&str>,
    dest: &Path,
) -> anyhow::Result<PathBuf> {
    let client = http_client()?;
    let url = format!("{base}/{version}/kind-{platform}");
    let sum_url = format!("{url}.sha256sum");
    eprintln!("  downloading {url}");
    let sums = client
        .get(&sum_url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .with_context(|| format!("fetching {sum_url}"))?
        .text()
        .await?;
    let published = sums
        .split_whitespace()
        .next()
        .filter(|s| s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit()))
        .with_context(|| format!("{sum_url} does not hold a sha256"))?
        .to_lowercase();
    if let Some(pinned) = pinned {
        ensure!(
            published == pinned,
            "refusing kind {version}: the published checksum {published} differs from the pinned {pinned}"
        );
    }
    let response = client
        .get(&url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .with_context(|| format!("fetching {url}"))?;
    let dir = dest.parent().context("destination has no folder")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    let bar = ProgressBar::new(response.content_length().unwrap_or(0));
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        bar.set_style(
            ProgressStyle::with_template("  kind {bar:30} {bytes}/{total_bytes}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut hasher = Sha256::new();
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.with_context(|| format!("downloading {url}"))?;
        hasher.update(&chunk);
        file.write_all(&chunk)?;
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    let actual = iris_serve::model::hex(&hasher.finalize());
    ensure!(
        actual == published,
        "refusing the downloaded kind: its sha256 {actual} differs from the published {published}"
    );
    file.flush()?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(file.path(), std::fs::Permissions::from_mode(0o755))?;
    }
    file.persist(dest)
        .with_context(|| format!("saving {}", dest.display()))?;
    eprintln!(
        "  kind {version} verified (sha256 {actual}) at {}",
        dest.display()
    );
    Ok(dest.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Arc;

    /// A static file server on 127.0.0.1 with the given path → body map.
    async fn serve(files: HashMap<String, Vec<u8>>) -> String {
        let files = Arc::new(files);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
            let files = files.clone();
            async move {
                match files.get(uri.path()) {
                    Some(body) => (axum::http::StatusCode::OK, body.clone()),
                    None => (axum::http::StatusCode::NOT_FOUND, Vec::new()),
                }
            }
        });
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        format!("http://{addr}/dl")
    }

    fn sum(bytes: &[u8]) -> String {
        iris_serve::model::sha256_hex(bytes)
    }

    #[tokio::test]
    async fn downloads_and_verifies_a_good_release() {
        let binary = b"#!/bin/sh\necho kind v9.9.9\n".to_vec();
        let files = HashMap::from([
            ("/dl/v9.9.9/kind-linux-amd64".to_owned(), binary.clone()),
            (
                "/dl/v9.9.9/kind-linux-amd64.sha256sum".to_owned(),
                format!("{}  kind-linux-amd64\n", sum(&binary)).into_bytes(),
            ),
        ]);
        let base = serve(files).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("bin/kind");
        let pinned = sum(&binary);
        let path = download_verified(&base, "v9.9.9", "linux-amd64", Some(&pinned), &dest)
            .await
            .expect("download");
        assert_eq!(std::fs::read(&path).expect("read"), binary);
        assert_eq!(kind_version(&path).as_deref(), Some("v9.9.9"));
    }

    #[tokio::test]
    async fn refuses_a_tampered_binary_and_leaves_nothing() {
        let good = b"the real kind".to_vec();
        let files = HashMap::from([
            (
                "/dl/v1/kind-linux-amd64".to_owned(),
                b"the real kind, plus a backdoor".to_vec(),
            ),
            (
                "/dl/v1/kind-linux-amd64.sha256sum".to_owned(),
                format!("{}  kind\n", sum(&good)).into_bytes(),
            ),
        ]);
        let base = serve(files).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("kind");
        let err = download_verified(&base, "v1", "linux-amd64", None, &dest)
            .await
            .expect_err("tampered");
        assert!(
            err.to_string().contains("differs from the published"),
            "{err}"
        );
        assert!(!dest.exists());
        assert_eq!(
            std::fs::read_dir(dir.path()).expect("dir").count(),
            0,
            "temp file left behind"
        );
    }

    #[tokio::test]
    async fn refuses_when_the_published_checksum_is_not_the_pinned_one() {
        let binary = b"a different kind".to_vec();
        let files = HashMap::from([
            ("/dl/v1/kind-linux-amd64".to_owned(), binary.clone()),
            (
                "/dl/v1/kind-linux-amd64.sha256sum".to_owned(),
                format!("{}  kind\n", sum(&binary)).into_bytes(),
            ),
        ]);
        let base = serve(files).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("kind");
        let pinned = sum(b"the binary we pinned");
        let err = download_verified(&base, "v1", "linux-amd64", Some(&pinned), &dest)
            .await
            .expect_err("mismatch");
        assert!(err.to_string().contains("differs from the pinned"), "{err}");
        assert!(!dest.exists());
        let missing = download_verified(&base, "v2", "linux-amd64", None, &dest)
            .await
            .expect_err("404");
        assert!(format!("{missing:#}").contains("404"), "{missing:#}");
    }

    #[test]
    fn reads_kind_versions_and_pins() {
        assert_eq!(
            parse_kind_version("kind v0.32.0 go1.24.3 linux/amd64").as_deref(),
            Some("v0.32.0")
        );
        assert_eq!(parse_kind_version("garbage"), None);
        assert_eq!(
            pinned_sha256("linux-amd64"),
            Some("50030de23cf40a18505f20426f6a8506bedf13c6e509244bd1fa9463721b0f54")
        );
    }
}
