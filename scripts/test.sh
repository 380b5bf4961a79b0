#!/usr/bin/env bash
# The README's test command: starts the services the tests need, then checks formatting,
# lints and runs every test of the workspace. Works on a fresh machine (installs what is
# missing from Debian's packages and PyPI, and builds the broker) and is what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

# Builds go to a cache outside the checkout so repeated runs are incremental.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/warden/target}"
# cmake and libcurl's headers (librdkafka's build), mold (the linker), when missing.
scripts/build-prereqs.sh
if command -v mold >/dev/null 2>&1 && [ -z "${RUSTFLAGS:-}" ]; then
  export RUSTFLAGS="-C link-arg=-fuse-ld=mold"
fi

eval "$(scripts/dev-services.sh)"
trap 'scripts/dev-services.sh --stop' EXIT

started=$(date +%s)
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked --no-run
# The tests take a few minutes; one that hangs fails the run here, long before CI's own limit
# (cargo names it: "has been running for over 60 seconds").
status=0
timeout --kill-after=30s 20m cargo test --workspace --locked || status=$?
if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
  echo "test.sh: the tests did not finish within 20 minutes: a test hangs (named above)" >&2
fi
[ "$status" -eq 0 ] || exit "$status"
echo "test.sh: fmt, clippy and tests passed in $(( $(date +%s) - started ))s" >&2
