//! The package managers a cloud image may have: how runner finds which one it has, and the
//! command that installs a builder's `packages` with it. Only apt runs in the tests here (the
//! stand-in image is Debian); the others are checked on the commands they generate.

use crate::guest::quote;

/// A package manager a cloud image may have, found by what is on its `PATH`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackageManager {
    Apt,
    Dnf,
    Yum,
    Zypper,
    Apk,
}

/// The guest command that names the first package manager it has.
pub const DETECT: &str = "for m in apt-get dnf yum zypper apk; do \
                      command -v $m >/dev/null 2>&1 && { echo $m; exit 0; }; done; exit 1";

impl PackageManager {
    pub fn from_detected(out: &str) -> Option<PackageManager> {
        Some(match out.trim() {
            "apt-get" => PackageManager::Apt,
            "dnf" => PackageManager::Dnf,
            "yum" => PackageManager::Yum,
            "zypper" => PackageManager::Zypper,
            "apk" => PackageManager::Apk,
            _ => return None,
        })
    }

    /// The command that installs `packages` non-interactively. Names are checked when a
    /// builder is read, but a manifest's recipe (`runner reproduce`) is not a builder file:
    /// they are quoted.
    pub fn install(self, packages: &[String]) -> String {
        let list = packages
            .iter()
            .map(|p| quote(p))
            .collect::<Vec<_>>()
            .join(" ");
        match self {
            PackageManager::Apt => format!(
                // A first boot's apt-daily may hold the lock for a while.
                "export DEBIAN_FRONTEND=noninteractive; o='-o DPkg::Lock::Timeout=600'; \
                 apt-get $o update -q && apt-get $o install -y -q --no-install-recommends {list}"
            ),
            PackageManager::Dnf => format!("dnf install -y -q {list}"),
            PackageManager::Yum => format!("yum install -y -q {list}"),
            PackageManager::Zypper => {
                format!("zypper --non-interactive --quiet install --no-recommends {list}")
            }
            PackageManager::Apk => format!("apk add --no-cache {list}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::PackageManager::{self, *};

    #[test]
    fn install_commands_per_package_manager() {
        let pkgs = ["gcc".to_owned(), "make".to_owned()];
        assert_eq!(
            Apt.install(&pkgs),
            "export DEBIAN_FRONTEND=noninteractive; o='-o DPkg::Lock::Timeout=600'; \
             apt-get $o update -q && apt-get $o install -y -q --no-install-recommends 'gcc' 'make'"
        );
        assert_eq!(Dnf.install(&pkgs), "dnf install -y -q 'gcc' 'make'");
        assert_eq!(Yum.install(&pkgs), "yum install -y -q 'gcc' 'make'");
        assert_eq!(
            Zypper.install(&pkgs),
            "zypper --non-interactive --quiet install --no-recommends 'gcc' 'make'"
        );
        assert_eq!(Apk.install(&pkgs), "apk add --no-cache 'gcc' 'make'");
        assert_eq!(
            PackageManager::from_detected("zypper\n"),
            Some(PackageManager::Zypper)
        );
        assert_eq!(PackageManager::from_detected(""), None);
    }
}
