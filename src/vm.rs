//! `runner vm run|shell`: the machine layer used directly, one disposable machine per call.

use std::io::IsTerminal;
use std::process::Stdio;

use crate::config::Builder;
use crate::error::{Error, IoContext, Result};
use crate::keys::openssh_public;
use crate::launch::{self, Env, cancellable};
use crate::machine::qemu::write_private;

/// A fresh, reachable machine of `builder`.
async fn boot(env: &Env, builder: &str) -> Result<(Builder, launch::Lease)> {
    let builder = Builder::find(&env.project, builder)?;
    let (backend, _) = launch::backend(env, &builder).await?;
    let spec = launch::spec(&builder, &builder.name);
    let lease = launch::lease(env, backend.as_ref(), &spec).await?;
    Ok((builder, lease))
}

/// Boots a machine, runs `command` with live output, tears down; returns the remote status
/// as an exit code.
pub async fn run(env: &Env, builder: &str, command: &str) -> Result<i32> {
    let (builder, lease) = boot(env, builder).await?;
    // Piped input is forwarded; a terminal's is not (use `vm shell` for interaction).
    let stdin = (!std::io::stdin().is_terminal()).then(tokio::io::stdin);
    let status = cancellable(
        &env.shutdown,
        lease
            .session
            .exec(command, stdin, tokio::io::stdout(), tokio::io::stderr()),
    )
    .await;
    lease.release(false).await?;
    let status = status?;
    if !status.success() {
        eprintln!("runner: `{command}` on {}: {status}", builder.name);
    }
    Ok(status.code())
}

/// Boots a machine and hands the terminal to OpenSSH, pinned to the machine's host key,
/// with a private key file that is removed with the machine.
pub async fn shell(env: &Env, builder: &str) -> Result<i32> {
    let (_, lease) = boot(env, builder).await?;
    let result = async {
        // Inside the machine's directory: whatever happens to runner, `gc` removes it with the machine.
        let tmp = tempfile::Builder::new()
            .prefix("shell-")
            .tempdir_in(env.dirs.machines().join(&lease.machine.id))
            .ctx(|| "cannot create a key directory")?;
        let key = tmp.path().join("id_ed25519");
        write_private(&key, lease.keys.client_private_openssh()?.as_bytes())?;
        let ep = &lease.machine.endpoint;
        let known = tmp.path().join("known_hosts");
        let host_line = format!(
            "[{}]:{} {}\n",
            ep.host,
            ep.port,
            openssh_public(lease.keys.host_public())
        );
        write_private(&known, host_line.as_bytes())?;
        let status = tokio::process::Command::new("ssh")
            .arg("-i")
            .arg(&key)
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", known.display()))
            .args([
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "LogLevel=ERROR",
            ])
            .arg("-p")
            .arg(ep.port.to_string())
            .arg(format!("{}@{}", ep.user, ep.host))
            .stdin(Stdio::inherit())
            .status()
            .await
            .ctx(|| "cannot run `ssh` (is openssh-client installed?)")?;
        Ok::<_, Error>(status.code().unwrap_or(255))
    }
    .await;
    lease.release(false).await?;
    result
}
