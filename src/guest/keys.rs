//! Per-machine SSH identities. Nothing secret is baked into an image: each machine gets a
//! fresh client key (to log in) and a fresh host key (which the client pins), and both die
//! with the machine.

use russh::keys::ssh_key::{Algorithm, LineEnding, PrivateKey, PublicKey};

use crate::error::{Error, Result};

pub struct GuestKeys {
    /// The key runner logs in with; its public half goes into the guest's authorized_keys.
    pub client: PrivateKey,
    /// The guest's host key; only its public half is trusted when connecting.
    pub host: PrivateKey,
}

impl GuestKeys {
    pub fn generate() -> Result<GuestKeys> {
        let mut rng = rand::rng();
        let mut gen_key = || {
            PrivateKey::random(&mut rng, Algorithm::Ed25519).map_err(|source| Error::Key {
                context: "cannot generate an ed25519 key",
                source,
            })
        };
        Ok(GuestKeys {
            client: gen_key()?,
            host: gen_key()?,
        })
    }

    pub fn host_public(&self) -> &PublicKey {
        self.host.public_key()
    }

    /// One `authorized_keys` line for the client key.
    pub fn authorized_keys(&self) -> String {
        format!("{}\n", openssh_public(self.client.public_key()))
    }

    /// The host private key in OpenSSH format, as sshd reads it.
    pub fn host_private_openssh(&self) -> Result<String> {
        private_openssh(&self.host)
    }

    pub fn client_private_openssh(&self) -> Result<String> {
        private_openssh(&self.client)
    }
}

pub fn openssh_public(key: &PublicKey) -> String {
    key.to_openssh().unwrap_or_default()
}

pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(Default::default()).to_string()
}

fn private_openssh(key: &PrivateKey) -> Result<String> {
    key.to_openssh(LineEnding::LF)
        .map(|s| s.to_string())
        .map_err(|source| Error::Key {
            context: "cannot encode a private key",
            source,
        })
}
