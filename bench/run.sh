#!/usr/bin/env bash
# Tollgate benchmark: bare Envoy vs Envoy with tollgate.wasm (every check on), same machine,
# same load generator, alternating rounds. Run through `./build.sh bench`.
#
# Pinning: Envoy (1 worker) on CPU 0; wrk, the fake upstream and the sidecar on CPU 1. Both setups get the
# same pinning, so the throughput ratio is the cost of the filter on one Envoy worker.
# Knobs: BENCH_SECONDS (per run, default 10), BENCH_ROUNDS (default 2), BENCH_CONNECTIONS (32).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BIN="$ROOT/target/release/tollgate"
WASM="$ROOT/target/wasm32-wasip1/release/tollgate.wasm"
ENVOY_BIN="${ENVOY_BIN:-$ROOT/.venv/bin/envoy}"
SECONDS_PER_RUN="${BENCH_SECONDS:-10}"
ROUNDS="${BENCH_ROUNDS:-2}"
CONNS="${BENCH_CONNECTIONS:-32}"
OUT="${BENCH_OUT:-$ROOT/bench/results.md}"

command -v wrk >/dev/null || { echo "bench: installing wrk (Debian package)"; apt-get install -y -qq wrk >/dev/null || { echo "bench: wrk is needed (apt-get install wrk)" >&2; exit 1; }; }
command -v taskset >/dev/null || { echo "bench: taskset (util-linux) is needed" >&2; exit 1; }

WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
FAKE_PORT=$(free_port); BARE_PORT=$(free_port); TG_PORT=$(free_port)
export LITELLM_MASTER_KEY="sk-bench-master-0123456789"

cat > "$WORK/config.yaml" <<YAML
model_list:
  - model_name: bench-model
    litellm_params:
      model: openai/bench-model
      api_base: http://127.0.0.1:$FAKE_PORT/v1
      api_key: sk-bench-provider
      input_cost_per_token: 0.0000001
      output_cost_per_token: 0.0000002
general_settings:
  master_key: os.environ/LITELLM_MASTER_KEY
litellm_settings:
  max_budget: 1000000
YAML

wait_http() { for _ in $(seq 1 100); do curl -s -o /dev/null "$1" && return 0; sleep 0.1; done; echo "bench: $1 did not answer" >&2; exit 1; }

taskset -c 1 "$BIN" fake-llm --port "$FAKE_PORT" > "$WORK/fake.log" 2>&1 & PIDS+=($!)
wait_http "http://127.0.0.1:$FAKE_PORT/v1/models"

"$BIN" render --config "$WORK/config.yaml" --format envoy-bare --port "$BARE_PORT" --envoy-admin-port "$(free_port)" > "$WORK/bare.yaml" 2>/dev/null
taskset -c 0 "$ENVOY_BIN" -c "$WORK/bare.yaml" --concurrency 1 --disable-hot-restart --log-level error > "$WORK/bare.log" 2>&1 & PIDS+=($!); BARE_PID=$!
taskset -c 0 "$BIN" up --config "$WORK/config.yaml" --port "$TG_PORT" --host 127.0.0.1 --concurrency 1 --data-dir "$WORK/data" --wasm "$WASM" > "$WORK/up.log" 2>&1 & PIDS+=($!); UP_PID=$!
wait_http "http://127.0.0.1:$BARE_PORT/v1/models"
for _ in $(seq 1 100); do grep -q "is ready" "$WORK/up.log" && break; sleep 0.1; done
grep -q "is ready" "$WORK/up.log" || { cat "$WORK/up.log"; exit 1; }
TG_ENVOY_PID=$(pgrep -P "$UP_PID" envoy | head -1)
# Only Envoy shares CPU 0 with nothing; the sidecar (off the request path) joins wrk on CPU 1.
taskset -a -p -c 1 "$UP_PID" >/dev/null
taskset -a -p -c 0 "$TG_ENVOY_PID" >/dev/null

