//! Loading the vhost directory: one `<site>.toml` per site, parsed with the
//! `toml` crate (for line and column in syntax errors), validated per file,
//! then checked across files (a host claimed twice, two default sites, a
//! view showing another site's root: `super::views`).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::error::{ConfigError, ConfigErrors, FileErrors};
use super::raw::RawSite;
use super::site::{validate_site, SiteConfig};
use super::types::{HostPattern, SiteName};

pub(crate) fn load_sites(
    dir: &Path,
    base: &Path,
    errors: &mut ConfigErrors,
) -> BTreeMap<SiteName, Arc<SiteConfig>> {
    let sites = load_dir(dir, base, errors);
    check_across_sites(&sites, errors);
    sites
}

/// The sites of `dir` without checks across them.
fn load_dir(
    dir: &Path,
    base: &Path,
    errors: &mut ConfigErrors,
) -> BTreeMap<SiteName, Arc<SiteConfig>> {
    let mut sites = BTreeMap::new();
    for file in vhost_files(dir, errors) {
        if let Some(site) = load_site(&file, base, errors) {
            sites.insert(site.name.clone(), Arc::new(site));
        }
    }
    sites
}

/// `vhosts_dir` and, on a cluster node, the sites placed on it
/// (`state_dir/cluster/vhosts`, written by `cluster::node`; absent until
/// the first is). A cluster site is named by its etcd key in messages; one
/// named like a local vhost file is refused. Checked across both.
pub(crate) fn load_sites_with_cluster(
    dir: &Path,
    cluster_dir: &Path,
    prefix: &str,
    base: &Path,
    errors: &mut ConfigErrors,
) -> BTreeMap<SiteName, Arc<SiteConfig>> {
    let mut sites = load_dir(dir, base, errors);
    if cluster_dir.is_dir() {
        for (name, mut site) in load_dir(cluster_dir, base, errors) {
            let shown = super::cluster::cluster_site_file(prefix, name.as_str());
            if let Some(local) = sites.get(&name) {
                errors.push(ConfigError::in_file(
                    &shown,
                    "",
                    format!(
                        "a local vhost file, {}, has this site's name",
                        local.file.display()
                    ),
                ));
                continue;
            }
            Arc::make_mut(&mut site).file = shown;
            sites.insert(name, site);
        }
    }
    check_across_sites(&sites, errors);
    sites
}

fn vhost_files(dir: &Path, errors: &mut ConfigErrors) -> Vec<PathBuf> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            errors.push(ConfigError::in_file(
                dir,
                "",
                format!("cannot read the vhosts directory: {e} (set vhosts_dir in polyhost.toml)"),
            ));
            return Vec::new();
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .collect();
    files.sort();
    files
}

/// Parses and validates one vhost file; errors go into `errors`.
pub(crate) fn load_site(file: &Path, base: &Path, errors: &mut ConfigErrors) -> Option<SiteConfig> {
    let stem = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            errors.push(ConfigError::in_file(file, "", format!("cannot read: {e}")));
            return None;
        }
    };
    site_from_text(&stem, file, &text, base, errors)
}

/// Validates one vhost file's `text` as site `name`; `file` is what
/// messages call it (a path, or `etcd:KEY` for a cluster site).
pub(crate) fn site_from_text(
    name: &str,
    file: &Path,
    text: &str,
    base: &Path,
    errors: &mut ConfigErrors,
) -> Option<SiteConfig> {
    let name = match SiteName::parse(name) {
        Ok(n) => n,
        Err(msg) => {
            errors.push(ConfigError::in_file(file, "", msg));
            return None;
        }
    };
    let raw = match parse_raw(text) {
        Ok(raw) => raw,
        Err((key, msg)) => {
            errors.push(ConfigError::in_file(file, key, msg));
            return None;
        }
    };
    let mut errs = FileErrors::new(file, errors);
    validate_site(name, file, raw, base, &mut errs)
}

/// Deserialises a vhost file, naming the key at fault and the line/column.
fn parse_raw(text: &str) -> Result<RawSite, (String, String)> {
    let de =
        toml::de::Deserializer::parse(text).map_err(|e| (String::new(), describe(text, &e)))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let key = if key == "." { String::new() } else { key };
        (key, describe(text, e.inner()))
    })
}

fn describe(text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().trim_end().to_owned();
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            let col = span.start
                - text[..span.start.min(text.len())]
                    .rfind('\n')
                    .map_or(0, |i| i + 1)
                + 1;
            format!("{msg} (line {line}, column {col})")
        }
        None => msg,
    }
}

fn check_across_sites(sites: &BTreeMap<SiteName, Arc<SiteConfig>>, errors: &mut ConfigErrors) {
    super::views::check_views(sites, errors);
    let mut owner: HashMap<&HostPattern, &SiteConfig> = HashMap::new();
    let mut default: Option<&SiteConfig> = None;
    for site in sites.values() {
        for (i, host) in site.hosts.iter().enumerate() {
            if let Some(first) = owner.insert(host, site) {
                errors.push(ConfigError::in_file(
                    &site.file,
                    format!("hosts[{i}]"),
                    format!("{host} is already claimed by {}", first.file.display()),
                ));
            }
        }
        if site.default {
            match default {
                Some(first) => errors.push(ConfigError::in_file(
                    &site.file,
                    "default",
                    format!(
                        "only one site can be the default; {} is too",
                        first.file.display()
                    ),
                )),
                None => default = Some(site),
            }
        }
    }
}
