//! `cargo xtask deploy`: the app (Namespace, Deployment, Service, HPA) on the kind cluster.

use xtask::domain::deploy::{App, AppSettings, deploy};
use xtask::domain::{cluster, image};
use xtask::platform::docker;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The kind cluster's name.
    #[arg(long, default_value = cluster::DEFAULT_NAME)]
    pub cluster_name: String,
    /// Deploy this image (already in the nodes); default: build it and load it into the nodes.
    #[arg(long)]
    pub image: Option<String>,
}

pub fn run(args: &Args, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    runtime.block_on(xtask::platform::signals::interruptible(async {
        let client = xtask::platform::k8s::client(&xtask::platform::paths::kubeconfig_path(
            &args.cluster_name,
        ))
        .await?;
        let image = match &args.image {
            Some(i) => i.clone(),
            None => {
                let docker = docker::connect().await?;
                let built = image::build(&docker).await?;
                image::load(&docker, &built.reference, &args.cluster_name).await?;
                built.reference
            }
        };
        deploy(
            &client,
            &AppSettings {
                app: App::ours()?,
                image,
                pull_policy: "Never".to_owned(),
                max_replicas: None,
                fixed_node_port: true,
            },
        )
        .await?;
        println!(
            "deployed; the app answers on http://127.0.0.1:{}/predict",
            cluster::DEFAULT_HOST_PORT
        );
        Ok(())
    }))
}
