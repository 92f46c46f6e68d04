//! What a `docker save` tar holds, read without Docker: the tags it would apply and whether its
//! content is reachable from a pinned digest. Docker 25+ writes an OCI layout (`index.json`,
//! `oci-layout`, `blobs/sha256/<digest>`) plus the legacy `manifest.json` (and, from the classic
//! image store, `repositories`). `docker load` takes the tags from `manifest.json` (classic store)
//! or from `index.json`'s `io.containerd.image.name` annotations (containerd image store), so
//! both are checked before a tar is handed to Docker.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};

use anyhow::{Context, bail, ensure};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Blobs up to this size are kept in memory to be read as JSON (indexes, manifests, configs);
/// larger ones (layers) are only hashed.
const KEEP_LIMIT: u64 = 4 * 1024 * 1024;
/// The small files of the layout.
const JSON_LIMIT: u64 = 1024 * 1024;

/// A tar that passed [`verify_save`].
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    /// sha256 of the whole tar.
    pub sha256: String,
    /// The digest `index.json` names (what the containerd image store reports as the image id).
    pub descriptor: String,
    /// Image config digests reachable from the pin (what the classic store reports as the id).
    pub configs: BTreeSet<String>,
}

impl Verified {
    /// An image id Docker may report for the loaded image, on either image store.
    pub fn is_id(&self, id: &str) -> bool {
        id == self.descriptor || self.configs.contains(id)
    }
}

