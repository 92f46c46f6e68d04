//! `cargo xtask <command>`: the project's harness. This file only parses flags, builds the one
//! tokio runtime and dispatches; each command lives in `commands/`, in the file of its name.

mod commands;

use xtask::{domain, platform};

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
    E2e(Box<commands::e2e::Args>),
    /// Save what a run pulls (node image, metrics-server image, kind) for offline runs.
    Bundle(commands::bundle::Args),
    /// Check this machine can run the cluster path: Docker, kind, inotify limits, disk, port.
    Doctor(commands::doctor::Args),
    /// Create, delete, inspect or collect logs from the kind cluster.
    #[command(subcommand)]
    Cluster(commands::cluster::Command),
    /// Build the server image offline, or load it into a kind cluster's nodes.
    #[command(subcommand)]
    Image(commands::image::Command),
    /// Deploy the app (Namespace, Deployment, Service, HPA) and wait until it autoscales.
    Deploy(commands::deploy::Args),
    /// Drive HTTP load at a URL: closed loop (like wrk) or open loop (--rate/--stages, like wrk2).
    Load(Box<commands::load::Args>),
    /// One pod's capacity under the Deployment's limits, in a Docker container (no cluster): the
    /// knee, CPU per request, latency; with --scenario, the replicas the HPA should settle at.
    Calibrate(Box<domain::calibrate::Args>),
    /// Render a saved report.json again (terminal, report.md, timeline.svg).
    Report(commands::report::Args),
    /// Train the decision tree from model/iris.csv; write model/iris-tree.json and model/README.md.
    Train(commands::train::Args),
    /// Repeatable speed and memory measurements.
    #[command(subcommand)]
    Bench(commands::bench::Command),
}

fn main() -> std::process::ExitCode {
    // Each load connection is a file; many desktops start programs with a soft limit of 1,024.
    iris_load::nofile::raise();
    let cli = Cli::parse();
    // One tokio runtime for every command. It is dropped (its tasks cancelled) before the
    // result is printed, as each command's own runtime was at its end.
    let result = tokio::runtime::Runtime::new()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| {
            let rt = &runtime;
            let result = match cli.command {
                Command::E2e(args) => commands::e2e::run(&args, rt),
                Command::Bundle(args) => commands::bundle::run(&args, rt),
                Command::Doctor(args) => commands::doctor::run(&args, rt),
                Command::Cluster(cmd) => commands::cluster::run(cmd, rt),
                Command::Image(cmd) => commands::image::run(cmd, rt),
                Command::Deploy(args) => commands::deploy::run(&args, rt),
                Command::Load(args) => commands::load::run(&args, rt),
                Command::Calibrate(args) => commands::calibrate::run(&args, rt),
                Command::Report(args) => commands::report::run(&args),
                Command::Train(args) => commands::train::run(&args),
                Command::Bench(cmd) => commands::bench::run(cmd, rt),
            };
            drop(runtime);
            result
        });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.is::<platform::signals::Interrupted>() {
                std::process::ExitCode::from(platform::signals::INTERRUPTED_EXIT as u8)
            } else {
                std::process::ExitCode::FAILURE
            }
        }
    }
}

#[cfg(test)]
mod layers {
    //! The direction of the layers, read from the source: `platform` names neither `domain` nor
    //! `commands`; `domain` never names `commands`; no command names another; and the modules'
    //! production `use crate::...` graph has no cycle. Comments and test code are left out.

    use std::collections::{BTreeMap, BTreeSet};
    use std::path::{Path, PathBuf};

