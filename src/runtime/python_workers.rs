//! Which `polyhost-python` binary serves a Python site: one worker binary
//! per CPython minor version, next to `polyhost` (`polyhost-python3.12`,
//! built by `scripts/build-python-worker.sh 3.12`), besides the default
//! `polyhost-python` (Debian's 3.11 on Debian 12).
//!
//! Precedence: `python.worker` (the operator's binary) wins; else the
//! version the site asks for (`python.version` or its virtualenv's
//! `pyvenv.cfg`, see `config::RequestedVersion`) picks
//! `polyhost-python<version>`, or `polyhost-python` when that one links the
//! version; a site that asks for no version gets `polyhost-python`.
//!
//! Which Python a worker runs is read from the binary, never by running it
//! (this runs as root, on a path from the configuration): the `libpython3.N`
//! among its ELF `DT_NEEDED` libraries, which is what the dynamic linker
//! loads into it (`isolation::elf`).

use std::path::{Path, PathBuf};

use crate::config::{PythonConfig, PythonVersion, RequestedVersion};

/// The default worker's file name; versioned ones add `3.N`.
const WORKER: &str = "polyhost-python";

/// The worker a site's processes run, and the Python it links (when known).
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerChoice {
    pub path: PathBuf,
    pub version: Option<PythonVersion>,
}

/// Why a site has no worker.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum WorkerError {
    /// No worker next to polyhost links the version the site asks for.
    #[error("site {site} asks for Python {} ({}), but no worker for it is in {}: {}; build it with `scripts/build-python-worker.sh {}` (in polyhost's source tree), or name one with python.worker",
        .wanted.version, source_note(.wanted), .dir.display(), have_note(.have), .wanted.version)]
    Missing {
        site: String,
        wanted: RequestedVersion,
        dir: PathBuf,
        have: Vec<PythonVersion>,
    },
    /// `python.worker` links another Python than the site asks for.
    #[error("site {site}: python.worker {} runs Python {links}, but the site asks for Python {} ({})",
        .worker.display(), .wanted.version, source_note(.wanted))]
    Mismatch {
        site: String,
        worker: PathBuf,
        links: PythonVersion,
        wanted: RequestedVersion,
    },
}

impl WorkerError {
    /// The configuration key the error is about.
    pub fn key(&self) -> &'static str {
        match self {
            WorkerError::Missing { wanted, .. } => wanted.source.key(),
            WorkerError::Mismatch { .. } => "python.worker",
        }
    }
}

fn source_note(wanted: &RequestedVersion) -> &'static str {
    match wanted.source {
        crate::config::VersionSource::Key => "python.version",
        crate::config::VersionSource::Virtualenv => "the pyvenv.cfg of its virtualenv, python.home",
    }
}

fn have_note(have: &[PythonVersion]) -> String {
    if have.is_empty() {
        return "there is no worker at all".to_owned();
    }
    let list: Vec<String> = have.iter().map(ToString::to_string).collect();
    format!("workers exist for Python {}", list.join(", "))
}

/// Where the running `polyhost`'s workers are: its own directory, or where
/// the Debian package puts them beside a `bin/` (`/usr/bin/polyhost` →
/// `/usr/lib/polyhost/`) when no `polyhost-python` is next to it.
pub fn workers_dir() -> PathBuf {
    match std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
    {
        Some(dir) => workers_beside(&dir, |p| p.exists()),
        None => PathBuf::from("/usr/lib/polyhost"),
    }
}

/// The workers' directory for a `polyhost` in `dir` (see [`workers_dir`]):
/// `dir` itself unless only the packaged place has a worker (then `dir`,
/// which `check` reports missing, when neither has one).
fn workers_beside(dir: &Path, exists: impl Fn(&Path) -> bool) -> PathBuf {
    let packaged = dir.parent().map(|prefix| prefix.join("lib/polyhost"));
    match packaged {
        Some(lib) if !exists(&dir.join(WORKER)) && exists(&lib.join(WORKER)) => lib,
        _ => dir.to_path_buf(),
    }
}

/// The worker for `site`'s `config`, from the workers next to polyhost.
pub fn choose(site: &str, config: &PythonConfig) -> Result<WorkerChoice, WorkerError> {
    choose_in(&workers_dir(), site, config)
}

/// [`choose`] among the workers in `dir`.
pub fn choose_in(
    dir: &Path,
    site: &str,
    config: &PythonConfig,
) -> Result<WorkerChoice, WorkerError> {
    let wanted = config.version;
    if let Some(worker) = &config.worker {
        let links = linked_python(worker);
        return match (links, wanted) {
            (Some(links), Some(wanted)) if links != wanted.version => Err(WorkerError::Mismatch {
                site: site.to_owned(),
                worker: worker.clone(),
                links,
                wanted,
            }),
            _ => Ok(WorkerChoice {
                path: worker.clone(),
                version: links.or(wanted.map(|w| w.version)),
            }),
        };
    }
    let default = dir.join(WORKER);
    let Some(wanted) = wanted else {
        return Ok(WorkerChoice {
            version: linked_python(&default),
            path: default,
        });
    };
    let versioned = dir.join(format!("{WORKER}{}", wanted.version));
    [versioned, default]
        .into_iter()
        .find(|w| is_executable(w) && linked_python(w) == Some(wanted.version))
        .map(|path| WorkerChoice {
            path,
            version: Some(wanted.version),
        })
        .ok_or_else(|| WorkerError::Missing {
            site: site.to_owned(),
            wanted,
            dir: dir.to_path_buf(),
            have: available(dir),
        })
}

