//! The names runner accepts, in one place: config files and manifests (which are untrusted
//! input to `reproduce`, `verify` and `why`) are held to the same rules, because the same
//! names end up as path components, command arguments and environment variables.

pub use super::cloud::{is_package_name, is_sha256, is_user_name};
pub use super::qemu::is_debian_name;

/// A value refused where untrusted input is read (a manifest's field): what it must be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{value}` is not {expected}")]
pub struct Invalid {
    /// The value as it may be shown: a bounded, escaped prefix (a hostile value may be huge
    /// or full of control characters).
    pub value: String,
    pub expected: &'static str,
}

impl Invalid {
    pub fn new(value: &str, expected: &'static str) -> Invalid {
        let mut shown: String = value
            .chars()
            .take(80)
            .flat_map(char::escape_debug)
            .collect();
        if value.chars().count() > 80 {
            shown.push('…');
        }
        Invalid {
            value: shown,
            expected,
        }
    }
}

/// A failed check of a record: the field (JSON-path style, `builder.recipe.packages[2]`) and
/// why.
pub type Failed = (String, Invalid);

/// `Ok` if `ok`, else the field `field()` refused with `value` as `expected`.
pub fn ensure(
    ok: bool,
    field: impl FnOnce() -> String,
    value: &str,
    expected: &'static str,
) -> Result<(), Failed> {
    if ok {
        Ok(())
    } else {
        Err((field(), Invalid::new(value, expected)))
    }
}

/// A target or builder name: letters, digits and `._-`, one normal path component (never
/// `.` or `..`, never starting with `-` so it cannot pass for an option), at most 128 bytes.
pub fn is_component_name(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s != "."
        && s != ".."
        && !s.starts_with('-')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

/// An environment variable a target may set: `[A-Za-z_][A-Za-z0-9_]*`, none of the names
/// runner sets itself.
pub fn is_env_name(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with("RUNNER_")
        && s != "SOURCE_DATE_EPOCH"
}

/// A SHA-256 as runner writes it: exactly 64 lowercase hexadecimal digits.
pub fn is_sha256_lower(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// An AMI id: `ami-` and 8 or 17 lowercase hexadecimal digits.
pub fn is_ami_id(s: &str) -> bool {
    s.strip_prefix("ami-").is_some_and(|h| {
        (8..=17).contains(&h.len())
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn component_names_are_one_normal_component() {
        for ok in ["hello-c", "a", "x.y_z", "v1.2"] {
            assert!(is_component_name(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "-rf",
            "a/b",
            "/etc",
            "a b",
            "é",
            &"x".repeat(129),
        ] {
            assert!(!is_component_name(bad), "{bad}");
        }
    }

    #[test]
    fn env_digest_and_ami_names() {
        assert!(is_env_name("CFLAGS") && is_env_name("_x1"));
        assert!(!is_env_name("1X") && !is_env_name("RUNNER_KEY") && !is_env_name("A-B"));
        assert!(!is_env_name("SOURCE_DATE_EPOCH") && !is_env_name(""));
        assert!(is_sha256_lower(&"0a".repeat(32)));
        assert!(!is_sha256_lower(&"0A".repeat(32)) && !is_sha256_lower("abc"));
        assert!(is_ami_id("ami-12345678") && is_ami_id("ami-0123456789abcdef0"));
        assert!(!is_ami_id("ami-1234") && !is_ami_id("ami-../../x") && !is_ami_id("12345678"));
    }
}
