#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, every test. Installs what it needs.
# Everything builds in the release profile so RocksDB's C++ is compiled once, not twice.
cd "$(dirname "$0")/.."
. scripts/env.sh
echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --release --workspace --all-targets -- -D warnings
echo "== cargo build (the weir binary the CLI and crash tests run)"
cargo build --release --workspace --bins
echo "== cargo test"
cargo test --release --workspace
