//! `POLYHOST_*` environment variables: which of them override a key of the
//! main file, and which name no setting at all.
//!
//! A variable whose key (after `POLYHOST_`, `__` separating a table from its
//! key) is a key of `polyhost.toml` is an override, merged over the files.
//! Any other `POLYHOST_*` variable is left out of the configuration with a
//! warning naming the closest setting: wrapper scripts and container images
//! export names like `POLYHOST_VERSION` or `POLYHOST_BIN`, and a service that
//! refuses to start because of one is worse than the typo the warning shows.
//!
//! The keys are not listed by hand: they are read from the serde structs of
//! `raw` themselves (see [`setting_keys`]), so a new key needs nothing here.

use std::fmt;
use std::sync::OnceLock;

use figment::error::Kind;
use figment::providers::{Env, Serialized};
use figment::Figment;

use super::raw::RawServer;

const PREFIX: &str = "POLYHOST_";

/// A `POLYHOST_*` environment variable that names no setting: ignored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IgnoredEnv {
    /// The variable as it is set, e.g. `POLYHOST_VERSION`.
    pub var: String,
    /// The setting whose variable is closest to it (by edit distance), as a
    /// key of the main file, e.g. `log_level`.
    pub closest: String,
}

impl IgnoredEnv {
    /// The variable that sets [`IgnoredEnv::closest`], e.g. `POLYHOST_LOG_LEVEL`.
    pub fn closest_var(&self) -> String {
        var_of(&self.closest)
    }
}

impl fmt::Display for IgnoredEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "environment variable {}: not a polyhost setting, ignored (the closest setting is {}, key `{}`)",
            self.var,
            self.closest_var(),
            self.closest
        )
    }
}

/// The environment layer of the main configuration: every `POLYHOST_*`
/// variable that names a setting, none that does not.
pub(crate) fn overrides() -> Env {
    Env::prefixed(PREFIX)
        .split("__")
        .filter(|key| is_setting(&key.as_str().to_ascii_lowercase()))
}

/// Every `POLYHOST_*` variable of this process that names no setting, in
/// the order of the environment.
pub fn ignored_env() -> Vec<IgnoredEnv> {
    std::env::vars_os()
        .filter_map(|(var, _)| {
            let var = var.to_string_lossy().into_owned();
            let key = key_of(&var)?;
            (!is_setting(&key)).then(|| IgnoredEnv {
                closest: closest_setting(&key),
                var: var.trim().to_owned(),
            })
        })
        .collect()
}

/// The configuration key a variable sets, as figment's `Env` reads it
/// (`Env::prefixed(PREFIX).split("__")`: prefix matched whatever its case,
/// key trimmed and lower-cased, none with an empty segment); `None` for a
/// variable figment does not read.
fn key_of(var: &str) -> Option<String> {
    let var = var.trim();
    let prefix = var.get(..PREFIX.len())?;
    if !prefix.eq_ignore_ascii_case(PREFIX) {
        return None;
    }
    let key = var[PREFIX.len()..]
        .replace("__", ".")
        .trim()
        .to_ascii_lowercase();
    (!key.split('.').any(str::is_empty)).then_some(key)
}

/// `admin.socket` → `POLYHOST_ADMIN__SOCKET`.
fn var_of(key: &str) -> String {
    format!("{PREFIX}{}", key.replace('.', "__").to_ascii_uppercase())
}

/// Whether `key` (dotted, lower case) is a key of the main file: a value
/// (`admin.socket`) or a whole table (`admin`, given as an inline table).
fn is_setting(key: &str) -> bool {
    let keys = setting_keys();
    keys.values.iter().any(|k| k == key)
        || keys.tables.iter().any(|k| k == key)
        || keys
            .open
            .iter()
            .any(|k| key == k || key.starts_with(&format!("{k}.")))
}

fn closest_setting(key: &str) -> String {
    setting_keys()
        .values
        .iter()
        .min_by_key(|k| strsim::damerau_levenshtein(key, k))
        .cloned()
        .unwrap_or_default()
}

