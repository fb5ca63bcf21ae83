//! Validated value types. Each parser returns the message a user should see
//! when the value is wrong: the bad value and what was expected.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

/// A raw scalar as it appears in a file: sizes and durations may be written
/// as a number or a string, so they are parsed after deserialisation.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Scalar {
    Int(i64),
    Float(f64),
    Text(String),
    Bool(bool),
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scalar::Int(i) => write!(f, "{i}"),
            Scalar::Float(x) => write!(f, "{x}"),
            Scalar::Text(s) => write!(f, "{s:?}"),
            Scalar::Bool(b) => write!(f, "{b}"),
        }
    }
}

/// A site's name: the stem of its vhost file, `[a-z0-9][a-z0-9-]*`, at most 48 bytes
/// (it becomes part of user-visible paths, cgroup names and socket names).
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct SiteName(String);

impl SiteName {
    pub const MAX_LEN: usize = 48;

    pub fn parse(s: &str) -> Result<Self, String> {
        let mut chars = s.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !first_ok || !rest_ok || s.len() > Self::MAX_LEN {
            return Err(format!(
                "{s:?} is not a valid site name (the file name without .toml must match [a-z0-9][a-z0-9-]*, at most {} characters)",
                Self::MAX_LEN
            ));
        }
        Ok(SiteName(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SiteName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A host name a site answers to: exact (`example.test`) or wildcard
/// (`*.example.test`, matching any name that ends in `.example.test`).
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum HostPattern {
    Exact(String),
    /// Holds the suffix without the leading `*.`.
    Wildcard(String),
}

impl HostPattern {
    pub fn parse(s: &str) -> Result<Self, String> {
        let expected = "expected a host name such as \"example.test\" or \"*.example.test\" (no port, no scheme)";
        let lower = s.trim_end_matches('.').to_ascii_lowercase();
        let (wild, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest.to_owned()),
            None => (false, lower),
        };
        if name.is_empty() || name.len() > 253 {
            return Err(format!("{s:?} is not a host name: {expected}"));
        }
        for label in name.split('.') {
            let ok = !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                && !label.starts_with('-')
                && !label.ends_with('-');
            if !ok {
                return Err(format!("{s:?} is not a host name: {expected}"));
            }
        }
        Ok(if wild {
            HostPattern::Wildcard(name)
        } else {
            HostPattern::Exact(name)
        })
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(h) => f.write_str(h),
            HostPattern::Wildcard(h) => write!(f, "*.{h}"),
        }
    }
}

/// Parses a byte size: an integer number of bytes or a string such as
/// `"512M"`, `"1.5 GiB"`, `"64k"`. Units are binary (K = 1024).
pub fn parse_size(v: &Scalar) -> Result<u64, String> {
    let bad = || format!("{v} is not a size (e.g. \"512M\")");
    match v {
        Scalar::Int(i) if *i >= 0 => Ok(*i as u64),
        Scalar::Text(s) => {
            let t = s.trim();
            let split = t
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(t.len());
            let (num, unit) = t.split_at(split);
            let num: f64 = num.parse().map_err(|_| bad())?;
            let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
                "" | "b" => 1,
                "k" | "kb" | "kib" => 1 << 10,
                "m" | "mb" | "mib" => 1 << 20,
                "g" | "gb" | "gib" => 1 << 30,
                "t" | "tb" | "tib" => 1 << 40,
                _ => return Err(bad()),
            };
            let bytes = num * mult as f64;
            if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
                return Err(bad());
            }
            Ok(bytes as u64)
        }
        _ => Err(bad()),
    }
}

/// Parses a duration: an integer number of seconds or a string such as
/// `"30s"`, `"5m"`, `"1h 30m"`, `"250ms"` (humantime syntax).
pub fn parse_duration(v: &Scalar) -> Result<Duration, String> {
    let bad = || format!("{v} is not a duration (e.g. \"30s\", \"5m\", \"250ms\"; at most a year)");
    let d = match v {
        Scalar::Int(i) if *i >= 0 => Duration::from_secs(*i as u64),
        Scalar::Float(x) => Duration::try_from_secs_f64(*x).map_err(|_| bad())?,
        Scalar::Text(s) => humantime::parse_duration(s.trim()).map_err(|_| bad())?,
        _ => return Err(bad()),
    };
    // Durations are added to clocks later; a year is beyond any sane timeout.
    if d > MAX_DURATION {
        return Err(bad());
    }
    Ok(d)
}

