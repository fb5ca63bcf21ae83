//! polyhost: a hosting supervisor for shared hosting (skeleton; filled in by the first issues).
//!
//! NOTE (isolation branch only): the `config` and `cli` stubs below exist so this
//! worktree compiles; only `src/isolation/` is merged from this branch.
pub mod isolation;
pub mod upstream;

/// Stub (isolation branch only): the real config module lives in `main`.
pub mod config {
    /// Stub of the validated site configuration.
    #[derive(Debug)]
    pub struct SiteConfig;
}

/// Stub (isolation branch only): the real CLI lives in `main`.
pub mod cli {
    /// Stub entry point.
    pub fn run() -> std::process::ExitCode {
        std::process::ExitCode::SUCCESS
    }
}