/// The Python versions the workers in `dir` serve, in order, once each.
pub fn available(dir: &Path) -> Vec<PythonVersion> {
    let mut versions: Vec<PythonVersion> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(WORKER))
        })
        .map(|e| e.path())
        .filter(|p| is_executable(p))
        .filter_map(|p| linked_python(&p))
        .collect();
    versions.sort();
    versions.dedup();
    versions
}

/// The CPython version whose `libpython3.N.so…` the ELF file at `path`
/// needs; `None` for a file that is not such an ELF file.
pub fn linked_python(path: &Path) -> Option<PythonVersion> {
    crate::isolation::elf::needed(path)
        .iter()
        .find_map(|name| libpython_version(name))
}

/// `3.12` from `libpython3.12.so.1.0` (or `libpython3.12d.so…`).
fn libpython_version(soname: &str) -> Option<PythonVersion> {
    let rest = soname.strip_prefix("libpython")?;
    let (version, _) = rest.split_once(".so")?;
    PythonVersion::parse_prefix(version.trim_end_matches(|c: char| c.is_ascii_alphabetic()))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn python_config(version: Option<RequestedVersion>) -> PythonConfig {
        use std::time::Duration;
        PythonConfig {
            module: "app".into(),
            callable: "application".into(),
            path: vec![],
            home: None,
            mount: String::new(),
            processes: 1,
            threads: 1,
            start: crate::config::StartPolicy::OnDemand,
            queue_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
            startup_timeout: Duration::from_secs(1),
            max_requests: None,
            memory_per_process: None,
            idle_timeout: None,
            worker: None,
            version,
            env: Default::default(),
            interface: crate::config::PythonInterface::Wsgi,
        }
    }

    #[test]
    fn the_workers_are_next_to_polyhost_or_where_the_package_puts_them() {
        let bin = Path::new("/usr/bin");
        let only_packaged = |p: &Path| p == Path::new("/usr/lib/polyhost/polyhost-python");
        assert_eq!(
            workers_beside(bin, only_packaged),
            Path::new("/usr/lib/polyhost")
        );
        let dev = Path::new("/src/target/release");
        assert_eq!(workers_beside(dev, |_| true), dev);
        assert_eq!(
            workers_beside(dev, |_| false),
            dev,
            "missing everywhere: next to polyhost, which check reports"
        );
    }

    #[test]
    fn libpython_sonames() {
        let v = |major, minor| Some(PythonVersion { major, minor });
        assert_eq!(libpython_version("libpython3.11.so.1.0"), v(3, 11));
        assert_eq!(libpython_version("libpython3.13d.so.1.0"), v(3, 13));
        assert_eq!(libpython_version("libpython3.so"), None);
        assert_eq!(libpython_version("libc.so.6"), None);
    }

    #[test]
    fn a_version_without_a_worker_says_what_exists_and_how_to_build_it() {
        let dir = tempfile::tempdir().unwrap();
        let wanted = RequestedVersion {
            version: PythonVersion {
                major: 3,
                minor: 12,
            },
            source: crate::config::VersionSource::Virtualenv,
        };
        let err = WorkerError::Missing {
            site: "blog".into(),
            wanted,
            dir: "/usr/local/bin".into(),
            have: vec![
                PythonVersion { major: 3, minor: 9 },
                PythonVersion {
                    major: 3,
                    minor: 11,
                },
            ],
        };
        assert_eq!(err.key(), "python.home");
        expect_test::expect![[r#"site blog asks for Python 3.12 (the pyvenv.cfg of its virtualenv, python.home), but no worker for it is in /usr/local/bin: workers exist for Python 3.9, 3.11; build it with `scripts/build-python-worker.sh 3.12` (in polyhost's source tree), or name one with python.worker"#]]
        .assert_eq(&err.to_string());
        // An empty directory: no worker at all, and no version is guessed.
        let config = python_config(Some(wanted));
        let Err(missing) = choose_in(dir.path(), "blog", &config) else {
            panic!("a worker was found in an empty directory");
        };
        assert!(
            missing.to_string().contains("there is no worker at all"),
            "{missing}"
        );
    }

    #[test]
    fn a_file_that_is_not_elf_links_no_python() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("polyhost-python3.12");
        std::fs::write(&f, "#!/bin/sh\n").unwrap();
        assert_eq!(linked_python(&f), None);
        assert_eq!(available(dir.path()), vec![]);
    }
}
