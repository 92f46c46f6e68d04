//! `cargo xtask bundle`: save what a run pulls (node image, metrics-server image, kind) for
//! offline runs.

use std::path::PathBuf;

use xtask::domain::bundle::{ensure_present, images_for_run, pins_for_run, save};
use xtask::platform::{docker, kind};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The folder to write the bundle into (created; must not hold a bundle already).
    #[arg(long)]
    pub out: PathBuf,
    /// Don't pull missing images; fail instead.
    #[arg(long)]
    pub offline: bool,
    /// Bundle these images instead of the node and metrics-server images (repeatable). `e2e
    /// --bundle` loads only images this repository pins.
    #[arg(long = "image")]
    pub images: Vec<String>,
    /// Leave kind out (for machines that install it another way).
    #[arg(long)]
    pub without_kind: bool,
}

pub fn run(args: &Args, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    runtime.block_on(xtask::platform::signals::interruptible(async {
        let docker = docker::connect().await?;
        let kind = if args.without_kind {
            None
        } else {
            Some(kind::ensure_release_kind(args.offline).await?)
        };
        let images = if args.images.is_empty() {
            images_for_run()?
        } else {
            args.images.clone()
        };
        let pins = pins_for_run()?;
        for image in &images {
            let pin = pins.iter().find(|p| p.reference == *image);
            ensure_present(&docker, image, pin, args.offline).await?;
        }
        let manifest = save(&docker, &args.out, &images, kind.as_deref(), &pins).await?;
        println!(
            "bundle written to {} ({} images{})",
            args.out.display(),
            manifest.images.len(),
            if manifest.kind.is_some() {
                format!(", kind {}", kind::KIND_VERSION)
            } else {
                String::new()
            }
        );
        Ok(())
    }))
}
