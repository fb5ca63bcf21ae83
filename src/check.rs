//! `polyhost check`: everything `serve` would refuse, found without starting
//! anything (like `nginx -t`): the configuration, then per-site checks that
//! need the file system.

use std::path::Path;

use crate::config::{self, ConfigError, ConfigErrors};

/// Returns a one-line summary on success, or every error found.
pub fn check(main: &Path) -> Result<String, ConfigErrors> {
    let config = config::load(main)?;
    let mut errors = ConfigErrors::default();
    for site in config.sites.values() {
        if let Some(root) = &site.root {
            match std::fs::metadata(root) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => errors.push(ConfigError::in_file(
                    &site.file,
                    "root",
                    format!("{} is not a directory", root.display()),
                )),
                Err(e) => errors.push(ConfigError::in_file(
                    &site.file,
                    "root",
                    format!("{}: {e}", root.display()),
                )),
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(format!(
        "polyhost check: {} is valid ({} site(s))",
        main.display(),
        config.sites.len()
    ))
}
