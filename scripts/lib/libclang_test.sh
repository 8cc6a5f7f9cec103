#!/usr/bin/env bash
# Tests weir_find_libclang (scripts/lib/libclang.sh) on fake file systems: the files that
# fooled the old check (libclang-cpp.so.14, libclang.so.1) must not count; only what
# clang-sys links at build time does. Prints `N passed, 0 failed` or fails.
set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/libclang.sh"
unset LIBCLANG_PATH
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
elf="$(command -v bash)"   # a real 64-bit ELF file to stand in for a shared library
passed=0
failed=0

expect_none() {
  local what="$1" got
  if got="$(WEIR_LIBCLANG_ROOT="$root" weir_find_libclang)"; then
    echo "FAIL: $what: found $got, which clang-sys would not link" >&2
    failed=$((failed + 1))
  else
    passed=$((passed + 1))
  fi
}
expect() {
  local what="$1" want="$2" got
  got="$(WEIR_LIBCLANG_ROOT="$root" weir_find_libclang)"
  if [ "$got" = "$want" ]; then
    passed=$((passed + 1))
  else
    echo "FAIL: $what: want $want, got '${got}'" >&2
    failed=$((failed + 1))
  fi
}

mkdir -p "$root/usr/lib/llvm-14/lib" "$root/usr/lib/x86_64-linux-gnu" "$root/usr/local/lib"
expect_none "an empty file system"
# What Debian's libclang-cpp14 and libclang1-14 install: neither is linkable by name.
cp "$elf" "$root/usr/lib/x86_64-linux-gnu/libclang-cpp.so.14"
cp "$elf" "$root/usr/lib/llvm-14/lib/libclang-cpp.so.14"
expect_none "libclang-cpp.so.14 only (the file the old check took for libclang)"
cp "$elf" "$root/usr/lib/x86_64-linux-gnu/libclang-14.so.1"
cp "$elf" "$root/usr/lib/llvm-14/lib/libclang.so.1"
expect_none "suffixed libclang-14.so.1 and libclang.so.1 (runtime loading only)"
cp "$elf" "$root/usr/lib/llvm-14/lib/libclang-cpp.so"
expect_none "libclang-cpp.so (clang-sys skips -cpp.)"
echo "not a library" > "$root/usr/lib/llvm-14/lib/libclang-14.so"
expect_none "a libclang-14.so that is not an ELF file"
printf '\177ELF\001\001\001' > "$root/usr/lib/llvm-14/lib/libclang.so"
expect_none "a 32-bit libclang.so"
mkdir -p "$root/usr/lib/llvm-14/lib/deeper/still/more"
cp "$elf" "$root/usr/lib/llvm-14/lib/deeper/still/more/libclang.so"
expect_none "a libclang.so below the directories clang-sys searches"
rm -f "$root/usr/lib/llvm-14/lib/libclang-14.so" "$root/usr/lib/llvm-14/lib/libclang.so"
# What libclang-dev installs: the unsuffixed name.
cp "$elf" "$root/usr/lib/llvm-14/lib/libclang-14.so"
expect "libclang-14.so from libclang-dev" "$root/usr/lib/llvm-14/lib/libclang-14.so"
rm "$root/usr/lib/llvm-14/lib/libclang-14.so"
cp "$elf" "$root/usr/local/lib/libclang.so"
expect "libclang.so in /usr/local/lib" "$root/usr/local/lib/libclang.so"
# LIBCLANG_PATH is the only place searched when set, as in clang-sys.
mkdir -p "$root/opt/llvm"
LIBCLANG_PATH="$root/opt/llvm" expect_none "LIBCLANG_PATH naming a directory without libclang"
cp "$elf" "$root/opt/llvm/libclang-17.so"
LIBCLANG_PATH="$root/opt/llvm" expect "LIBCLANG_PATH naming a directory" "$root/opt/llvm/libclang-17.so"
LIBCLANG_PATH="$root/opt/llvm/libclang-17.so" expect "LIBCLANG_PATH naming the file" "$root/opt/llvm/libclang-17.so"

echo "libclang detection: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
