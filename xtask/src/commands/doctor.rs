//! `cargo xtask doctor`: can this machine run the cluster path?

use xtask::domain::doctor::{Needs, checks, render, verdict};
use xtask::domain::scenario::{self, ScenarioFile};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The host port the app's NodePort is mapped to (on 127.0.0.1).
    #[arg(long, default_value_t = xtask::domain::cluster::DEFAULT_HOST_PORT)]
    pub host_port: u16,
    /// Never download anything (kind must be present or come from a bundle).
    #[arg(long)]
    pub offline: bool,
}

pub fn run(args: &Args, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let findings = runtime.block_on(checks(Needs {
        kind: true,
        host_port: Some(args.host_port),
        offline: args.offline,
        // What `cargo xtask e2e` will need; its own file is checked again when it is read.
        connections: ScenarioFile::select(None)
            .ok()
            .map(|s| scenario::max_connections(&s)),
    }));
    print!("{}", render(&findings));
    verdict(&findings)
}
