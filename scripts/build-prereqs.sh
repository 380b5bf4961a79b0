#!/usr/bin/env bash
# Installs, from Debian's packages and only when missing, what building Warden needs beyond
# the Rust toolchain: cmake and libcurl's headers (rdkafka builds its bundled librdkafka
# 2.12 with cmake, and one of its sources includes curl/curl.h whatever the options) and
# the mold linker (faster links; optional). A fresh machine has none of them.
#
#   scripts/build-prereqs.sh          # install what is missing; quiet when all is there
#
# Run by scripts/serve.sh, scripts/test.sh and scripts/bench.sh.
set -euo pipefail

missing=()
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v cc >/dev/null 2>&1 || missing+=(gcc)
command -v c++ >/dev/null 2>&1 || missing+=(g++)
command -v make >/dev/null 2>&1 || missing+=(make)
dpkg-query -W -f='${Status}' libcurl4-openssl-dev 2>/dev/null | grep -q 'ok installed' \
  || [ -f /usr/include/curl/curl.h ] || [ -f /usr/include/x86_64-linux-gnu/curl/curl.h ] \
  || missing+=(libcurl4-openssl-dev)
command -v mold >/dev/null 2>&1 || missing+=(mold)
# The README's walkthrough uses them, and a test runs it.
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v jq >/dev/null 2>&1 || missing+=(jq)
[ "${#missing[@]}" -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
  echo "build-prereqs: missing ${missing[*]}; install them with your system's packages" >&2
  exit 1
fi
sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo)
echo "build-prereqs: installing ${missing[*]} (Debian packages)" >&2
"${sudo[@]}" apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >&2
