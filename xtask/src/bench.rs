//! `cargo xtask bench ...`: speed and memory measurements, reported as ratios to a reference.

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// The inference server against a seed-style FastAPI reference.
    Server,
}

pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Server => anyhow::bail!("not yet"),
    }
}
