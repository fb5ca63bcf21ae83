//! Files of the ACME client under `state_dir/acme` (root's, 0700), written
//! whole: a temporary file, then a rename.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

/// Writes `bytes` to `path` readable by its owner only (parents 0700).
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Stores site `site`'s chain and key where `config::acme_files` looks.
pub fn save(state_dir: &Path, site: &str, chain_pem: &str, key_pem: &str) -> std::io::Result<()> {
    let (cert, key) = crate::config::acme_files(state_dir, site);
    write_private(&key, key_pem.as_bytes())?;
    write_private(&cert, chain_pem.as_bytes())
}
