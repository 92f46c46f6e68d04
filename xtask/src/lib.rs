//! The harness as a library, for `cargo xtask`'s commands (`src/commands/`, in the binary): the
//! `platform` layer (adapters to the world) and the `domain` layer (what the product knows) above
//! it. Being its own crate, cargo builds it apart from the commands, so a change in a command
//! rebuilds only the binary.

pub mod domain;
pub mod platform;
#[cfg(test)]
mod testkit;
