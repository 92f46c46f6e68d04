//! `cargo xtask train`: a deterministic decision tree from `model/iris.csv`.
//!
//! smartcore grows the tree (CART, Gini); we copy its splits into our own artifact format
//! (`iris_serve::model`), and fill each leaf with the class counts of the training rows that reach
//! it, so the server can answer with probabilities without linking any training crate.

use std::path::Path;

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use iris_serve::model::{
    self, FORMAT, Model, ModelFile, ModelMetrics, Node, TrainingInfo, sha256_hex,
};

use crate::platform::paths::project_root;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use smartcore::linalg::basic::matrix::DenseMatrix;
use smartcore::tree::decision_tree_classifier::{
    DecisionTreeClassifier, DecisionTreeClassifierParameters, SplitCriterion,
};

const SEED: u64 = 42;
const MAX_DEPTH: u16 = 4;
const TEST_FRACTION: f64 = 0.2;
pub const CV_FOLDS: usize = 5;
pub const DATASET: &str = "model/iris.csv";
pub const ARTIFACT: &str = "model/iris-tree.json";
pub const CARD: &str = "model/README.md";

pub fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

pub struct Trained {
    pub model: ModelFile,
    pub artifact: String,
    pub card: String,
}

pub struct Dataset {
    pub feature_names: Vec<String>,
    pub class_names: Vec<String>,
    pub rows: Vec<Vec<f64>>,
    pub labels: Vec<usize>,
}

pub fn parse_csv(text: &str) -> anyhow::Result<Dataset> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<String> = lines
        .next()
        .context("the dataset is empty")?
        .split(',')
        .map(|s| s.trim().to_owned())
        .collect();
    ensure!(
        header.len() >= 2,
        "the header needs feature columns and a label column"
    );
    let feature_names = header[..header.len() - 1].to_vec();
    let mut class_names: Vec<String> = Vec::new();
    let mut rows = Vec::new();
    let mut labels = Vec::new();
    for (i, line) in lines.enumerate() {
        let cells: Vec<&str> = line.split(',').map(str::trim).collect();
        ensure!(
            cells.len() == header.len(),
            "line {} has {} cells, the header has {}",
            i + 2,
            cells.len(),
            header.len()
        );
        let row = cells[..cells.len() - 1]
            .iter()
            .map(|c| {
                c.parse::<f64>()
                    .with_context(|| format!("line {}: {c:?} is not a number", i + 2))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let name = cells[cells.len() - 1];
        let label = match class_names.iter().position(|c| c == name) {
            Some(l) => l,
            None => {
                class_names.push(name.to_owned());
                class_names.len() - 1
            }
        };
        rows.push(row);
        labels.push(label);
    }
    ensure!(
        class_names.len() >= 2,
        "the dataset needs at least two classes"
    );
    Ok(Dataset {
        feature_names,
        class_names,
        rows,
        labels,
    })
}

/// Per class, shuffle its rows with a fixed seed and deal them round-robin into `k` folds, so
/// every fold has the class proportions of the whole set.
pub fn stratified_folds(
    labels: &[usize],
    n_classes: usize,
    k: usize,
    seed: u64,
) -> Vec<Vec<usize>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut folds = vec![Vec::new(); k];
    for class in 0..n_classes {
        let mut members: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == class).collect();
        members.shuffle(&mut rng);
        for (j, i) in members.into_iter().enumerate() {
            folds[j % k].push(i);
        }
    }
    for fold in &mut folds {
        fold.sort_unstable();
    }
    folds
}

