//! Tool provisioning: kind, pinned to one release. A `kind` on PATH is used when it is that
//! release, or a newer v0.x (same config API; used with a warning, see [`kind_fit`]); otherwise
//! the release binary is downloaded (HTTPS only) into a cache folder and verified against the
//! sha256 pinned here for this platform and the published `.sha256sum`. The cached binary is
//! hashed again before every use. Any mismatch is refused.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail, ensure};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

pub const KIND_VERSION: &str = "v0.32.0";
pub const KIND_BASE_URL: &str = "https://kind.sigs.k8s.io/dl";
/// sha256 of kind v0.32.0's release binaries, one per platform kind publishes for Linux and
/// macOS. Where they come from (public sources; nothing here was computed on this machine):
/// - all four: cert-manager/makefile-modules, `modules/tools/00_mod.mk` at commit
///   02b378ff771ea38db2b95fa3d54a8ad542a2ce2f (`kind_<os>_<arch>_SHA256SUM`, tools += kind=v0.32.0);
/// - linux-amd64 also: DESIGN.md (one public install script);
/// - the same four values again in several independent install scripts and Makefiles that pin
///   kind v0.32.0 (found by searching public repositories for each value).
///
/// A platform without a pin is refused unless `IRIS_KIND_ALLOW_UNPINNED=1` (see [`ALLOW_UNPINNED_ENV`]).
pub const KIND_PINNED_SHA256: &[(&str, &str)] = &[
    (
        "linux-amd64",
        "50030de23cf40a18505f20426f6a8506bedf13c6e509244bd1fa9463721b0f54",
    ),
    (
        "linux-arm64",
        "b92cd615e97585de8ddade28ed5cd7feb4248d717c233eea5b03c37298900f5d",
    ),
    (
        "darwin-amd64",
        "295ac6d0d634c9819c9907df45e3017d1f13166bd13c3404c45e79f7faa47498",
    ),
    (
        "darwin-arm64",
        "dca67911095a110c2b5c36e26df6cac860c602033e456c0db47be498cdef1ebb",
    ),
];

/// Set to `1` to let a platform without a pinned sha256 download kind checked only against the
/// `.sha256sum` published beside it (the same server: weaker). The checksum is then recorded in
/// the cache beside the binary and the cached binary is re-hashed against that record.
pub const ALLOW_UNPINNED_ENV: &str = "IRIS_KIND_ALLOW_UNPINNED";

pub const KIND_INSTALL_HINT: &str = "install kind v0.32.0 (the tested release; a later v0.x is used too) yourself and put it on PATH \
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

fn allow_unpinned() -> bool {
    std::env::var(ALLOW_UNPINNED_ENV).is_ok_and(|v| v == "1")
}

/// Where downloaded tools live: `$XDG_CACHE_HOME/iris-serve`, else `~/.cache/iris-serve`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("iris-serve");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".cache/iris-serve"),
        None => crate::platform::paths::project_root().join("target/tools"),
    }
}

pub fn cached_kind() -> PathBuf {
    cache_dir().join("kind").join(KIND_VERSION).join("kind")
}

/// The published checksum recorded beside a kind downloaded for a platform without a pin.
fn recorded_sum_path(binary: &Path) -> PathBuf {
    binary.with_file_name("kind.published-sha256")
}

/// sha256 of a file's bytes, read without following a symlink at `path`.
pub fn sha256_file(path: &Path) -> anyhow::Result<String> {
    crate::platform::oci::copy_hashed(&mut open_no_follow(path)?, &mut std::io::sink())
}

/// Opens a regular file for reading; a symlink (or anything else) at `path` is an error.
pub fn open_no_follow(path: &Path) -> anyhow::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32);
    }
    let file = options
        .open(path)
        .with_context(|| format!("opening {} (symlinks are refused)", path.display()))?;
    ensure!(
        file.metadata()?.is_file(),
        "{} is not a regular file",
        path.display()
    );
    Ok(file)
}

/// What the cached kind must hash to: the pin for this platform, else (only with
/// `IRIS_KIND_ALLOW_UNPINNED=1`) the published checksum recorded when it was downloaded.
fn cache_expectation(binary: &Path) -> Option<String> {
    if let Some(pinned) = pinned_sha256(&platform()) {
        return Some(pinned.to_owned());
    }
    if !allow_unpinned() {
        return None;
    }
    std::fs::read_to_string(recorded_sum_path(binary))
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| s.len() == 64)
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

