//! `cargo xtask report`: render a saved report.json again (terminal, report.md, timeline.svg),
//! beside others when asked.

use std::path::PathBuf;

use anyhow::Context;

use xtask::domain::report::{
    read_report, render_comparison, render_markdown, render_svg, render_terminal,
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A report.json from an earlier run.
    pub json: PathBuf,
    /// Where to write report.md and timeline.svg (default: target/report/, never beside the
    /// JSON, so that re-rendering a committed fixture does not overwrite tracked files).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Other runs' report.json (repeatable): their rows beside this one's in one table,
    /// `comparison.md`, one row per app and scenario (e.g. the Iris server and your service, on
    /// the same cluster and load).
    #[arg(long)]
    pub beside: Vec<PathBuf>,
}

/// Renders a saved report again (after a renderer change, or for another folder).
pub fn run(args: &Args) -> anyhow::Result<()> {
    let report = read_report(&args.json)?;
    let dir = args
        .out
        .clone()
        .unwrap_or_else(|| xtask::platform::paths::project_root().join("target/report"));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join("report.md"), render_markdown(&report))?;
    std::fs::write(dir.join("timeline.svg"), render_svg(&report)?)?;
    print!("{}", render_terminal(&report, true));
    eprintln!("wrote {0}/report.md and {0}/timeline.svg", dir.display());
    if !args.beside.is_empty() {
        let mut all = vec![report];
        for path in &args.beside {
            all.push(read_report(path)?);
        }
        let comparison = render_comparison(&all);
        std::fs::write(dir.join("comparison.md"), &comparison)?;
        print!("\n{comparison}");
        eprintln!("wrote {}/comparison.md", dir.display());
    }
    Ok(())
}
