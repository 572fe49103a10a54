#!/usr/bin/env bash
# Tollgate benchmarks (run by `./build.sh bench`): bare Envoy vs Envoy + tollgate.wasm (every check
# on) vs LiteLLM proxy (BENCH_LITELLM=1), scaling curves over keys, body sizes and Envoy workers,
# the store (SQLite vs PostgreSQL, which `./build.sh bench` installs like `./build.sh test`) and fleet
# mode (BENCH_SCALING=fleet: the request path on vs off, three Envoys + two replicas on PostgreSQL).
# The measuring is bench/bench.py; this script makes sure its tools are there. Knobs: BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

command -v wrk >/dev/null || { echo "bench: installing wrk (Debian package)"; apt-get install -y -qq wrk >/dev/null || { echo "bench: wrk is needed (apt-get install wrk)" >&2; exit 1; }; }
command -v taskset >/dev/null || { echo "bench: taskset (util-linux) is needed" >&2; exit 1; }
command -v python3 >/dev/null || { echo "bench: python3 is needed" >&2; exit 1; }

if [ "${BENCH_LITELLM:-0}" = 1 ]; then
  # LiteLLM proxy from PyPI in its own venv (git-ignored, reused by later runs).
  LITELLM_VENV="${BENCH_LITELLM_VENV:-$ROOT/bench/.venv-litellm}"
  if [ ! -x "$LITELLM_VENV/bin/litellm" ]; then
    echo "bench: installing litellm[proxy] into $LITELLM_VENV (large, once)"
    python3 -m venv "$LITELLM_VENV"
    "$LITELLM_VENV/bin/pip" install -q 'litellm[proxy]'
  fi
fi

# The floor filter (bench/floor-filter): a minimal Wasm filter measured beside tollgate.wasm.
echo "bench: building the floor filter (bench/floor-filter)"
cargo build -q --release --target wasm32-wasip1 --manifest-path "$ROOT/bench/floor-filter/Cargo.toml" \
  --target-dir "$ROOT/target/floor"

exec python3 "$ROOT/bench/bench.py"
