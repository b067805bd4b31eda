//! runner: disposable build VMs. `main.rs` only calls [`cli::main`].
//!
//! Layout: `cli` parses and dispatches to `commands` (one module per subcommand); `run` is a
//! run of many targets (dispatch, one target, its phases); `guest` is the contract with a
//! build machine (SSH, keys, sync/provision/collect); `machine` is where machines come from
//! (the backend trait, the factory, QEMU and EC2); `store`, `context`, `artifacts` and
//! `manifest` are what goes in and comes out; `events` and `progress` report it.

pub mod artifacts;
#[cfg(feature = "aws")]
mod aws;
pub mod beneath;
pub mod cache;
pub mod cli;
pub mod commands;
pub mod config;
pub mod context;
pub mod digest;
pub mod error;
pub mod events;
pub mod guest;
pub mod host;
pub mod leftovers;
pub mod logs;
pub mod machine;
pub mod manifest;
pub mod paths;
pub mod private;
pub mod progress;
pub mod provenance;
pub mod run;
pub mod safe_read;
pub mod signals;
pub mod stopping;
pub mod store;

pub use error::{Error, Result};
