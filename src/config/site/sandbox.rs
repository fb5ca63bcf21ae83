//! `sandbox` of a site file: `sandbox = false` (opt out), or a `[sandbox]`
//! table. The sandbox is on by default for every site that runs code (where
//! the kernel allows it: see `isolation::sandbox`); a static site has no
//! process to put in it. Its read-only view of the file system is opt-in:
//! `paths = [...]` (even empty) turns it on.

use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use crate::config::error::FileErrors;

/// As written: `sandbox = true|false` or `[sandbox]` with its keys.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawSandbox {
    Flag(bool),
    Table(RawSandboxTable),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSandboxTable {
    pub enabled: Option<bool>,
    pub network: Option<String>,
    pub paths: Option<Vec<String>>,
}

/// What a site's processes see (docs/isolation.md, "The sandbox").
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SandboxConfig {
    /// Each process in its own mount (and IPC) namespace, with the site's
    /// private `/tmp`, a fresh `/dev/shm` and a `/proc` showing only the
    /// site user's processes.
    pub enabled: bool,
    pub network: SandboxNetwork,
    /// `paths`: the read-only view of the file system, with these paths
    /// (absolute, normalised) visible read-only besides what every site
    /// sees (its root, Python home and path, `/usr`, a few `/etc` files).
    /// `None`: no view, the host's file system as permissions allow.
    pub view: Option<Vec<PathBuf>>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            enabled: true,
            network: SandboxNetwork::Host,
            view: None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SandboxNetwork {
    /// The host's network, as without a sandbox.
    Host,
    /// A network namespace of its own with only a loopback interface: no
    /// connection leaves the process (Unix sockets still work).
    None,
}

pub(super) fn validate_sandbox(
    raw: Option<RawSandbox>,
    errs: &mut FileErrors<'_>,
) -> SandboxConfig {
    let table = match raw {
        None => return SandboxConfig::default(),
        Some(RawSandbox::Flag(enabled)) => {
            return SandboxConfig {
                enabled,
                ..SandboxConfig::default()
            }
        }
        Some(RawSandbox::Table(t)) => t,
    };
    let network = match table.network.as_deref() {
        None | Some("host") => SandboxNetwork::Host,
        Some("none") => SandboxNetwork::None,
        Some(other) => {
            errs.add(
                "sandbox.network",
                format!("{other:?} is not a sandbox network (expected \"host\" or \"none\")"),
            );
            SandboxNetwork::Host
        }
    };
    let enabled = table.enabled.unwrap_or(true);
    if !enabled && network == SandboxNetwork::None {
        errs.add(
            "sandbox.network",
            "\"none\" needs the sandbox: remove `enabled = false` or the network key",
        );
    }
    let view = table.paths.map(|paths| validate_paths(&paths, errs));
    if !enabled && view.is_some() {
        errs.add(
            "sandbox.paths",
            "the view needs the sandbox: remove `enabled = false` or the paths key",
        );
    }
    SandboxConfig {
        enabled,
        network,
        view,
    }
}

/// Each path absolute, without `.` or `..`, not `/` (the whole host is no
/// view), listed once. Whether it exists is `polyhost check`'s question
/// (and the start's: a missing path fails it).
fn validate_paths(paths: &[String], errs: &mut FileErrors<'_>) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for (i, raw) in paths.iter().enumerate() {
        let key = format!("sandbox.paths[{i}]");
        let path = Path::new(raw);
        let plain = path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
        if !path.is_absolute() || !plain || raw.contains('\0') {
            errs.add(
                &key,
                format!(
                    "{raw:?} must be an absolute path without `.` or `..` (e.g. \"/srv/shared\")"
                ),
            );
        } else if path.parent().is_none() {
            errs.add(
                &key,
                "\"/\" would show the whole host: list the directories the site needs",
            );
        } else if out.iter().any(|p| p == path) {
            errs.add(&key, format!("{raw:?} is listed twice"));
        } else {
            out.push(path.components().collect());
        }
    }
    out
}
