//! Links libpython with an rpath so the worker starts from a clean shell,
//! and records the interpreter it was built against (the default `sys.executable`).
fn main() {
    pyo3_build_config::add_libpython_rpath_link_args();
    let config = pyo3_build_config::get();
    if let Some(exe) = config.executable() {
        println!("cargo:rustc-env=POLYHOST_PYTHON_EXECUTABLE={exe}");
    }
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
}
