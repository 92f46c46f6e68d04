//! `cargo xtask train`: the decision tree from model/iris.csv, written to model/iris-tree.json
//! and its card model/README.md (or checked against them).

use anyhow::{Context, ensure};

use iris_serve::model::sha256_hex;

use xtask::domain::dataset::{ARTIFACT, CARD, CV_FOLDS, DATASET, train, write};
use xtask::platform::paths::project_root;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Don't write; fail if the committed artifact and card differ from what training produces.
    #[arg(long)]
    check: bool,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let root = project_root();
    let csv = std::fs::read_to_string(root.join(DATASET))
        .with_context(|| format!("reading {DATASET}"))?;
    let out = train(&csv)?;
    if args.check {
        for (path, want) in [(ARTIFACT, &out.artifact), (CARD, &out.card)] {
            let have = std::fs::read_to_string(root.join(path)).unwrap_or_default();
            ensure!(
                &have == want,
                "{path} is not what `cargo xtask train` produces; run it and commit the result"
            );
        }
        println!("{ARTIFACT} and {CARD} are up to date");
        return Ok(());
    }
    write(&root.join(ARTIFACT), &out.artifact)?;
    write(&root.join(CARD), &out.card)?;
    println!(
        "wrote {ARTIFACT} ({} nodes, test accuracy {:.4}, {CV_FOLDS}-fold CV accuracy {:.4}, sha256 {})",
        out.model.nodes.len(),
        out.model.metrics.test_accuracy,
        out.model.metrics.cv_accuracy,
        sha256_hex(out.artifact.as_bytes())
    );
    println!("wrote {CARD}");
    Ok(())
}