/// How a kind release relates to the pinned one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KindFit {
    /// [`KIND_VERSION`] itself.
    Pinned,
    /// A later v0.x: kind keeps its config API (`kind.x-k8s.io/v1alpha4`, which `kind/cluster.yaml`
    /// is written in) across 0.x releases, so it is used, untested.
    Newer,
    /// Older than the pin, a 1.x (another config API may come with it), or not a version at all.
    Unusable,
}

/// Compares as semver (`v0.32.0 < v0.33.0-alpha < v0.33.0 < v0.100.0`): v0.32.0 and every later
/// v0.x fit; a pre-release of v0.32.0 itself does not.
pub fn kind_fit(version: &str) -> KindFit {
    let parse = |v: &str| semver::Version::parse(v.strip_prefix('v').unwrap_or(v)).ok();
    let (Some(found), Some(pinned)) = (parse(version), parse(KIND_VERSION)) else {
        return KindFit::Unusable;
    };
    if found.major != pinned.major {
        KindFit::Unusable
    } else if found == pinned {
        KindFit::Pinned
    } else if found > pinned {
        KindFit::Newer
    } else {
        KindFit::Unusable
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum KindStatus {
    /// The pinned release, usable as is.
    Ready {
        path: PathBuf,
        from_cache: bool,
    },
    /// A kind newer than the pinned one on PATH, within the same config API: used as is, with a
    /// warning (it is not the release the harness was tested with).
    Newer {
        path: PathBuf,
        version: String,
    },
    /// A kind on PATH that is not usable (older than the pin, or another major version): the
    /// pinned one will be fetched.
    OtherVersion {
        path: PathBuf,
        version: String,
    },
    /// The cached kind's bytes are not the pinned release's (changed after it was cached, or no
    /// pin to check it against): refused.
    Untrusted {
        path: PathBuf,
        reason: String,
    },
    Missing,
}

/// Checks the cached kind's bytes against what they must be. Run before every use: the cache
/// is a folder other programs can write.
pub fn verify_cached(path: &Path) -> Result<(), String> {
    let Some(expected) = cache_expectation(path) else {
        return Err(format!(
            "kind {KIND_VERSION} has no pinned sha256 for {} (set {ALLOW_UNPINNED_ENV}=1 to trust the checksum recorded at download)",
            platform()
        ));
    };
    verify_file(path, &expected)
}

/// `path`'s bytes hash to `expected` (read without following a symlink).
pub fn verify_file(path: &Path, expected: &str) -> Result<(), String> {
    match sha256_file(path) {
        Ok(actual) if actual == expected => Ok(()),
        Ok(actual) => Err(format!(
            "its sha256 is {actual}, not the expected {expected} (it changed after it was cached)"
        )),
        Err(e) => Err(format!("{e:#}")),
    }
}

pub fn find_kind() -> KindStatus {
    find_kind_in(std::env::var_os("PATH").as_deref(), &cached_kind())
}

/// The kind to use, in order: the pinned release on `path_var`, the verified cached download
/// (the tested release beats a newer one), a newer v0.x on `path_var`.
fn find_kind_in(path_var: Option<&std::ffi::OsStr>, cached: &Path) -> KindStatus {
    let on_path = std::env::current_dir()
        .ok()
        .and_then(|cwd| which::which_in("kind", path_var, cwd).ok())
        .map(|path| {
            let version = kind_version(&path);
            (path, version)
        });
    if let Some((path, Some(version))) = &on_path
        && kind_fit(version) == KindFit::Pinned
    {
        return KindStatus::Ready {
            path: path.clone(),
            from_cache: false,
        };
    }
    if cached.symlink_metadata().is_ok() {
        // Hashed before it is run at all: `kind version` would already execute whatever is there.
        return match verify_cached(cached) {
            Ok(()) => KindStatus::Ready {
                path: cached.to_path_buf(),
                from_cache: true,
            },
            Err(reason) => KindStatus::Untrusted {
                path: cached.to_path_buf(),
                reason,
            },
        };
    }
    match on_path {
        Some((path, Some(version))) if kind_fit(&version) == KindFit::Newer => {
            KindStatus::Newer { path, version }
        }
        Some((path, version)) => KindStatus::OtherVersion {
            version: version.unwrap_or_else(|| "unknown".to_owned()),
            path,
        },
        None => KindStatus::Missing,
    }
}

fn untrusted_error(path: &Path, reason: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "refusing the cached kind at {}: {reason}; delete it (`rm {}`) and rerun to fetch the verified release",
        path.display(),
        path.display()
    )
}

/// A path to a usable kind (the pinned one, or a newer v0.x on PATH), downloading the pinned
/// one only when there is none, and never when `offline`.
pub async fn ensure_kind(offline: bool) -> anyhow::Result<PathBuf> {
    match find_kind() {
        KindStatus::Ready { path, .. } | KindStatus::Newer { path, .. } => Ok(path),
        KindStatus::Untrusted { path, reason } => Err(untrusted_error(&path, &reason)),
        status if offline => bail!(
            "kind {KIND_VERSION} or a newer v0.x is needed and --offline forbids downloading it ({}); {KIND_INSTALL_HINT}",
            match status {
                KindStatus::OtherVersion { version, path } => format!(
                    "PATH has kind {version} at {}, which is not usable",
                    path.display()
                ),
                _ => "no kind on PATH".to_owned(),
            }
        ),
        _ => download_for_this_platform().await,
    }
}

async fn download_for_this_platform() -> anyhow::Result<PathBuf> {
    let platform = platform();
    let pinned = pinned_sha256(&platform);
    if pinned.is_none() {
        ensure!(
            allow_unpinned(),
            "kind {KIND_VERSION} has no pinned sha256 for {platform} (xtask/src/platform/kind.rs pins {}); \
             refusing to download it. Set {ALLOW_UNPINNED_ENV}=1 to accept the published .sha256sum alone, or {KIND_INSTALL_HINT}",
            KIND_PINNED_SHA256
                .iter()
                .map(|(p, _)| *p)
                .collect::<Vec<_>>()
                .join(", ")
        );
        eprintln!(
            "  WARNING: {platform} has no pinned kind checksum; {ALLOW_UNPINNED_ENV}=1: trusting the published .sha256sum alone"
        );
    }
    download_verified(
        KIND_BASE_URL,
        KIND_VERSION,
        &platform,
        pinned,
        &cached_kind(),
    )
    .await
    .with_context(|| format!("could not provision kind {KIND_VERSION}; {KIND_INSTALL_HINT}"))
}

/// The pinned release binary itself, for a bundle: a kind on PATH only if its bytes are the
/// release's (a `go install` build of the same version is not), else the verified cache, else a
/// verified download (unless `offline`).
pub async fn ensure_release_kind(offline: bool) -> anyhow::Result<PathBuf> {
    let platform = platform();
    let pinned = pinned_sha256(&platform).with_context(|| {
        format!("kind {KIND_VERSION} has no pinned sha256 for {platform}: a bundle carries only a pinned kind (use --without-kind)")
    })?;
    if let Ok(path) = which::which("kind")
        && sha256_file(&path).is_ok_and(|s| s == pinned)
    {
        return Ok(path);
    }
    match find_kind_in(std::env::var_os("PATH").as_deref(), &cached_kind()) {
        KindStatus::Ready {
            path,
            from_cache: true,
        } => Ok(path),
        KindStatus::Untrusted { path, reason } => Err(untrusted_error(&path, &reason)),
        _ if offline => bail!(
            "no kind {KIND_VERSION} release binary (sha256 {pinned}) here and --offline forbids downloading it; {KIND_INSTALL_HINT}"
        ),
        _ => download_for_this_platform().await,
    }
}

/// Installs `src` as the cached kind: copied into a temporary file in the cache folder (hashed
/// as it is written; nobody else can write that file), renamed into place only when the copy's
/// sha256 is `expected`. The rename replaces whatever is at `dest` (a symlink included) and never
/// follows it; `src` itself must not be a symlink.
pub fn install_kind(src: &Path, expected: &str, dest: &Path) -> anyhow::Result<PathBuf> {
    let dir = dest.parent().context("destination has no folder")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut copy = tempfile::NamedTempFile::new_in(dir)?;
    let actual = crate::platform::oci::copy_hashed(&mut open_no_follow(src)?, &mut copy)?;
    copy.flush()?;
    ensure!(
        actual == expected,
        "refusing kind from {}: sha256 {actual} differs from the pinned {expected}",
        src.display()
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(copy.path(), std::fs::Permissions::from_mode(0o755))?;
    }
    copy.persist(dest)
        .with_context(|| format!("saving {}", dest.display()))?;
    Ok(dest.to_path_buf())
}

/// The HTTP client for downloads: HTTPS only, redirects included (a redirect to http:// fails).
pub fn http_client() -> anyhow::Result<reqwest::Client> {
    client_builder()
        .https_only(true)
        .build()
        .map_err(Into::into)
}

fn client_builder() -> reqwest::ClientBuilder {
    // reqwest is built without a bundled crypto provider; use ring, as kube does.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(10))
        .timeout(std::time::Duration::from_secs(600))
}

/// Downloads `{base}/{version}/kind-{platform}` to `dest`, verified against `pinned` (when there
/// is no pin: only with [`ALLOW_UNPINNED_ENV`], and the published checksum is recorded beside
/// the binary) and the `.sha256sum` beside it. Nothing is left at `dest` unless verified.
pub async fn download_verified(
    base: &str,
    version: &str,
    platform: &str,
    pinned: Option<&str>,
    dest: &Path,
) -> anyhow::Result<PathBuf> {
    download_with(&http_client()?, base, version, platform, pinned, dest).await
}

async fn download_with(
    client: &reqwest::Client,
    base: &str,
    version: &str,
    platform: &str,
    pinned: Option<&str>,
    dest: &Path,
) -> anyhow::Result<PathBuf> {
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
    if pinned.is_none() {
        let mut record = tempfile::NamedTempFile::new_in(dir)?;
        writeln!(record, "{actual}")?;
        record.persist(recorded_sum_path(dest))?;
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
    /// A release folder as kind's download site has it: the binary for linux-amd64 and its
    /// published `.sha256sum`, which names the sha256 of `published` (the binary itself, or
    /// another file to make the two disagree).
    fn release(version: &str, binary: &[u8], published: &[u8]) -> HashMap<String, Vec<u8>> {
        HashMap::from([
            (format!("/dl/{version}/kind-linux-amd64"), binary.to_vec()),
            (
                format!("/dl/{version}/kind-linux-amd64.sha256sum"),
                format!("{}  kind-linux-amd64\n", sum(published)).into_bytes(),
            ),
        ])
    }

    /// `release` served on loopback: the base URL, and a folder with the destination in it.
    async fn site(
        version: &str,
        binary: &[u8],
        published: &[u8],
    ) -> (String, tempfile::TempDir, std::path::PathBuf) {
        let base = serve(release(version, binary, published)).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("kind");
        (base, dir, dest)
    }

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

    /// The local test server speaks plain HTTP, which the real client refuses: the tests use the
    /// same download code through a client that allows it.
    fn plain_http_client() -> reqwest::Client {
        client_builder().build().expect("client")
    }

    fn sum(bytes: &[u8]) -> String {
        iris_serve::model::sha256_hex(bytes)
    }

    #[tokio::test]
    async fn downloads_and_verifies_a_good_release() {
        let binary = b"#!/bin/sh\necho kind v9.9.9\n".to_vec();
        let files = release("v9.9.9", &binary, &binary);
        let base = serve(files).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("bin/kind");
        let pinned = sum(&binary);
        let path = download_with(
            &plain_http_client(),
            &base,
            "v9.9.9",
            "linux-amd64",
            Some(&pinned),
            &dest,
        )
        .await
        .expect("download");
        assert_eq!(std::fs::read(&path).expect("read"), binary);
        assert_eq!(kind_version(&path).as_deref(), Some("v9.9.9"));
        assert!(
            !recorded_sum_path(&dest).exists(),
            "a pinned download records nothing"
        );
    }

    #[tokio::test]
    async fn the_real_client_refuses_plain_http() {
        let binary = b"served over http".to_vec();
        let (base, _dir, dest) = site("v1", &binary, &binary).await;
        let err = download_verified(&base, "v1", "linux-amd64", Some(&sum(&binary)), &dest)
            .await
            .expect_err("http must be refused");
        let chain = format!("{err:?}");
        assert!(chain.contains("scheme"), "{chain}");
        assert!(!dest.exists());
    }

    #[tokio::test]
    async fn refuses_a_tampered_binary_and_leaves_nothing() {
        let good = b"the real kind".to_vec();
        let (base, dir, dest) = site("v1", b"the real kind, plus a backdoor", &good).await;
        let err = download_with(
            &plain_http_client(),
            &base,
            "v1",
            "linux-amd64",
            Some(&sum(&good)),
            &dest,
        )
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
        let (base, _dir, dest) = site("v1", &binary, &binary).await;
        let pinned = sum(b"the binary we pinned");
        let client = plain_http_client();
        let err = download_with(&client, &base, "v1", "linux-amd64", Some(&pinned), &dest)
            .await
            .expect_err("mismatch");
        assert!(err.to_string().contains("differs from the pinned"), "{err}");
        assert!(!dest.exists());
        let missing = download_with(&client, &base, "v2", "linux-amd64", Some(&pinned), &dest)
            .await
            .expect_err("404");
        assert!(format!("{missing:#}").contains("404"), "{missing:#}");
    }

    #[tokio::test]
    async fn an_unpinned_download_records_the_published_sum_for_later_checks() {
        let binary = b"kind for a platform nobody pinned".to_vec();
        let files = HashMap::from([
            ("/dl/v1/kind-plan9-mips".to_owned(), binary.clone()),
            (
                "/dl/v1/kind-plan9-mips.sha256sum".to_owned(),
                format!("{}  kind\n", sum(&binary)).into_bytes(),
            ),
        ]);
        let base = serve(files).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("kind");
        download_with(&plain_http_client(), &base, "v1", "plan9-mips", None, &dest)
            .await
            .expect("download");
        let recorded = std::fs::read_to_string(recorded_sum_path(&dest)).expect("record");
        assert_eq!(recorded.trim(), sum(&binary));
        assert_eq!(verify_file(&dest, recorded.trim()), Ok(()));
    }

    /// A kind that says it is v0.32.0 is not trusted for saying so: the cached file is hashed
    /// against the pin before anything runs it.
    #[test]
    fn a_cached_kind_that_is_not_the_pinned_release_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cached = fake_kind(dir.path(), KIND_VERSION);
        let fake = std::fs::read(&cached).expect("read");
        assert_eq!(kind_version(&cached).as_deref(), Some(KIND_VERSION));
        // A PATH of an empty folder: no kind there takes precedence over the cache.
        let empty = tempfile::tempdir().expect("tempdir");
        match find_kind_in(Some(empty.path().as_os_str()), &cached) {
            KindStatus::Untrusted { path, reason } => {
                assert_eq!(path, cached);
                assert!(reason.contains(&sum(&fake)), "{reason}");
            }
            other => panic!("a cached kind that only prints the version was accepted: {other:?}"),
        }
    }

    /// The cached copy is changed after it was installed (verified): the next use refuses it.
    #[test]
    fn a_swapped_cached_kind_is_refused_on_the_next_use() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("bundled-kind");
        std::fs::write(&src, b"the verified kind").expect("write");
        let expected = sum(b"the verified kind");
        let dest = dir.path().join("cache/kind");
        install_kind(&src, &expected, &dest).expect("install");
        assert_eq!(verify_file(&dest, &expected), Ok(()));
        std::fs::write(&dest, b"the verified kind, swapped").expect("swap");
        let refused = verify_file(&dest, &expected).expect_err("swapped");
        assert!(refused.contains("changed after it was cached"), "{refused}");
    }

    #[test]
    fn install_replaces_a_symlink_at_the_destination_and_never_writes_through_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"not kind's to touch").expect("victim");
        let cache = dir.path().join("cache");
        std::fs::create_dir(&cache).expect("cache");
        let dest = cache.join("kind");
        std::os::unix::fs::symlink(&victim, &dest).expect("symlink");
        let src = dir.path().join("bundled-kind");
        std::fs::write(&src, b"kind bytes").expect("src");

        let wrong = install_kind(&src, &sum(b"other bytes"), &dest).expect_err("wrong sum");
        assert!(
            wrong.to_string().contains("differs from the pinned"),
            "{wrong}"
        );
        assert_eq!(
            std::fs::read_dir(&cache).expect("cache").count(),
            1,
            "only the symlink: no temp file left behind"
        );

        install_kind(&src, &sum(b"kind bytes"), &dest).expect("install");
        assert_eq!(
            std::fs::read(&victim).expect("victim"),
            b"not kind's to touch"
        );
        assert!(dest.symlink_metadata().expect("dest").file_type().is_file());
        assert_eq!(std::fs::read(&dest).expect("dest"), b"kind bytes");

        // A symlinked source is refused too (a bundle must hold the bytes it claims).
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&src, &link).expect("symlink");
        assert!(install_kind(&link, &sum(b"kind bytes"), &dest).is_err());
    }

    /// A `kind` in `dir` that answers `kind version` as a release built with the machine's Go
    /// would (`kind v0.33.0 go1.26.8 linux/amd64`, what Debian unstable's kind 0.33.0 prints).
    fn fake_kind(dir: &Path, version: &str) -> PathBuf {
        let path = dir.join("kind");
        let script = format!(
            "#!/bin/sh\nif [ \"$1\" = version ]; then echo \"kind {version} go1.26.8 linux/amd64\"; exit 0; fi\nexit 1\n"
        );
        std::fs::write(&path, script).expect("write");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        path
    }

    #[test]
    fn kind_fit_accepts_the_pin_and_later_0x_releases_only() {
        for (version, fit) in [
            ("v0.32.0", KindFit::Pinned),
            ("v0.32.1", KindFit::Newer),
            ("v0.33.0", KindFit::Newer),
            ("v0.33.0-alpha", KindFit::Newer),
            ("v0.100.0", KindFit::Newer),
            ("v0.32.0-alpha.1", KindFit::Unusable),
            ("v0.31.9", KindFit::Unusable),
            ("v0.9.0", KindFit::Unusable),
            ("v1.0.0", KindFit::Unusable),
            ("v1.0.0-alpha", KindFit::Unusable),
            ("v0.33", KindFit::Unusable),
            ("unknown", KindFit::Unusable),
        ] {
            assert_eq!(kind_fit(version), fit, "{version}");
        }
        let v = |s: &str| semver::Version::parse(s).expect(s);
        assert!(v("0.32.0") < v("0.33.0-alpha") && v("0.33.0-alpha") < v("0.33.0"));
        assert!(v("0.33.0") < v("0.100.0"));
    }

    #[test]
    fn find_kind_takes_a_newer_kind_on_path_with_a_warning_and_not_an_older_one() {
        let no_cache = tempfile::tempdir().expect("tempdir");
        let cached = no_cache.path().join("kind");
        for (version, expect_newer) in [
            ("v0.33.0", true),
            ("v0.100.0", true),
            ("v0.31.0", false),
            ("v1.0.0", false),
        ] {
            let bin = tempfile::tempdir().expect("tempdir");
            let kind = fake_kind(bin.path(), version);
            let path_var =
                std::env::join_paths([bin.path(), Path::new("/usr/bin"), Path::new("/bin")])
                    .expect("PATH");
            eprintln!("fake kind on PATH says: kind {version} go1.26.8 linux/amd64");
            let status = find_kind_in(Some(&path_var), &cached);
            let expected = if expect_newer {
                KindStatus::Newer {
                    path: kind,
                    version: version.to_owned(),
                }
            } else {
                KindStatus::OtherVersion {
                    path: kind,
                    version: version.to_owned(),
                }
            };
            assert_eq!(status, expected, "{version}");
        }
        let bin = tempfile::tempdir().expect("tempdir");
        let kind = fake_kind(bin.path(), KIND_VERSION);
        assert_eq!(
            find_kind_in(Some(bin.path().as_os_str()), &cached),
            KindStatus::Ready {
                path: kind,
                from_cache: false
            }
        );
        let empty = tempfile::tempdir().expect("tempdir");
        assert_eq!(
            find_kind_in(Some(empty.path().as_os_str()), &cached),
            KindStatus::Missing
        );
    }

    #[test]
    fn reads_kind_versions_and_pins_every_release_platform() {
        assert_eq!(
            parse_kind_version("kind v0.32.0 go1.24.3 linux/amd64").as_deref(),
            Some("v0.32.0")
        );
        assert_eq!(parse_kind_version("garbage"), None);
        assert_eq!(
            pinned_sha256("linux-amd64"),
            Some("50030de23cf40a18505f20426f6a8506bedf13c6e509244bd1fa9463721b0f54")
        );
        for platform in ["linux-amd64", "linux-arm64", "darwin-amd64", "darwin-arm64"] {
            let pin = pinned_sha256(platform).unwrap_or_else(|| panic!("{platform} unpinned"));
            assert!(
                pin.len() == 64 && pin.chars().all(|c| c.is_ascii_hexdigit()),
                "{platform}: {pin}"
            );
        }
        assert_eq!(pinned_sha256("windows-amd64"), None);
    }
}
