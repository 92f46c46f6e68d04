//! `cargo xtask image build|load`: the server's and the runner's images, built offline, and
//! loaded into a kind cluster's nodes.

use xtask::domain::image::{RUNNER, SERVER, build, build_artifact, load};
use xtask::platform::docker;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Build the server's and the load runner's static binaries and FROM scratch images (offline;
    /// no-op when unchanged).
    Build,
    /// Load the image into every node of a kind cluster (skips nodes that have it; verifies).
    Load(LoadArgs),
}

#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// The kind cluster's name.
    #[arg(long, default_value = xtask::domain::cluster::DEFAULT_NAME)]
    pub cluster_name: String,
    /// The image to load (default: build it first, or reuse the unchanged build).
    #[arg(long)]
    pub image: Option<String>,
}

pub fn run(command: Command, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    runtime.block_on(xtask::platform::signals::interruptible(async {
        let docker = docker::connect().await?;
        match command {
            Command::Build => {
                for artifact in [SERVER, RUNNER] {
                    let image = build_artifact(&docker, &artifact).await?;
                    println!(
                        "{} (id {}, {:.1} MB, {})",
                        image.reference,
                        image.id,
                        image.size as f64 / 1e6,
                        if image.built { "built" } else { "unchanged" }
                    );
                }
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
