#!/usr/bin/env bash
# Runs every test of the workspace: unit and property tests, and the
# integration tests against a real tansu broker and a real Redis (which the
# tests start on free local ports and stop again). Installs those two first if
# this machine lacks them. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
cargo test --workspace --locked "$@"
