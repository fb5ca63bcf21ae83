//! Who every site runs as, and the rule that keeps sites apart: two sites
//! that run code (PHP or Python) never share a uid or a group.
//!
//! A site's processes hold exactly one group (`setgroups([gid])` in
//! [`crate::isolation::spawn()`]), and a site's sockets, state directory and
//! generated runtime configuration are reachable through its user and that
//! group. Two sites with one uid can signal, trace and impersonate each
//! other; two sites with one group can reach each other's group-readable
//! files and sockets (and so run code as each other). Static-only sites run
//! no code and are not counted.
//!
//! [`site_identities`] is the one place this is decided: `serve` (before
//! anything starts) and every reload (before anything is built; a refusal
//! keeps the running set) call it, and `polyhost check` calls
//! [`configured_site_identities`].
//!
//! When `serve` is not root every site runs as the invoking user anyway (no
//! separation exists; a warning says so), and [`site_identities`] refuses
//! nothing. `polyhost check` resolves every site's configured user and group
//! and applies the rule whoever runs it: a panel checking a config as an
//! unprivileged user gets the answer `serve` as root would give.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::{ConfigError, ConfigErrors, ServerConfig, SiteConfig, SiteName};
use crate::isolation::{self, SiteIdentity};

use super::{configured_identity, site_identity};

/// The server-wide settings that decide who a site runs as.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdentityDefaults {
    pub user: Option<String>,
    pub group: Option<String>,
    /// `[admin] group`: never a site's group.
    pub admin_group: Option<String>,
    /// `router_user`: the router process's user (`privsep`), never a site's.
    pub router_user: Option<String>,
}

impl IdentityDefaults {
    pub fn of(server: &ServerConfig) -> IdentityDefaults {
        IdentityDefaults {
            user: server.default_user.clone(),
            group: server.default_group.clone(),
            admin_group: server.admin.group.clone(),
            router_user: Some(server.router_user.clone()),
        }
    }
}

/// Resolves the identity of every site that runs code and checks that no two
/// of them share a uid or a group. Every error names the site's file and key
/// (`user` or `group`), and for a shared id both sites and their files.
/// As polyhost runs now: when it is not root, every site is the invoking
/// user and nothing is refused.
pub fn site_identities(
    sites: &BTreeMap<SiteName, Arc<SiteConfig>>,
    defaults: &IdentityDefaults,
) -> Result<BTreeMap<SiteName, SiteIdentity>, ConfigErrors> {
    identities(sites, defaults, isolation::running_as_root())
}

/// Like [`site_identities`], but always as `serve` run as root would:
/// each site's configured user and group, whoever the caller is (`polyhost
/// check`).
pub fn configured_site_identities(
    sites: &BTreeMap<SiteName, Arc<SiteConfig>>,
    defaults: &IdentityDefaults,
) -> Result<BTreeMap<SiteName, SiteIdentity>, ConfigErrors> {
    identities(sites, defaults, true)
}

/// `configured`: resolve each site's configured user and group and apply
/// the rule; otherwise every site is the invoking user, unchecked.
fn identities(
    sites: &BTreeMap<SiteName, Arc<SiteConfig>>,
    defaults: &IdentityDefaults,
    configured: bool,
) -> Result<BTreeMap<SiteName, SiteIdentity>, ConfigErrors> {
    let mut errors = ConfigErrors::default();
    let mut resolved = BTreeMap::new();
    for site in sites.values().filter(|s| s.runs_code()) {
        let (user, group, admin) = (
            defaults.user.as_deref(),
            defaults.group.as_deref(),
            defaults.admin_group.as_deref(),
        );
        let identity = if configured {
            configured_identity(site, user, group, admin).map(Some)
        } else {
            site_identity(site, user, group, admin)
        };
        match identity {
            Ok(Some(id)) => {
                resolved.insert(site.name.clone(), id);
            }
            Ok(None) => {}
            Err(e) => errors.push(ConfigError::in_file(&site.file, "user", e.to_string())),
        }
    }
    if configured {
        check_separation(sites, &resolved, defaults, &mut errors);
    }
    if errors.is_empty() {
        Ok(resolved)
    } else {
        Err(errors)
    }
}

fn check_separation(
    sites: &BTreeMap<SiteName, Arc<SiteConfig>>,
    resolved: &BTreeMap<SiteName, SiteIdentity>,
    defaults: &IdentityDefaults,
    errors: &mut ConfigErrors,
) {
    let mut by_uid: BTreeMap<u32, &SiteConfig> = BTreeMap::new();
    let mut by_gid: BTreeMap<u32, &SiteConfig> = BTreeMap::new();
    // The router process's user (when it exists: `check` reports it missing).
    let router = defaults
        .router_user
        .as_deref()
        .and_then(|name| nix::unistd::User::from_name(name).ok().flatten());
    // Sites in name order: each conflict is reported once, on the later site,
    // naming the first site that holds the id.
    for (name, id) in resolved {
        let Some(site) = sites.get(name) else {
            continue;
        };
        if let Some(router) = router.as_ref().filter(|r| r.uid.as_raw() == id.uid) {
            errors.push(ConfigError::in_file(
                &site.file,
                "user",
                format!(
                    "site {} would run as user `{}` (uid {}), the router process's user (router_user): its code could signal the router that serves every site; give every site that runs PHP or Python a user of its own",
                    site.name, router.name, id.uid
                ),
            ));
            continue;
        }
        if let Some(first) = by_uid.get(&id.uid) {
            errors.push(ConfigError::in_file(
                &site.file,
                "user",
                format!(
                    "site {} would run as user `{}` (uid {}{}), as site {} does ({}): each could run code as the other and read its files; give every site that runs PHP or Python a user of its own",
                    site.name,
                    id.user,
                    id.uid,
                    if site.user.is_some() { "" } else { ", from default_user" },
                    first.name,
                    first.file.display()
                ),
            ));
        } else {
            by_uid.insert(id.uid, site);
        }
        if let Some(first) = by_gid.get(&id.gid) {
            errors.push(ConfigError::in_file(
                &site.file,
                "group",
                format!(
                    "site {} would run with group `{}` (gid {}, {}), as site {} does ({}): each could reach the other's sockets and group-readable files; give every site that runs PHP or Python a group of its own (e.g. its user's own group)",
                    site.name,
                    group_name(id.gid),
                    id.gid,
                    group_origin(site, defaults, id),
                    first.name,
                    first.file.display()
                ),
            ));
        } else {
            by_gid.insert(id.gid, site);
        }
    }
}

fn group_name(gid: u32) -> String {
    match nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid)) {
        Ok(Some(g)) => g.name,
        _ => gid.to_string(),
    }
}

/// Where a site's group came from, as [`site_identity`] chose it.
fn group_origin(site: &SiteConfig, defaults: &IdentityDefaults, id: &SiteIdentity) -> String {
    if site.group.is_some() {
        "its `group`".into()
    } else if site.user.is_none() && defaults.group.is_some() {
        "from default_group".into()
    } else {
        format!("the primary group of user {}", id.user)
    }
}
