//! Python sites in tests: the `polyhost-python` worker binary, copied where
//! site users can run it, and a site running one of the apps of tests/apps.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{open_up, TestConfig, TestUser};

/// The `polyhost-python` worker built next to the `polyhost` binary, copied
/// to a directory every site user can traverse (the checkout may live where
/// they cannot, e.g. under /root). One copy per build of the worker, named by
/// its size and modification time and shared by every test process, so test
/// runs do not leave a copy each behind; copies of older builds are pruned.
pub fn python_worker() -> PathBuf {
    static COPY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    COPY.get_or_init(|| {
        let built = Path::new(env!("CARGO_BIN_EXE_polyhost")).with_file_name("polyhost-python");
        if !built.exists() {
            let status = std::process::Command::new(env!("CARGO"))
                .args(["build", "-p", "polyhost-python"])
                .status()
                .unwrap();
            assert!(status.success(), "building polyhost-python");
        }
        let dir = worker_copy_dir();
        let copy = dir.join(format!("polyhost-python-{}", build_stamp(&built)));
        if !copy.exists() {
            install_copy(&built, &copy);
            prune_old_copies(&dir, &copy);
        }
        copy
    })
    .clone()
}

/// `$TMPDIR/polyhost-test-worker`, mode 0755, refused if it is not a real
/// directory of ours (a fixed name in a shared temp dir).
fn worker_copy_dir() -> PathBuf {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = std::env::temp_dir().join("polyhost-test-worker");
    std::fs::create_dir_all(&dir).unwrap();
    let meta = std::fs::symlink_metadata(&dir).unwrap();
    assert!(
        meta.is_dir() && meta.uid() == nix::unistd::geteuid().as_raw(),
        "{} must be a directory owned by this user",
        dir.display()
    );
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// Size and modification time of a built binary: changes with every build.
fn build_stamp(built: &Path) -> String {
    let meta = std::fs::metadata(built).unwrap();
    let modified = meta
        .modified()
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    format!("{}-{}", meta.len(), modified.as_nanos())
}

/// Copies under a temporary name and renames, so a concurrent test process
/// never runs a half-written binary.
fn install_copy(built: &Path, copy: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let partial = copy.with_extension(format!("partial-{}", std::process::id()));
    std::fs::copy(built, &partial).unwrap();
    std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&partial, copy).unwrap();
}

/// Removes copies of other builds that are over an hour old (a test process
/// still running an older build keeps its copy meanwhile).
fn prune_old_copies(dir: &Path, keep: &Path) {
    let hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    for entry in std::fs::read_dir(dir).unwrap().filter_map(Result::ok) {
        let path = entry.path();
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t < hour_ago);
        if path != keep && old {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// A Python site running one of the test apps of `tests/apps/` as `user`.
/// `site_extra` goes before `[python]` (e.g. a `[limits]` table),
/// `python_extra` into it (e.g. `threads = 2`).
pub fn python_test_site(
    cfg: &TestConfig,
    name: &str,
    user: &TestUser,
    app: &str,
    site_extra: &str,
    python_extra: &str,
) {
    cfg.write("apps/pyapp.py", include_str!("../apps/pyapp.py"));
    cfg.write("apps/broken.py", include_str!("../apps/broken.py"));
    cfg.write(&format!("www/{name}/static.txt"), "static file\n");
    cfg.write(
        &format!("vhosts/{name}.toml"),
        &format!(
            "hosts = [\"{name}.test\"]\nroot = \"www/{name}\"\nuser = \"{}\"\n{site_extra}\n[python]\napp = \"{app}\"\npath = [\"apps\"]\nworker = \"{}\"\n{python_extra}\n",
            user.name,
            python_worker().display()
        ),
    );
    open_up(cfg.path());
}

/// [`python_worker`] copied under `/var/lib/polyhost-tests/worker`: outside
/// the `/tmp` a sandboxed site's tmp replaces (a site whose paths are all
/// outside `/tmp` sees its own tmp there, not the host's copy).
pub fn python_worker_outside_tmp() -> PathBuf {
    static COPY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    COPY.get_or_init(|| {
        use std::os::unix::fs::PermissionsExt;
        let built = python_worker();
        let base = Path::new("/var/lib/polyhost-tests");
        let dir = base.join("worker");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(base, std::fs::Permissions::from_mode(0o711)).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let copy = dir.join(built.file_name().unwrap());
        if !copy.exists() {
            install_copy(&built, &copy);
            prune_old_copies(&dir, &copy);
        }
        copy
    })
    .clone()
}
