//! The model artifact format (`iris-tree/v1`) and its evaluator.
//!
//! The artifact is a decision tree stored as a flat list of nodes. Node 0 is the root. A split node
//! sends a row to `left` when `row[feature] <= threshold`, otherwise to `right`. A leaf holds the
//! number of training rows of each class that reached it; its probabilities are those counts
//! normalised, and its prediction is the class with the most rows (the first one on a tie).
//! Children always have a larger index than their parent, so evaluation always terminates.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The format string every artifact carries; bump it when the meaning of a field changes.
pub const FORMAT: &str = "iris-tree/v1";

/// The artifact committed in `model/`, compiled into the server binary.
pub const EMBEDDED_MODEL: &str = include_str!("../model/iris-tree.json");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    pub format: String,
    pub name: String,
    pub feature_names: Vec<String>,
    pub class_names: Vec<String>,
    pub metrics: ModelMetrics,
    pub training: TrainingInfo,
    pub nodes: Vec<Node>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelMetrics {
    /// Accuracy on the held-out test split.
    pub test_accuracy: f64,
    /// Mean accuracy over stratified k-fold cross-validation on the whole dataset.
    pub cv_accuracy: f64,
    pub cv_folds: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingInfo {
    pub algorithm: String,
    pub criterion: String,
    pub max_depth: u16,
    pub seed: u64,
    pub train_rows: usize,
    pub test_rows: usize,
    pub dataset_sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum Node {
    Split {
        feature: usize,
        threshold: f64,
        left: usize,
        right: usize,
    },
    Leaf {
        class_counts: Vec<u32>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("the model file is not valid JSON for format {FORMAT}: {0}")]
    Parse(#[from] serde_json::Error),
    #[error("unsupported model format {found:?}, this server reads {FORMAT:?}")]
    Format { found: String },
    #[error("invalid model: {0}")]
    Invalid(String),
}

/// A validated, ready-to-evaluate tree.
#[derive(Debug, Clone)]
pub struct Model {
    pub file: ModelFile,
    /// sha256 of the artifact's bytes, as written in the model card.
    pub sha256: String,
    leaves: Vec<LeafOutput>,
    nodes: Vec<CompiledNode>,
}

#[derive(Debug, Clone, Copy)]
enum CompiledNode {
    Split {
        feature: usize,
        threshold: f64,
        left: usize,
        right: usize,
    },
    Leaf(usize),
}

/// What a leaf predicts.
#[derive(Debug, Clone, PartialEq)]
pub struct LeafOutput {
    pub class: usize,
    pub probabilities: Vec<f64>,
    pub confidence: f64,
}

impl Model {
    /// The artifact compiled into the binary.
    pub fn embedded() -> Result<Self, ModelError> {
        Self::from_json(EMBEDDED_MODEL.as_bytes())
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, ModelError> {
        let file: ModelFile = serde_json::from_slice(bytes)?;
        let sha256 = sha256_hex(bytes);
        Self::from_file(file, sha256)
    }

    pub fn from_file(file: ModelFile, sha256: String) -> Result<Self, ModelError> {
        if file.format != FORMAT {
            return Err(ModelError::Format { found: file.format });
        }
        let n_features = file.feature_names.len();
        let n_classes = file.class_names.len();
        if n_features == 0 || n_classes == 0 {
            return Err(ModelError::Invalid(
                "feature_names and class_names must not be empty".into(),
            ));
        }
        if file.nodes.is_empty() {
            return Err(ModelError::Invalid("the tree has no nodes".into()));
        }
        let mut leaves = Vec::new();
        let mut nodes = Vec::with_capacity(file.nodes.len());
        for (index, node) in file.nodes.iter().enumerate() {
            match node {
                Node::Split {
                    feature,
                    threshold,
                    left,
                    right,
                } => {
                    if *feature >= n_features {
                        return Err(ModelError::Invalid(format!(
                            "node {index} splits on feature {feature}, but there are {n_features} features"
                        )));
                    }
                    if !threshold.is_finite() {
                        return Err(ModelError::Invalid(format!(
                            "node {index} has a non-finite threshold"
                        )));
                    }
                    for child in [*left, *right] {
                        // Children after their parent: no cycles, so evaluation always ends.
                        if child <= index || child >= file.nodes.len() {
                            return Err(ModelError::Invalid(format!(
                                "node {index} points to child {child}, which must be after it and below {}",
                                file.nodes.len()
                            )));
                        }
                    }
                    nodes.push(CompiledNode::Split {
                        feature: *feature,
                        threshold: *threshold,
                        left: *left,
                        right: *right,
                    });
                }
                Node::Leaf { class_counts } => {
                    if class_counts.len() != n_classes {
                        return Err(ModelError::Invalid(format!(
                            "leaf {index} has {} class counts for {n_classes} classes",
                            class_counts.len()
                        )));
                    }
                    let total: u64 = class_counts.iter().map(|&c| u64::from(c)).sum();
                    if total == 0 {
                        return Err(ModelError::Invalid(format!(
                            "leaf {index} has no training rows"
                        )));
                    }
                    let probabilities: Vec<f64> = class_counts
                        .iter()
                        .map(|&c| f64::from(c) / total as f64)
                        .collect();
                    let class = argmax(class_counts);
                    leaves.push(LeafOutput {
                        class,
                        confidence: probabilities[class],
                        probabilities,
                    });
                    nodes.push(CompiledNode::Leaf(leaves.len() - 1));
                }
            }
        }
        Ok(Model {
            file,
            sha256,
            leaves,
            nodes,
        })
    }

    pub fn n_features(&self) -> usize {
        self.file.feature_names.len()
    }

    pub fn class_names(&self) -> &[String] {
        &self.file.class_names
    }

    pub fn leaves(&self) -> &[LeafOutput] {
        &self.leaves
    }

    /// The index (into [`Model::leaves`]) of the leaf a row lands in.
    /// The caller guarantees `row.len() == self.n_features()`.
    pub fn leaf_index(&self, row: &[f64]) -> usize {
        let mut at = 0;
        loop {
            match self.nodes[at] {
                CompiledNode::Split {
                    feature,
                    threshold,
                    left,
                    right,
                } => {
                    at = if row[feature] <= threshold {
                        left
                    } else {
                        right
                    }
                }
                CompiledNode::Leaf(leaf) => return leaf,
            }
        }
    }

    pub fn predict(&self, row: &[f64]) -> &LeafOutput {
        &self.leaves[self.leaf_index(row)]
    }
}

/// The first index of the largest count.
pub fn argmax(counts: &[u32]) -> usize {
    let mut best = 0;
    for (i, &c) in counts.iter().enumerate() {
        if c > counts[best] {
            best = i;
        }
    }
    best
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Lower-case hex, as checksums are written.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> ModelFile {
        ModelFile {
            format: FORMAT.into(),
            name: "t".into(),
            feature_names: vec!["a".into(), "b".into()],
            class_names: vec!["x".into(), "y".into()],
            metrics: ModelMetrics {
                test_accuracy: 1.0,
                cv_accuracy: 1.0,
                cv_folds: 5,
            },
            training: TrainingInfo {
                algorithm: "test".into(),
                criterion: "gini".into(),
                max_depth: 1,
                seed: 0,
                train_rows: 4,
                test_rows: 0,
                dataset_sha256: String::new(),
            },
            nodes: vec![
                Node::Split {
                    feature: 1,
                    threshold: 0.5,
                    left: 1,
                    right: 2,
                },
                Node::Leaf {
                    class_counts: vec![3, 1],
                },
                Node::Leaf {
                    class_counts: vec![0, 2],
                },
            ],
        }
    }

    #[test]
    fn evaluates_threshold_inclusively_on_the_left() {
        let m = Model::from_file(tiny(), String::new()).expect("valid");
        assert_eq!(m.predict(&[9.0, 0.5]).class, 0);
        assert_eq!(m.predict(&[9.0, 0.5]).probabilities, vec![0.75, 0.25]);
        assert_eq!(m.predict(&[9.0, 0.6]).class, 1);
        assert_eq!(m.predict(&[9.0, 0.6]).confidence, 1.0);
    }

    #[test]
    fn rejects_cycles_bad_features_and_bad_leaves() {
        let mut f = tiny();
        f.nodes[0] = Node::Split {
            feature: 0,
            threshold: 1.0,
            left: 0,
            right: 2,
        };
        assert!(matches!(
            Model::from_file(f, String::new()),
            Err(ModelError::Invalid(_))
        ));
        let mut f = tiny();
        f.nodes[0] = Node::Split {
            feature: 7,
            threshold: 1.0,
            left: 1,
            right: 2,
        };
        assert!(Model::from_file(f, String::new()).is_err());
        let mut f = tiny();
        f.nodes[1] = Node::Leaf {
            class_counts: vec![0, 0],
        };
        assert!(Model::from_file(f, String::new()).is_err());
        let mut f = tiny();
        f.format = "other/v9".into();
        assert!(matches!(
            Model::from_file(f, String::new()),
            Err(ModelError::Format { .. })
        ));
    }

    #[test]
    fn rejects_unknown_fields() {
        let mut v = serde_json::to_value(tiny()).expect("serialize");
        v["surprise"] = serde_json::json!(1);
        let bytes = serde_json::to_vec(&v).expect("serialize");
        assert!(matches!(
            Model::from_json(&bytes),
            Err(ModelError::Parse(_))
        ));
    }

    #[test]
    fn ties_go_to_the_first_class() {
        assert_eq!(argmax(&[2, 2, 1]), 0);
        assert_eq!(argmax(&[0, 1, 1]), 1);
    }
}
