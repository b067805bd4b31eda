//! Each machine's private directory under the state dir, whatever its backend: created with
//! its record before anything else exists (so `runner gc` can always find what follows), and
//! the files runner writes there — private keys for `--keep-failed` and `vm shell` among them.

use std::path::{Path, PathBuf};

use super::record::MachineRecord;
use crate::error::{IoContext, Result};
use crate::guest::{Endpoint, GuestKeys, keys::openssh_public};
use crate::paths::Dirs;

pub struct MachineDir {
    pub id: String,
    pub path: PathBuf,
}

impl MachineDir {
    /// A fresh directory (mode 0700) holding `record`, written first.
    pub fn create(dirs: &Dirs, record: impl FnOnce(&str) -> MachineRecord) -> Result<MachineDir> {
        let machines = dirs.machines();
        std::fs::create_dir_all(&machines)
            .ctx(|| format!("cannot create state directory `{}`", machines.display()))?;
        let id = new_id();
        let path = machines.join(&id);
        create_private_dir(&path)?;
        record(&id).write(&path)?;
        Ok(MachineDir { id, path })
    }

    /// Where the machine's serial console (or the cloud's console output) is kept: beside
    /// the machine directories, because it outlives its machine.
    pub fn console_log(&self, dirs: &Dirs) -> Result<PathBuf> {
        let logs = dirs.logs();
        std::fs::create_dir_all(&logs)
            .ctx(|| format!("cannot create log directory `{}`", logs.display()))?;
        crate::logs::prune(&logs, "-console.log", crate::logs::KEEP_CONSOLES - 1);
        Ok(logs.join(format!("{}-console.log", self.id)))
    }
}

/// A client key and a `known_hosts` pinned to the machine's host key, for OpenSSH.
pub struct SshAccess {
    pub key: PathBuf,
    pub known_hosts: PathBuf,
    pub endpoint: Endpoint,
}

impl SshAccess {
    pub fn write(dir: &Path, keys: &GuestKeys, endpoint: &Endpoint) -> Result<SshAccess> {
        let key = dir.join("id_ed25519");
        write_private(&key, keys.client_private_openssh()?.as_bytes())?;
        let known_hosts = dir.join("known_hosts");
        let line = format!(
            "[{}]:{} {}\n",
            endpoint.host,
            endpoint.port,
            openssh_public(keys.host_public())
        );
        write_private(&known_hosts, line.as_bytes())?;
        Ok(SshAccess {
            key,
            known_hosts,
            endpoint: endpoint.clone(),
        })
    }

    /// `ssh` arguments that use exactly this key and trust exactly this host key.
    pub fn ssh_args(&self) -> Vec<String> {
        vec![
            "-i".into(),
            self.key.display().to_string(),
            "-o".into(),
            format!("UserKnownHostsFile={}", self.known_hosts.display()),
            "-o".into(),
            "StrictHostKeyChecking=yes".into(),
            "-o".into(),
            "IdentitiesOnly=yes".into(),
            "-p".into(),
            self.endpoint.port.to_string(),
            format!("{}@{}", self.endpoint.user, self.endpoint.host),
        ]
    }

    /// The command a person pastes.
    pub fn command_line(&self) -> String {
        format!(
            "ssh -i {} -o UserKnownHostsFile={} -p {} {}@{}",
            self.key.display(),
            self.known_hosts.display(),
            self.endpoint.port,
            self.endpoint.user,
            self.endpoint.host
        )
    }
}

/// Creates `path` with mode 0600; never overwrites (a file already there is an error).
pub fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(data))
        .ctx(|| format!("cannot write `{}`", path.display()))
}

fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .ctx(|| format!("cannot create machine directory `{}`", dir.display()))
}

fn new_id() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// Machine directories under `machines`, sorted.
pub fn all(machines: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(machines)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs
}
