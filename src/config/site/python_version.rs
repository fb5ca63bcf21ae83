//! Which CPython a Python site asks for: `python.version = "3.12"`, or the
//! version its virtualenv (`python.home`) was made with, read from the
//! virtualenv's `pyvenv.cfg`. Both given and different is an error naming
//! the site and both. Which worker binary serves that version is the
//! runtime's business (`runtime::python_workers`).

use std::path::Path;

use super::FileErrors;

/// A CPython `major.minor` version: one worker binary serves one.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct PythonVersion {
    pub major: u8,
    pub minor: u8,
}

impl std::fmt::Display for PythonVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

impl PythonVersion {
    /// The `major.minor` at the start of `3.12`, `3.12.1` or `3.12.1.final.0`.
    pub fn parse_prefix(s: &str) -> Option<PythonVersion> {
        let mut parts = s.trim().split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some(PythonVersion { major, minor })
    }

    /// Exactly `major.minor`, as `python.version` takes it.
    fn parse_exact(s: &str) -> Option<PythonVersion> {
        (s.split('.').count() == 2 && s.bytes().all(|b| b.is_ascii_digit() || b == b'.'))
            .then(|| Self::parse_prefix(s))
            .flatten()
    }
}

/// Where a site's Python version came from (what an error names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum VersionSource {
    /// `python.version`.
    Key,
    /// `pyvenv.cfg` of the virtualenv at `python.home`.
    Virtualenv,
}

impl VersionSource {
    /// The configuration key that asked for the version.
    pub fn key(self) -> &'static str {
        match self {
            VersionSource::Key => "python.version",
            VersionSource::Virtualenv => "python.home",
        }
    }
}

/// The version a site asks for, and where that was said.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RequestedVersion {
    pub version: PythonVersion,
    pub source: VersionSource,
}

/// `python.version` and the virtualenv's version, reconciled: errors for a
/// malformed key and for a key that contradicts the virtualenv.
pub(super) fn requested_version(
    site: &str,
    key: Option<&str>,
    home: Option<&Path>,
    errs: &mut FileErrors<'_>,
) -> Option<RequestedVersion> {
    let explicit = key.and_then(|v| {
        let parsed = PythonVersion::parse_exact(v);
        if parsed.is_none() {
            errs.add(
                "python.version",
                format!("{v:?} is not a Python version (expected \"major.minor\", e.g. \"3.12\")"),
            );
        }
        parsed
    });
    let venv = home.and_then(virtualenv_version);
    match (explicit, venv) {
        // The virtualenv is the site's: a site user who remakes it must not
        // make the file invalid (`SiteProblem`).
        (Some(a), Some(b)) if a != b => {
            errs.site_problem(
                "python.version",
                format!(
                    "site {site} sets python.version = \"{a}\", but its virtualenv python.home ({}) was made by Python {b} (its pyvenv.cfg): remove python.version or make the two agree",
                    home.map(|h| h.display().to_string()).unwrap_or_default()
                ),
            );
            None
        }
        (Some(version), _) => Some(RequestedVersion {
            version,
            source: VersionSource::Key,
        }),
        (None, Some(version)) => Some(RequestedVersion {
            version,
            source: VersionSource::Virtualenv,
        }),
        (None, None) => None,
    }
}

/// The Python a virtualenv was made by, from its `pyvenv.cfg`: `version`
/// (the `venv` module) or `version_info` (virtualenv, uv), else a
/// `python3.N` executable in its `home` directory. `None` when `home` is no
/// virtualenv (no readable `pyvenv.cfg`) or it names no version.
pub fn virtualenv_version(home: &Path) -> Option<PythonVersion> {
    let text = read_pyvenv_cfg(&home.join("pyvenv.cfg"))?;
    let value = |key: &str| {
        text.lines().find_map(|line| {
            let (k, v) = line.split_once('=')?;
            (k.trim() == key).then(|| v.trim().to_owned())
        })
    };
    value("version")
        .or_else(|| value("version_info"))
        .and_then(|v| PythonVersion::parse_prefix(&v))
        .or_else(|| value("home").and_then(|dir| version_in_home(Path::new(&dir))))
}

/// The most of a `pyvenv.cfg` that is read (they are a few hundred bytes).
const PYVENV_CFG_MAX: u64 = 64 << 10;

