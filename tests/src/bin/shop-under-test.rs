//! The example shop's binary, built inside the e2e package so tests can run, kill and restart it.

fn main() -> std::process::ExitCode {
    shop::cli::main()
}
