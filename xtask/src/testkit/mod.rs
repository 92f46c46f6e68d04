//! Test support, compiled only for tests: the realistic report and calibration fixtures, the
//! Kubernetes API mock (fed with objects recorded from a live API server), and the Docker
//! engines and the containerd kind-node fixture.

pub mod fixture;
pub mod kubemock;
pub mod node;
pub mod report;
