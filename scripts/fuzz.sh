#!/usr/bin/env bash
# Fuzzes message decoding and the agent protocol for a bounded time each
# (default 60 s per target; FUZZ_SECONDS=N to change), growing the corpus in
# fuzz/corpus/<target>. Needs a nightly toolchain and cargo-fuzz:
#   rustup toolchain install nightly && cargo install cargo-fuzz --locked
# Crashes are written to fuzz/artifacts/<target>/ and fail this script. The
# kept corpus is replayed on stable by `cargo test` (fuzz_corpus tests), so
# commit new corpus files (cargo fuzz cmin first keeps it small).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${FUZZ_SECONDS:-60}"
for target in decode protocol; do
  echo "== fuzzing $target for ${seconds}s"
  cargo +nightly fuzz run "$target" "corpus/$target" -- \
    -max_total_time="$seconds" -max_len=65536 -timeout=10 -rss_limit_mb=4096
done
