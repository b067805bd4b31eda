//! What the user chose for every machine of a run, whatever its backend.

use std::str::FromStr;

/// Hardware acceleration for local machines, as the user asked for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccelChoice {
    /// Probe KVM (on some hosts guests hang under it) and fall back to TCG.
    #[default]
    Auto,
    Kvm,
    Tcg,
}

impl FromStr for AccelChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(AccelChoice::Auto),
            "kvm" => Ok(AccelChoice::Kvm),
            "tcg" => Ok(AccelChoice::Tcg),
            _ => Err(format!(
                "unknown accelerator `{s}` (expected auto, kvm or tcg)"
            )),
        }
    }
}

/// Host-wide choices every backend of a run sees.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub accel: AccelChoice,
    /// The Debian mirror images are baked from (default: the host's apt sources).
    pub mirror: Option<String>,
    /// Rebake images even when cached (`runner image build --force`).
    pub rebake: bool,
    /// Boot every machine cold, never from a snapshot (`--cold`).
    pub cold: bool,
}
