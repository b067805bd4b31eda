//! runner: disposable build VMs. `main.rs` only calls [`cli::main`].

pub mod artifacts;
pub mod build;
pub mod cli;
pub mod config;
pub mod context;
pub mod error;
pub mod events;
pub mod gc;
pub mod guest;
pub mod image;
pub mod keys;
pub mod launch;
pub mod logs;
pub mod machine;
pub mod manifest;
pub mod orchestrator;
pub mod paths;
pub mod pipeline;
pub mod progress;
pub mod reproduce;
pub mod signals;
pub mod ssh;
pub mod store;
pub mod vm;

pub use error::{Error, Result};
