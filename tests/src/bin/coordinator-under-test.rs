//! The coordinator binary, built inside the e2e package so the tests can run it as a child process.

fn main() -> std::process::ExitCode {
    coordinator::cli::main()
}
