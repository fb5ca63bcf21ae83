//! Architecture invariants that the compiler cannot check, checked over the
//! source tree (no build, no processes): file size, which modules may
//! import which, and where `unsafe` code may be allowed. Each rule names the
//! offending file (and line or count) when it fails.
//!
//! - No Rust file under `src/`, `runtimes/` or `tests/` is over
//!   [`MAX_LINES`] lines: a file that long usually holds two ideas.
//! - The crate's modules form layers ([`LAYERS`], drawn in
//!   `docs/architecture.md`): a module imports only modules of lower layers,
//!   so no two folders depend on each other. In particular `supervisor`
//!   never imports `upstream` (the supervisor sits below the upstreams), and
//!   `metrics` never imports `app` (a bottom module does not reach the top).
//!   Unit-test files (`tests.rs`, `*_tests.rs`) may reach across.
//! - `unsafe_code` is denied at the crate root (`src/lib.rs`) and allowed
//!   again only on `mod isolation`; no other file of `src/` mentions the lint.
//!   The worker crate (`runtimes/python`) denies it at its root as well.

use std::path::{Path, PathBuf};

/// The line limit of one source file ("~600 lines" with some slack).
const MAX_LINES: usize = 650;

/// Files allowed over the limit for now, each with the reason (none since
/// issue 18). An entry that is no longer over the limit fails the test too,
/// so the list only shrinks.
const KNOWN_OVER: &[(&str, &str)] = &[];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file below `dir` (relative to the repository root), sorted;
/// `target` directories are skipped.
fn rust_files(dir: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() && path.file_name().is_some_and(|n| n != "target") {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&root().join(dir), &mut files);
    files.sort();
    files
        .into_iter()
        .map(|p| p.strip_prefix(root()).unwrap().to_path_buf())
        .collect()
}

fn read(file: &Path) -> String {
    std::fs::read_to_string(root().join(file))
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()))
}

/// The text without `//` comments (doc comments included), so that a
/// module named in prose or in a doc link does not count as an import.
/// Good enough for our sources: no `//` inside string literals on lines
/// that also name a module path.
fn code_only(text: &str) -> String {
    text.lines()
        .map(|line| line.find("//").map_or(line, |i| &line[..i]))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first segment of every `crate::` path in `code`, including each
/// name at the top level of a `crate::{a, b::c}` group.
fn crate_modules(code: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().next_back();
        rest = &rest[i + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // e.g. `polyhost_crate::`, not ours
        }
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut item = String::new();
            let mut at_start = true;
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => at_start = true,
                    c if at_start && (c.is_alphanumeric() || c == '_') => item.push(c),
                    _ if at_start && !item.is_empty() => {
                        found.push(std::mem::take(&mut item));
                        at_start = false;
                    }
                    _ => {}
                }
            }
            if !item.is_empty() {
                found.push(item);
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            found.push(name);
        }
    }
    found
}

/// `file:line` of every line in the files under `dir` that imports
/// `crate::<module>`.
fn imports_of(dir: &str, module: &str) -> Vec<String> {
    let mut hits = Vec::new();
    for file in rust_files(dir) {
        let code = code_only(&read(&file));
        // Per statement, so that a `use crate::{...}` over several lines counts.
        let mut line_no = 1;
        for statement in code.split_inclusive(';') {
            if crate_modules(statement).iter().any(|m| m == module) {
                let first = statement.trim_start();
                let offset = statement.len() - first.len();
                let line = line_no + statement[..offset].matches('\n').count();
                hits.push(format!("{}:{line}", file.display()));
            }
            line_no += statement.matches('\n').count();
        }
    }
    hits
}

#[test]
fn no_source_file_is_over_the_line_limit() {
    let mut over = Vec::new();
    let mut known_now_fine = Vec::new();
    for dir in ["src", "runtimes", "tests"] {
        for file in rust_files(dir) {
            let lines = read(&file).lines().count();
            let name = file.to_string_lossy().into_owned();
            let known = KNOWN_OVER.iter().any(|(k, _)| *k == name);
            if lines > MAX_LINES && !known {
                over.push(format!("{name}: {lines} lines"));
            } else if lines <= MAX_LINES && known {
                known_now_fine.push(format!("{name}: {lines} lines"));
            }
        }
    }
    assert!(
        over.is_empty(),
        "files over {MAX_LINES} lines (split them along their ideas):\n{}",
        over.join("\n")
    );
    assert!(
        known_now_fine.is_empty(),
        "remove from KNOWN_OVER in tests/architecture.rs, now within the limit:\n{}",
        known_now_fine.join("\n")
    );
}

/// Fails, naming each importing line, if a file under `dir` imports
/// `crate::<module>`; `why` says what the rule protects.
fn assert_never_imports(dir: &str, module: &str, why: &str) {
    let hits = imports_of(dir, module);
    assert!(
        hits.is_empty(),
        "{dir} must not import crate::{module} ({why}):\n{}",
        hits.join("\n")
    );
}

