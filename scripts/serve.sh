#!/usr/bin/env bash
# The README's first command: runs Warden on its embedded defaults (state, audit log, key,
# stream, documents and lake under ./warden-data/; no external service). On a fresh machine
# it first installs what the build needs (scripts/build-prereqs.sh). Arguments go to
# `warden serve` (`--listen ADDR`); with a config file, `cargo run --bin warden -- --config F serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build-prereqs.sh
if command -v mold >/dev/null 2>&1 && [ -z "${RUSTFLAGS:-}" ]; then
  export RUSTFLAGS="-C link-arg=-fuse-ld=mold"
fi
exec cargo run --bin warden -- serve "$@"
