#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, every test. Installs and starts
# what it needs: system packages (scripts/env.sh), Java, Maven and Apache Kafka's jars
# (scripts/kafka.sh; each real-broker test starts its own broker), PostgreSQL on
# 127.0.0.1:5432 (scripts/postgres.sh), a Python virtualenv with confluent-kafka and
# fastavro (the interop tests), Debian's chromium (the web page test).
# Under CI=true anything missing fails the run; elsewhere the tests that need it say SKIPPED.
# Everything builds in the release profile so RocksDB's C++ is compiled once, not twice.
cd "$(dirname "$0")/.."
. scripts/env.sh
started=$SECONDS
ci() { [ "${CI:-}" = true ]; }
missing() {
  echo "weir: $*" >&2
  if ci; then exit 1; fi
}

# The real-broker suite's broker: WEIR_TEST_KAFKA=kafka (default) | mock | docker | tansu | host:port.
export WEIR_TEST_KAFKA="${WEIR_TEST_KAFKA:-kafka}"
if [ "$WEIR_TEST_KAFKA" = kafka ]; then
  echo "== Apache Kafka jars (scripts/kafka.sh install)"
  scripts/kafka.sh install || missing "cannot install Apache Kafka; the real-broker tests need it"
fi

if [ -z "${WEIR_TEST_POSTGRES:-}" ]; then
  echo "== PostgreSQL (scripts/postgres.sh start)"
  scripts/postgres.sh start || missing "PostgreSQL is not reachable at 127.0.0.1:5432 (user postgres, database test, trust auth); the sink tests need it. Set WEIR_TEST_POSTGRES to a connection string to use another."
fi

# Clients nobody here wrote: confluent-kafka (librdkafka in its wheel) and fastavro.
VENV="$WEIR_CACHE/venv"
if [ -z "${WEIR_PYTHON:-}" ]; then
  if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import confluent_kafka, fastavro, confluent_kafka.schema_registry.avro' 2>/dev/null; then
    echo "== Python virtualenv for the interop tests ($VENV)"
    python3 -m venv "$VENV" 2>/dev/null || {
      SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
      $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv >/dev/null
      python3 -m venv "$VENV"
    } || missing "cannot create a Python virtualenv"
    "$VENV/bin/pip" install -q --disable-pip-version-check -r tests/python/requirements.txt \
      || missing "cannot install tests/python/requirements.txt from PyPI"
  fi
  export WEIR_PYTHON="$VENV/bin/python"
fi

# The web page test renders `weir serve`'s page in headless Chromium (Debian's package).
if [ -z "${WEIR_CHROMIUM:-}" ] && ! command -v chromium >/dev/null 2>&1; then
  echo "== installing chromium (for the web page test)"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium fonts-dejavu-core >/dev/null; } \
    || missing "cannot install chromium; the web page test needs it"
fi

echo "== scripts (libclang detection)"
bash scripts/lib/libclang_test.sh
echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --release --workspace --all-targets -- -D warnings
echo "== cargo build (the weir binary the CLI and crash tests run)"
cargo build --release --workspace --bins
echo "== cargo test (real-broker suite on WEIR_TEST_KAFKA=$WEIR_TEST_KAFKA, fast suite on the mock cluster)"
cargo test --release --workspace
echo "== fuzz targets, ${WEIR_FUZZ_SECONDS:-30} s each (when nightly Rust and cargo-fuzz are installed)"
fuzz_rc=0
bash scripts/fuzz.sh "${WEIR_FUZZ_SECONDS:-30}" || fuzz_rc=$?
if [ "$fuzz_rc" -eq 3 ]; then
    echo "test.sh: fuzzing skipped (see above); scripts/fuzz.sh runs it once they are installed"
elif [ "$fuzz_rc" -ne 0 ]; then
    exit "$fuzz_rc"
fi
rc=0
echo "== test.sh took $((SECONDS - started)) s"
exit $rc
