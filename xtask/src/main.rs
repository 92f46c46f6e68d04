//! `cargo xtask <command>`: the project's harness. This file only parses flags and dispatches;
//! each command lives in the module of the same name.

mod bench;
mod cmd;
mod load;
mod manifests;
mod train;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "iris-serve's harness", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train the decision tree from model/iris.csv; write model/iris-tree.json and model/README.md.
    Train(train::Args),
    /// Drive HTTP load at a URL: closed loop (like wrk) or open loop (--rate/--stages, like wrk2).
    Load(load::Args),
    /// Repeatable speed and memory measurements.
    #[command(subcommand)]
    Bench(bench::Command),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(args) => train::run(&args),
        Command::Load(args) => load::run(&args),
        Command::Bench(cmd) => bench::run(cmd),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The workspace root, whatever the current directory.
pub fn project_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}