fn fit(data: &Dataset, train_idx: &[usize]) -> anyhow::Result<Vec<Node>> {
    let x_rows: Vec<Vec<f64>> = train_idx.iter().map(|&i| data.rows[i].clone()).collect();
    let y: Vec<u32> = train_idx.iter().map(|&i| data.labels[i] as u32).collect();
    let x = DenseMatrix::from_2d_vec(&x_rows).map_err(|e| anyhow::anyhow!("{e}"))?;
    let params = DecisionTreeClassifierParameters::default()
        .with_criterion(SplitCriterion::Gini)
        .with_max_depth(MAX_DEPTH);
    let params = DecisionTreeClassifierParameters {
        seed: Some(SEED),
        ..params
    };
    let tree = DecisionTreeClassifier::fit(&x, &y, params).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut nodes = splits_of(&serde_json::to_value(&tree)?)?;
    // Leaves get the class counts of the training rows that reach them.
    let mut counts = vec![vec![0u32; data.class_names.len()]; nodes.len()];
    for &i in train_idx {
        let leaf = route(&nodes, &data.rows[i]);
        counts[leaf][data.labels[i]] += 1;
    }
    for (node, c) in nodes.iter_mut().zip(counts) {
        if let Node::Leaf { class_counts } = node {
            *class_counts = c;
        }
    }
    // Cross-check our reading of smartcore's tree against its own predictions.
    let predicted: Vec<u32> = tree.predict(&x).map_err(|e| anyhow::anyhow!("{e}"))?;
    for (row, (&i, p)) in train_idx.iter().zip(&predicted).enumerate() {
        let leaf = route(&nodes, &data.rows[i]);
        if let Node::Leaf { class_counts } = &nodes[leaf] {
            ensure!(
                model::argmax(class_counts) == *p as usize,
                "training row {row}: our tree says class {}, smartcore says {p}",
                model::argmax(class_counts)
            );
        }
    }
    Ok(nodes)
}

/// Reads the split structure out of smartcore's serialized tree (its node fields are private).
fn splits_of(tree: &serde_json::Value) -> anyhow::Result<Vec<Node>> {
    let nodes = tree["nodes"]
        .as_array()
        .context("smartcore's serialized tree has no `nodes` list (did its format change?)")?;
    nodes
        .iter()
        .map(|n| {
            let child = |k: &str| n[k].as_u64().map(|v| v as usize);
            match (child("true_child"), child("false_child")) {
                (Some(left), Some(right)) => Ok(Node::Split {
                    feature: n["split_feature"].as_u64().context("split_feature")? as usize,
                    threshold: n["split_value"].as_f64().context("split_value")?,
                    left,
                    right,
                }),
                (None, None) => Ok(Node::Leaf {
                    class_counts: Vec::new(),
                }),
                _ => bail!("a smartcore node with one child: {n}"),
            }
        })
        .collect()
}

fn route(nodes: &[Node], row: &[f64]) -> usize {
    let mut at = 0;
    while let Node::Split {
        feature,
        threshold,
        left,
        right,
    } = &nodes[at]
    {
        at = if row[*feature] <= *threshold {
            *left
        } else {
            *right
        };
    }
    at
}

fn accuracy(model: &Model, data: &Dataset, idx: &[usize]) -> f64 {
    let correct = idx
        .iter()
        .filter(|&&i| model.predict(&data.rows[i]).class == data.labels[i])
        .count();
    correct as f64 / idx.len() as f64
}

fn model_file(
    data: &Dataset,
    nodes: Vec<Node>,
    metrics: ModelMetrics,
    training: TrainingInfo,
) -> ModelFile {
    ModelFile {
        format: FORMAT.to_owned(),
        name: "iris-decision-tree".to_owned(),
        feature_names: data.feature_names.clone(),
        class_names: data.class_names.clone(),
        metrics,
        training,
        nodes,
    }
}

