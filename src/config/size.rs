//! Byte sizes written the way people write them in config files: "512M", "2G", "4GiB".
//! A bare number is refused: `memory = 2048` is ambiguous between bytes and MiB.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, de};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Size(pub u64);

pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;

impl Size {
    pub fn mib(self) -> u64 {
        self.0 / MIB
    }
}

impl FromStr for Size {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let num: u64 = num
            .parse()
            .map_err(|_| format!("`{s}` is not a size like \"512M\" or \"2G\""))?;
        let mult = match unit.trim().to_ascii_uppercase().as_str() {
            "K" | "KB" | "KIB" => 1 << 10,
            "M" | "MB" | "MIB" => MIB,
            "G" | "GB" | "GIB" => GIB,
            "T" | "TB" | "TIB" => 1 << 40,
            "" => return Err(format!("`{s}` needs a unit, e.g. \"{s}M\" or \"{s}G\"")),
            other => return Err(format!("unknown size unit `{other}` (use K, M, G or T)")),
        };
        num.checked_mul(mult)
            .map(Size)
            .ok_or_else(|| format!("`{s}` is too large"))
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_multiple_of(GIB) {
            write!(f, "{}G", self.0 / GIB)
        } else if self.0.is_multiple_of(MIB) {
            write!(f, "{}M", self.0 / MIB)
        } else {
            write!(f, "{}", self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size string like \"512M\" or \"2G\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Size, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Size, E> {
                Err(E::custom(format!(
                    "a size needs a unit: write \"{v}M\" or \"{v}G\""
                )))
            }
        }
        d.deserialize_any(V)
    }
}

impl serde::Serialize for Size {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!("512M".parse::<Size>().unwrap().0, 512 * MIB);
        assert_eq!("2GiB".parse::<Size>().unwrap().0, 2 * GIB);
        assert!("2".parse::<Size>().unwrap_err().contains("unit"));
        assert!("2X".parse::<Size>().is_err());
        assert_eq!(Size(3 * GIB).to_string(), "3G");
    }
}
