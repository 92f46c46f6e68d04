//! Adapters to the world, with no knowledge of the app: paths, processes and signals, Docker,
//! Kubernetes, the kind binary, OCI layouts, clocks, HTTP waits, numbers, typed manifests.
//! Nothing here names `crate::domain` or `crate::commands` (checked by `layers_point_down`).

pub mod clock;
pub mod docker;
pub mod http_wait;
pub mod k8s;
pub mod kind;
pub mod manifests;
pub mod numbers;
pub mod oci;
pub mod paths;
pub mod process;
pub mod signals;
pub mod steps;
