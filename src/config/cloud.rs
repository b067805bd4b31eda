//! The part of a QEMU builder that boots a distribution's cloud image instead of an image
//! runner bakes from Debian packages: where the image comes from, how it is verified, who
//! logs in, how it boots, and what is added to it once.
//!
//! ```toml
//! image = { url = "https://…/noble-server-cloudimg-amd64.img", checksum_url = "https://…/SHA256SUMS" }
//! ssh_user = "ubuntu"
//! packages = ["build-essential"]
//! bake_script = "bake/ubuntu.sh"   # relative to this file
//! ```

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::{Arch, ConfigError, Source};

/// A cloud image and what is done to it before machines boot from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudImage {
    pub source: ImageSource,
    /// Who runner logs in as; anyone but root runs the guest contract through `sudo`.
    pub ssh_user: String,
    pub firmware: Firmware,
    /// Run once, as root, in the customising boot (after `packages` are installed).
    pub bake_script: Option<BakeScript>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// Downloaded once into the image cache; verified against `checksum` before use.
    Url { url: String, checksum: Checksum },
    /// A file on this host; checked against `sha256` when one is given.
    Path {
        path: PathBuf,
        sha256: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checksum {
    Sha256(String),
    /// The distribution's `SHA256SUMS` (GNU or BSD style), read for the image's file name.
    File(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BakeScript {
    pub path: PathBuf,
    pub text: String,
}

/// How a cloud image is started: by firmware, from the bootloader inside its disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    /// Read from the image once it is downloaded (the default): an EFI system partition and
    /// no BIOS boot code in its MBR is `uefi`; anything else (hybrid images too) is `bios`.
    /// aarch64 machines have UEFI only.
    Auto,
    /// SeaBIOS, QEMU's default for x86: images with a BIOS (or hybrid) bootloader.
    Bios,
    /// OVMF on x86-64, QEMU_EFI on aarch64: images with an EFI system partition.
    Uefi,
}

impl Firmware {
    pub fn as_str(self) -> &'static str {
        match self {
            Firmware::Auto => "auto",
            Firmware::Bios => "bios",
            Firmware::Uefi => "uefi",
        }
    }
}

impl ImageSource {
    /// The image's file name, for listings: the URL's last segment or the file's name.
    pub fn file_name(&self) -> String {
        match self {
            ImageSource::Url { url, .. } => url_file_name(url).to_owned(),
            ImageSource::Path { path, .. } => path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
        }
    }
}

/// The last path segment of a URL, without its query: what a checksum file lists it as.
pub fn url_file_name(url: &str) -> &str {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    path.rsplit('/').next().unwrap_or(path)
}

/// `image = { … }` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawImage {
    url: Option<Spanned<String>>,
    sha256: Option<Spanned<String>>,
    checksum_url: Option<Spanned<String>>,
    path: Option<Spanned<String>>,
}

/// The cloud-image keys of a QEMU builder, as written.
pub(super) struct RawCloud<'a> {
    pub image: &'a Spanned<RawImage>,
    pub ssh_user: Option<&'a Spanned<String>>,
    pub firmware: Option<&'a Spanned<Firmware>>,
    pub bake_script: Option<&'a Spanned<String>>,
    pub arch: Arch,
}

impl CloudImage {
    pub(super) fn from_raw(src: &Source, raw: RawCloud<'_>) -> Result<CloudImage, ConfigError> {
        let bad = |span, key: &str, msg: String| src.error_at(Some(span), Some(key.into()), msg);
        let source = image_source(src, raw.image)?;
        let ssh_user = match raw.ssh_user {
            None => "root".to_owned(),
            Some(u) if is_user_name(u.get_ref()) => u.get_ref().clone(),
            Some(u) => {
                return Err(bad(
                    u.span(),
                    "ssh_user",
                    format!(
                        "`{}` is not a user name (lowercase letters, digits, `_` and `-`, \
                         starting with a letter or `_`, at most 32)",
                        u.get_ref()
                    ),
                ));
            }
        };
        let firmware = match (raw.firmware, raw.arch) {
            (None, _) => Firmware::Auto,
            (Some(f), Arch::Arm64) if *f.get_ref() == Firmware::Bios => {
                return Err(bad(
                    f.span(),
                    "firmware",
                    "aarch64 machines boot with UEFI only (firmware = \"uefi\")".into(),
                ));
            }
            (Some(f), _) => *f.get_ref(),
        };
        let bake_script = match raw.bake_script {
            None => None,
            Some(s) => {
                let dir = src.path.parent().unwrap_or(std::path::Path::new("."));
                let path = dir.join(s.get_ref());
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    bad(
                        s.span(),
                        "bake_script",
                        format!("cannot read `{}`: {e}", path.display()),
                    )
                })?;
                Some(BakeScript { path, text })
            }
        };
        Ok(CloudImage {
            source,
            ssh_user,
            firmware,
            bake_script,
        })
    }
}