/// The longest duration any key accepts.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Parses a CPU limit in cores (`1`, `0.5`, `"1.5"`): must be > 0 and at most 1024.
pub fn parse_cores(v: &Scalar) -> Result<f64, String> {
    let bad = || format!("{v} is not a number of CPU cores (e.g. 1 or 0.5)");
    let x = match v {
        Scalar::Int(i) => *i as f64,
        Scalar::Float(x) => *x,
        Scalar::Text(s) => s.trim().parse::<f64>().map_err(|_| bad())?,
        Scalar::Bool(_) => return Err(bad()),
    };
    if x.is_finite() && x > 0.0 && x <= 1024.0 {
        Ok(x)
    } else {
        Err(bad())
    }
}

/// Parses a positive count (`processes = 4`), between `min` and `max`.
pub fn parse_count(v: &Scalar, min: u64, max: u64) -> Result<u64, String> {
    match v {
        Scalar::Int(i) if *i >= min as i64 && *i as u64 <= max => Ok(*i as u64),
        _ => Err(format!("{v} is not a whole number between {min} and {max}")),
    }
}

/// A URL path prefix a runtime is mounted at: starts with `/`, no trailing
/// slash (except `/` itself, stored as ""), no `..`, `//`, `?`, `#` or `%`.
pub fn parse_mount(s: &str) -> Result<String, String> {
    let ok = s.starts_with('/')
        && !s.contains("//")
        && !s.split('/').any(|seg| seg == ".." || seg == ".")
        && !s.contains(['?', '#', '%', '\\', '\0'])
        && s.chars().all(|c| c.is_ascii_graphic());
    if !ok {
        return Err(format!(
            "{s:?} is not a URL path prefix (expected e.g. \"/\" or \"/app\")"
        ));
    }
    Ok(s.trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Scalar {
        Scalar::Text(s.into())
    }

    #[test]
    fn sizes() {
        let cases = [
            (text("512M"), Ok(512 << 20)),
            (text("1.5 GiB"), Ok(3 << 29)),
            (text("64k"), Ok(64 << 10)),
            (Scalar::Int(100), Ok(100)),
            (
                text("12 potatoes"),
                Err("\"12 potatoes\" is not a size (e.g. \"512M\")".to_string()),
            ),
            (
                Scalar::Int(-1),
                Err("-1 is not a size (e.g. \"512M\")".to_string()),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(parse_size(&input), want, "{input:?}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration(&text("30s")), Ok(Duration::from_secs(30)));
        assert_eq!(
            parse_duration(&text("250ms")),
            Ok(Duration::from_millis(250))
        );
        assert_eq!(parse_duration(&Scalar::Int(5)), Ok(Duration::from_secs(5)));
        assert!(parse_duration(&text("soon"))
            .unwrap_err()
            .contains("is not a duration"));
    }

    #[test]
    fn site_names() {
        assert!(SiteName::parse("shop-2").is_ok());
        for bad in ["", "-shop", "Shop", "shop_2", "shop.test", &"a".repeat(49)] {
            assert!(SiteName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn host_patterns() {
        assert_eq!(
            HostPattern::parse("Example.Test."),
            Ok(HostPattern::Exact("example.test".into()))
        );
        assert_eq!(
            HostPattern::parse("*.example.test"),
            Ok(HostPattern::Wildcard("example.test".into()))
        );
        for bad in [
            "",
            "*",
            "a..b",
            "exa mple.test",
            "example.test:80",
            "http://x",
            "a.*.b",
            "-a.test",
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn mounts() {
        assert_eq!(parse_mount("/"), Ok(String::new()));
        assert_eq!(parse_mount("/app/"), Ok("/app".into()));
        for bad in ["app", "/a/../b", "/a//b", "/a?b", "/a%2f"] {
            assert!(parse_mount(bad).is_err(), "{bad}");
        }
    }
}
