//! The `polyhost` binary: parses arguments and hands over to [`polyhost::cli::run`].

/// With the `mimalloc` feature, every polyhost process (the router's
/// request path above all) allocates with mimalloc instead of glibc's
/// malloc: see docs/performance.md for what it was measured to change.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    polyhost::cli::run()
}
