//! What a program's ELF dynamic section says it loads: the libraries it
//! needs (`DT_NEEDED`) and where it looks for them (`DT_RUNPATH`,
//! `DT_RPATH`). Read, never run: the callers are root, the path comes from
//! the configuration. Only the headers and the dynamic section are read
//! (a lazy [`object::ReadCache`]), not a whole binary.
//!
//! Invariant: a run path is read only from a file only root may write
//! ([`run_path`]): it decides what of the host a site's view shows, and an
//! `[app]` program may be the site's own file.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use object::read::elf::ElfFile64;

/// The dynamic section's string entries with one of `tags`, in order, with
/// their tag; empty for a file that is not a 64-bit ELF file with a dynamic
/// section.
fn strings(file: File, tags: &[object::elf::DynamicTag]) -> Vec<(object::elf::DynamicTag, String)> {
    let data = object::ReadCache::new(file);
    let Ok(elf) = ElfFile64::<object::Endianness, _>::parse(&data) else {
        return Vec::new();
    };
    let Ok(table) = elf.elf_section_table().dynamic_table(elf.endian(), &data) else {
        return Vec::new();
    };
    table
        .iter()
        .filter(|d| tags.contains(&d.tag))
        .filter_map(|d| {
            let text = std::str::from_utf8(table.string(d).ok()?).ok()?;
            Some((d.tag, text.to_owned()))
        })
        .collect()
}

/// `program` opened if it is a regular file, without waiting: a path a
/// site controls may name a FIFO (an open that never returns) or a device
/// (`/dev/zero`, endless).
fn open_regular(program: &Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(program)
        .ok()?;
    file.metadata().ok()?.is_file().then_some(file)
}

/// The libraries `program` needs, by soname (`libpython3.13.so.1.0`).
pub fn needed(program: &Path) -> Vec<String> {
    let Some(file) = open_regular(program) else {
        return Vec::new();
    };
    strings(file, &[object::elf::DT_NEEDED])
        .into_iter()
        .map(|(_, name)| name)
        .collect()
}

/// `program` opened, if only root may write it: root owns it, others may
/// not write it, nor may its group unless that is root's (checked on the
/// descriptor then read, so a path swapped after the check changes nothing).
fn open_root_owned(program: &Path) -> Option<File> {
    let file = open_regular(program)?;
    let meta = file.metadata().ok()?;
    let group_may_write = meta.mode() & 0o020 != 0 && meta.gid() != 0;
    (meta.uid() == 0 && meta.mode() & 0o002 == 0 && !group_may_write).then_some(file)
}

/// The absolute directories of `program`'s run path (`DT_RUNPATH`, else
/// `DT_RPATH`): where its own libraries are (e.g. a Python under `/opt`).
/// Entries relative to the program (`$ORIGIN`) are left out. Empty unless
/// root owns the file and only root may write it: a site's own binary
/// (an `[app]` program it built) could name `/home` or another site's root
/// in its run path, and the view binds what this returns.
pub fn run_path(program: &Path) -> Vec<PathBuf> {
    let Some(file) = open_root_owned(program) else {
        return Vec::new();
    };
    let entries = strings(file, &[object::elf::DT_RUNPATH, object::elf::DT_RPATH]);
    let with = |tag| {
        entries
            .iter()
            .filter(move |(t, _)| *t == tag)
            .map(|(_, p)| p.as_str())
    };
    let mut paths: Vec<&str> = with(object::elf::DT_RUNPATH).collect();
    if paths.is_empty() {
        paths = with(object::elf::DT_RPATH).collect();
    }
    paths
        .iter()
        .flat_map(|p| p.split(':'))
        .filter(|p| p.starts_with('/'))
        .map(PathBuf::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_system_program_needs_libc_and_a_script_nothing() {
        assert!(needed(Path::new("/bin/sh"))
            .iter()
            .any(|l| l.starts_with("libc.so")));
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("s");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        assert!(needed(&script).is_empty());
        assert!(run_path(&script).is_empty());
    }

    #[test]
    fn a_run_path_counts_only_in_a_program_only_root_may_write() {
        use std::os::unix::fs::PermissionsExt;
        if !nix::unistd::geteuid().is_root() {
            return; // chown needs root (CI runs as root)
        }
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("p.c");
        std::fs::write(&source, "int main(void) { return 0; }\n").unwrap();
        let program = dir.path().join("p");
        let built = std::process::Command::new("cc")
            .arg("-o")
            .arg(&program)
            .arg(&source)
            .arg("-Wl,--enable-new-dtags,-rpath,/srv/lib:$ORIGIN/lib:/home")
            .output()
            .expect("cc runs");
        assert!(built.status.success(), "{built:?}");
        let wanted = [PathBuf::from("/srv/lib"), PathBuf::from("/home")];
        assert_eq!(run_path(&program), wanted, "root's own program");
        let mode = |m: u32| std::fs::set_permissions(&program, std::fs::Permissions::from_mode(m));
        mode(0o757).unwrap();
        assert!(
            run_path(&program).is_empty(),
            "a program anyone may rewrite"
        );
        mode(0o775).unwrap();
        assert_eq!(run_path(&program), wanted, "root's group may write it");
        std::os::unix::fs::chown(&program, None, Some(4242)).unwrap();
        assert!(
            run_path(&program).is_empty(),
            "a program another group may rewrite"
        );
        mode(0o755).unwrap();
        std::os::unix::fs::chown(&program, Some(4242), Some(4242)).unwrap();
        assert!(run_path(&program).is_empty(), "a site's own program");
        assert!(needed(&program).iter().any(|l| l.starts_with("libc.so")));
    }

    #[test]
    fn a_fifo_or_a_device_is_no_program_and_never_waited_on() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("server");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        // A blocking open of a FIFO without a writer would never return.
        assert!(needed(&fifo).is_empty());
        assert!(run_path(&fifo).is_empty());
        assert!(needed(Path::new("/dev/zero")).is_empty());
        assert!(run_path(Path::new("/dev/zero")).is_empty());
    }
}
