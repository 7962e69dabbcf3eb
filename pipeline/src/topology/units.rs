//! Human-friendly durations (`500ms`, `10s`, `90d`) and sizes (`64MiB`) in topology files.

use std::fmt;
use std::str::FromStr;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// A duration written as `500ms`, `10s`, `5m`, `2h`, `90d` (humantime syntax).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Duration(pub std::time::Duration);

impl FromStr for Duration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(s.trim()).map(Duration).map_err(|e| {
            format!("`{s}` is not a duration ({e}); write a number and a unit, e.g. 500ms, 10s, 5m, 2h, 90d")
        })
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(de::Error::custom)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

/// A size in bytes written as `512KiB`, `64MiB`, `1GB` or a plain number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub u64);

impl FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        bytesize::ByteSize::from_str(s.trim())
            .map(|b| Size(b.as_u64()))
            .map_err(|e| format!("`{s}` is not a size ({e}); write e.g. 512KiB, 64MiB, 1GiB"))
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bytes(b) => Ok(Size(b)),
            Raw::Text(t) => t.parse().map_err(de::Error::custom),
        }
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&bytesize::ByteSize(self.0).to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations_and_sizes() {
        assert_eq!("10s".parse::<Duration>().unwrap().0.as_secs(), 10);
        assert_eq!("90d".parse::<Duration>().unwrap().0.as_secs(), 90 * 86_400);
        assert_eq!("64MiB".parse::<Size>().unwrap().0, 64 << 20);
        assert!("ten seconds".parse::<Duration>().is_err());
        assert!("lots".parse::<Size>().is_err());
    }
}
