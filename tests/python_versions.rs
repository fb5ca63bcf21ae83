//! A Python version per site (issue 23), against the real binary run as
//! root (split: supervisor and router), with real users and the workers
//! `scripts/setup.sh` builds next to `polyhost` (`polyhost-python3.9`,
//! `polyhost-python3.13`, by `scripts/build-python-worker.sh`; Debian's
//! 3.11 is `polyhost-python`):
//!
//! - three sites at once, on 3.9, 3.11 and 3.13, each a Django its
//!   interpreter alone among the three runs (3.2: up to 3.10; 5.2: 3.10 and
//!   newer; 6.0: 3.12 and newer), under load, each as its own user, and
//!   each worker mapping only its own `libpython`;
//! - a site whose virtualenv's Python has no worker, or that contradicts
//!   its `python.version`: `polyhost check` errors;
//! - a reload that moves a site from 3.11 to 3.13 under load without one
//!   failed request;
//! - `wsgiref.validate` (runtimes/python's validated app) and an ASGI app
//!   on every built worker.
//!
//! A version whose worker is not built fails the test with what to run,
//! when this machine has that Python (a pyenv build, or an install under
//! `/opt/polyhost/python`): setup builds it. A machine with neither builds
//! only Debian's worker (issue 23: the demo needs no more); there the test
//! says so on stderr and checks Debian's version alone.

mod admin_support;
mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use admin_support::{failures, Load};
use common::{eventually, get, open_up, Binary, TestConfig, TestUser};

/// The workers tests need besides Debian's (`scripts/setup.sh`'s
/// `setup_python_versions`).
const OLDEST: &str = "3.9";
const NEWEST: &str = "3.13";
const DEBIAN: &str = "3.11";

/// Where `cargo test` built `polyhost` and setup built the workers.
fn built_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_polyhost"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Whether this machine has CPython `version` to build a worker from.
fn python_available(version: &str) -> bool {
    let pyenv = std::env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root/.pyenv"));
    Path::new(&format!(
        "/opt/polyhost/python/{version}/bin/python{version}"
    ))
    .exists()
        || std::fs::read_dir(pyenv.join("versions")).is_ok_and(|d| {
            d.filter_map(Result::ok).any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{version}."))
            })
        })
}

/// True when the worker for `version` is built; false (said on stderr)
/// when this machine has no such Python; a failure when it has one and the
/// worker was not built.
fn worker_built(version: &str) -> bool {
    let worker = built_dir().join(format!("polyhost-python{version}"));
    if worker.exists() {
        return true;
    }
    assert!(
        !python_available(version),
        "{} is missing, and this machine has Python {version}: run ./scripts/setup.sh \
         (or scripts/build-python-worker.sh {version})",
        worker.display()
    );
    eprintln!("no Python {version} on this machine (no pyenv build, nothing in /opt/polyhost/python): its part of the test is not run");
    false
}

/// The test virtualenv made by Python `version` (setup), asserted present.
fn venv(version: &str) -> PathBuf {
    let v = if version == DEBIAN {
        std::env::var_os("TEST_PYTHON_VENV")
            .map_or_else(|| "/var/tmp/polyhost-test-venv".into(), PathBuf::from)
    } else {
        PathBuf::from(format!("/var/tmp/polyhost-test-venv-{version}"))
    };
    assert!(
        v.join("bin/python").exists(),
        "the test virtualenv {} is missing: run ./scripts/setup.sh",
        v.display()
    );
    v
}

/// `polyhost` and every built `polyhost-python*`, copied to a directory
/// site users can reach (the checkout may be under /root): the copy of
/// `polyhost` chooses its workers from its own directory. One copy per
/// build of these binaries, shared by test processes (made under a
/// temporary name, then renamed); copies over an hour old are removed.
fn bin_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        use std::hash::{Hash, Hasher};
        use std::os::unix::fs::PermissionsExt;
        let mut files: Vec<PathBuf> = std::fs::read_dir(built_dir())
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| is_binary_to_copy(p))
            .collect();
        files.sort();
        let mut stamp = std::collections::hash_map::DefaultHasher::new();
        for f in &files {
            let meta = std::fs::metadata(f).unwrap();
            (f, meta.len(), meta.modified().unwrap()).hash(&mut stamp);
        }
        let base = std::env::temp_dir().join("polyhost-test-pyversions");
        std::fs::create_dir_all(&base).unwrap();
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
        let dir = base.join(format!("{:016x}", stamp.finish()));
        if !dir.exists() {
            let partial = base.join(format!(".partial-{}", std::process::id()));
            std::fs::create_dir_all(&partial).unwrap();
            std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o755)).unwrap();
            for f in &files {
                std::fs::copy(f, partial.join(f.file_name().unwrap())).unwrap();
            }
            if std::fs::rename(&partial, &dir).is_err() {
                let _ = std::fs::remove_dir_all(&partial); // another test process made it
            }
            prune_old(&base, &dir);
        }
        dir
    })
    .clone()
}

