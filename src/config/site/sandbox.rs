//! `sandbox` of a site file: `sandbox = false` (opt out), or a `[sandbox]`
//! table. The sandbox is on by default for every site that runs code (where
//! the kernel allows it: see `isolation::sandbox`); a static site has no
//! process to put in it.

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
}

/// What a site's processes see (docs/isolation.md, "The sandbox").
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SandboxConfig {
    /// Each process in its own mount (and IPC) namespace, with the site's
    /// private `/tmp`, a fresh `/dev/shm` and a `/proc` showing only the
    /// site user's processes.
    pub enabled: bool,
    pub network: SandboxNetwork,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            enabled: true,
            network: SandboxNetwork::Host,
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
    SandboxConfig { enabled, network }
}
