//! The `polyhost-python` binary: see the library for everything.
fn main() {
    let code = polyhost_python::run();
    // Exit without finalising Python: in-flight work is done, and atexit
    // handlers of the app are not ours to run.
    std::process::exit(code);
}
