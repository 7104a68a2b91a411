#!/usr/bin/env bash
# Installs what the integration tests need when it is missing:
#   - redis-server and openssl (the TLS test's certificates), from Debian's packages;
#   - tansu 0.6.0 (a Kafka-protocol broker), with the SQLite and memory engines.
# The tests start both themselves, on free loopback ports, and stop them afterwards.
set -euo pipefail

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

missing=()
if ! command -v redis-server >/dev/null 2>&1 && [ ! -x /usr/bin/redis-server ]; then
  missing+=(redis-server)
fi
if ! command -v openssl >/dev/null 2>&1; then
  missing+=(openssl)
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} (Debian packages)…"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
if ! command -v tansu >/dev/null 2>&1 && [ ! -x "$cargo_bin/tansu" ]; then
  echo "installing tansu 0.6.0 (cargo install; about 8 minutes on 2 cores)…"
  # Default features compile no storage engine and silently drop data.
  cargo install tansu --version 0.6.0 --locked --features libsql,dynostore
fi

echo "redis-server: $(command -v redis-server || echo /usr/bin/redis-server)"
echo "tansu: $(command -v tansu || echo "$cargo_bin/tansu")"