/// Updates a sha256 with everything read through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
        }
    }

    pub fn finish(self) -> String {
        iris_serve::model::hex(&self.hasher.finalize())
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SaveEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    #[serde(default)]
    layers: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Index {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
struct Descriptor {
    digest: String,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// Everything the tar holds, each blob checked against its own name.
#[derive(Default)]
struct Contents {
    /// Digests (`sha256:<hex>`) of every blob, all verified.
    blobs: BTreeSet<String>,
    /// The small blobs' bytes, by digest.
    small: BTreeMap<String, Vec<u8>>,
    files: BTreeMap<&'static str, Vec<u8>>,
}

const LAYOUT_FILES: [&str; 4] = ["index.json", "manifest.json", "oci-layout", "repositories"];

fn is_hex64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Reads every entry: only the layout's own plain names, regular files and folders, each once;
/// every blob hashed against its name.
fn read_contents(reader: impl Read) -> anyhow::Result<(Contents, String)> {
    let mut hashing = HashingReader::new(reader);
    let mut contents = Contents::default();
    {
        let mut archive = tar::Archive::new(&mut hashing);
        let mut seen = BTreeSet::new();
        for entry in archive.entries().context("not a tar archive")? {
            let mut entry = entry.context("reading the tar")?;
            let raw = String::from_utf8(entry.path_bytes().into_owned())
                .context("a tar entry name is not UTF-8")?;
            let name = raw.trim_end_matches('/').to_owned();
            ensure!(
                seen.insert(name.clone()),
                "the tar holds {name:?} twice (which copy Docker reads is not for us to guess)"
            );
            let kind = entry.header().entry_type();
            if kind.is_dir() {
                ensure!(
                    name == "blobs" || name == "blobs/sha256",
                    "unexpected folder {raw:?} in the tar"
                );
                continue;
            }
            ensure!(
                kind.is_file(),
                "{raw:?} in the tar is a {kind:?}, not a regular file (links are refused)"
            );
            if let Some(hex) = name.strip_prefix("blobs/sha256/") {
                ensure!(is_hex64(hex), "unexpected blob name {raw:?} in the tar");
                let digest = format!("sha256:{hex}");
                let keep = entry.size() <= KEEP_LIMIT;
                let mut kept = Vec::new();
                let actual = if keep {
                    copy_hashed(&mut entry, &mut kept)?
                } else {
                    copy_hashed(&mut entry, &mut std::io::sink())?
                };
                ensure!(
                    actual == hex,
                    "blob {hex} in the tar has sha256 {actual}: its content is not what its name says"
                );
                if keep {
                    contents.small.insert(digest.clone(), kept);
                }
                contents.blobs.insert(digest);
            } else if let Some(file) = LAYOUT_FILES.iter().find(|f| **f == name) {
                ensure!(entry.size() <= JSON_LIMIT, "{file} in the tar is too large");
                let mut bytes = Vec::new();
                entry.read_to_end(&mut bytes)?;
                contents.files.insert(file, bytes);
            } else {
                bail!("unexpected entry {raw:?} in the tar (not part of a `docker save` layout)");
            }
        }
        let mut rest = archive.into_inner();
        std::io::copy(&mut rest, &mut std::io::sink())?;
    }
    Ok((contents, hashing.finish()))
}

fn json<T: serde::de::DeserializeOwned>(contents: &Contents, file: &str) -> anyhow::Result<T> {
    let bytes = contents
        .files
        .get(file)
        .with_context(|| format!("the tar has no {file}"))?;
    serde_json::from_slice(bytes).with_context(|| format!("reading the tar's {file}"))
}

fn blob_path_digest(path: &str) -> anyhow::Result<String> {
    let hex = path
        .strip_prefix("blobs/sha256/")
        .filter(|h| is_hex64(h))
        .with_context(|| format!("{path:?} is not a blob of the tar"))?;
    Ok(format!("sha256:{hex}"))
}

/// The repository and tag of `name:tag` (the tag is what follows the last `:` after the last `/`).
pub fn split_tag(tag_ref: &str) -> Option<(&str, &str)> {
    let slash = tag_ref.rfind('/').map_or(0, |i| i + 1);
    let colon = slash + tag_ref[slash..].rfind(':')?;
    Some((&tag_ref[..colon], &tag_ref[colon + 1..]))
}

/// Checks the names a tar would apply: `manifest.json`'s RepoTags, `index.json`'s annotations and
/// (classic store) `repositories` must name exactly `tag_ref`, once.
fn check_names(contents: &Contents, tag_ref: &str) -> anyhow::Result<(SaveEntry, Descriptor)> {
    let wanted = containerd_name(tag_ref);
    let mut entries: Vec<SaveEntry> = json(contents, "manifest.json")?;
    ensure!(
        entries.len() == 1,
        "the tar's manifest.json lists {} images; a bundle file holds exactly one",
        entries.len()
    );
    let entry = entries.remove(0);
    let tags = entry.repo_tags.clone().unwrap_or_default();
    ensure!(
        tags.len() == 1 && containerd_name(&tags[0]) == wanted,
        "the tar would tag {tags:?}; only [{tag_ref:?}] is allowed"
    );
    let mut index: Index = json(contents, "index.json")?;
    ensure!(
        index.manifests.len() == 1,
        "the tar's index.json names {} images; a bundle file holds exactly one",
        index.manifests.len()
    );
    let descriptor = index.manifests.remove(0);
    let name = descriptor.annotations.get("io.containerd.image.name");
    ensure!(
        name.is_some_and(|n| containerd_name(n) == wanted),
        "the tar's index.json names {name:?}; only {wanted:?} is allowed"
    );
    if let Some(short) = descriptor
        .annotations
        .get("org.opencontainers.image.ref.name")
    {
        let tag = split_tag(tag_ref).map(|(_, t)| t);
        ensure!(
            Some(short.as_str()) == tag || containerd_name(short) == wanted,
            "the tar's index.json names ref {short:?}; only {tag_ref:?} is allowed"
        );
    }
    if contents.files.contains_key("repositories") {
        let repositories: BTreeMap<String, BTreeMap<String, String>> =
            json(contents, "repositories")?;
        let named: Vec<String> = repositories
            .iter()
            .flat_map(|(repo, tags)| tags.keys().map(move |t| format!("{repo}:{t}")))
            .collect();
        ensure!(
            named.len() == 1 && containerd_name(&named[0]) == wanted,
            "the tar's repositories file names {named:?}; only [{tag_ref:?}] is allowed"
        );
    }
    Ok((entry, descriptor))
}

/// Walks from `digest` through the indexes and manifests the tar holds, collecting the
/// manifests and configs reached. Children an index lists but the tar lacks (other platforms)
/// are skipped.
fn reach(
    contents: &Contents,
    digest: &str,
    depth: usize,
    manifests: &mut BTreeSet<String>,
    configs: &mut BTreeSet<String>,
) -> anyhow::Result<()> {
    ensure!(depth < 4, "indexes nested too deep at {digest}");
    let bytes = contents
        .small
        .get(digest)
        .with_context(|| format!("blob {digest} is too large to be an index or manifest"))?;
    let value: serde_json::Value =
        serde_json::from_slice(bytes).with_context(|| format!("blob {digest} is not JSON"))?;
    if let Some(children) = value.get("manifests").and_then(|m| m.as_array()) {
        for child in children {
            let child = child
                .get("digest")
                .and_then(|d| d.as_str())
                .with_context(|| format!("index {digest} lists a manifest without a digest"))?;
            if contents.blobs.contains(child) {
                reach(contents, child, depth + 1, manifests, configs)?;
            }
        }
    } else if let Some(config) = value
        .get("config")
        .and_then(|c| c.get("digest"))
        .and_then(|d| d.as_str())
    {
        ensure!(
            contents.blobs.contains(config),
            "manifest {digest} names config {config}, which the tar lacks"
        );
        manifests.insert(digest.to_owned());
        configs.insert(config.to_owned());
    } else {
        bail!("blob {digest} is neither an image index nor an image manifest");
    }
    Ok(())
}

/// Reads a `docker save` tar and checks, before anything is handed to Docker, that it would
/// apply no tag but `tag_ref` and that the image it holds is reachable from `pinned` (an index
/// or manifest digest) through blobs whose content matches their digests.
pub fn verify_save(reader: impl Read, tag_ref: &str, pinned: &str) -> anyhow::Result<Verified> {
    let (contents, sha256) = read_contents(reader)?;
    let (entry, descriptor) = check_names(&contents, tag_ref)?;
    ensure!(
        contents.blobs.contains(pinned),
        "the tar does not hold {pinned}, the digest pinned for {tag_ref}: it holds another \
         image, or was saved by an engine that keeps no registry index (Docker's classic image \
         store drops it; bundles need an engine with the containerd image store)"
    );
    let mut manifests = BTreeSet::new();
    let mut configs = BTreeSet::new();
    reach(&contents, pinned, 0, &mut manifests, &mut configs)?;
    ensure!(
        !configs.is_empty(),
        "the tar holds none of the manifests {pinned} lists"
    );
    let named = &descriptor.digest;
    ensure!(
        contents.blobs.contains(named),
        "index.json names {named}, which the tar lacks"
    );
    if named != pinned && !manifests.contains(named) {
        // A manifest Docker generated for the same image (same config) is fine; anything else
        // is not the pinned image.
        let mut other = BTreeSet::new();
        let mut other_configs = BTreeSet::new();
        reach(&contents, named, 0, &mut other, &mut other_configs)?;
        ensure!(
            !other_configs.is_empty() && other_configs.is_subset(&configs),
            "index.json names {named}, which is not reachable from the pinned {pinned}"
        );
    }
    let config = blob_path_digest(&entry.config)?;
    ensure!(
        configs.contains(&config),
        "manifest.json's image config {config} is not reachable from the pinned {pinned}"
    );
    for layer in &entry.layers {
        let layer = blob_path_digest(layer)?;
        ensure!(
            contents.blobs.contains(&layer),
            "manifest.json names layer {layer}, which the tar lacks"
        );
    }
    Ok(Verified {
        sha256,
        descriptor: named.clone(),
        configs,
    })
}

/// The digest `index.json` names in a `docker save` tar, read as a stream: what `ctr images
/// import` records as the image's target on a node, and what an engine with the containerd
/// image store finds the loaded image by (`name:tag@<digest>`).
pub fn index_digest(reader: impl Read) -> anyhow::Result<String> {
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries()? {
        let mut entry = entry?;
        if entry.path_bytes().as_ref() == b"index.json" {
            ensure!(
                entry.size() <= JSON_LIMIT,
                "index.json in the tar is too large"
            );
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes)?;
            let index: Index = serde_json::from_slice(&bytes).context("reading index.json")?;
            ensure!(
                index.manifests.len() == 1,
                "the saved tar's index.json names {} images, not one",
                index.manifests.len()
            );
            return Ok(index.manifests[0].digest.clone());
        }
    }
    bail!("the saved tar has no index.json (Docker 25+ writes one)")
}

#[cfg(test)]
pub mod testing {
    //! Hand-made `docker save` tars in the OCI layout: an image index (standing for a registry's
    //! multi-platform index) → one manifest → config + one gzip layer, with `manifest.json`.

    use std::io::Write;

    use serde_json::json;

    pub struct Layout {
        /// The tar's bytes.
        pub tar: Vec<u8>,
        /// The index digest (what a repository would pin).
        pub index: String,
        pub manifest: String,
        pub config: String,
    }

    fn digest(bytes: &[u8]) -> String {
        format!("sha256:{}", iris_serve::model::sha256_hex(bytes))
    }

    fn layer_tar(payload: &[u8]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(payload.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_cksum();
        builder
            .append_data(&mut header, "payload", payload)
            .expect("layer");
        builder.into_inner().expect("layer")
    }

    /// What to write into the layout, with knobs for the tampering tests.
    pub struct Spec<'a> {
        pub payload: &'a [u8],
        /// RepoTags of manifest.json.
        pub repo_tags: Vec<String>,
        /// `io.containerd.image.name` of index.json.
        pub image_name: String,
        /// Extra entries appended as they are (name, bytes).
        pub extra: Vec<(String, Vec<u8>)>,
    }

    impl<'a> Spec<'a> {
        /// A layout that tags `tag_ref` (e.g. `registry.example/x:v1`) everywhere.
        pub fn new(payload: &'a [u8], tag_ref: &str) -> Self {
            Spec {
                payload,
                repo_tags: vec![tag_ref.to_owned()],
                image_name: crate::platform::oci::containerd_name(tag_ref),
                extra: Vec::new(),
            }
        }
    }

    pub fn layout(spec: &Spec) -> Layout {
        let layer = layer_tar(spec.payload);
        let diff_id = digest(&layer);
        let mut gz = flate2_free_gzip(&layer);
        gz.flush().ok();
        let layer_digest = digest(&gz);
        let config = serde_json::to_vec(&json!({
            "architecture": crate::platform::kind::go_arch(),
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "config": {}
        }))
        .expect("config");
        let config_digest = digest(&config);
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest, "size": gz.len()}]
        }))
        .expect("manifest");
        let manifest_digest = digest(&manifest);
        // A registry index lists every platform; the tar holds only this one's manifest.
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest, "size": manifest.len(),
                 "platform": {"architecture": crate::platform::kind::go_arch(), "os": "linux"}},
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": format!("sha256:{}", "ab".repeat(32)), "size": 500,
                 "platform": {"architecture": "s390x", "os": "linux"}}
            ]
        }))
        .expect("index");
        let index_digest = digest(&index);
        let tag = super::split_tag(&spec.repo_tags[0]).map_or("latest", |(_, t)| t);
        let oci_index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{"mediaType": "application/vnd.oci.image.index.v1+json", "digest": index_digest, "size": index.len(),
                "annotations": {"io.containerd.image.name": spec.image_name, "org.opencontainers.image.ref.name": tag}}]
        }))
        .expect("index.json");
        let save_manifest = serde_json::to_vec(&json!([{
            "Config": format!("blobs/sha256/{}", &config_digest[7..]),
            "RepoTags": spec.repo_tags,
            "Layers": [format!("blobs/sha256/{}", &layer_digest[7..])]
        }]))
        .expect("manifest.json");
        let mut builder = tar::Builder::new(Vec::new());
        // Names are written raw (the tar crate would refuse `..` and absolute ones, which the
        // tampering tests need).
        let mut add = |name: &str, bytes: &[u8]| {
            let mut header = tar::Header::new_gnu();
            header.as_gnu_mut().expect("gnu").name[..name.len()].copy_from_slice(name.as_bytes());
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_mtime(0);
            header.set_entry_type(tar::EntryType::Regular);
            header.set_cksum();
            builder.append(&header, bytes).expect("entry");
        };
        for blob in [&gz, &config, &manifest, &index] {
            add(&format!("blobs/sha256/{}", &digest(blob)[7..]), blob);
        }
        add("index.json", &oci_index);
        add("manifest.json", &save_manifest);
        add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
        for (name, bytes) in &spec.extra {
            add(name, bytes);
        }
        Layout {
            tar: builder.into_inner().expect("tar"),
            index: index_digest,
            manifest: manifest_digest,
            config: config_digest,
        }
    }

    /// A gzip stream of `data` using stored (uncompressed) deflate blocks: a valid gzip layer
    /// without a compression crate.
    fn flate2_free_gzip(data: &[u8]) -> Vec<u8> {
        let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
        let chunks: Vec<&[u8]> = data.chunks(65535).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            out.push(u8::from(i + 1 == chunks.len()));
            let len = chunk.len() as u16;
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&(!len).to_le_bytes());
            out.extend_from_slice(chunk);
        }
        if chunks.is_empty() {
            out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
        }
        out.extend_from_slice(&crc32(data).to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &byte in data {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
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

/// Copies `input` to `output` (`io::sink()` to only hash) and returns the sha256 of what passed.
pub fn copy_hashed(input: &mut impl Read, output: &mut impl Write) -> anyhow::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        output.write_all(&buf[..n])?;
    }
    Ok(iris_serve::model::hex(&hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::testing::{Spec, layout};
    use super::*;

    #[test]
    fn a_faithful_save_is_reachable_from_its_pin() {
        let l = layout(&Spec::new(b"hello", "registry.example/x:v1"));
        let verified = verify_save(&l.tar[..], "registry.example/x:v1", &l.index).expect("ok");
        assert_eq!(verified.descriptor, l.index);
        assert!(verified.is_id(&l.config) && verified.is_id(&l.index));
        assert_eq!(verified.sha256, iris_serve::model::sha256_hex(&l.tar));
        // Pinning the platform manifest instead of the index works too: the index the tar names
        // leads to the same image config.
        verify_save(&l.tar[..], "registry.example/x:v1", &l.manifest).expect("manifest pin");
    }

    #[test]
    fn names_other_than_the_expected_tag_are_refused() {
        let tag = "registry.example/x:v1";
        let mut spec = Spec::new(b"hello", tag);
        spec.repo_tags = vec!["ubuntu:latest".to_owned()];
        let l = layout(&spec);
        let err = verify_save(&l.tar[..], tag, &l.index).expect_err("retag");
        assert!(err.to_string().contains("ubuntu:latest"), "{err}");

        let mut spec = Spec::new(b"hello", tag);
        spec.repo_tags.push("ubuntu:latest".to_owned());
        let l = layout(&spec);
        assert!(verify_save(&l.tar[..], tag, &l.index).is_err());

        let mut spec = Spec::new(b"hello", tag);
        spec.image_name = "docker.io/library/ubuntu:latest".to_owned();
        let l = layout(&spec);
        let err = verify_save(&l.tar[..], tag, &l.index).expect_err("annotation");
        assert!(err.to_string().contains("ubuntu"), "{err}");

        let mut spec = Spec::new(b"hello", tag);
        spec.extra = vec![(
            "repositories".to_owned(),
            br#"{"ubuntu":{"latest":"abc"}}"#.to_vec(),
        )];
        let l = layout(&spec);
        assert!(verify_save(&l.tar[..], tag, &l.index).is_err());
    }

    #[test]
    fn another_image_or_odd_entries_are_refused() {
        let tag = "registry.example/x:v1";
        let pinned = layout(&Spec::new(b"the pinned content", tag));
        let other = layout(&Spec::new(b"something else", tag));
        let err = verify_save(&other.tar[..], tag, &pinned.index).expect_err("other");
        assert!(err.to_string().contains("does not hold"), "{err}");

        for (name, why) in [
            ("../escape", "unexpected entry"),
            ("/etc/passwd", "unexpected entry"),
            ("blobs/sha256/../../x", "unexpected blob"),
        ] {
            let mut spec = Spec::new(b"the pinned content", tag);
            spec.extra = vec![(name.to_owned(), b"x".to_vec())];
            let l = layout(&spec);
            match verify_save(&l.tar[..], tag, &l.index) {
                Err(e) => assert!(e.to_string().contains(why), "{name}: {e}"),
                Ok(_) => panic!("{name} accepted"),
            }
        }
        // A blob whose content is not its name.
        let mut spec = Spec::new(b"the pinned content", tag);
        spec.extra = vec![(format!("blobs/sha256/{}", "cd".repeat(32)), b"x".to_vec())];
        let l = layout(&spec);
        let err = verify_save(&l.tar[..], tag, &l.index).expect_err("bad blob");
        assert!(err.to_string().contains("not what its name says"), "{err}");
        // The same entry twice.
        let mut spec = Spec::new(b"the pinned content", tag);
        spec.extra = vec![("manifest.json".to_owned(), b"[]".to_vec())];
        let l = layout(&spec);
        let err = verify_save(&l.tar[..], tag, &l.index).expect_err("twice");
        assert!(err.to_string().contains("twice"), "{err}");
    }

    #[test]
    fn tags_split_after_the_last_slash() {
        assert_eq!(split_tag("a/b:c"), Some(("a/b", "c")));
        assert_eq!(
            split_tag("localhost:5000/b:c"),
            Some(("localhost:5000/b", "c"))
        );
        assert_eq!(split_tag("localhost:5000/b"), None);
        assert_eq!(split_tag("ubuntu"), None);
    }
}
