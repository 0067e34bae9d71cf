//! `shop`: the example shop's services and demo (see the `shop` library).

fn main() -> std::process::ExitCode {
    shop::cli::main()
}
