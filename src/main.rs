//! The `mandant` binary: everything is in the library; see `cli/`.

fn main() -> std::process::ExitCode {
    mandant::cli::main()
}