# A key with every check on: budget, rpm, tpm, max parallel; requests carry an end user.
KEY=$(curl -s "http://127.0.0.1:$TG_PORT/key/generate" -H "Authorization: Bearer $LITELLM_MASTER_KEY" \
  -d '{"max_budget": 1000000, "rpm_limit": 1000000000, "tpm_limit": 1000000000000, "max_parallel_requests": 100000, "budget_duration": "30d"}' \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')

body='{"model":"bench-model","user":"bench-customer","max_tokens":16,"messages":[{"role":"user","content":"Say something short about benchmarks."}]}'
stream_body='{"model":"bench-model","user":"bench-customer","stream":true,"max_tokens":16,"messages":[{"role":"user","content":"Say something short about benchmarks."}]}'
lua() { # $1 body, $2 key
  cat > "$WORK/req.lua" <<LUA
wrk.method = "POST"
wrk.body = '$1'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $2"
LUA
}
# prints "rps p50_us p99_us non2xx"
run_wrk() { # $1 port $2 conns $3 body $4 key
  lua "$3" "$4"
  local out; out=$(taskset -c 1 wrk -t1 -c"$2" -d"${SECONDS_PER_RUN}s" --latency -s "$WORK/req.lua" "http://127.0.0.1:$1/v1/chat/completions")
  python3 - "$out" <<'PY'
import re, sys
out = sys.argv[1]
def us(v):
    m = re.match(r"([\d.]+)(us|ms|s)", v); n = float(m.group(1))
    return n * {"us": 1, "ms": 1e3, "s": 1e6}[m.group(2)]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
p50 = us(re.search(r"\s50%\s+(\S+)", out).group(1)); p99 = us(re.search(r"\s99%\s+(\S+)", out).group(1))
bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
print(f"{rps:.0f} {p50:.0f} {p99:.0f} {bad.group(1) if bad else 0}")
PY
}
rss_mb() { awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }

declare -A R
for round in $(seq 1 "$ROUNDS"); do
  for mode in bare tollgate; do
    if [ "$mode" = bare ]; then port=$BARE_PORT; key=none; else port=$TG_PORT; key=$KEY; fi
    R[$mode,tput,$round]=$(run_wrk "$port" "$CONNS" "$body" "$key")
    R[$mode,lat,$round]=$(run_wrk "$port" 1 "$body" "$key")
    R[$mode,stream,$round]=$(run_wrk "$port" "$CONNS" "$stream_body" "$key")
    echo "round $round $mode: throughput(rps p50 p99 non2xx)=${R[$mode,tput,$round]} latency@1=${R[$mode,lat,$round]} stream=${R[$mode,stream,$round]}"
  done
done

python3 - "$OUT" "$ROUNDS" "$CONNS" "$SECONDS_PER_RUN" "$(rss_mb "$BARE_PID")" "$(rss_mb "$TG_ENVOY_PID")" "$(rss_mb "$UP_PID")" "$(du -k "$WASM" | cut -f1)" <<PY
import sys, statistics, datetime, platform, os
out, rounds, conns, secs, bare_rss, tg_rss, side_rss, wasm_kb = sys.argv[1:9]
rows = {}
$(for k in "${!R[@]}"; do echo "rows['$k'] = '${R[$k]}'"; done)
def col(mode, kind, i):
    return statistics.median(float(rows[f"{mode},{kind},{r}"].split()[i]) for r in range(1, int(rounds) + 1))
b_tput, t_tput = col("bare", "tput", 0), col("tollgate", "tput", 0)
b_str, t_str = col("bare", "stream", 0), col("tollgate", "stream", 0)
b50, t50 = col("bare", "lat", 1), col("tollgate", "lat", 1)
b99, t99 = col("bare", "lat", 2), col("tollgate", "lat", 2)
errs = sum(int(v.split()[3]) for v in rows.values())
lines = [
  f"Run {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC on {platform.machine()}, {os.cpu_count()} cores; Envoy 1 worker pinned to CPU 0, wrk and fake upstream on CPU 1;",
  f"median of {rounds} alternating rounds of {secs} s; throughput at {conns} connections, latency at 1 connection.",
  "",
  "| setup | rps (non-stream) | rps (stream) | p50 µs @1 conn | p99 µs @1 conn | Envoy RSS MB |",
  "|---|---|---|---|---|---|",
  f"| bare Envoy | {b_tput:.0f} | {b_str:.0f} | {b50:.0f} | {b99:.0f} | {bare_rss} |",
  f"| Envoy + tollgate.wasm, all checks | {t_tput:.0f} | {t_str:.0f} | {t50:.0f} | {t99:.0f} | {tg_rss} |",
  f"| ratio / added | {t_tput / b_tput:.1%} | {t_str / b_str:.1%} | +{t50 - b50:.0f} µs | +{t99 - b99:.0f} µs | |",
  "",
  f"Sidecar RSS: {side_rss} MB. tollgate.wasm: {wasm_kb} KB. Non-2xx responses during the runs: {errs}.",
]
open(out, "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
