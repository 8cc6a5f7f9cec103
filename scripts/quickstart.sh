#!/usr/bin/env bash
# Quick start: build weir and run the shipped clickstream pipeline over the shipped event
# log. No broker, no Docker. Derived events go to stdout, the summary to stderr, dead
# letters to out/clickstream-dead-letter.jsonl.
cd "$(dirname "$0")/.."
. scripts/env.sh
cargo build --release -q -p weir
exec "$CARGO_TARGET_DIR/release/weir" run pipelines/clickstream.yaml --input examples/clickstream.jsonl "$@"