/// `polyhost`, `polyhost-python` and `polyhost-python3.N`.
fn is_binary_to_copy(p: &Path) -> bool {
    let name = p.file_name().unwrap().to_string_lossy();
    name == "polyhost"
        || name == "polyhost-python"
        || name
            .strip_prefix("polyhost-python3.")
            .is_some_and(|m| !m.is_empty() && m.bytes().all(|b| b.is_ascii_digit()))
}

fn prune_old(base: &Path, keep: &Path) {
    let hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    for e in std::fs::read_dir(base).unwrap().filter_map(Result::ok) {
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t < hour_ago);
        if e.path() != keep && old {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// A Python site `name` (host `name.test`) as `user`: `python` is the rest
/// of its `[python]` table.
fn site(cfg: &TestConfig, name: &str, user: &TestUser, python: &str) {
    cfg.write("apps/pyversion.py", include_str!("apps/pyversion.py"));
    cfg.write(
        "apps/validated.py",
        include_str!("../runtimes/python/tests/apps/validated.py"),
    );
    cfg.write("apps/asgiapp.py", include_str!("apps/asgiapp.py"));
    cfg.write(
        &format!("vhosts/{name}.toml"),
        &format!(
            "hosts = [\"{name}.test\"]\nuser = \"{}\"\n[python]\npath = [\"apps\"]\n{python}\n",
            user.name
        ),
    );
    open_up(cfg.path());
}

/// A site on the virtualenv of Python `version` running `pyversion.py`.
fn django_site(cfg: &TestConfig, name: &str, user: &TestUser, version: &str) {
    site(
        cfg,
        name,
        user,
        &format!(
            "app = \"pyversion\"\nhome = \"{}\"\nprocesses = 2",
            venv(version).display()
        ),
    );
}

/// Runs the copied `polyhost` with `args` after `--config main`.
fn polyhost(main: &Path, args: &[&str]) -> (i32, String, String) {
    let _pause = polyhost::isolation::pause_reaper();
    let out = std::process::Command::new(bin_dir().join("polyhost"))
        .arg("--config")
        .arg(main)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `python_version` of each site, from `polyhost status --json`.
fn status_versions(main: &Path) -> Vec<(String, Option<String>)> {
    let (code, out, err) = polyhost(main, &["status", "--json"]);
    assert_eq!(code, 0, "status: {out}{err}");
    let status: polyhost::app::status::ServerStatus = serde_json::from_str(&out).unwrap();
    status
        .sites
        .into_iter()
        .map(|s| (s.name, s.python_version))
        .collect()
}

/// The `libpython` files mapped by each process of `user`, and their pids.
fn libpythons_of(user: &TestUser) -> Vec<(i32, Vec<String>)> {
    common::pids_of_uid(user.uid)
        .into_iter()
        .filter_map(|pid| {
            let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
            let mut libs: Vec<String> = maps
                .lines()
                .filter_map(|l| l.split_whitespace().nth(5))
                .filter(|p| p.contains("libpython"))
                .map(str::to_owned)
                .collect();
            libs.sort();
            libs.dedup();
            Some((pid, libs))
        })
        .collect()
}

/// Every process of `user` maps `libpython<version>` and no other libpython.
fn assert_only_libpython(user: &TestUser, version: &str) {
    let seen = libpythons_of(user);
    assert!(!seen.is_empty(), "no process of {} is running", user.name);
    let own = format!("libpython{version}.so");
    for (pid, libs) in &seen {
        assert!(
            !libs.is_empty() && libs.iter().all(|l| l.contains(&own)),
            "pid {pid} of {} should map only {own}, maps {libs:?}",
            user.name
        );
    }
}

/// The interpreter under `prefix`, as far as its worker loads it (the
/// prefix, `lib`, `libpython` and the standard library's top): root's,
/// readable by all, writable by no one else.
fn assert_system_owned(prefix: &Path) {
    use std::os::unix::fs::MetadataExt;
    let version = prefix.file_name().unwrap().to_string_lossy().into_owned();
    let lib = prefix.join("lib");
    for p in [
        prefix.to_path_buf(),
        lib.clone(),
        lib.join(format!("libpython{version}.so.1.0")),
        lib.join(format!("python{version}")),
        lib.join(format!("python{version}/os.py")),
    ] {
        let m = std::fs::metadata(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert!(
            m.uid() == 0 && m.mode() & 0o022 == 0 && m.mode() & 0o004 != 0,
            "{} must be root's, readable by all, writable by no one else: uid {} mode {:o}",
            p.display(),
            m.uid(),
            m.mode()
        );
    }
}

#[tokio::test]
async fn three_python_versions_serve_at_once_under_load_each_with_its_own_libpython() {
    let mut versions = vec![DEBIAN];
    versions.extend([OLDEST, NEWEST].into_iter().filter(|v| worker_built(v)));
    let cfg = TestConfig::new();
    let users: Vec<TestUser> = versions.iter().map(|_| TestUser::new()).collect();
    let names: Vec<String> = versions
        .iter()
        .map(|v| format!("py{}", v.replace('.', "")))
        .collect();
    for ((v, user), name) in versions.iter().zip(&users).zip(&names) {
        django_site(&cfg, name, user, v);
    }
    let bin = Binary::start_program(&bin_dir().join("polyhost"), &cfg.main(), &[]).await;
    let hosts: Vec<String> = names.iter().map(|n| format!("{n}.test")).collect();
    let host_refs: Vec<&str> = hosts.iter().map(String::as_str).collect();
    let load = Load::start(bin.addr, &host_refs, 6 * hosts.len());
    load.wait_for(300).await;
    let seen = load.stop().await;
    let failed = failures(&hosts, &seen, &host_refs);
    assert!(
        failed.is_empty(),
        "failed: {:?}\n{}",
        &failed[..failed.len().min(5)],
        bin.log()
    );
    // Every answer came from its site's Python and Django.
    for (i, v) in versions.iter().enumerate() {
        let answers: Vec<&str> = seen
            .iter()
            .flatten()
            .filter(|s| s.host == i)
            .map(|s| s.body.as_str())
            .collect();
        assert!(
            answers.len() >= 20,
            "{}: only {} answers",
            hosts[i],
            answers.len()
        );
        let django = match *v {
            OLDEST => "django=3.2.",
            NEWEST => "django=6.0.",
            _ => "django=5.",
        };
        for a in &answers {
            assert!(
                a.starts_with(&format!("python={v}.")) && a.contains(django),
                "{} answered {a:?}, expected Python {v} and {django}",
                hosts[i]
            );
        }
    }
    for (v, user) in versions.iter().zip(&users) {
        assert_only_libpython(user, v);
        if *v != DEBIAN {
            assert_system_owned(&Path::new("/opt/polyhost/python").join(v));
        }
    }
    let shown = status_versions(&cfg.main());
    for (name, v) in names.iter().zip(&versions) {
        assert!(
            shown.contains(&(name.clone(), Some(v.to_string()))),
            "status should show {name} on Python {v}: {shown:?}"
        );
    }
    bin.terminate().await;
}

#[tokio::test]
async fn a_version_without_a_worker_and_a_contradicting_version_are_check_errors() {
    let cfg = TestConfig::new();
    let user = TestUser::new();
    // A virtualenv made by a Python no worker here links (only its pyvenv.cfg matters).
    let have = polyhost::runtime::python_workers::available(&bin_dir());
    let missing = ["3.12", "3.10", "3.14", "3.15"]
        .into_iter()
        .find(|m| !have.iter().any(|v| v.to_string() == *m))
        .expect("a version without a worker");
    let fake_venv = cfg.path().join("venv");
    cfg.write(
        "venv/pyvenv.cfg",
        &format!("home = /opt/polyhost/python/{missing}/bin\ninclude-system-site-packages = false\nversion = {missing}.1\n"),
    );
    site(
        &cfg,
        "newer",
        &user,
        &format!("app = \"pyversion\"\nhome = \"{}\"", fake_venv.display()),
    );
    let (code, out, err) = polyhost(&cfg.main(), &["check"]);
    assert_ne!(code, 0, "check passed: {out}");
    for want in [
        "vhosts/newer.toml".to_owned(),
        "python.home".to_owned(),
        format!("site newer asks for Python {missing}"),
        "pyvenv.cfg".to_owned(),
        format!(
            "workers exist for Python {}",
            have.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        format!("scripts/build-python-worker.sh {missing}"),
    ] {
        assert!(
            err.contains(want.as_str()),
            "check should say {want:?}:\n{err}"
        );
    }

    // python.version and the virtualenv disagree: named, site and key.
    let user2 = TestUser::new();
    site(
        &cfg,
        "mixed",
        &user2,
        &format!(
            "app = \"pyversion\"\nhome = \"{}\"\nversion = \"3.13\"",
            venv(DEBIAN).display()
        ),
    );
    std::fs::remove_file(cfg.path().join("vhosts/newer.toml")).unwrap();
    let (code, _, err) = polyhost(&cfg.main(), &["check"]);
    assert_ne!(code, 0);
    for want in [
        "vhosts/mixed.toml",
        "python.version",
        "site mixed sets python.version = \"3.13\"",
        "made by Python 3.11",
    ] {
        assert!(err.contains(want), "check should say {want:?}:\n{err}");
    }
}

#[tokio::test]
async fn a_reload_moves_a_site_from_3_11_to_3_13_without_a_failed_request() {
    if !worker_built(NEWEST) {
        return;
    }
    let cfg = TestConfig::new();
    let user = TestUser::new();
    django_site(&cfg, "moving", &user, DEBIAN);
    let bin = Binary::start_program(&bin_dir().join("polyhost"), &cfg.main(), &[]).await;
    let load = Load::start(bin.addr, &["moving.test"], 8);
    load.wait_for(100).await;
    django_site(&cfg, "moving", &user, NEWEST);
    let (code, out, err) = polyhost(&cfg.main(), &["reload"]);
    assert_eq!(code, 0, "reload: {out}{err}\n{}", bin.log());
    let moved = eventually(Duration::from_secs(30), || async {
        get(bin.addr, "moving.test", "/")
            .await
            .text()
            .starts_with(&format!("python={NEWEST}."))
    })
    .await;
    assert!(
        moved,
        "the site never answered from Python {NEWEST}:\n{}",
        bin.log()
    );
    load.wait_for(100).await;
    let seen = load.stop().await;
    let hosts = vec!["moving.test".to_owned()];
    let failed = failures(&hosts, &seen, &["moving.test"]);
    assert!(
        failed.is_empty(),
        "failed during the reload: {:?}",
        &failed[..failed.len().min(5)]
    );
    // Each client saw 3.11 answers, then 3.13 ones, never back.
    for client in &seen {
        let on_newest = |b: &str| b.starts_with(&format!("python={NEWEST}."));
        if let Some(i) = client.iter().position(|s| on_newest(&s.body)) {
            let back = client[i..].iter().find(|s| !on_newest(&s.body));
            assert!(
                back.is_none(),
                "a client went back to the old Python: {back:?}"
            );
        }
        assert!(
            client
                .iter()
                .all(|s| s.body.starts_with(&format!("python={DEBIAN}.")) || on_newest(&s.body)),
            "an answer from neither Python: {client:?}"
        );
    }
    let ok = eventually(Duration::from_secs(10), || async {
        libpythons_of(&user)
            .iter()
            .all(|(_, libs)| libs.iter().all(|l| l.contains("libpython3.13.so")))
    })
    .await;
    assert!(ok, "old 3.11 workers still run: {:?}", libpythons_of(&user));
    assert_only_libpython(&user, NEWEST);
    assert_eq!(
        status_versions(&cfg.main()),
        vec![("moving".to_owned(), Some(NEWEST.to_owned()))]
    );
    bin.terminate().await;
}

#[tokio::test]
async fn wsgiref_validate_and_asgi_on_every_built_version() {
    let built = polyhost::runtime::python_workers::available(&built_dir());
    for v in [OLDEST, NEWEST] {
        worker_built(v);
    }
    assert!(
        built.iter().any(|v| v.to_string() == DEBIAN),
        "polyhost-python (Debian's {DEBIAN}) is not built: {built:?}"
    );
    let cfg = TestConfig::new();
    let mut users = Vec::new();
    for v in &built {
        let tag = v.to_string().replace('.', "");
        for (kind, python) in [
            ("wsgi", format!("app = \"validated\"\nversion = \"{v}\"")),
            (
                "asgi",
                format!("app = \"asgiapp:app\"\ninterface = \"asgi\"\nversion = \"{v}\""),
            ),
        ] {
            let user = TestUser::new();
            site(&cfg, &format!("{kind}{tag}"), &user, &python);
            users.push(user);
        }
    }
    let bin = Binary::start_program(&bin_dir().join("polyhost"), &cfg.main(), &[]).await;
    let own_source = include_bytes!("../runtimes/python/tests/apps/validated.py");
    for v in &built {
        let tag = v.to_string().replace('.', "");
        let host = format!("wsgi{tag}.test");
        let cases: &[(&str, &[u8])] = &[
            ("/plain", b"hello world"),
            ("/stream", b"chunk0\nchunk1\nchunk2\n"),
            ("/writer", b"written directly\nand returned"),
            ("/filewrap", own_source),
        ];
        for &(path, want) in cases {
            let r = get(bin.addr, &host, path).await;
            assert_eq!(
                (r.status, &r.body[..]),
                (200, want),
                "Python {v} {path}: {}",
                r.text()
            );
        }
        let log = std::fs::read_to_string(cfg.path().join(format!("log/wsgi{tag}.error.log")))
            .unwrap_or_default();
        for bad in ["AssertionError", "Warning", "Traceback"] {
            assert!(
                !log.contains(bad),
                "Python {v}: the log mentions {bad}:\n{log}"
            );
        }
        let r = get(bin.addr, &format!("asgi{tag}.test"), "/x").await;
        if r.status != 200 {
            let log = std::fs::read_to_string(cfg.path().join(format!("log/asgi{tag}.error.log")));
            panic!(
                "ASGI on Python {v}: {} {}\n{log:?}\n{}",
                r.status,
                r.text(),
                bin.log()
            );
        }
        assert!(
            r.text().starts_with("asgi root_path= path=/x"),
            "{}",
            r.text()
        );
    }
    let shown = status_versions(&cfg.main());
    for v in &built {
        let tag = v.to_string().replace('.', "");
        assert!(
            shown.contains(&(format!("asgi{tag}"), Some(v.to_string()))),
            "{shown:?}"
        );
    }
    bin.terminate().await;
}

#[tokio::test]
async fn a_site_with_a_read_only_view_sees_its_workers_python_under_opt() {
    if !worker_built(NEWEST) {
        return;
    }
    if let Some(why) = polyhost::isolation::sandbox::view_unavailable() {
        panic!("the read-only view is unavailable here ({why}): the tests run as root on a kernel that has it");
    }
    let cfg = TestConfig::new();
    let user = TestUser::new();
    site(
        &cfg,
        "viewed",
        &user,
        &format!(
            "app = \"pyversion\"\nhome = \"{}\"\n[sandbox]\npaths = []",
            venv(NEWEST).display()
        ),
    );
    let bin = Binary::start_program(&bin_dir().join("polyhost"), &cfg.main(), &[]).await;
    let r = get(bin.addr, "viewed.test", "/").await;
    assert!(
        r.status == 200 && r.text().starts_with(&format!("python={NEWEST}.")),
        "{} {}\n{}\n{}",
        r.status,
        r.text(),
        std::fs::read_to_string(cfg.path().join("log/viewed.error.log")).unwrap_or_default(),
        bin.log()
    );
    // The view holds the worker's Python, not the others under /opt.
    let pid = common::pids_of_uid(user.uid)[0];
    let root = format!("/proc/{pid}/root/opt/polyhost/python");
    let seen: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(seen, vec![NEWEST.to_owned()], "{root}");
    assert_only_libpython(&user, NEWEST);
    bin.terminate().await;
}