pub fn train(csv: &str) -> anyhow::Result<Trained> {
    let data = parse_csv(csv)?;
    let n_classes = data.class_names.len();
    // The test split is one fold of a stratified 1/TEST_FRACTION split.
    let split_folds = (1.0 / TEST_FRACTION).round() as usize;
    let folds = stratified_folds(&data.labels, n_classes, split_folds, SEED);
    let test_idx = folds[0].clone();
    let train_idx: Vec<usize> = folds[1..].concat();
    let mut train_sorted = train_idx.clone();
    train_sorted.sort_unstable();

    let cv_folds = stratified_folds(&data.labels, n_classes, CV_FOLDS, SEED + 1);
    let mut cv_scores = Vec::new();
    for (k, held_out) in cv_folds.iter().enumerate() {
        let rest: Vec<usize> = cv_folds
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != k)
            .flat_map(|(_, f)| f.iter().copied())
            .collect();
        let nodes = fit(&data, &rest)?;
        let m = Model::from_file(
            model_file(&data, nodes, placeholder_metrics(), placeholder_training()),
            String::new(),
        )?;
        cv_scores.push(accuracy(&m, &data, held_out));
    }
    let cv_accuracy = round6(cv_scores.iter().sum::<f64>() / cv_scores.len() as f64);

    let nodes = fit(&data, &train_sorted)?;
    let trial = Model::from_file(
        model_file(
            &data,
            nodes.clone(),
            placeholder_metrics(),
            placeholder_training(),
        ),
        String::new(),
    )?;
    let test_accuracy = round6(accuracy(&trial, &data, &test_idx));
    let train_accuracy = accuracy(&trial, &data, &train_sorted);
    let file = model_file(
        &data,
        nodes,
        ModelMetrics {
            test_accuracy,
            cv_accuracy,
            cv_folds: CV_FOLDS,
        },
        TrainingInfo {
            algorithm: "CART decision tree (smartcore DecisionTreeClassifier)".to_owned(),
            criterion: "gini".to_owned(),
            max_depth: MAX_DEPTH,
            seed: SEED,
            train_rows: train_sorted.len(),
            test_rows: test_idx.len(),
            dataset_sha256: sha256_hex(csv.as_bytes()),
        },
    );
    let artifact = serde_json::to_string_pretty(&file)? + "\n";
    // The artifact must load in the server exactly as written.
    Model::from_json(artifact.as_bytes())?;
    let card = model_card(&file, &artifact, &cv_scores, train_accuracy, &data);
    Ok(Trained {
        model: file,
        artifact,
        card,
    })
}

fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

fn placeholder_metrics() -> ModelMetrics {
    ModelMetrics {
        test_accuracy: 0.0,
        cv_accuracy: 0.0,
        cv_folds: 0,
    }
}

fn placeholder_training() -> TrainingInfo {
    TrainingInfo {
        algorithm: String::new(),
        criterion: String::new(),
        max_depth: 0,
        seed: 0,
        train_rows: 0,
        test_rows: 0,
        dataset_sha256: String::new(),
    }
}

fn model_card(
    file: &ModelFile,
    artifact: &str,
    cv_scores: &[f64],
    train_accuracy: f64,
    data: &Dataset,
) -> String {
    let per_class: Vec<String> = data
        .class_names
        .iter()
        .enumerate()
        .map(|(c, name)| format!("{name} {}", data.labels.iter().filter(|&&l| l == c).count()))
        .collect();
    let folds: Vec<String> = cv_scores.iter().map(|s| format!("{s:.4}")).collect();
    let t = &file.training;
    format!(
        "# Model card: {name}\n\
\n\
Generated by `cargo xtask train`; do not edit by hand (a test checks that this file and the\n\
artifact are exactly what training produces).\n\
\n\
| | |\n\
|---|---|\n\
| artifact | `iris-tree.json`, format `{format}` |\n\
| artifact sha256 | `{sha}` |\n\
| algorithm | {algorithm}, criterion {criterion}, max depth {depth} |\n\
| nodes | {nodes} |\n\
| seed | {seed} (stratified split and folds, ChaCha8) |\n\
| training rows | {train} (training accuracy {train_acc:.4}) |\n\
| test rows | {test} (stratified 80/20 hold-out) |\n\
| **test accuracy** | **{test_acc:.4}** |\n\
| **{k}-fold stratified CV accuracy** | **{cv:.4}** (folds: {folds}) |\n\
\n\
## Data\n\
\n\
`iris.csv`: the 150-row Iris dataset (R. A. Fisher, 1936; UCI Machine Learning Repository),\n\
as distributed with scikit-learn, which carries the two corrections noted by Bezdek et al. (1999).\n\
Columns: {features} (cm), and `species`. Rows per class: {per_class}.\n\
Dataset sha256: `{dsha}`.\n\
\n\
## Format\n\
\n\
`nodes[0]` is the root. A split node `{{\"feature\", \"threshold\", \"left\", \"right\"}}` sends a row\n\
left when `row[feature] <= threshold`. A leaf `{{\"class_counts\"}}` holds the training rows of each\n\
class that reached it: the probabilities are those counts normalised, the prediction the largest\n\
(the first class on a tie). Children always come after their parent.\n\
\n\
## Intended use and limits\n\
\n\
A small, well-understood model for exercising the serving and autoscaling pipeline. Its accuracy\n\
is measured on 150 flowers of three species; it says nothing about any other data.\n",
        name = file.name,
        format = file.format,
        sha = sha256_hex(artifact.as_bytes()),
        algorithm = t.algorithm,
        criterion = t.criterion,
        depth = t.max_depth,
        nodes = file.nodes.len(),
        seed = t.seed,
        train = t.train_rows,
        train_acc = train_accuracy,
        test = t.test_rows,
        test_acc = file.metrics.test_accuracy,
        k = file.metrics.cv_folds,
        cv = file.metrics.cv_accuracy,
        folds = folds.join(", "),
        features = file.feature_names.join(", "),
        per_class = per_class.join(", "),
        dsha = t.dataset_sha256,
    )
}

