//! The manifest's fields that become paths, file names and slices: each a type whose only
//! constructor checks it, so a manifest read from anywhere (a store, a download, a
//! customer's disk) cannot carry a `..` name, a short digest or an absolute path past
//! `serde`. Runner's own values go through the same constructors when it writes one.

use std::fmt;
use std::path::{Component, Path};

use serde::{Deserialize, Serialize};

use crate::config::names::{self, Invalid};

macro_rules! checked_string {
    ($(#[$doc:meta])* $name:ident, $check:expr, $expected:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn new(s: impl Into<String>) -> Result<$name, Invalid> {
                let s = s.into();
                let check: fn(&str) -> bool = $check;
                if check(&s) { Ok($name(s)) } else { Err(Invalid::new(&s, $expected)) }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = Invalid;
            fn try_from(s: String) -> Result<$name, Invalid> {
                $name::new(s)
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<Path> for $name {
            fn as_ref(&self) -> &Path {
                Path::new(&self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                &self.0 == other
            }
        }

        impl PartialEq<$name> for String {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }

        impl AsRef<std::ffi::OsStr> for $name {
            fn as_ref(&self) -> &std::ffi::OsStr {
                std::ffi::OsStr::new(&self.0)
            }
        }
    };
}

checked_string!(
    /// A target, builder or script name: one normal path component (see
    /// [`names::is_component_name`]).
    Name,
    names::is_component_name,
    "a name (letters, digits, `._-`; one path component)"
);

checked_string!(
    /// A script's file name: one path component (no `/`, never `.` or `..`, no control
    /// characters), at most 255 bytes.
    FileName,
    |s| (1..=255).contains(&s.len())
        && s != "."
        && s != ".."
        && !s.contains('/')
        && !s.chars().any(char::is_control),
    "a file name (one path component)"
);

checked_string!(
    /// A SHA-256 digest: exactly 64 lowercase hex digits, so [`Sha256::short`] never panics.
    Sha256,
    names::is_sha256_lower,
    "a SHA-256 (64 lowercase hexadecimal digits)"
);

checked_string!(
    /// What a build's machine booted: a base image's SHA-256, or an AMI id.
    BaseImage,
    |s| names::is_sha256_lower(s) || names::is_ami_id(s),
    "a base image (a SHA-256 or an AMI id)"
);

checked_string!(
    /// An artifact's path below its target's directory: relative, every component normal,
    /// no empty or `.` components, at most 4096 bytes.
    RelPath,
    is_rel_path,
    "a relative path of normal components"
);

impl Sha256 {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Sha256 {
        Sha256(crate::digest::sha256_hex(bytes))
    }

    /// The first 16 digits, for build ids and people.
    pub fn short(&self) -> &str {
        &self.0[..16]
    }
}

impl BaseImage {
    /// For people: a SHA-256's first 16 digits, an AMI id whole.
    pub fn short(&self) -> &str {
        if names::is_sha256_lower(&self.0) {
            &self.0[..16]
        } else {
            &self.0
        }
    }
}

fn is_rel_path(s: &str) -> bool {
    let p = Path::new(s);
    (1..=4096).contains(&s.len())
        && !s.chars().any(char::is_control)
        && !s.ends_with('/')
        && !s.contains("//")
        && !s.split('/').any(|c| c == ".")
        && p.components().all(|c| matches!(c, Component::Normal(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_type_refuses_what_it_is_not() {
        assert!(Name::new("hello-c").is_ok());
        for bad in ["..", "/tmp/pwned", "a/b", "-x", ""] {
            assert!(Name::new(bad).is_err(), "{bad}");
        }
        assert!(FileName::new("build script.sh").is_ok());
        for bad in ["..", "/tmp/pwned", "a/b", "x\ny", ""] {
            assert!(FileName::new(bad).is_err(), "{bad}");
        }
        assert!(Sha256::new("ab").is_err() && Sha256::new("g".repeat(64)).is_err());
        assert_eq!(Sha256::of(b"").short(), "e3b0c44298fc1c14");
        assert_eq!(
            BaseImage::new("ami-1234abcd").unwrap().short(),
            "ami-1234abcd"
        );
        assert!(BaseImage::new("ami-1234").is_err());
        for ok in ["a", "out/hello", "x.tar.gz"] {
            assert!(RelPath::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "/etc/shadow",
            "../x",
            "a/../b",
            "a/./b",
            "a//b",
            "a/",
            ".",
        ] {
            assert!(RelPath::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn serde_goes_through_the_check() {
        assert!(serde_json::from_str::<Name>("\"../x\"").is_err());
        let n: Name = serde_json::from_str("\"ok\"").unwrap();
        assert_eq!(serde_json::to_string(&n).unwrap(), "\"ok\"");
    }

    #[test]
    fn a_hostile_value_is_quoted_bounded_and_escaped() {
        let e = Name::new(format!("\n{}", "x".repeat(500))).unwrap_err();
        assert!(
            e.value.starts_with("\\n") && e.value.chars().count() < 90,
            "{}",
            e.value
        );
    }
}
