# Finds libclang the way clang-sys 1.x does when bindgen links it at build time (librocksdb-sys
# without bindgen's `runtime` feature, as Weir builds it): file names `libclang.so` or
# `libclang-*.so` (never `libclang-cpp.*`, never the suffixed `libclang.so.1`, which `ld`
# cannot link), a 64-bit ELF file, searched in LIBCLANG_PATH alone when it is set, else in
# `llvm-config --prefix`/{bin,lib,lib64}, LD_LIBRARY_PATH, LIBRARY_PATH and clang-sys's
# Linux directory globs. Prints the first match and returns 0, or prints nothing and returns 1.
#
# WEIR_LIBCLANG_ROOT (tests only) prefixes the directory globs and disables llvm-config and
# the library path variables, so a test can lay out a fake file system
# (scripts/lib/libclang_test.sh).
weir_find_libclang() {
  local root="${WEIR_LIBCLANG_ROOT:-}"
  local dirs=() d f name
  if [ -n "${LIBCLANG_PATH:-}" ]; then
    if [ -f "$LIBCLANG_PATH" ]; then
      dirs=("$(dirname "$LIBCLANG_PATH")")
    else
      dirs=("$LIBCLANG_PATH")
    fi
  else
    if [ -z "$root" ]; then
      local prefix
      prefix="$("${LLVM_CONFIG_PATH:-llvm-config}" --prefix 2>/dev/null | head -1 || true)"
      [ -n "$prefix" ] && dirs+=("$prefix/bin" "$prefix/lib" "$prefix/lib64")
      local IFS_SAVE="$IFS"
      IFS=:
      for d in ${LD_LIBRARY_PATH:-} ${LIBRARY_PATH:-}; do [ -n "$d" ] && dirs+=("$d"); done
      IFS="$IFS_SAVE"
    fi
    local pattern
    for pattern in "/usr/local/llvm*/lib*" "/usr/local/lib*/*/*" "/usr/local/lib*/*" "/usr/local/lib*" \
                   "/usr/lib*/*/*" "/usr/lib*/*" "/usr/lib*"; do
      for d in $root$pattern; do [ -d "$d" ] && dirs+=("$d"); done
    done
  fi
  for d in "${dirs[@]}"; do
    for f in "$d"/libclang.so "$d"/libclang-*.so; do
      [ -f "$f" ] || continue
      name="${f##*/}"
      case "$name" in *-cpp.*) continue ;; esac
      # 64-bit ELF: magic 7f 45 4c 46, class 2.
      [ "$(head -c 5 "$f" 2>/dev/null | od -An -tx1 | tr -d ' \n')" = "7f454c4602" ] || continue
      echo "$f"
      return 0
    done
  done
  return 1
}