/// The crate's top-level modules, bottom layer first. A module may import
/// modules of the layers below its own, never its own layer's or above.
const LAYERS: &[&[&str]] = &[
    // Leaves: import nothing of the crate.
    &[
        "clock",
        "config",
        "docroot",
        "isolation",
        "lanes",
        "metrics",
        "notify",
        "sendfile",
    ],
    // Process groups, leases: below every runtime.
    &["supervisor"],
    // What a runtime is (launchers) and how a request reaches it (upstreams).
    &["runtime", "upstream"],
    // Connections and one request; hands requests to upstreams.
    &["router"],
    // A site: its route over its runtimes.
    &["sites"],
    // The running server: sites, reloads, the routing table.
    &["app"],
    // A cluster node's agent and the cluster operations on etcd; below the
    // admin API, which serves them on a node.
    &["cluster"],
    // The edges: admin API, `polyhost check`, the command line.
    &["admin", "check", "acme"],
    // Polyhost as two processes: the supervisor's and the router's ends.
    &["privsep"],
    &["cli"],
];

fn is_unit_test_file(file: &Path) -> bool {
    file.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n == "tests.rs" || n.ends_with("_tests.rs"))
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

#[test]
fn every_module_is_in_a_layer() {
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(root().join("src")).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let module = name.strip_suffix(".rs").unwrap_or(&name).to_owned();
        if ["lib", "main"].contains(&module.as_str()) {
            continue;
        }
        if layer_of(&module).is_none() {
            missing.push(module);
        }
    }
    missing.sort();
    assert!(
        missing.is_empty(),
        "add these modules of src/ to LAYERS in tests/architecture.rs: {missing:?}"
    );
}

#[test]
fn modules_import_only_lower_layers() {
    let mut wrong = Vec::new();
    for (level, layer) in LAYERS.iter().enumerate() {
        for module in *layer {
            let files: Vec<PathBuf> = [format!("src/{module}.rs")]
                .into_iter()
                .map(PathBuf::from)
                .filter(|f| root().join(f).is_file())
                .chain(rust_files(&format!("src/{module}")))
                .filter(|f| !is_unit_test_file(f))
                .collect();
            for file in files {
                let code = code_only(&read(&file));
                for statement in code.split(';') {
                    for used in crate_modules(statement) {
                        if used == *module {
                            continue;
                        }
                        match layer_of(&used) {
                            Some(l) if l < level => {}
                            _ => wrong.push(format!(
                                "{}: {module} (layer {level}) imports crate::{used} (layer {})",
                                file.display(),
                                layer_of(&used).map_or("?".into(), |l| l.to_string())
                            )),
                        }
                    }
                }
            }
        }
    }
    wrong.sort();
    wrong.dedup();
    assert!(
        wrong.is_empty(),
        "imports against the layers (move the shared type down, or invert):\n{}",
        wrong.join("\n")
    );
}

#[test]
fn supervisor_never_imports_upstream() {
    assert_never_imports(
        "src/supervisor",
        "upstream",
        "the supervisor sits below the upstreams",
    );
}

#[test]
fn metrics_never_imports_app() {
    assert_never_imports(
        "src/metrics",
        "app",
        "a bottom module does not reach the top",
    );
}

#[test]
fn unsafe_code_is_allowed_only_in_isolation() {
    let lib = read(Path::new("src/lib.rs"));
    assert!(
        lib.lines().any(|l| l.trim() == "#![deny(unsafe_code)]"),
        "src/lib.rs must deny unsafe_code for the whole crate"
    );
    let mut offenders = Vec::new();
    for file in rust_files("src") {
        if file.starts_with("src/isolation") {
            continue;
        }
        let text = read(&file);
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let code = code_only(line);
            if !code.contains("unsafe_code") || code.contains("#![deny(unsafe_code)]") {
                continue;
            }
            let on_isolation = file == Path::new("src/lib.rs")
                && code.trim_start().starts_with("#[allow(unsafe_code)]")
                && lines
                    .get(i + 1)
                    .is_some_and(|n| n.trim() == "pub mod isolation;");
            if !on_isolation {
                offenders.push(format!("{}:{}: {}", file.display(), i + 1, line.trim()));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "only `mod isolation` may allow unsafe_code (see docs/architecture.md):\n{}",
        offenders.join("\n")
    );
}

#[test]
fn the_worker_crate_denies_unsafe_code_at_its_root() {
    let lib = read(Path::new("runtimes/python/src/lib.rs"));
    assert!(
        lib.lines().any(|l| l.trim() == "#![deny(unsafe_code)]"),
        "runtimes/python/src/lib.rs must deny unsafe_code (items allow it one by one)"
    );
}

#[test]
fn crate_paths_are_found_in_groups_and_statements() {
    assert_eq!(crate_modules("use crate::upstream::X;"), ["upstream"]);
    assert_eq!(
        crate_modules("use crate::{app::status, config::{A, B}, upstream};"),
        ["app", "config", "upstream"]
    );
    assert_eq!(crate_modules("let x = crate::app::f();"), ["app"]);
    assert!(crate_modules("use other_crate::app;").is_empty());
    assert_eq!(code_only("x // crate::app"), "x ");
}
