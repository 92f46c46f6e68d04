//! `cargo xtask <command>`: the project's harness. This file only parses flags and dispatches;
//! each command lives in the module of the same name.

mod bench;
mod bundle;
mod calibrate;
mod claim;
mod cluster;
mod cmd;
mod deploy;
mod docker;
mod doctor;
mod e2e;
#[cfg(test)]
mod fixture;
mod image;
#[cfg(test)]
mod kubemock;
mod load;
mod manifests;
mod monitoring;
mod observe;
mod oci;
mod podmetrics;
mod report;
mod runners;
mod scenario;
mod signals;
mod steps;
#[cfg(test)]
mod testing;
mod tools;
mod train;
mod witness;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "iris-serve's harness: train, build, deploy on kind, load, measure",
    version
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The main job: a kind cluster with metrics-server, the app and its HPA, load scenarios, a
    /// report (target/e2e/<run>/), and teardown; or the same against an existing cluster.
    E2e(Box<e2e::Args>),
    /// Save what a run pulls (node image, metrics-server image, kind) for offline runs.
    Bundle(bundle::Args),
    /// Check this machine can run the cluster path: Docker, kind, inotify limits, disk, port.
    Doctor(doctor::Args),
    /// Create, delete, inspect or collect logs from the kind cluster.
    #[command(subcommand)]
    Cluster(cluster::Command),
    /// Build the server image offline, or load it into a kind cluster's nodes.
    #[command(subcommand)]
    Image(image::Command),
    /// Deploy the app (Namespace, Deployment, Service, HPA) and wait until it autoscales.
    Deploy(deploy::Args),
    /// Drive HTTP load at a URL: closed loop (like wrk) or open loop (--rate/--stages, like wrk2).
    Load(Box<load::Args>),
    /// One pod's capacity under the Deployment's limits, in a Docker container (no cluster): the
    /// knee, CPU per request, latency; with --scenario, the replicas the HPA should settle at.
    Calibrate(Box<calibrate::Args>),
    /// Render a saved report.json again (terminal, report.md, timeline.svg).
    Report(report::Args),
    /// Train the decision tree from model/iris.csv; write model/iris-tree.json and model/README.md.
    Train(train::Args),
    /// Repeatable speed and memory measurements.
    #[command(subcommand)]
    Bench(bench::Command),
}

fn main() -> std::process::ExitCode {
    // Each load connection is a file; many desktops start programs with a soft limit of 1,024.
    load::nofile::raise();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::E2e(args) => e2e::run(&args),
        Command::Bundle(args) => bundle::run(&args),
        Command::Doctor(args) => doctor::run(&args),
        Command::Cluster(cmd) => cluster::run(cmd),
        Command::Image(cmd) => image::run(cmd),
        Command::Deploy(args) => deploy::run(&args),
        Command::Load(args) => load::run(&args),
        Command::Calibrate(args) => calibrate::run(&args),
        Command::Report(args) => report::run(&args),
        Command::Train(args) => train::run(&args),
        Command::Bench(cmd) => bench::run(cmd),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.is::<signals::Interrupted>() {
                std::process::ExitCode::from(signals::INTERRUPTED_EXIT as u8)
            } else {
                std::process::ExitCode::FAILURE
            }
        }
    }
}

/// The workspace root, whatever the current directory.
pub fn project_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}
