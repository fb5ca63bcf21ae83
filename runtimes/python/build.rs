//! Links libpython with an rpath so the worker starts from a clean shell,
//! and records the interpreter it was built against: its executable (the
//! default `sys.executable`) and its prefix (`PyConfig.home`, where the
//! worker finds the standard library: an interpreter copied under `/opt`
//! still has its build prefix compiled into libpython).
use std::process::Command;

fn main() {
    pyo3_build_config::add_libpython_rpath_link_args();
    let config = pyo3_build_config::get();
    if let Some(exe) = config.executable() {
        println!("cargo:rustc-env=POLYHOST_PYTHON_EXECUTABLE={exe}");
        if let Some(prefix) = base_prefix(exe) {
            println!("cargo:rustc-env=POLYHOST_PYTHON_HOME={prefix}");
        }
    }
    let version = config.version();
    println!(
        "cargo:rustc-env=POLYHOST_PYTHON_VERSION={}.{}",
        version.major, version.minor
    );
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
    println!("cargo:rerun-if-env-changed=PYO3_CONFIG_FILE");
}

/// `sys.base_prefix` of the interpreter (computed by it from where it runs).
fn base_prefix(exe: &str) -> Option<String> {
    let out = Command::new(exe)
        .args(["-I", "-c", "import sys; print(sys.base_prefix)"])
        .output()
        .ok()?;
    let prefix = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && !prefix.is_empty()).then_some(prefix)
}
