#!/usr/bin/env bash
# Prints Warden's benchmark figures (release build): authorization decisions/s, durable
# audit appends/s on SQLite and PostgreSQL (heads sealed and not), audited reads/s (answered
# once durable, and queued as before), audit verification events/s, what binding a
# multi-row insert's parameters costs on SQLite (numbered and anonymous), PAN
# tokenizations/s on SQLite and PostgreSQL, the data plane end to end (HTTP → Kafka →
# stages → Delta) beside a bare rdkafka producer into the same broker (with the broker's CPU
# a record), the same through the embedded stream, and one subject erased
# from a ten-million-row Delta table and a million documents (beside the same delete without
# subject buckets). The release build of
# the data plane (DataFusion, Delta) takes about an hour cold on two cores.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/warden/target}"
scripts/build-prereqs.sh
if command -v mold >/dev/null 2>&1 && [ -z "${RUSTFLAGS:-}" ]; then
  export RUSTFLAGS="-C link-arg=-fuse-ld=mold"
fi
# An optimized broker: a debug build's CPU per record would come off the gateway's cores.
eval "$(WARDEN_TANSU_BUILD=release scripts/dev-services.sh)"
trap 'scripts/dev-services.sh --stop' EXIT
# The broker's process (from the services' PID file), for its CPU per record.
WARDEN_BENCH_BROKER_PID="$(awk '$1 == "tansu" { print $2 }' \
  "${WARDEN_CACHE:-$HOME/.cache/warden}/services.pids" 2>/dev/null || true)"
export WARDEN_BENCH_BROKER_PID
cargo bench --locked -p warden-gateway --bench foundation
cargo bench --locked -p warden-audit --bench sequencer
cargo bench --locked -p warden-audit --bench binding
cargo bench --locked -p warden-policy --bench protection
cargo bench --locked -p warden-gateway --bench pipeline
# The default deployment: the same rounds through the embedded stream (no broker).
WARDEN_BENCH_STREAM=embedded cargo bench --locked -p warden-gateway --bench pipeline
cargo bench --locked -p warden-pipeline --bench erasure
