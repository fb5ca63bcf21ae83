//! Host → site lookup: exact name first, then the longest matching wildcard,
//! then the default site. Lookup normalises the host (lower case, port and
//! trailing dot removed) and never allocates for exact hits.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::HostPattern;

/// An immutable host table; a reload builds a new one.
pub struct VhostTable<T> {
    exact: HashMap<String, Arc<T>>,
    /// Keyed by the suffix after `*.`.
    wildcard: HashMap<String, Arc<T>>,
    default: Option<Arc<T>>,
}

impl<T> Default for VhostTable<T> {
    fn default() -> Self {
        VhostTable {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            default: None,
        }
    }
}

impl<T> VhostTable<T> {
    /// Adds a site under its host patterns. Config validation guarantees no
    /// pattern is claimed twice; a later insert would win.
    pub fn insert(&mut self, hosts: &[HostPattern], is_default: bool, site: Arc<T>) {
        for h in hosts {
            match h {
                HostPattern::Exact(name) => self.exact.insert(name.clone(), site.clone()),
                HostPattern::Wildcard(suffix) => self.wildcard.insert(suffix.clone(), site.clone()),
            };
        }
        if is_default {
            self.default = Some(site);
        }
    }

    /// Whether a site lists the normalised `host` exactly.
    pub fn is_exact(&self, host: &str) -> bool {
        self.exact.contains_key(host)
    }

    /// Finds the site for a normalised host (see [`normalize_host`]); `None`
    /// host (HTTP/1.0 without Host) goes to the default site.
    pub fn lookup(&self, host: Option<&str>) -> Option<&Arc<T>> {
        let Some(host) = host else {
            return self.default.as_ref();
        };
        if let Some(site) = self.exact.get(host) {
            return Some(site);
        }
        // Longest wildcard first: for a.b.example.test try b.example.test,
        // then example.test, then test.
        let mut rest = host;
        while let Some((_, suffix)) = rest.split_once('.') {
            if let Some(site) = self.wildcard.get(suffix) {
                return Some(site);
            }
            rest = suffix;
        }
        self.default.as_ref()
    }
}

/// Lower-cases a Host header or URI authority and strips the port and a
/// trailing dot. Returns `None` for an empty or malformed host.
pub fn normalize_host(raw: &str) -> Option<String> {
    let raw = raw.trim();
    let host = if let Some(rest) = raw.strip_prefix('[') {
        // IPv6 literal: [::1]:8080
        let end = rest.find(']')?;
        &raw[..end + 2]
    } else {
        match raw.rsplit_once(':') {
            Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
            Some(_) => return None,
            None => raw,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty()
        || host
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b == b'/' || b == b'@')
    {
        return None;
    }
    Some(host.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> VhostTable<&'static str> {
        let mut t = VhostTable::default();
        let p = |s: &str| HostPattern::parse(s).unwrap();
        t.insert(
            &[p("example.test"), p("www.example.test")],
            false,
            Arc::new("exact"),
        );
        t.insert(&[p("*.example.test")], false, Arc::new("wild"));
        t.insert(&[p("*.deep.example.test")], false, Arc::new("deepwild"));
        t.insert(&[p("fallback.test")], true, Arc::new("default"));
        t
    }

    fn check(host: Option<&str>, want: Option<&str>) {
        let t = table();
        let norm = host.and_then(normalize_host);
        let got = t.lookup(norm.as_deref()).map(|s| **s);
        assert_eq!(got, want, "host {host:?}");
    }

    #[test]
    fn matching_order() {
        check(Some("example.test"), Some("exact"));
        check(Some("WWW.Example.Test:8080"), Some("exact"));
        check(Some("example.test."), Some("exact"));
        check(Some("shop.example.test"), Some("wild"));
        check(Some("a.b.example.test"), Some("wild"));
        check(Some("x.deep.example.test"), Some("deepwild"));
        check(Some("unknown.test"), Some("default"));
        check(None, Some("default"));
        check(Some("[::1]:80"), Some("default"));
    }

    #[test]
    fn no_default() {
        let mut t: VhostTable<&str> = VhostTable::default();
        t.insert(
            &[HostPattern::parse("a.test").unwrap()],
            false,
            Arc::new("a"),
        );
        assert!(t.lookup(Some("b.test")).is_none());
        assert!(t.lookup(None).is_none());
    }

    #[test]
    fn normalisation() {
        assert_eq!(
            normalize_host("Example.TEST:443").as_deref(),
            Some("example.test")
        );
        assert_eq!(normalize_host("[::1]:8080").as_deref(), Some("[::1]"));
        assert_eq!(normalize_host("a.test:x"), None);
        assert_eq!(normalize_host(""), None);
        assert_eq!(normalize_host("a b"), None);
    }
}
