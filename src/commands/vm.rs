//! `runner vm run|shell`: the machine layer used directly, one disposable machine per call.

use std::io::IsTerminal;
use std::process::Stdio;

use super::{Env, Exit};
use crate::config::Builder;
use crate::error::{Error, IoContext, Result};
use crate::machine::{self, Lease, MachineSpec, Report};

/// A fresh, reachable machine of `builder`.
async fn boot(env: &Env, builder: &str) -> Result<(Builder, Lease)> {
    let builder = Builder::find(&env.project, builder)?;
    let backend = env.machines.backend(&builder);
    env.cancellable(backend.prepare(&Report::Lines)).await?;
    let spec = MachineSpec::of(&builder, &builder.name);
    let lease = machine::lease(backend.as_ref(), &spec, &env.shutdown.token).await?;
    Ok((builder, lease))
}

/// Boots a machine, runs `command` with live output, tears down; returns the remote status
/// as an exit code.
pub async fn run(env: &Env, builder: &str, command: &str) -> Result<Exit> {
    let (builder, lease) = boot(env, builder).await?;
    // Piped input is forwarded; a terminal's is not (use `vm shell` for interaction).
    let stdin = (!std::io::stdin().is_terminal())
        .then(|| Box::new(tokio::io::stdin()) as crate::guest::Input);
    let status = env
        .cancellable(lease.guest.exec(
            command,
            stdin,
            Box::new(tokio::io::stdout()),
            Box::new(tokio::io::stderr()),
        ))
        .await;
    lease.release(false).await?;
    let status = status?;
    if !status.success() {
        eprintln!("runner: `{command}` on {}: {status}", builder.name);
    }
    Ok(Exit::Passed(u8::try_from(status.code()).unwrap_or(255)))
}

/// Boots a machine and hands the terminal to OpenSSH, pinned to the machine's host key,
/// with a private key file that is removed with the machine.
pub async fn shell(env: &Env, builder: &str) -> Result<Exit> {
    let (_, lease) = boot(env, builder).await?;
    let result = async {
        // Inside the machine's directory: whatever happens to runner, `gc` removes it with
        // the machine.
        let tmp = tempfile::Builder::new()
            .prefix("shell-")
            .tempdir_in(&lease.machine.dir)
            .ctx(|| "cannot create a key directory")?;
        let access = lease.ssh_access(tmp.path())?;
        let status = tokio::process::Command::new("ssh")
            .args(["-o", "LogLevel=ERROR"])
            .args(access.ssh_args())
            .stdin(Stdio::inherit())
            .status()
            .await
            .ctx(|| "cannot run `ssh` (is openssh-client installed?)")?;
        Ok::<_, Error>(Exit::passed(status))
    }
    .await;
    lease.release(false).await?;
    result
}
