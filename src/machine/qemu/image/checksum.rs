//! Distributions' checksum files: which digest they publish for an image file.

/// A digest a checksum file publishes, by its length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    Sha256(String),
    Sha512(String),
}

impl Published {
    fn of(hex: &str) -> Option<Published> {
        let hex = hex.trim();
        if !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        let hex_lc = hex.to_ascii_lowercase();
        match hex.len() {
            64 => Some(Published::Sha256(hex_lc)),
            128 => Some(Published::Sha512(hex_lc)),
            _ => None,
        }
    }
}

/// The digest a checksum file gives `name`: GNU lines (`<hex>  name`, `<hex> *name`) or BSD
/// lines (`SHA256 (name) = <hex>`), as distributions publish them (Fedora's are signed
/// inline; the signature lines are skipped like any other). SHA-256 where both are listed.
pub fn find_digest(text: &str, name: &str) -> Option<Published> {
    let same = |n: &str| n.trim_start_matches("./") == name;
    let found: Vec<Published> = text
        .lines()
        .filter_map(|line| {
            let line = line.trim();
            for tag in ["SHA256 (", "SHA512 ("] {
                if let Some(rest) = line.strip_prefix(tag) {
                    let (n, hex) = rest.split_once(") = ")?;
                    return same(n).then(|| Published::of(hex)).flatten();
                }
            }
            let (hex, n) = line.split_once(char::is_whitespace)?;
            let n = n.trim_start().trim_start_matches('*');
            same(n).then(|| Published::of(hex)).flatten()
        })
        .collect();
    let sha256 = found.iter().find(|p| matches!(p, Published::Sha256(_)));
    sha256.or(found.first()).cloned()
}

#[cfg(test)]
mod tests {
    use super::{Published, find_digest};

    fn find_sha256(text: &str, name: &str) -> Option<String> {
        match find_digest(text, name)? {
            Published::Sha256(h) => Some(h),
            Published::Sha512(_) => None,
        }
    }

    #[test]
    fn reads_gnu_and_bsd_checksum_files() {
        let a = "a".repeat(64);
        let b = "B".repeat(64);
        let gnu = format!("{a}  other.img\n{b} *noble-server-cloudimg-amd64.img\n");
        assert_eq!(
            find_sha256(&gnu, "noble-server-cloudimg-amd64.img"),
            Some("b".repeat(64))
        );
        let bsd = format!(
            "-----BEGIN PGP SIGNED MESSAGE-----\n# Fedora-Cloud-Base.qcow2: 512 bytes\n\
             SHA256 (Fedora-Cloud-Base.qcow2) = {a}\n"
        );
        assert_eq!(
            find_sha256(&bsd, "Fedora-Cloud-Base.qcow2"),
            Some(a.clone())
        );
        assert_eq!(find_sha256(&bsd, "Fedora"), None);
        assert_eq!(
            find_sha256(&format!("{a}  ./x.qcow2\n"), "x.qcow2"),
            Some(a)
        );
        assert_eq!(find_sha256("nonsense  x.qcow2\n", "x.qcow2"), None);
        // Debian's SHA512SUMS.
        let c = "c".repeat(128);
        assert_eq!(
            find_digest(
                &format!("{c}  debian-12-genericcloud-amd64.qcow2\n"),
                "debian-12-genericcloud-amd64.qcow2"
            ),
            Some(Published::Sha512(c))
        );
    }
}
