#!/usr/bin/env bash
# Installs (when missing) and starts, on loopback only, the real services Warden's tests use,
# then prints the environment the tests read as `export NAME=value` lines:
#
#   eval "$(scripts/dev-services.sh)"      # start, and set up this shell
#   scripts/dev-services.sh --stop         # stop what an earlier run started (by PID)
#
# Services: PostgreSQL (state store, audit log, vault), moto (AWS KMS and S3), tansu (a
# Kafka-protocol broker, from crates.io) and nx-27017 (a MongoDB-wire server, from PyPI).
# Installs go to Debian's packages or to $WARDEN_CACHE (default ~/.cache/warden), outside the
# checkout, as does the PID file.
set -euo pipefail

CACHE="${WARDEN_CACHE:-$HOME/.cache/warden}"
PIDS="$CACHE/services.pids"
mkdir -p "$CACHE"
log() { echo "dev-services: $*" >&2; }

apt_install() {
  if [ -z "${APT_UPDATED:-}" ]; then
    apt-get update -qq >&2
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}

stop_all() {
  [ -f "$PIDS" ] || return 0
  while read -r name pid; do
    [ -n "$pid" ] || continue
    if kill -0 "$pid" 2>/dev/null; then
      log "stopping $name (pid $pid)"
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
  done < "$PIDS"
  rm -f "$PIDS"
}

if [ "${1:-}" = "--stop" ]; then
  stop_all
  exit 0
fi

# --- PostgreSQL -------------------------------------------------------------------------
PG_HOST=127.0.0.1
PG_PORT=5432
if ! command -v pg_isready >/dev/null 2>&1; then
  log "installing postgresql"
  apt_install postgresql postgresql-client
fi
if ! pg_isready -q -h "$PG_HOST" -p "$PG_PORT"; then
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  log "starting postgresql $version"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start >&2
  for _ in $(seq 1 100); do pg_isready -q -h "$PG_HOST" -p "$PG_PORT" && break; sleep 0.1; done
  pg_isready -q -h "$PG_HOST" -p "$PG_PORT" || { log "postgresql did not start"; exit 1; }
  pidfile="/var/run/postgresql/$version-main.pid"
  [ -f "$pidfile" ] && echo "postgresql $(head -n 1 "$pidfile")" >> "$PIDS"
fi
# Trust auth on loopback (as on these machines); otherwise set a known password over the
# local socket and use it.
PG_URL="postgres://postgres@$PG_HOST:$PG_PORT/postgres"
if ! psql "$PG_URL" -qtAc 'SELECT 1' >/dev/null 2>&1; then
  log "setting a password for the postgres role (loopback is not trusted)"
  su postgres -c "psql -qc \"ALTER ROLE postgres PASSWORD 'postgres'\"" >&2
  PG_URL="postgres://postgres:postgres@$PG_HOST:$PG_PORT/postgres"
  psql "$PG_URL" -qtAc 'SELECT 1' >/dev/null
fi
# Databases left by earlier test runs (each test creates its own warden_t_* database).
for db in $(psql "$PG_URL" -qtAc "SELECT datname FROM pg_database WHERE datname LIKE 'warden\_t\_%'"); do
  psql "$PG_URL" -qc "DROP DATABASE IF EXISTS \"$db\"" >/dev/null 2>&1 || true
done
log "postgresql ready at $PG_HOST:$PG_PORT"

# --- moto: AWS KMS (and S3) emulator -----------------------------------------------------
MOTO_PORT=5000
MOTO="$CACHE/moto/bin/moto_server"
if [ ! -x "$MOTO" ]; then
  log "installing moto into $CACHE/moto"
  python3 -m venv "$CACHE/moto" >&2
  "$CACHE/moto/bin/pip" install -q 'moto[server]==5.2.5' >&2
fi
# Reset answers once moto is ready (it also empties it: only on a moto we just started).
moto_ready() { curl -sf -X POST "http://127.0.0.1:$MOTO_PORT/moto-api/reset" >/dev/null 2>&1; }
moto_running() { curl -s -o /dev/null "http://127.0.0.1:$MOTO_PORT/moto-api/" 2>/dev/null; }
if ! moto_running; then
  command -v curl >/dev/null 2>&1 || apt_install curl
  log "starting moto on 127.0.0.1:$MOTO_PORT"
  nohup "$MOTO" -H 127.0.0.1 -p "$MOTO_PORT" >"$CACHE/moto.log" 2>&1 &
  echo "moto $!" >> "$PIDS"
  for _ in $(seq 1 150); do moto_ready && break; sleep 0.1; done
  moto_ready || { log "moto did not start (see $CACHE/moto.log)"; exit 1; }
fi
# The bucket the lake tests write to (moto refuses unsigned requests; any key signs).
S3_BUCKET=warden-test
curl -sf -o /dev/null --aws-sigv4 "aws:amz:us-east-1:s3" --user test:test \
  -X PUT "http://127.0.0.1:$MOTO_PORT/$S3_BUCKET" \
  || { log "cannot create the S3 bucket $S3_BUCKET in moto"; exit 1; }