/// Every Iris row as a single-row batch body.
pub fn iris_bodies() -> anyhow::Result<Vec<Bytes>> {
    let csv = std::fs::read_to_string(project_root().join(DATASET))?;
    let data = crate::domain::dataset::parse_csv(&csv)?;
    Ok(data
        .rows
        .iter()
        .map(|r| Bytes::from(serde_json::json!({ "features": [r] }).to_string()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dataset() -> String {
        std::fs::read_to_string(project_root().join(DATASET)).expect("model/iris.csv")
    }

    #[test]
    fn training_is_deterministic() {
        let a = train(&dataset()).expect("train");
        let b = train(&dataset()).expect("train");
        assert_eq!(a.artifact, b.artifact);
        assert_eq!(a.card, b.card);
    }

    #[test]
    fn committed_artifact_is_what_training_produces() {
        let out = train(&dataset()).expect("train");
        let root = project_root();
        let artifact = std::fs::read_to_string(root.join(ARTIFACT)).expect("artifact");
        let card = std::fs::read_to_string(root.join(CARD)).expect("card");
        assert!(
            artifact == out.artifact && card == out.card,
            "model/ is stale or was edited by hand: run `cargo xtask train` and commit"
        );
        // The server's embedded copy is the same file.
        assert_eq!(iris_serve::model::EMBEDDED_MODEL, out.artifact);
    }

    #[test]
    fn model_is_accurate_and_split_is_stratified() {
        let out = train(&dataset()).expect("train");
        assert!(
            out.model.metrics.test_accuracy >= 0.9,
            "{:?}",
            out.model.metrics
        );
        assert!(
            out.model.metrics.cv_accuracy >= 0.9,
            "{:?}",
            out.model.metrics
        );
        assert_eq!(out.model.training.train_rows, 120);
        assert_eq!(out.model.training.test_rows, 30);
        let data = parse_csv(&dataset()).expect("csv");
        let folds = stratified_folds(&data.labels, 3, 5, SEED);
        for fold in &folds {
            for class in 0..3 {
                assert_eq!(
                    fold.iter().filter(|&&i| data.labels[i] == class).count(),
                    10
                );
            }
        }
        let mut all: Vec<usize> = folds.concat();
        all.sort_unstable();
        assert_eq!(all, (0..150).collect::<Vec<_>>());
    }

    #[test]
    fn bad_csv_is_a_clear_error() {
        let err = parse_csv("a,b,label\n1,x,setosa\n2,3,virginica\n")
            .err()
            .expect("error");
        assert!(err.to_string().contains("line 2"), "{err}");
        assert!(parse_csv("").is_err());
    }
}
