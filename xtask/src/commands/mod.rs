//! One file per `cargo xtask` command: its `Args` and `run`, calling the domain. Commands never
//! use each other; what two of them share lives in `xtask::domain` or `xtask::platform`.

pub mod bench;
pub mod bundle;
pub mod calibrate;
pub mod cluster;
pub mod deploy;
pub mod doctor;
pub mod e2e;
pub mod image;
pub mod load;
pub mod report;
pub mod train;
