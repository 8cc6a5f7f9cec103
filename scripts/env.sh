# Sourced by the other scripts: a persistent build directory and the system packages the
# build needs (libclang for the RocksDB bindings, a C++ compiler for RocksDB and librdkafka).
set -euo pipefail
# Every persistent cache (cargo target dir, Maven repository, Kafka's jars, the Python
# virtualenv) lives under WEIR_CACHE (default ~/.cache/weir); point it at an empty folder
# for a cold run.
export WEIR_CACHE="${WEIR_CACHE:-$HOME/.cache/weir}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$WEIR_CACHE/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

. "$(dirname "${BASH_SOURCE[0]}")/lib/libclang.sh"
need_pkgs=()
# libclang-dev gives the unsuffixed libclang-N.so that clang-sys links; libclang1-N alone
# (libclang-N.so.1) or libclang-cpp (which other LLVM packages pull in) do not do.
weir_find_libclang >/dev/null || need_pkgs+=(libclang-dev)
command -v c++ >/dev/null 2>&1 || need_pkgs+=(g++)
command -v make >/dev/null 2>&1 || need_pkgs+=(make)
command -v python3 >/dev/null 2>&1 || need_pkgs+=(python3)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "weir: installing system packages: ${need_pkgs[*]}" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi
command -v cargo >/dev/null 2>&1 || { echo "weir: cargo is missing: install Rust from https://rustup.rs" >&2; exit 1; }
