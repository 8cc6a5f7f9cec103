#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, every test. Installs what it needs:
# system packages (scripts/env.sh), the tansu Kafka broker (cached in ~/.cache/weir/tools),
# and checks that PostgreSQL answers at 127.0.0.1:5432 (starting it when it is installed).
# Everything builds in the release profile so RocksDB's C++ is compiled once, not twice.
cd "$(dirname "$0")/.."
. scripts/env.sh

# The real-broker suite's broker: WEIR_TEST_KAFKA=tansu (default) | mock | host:port.
export WEIR_TEST_KAFKA="${WEIR_TEST_KAFKA:-tansu}"
TOOLS="$HOME/.cache/weir/tools"
if [ "$WEIR_TEST_KAFKA" = tansu ] && [ -z "${WEIR_TANSU:-}" ] && ! command -v tansu >/dev/null 2>&1 \
   && [ ! -x "$TOOLS/bin/tansu" ]; then
  echo "== installing tansu 0.6.0 into $TOOLS (once; about 20 minutes on 2 cores)"
  CARGO_TARGET_DIR="$HOME/.cache/weir/tansu-build" \
    cargo install tansu --version 0.6.0 --locked --features libsql --root "$TOOLS"
fi
export PATH="$TOOLS/bin:$PATH"

# The web page test renders `weir serve`'s page in headless Chromium (Debian's package).
if [ -z "${WEIR_CHROMIUM:-}" ] && ! command -v chromium >/dev/null 2>&1; then
  echo "== installing chromium (for the web page test)"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium fonts-dejavu-core >/dev/null; } \
    || { echo "weir: cannot install chromium; the web page test needs it" >&2; [ "${CI:-}" = true ] && exit 1; }
fi

pg_ready() {
  python3 - <<'EOF'
import socket, sys
s = socket.socket()
s.settimeout(2)
try:
    s.connect(("127.0.0.1", 5432))
except OSError:
    sys.exit(1)
EOF
}
if [ -z "${WEIR_TEST_POSTGRES:-}" ] && ! pg_ready; then
  if [ -d /etc/postgresql ]; then
    echo "== starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
  fi
  if ! pg_ready; then
    echo "weir: PostgreSQL is not reachable at 127.0.0.1:5432 (user postgres, database test, trust auth);" >&2
    echo "      the sink tests need it. Start it, or set WEIR_TEST_POSTGRES to a connection string." >&2
    [ "${CI:-}" = true ] && exit 1
  fi
fi

echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --release --workspace --all-targets -- -D warnings
echo "== cargo build (the weir binary the CLI and crash tests run)"
cargo build --release --workspace --bins
echo "== cargo test (real-broker suite on WEIR_TEST_KAFKA=$WEIR_TEST_KAFKA, fast suite on the mock cluster)"
cargo test --release --workspace