/// A virtualenv's `pyvenv.cfg`, read by root from a directory the site user
/// owns, without trusting it: a regular file (a FIFO would block the reload
/// that reads it, `/dev/zero` never end), not through a symlink at its last
/// step, at most [`PYVENV_CFG_MAX`] bytes.
fn read_pyvenv_cfg(path: &Path) -> Option<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
        .ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut text = String::new();
    file.take(PYVENV_CFG_MAX).read_to_string(&mut text).ok()?;
    Some(text)
}

/// The newest `python3.N` executable in a virtualenv's `home` directory.
fn version_in_home(dir: &Path) -> Option<PythonVersion> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let rest = name.strip_prefix("python")?;
            PythonVersion::parse_exact(rest)
        })
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn venv(cfg: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pyvenv.cfg"), cfg).unwrap();
        dir
    }

    #[test]
    fn pyvenv_cfg_version_of_venv_virtualenv_and_home() {
        let v = |major, minor| Some(PythonVersion { major, minor });
        let made_by_venv =
            venv("home = /usr/bin\ninclude-system-site-packages = false\nversion = 3.11.2\n");
        assert_eq!(virtualenv_version(made_by_venv.path()), v(3, 11));
        let made_by_virtualenv =
            venv("home = /x/bin\nimplementation = CPython\nversion_info = 3.13.0.final.0\n");
        assert_eq!(virtualenv_version(made_by_virtualenv.path()), v(3, 13));
        let bin = tempfile::tempdir().unwrap();
        for f in ["python3", "python3.9", "python3.9-config"] {
            std::fs::write(bin.path().join(f), "").unwrap();
        }
        let home_only = venv(&format!("home = {}\n", bin.path().display()));
        assert_eq!(virtualenv_version(home_only.path()), v(3, 9));
        assert_eq!(virtualenv_version(bin.path()), None, "no pyvenv.cfg");
    }

    #[test]
    fn a_pyvenv_cfg_the_site_made_a_fifo_a_device_or_a_link_is_no_virtualenv() {
        let fifo = tempfile::tempdir().unwrap();
        let path = fifo.path().join("pyvenv.cfg");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        // A blocking read of it would hang the reload (no writer).
        assert_eq!(virtualenv_version(fifo.path()), None);
        let linked = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/dev/zero", linked.path().join("pyvenv.cfg")).unwrap();
        assert_eq!(virtualenv_version(linked.path()), None, "/dev/zero");
        let real = venv("version = 3.12.1\n");
        let to_real = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(
            real.path().join("pyvenv.cfg"),
            to_real.path().join("pyvenv.cfg"),
        )
        .unwrap();
        assert_eq!(
            virtualenv_version(to_real.path()),
            None,
            "not through a link"
        );
        let huge = venv(&format!("{}\nversion = 3.12.1\n", "#".repeat(100_000)));
        assert_eq!(
            virtualenv_version(huge.path()),
            None,
            "past the first 64 KiB"
        );
    }

    #[test]
    fn a_virtualenv_that_contradicts_python_version_is_the_sites_problem_not_an_error() {
        let made = venv("version = 3.11.2\n");
        let mut errors = crate::config::ConfigErrors::default();
        let file = Path::new("/v/a.toml");
        let mut errs = FileErrors::new(file, &mut errors);
        let got = requested_version("a", Some("3.13"), Some(made.path()), &mut errs);
        assert_eq!(got, None);
        let problems: Vec<(&str, bool)> = errs
            .problems
            .iter()
            .map(|p| (p.key.as_str(), p.message.contains("made by Python 3.11")))
            .collect();
        assert_eq!(problems, [("python.version", true)]);
        assert!(errors.is_empty(), "the file is valid: {errors}");
        let mut errs = FileErrors::new(file, &mut errors);
        requested_version("a", Some("3.x"), None, &mut errs);
        assert!(errs.problems.is_empty());
        assert_eq!(errors.len(), 1, "a malformed key is the file's error");
    }

    #[test]
    fn python_version_takes_major_dot_minor_only() {
        assert_eq!(
            PythonVersion::parse_exact("3.12"),
            Some(PythonVersion {
                major: 3,
                minor: 12
            })
        );
        for bad in ["3", "3.12.1", "3.x", "", "3.", "+3.1"] {
            assert_eq!(PythonVersion::parse_exact(bad), None, "{bad}");
        }
    }
}
