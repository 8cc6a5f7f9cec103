//! The `weir` binary: a thin door onto [`weir::cli`].

fn main() -> std::process::ExitCode {
    weir::cli::main()
}
