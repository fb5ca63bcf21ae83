//! No site's read-only view shows another site's files: the view
//! (`[sandbox] paths`, docs/isolation.md) binds the site's own paths (its
//! root, `python.home`, `python.path`) and the paths it lists, so one of
//! them that holds another site's root (`python.path = ["/srv/www"]`), or
//! lies inside it, would undo what the view is for: world-readable files of
//! other sites hidden from the site's code. Checked across the sites of a
//! configuration, lexically (roots may not contain a symlink; paths are
//! compared component by component, `..` resolved).
//!
//! Sites that may share a user (static sites, which run no code) are not
//! each other's strangers: a view may show the root of a site with the same
//! configured `user`.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use super::error::{ConfigError, ConfigErrors};
use super::site::SiteConfig;
use super::types::SiteName;

/// An error for each view path of a site that holds, or lies inside,
/// another site's root.
pub(super) fn check_views(sites: &BTreeMap<SiteName, Arc<SiteConfig>>, errors: &mut ConfigErrors) {
    let roots: Vec<(&SiteConfig, PathBuf)> = sites
        .values()
        .filter_map(|s| Some((&**s, lexical(s.root.as_deref()?))))
        .collect();
    for site in sites.values().filter(|s| s.sandbox.view.is_some()) {
        for (key, path) in view_paths(site) {
            let path = lexical(path);
            let stranger = roots.iter().find(|(other, root)| {
                other.name != site.name
                    && !(other.user.is_some() && other.user == site.user)
                    && (root.starts_with(&path) || path.starts_with(root))
            });
            if let Some((other, root)) = stranger {
                errors.push(ConfigError::in_file(
                    &site.file,
                    key,
                    format!(
                        "{} would show site {}'s root ({}, {}) in site {}'s read-only view: name directories that hold only this site's files",
                        path.display(),
                        other.name,
                        root.display(),
                        other.file.display(),
                        site.name
                    ),
                ));
            }
        }
    }
}

/// The paths the view binds, each with the key that names it.
fn view_paths(site: &SiteConfig) -> Vec<(String, &Path)> {
    let mut out: Vec<(String, &Path)> = Vec::new();
    out.extend(site.root.as_deref().map(|r| ("root".to_owned(), r)));
    if let Some(py) = &site.python {
        out.extend(py.home.as_deref().map(|h| ("python.home".to_owned(), h)));
        for (i, p) in py.path.iter().enumerate() {
            out.push((format!("python.path[{i}]"), p));
        }
    }
    for (i, p) in site.sandbox.view.iter().flatten().enumerate() {
        out.push((format!("sandbox.paths[{i}]"), p));
    }
    out
}

/// `path` with `.` dropped and `..` taken back, without the file system.
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(name: &str, user: &str, root: &str, extra: &str) -> (String, String) {
        (
            name.to_owned(),
            format!("hosts = [\"{name}.test\"]\nuser = \"{user}\"\nroot = \"{root}\"\n{extra}"),
        )
    }

    /// The errors of the view check over `files`' sites, as `FILE-STEM: KEY`.
    fn check(files: &[(String, String)]) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        let mut errors = ConfigErrors::default();
        let mut sites = BTreeMap::new();
        for (name, text) in files {
            let file = dir.path().join(format!("{name}.toml"));
            let site = super::super::vhosts::site_from_text(
                name,
                &file,
                text,
                Path::new("/"),
                &mut errors,
            )
            .unwrap_or_else(|| panic!("{errors}"));
            sites.insert(site.name.clone(), Arc::new(site));
        }
        check_views(&sites, &mut errors);
        errors
            .iter()
            .map(|e| {
                let file = e.source.to_string();
                let stem = Path::new(&file)
                    .file_stem()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                format!("{stem}: {}", e.key)
            })
            .collect()
    }

    #[test]
    fn a_view_path_holding_or_inside_another_sites_root_is_an_error() {
        let view = "[sandbox]\npaths = [\"/usr/share/shared\"]\n";
        let python = |path: &str| {
            format!("[python]\napp = \"a:app\"\nmount = \"/app\"\npath = [{path:?}]\n{view}")
        };
        let other = site("b", "bob", "/srv/www/b", "");
        for (path, bad) in [
            ("/srv/www", true),
            ("/srv/www/b/lib", true),
            ("/srv/www/a/../b", true),
            ("/srv/www/bb", false),
            ("/srv/www/a/lib", false),
        ] {
            let a = site("a", "alice", "/srv/www/a", &python(path));
            let want: Vec<String> = match bad {
                true => vec!["a: python.path[0]".into()],
                false => vec![],
            };
            assert_eq!(check(&[a, other.clone()]), want, "{path}");
        }
        let listed = site(
            "a",
            "alice",
            "/srv/www/a",
            "[sandbox]\npaths = [\"/usr/share\", \"/srv\"]\n",
        );
        assert_eq!(check(&[listed, other.clone()]), ["a: sandbox.paths[1]"]);
        let nested = site("a", "alice", "/srv/www", view);
        assert_eq!(check(&[nested, other.clone()]), ["a: root"]);
        let no_view = site("a", "alice", "/srv/www", "");
        assert_eq!(
            check(&[no_view, other.clone()]),
            Vec::<String>::new(),
            "no view: nothing to undo"
        );
        let same_user = site("a", "bob", "/srv/www", view);
        assert_eq!(
            check(&[same_user, other]),
            Vec::<String>::new(),
            "the same user's site"
        );
    }
}