/// The keys of the main file, dotted (`limits.max_connections`).
#[derive(Debug, Default)]
struct SettingKeys {
    /// Keys that hold a value.
    values: Vec<String>,
    /// Keys that hold a table of known keys (`admin`).
    tables: Vec<String>,
    /// Keys that hold a table of any keys (none today).
    open: Vec<String>,
}

/// The keys of [`RawServer`], found by asking serde: a figment holding only
/// `PATH.<probe>` fails to deserialize with "unknown field, expected one
/// of ..." where `PATH` is a table (the fields listed are its keys), with
/// some other error where `PATH` holds a value, and not at all where `PATH`
/// is a table of free keys. Computed once.
fn setting_keys() -> &'static SettingKeys {
    static KEYS: OnceLock<SettingKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let mut keys = SettingKeys::default();
        walk("", 0, &mut keys);
        keys
    })
}

fn walk(path: &str, depth: usize, keys: &mut SettingKeys) {
    // Not a field name: those are lower-case letters and underscores.
    const PROBE: &str = "polyhost-probe";
    // The main file nests two levels; the bound only guards the recursion.
    const MAX_DEPTH: usize = 8;
    let probe = if path.is_empty() {
        PROBE.to_owned()
    } else {
        format!("{path}.{PROBE}")
    };
    let result = Figment::from(Serialized::default(&probe, 0)).extract::<RawServer>();
    let fields = match result {
        Ok(_) => {
            keys.open.push(path.to_owned());
            return;
        }
        Err(e) => match e.kind {
            Kind::UnknownField(field, fields) if field == PROBE => fields,
            _ => {
                keys.values.push(path.to_owned());
                return;
            }
        },
    };
    if !path.is_empty() {
        keys.tables.push(path.to_owned());
    }
    if depth >= MAX_DEPTH {
        return;
    }
    for field in fields {
        let child = if path.is_empty() {
            (*field).to_owned()
        } else {
            format!("{path}.{field}")
        };
        walk(&child, depth + 1, keys);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_keys_are_read_from_the_raw_structs() {
        let keys = setting_keys();
        for k in [
            "listen",
            "include",
            "log_level",
            "admin.socket",
            "admin.token_file",
            "metrics.listen",
            "limits.max_connections",
            "limits.h2_max_streams",
            "acme.directory",
            "acme.eab_hmac_key",
            "cluster.password",
            "cluster.etcd",
        ] {
            assert!(keys.values.iter().any(|v| v == k), "{k}: {keys:?}");
        }
        assert_eq!(
            keys.tables,
            ["admin", "metrics", "limits", "acme", "cluster"]
        );
        assert!(keys.open.is_empty(), "{keys:?}");
    }

    #[test]
    fn variables_map_to_keys_as_figment_reads_them() {
        assert_eq!(key_of("POLYHOST_LOG_LEVEL").as_deref(), Some("log_level"));
        assert_eq!(
            key_of("POLYHOST_ADMIN__SOCKET").as_deref(),
            Some("admin.socket")
        );
        assert_eq!(key_of("polyhost_listen").as_deref(), Some("listen"));
        assert_eq!(key_of("POLYHOST_"), None);
        assert_eq!(key_of("POLYHOST_ADMIN____X"), None);
        assert_eq!(key_of("OTHER_LISTEN"), None);
        assert_eq!(
            var_of("limits.max_connections"),
            "POLYHOST_LIMITS__MAX_CONNECTIONS"
        );
    }

    #[test]
    fn settings_and_others() {
        for k in ["listen", "admin", "admin.socket", "limits.max_headers"] {
            assert!(is_setting(k), "{k}");
        }
        for k in ["version", "bin", "admin.soket", "listen.x", "server.listn"] {
            assert!(!is_setting(k), "{k}");
        }
        assert_eq!(closest_setting("admin.soket"), "admin.socket");
        assert_eq!(closest_setting("listn"), "listen");
        assert_eq!(
            closest_setting("limits.max_conections"),
            "limits.max_connections"
        );
    }
}
