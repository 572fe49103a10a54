#!/usr/bin/env bash
# Coverage-guided fuzzing of every parser on the request path (cargo fuzz / libFuzzer).
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]     (default 60 s, every target)
# Runs each target in turn for a bounded time, starting from the committed seeds
# (fuzz/seeds/<target>/) plus what earlier runs found (fuzz/corpus/<target>/, git-ignored), and
# prints per target: seconds, executions, and whether it crashed. Crashing inputs are written to
# fuzz/artifacts/<target>/; reproduce one with
#   cargo +nightly fuzz run <target> fuzz/artifacts/<target>/<file>
# Exits non-zero if any target crashed, hung or ran out of memory.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${1:-60}"
shift || true
TOOLCHAIN="${FUZZ_TOOLCHAIN:-nightly}"

die() { printf 'fuzz/run.sh: %s\n' "$*" >&2; exit 2; }
log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

[[ "$SECS" =~ ^[0-9]+$ ]] && [ "$SECS" -gt 0 ] || die "SECONDS_PER_TARGET must be a positive integer, got '$SECS'"
command -v cargo >/dev/null || { [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"; }
command -v cargo >/dev/null || die "cargo not found: install Rust with rustup (https://rustup.rs)"
if ! rustup toolchain list 2>/dev/null | grep -q "^${TOOLCHAIN}"; then
  die "cargo fuzz needs a nightly toolchain (libFuzzer instrumentation uses -Z flags) and none is installed.
Install one with:  rustup toolchain install nightly
(or set FUZZ_TOOLCHAIN to an installed nightly toolchain)"
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

if [ "$#" -gt 0 ]; then
  TARGETS=("$@")
else
  mapfile -t TARGETS < <(cargo "+$TOOLCHAIN" fuzz list)
fi
[ "${#TARGETS[@]}" -gt 0 ] || die "no fuzz targets found"

log "building ${#TARGETS[@]} fuzz targets (debug assertions and overflow checks on)"
cargo "+$TOOLCHAIN" fuzz build --debug-assertions

mkdir -p fuzz/logs
failed=0
summary=()
for t in "${TARGETS[@]}"; do
  mkdir -p "fuzz/corpus/$t" "fuzz/seeds/$t"
  log "fuzzing $t for ${SECS}s"
  logf="fuzz/logs/$t.log"
  start=$(date +%s)
  rc=0
  cargo "+$TOOLCHAIN" fuzz run --debug-assertions "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
    -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    >"$logf" 2>&1 || rc=$?
  elapsed=$(( $(date +%s) - start ))
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$logf" | tail -1 | grep -o '[0-9]*$' || true)
  [ -n "$execs" ] || execs=$(grep -o 'Done [0-9]* runs' "$logf" | tail -1 | grep -o '[0-9]*' || true)
  [ -n "$execs" ] || execs=$(grep -o '^#[0-9]*' "$logf" | tail -1 | tr -d '#' || true)
  if [ "$rc" -eq 0 ] && ! grep -q 'SUMMARY: libFuzzer\|==ERROR: libFuzzer\|deadly signal' "$logf"; then
    verdict="ok"
  else
    verdict="CRASH (exit $rc): $(grep -o 'Test unit written to [^ ]*' "$logf" | tail -1 | sed 's/Test unit written to //')"
    failed=1
    tail -40 "$logf" >&2
  fi
  summary+=("$(printf '%-14s %6ss %14s execs  %s' "$t" "$elapsed" "${execs:-?}" "$verdict")")
done

echo
printf '%-14s %7s %20s  %s\n' target time executions result
printf '%s\n' "${summary[@]}"
echo "(logs in fuzz/logs/, corpora in fuzz/corpus/, crashing inputs in fuzz/artifacts/)"
exit "$failed"
