use std::os::unix::fs::{symlink, PermissionsExt};

use super::*;

fn root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Links `dir/name` to `to` and returns the link.
fn link(dir: &Path, name: &str, to: &Path) -> PathBuf {
    let at = dir.join(name);
    symlink(to, &at).unwrap();
    at
}

#[test]
fn paths_resolve_through_root_made_links_which_the_view_recreates() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real");
    std::fs::create_dir_all(real.join("venv")).unwrap();
    link(dir.path(), "current", Path::new("real"));
    let mut links = Vec::new();
    let got = resolve(&dir.path().join("current/venv"), &mut |at, text| {
        links.push((at.to_path_buf(), text.to_path_buf()))
    })
    .unwrap();
    assert_eq!(got, real.join("venv"));
    assert_eq!(links, [(dir.path().join("current"), PathBuf::from("real"))]);
}

#[test]
fn a_symlink_the_site_could_plant_is_refused() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("other-site");
    std::fs::create_dir(&victim).unwrap();
    // A link owned by the site's user (not root) ...
    let planted = link(dir.path(), "venv", &victim);
    std::os::unix::fs::lchown(&planted, Some(4242), Some(4242)).unwrap();
    let err = resolve(&planted, &mut |_, _| {}).unwrap_err();
    assert!(err.to_string().contains("could have planted"), "{err}");
    // ... or root's, in a directory others may write (they could replace it).
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let swapped = link(&open, "root", &victim);
    assert!(resolve(&swapped, &mut |_, _| {}).is_err());
    // Planted on the way to the path, not at its end: refused too.
    let mut entries = Entries::default();
    let err = entries
        .visible(&planted.join("lib"), Access::Site)
        .unwrap_err();
    assert!(err.to_string().contains("could have planted"), "{err}");
}

/// The targets of a plan's binds, as paths.
fn targets(plan: &ViewPlan) -> Vec<String> {
    plan.binds
        .iter()
        .map(|b| {
            let parts: Vec<_> = b.target.iter().map(|c| c.to_str().unwrap()).collect();
            format!("/{}", parts.join("/"))
        })
        .collect()
}

#[test]
fn a_path_inside_another_visible_one_is_bound_only_to_change_its_access() {
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("www");
    for sub in ["venv", "config"] {
        std::fs::create_dir_all(site.join(sub)).unwrap();
    }
    let mut entries = Entries::default();
    entries.visible(&site, Access::Site).unwrap();
    entries.visible(&site.join("venv"), Access::Site).unwrap();
    entries
        .visible(&site.join("config"), Access::ReadOnly)
        .unwrap();
    entries.generated_users(None);
    let plan = entries.lay_out(&dir.path().join("mnt")).unwrap();
    let site_str = site.display().to_string();
    assert_eq!(
        targets(&plan),
        [site_str.clone(), format!("{site_str}/config")]
    );
    assert!(
        plan.binds[1].access == Access::ReadOnly,
        "the read-only one is bound over the writable one"
    );
    let files: Vec<_> = plan
        .files
        .iter()
        .map(|(p, _)| p.to_str().unwrap())
        .collect();
    assert!(
        files.iter().any(|f| f.ends_with("/etc/passwd")),
        "{files:?}"
    );
    let dirs: Vec<_> = plan.dirs.iter().map(|p| p.to_str().unwrap()).collect();
    assert!(
        dirs.iter()
            .all(|d| !d.starts_with(&format!("{}/mnt{site_str}/", dir.path().display()))),
        "no directory is made inside a bound one: {dirs:?}"
    );
}

#[test]
fn generated_users_list_only_root_the_site_and_nobody() {
    let id = SiteIdentity {
        user: "blog".into(),
        uid: 1234,
        gid: 1234,
        home: "/srv/blog".into(),
    };
    let (passwd, group) = users_files(Some(&id));
    let names: Vec<_> = passwd
        .lines()
        .map(|l| l.split(':').next().unwrap())
        .collect();
    assert_eq!(names, ["root", "blog", "nobody"]);
    assert!(passwd.contains("blog:x:1234:1234:blog:/srv/blog:/usr/sbin/nologin\n"));
    assert_eq!(group.lines().count(), 3, "{group}");
}

#[test]
fn a_listed_root_is_bound_read_only_over_the_writable_one() {
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("www");
    std::fs::create_dir_all(&site).unwrap();
    let mut entries = Entries::default();
    entries.visible(&site, Access::ReadOnly).unwrap();
    entries.visible(&site, Access::Site).unwrap();
    let plan = entries.lay_out(&dir.path().join("mnt")).unwrap();
    let access: Vec<Access> = plan.binds.iter().map(|b| b.access).collect();
    assert_eq!(
        access,
        [Access::Site, Access::ReadOnly],
        "the last bind is on top"
    );
}
