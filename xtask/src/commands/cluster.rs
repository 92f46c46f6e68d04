//! `cargo xtask cluster up|down|status|logs`: the kind cluster's lifecycle, by hand.

use anyhow::bail;

use xtask::domain::claim;
use xtask::domain::cluster::{NameArgs, UpArgs, down, export_logs, status, up};
use xtask::platform::k8s::{api_url, client};
use xtask::platform::kind;
use xtask::platform::paths::{kubeconfig_path, logs_dir};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Create the kind cluster (replacing one left by a crashed run) with metrics-server, and wait
    /// until every node, every kube-system pod and the metrics API are ready.
    Up(UpArgs),
    /// Delete the cluster and its kubeconfig (idempotent).
    Down(NameArgs),
    /// Show the cluster's node containers and, if reachable, its nodes and pods.
    Status(NameArgs),
    /// Export kind's logs plus pod logs and events into target/e2e/<run>/logs.
    Logs(NameArgs),
}

pub fn run(command: Command, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    runtime.block_on(async move {
        match command {
            Command::Up(args) => {
                let _lock = claim::lock_cluster(&args.name.cluster_name)?;
                let cluster = xtask::platform::signals::interruptible(up(&args)).await?;
                let api = api_url(&cluster.kubeconfig)
                    .await
                    .unwrap_or_else(|e| format!("unknown ({e:#})"));
                println!(
                    "cluster {} (config {}) is up; kubeconfig {}; API {}; delete it with `cargo xtask cluster down --cluster-name {}` ({})",
                    cluster.name,
                    cluster.config_hash,
                    cluster.kubeconfig.display(),
                    api,
                    cluster.name,
                    cluster.kind.display()
                );
                Ok(())
            }
            Command::Down(args) => {
                let _lock = claim::lock_cluster(&args.cluster_name)?;
                xtask::platform::signals::interruptible(down(&args.cluster_name)).await
            }
            Command::Status(args) => status(&args.cluster_name).await,
            Command::Logs(args) => {
                let kind = kind::ensure_kind(true).await.ok();
                let dir = logs_dir(&args.cluster_name);
                let client = client(&kubeconfig_path(&args.cluster_name)).await.ok();
                match kind {
                    Some(kind) => export_logs(&kind, &args.cluster_name, client.as_ref(), &dir).await?,
                    None => bail!("kind {} is not installed: {}", kind::KIND_VERSION, kind::KIND_INSTALL_HINT),
                }
                println!("{}", dir.display());
                Ok(())
            }
        }
    })
}
