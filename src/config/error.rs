//! Configuration errors: each names the file, the key, the bad value and what
//! was expected. A load collects all of them and reports them together.

use std::fmt;
use std::path::{Path, PathBuf};

/// Where a bad value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    Env(String),
    /// Built-in defaults or a value with no better origin.
    Default,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File(p) => write!(f, "{}", p.display()),
            Source::Env(var) => write!(f, "environment variable {var}"),
            Source::Default => write!(f, "defaults"),
        }
    }
}

/// One problem in the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub source: Source,
    /// Dotted key path, e.g. `limits.memory`; empty when the whole file is at fault.
    pub key: String,
    pub message: String,
}

impl ConfigError {
    pub fn in_file(file: &Path, key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            source: Source::File(file.to_path_buf()),
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.source, self.message)
        } else {
            write!(f, "{}: {}: {}", self.source, self.key, self.message)
        }
    }
}

/// Every problem found in one load, in a stable order (file, then key).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub fn push(&mut self, e: ConfigError) {
        self.0.push(e);
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn iter(&self) -> impl Iterator<Item = &ConfigError> {
        self.0.iter()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Collects errors for one file while its keys are validated.
pub(crate) struct FileErrors<'a> {
    pub file: &'a Path,
    pub errors: &'a mut ConfigErrors,
    /// What the site's own files make impossible (see
    /// [`SiteProblem`](crate::config::SiteProblem)): not errors of the file.
    pub problems: Vec<crate::config::SiteProblem>,
}

impl<'a> FileErrors<'a> {
    pub fn new(file: &'a Path, errors: &'a mut ConfigErrors) -> FileErrors<'a> {
        FileErrors {
            file,
            errors,
            problems: Vec::new(),
        }
    }

    pub fn add(&mut self, key: &str, message: impl Into<String>) {
        self.errors
            .push(ConfigError::in_file(self.file, key, message));
    }

    /// Records a problem of the site's own files under `key` (see
    /// [`SiteProblem`](crate::config::SiteProblem)): the file is valid,
    /// the site cannot run until its owner mends them.
    pub fn site_problem(&mut self, key: &str, message: impl Into<String>) {
        self.problems.push(crate::config::SiteProblem {
            key: key.to_owned(),
            message: message.into(),
        });
    }

    /// Records the error of `result` under `key`, yielding the value on success.
    pub fn check<T>(&mut self, key: &str, result: Result<T, String>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(msg) => {
                self.add(key, msg);
                None
            }
        }
    }
}