    /// Every `.rs` file under `xtask/src/<dir>`, by its module path (`domain::calibrate`).
    fn modules(dir: &str) -> BTreeMap<String, PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, out);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    out.push(path);
                }
            }
        }
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        walk(&src.join(dir), &mut files);
        files
            .into_iter()
            .filter(|p| p.file_name().is_some_and(|n| n != "tests.rs"))
            .map(|p| {
                let rel = p.strip_prefix(&src).expect("under src").with_extension("");
                let name = rel
                    .iter()
                    .map(|c| c.to_string_lossy().into_owned())
                    .filter(|c| c != "mod")
                    .collect::<Vec<_>>()
                    .join("::");
                (name, p)
            })
            .collect()
    }

    /// The production text of a file: comments, `#[cfg(test)]` items and everything after the
    /// first `#[cfg(test)] mod` (test modules close each file) left out.
    fn production(text: &str) -> String {
        let mut out = String::new();
        let mut lines = text.lines().peekable();
        while let Some(line) = lines.next() {
            let code = line.split("//").next().unwrap_or_default();
            if code.trim() == "#[cfg(test)]" {
                let Some(next) = lines.next() else { break };
                let item = next.trim_start();
                if item.starts_with("mod ") || item.starts_with("pub mod ") {
                    if item.ends_with(';') {
                        continue;
                    }
                    break;
                }
                // A test-only item: skip to its closing brace at column 0.
                if !next.ends_with(';') {
                    for rest in lines.by_ref() {
                        if rest == "}" {
                            break;
                        }
                    }
                }
                continue;
            }
            out.push_str(code);
            out.push('\n');
        }
        out
    }

    /// The crate paths a file names (`crate::domain::scenario::Gates` and the `crate::{..}`
    /// groups), as written.
    fn named(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut rest = text;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(rest.len());
            out.push(rest[..end].trim_end_matches(':').to_owned());
        }
        out
    }

    /// The module a path lands in: the longest known module that prefixes it.
    fn module_of<'a>(path: &str, known: &'a BTreeSet<String>) -> Option<&'a String> {
        let parts: Vec<&str> = path.split("::").collect();
        (1..=parts.len())
            .rev()
            .find_map(|n| known.get(&parts[..n].join("::")))
    }

    #[test]
    fn layers_point_down() {
        let mut wrong = Vec::new();
        for (layer, forbidden) in [
            ("platform", &["domain", "commands"][..]),
            ("domain", &["commands"][..]),
        ] {
            for (name, path) in modules(layer) {
                let text = std::fs::read_to_string(&path).expect("read");
                // Test modules too: a domain test borrowing a command is a wrong edge as well.
                for target in named(&text) {
                    if forbidden
                        .iter()
                        .any(|f| target.starts_with(&format!("{f}::")))
                    {
                        wrong.push(format!("{name} names crate::{target}"));
                    }
                }
            }
        }
        for (name, path) in modules("commands") {
            let text = production(&std::fs::read_to_string(&path).expect("read"));
            for target in named(&text) {
                if target.starts_with("commands::") && !target.starts_with(&format!("{name}::")) {
                    wrong.push(format!(
                        "{name} names crate::{target}: commands never use each other"
                    ));
                }
            }
        }
        assert!(wrong.is_empty(), "layers broken:\n{}", wrong.join("\n"));
        // The walk itself found the layers (a moved tree would otherwise pass vacuously).
        assert!(modules("platform").contains_key("platform::k8s"));
        assert!(modules("domain").contains_key("domain::scenario"));
        assert!(modules("commands").contains_key("commands::e2e"));
    }

    #[test]
    fn the_production_module_graph_has_no_cycle() {
        let mut all = BTreeMap::new();
        for layer in ["platform", "domain", "commands"] {
            all.extend(modules(layer));
        }
        let known: BTreeSet<String> = all.keys().cloned().collect();
        let mut edges: BTreeMap<&String, BTreeSet<&String>> = BTreeMap::new();
        for (name, path) in &all {
            let text = production(&std::fs::read_to_string(path).expect("read"));
            let targets = named(&text)
                .iter()
                .filter_map(|t| module_of(t, &known))
                .filter(|t| *t != name && !name.starts_with(&format!("{t}::")))
                .collect();
            edges.insert(name, targets);
        }
        // Depth-first search; a module met again while still on the path closes a cycle.
        fn visit<'a>(
            m: &'a String,
            edges: &BTreeMap<&'a String, BTreeSet<&'a String>>,
            path: &mut Vec<&'a String>,
            done: &mut BTreeSet<&'a String>,
        ) -> Option<Vec<String>> {
            if let Some(i) = path.iter().position(|p| *p == m) {
                let mut cycle: Vec<String> = path[i..].iter().map(|s| s.to_string()).collect();
                cycle.push(m.clone());
                return Some(cycle);
            }
            if done.contains(m) {
                return None;
            }
            path.push(m);
            for next in edges.get(m).into_iter().flatten() {
                if let Some(cycle) = visit(next, edges, path, done) {
                    return Some(cycle);
                }
            }
            path.pop();
            done.insert(m);
            None
        }
        let mut done = BTreeSet::new();
        for m in edges.keys() {
            let cycle = visit(m, &edges, &mut Vec::new(), &mut done);
            assert!(
                cycle.is_none(),
                "a cycle: {}",
                cycle.unwrap_or_default().join(" -> ")
            );
        }
        // The reader sees real edges (a parser that saw none would pass vacuously).
        let scenario = edges
            .iter()
            .find(|(k, _)| k.as_str() == "domain::scenario")
            .map(|(_, v)| v)
            .expect("domain::scenario");
        assert!(scenario.iter().any(|t| t.as_str() == "domain::observe"));
    }

    #[test]
    fn the_reader_sees_a_cycle_when_there_is_one() {
        let text = "use crate::domain::a::X; // crate::commands::x\n#[cfg(test)]\nfn t() {\n    crate::commands::y::z();\n}\nfn f() { crate::platform::b::c(); }\n#[cfg(test)]\nmod tests {\n    use crate::commands::e2e;\n}\n";
        let seen = named(&production(text));
        assert_eq!(seen, ["domain::a::X", "platform::b::c"]);
        let known: BTreeSet<String> = ["domain::a".to_owned(), "platform::b".to_owned()].into();
        assert_eq!(
            module_of("domain::a::X", &known).map(String::as_str),
            Some("domain::a")
        );
        assert_eq!(module_of("domain::zz", &known), None);
    }
}
