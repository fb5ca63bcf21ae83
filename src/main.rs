//! The `polyhost` binary: parses arguments and hands over to [`polyhost::cli::run`].
fn main() -> std::process::ExitCode {
    polyhost::cli::run()
}
