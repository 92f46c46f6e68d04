//! What the product knows: the cluster's lifecycle and who owns what in it, images and bundles,
//! the app's deploy and monitoring, scenarios and load runners, what was observed and measured,
//! calibration, the report, preflight checks and the dataset. Uses `crate::platform` and
//! `iris_load`; never `crate::commands` (checked by `layers_point_down`).

pub mod bundle;
pub mod calibrate;
pub mod claim;
pub mod cluster;
pub mod dataset;
pub mod deploy;
pub mod doctor;
pub mod image;
pub mod monitoring;
pub mod observe;
pub mod podmetrics;
pub mod report;
pub mod runners;
pub mod scenario;
pub mod timeline;
pub mod verdict;
pub mod witness;
