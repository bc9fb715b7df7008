//! The `palworker` binary: everything lives in the library (`palworker::cli`).
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    palworker::cli::main()
}
