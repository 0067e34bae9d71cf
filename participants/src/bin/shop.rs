//! `shop`: the example shop's services and demo (see `participants::shop`).

fn main() -> std::process::ExitCode {
    participants::shop::cli::main()
}
