//! The `weir` binary: a thin door onto [`weir::cli`].

// mimalloc: the engine allocates many small, short-lived objects (rows, keys, results);
// glibc's allocator spent a third of `weir bench`'s time in malloc/free and consolidation.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    weir::cli::main()
}