fn image_source(src: &Source, image: &Spanned<RawImage>) -> Result<ImageSource, ConfigError> {
    let bad = |span, key: &str, msg: &str| {
        src.error_at(Some(span), Some(format!("image.{key}")), msg.to_owned())
    };
    let raw = image.get_ref();
    let sha256 = match &raw.sha256 {
        Some(s) if !is_sha256(s.get_ref()) => {
            return Err(bad(
                s.span(),
                "sha256",
                "must be 64 hexadecimal digits (the image's SHA-256)",
            ));
        }
        s => s.as_ref().map(|s| s.get_ref().to_ascii_lowercase()),
    };
    match (&raw.url, &raw.path) {
        (Some(url), None) => {
            // Only a pinned digest makes a plain-http image safe: whoever can rewrite the
            // traffic would otherwise choose the image (and, through checksum_url, its digest).
            if !is_http(url.get_ref()) {
                return Err(bad(url.span(), "url", "must be an http:// or https:// URL"));
            }
            if sha256.is_none() && !transport_is_private(url.get_ref()) {
                return Err(bad(url.span(), "url", PLAIN_HTTP));
            }
            let checksum = match (sha256, &raw.checksum_url) {
                (Some(s), None) => Checksum::Sha256(s),
                (None, Some(c)) if is_http(c.get_ref()) && transport_is_private(c.get_ref()) => {
                    Checksum::File(c.get_ref().clone())
                }
                (None, Some(c)) if is_http(c.get_ref()) => {
                    return Err(bad(c.span(), "checksum_url", PLAIN_HTTP));
                }
                (None, Some(c)) => {
                    return Err(bad(c.span(), "checksum_url", "must be an https:// URL"));
                }
                (Some(_), Some(c)) => {
                    return Err(bad(
                        c.span(),
                        "checksum_url",
                        "give `sha256` or `checksum_url`, not both",
                    ));
                }
                (None, None) => {
                    return Err(bad(
                        image.span(),
                        "sha256",
                        "a downloaded image must be verified: give `sha256` or `checksum_url` \
                         (the distribution's SHA256SUMS)",
                    ));
                }
            };
            Ok(ImageSource::Url {
                url: url.get_ref().clone(),
                checksum,
            })
        }
        (None, Some(path)) => {
            if let Some(c) = &raw.checksum_url {
                return Err(bad(
                    c.span(),
                    "checksum_url",
                    "a local `path` is checked with `sha256`, if at all",
                ));
            }
            let dir = src.path.parent().unwrap_or(std::path::Path::new("."));
            Ok(ImageSource::Path {
                path: dir.join(path.get_ref()),
                sha256,
            })
        }
        (Some(_), Some(p)) => Err(bad(p.span(), "path", "give `url` or `path`, not both")),
        (None, None) => Err(bad(
            image.span(),
            "url",
            "an image needs a `url` (with `sha256` or `checksum_url`) or a local `path`",
        )),
    }
}

const PLAIN_HTTP: &str = "an http:// download is allowed only with a pinned `sha256` (or from \
                          this host's loopback); use https:// or pin the image's sha256";

/// https, or plain http that never leaves this host (a loopback address): what an unpinned
/// download may travel over. Redirects are held to the same rule (see `download`).
pub fn transport_is_private(url: &str) -> bool {
    match reqwest::Url::parse(url) {
        Ok(u) if u.scheme() == "https" => true,
        Ok(u) if u.scheme() == "http" => is_loopback(&u),
        _ => false,
    }
}

/// Whether a URL names this host's loopback (127.0.0.0/8, ::1 or `localhost`).
pub fn is_loopback(url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let ip = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || ip
            .parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_loopback())
}

fn is_http(s: &str) -> bool {
    (s.starts_with("http://") || s.starts_with("https://")) && !s.contains(char::is_whitespace)
}

pub fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit())
}

/// Login names as `useradd` accepts them by default (and cloud-init passes on).
pub fn is_user_name(s: &str) -> bool {
    (1..=32).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-".contains(c))
}

/// Package names across apt, dnf, zypper and apk: letters, digits and `+._-`, starting with
/// a letter or digit. Checked because they end up on the guest's package manager's command
/// line.
pub fn is_package_name(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "+._-".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_package_name("build-essential") && is_package_name("gcc-c++"));
        assert!(is_package_name("python3.11") && is_package_name("NetworkManager"));
        assert!(!is_package_name("-rf") && !is_package_name("a b") && !is_package_name("x;y"));
        assert!(is_user_name("ubuntu") && is_user_name("_build") && is_user_name("ec2-user"));
        assert!(!is_user_name("Root") && !is_user_name("1x") && !is_user_name("a b"));
        assert!(is_sha256(&"a".repeat(64)) && !is_sha256(&"g".repeat(64)));
    }

    #[test]
    fn only_https_or_loopback_is_private() {
        for ok in [
            "https://example.org/x.img",
            "http://127.0.0.1:8080/x.img",
            "http://127.9.0.1/x",
            "http://[::1]:80/x",
            "http://LOCALHOST/x",
        ] {
            assert!(transport_is_private(ok), "{ok}");
        }
        for bad in [
            "http://example.org/x.img",
            "http://10.0.0.1/x",
            "http://localhost.example.org/x",
            "http://127.0.0.1.example.org/x",
            "ftp://127.0.0.1/x",
            "not a url",
        ] {
            assert!(!transport_is_private(bad), "{bad}");
        }
    }
}
