//! What a program's ELF dynamic section says it loads: the libraries it
//! needs (`DT_NEEDED`) and where it looks for them (`DT_RUNPATH`,
//! `DT_RPATH`). Read, never run: the callers are root, the path comes from
//! the configuration. Only the headers and the dynamic section are read
//! (a lazy [`object::ReadCache`]), not a whole binary.

use std::path::{Path, PathBuf};

use object::read::elf::ElfFile64;

/// The dynamic section's string entries with `tag`, in order; empty for a
/// file that is not a 64-bit ELF file with a dynamic section.
fn strings(program: &Path, tag: object::elf::DynamicTag) -> Vec<String> {
    let Ok(file) = std::fs::File::open(program) else {
        return Vec::new();
    };
    let data = object::ReadCache::new(file);
    let Ok(elf) = ElfFile64::<object::Endianness, _>::parse(&data) else {
        return Vec::new();
    };
    let Ok(table) = elf.elf_section_table().dynamic_table(elf.endian(), &data) else {
        return Vec::new();
    };
    table
        .iter()
        .filter(|d| d.tag == tag)
        .filter_map(|d| table.string(d).ok())
        .filter_map(|s| std::str::from_utf8(s).ok().map(str::to_owned))
        .collect()
}

/// The libraries `program` needs, by soname (`libpython3.13.so.1.0`).
pub fn needed(program: &Path) -> Vec<String> {
    strings(program, object::elf::DT_NEEDED)
}

/// The absolute directories of `program`'s run path (`DT_RUNPATH`, else
/// `DT_RPATH`): where its own libraries are (e.g. a Python under `/opt`).
/// Entries relative to the program (`$ORIGIN`) are left out.
pub fn run_path(program: &Path) -> Vec<PathBuf> {
    let mut paths = strings(program, object::elf::DT_RUNPATH);
    if paths.is_empty() {
        paths = strings(program, object::elf::DT_RPATH);
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
}
