//! runner: disposable build VMs. `main.rs` only calls [`cli::main`].

pub mod artifacts;
pub mod cli;
pub mod config;
pub mod context;
pub mod error;
pub mod events;
pub mod gc;
pub mod image;
pub mod keys;
pub mod launch;
pub mod logs;
pub mod machine;
pub mod paths;
pub mod signals;
pub mod ssh;
pub mod vm;

pub use error::{Error, Result};
