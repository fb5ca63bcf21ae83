//! Command line (placeholder until the router lands).
pub fn run() -> std::process::ExitCode {
    std::process::ExitCode::SUCCESS
}
