//! Helpers shared by Weir's integration tests: where the repository and the `weir` binary
//! are, and how to run the binary.

pub mod kafka;
pub mod postgres;
pub mod scenario;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn repo() -> PathBuf {
    // `cargo test` sets the variable for the run too: prefer it to the path compiled in, so
    // a test binary built from another checkout (a shared target dir) uses this one.
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    Path::new(&manifest)
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The `weir` binary of this build, next to the test executables' `deps/` directory.
/// `cargo test` does not build it (the processor package has no integration tests), so
/// `scripts/test.sh` runs `cargo build --release --workspace --bins` first.
pub fn weir_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("weir");
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build --release --workspace --bins` first (scripts/test.sh does)",
        bin.display()
    );
    bin
}

pub fn weir(args: &[&str]) -> Output {
    Command::new(weir_bin())
        .args(args)
        .current_dir(repo())
        .output()
        .expect("run weir")
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Non-empty lines of a file, parsed as JSON.
/// Whether to rewrite expected files: only when `WEIR_BLESS=1` (any other value is no),
/// and never under `CI=true`, where blessing would compare an output with itself.
pub fn bless() -> bool {
    let on = std::env::var("WEIR_BLESS").is_ok_and(|v| v == "1");
    assert!(
        !(on && std::env::var("CI").is_ok_and(|v| v == "true")),
        "WEIR_BLESS=1 is refused under CI=true: expected files are reviewed, never written by CI"
    );
    on
}

pub fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: {e}: {l}", path.display())))
        .collect()
}
