//! Where things live: the workspace root, and under `target/e2e/` each cluster's state (its own
//! kubeconfig; the user's `~/.kube/config` is never touched) and the logs of failed runs.

use std::path::PathBuf;

/// The workspace root, whatever the current directory.
pub fn project_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// `target/e2e/<cluster>/`: the cluster's kubeconfig and its effective kind config.
pub fn state_dir(name: &str) -> PathBuf {
    project_root().join("target/e2e").join(name)
}

pub fn kubeconfig_path(name: &str) -> PathBuf {
    state_dir(name).join("kubeconfig")
}

pub fn logs_dir(name: &str) -> PathBuf {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    project_root()
        .join("target/e2e")
        .join(format!("{name}-{stamp}"))
        .join("logs")
}