log "moto ready at 127.0.0.1:$MOTO_PORT"

# --- tansu: a Kafka-protocol broker --------------------------------------------------------
# The tests use a debug build (it compiles three times faster and is fast enough for them);
# WARDEN_TANSU_BUILD=release installs and starts an optimized one beside it, for
# scripts/bench.sh: a broker built without optimizations spends on every record several
# times the CPU a deployed broker does, taken from the same two cores as the gateway's.
KAFKA_PORT=9092
case "${WARDEN_TANSU_BUILD:-debug}" in
  debug) TANSU_ROOT="$CACHE/tansu"; TANSU_FLAGS=(--debug); TANSU_TIME="about 5 minutes" ;;
  release) TANSU_ROOT="$CACHE/tansu-release"; TANSU_FLAGS=(); TANSU_TIME="about 25 minutes" ;;
  *) log "WARDEN_TANSU_BUILD: debug or release"; exit 1 ;;
esac
TANSU="$TANSU_ROOT/bin/tansu"
if [ ! -x "$TANSU" ]; then
  command -v cmake >/dev/null 2>&1 || apt_install cmake
  log "installing tansu into $TANSU_ROOT (a ${WARDEN_TANSU_BUILD:-debug} build, $TANSU_TIME)"
  # Pinned, as moto and nx-27017 are: the tests lean on 0.6's behaviour (its fetch gap).
  cargo install tansu --version 0.6.0 --locked "${TANSU_FLAGS[@]}" --no-default-features \
    --features dynostore --root "$TANSU_ROOT" >&2
fi
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if ! port_open "$KAFKA_PORT"; then
  log "starting tansu on 127.0.0.1:$KAFKA_PORT"
  nohup "$TANSU" broker --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    --storage-engine memory://tansu/ >"$CACHE/tansu.log" 2>&1 &
  echo "tansu $!" >> "$PIDS"
  for _ in $(seq 1 100); do port_open "$KAFKA_PORT" && break; sleep 0.1; done
  port_open "$KAFKA_PORT" || { log "tansu did not start (see $CACHE/tansu.log)"; exit 1; }
fi
log "tansu (Kafka protocol) ready at 127.0.0.1:$KAFKA_PORT"

# --- nx-27017: a MongoDB-wire server -------------------------------------------------------
MONGO_PORT=27017
NX="$CACHE/nx/bin/nx-27017"
if [ ! -x "$NX" ]; then
  log "installing nx-27017 into $CACHE/nx"
  python3 -m venv "$CACHE/nx" >&2
  "$CACHE/nx/bin/pip" install -q nx-27017==0.8.1 >&2
fi
if ! port_open "$MONGO_PORT"; then
  log "starting nx-27017 on 127.0.0.1:$MONGO_PORT"
  nohup "$NX" --db memory --host 127.0.0.1 -p "$MONGO_PORT" --log-file "$CACHE/nx.log" \
    >"$CACHE/nx.out" 2>&1 &
  echo "nx-27017 $!" >> "$PIDS"
  for _ in $(seq 1 100); do port_open "$MONGO_PORT" && break; sleep 0.1; done
  port_open "$MONGO_PORT" || { log "nx-27017 did not start (see $CACHE/nx.out)"; exit 1; }
fi
log "nx-27017 (MongoDB wire) ready at 127.0.0.1:$MONGO_PORT"

# --- promtool: checks and unit-tests the alert rules (taken from Debian's prometheus
# package without installing it: no Prometheus server is started) -------------------------
PROMTOOL="$CACHE/promtool/usr/bin/promtool"
if [ ! -x "$PROMTOOL" ]; then
  log "extracting promtool into $CACHE/promtool"
  rm -rf "$CACHE/promtool.tmp" && mkdir -p "$CACHE/promtool.tmp"
  (cd "$CACHE/promtool.tmp" && apt-get download prometheus >&2) \
    || { apt-get update -qq >&2 && (cd "$CACHE/promtool.tmp" && apt-get download prometheus >&2); }
  dpkg-deb -x "$CACHE"/promtool.tmp/prometheus_*.deb "$CACHE/promtool"
  rm -rf "$CACHE/promtool.tmp"
fi
"$PROMTOOL" --version >/dev/null 2>&1 || { log "promtool does not run"; exit 1; }

echo "export WARDEN_TEST_POSTGRES_URL=$PG_URL"
echo "export WARDEN_TEST_AWS_ENDPOINT=http://127.0.0.1:$MOTO_PORT"
echo "export WARDEN_TEST_S3_BUCKET=$S3_BUCKET"
echo "export WARDEN_TEST_KAFKA=127.0.0.1:$KAFKA_PORT"
echo "export WARDEN_TEST_TANSU=$TANSU"
echo "export WARDEN_TEST_MONGODB_URL=mongodb://127.0.0.1:$MONGO_PORT"
echo "export WARDEN_TEST_PROMTOOL=$PROMTOOL"
