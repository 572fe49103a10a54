#!/usr/bin/env python3
"""Tollgate benchmarks: bare Envoy vs Envoy + tollgate.wasm (every check on) vs LiteLLM proxy,
scaling curves over keys, request-body sizes and Envoy workers, the store (SQLite vs a real
PostgreSQL: spend ingest, admin operations, the request path), and fleet mode (the request path
on vs off; three Envoys and two replicas on PostgreSQL: lease calls, false refusals, admin changes). Run by bench/run.sh
(`./build.sh bench`); BENCHMARKS.md explains the setup and every knob.

Standard library only. Every server runs on 127.0.0.1, in its own process group, and is stopped
when the script ends; every load run is bounded by wrk's -d.
"""
import datetime
import hashlib
from http.client import HTTPConnection, HTTPException
import json
import os
import platform
import re
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target/release/tollgate")
WASM = os.path.join(ROOT, "target/wasm32-wasip1/release/tollgate.wasm")
ENVOY = os.environ.get("ENVOY_BIN") or os.path.join(ROOT, ".venv/bin/envoy")
LUA = os.path.join(ROOT, "bench/wrk.lua")
# The floor under tollgate.wasm (bench/floor-filter, built by bench/run.sh).
FLOOR_WASM = os.path.join(ROOT, "target/floor/wasm32-wasip1/release/tollgate_bench_floor.wasm")
LITELLM_VENV = os.environ.get("BENCH_LITELLM_VENV", os.path.join(ROOT, "bench/.venv-litellm"))


def env_int(name, default):
    return int(os.environ.get(name, default))


SECONDS = env_int("BENCH_SECONDS", 10)  # per run of the main comparison
ROUNDS = env_int("BENCH_ROUNDS", 2)
CONNS = env_int("BENCH_CONNECTIONS", 32)
SCALING_SECONDS = env_int("BENCH_SCALING_SECONDS", 5)  # per run of the scaling curves
ENVOY_CPUS = os.environ.get("BENCH_ENVOY_CPUS", "0")  # Envoy (and LiteLLM) run here
LOAD_CPUS = os.environ.get("BENCH_LOAD_CPUS", "1")  # wrk, the fake upstream and the sidecar
WRK_THREADS = env_int("BENCH_WRK_THREADS", 1)
MAIN = os.environ.get("BENCH_MAIN", "1") == "1"
FLOOR = os.environ.get("BENCH_FLOOR", "1") == "1"
# Other builds of tollgate.wasm (comma-separated paths) measured beside this one, alternating:
# A/B of a change within one run.
# BENCH_FLEET=1: the same run with fleet mode on (`general_settings.tollgate_fleet`): every
# budget is enforced against a leased slice (one Envoy, so the cost of the request path only).
FLEET = os.environ.get("BENCH_FLEET", "0") == "1"
# The store curve (BENCH_SCALING=store): concurrent posters / admin callers per sidecar, events per
# spend batch (the filter sends up to 100 per batch).
STORE_POSTERS = env_int("BENCH_STORE_POSTERS", 4)
STORE_BATCH = env_int("BENCH_STORE_BATCH", 100)
COMPARE_WASM = [p.strip() for p in os.environ.get("BENCH_COMPARE_WASM", "").split(",") if p.strip()]
# BENCH_COMPARE_FLEET_OFF=1: in the fleet request-path part, the BENCH_COMPARE_WASM builds run with
# fleet mode off too (an A/B of a change to both).
COMPARE_FLEET_OFF = os.environ.get("BENCH_COMPARE_FLEET_OFF", "0") == "1"
FLOOR_CALLS = env_int("BENCH_FLOOR_CALLS", 200)  # extra host calls per request when pricing one
LITELLM = os.environ.get("BENCH_LITELLM", "0") == "1"
SCALING = os.environ.get("BENCH_SCALING", "all")
KEY_COUNTS = sorted({int(x) for x in os.environ.get("BENCH_KEYS", "1,10000").split(",") if x.strip()})
BODY_SIZES = [int(x) for x in os.environ.get("BENCH_BODY_SIZES", "1000,100000,1000000").split(",")]
WORKERS = [int(x) for x in os.environ.get("BENCH_WORKERS", "1,2,4").split(",")]
OUT = os.environ.get("BENCH_OUT", os.path.join(ROOT, "bench/results.md"))
OUT_JSON = os.path.splitext(OUT)[0] + ".json"
MASTER_KEY = "sk-bench-master-0123456789"
# Limits high enough never to refuse during a run, so every check runs and every request passes.
KEY_LIMITS = {
    "max_budget": 1000000,
    "budget_duration": "30d",
    "rpm_limit": 1000000000,
    "tpm_limit": 1000000000000,
    "max_parallel_requests": 100000,
}

if SCALING in ("", "none", "0"):
    SCALING_PARTS = []
elif SCALING == "all":
    SCALING_PARTS = ["keys", "bodies", "workers", "hostcall", "store", "fleet"]
else:
    SCALING_PARTS = [p.strip() for p in SCALING.split(",") if p.strip()]
# `profile` (perf on Envoy, where available) is not part of `all`.
for p in SCALING_PARTS:
    if p not in ("keys", "bodies", "workers", "hostcall", "store", "fleet", "profile"):
        sys.exit(f"bench: BENCH_SCALING: unknown part {p!r} (keys, bodies, workers, hostcall, store, fleet, profile, all, none)")

WORK = tempfile.mkdtemp(prefix="tollgate-bench-")
PROCS = []  # Popen objects, each the leader of its own process group
PG_SERVERS = []  # PostgreSQL servers (daemons started by pg_ctl), stopped when the script ends
RESULTS = {"started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
LINES = []


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def out(line=""):
    print(line, flush=True)
    LINES.append(line)


# ---------------------------------------------------------------- processes


def spawn(args, logname, cpus, env=None):
    f = open(os.path.join(WORK, logname), "ab")
    p = subprocess.Popen(
        ["taskset", "-c", cpus] + args,
        stdout=f,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env=env,
    )
    PROCS.append(p)
    return p


def stop(p):
    if p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(timeout=10)
    else:
        # The leader is gone; make sure nothing it started is left in its group.
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    if p in PROCS:
        PROCS.remove(p)


def stop_all():
    for p in list(PROCS):
        stop(p)
    for pg in list(PG_SERVERS):
        pg.stop()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def http(method, url, body=None, headers=None, timeout=10):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, ConnectionError, socket.timeout, TimeoutError):
        return None, b""


def wait_until(what, check, timeout=60, proc=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"bench: {what}: the process exited ({proc.returncode}); logs in {WORK}")
        if check():
            return
        time.sleep(0.2)
    raise SystemExit(f"bench: {what} not ready after {timeout} s; logs in {WORK}")


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def tree(pid):
    pids = [pid]
    for c in children(pid):
        pids += tree(c)
    return pids


def rss_mb(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def cpu_seconds(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
        except OSError:
            pass
    return total / os.sysconf("SC_CLK_TCK")


def pin(pid, cpus):
    subprocess.run(["taskset", "-a", "-p", "-c", cpus, str(pid)], check=True, stdout=subprocess.DEVNULL)


# ---------------------------------------------------------------- the setups


def write_config(fake_port, fleet_mode=FLEET, name="config.yaml"):
    path = os.path.join(WORK, name)
    fleet = "  tollgate_fleet:\n    lease_ttl_seconds: 10\n" if fleet_mode else ""
    with open(path, "w") as f:
        f.write(
            f"""model_list:
  - model_name: bench-model
    litellm_params:
      model: openai/bench-model
      api_base: http://127.0.0.1:{fake_port}/v1
      api_key: sk-bench-provider
      input_cost_per_token: 0.0000001
      output_cost_per_token: 0.0000002
  # The fleet part's near-exhaustion load (as tests/fleet.rs): FLEET_CALL_BODY costs exactly
  # its reservation, $0.018, so a budget is a whole number of calls.
  - model_name: priced
    litellm_params:
      model: openai/priced-backend
      api_base: http://127.0.0.1:{fake_port}/v1
      api_key: sk-bench-provider
      input_cost_per_token: 0.001
      output_cost_per_token: 0.002
general_settings:
  master_key: os.environ/LITELLM_MASTER_KEY
{fleet}litellm_settings:
  max_budget: 1000000
"""
        )

    return path


class Fake:
    def __init__(self):
        self.port = free_port()
        self.proc = spawn([os.path.join(os.path.dirname(BIN), "tollgate-fake-llm"), "--port", str(self.port)], "fake.log", LOAD_CPUS)
        wait_until(
            "fake upstream",
            lambda: http("GET", f"http://127.0.0.1:{self.port}/v1/models")[0] == 200,
            proc=self.proc,
        )
        self.config = write_config(self.port)
        self.fleet_config = write_config(self.port, True, "config-fleet.yaml")


class Bare:
    """Envoy alone: the same listener and upstream cluster, no filter."""

    name = "bare Envoy"

    def __init__(self, fake, workers=1):
        self.port = free_port()
        yaml = subprocess.run(
            [BIN, "render", "--config", fake.config, "--format", "envoy-bare", "--port", str(self.port),
             "--envoy-admin-port", str(free_port())],
            check=True, capture_output=True, text=True, env=dict(os.environ, LITELLM_MASTER_KEY=MASTER_KEY),
        ).stdout
        yaml = self.edit_yaml(yaml.replace("address: 0.0.0.0", "address: 127.0.0.1"))  # 127.0.0.1 only
        path = os.path.join(WORK, f"bare-{self.port}.yaml")
        with open(path, "w") as f:
            f.write(yaml)
        self.proc = spawn(
            [ENVOY, "-c", path, "--concurrency", str(workers), "--disable-hot-restart", "--log-level", "error"],
            f"bare-{self.port}.log", ENVOY_CPUS,
        )
        wait_until(self.name, lambda: http("GET", f"http://127.0.0.1:{self.port}/v1/models")[0] == 200,
                   proc=self.proc)
        self.auth = "none"

    def edit_yaml(self, yaml):
        return yaml

    def envoy_pids(self):
        return [self.proc.pid]

    def all_pids(self):
        return [self.proc.pid]

    def side_pids(self):
        return []


class Floor(Bare):
    """Bare Envoy plus a minimal Wasm filter (bench/floor-filter): what any Wasm filter costs
    before it does any work of its own."""

    NAMES = {"pass": "Envoy + empty Wasm filter",
             "buffer": "Envoy + floor Wasm filter (reads both bodies)"}

    def __init__(self, fake, mode="buffer", workers=1):
        self.name = self.NAMES.get(mode, f"Envoy + floor Wasm filter ({mode})")
        self.mode = mode
        super().__init__(fake, workers)

    def edit_yaml(self, yaml):
        wasm = f"""- name: floor
            typed_config:
              '@type': type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                allow_on_headers_stop_iteration: true
                name: floor
                root_id: floor
                configuration:
                  '@type': type.googleapis.com/google.protobuf.StringValue
                  value: {json.dumps(self.mode)}
                vm_config:
                  vm_id: floor
                  runtime: envoy.wasm.runtime.v8
                  code:
                    local:
                      filename: {FLOOR_WASM}
          - name: envoy.filters.http.router"""
        edited = yaml.replace("- name: envoy.filters.http.router", wasm, 1)
        if edited == yaml:
            raise SystemExit("bench: could not place the floor filter in the bare Envoy config")
        return edited


class Tollgate:
    """`tollgate up`: the sidecar plus the Envoy it supervises, with tollgate.wasm."""

    name = "Envoy + tollgate.wasm"

    def __init__(self, fake, workers=1, data_dir=None, wasm=WASM, name=None, store=None, config=None):
        if name:
            self.name = name
        self.port, self.envoy_admin_port = free_port(), free_port()
        self.data_dir = data_dir or os.path.join(WORK, f"data-{self.port}")
        env = dict(os.environ, LITELLM_MASTER_KEY=MASTER_KEY, ENVOY_BIN=ENVOY)
        self.proc = spawn(
            [BIN, "up", "--config", config or fake.config, "--port", str(self.port), "--host", "127.0.0.1",
             "--concurrency", str(workers), "--data-dir", self.data_dir, "--wasm", wasm,
             "--envoy-log-level", "error", "--envoy-admin-port", str(self.envoy_admin_port)]
            + (["--store", store] if store else []),
            f"up-{self.port}.log", ENVOY_CPUS, env=env,
        )
        self.base = f"http://127.0.0.1:{self.port}"
        wait_until("tollgate up", lambda: self.envoy_pid() is not None, proc=self.proc)
        # The sidecar (off the request path) joins the load generator; Envoy keeps its CPUs.
        pin(self.proc.pid, LOAD_CPUS)
        pin(self.envoy_pid(), ENVOY_CPUS)
        wait_until("tollgate admin API", lambda: self.admin("GET", "/health/liveliness")[0] == 200,
                   proc=self.proc)

    def envoy_pid(self):
        for kid in children(self.proc.pid):
            try:
                with open(f"/proc/{kid}/comm") as f:
                    if "envoy" in f.read():
                        return kid
            except OSError:
                pass
        return None

    def admin(self, method, path, body=None):
        return http(method, self.base + path, body, {"Authorization": f"Bearer {MASTER_KEY}"})

    def generate_key(self, raw=None):
        body = dict(KEY_LIMITS)
        if raw:
            body["key"] = raw
        status, resp = self.admin("POST", "/key/generate", body)
        if status != 200:
            raise SystemExit(f"bench: /key/generate answered {status}: {resp[:300]!r}")
        key = json.loads(resp)["key"]
        # With file-based ECDS the filter may load a moment after the listener: wait until a
        # request with the key is served.
        wait_until(
            "the filter",
            lambda: http("POST", self.base + "/v1/chat/completions", SMALL_BODY,
                         {"Authorization": f"Bearer {key}"})[0] == 200,
            timeout=30, proc=self.proc,
        )
        self.auth = f"key:{key}"
        return key

    def envoy_pids(self):
        return [self.envoy_pid()]

    def all_pids(self):
        return [self.envoy_pid(), self.proc.pid]

    def side_pids(self):
        return [self.proc.pid]


class LiteLLM:
    """LiteLLM proxy from PyPI in its own venv, master key only (no database)."""

    name = "LiteLLM proxy (master key only)"

    def __init__(self, fake):
        exe = os.path.join(LITELLM_VENV, "bin/litellm")
        if not os.path.exists(exe):
            raise SystemExit(f"bench: {exe} missing (bench/run.sh installs it when BENCH_LITELLM=1)")
        self.port = free_port()
        env = dict(os.environ, LITELLM_MASTER_KEY=MASTER_KEY, LITELLM_LOCAL_MODEL_COST_MAP="True",
                   LITELLM_LOG="ERROR", LITELLM_TELEMETRY="False", DISABLE_SCHEMA_UPDATE="True")
        env.pop("DATABASE_URL", None)
        self.proc = spawn(
            [exe, "--config", fake.config, "--host", "127.0.0.1", "--port", str(self.port), "--num_workers", "1"],
            f"litellm-{self.port}.log", ENVOY_CPUS, env=env,
        )
        self.base = f"http://127.0.0.1:{self.port}"
        wait_until(
            "LiteLLM",
            lambda: http("POST", self.base + "/v1/chat/completions", SMALL_BODY,
                         {"Authorization": f"Bearer {MASTER_KEY}"}, timeout=30)[0] == 200,
            timeout=180, proc=self.proc,
        )
        self.auth = f"key:{MASTER_KEY}"
        # Virtual keys need LiteLLM's database (Prisma + its engine binaries): record what it says.
        status, resp = http("POST", self.base + "/key/generate", {"max_budget": 1000},
                            {"Authorization": f"Bearer {MASTER_KEY}"})
        self.key_generate = f"{status}: {resp[:200].decode(errors='replace')}"

    def envoy_pids(self):
        return tree(self.proc.pid)

    def all_pids(self):
        return tree(self.proc.pid)

    def side_pids(self):
        return []


# ---------------------------------------------------------------- load


def chat_body(stream=False, size=None):
    msg = "Say something short about benchmarks."
    body = {"model": "bench-model", "user": "bench-customer", "max_tokens": 16,
            "messages": [{"role": "user", "content": msg}]}
    if stream:
        body["stream"] = True
    if size is not None:
        pad = size - len(json.dumps(body, separators=(",", ":")))
        if pad > 0:
            body["messages"][0]["content"] = msg + " " + ("lorem ipsum " * (pad // 12 + 1))[: pad - 1]
    return body


SMALL_BODY = chat_body()


def body_file(name, body):
    path = os.path.join(WORK, name)
    with open(path, "w") as f:
        f.write(json.dumps(body, separators=(",", ":")))
    return path


def us(v):
    m = re.match(r"([\d.]+)(us|ms|s)$", v)
    return float(m.group(1)) * {"us": 1, "ms": 1e3, "s": 1e6}[m.group(2)]


def wrk(port, conns, seconds, body_path, auth, cpu_pids=(), side_pids=()):
    """One bounded wrk run; returns rps, p50/p99 (µs), non-2xx, requests, issued, and the CPU
    seconds used meanwhile by cpu_pids (all) and side_pids (a part of them)."""
    cpu0, side0 = cpu_seconds(cpu_pids), cpu_seconds(side_pids)
    t0 = time.time()
    r = subprocess.run(
        ["taskset", "-c", LOAD_CPUS, "wrk", f"-t{min(WRK_THREADS, conns)}", f"-c{conns}", f"-d{seconds}s",
         "--timeout", "10s", "--latency", "-s", LUA, f"http://127.0.0.1:{port}/v1/chat/completions", "--",
         body_path, auth],
        capture_output=True, text=True, timeout=seconds + 60,
    )
    wall = time.time() - t0
    cpu, side = cpu_seconds(cpu_pids) - cpu0, cpu_seconds(side_pids) - side0
    o = r.stdout
    try:
        res = {
            "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", o).group(1)),
            "p50": us(re.search(r"\s50%\s+(\S+)", o).group(1)),
            "p99": us(re.search(r"\s99%\s+(\S+)", o).group(1)),
            "requests": int(re.search(r"(\d+) requests in", o).group(1)),
            "non2xx": int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", o)) else 0,
            "errors": sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", o)),
            "issued": sum(int(x) for x in re.findall(r"^issued (\d+)", o, re.M)),
            "cpu": cpu,
            "cpu_side": side,
            "wall": wall,
        }
    except AttributeError:
        raise SystemExit(f"bench: could not read wrk's output:\n{o}\n{r.stderr}")
    if res["non2xx"] or res["errors"]:
        log(f"warning: port {port}: {res['non2xx']} non-2xx responses, {res['errors']} socket errors")
    return res


def med(runs, field):
    return statistics.median(r[field] for r in runs)


def fmt_ratio(a, b):
    return f"{a / b:.1%}" if b else "n/a"


def times(a, b):
    return f"{a / b:.1f}×" if b else "n/a (the other setup served nothing)"


# ---------------------------------------------------------------- parts


def main_comparison(fake):
    log("main comparison: bare Envoy vs Envoy + tollgate.wasm" + (" vs LiteLLM" if LITELLM else ""))
    small = body_file("small.json", SMALL_BODY)
    stream = body_file("stream.json", chat_body(stream=True))
    bare_setup, tg_setup = Bare(fake), Tollgate(fake)
    tg_setup.generate_key()
    floors = [Floor(fake, "pass"), Floor(fake, "buffer")] if FLOOR else []
    ll_setup = LiteLLM(fake) if LITELLM else None
    others = [Tollgate(fake, wasm=path, name=f"Envoy + {path} (compared)") for path in COMPARE_WASM]
    for other in others:
        other.generate_key()
    setups = [bare_setup, *floors, tg_setup, *others] + ([ll_setup] if ll_setup else [])
    runs = {s.name: {"tput": [], "lat": [], "stream": []} for s in setups}
    for rnd in range(1, ROUNDS + 1):
        for s in setups:
            r = runs[s.name]
            r["tput"].append(wrk(s.port, CONNS, SECONDS, small, s.auth, s.all_pids(), s.side_pids()))
            r["lat"].append(wrk(s.port, 1, SECONDS, small, s.auth))
            r["stream"].append(wrk(s.port, CONNS, SECONDS, stream, s.auth))
            log(f"round {rnd} {s.name}: {r['tput'][-1]['rps']:.0f} rps, p50 {r['lat'][-1]['p50']:.0f} µs, "
                f"stream {r['stream'][-1]['rps']:.0f} rps")
    rss = {s.name: rss_mb(s.envoy_pids()) for s in setups}
    side_rss = rss_mb([tg_setup.proc.pid])
    bare = runs[bare_setup.name]
    b_tput, b50, b99, b_str = med(bare["tput"], "rps"), med(bare["lat"], "p50"), med(bare["lat"], "p99"), \
        med(bare["stream"], "rps")

    out("## Bare Envoy vs Envoy + tollgate.wasm" + (" vs LiteLLM" if LITELLM else ""))
    out()
    out(f"Median of {ROUNDS} alternating rounds of {SECONDS} s. Throughput at {CONNS} connections, latency at "
        f"1 connection. Envoy (1 worker){' and LiteLLM (1 worker)' if LITELLM else ''} on CPU {ENVOY_CPUS}; wrk, "
        f"the fake upstream and the sidecar on CPU {LOAD_CPUS}.")
    out()
    out("| setup | rps | rps vs bare | rps (stream) | stream vs bare | p50 µs @1 | p99 µs @1 | added p50 µs "
        "| RSS MB | RSS vs bare | CPU µs/req | of which sidecar |")
    out("|---|---|---|---|---|---|---|---|---|---|---|---|")
    table = {}
    for s in setups:
        r = runs[s.name]
        tput, p50, p99, st = med(r["tput"], "rps"), med(r["lat"], "p50"), med(r["lat"], "p99"), \
            med(r["stream"], "rps")
        reqs = max(sum(x["requests"] for x in r["tput"]), 1)
        per_cpu = reqs / max(sum(x["cpu"] for x in r["tput"]), 1e-9)
        side_us = sum(x["cpu_side"] for x in r["tput"]) / reqs * 1e6
        table[s.name] = {"rps": tput, "p50": p50, "p99": p99, "stream_rps": st, "rss_mb": rss[s.name],
                         "req_per_cpu_s": per_cpu, "cpu_us_per_req": 1e6 / per_cpu, "sidecar_cpu_us_per_req": side_us,
                         "runs": r}
        out(f"| {s.name} | {tput:.0f} | {fmt_ratio(tput, b_tput)} | {st:.0f} | {fmt_ratio(st, b_str)} | {p50:.0f} "
            f"| {p99:.0f} | {p50 - b50:+.0f} | {rss[s.name]:.1f} | {rss[s.name] / rss[bare_setup.name]:.2f}× "
            f"| {1e6 / per_cpu:.0f} | {f'{side_us:.0f}' if s.side_pids() else ''} |")
    out()
    out("CPU µs/req: CPU time the setup's own processes used during the throughput runs (Envoy; Envoy + "
        "sidecar for Tollgate; every LiteLLM process) over the requests they served. Unlike rps it does not "
        "depend on how much of its core a process got on a shared machine.")
    errs = sum(x["non2xx"] + x["errors"] for r in runs.values() for k in r.values() for x in k)
    wasm_kb = os.path.getsize(WASM) / 1024
    out()
    out(f"Sidecar RSS {side_rss:.1f} MB. tollgate.wasm {wasm_kb:.0f} KB. Non-2xx responses and socket errors "
        f"in all runs: {errs}.")
    RESULTS["main"] = {"table": table, "sidecar_rss_mb": side_rss, "wasm_kb": wasm_kb, "errors": errs}
    if LITELLM:
        ll = table[ll_setup.name]
        t = table[tg_setup.name]
        out()
        out(f"Tollgate / LiteLLM, each on one core: throughput {times(t['rps'], ll['rps'])}, streamed "
            f"{times(t['stream_rps'], ll['stream_rps'])}, requests per CPU-second "
            f"{times(t['req_per_cpu_s'], ll['req_per_cpu_s'])}. "
            f"LiteLLM runs with its master key only: `/key/generate` without a database answers "
            f"`{ll_setup.key_generate}`.")
        RESULTS["main"]["litellm_key_generate"] = ll_setup.key_generate
    out()
    for s in setups:
        stop(s.proc)
    return table


# Host call kinds the request path makes, priced one kind at a time: the floor filter's mode and
# its label. FLOOR_CALLS of each are added to every request.
HOSTCALL_KINDS = {
    "reads": ("calls", "`proxy_get_shared_data` (16-byte value)"),
    "sets": ("sets", "`proxy_get_shared_data` + `proxy_set_shared_data` with its cas (16 bytes)"),
    "hdrs": ("hdrs", "`proxy_replace_header_map_value` (a request header)"),
    "counts": ("counts", "`proxy_increment_metric`"),
    "clock": ("clock", "`proxy_get_current_time_nanoseconds`"),
    "enqueue": ("enqueue", "`proxy_enqueue_shared_queue` (16 bytes; Envoy then calls the root's "
                "`on_queue_ready`, a 1 s tick dequeues)"),
}


def hostcall_price(fake):
    """Prices host calls with the floor filter, alternating: FLOOR_CALLS extra calls of one kind
    per request, for each kind the request path makes; and 8 response headers added one call
    each or by writing the map back once."""
    modes = {"base": "buffer", **{tag: f"buffer {mode}={FLOOR_CALLS}" for tag, (mode, _) in HOSTCALL_KINDS.items()},
             "add": "buffer add=8", "setmap": "buffer setmap=8"}
    log(f"host call price: floor filter in modes {list(modes.values())}")
    small = body_file("small.json", SMALL_BODY)
    setups = {tag: Floor(fake, mode) for tag, mode in modes.items()}
    runs = {tag: [] for tag in modes}
    for _ in range(ROUNDS):
        for tag, s in setups.items():
            runs[tag].append(wrk(s.port, CONNS, SCALING_SECONDS, small, s.auth, s.all_pids()))
    for s in setups.values():
        stop(s.proc)
    cpu = {tag: statistics.median(r["cpu"] / max(r["requests"], 1) * 1e6 for r in rs) for tag, rs in runs.items()}
    spread = {tag: (min(r["cpu"] / max(r["requests"], 1) * 1e6 for r in rs),
                    max(r["cpu"] / max(r["requests"], 1) * 1e6 for r in rs)) for tag, rs in runs.items()}
    per_call = {tag: (cpu[tag] - cpu["base"]) / FLOOR_CALLS for tag in HOSTCALL_KINDS}
    out("## Price of host calls")
    out()
    out(f"The floor Wasm filter (reads headers and both bodies) alone and with extra work per request; CPU µs "
        f"per request, median (min–max) of {ROUNDS} alternating {SCALING_SECONDS} s runs at {CONNS} connections:")
    out()
    out("| floor filter | CPU µs/req | over the floor | µs per call |")
    out("|---|---|---|---|")
    labels = {"base": "alone", **{tag: f"+ {FLOOR_CALLS} × {label}" for tag, (_, label) in HOSTCALL_KINDS.items()},
              "add": "+ 8 response headers, one `proxy_add_header_map_value` each",
              "setmap": "+ 8 response headers, whole map written back (`proxy_set_header_map_pairs`)"}
    for tag in modes:
        lo, hi = spread[tag]
        price = f"{per_call[tag]:.2f}" if tag in per_call else ""
        out(f"| {labels[tag]} | {cpu[tag]:.0f} ({lo:.0f}–{hi:.0f}) | {cpu[tag] - cpu['base']:+.0f} | {price} |")
    out()
    out("**µs per host call**: " + ", ".join(f"{tag} {p:.2f}" for tag, p in per_call.items()) + ".")
    out()
    RESULTS["hostcall"] = {"calls": FLOOR_CALLS, "cpu_us_per_req": cpu, "us_per_call": per_call}


PERF_PERIOD_US = 250  # one perf sample per 250 µs of CPU (cpu-clock: no hardware counters here)
PROFILE_PARTS = [
    ("jit", "wasm code (V8's JIT: the filter's own code)"),
    ("from_wasm", "called from wasm (host calls, V8 runtime, kernel under them)"),
    ("envoy", "Envoy outside the VM (HTTP, routing, V8 entry and exit)"),
    ("kernel", "kernel outside the VM (sockets, epoll)"),
]


def perf_samples(data):
    """Counts perf samples of `data` by PROFILE_PARTS: a sample is inside the VM when a JIT'd
    frame (an anonymous mapping perf names `perf-PID.map` or `[JIT]`) is on its call stack."""
    r = subprocess.run(["perf", "script", "-i", data, "-F", "ip,dso"], capture_output=True, text=True,
                       timeout=600)
    counts = {tag: 0 for tag, _ in PROFILE_PARTS}
    for sample in r.stdout.split("\n\n"):
        dsos = re.findall(r"\(([^)]*)\)\s*$", sample, re.M)
        if not dsos:
            continue
        jit = ["perf-" in d or d.startswith("[JIT]") for d in dsos]
        if jit[0]:
            counts["jit"] += 1
        elif any(jit):
            counts["from_wasm"] += 1
        elif "kernel" in dsos[0]:
            counts["kernel"] += 1
        else:
            counts["envoy"] += 1
    return counts


def envoy_profile(fake):
    """perf on Envoy's worker under load (wrk at CONNS connections), the floor filter and
    Tollgate: where each one's CPU per request goes. Envoy's binary is stripped, so the split is
    by where a sample was, not by symbol."""
    out("## Envoy profile (perf)")
    out()
    if subprocess.run(["which", "perf"], capture_output=True).returncode != 0:
        sys.exit("bench: BENCH_SCALING=profile needs perf (Debian: `apt-get install linux-perf`)")
    log("profile: perf on Envoy under wrk, the floor filter and Tollgate")
    small = body_file("small.json", SMALL_BODY)
    setups = [Floor(fake, "buffer"), Tollgate(fake)]
    setups[1].generate_key()
    rows = {}
    for s in setups:
        data = os.path.join(WORK, f"perf-{s.port}.data")
        load = subprocess.Popen(
            ["taskset", "-c", LOAD_CPUS, "wrk", "-t1", f"-c{CONNS}", f"-d{SCALING_SECONDS + 3}s", "--timeout", "10s",
             "-s", LUA, f"http://127.0.0.1:{s.port}/v1/chat/completions", "--", small, s.auth],
            stdout=subprocess.PIPE, text=True)
        time.sleep(1)
        rec = subprocess.run(["perf", "record", "-q", "-e", "cpu-clock", "-c", str(PERF_PERIOD_US * 1000), "-g",
                              "-p", str(s.envoy_pids()[0]), "-o", data, "--", "sleep", str(SCALING_SECONDS)],
                             capture_output=True, text=True, timeout=SCALING_SECONDS + 60)
        o = load.communicate(timeout=SCALING_SECONDS + 60)[0]
        m = re.search(r"Requests/sec:\s+([\d.]+)", o)
        if rec.returncode != 0 or not m:
            out(f"perf record or wrk failed for {s.name}: {rec.stderr.strip()[:300]}")
            out()
            return
        # wrk's rate over its whole run, times the recorded window.
        requests = float(m.group(1)) * SCALING_SECONDS
        counts = perf_samples(data)
        rows[s.name] = {tag: n * PERF_PERIOD_US / max(requests, 1) for tag, n in counts.items()}
        rows[s.name]["samples"] = sum(counts.values())
    for s in setups:
        stop(s.proc)
    names = [s.name for s in setups]
    out(f"`perf record -e cpu-clock -c {PERF_PERIOD_US * 1000} -g` on the Envoy process for {SCALING_SECONDS} s "
        f"under wrk ({CONNS} connections), CPU µs per request by where the sample was (perf's own overhead "
        f"included, so totals run above the main table's):")
    out()
    out("| where | " + " | ".join(names) + " | difference |")
    out("|---|" + "---|" * (len(names) + 1))
    for tag, label in PROFILE_PARTS:
        vals = [rows[n][tag] for n in names]
        out(f"| {label} | " + " | ".join(f"{v:.0f}" for v in vals) + f" | {vals[-1] - vals[0]:+.0f} |")
    totals = [sum(rows[n][t] for t, _ in PROFILE_PARTS) for n in names]
    out("| **total** | " + " | ".join(f"**{v:.0f}**" for v in totals) + f" | **{totals[-1] - totals[0]:+.0f}** |")
    out()
    RESULTS["profile"] = rows


# ---------------------------------------------------------------- the store (SQLite vs PostgreSQL)


def pg_bin_dir():
    """PostgreSQL's programs as the tests find them (tests/common/postgres.rs): PG_BIN, else the
    newest /usr/lib/postgresql/<v>/bin (Debian's package, which `./build.sh bench` installs)."""
    if os.environ.get("PG_BIN"):
        return os.environ["PG_BIN"]
    versions = []
    for v in os.listdir("/usr/lib/postgresql") if os.path.isdir("/usr/lib/postgresql") else []:
        if v.isdigit() and os.path.exists(f"/usr/lib/postgresql/{v}/bin/initdb"):
            versions.append((int(v), f"/usr/lib/postgresql/{v}/bin"))
    if versions:
        return max(versions)[1]
    found = subprocess.run(["sh", "-c", "command -v initdb"], capture_output=True, text=True).stdout.strip()
    if not found:
        raise SystemExit("bench: PostgreSQL not found (PG_BIN, /usr/lib/postgresql/*/bin or initdb on PATH)")
    return os.path.dirname(found)


class PgServer:
    """A real PostgreSQL for the store curve, started as `./build.sh test` starts one: initdb and
    pg_ctl in a scratch dir, as the `postgres` user when we are root (PostgreSQL refuses root),
    127.0.0.1 only. Durable as in production: fsync and synchronous_commit on (the defaults, set
    explicitly), so an acknowledged spend batch is on disk."""

    USER = "postgres"

    def __init__(self):
        self.bin = pg_bin_dir()
        self.root = os.geteuid() == 0
        self.dir = tempfile.mkdtemp(prefix="tollgate-bench-pg-")
        if self.root:
            if subprocess.run(["id", self.USER], capture_output=True).returncode != 0:
                subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                                self.USER], check=True)
            subprocess.run(["chown", "-R", self.USER, self.dir], check=True)
        self.data = os.path.join(self.dir, "data")
        self.port = free_port()
        # --no-sync makes initdb itself faster; the server below runs with fsync on.
        self.run("initdb", "-A", "trust", "-U", "postgres", "--no-sync", "-D", self.data)
        PG_SERVERS.append(self)
        self.run("pg_ctl", "-D", self.data, "-l", os.path.join(self.dir, "server.log"), "-w", "-t", "60", "-o",
                 f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir} -c max_connections=200 "
                 f"-c fsync=on -c synchronous_commit=on -c full_page_writes=on", "start")
        with open(os.path.join(self.data, "postmaster.pid")) as f:
            self.pid = int(f.readline())
        # The database shares the load generator's core, like the sidecar: both are off the
        # request path.
        pin(self.pid, LOAD_CPUS)

    def run(self, program, *args):
        cmd = [os.path.join(self.bin, program), *args]
        if self.root:
            cmd = ["runuser", "-u", self.USER, "--"] + cmd
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise SystemExit(f"bench: {program} failed: {r.stdout}{r.stderr}")
        return r.stdout

    def database(self, name):
        subprocess.run([os.path.join(self.bin, "psql"), "-X", "-q", "-h", "127.0.0.1", "-p", str(self.port),
                        "-U", "postgres", "-d", "postgres", "-c", f"CREATE DATABASE {name}"],
                       check=True, capture_output=True, timeout=60)
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def pids(self):
        return tree(self.pid)

    def stop(self):
        if self in PG_SERVERS:
            PG_SERVERS.remove(self)
            try:
                self.run("pg_ctl", "-D", self.data, "-w", "-m", "fast", "stop")
            finally:
                subprocess.run(["rm", "-rf", self.dir])


class Serve:
    """One `tollgate serve` replica (the sidecar alone, no Envoy) on a store: what the store curve
    posts spend batches and admin calls to. Pinned to the Envoy CPUs, which no Envoy uses then."""

    def __init__(self, fake, store=None, config=None, cpus=ENVOY_CPUS):
        self.port = free_port()
        self.data_dir = os.path.join(WORK, f"serve-{self.port}")
        args = [BIN, "serve", "--config", config or fake.config, "--port", str(self.port), "--data-dir", self.data_dir]
        env = dict(os.environ, LITELLM_MASTER_KEY=MASTER_KEY)
        self.proc = spawn(args + (["--store", store] if store else []), f"serve-{self.port}.log", cpus, env=env)
        self.base = f"http://127.0.0.1:{self.port}"
        wait_until("tollgate serve", lambda: http("GET", self.base + "/health/liveliness")[0] == 200,
                   proc=self.proc)

    def admin(self, method, path, body=None):
        return http(method, self.base + path, body, {"Authorization": f"Bearer {MASTER_KEY}"})


def cpu_list(spec):
    """taskset's CPU list syntax ("1", "0-3", "0,2") as a set."""
    cpus = set()
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


def internal_token():
    """The filter's bearer for the sidecar's internal API (`sidecar::render::internal_token`)."""
    return hashlib.sha256(f"tollgate-internal:{MASTER_KEY}".encode()).hexdigest()


def spend_event(event_id, token, now_us):
    """A spend event as the filter encodes it (`records::SpendEvent`, `contract::spend_batch_body`):
    a priced call of the bench model by the bench key and its end user."""
    return {"event_id": event_id, "request_id": event_id, "api_key": token, "end_user": "bench-customer",
            "model": "bench-model", "model_id": "bench-model", "spend_nanos": 1500, "prompt_tokens": 11,
            "completion_tokens": 2, "total_tokens": 13, "cached_tokens": 0, "status": "success",
            "call_type": "acompletion", "start_time_micros": now_us - 500, "end_time_micros": now_us}


def hammer(port, seconds, worker):
    """STORE_POSTERS threads, each on its own keep-alive connection, calling worker(conn, thread,
    n) until `seconds` have passed; the sum of what the calls return (units done) and the
    number of calls that failed."""
    import threading
    deadline = time.time() + seconds
    done, failed, crashed = [0] * STORE_POSTERS, [0] * STORE_POSTERS, []

    def loop(t):
        try:
            calls(t)
        except Exception as e:  # a bug in the bench, not a failed call: reported after the join
            crashed.append(e)

    def calls(t):
        conn = HTTPConnection("127.0.0.1", port, timeout=30)
        n = 0
        while time.time() < deadline:
            try:
                units = worker(conn, t, n)
            except (OSError, HTTPException):
                conn.close()
                conn = HTTPConnection("127.0.0.1", port, timeout=30)
                units = None
            if units is None:
                failed[t] += 1
            else:
                done[t] += units
            n += 1
        conn.close()

    # The clients run beside wrk (LOAD_CPUS): threads inherit the mask of the thread that starts them.
    mask = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpu_list(LOAD_CPUS))
    threads = [threading.Thread(target=loop, args=(t,)) for t in range(STORE_POSTERS)]
    for th in threads:
        th.start()
    os.sched_setaffinity(0, mask)
    for th in threads:
        th.join()
    if crashed:
        raise SystemExit(f"bench: a store client crashed: {crashed[0]!r}")
    return sum(done), sum(failed)


def call(conn, method, path, body, auth):
    conn.request(method, path, body=body, headers={"Authorization": auth, "Content-Type": "application/json"})
    r = conn.getresponse()
    return r.status, r.read()


def spend_ingest(serve, token, tag, seconds):
    """Spend batches of STORE_BATCH fresh events posted to the sidecar's internal spend route, as
    the filter's root context posts them; events applied per second (counted from the answers)."""
    auth = f"Bearer {internal_token()}"

    def post(conn, t, n):
        now_us = int(time.time() * 1e6)
        batch = {"events": [spend_event(f"tg-bench-{tag}-{t}-{n}-{i}", token, now_us) for i in range(STORE_BATCH)]}
        status, body = call(conn, "POST", "/tollgate/internal/v1/spend", json.dumps(batch, separators=(",", ":")),
                            auth)
        return json.loads(body)["applied"] if status == 200 else None

    return hammer(serve.port, seconds, post)


def admin_mix(serve, tag, seconds):
    """`/key/generate` then `/key/update` of the key made, alternating per thread: admin
    operations per second (each one a store transaction plus its change-log entry)."""
    auth = f"Bearer {MASTER_KEY}"
    made = {}

    def op(conn, t, n):
        if n % 2 == 0:
            body = dict(KEY_LIMITS, key_alias=f"bench-{tag}-{t}-{n}")
            status, resp = call(conn, "POST", "/key/generate", json.dumps(body), auth)
            if status == 200:
                made[t] = json.loads(resp)["key"]
        elif t in made:
            status, _ = call(conn, "POST", "/key/update",
                             json.dumps({"key": made[t], "max_budget": 1000 + n, "rpm_limit": 1000 + n}), auth)
        else:
            return None
        return 1 if status == 200 else None

    return hammer(serve.port, seconds, op)


def store_scaling(fake):
    log("store: SQLite vs PostgreSQL (spend ingest, admin operations, request path)")
    pg = PgServer()
    pg_version = subprocess.run([os.path.join(pg.bin, "postgres"), "--version"], capture_output=True,
                                text=True).stdout.strip()
    # Part 1: one `tollgate serve` per store, alternating rounds.
    serves = {"SQLite": Serve(fake), "PostgreSQL": Serve(fake, pg.database("bench_serve"))}
    tokens = {}
    for name, sv in serves.items():
        status, resp = sv.admin("POST", "/key/generate", dict(KEY_LIMITS))
        if status != 200:
            raise SystemExit(f"bench: /key/generate on {name} answered {status}: {resp[:300]!r}")
        tokens[name] = hashlib.sha256(json.loads(resp)["key"].encode()).hexdigest()
    ingest = {n: [] for n in serves}
    admin = {n: [] for n in serves}
    for rnd in range(ROUNDS):
        for name, sv in serves.items():
            db_pids = pg.pids() if name == "PostgreSQL" else []
            side0, db0, t0 = cpu_seconds([sv.proc.pid]), cpu_seconds(db_pids), time.time()
            events, failed = spend_ingest(sv, tokens[name], f"{name}-{rnd}", SCALING_SECONDS)
            wall = time.time() - t0
            ingest[name].append({"per_s": events / wall, "events": events, "failed": failed,
                                 "side_us": (cpu_seconds([sv.proc.pid]) - side0) / max(events, 1) * 1e6,
                                 "db_us": (cpu_seconds(db_pids) - db0) / max(events, 1) * 1e6})
            side0, db0, t0 = cpu_seconds([sv.proc.pid]), cpu_seconds(db_pids), time.time()
            ops, failed = admin_mix(sv, f"{name}-{rnd}", SCALING_SECONDS)
            wall = time.time() - t0
            admin[name].append({"per_s": ops / wall, "ops": ops, "failed": failed,
                                "side_us": (cpu_seconds([sv.proc.pid]) - side0) / max(ops, 1) * 1e6,
                                "db_us": (cpu_seconds(db_pids) - db0) / max(ops, 1) * 1e6})
            log(f"store round {rnd + 1} {name}: {ingest[name][-1]['per_s']:.0f} spend events/s, "
                f"{admin[name][-1]['per_s']:.0f} admin ops/s")
    for sv in serves.values():
        stop(sv.proc)
    # Part 2: the request path with each store (`tollgate up`, the main table's load).
    small = body_file("small.json", SMALL_BODY)
    ups = {"SQLite": Tollgate(fake, name="tollgate up, SQLite"),
           "PostgreSQL": Tollgate(fake, name="tollgate up, PostgreSQL", store=pg.database("bench_up"))}
    for tg in ups.values():
        tg.generate_key()
    path = {n: [] for n in ups}
    for _ in range(ROUNDS):
        for name, tg in ups.items():
            db_pids = pg.pids() if name == "PostgreSQL" else []
            db0 = cpu_seconds(db_pids)
            t = wrk(tg.port, CONNS, SCALING_SECONDS, small, tg.auth, tg.all_pids(), tg.side_pids())
            db = cpu_seconds(db_pids) - db0
            lat = wrk(tg.port, 1, SCALING_SECONDS, small, tg.auth)
            path[name].append({"rps": t["rps"], "p50": lat["p50"], "p99": lat["p99"],
                               "cpu_us": t["cpu"] / max(t["requests"], 1) * 1e6,
                               "side_us": t["cpu_side"] / max(t["requests"], 1) * 1e6,
                               "db_us": db / max(t["requests"], 1) * 1e6,
                               "errors": t["non2xx"] + t["errors"] + lat["non2xx"] + lat["errors"]})
    for tg in ups.values():
        stop(tg.proc)
    pg.stop()

    def m(runs, field):
        return statistics.median(r[field] for r in runs)

    out("## The store: SQLite vs PostgreSQL")
    out()
    out(f"{pg_version}, started for the run like `./build.sh test` starts one (initdb + pg_ctl in a scratch "
        f"dir, 127.0.0.1) with fsync, synchronous_commit and full_page_writes on; SQLite in WAL mode with "
        f"synchronous=FULL. The sidecar answers a spend batch only after its COMMIT. Median of {ROUNDS} "
        f"alternating round(s) of {SCALING_SECONDS} s per figure. The sidecar on CPU {ENVOY_CPUS} (no Envoy "
        f"runs during the first table), the load generator and PostgreSQL on CPU {LOAD_CPUS}.")
    out()
    out(f"One `tollgate serve` replica, {STORE_POSTERS} concurrent clients on keep-alive connections: spend "
        f"batches of {STORE_BATCH} fresh events each (the filter's encoding, posted to "
        f"`/tollgate/internal/v1/spend` with the internal bearer), then `/key/generate` + `/key/update` "
        f"alternating (each a key with budget and limits):")
    out()
    out("| store | spend events/s | sidecar CPU µs/event | database CPU µs/event | admin ops/s "
        "| sidecar CPU µs/op | database CPU µs/op | failed calls |")
    out("|---|---|---|---|---|---|---|---|")
    for name in serves:
        i, a = ingest[name], admin[name]
        failed = sum(r["failed"] for r in i) + sum(r["failed"] for r in a)
        db_i = f"{m(i, 'db_us'):.1f}" if name == "PostgreSQL" else "(in the sidecar)"
        db_a = f"{m(a, 'db_us'):.0f}" if name == "PostgreSQL" else "(in the sidecar)"
        out(f"| {name} | {m(i, 'per_s'):.0f} | {m(i, 'side_us'):.1f} | {db_i} | {m(a, 'per_s'):.0f} "
            f"| {m(a, 'side_us'):.0f} | {db_a} | {failed} |")
    out()
    out(f"The request path with each store: `tollgate up` (1 Envoy worker), the main table's non-streamed "
        f"load with every check on (a spend event per call, batched to the sidecar), {CONNS} connections for "
        f"throughput, 1 for latency:")
    out()
    out("| store | rps @32 | p50 µs @1 | p99 µs @1 | CPU µs/req (Envoy + sidecar) | of which sidecar "
        "| database CPU µs/req | errors |")
    out("|---|---|---|---|---|---|---|---|")
    for name in ups:
        r = path[name]
        out(f"| {name} | {m(r, 'rps'):.0f} | {m(r, 'p50'):.0f} | {m(r, 'p99'):.0f} | {m(r, 'cpu_us'):.0f} "
            f"| {m(r, 'side_us'):.0f} | {m(r, 'db_us'):.0f} | {sum(x['errors'] for x in r)} |")
    out()
    RESULTS["store"] = {"postgres": pg_version, "ingest": ingest, "admin": admin, "request_path": path,
                        "posters": STORE_POSTERS, "batch": STORE_BATCH}


# ---------------------------------------------------------------- fleet mode (three Envoys, one budget)

FLEET_ENVOYS = 3
FLEET_REPLICAS = 2
FLEET_CALL_USD = 0.018  # one FLEET_CALL_BODY call, priced exactly at its reservation
FLEET_CALL_BODY = {"model": "priced", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
FLEET_BUDGET_CALLS = env_int("BENCH_FLEET_BUDGET_CALLS", 1000)
FLEET_TRIALS = env_int("BENCH_FLEET_TRIALS", 5)  # admin-change trials per kind of change


class FleetEnvoy:
    """One Envoy of the fleet (one worker), rendered with every replica in its sidecar cluster,
    as tests/common/fleet.rs starts them."""

    def __init__(self, config, replica_ports, index):
        self.port, self.admin_port = free_port(), free_port()
        self.name = f"Envoy {index}"
        render = [BIN, "render", "--format", "envoy", "--config", config, "--port", str(self.port),
                  "--envoy-admin-port", str(self.admin_port), "--wasm", WASM]
        for p in replica_ports:
            render += ["--sidecar-port", str(p)]
        yaml = subprocess.run(render, check=True, capture_output=True, text=True,
                              env=dict(os.environ, LITELLM_MASTER_KEY=MASTER_KEY)).stdout
        path = os.path.join(WORK, f"fleet-envoy-{index}.yaml")
        with open(path, "w") as f:
            f.write(yaml.replace("address: 0.0.0.0", "address: 127.0.0.1"))
        self.proc = spawn([ENVOY, "-c", path, "--concurrency", "1", "--disable-hot-restart", "--log-level", "error"],
                          f"fleet-envoy-{index}.log", ENVOY_CPUS)
        self.base = f"http://127.0.0.1:{self.port}"
        wait_until(self.name, lambda: http("GET", self.base + "/health/liveliness")[0] == 200, proc=self.proc)

    def counters(self):
        return filter_counters(self.admin_port)


def filter_counters(admin_port):
    """The filter's own counters in an Envoy's stats: lease calls made (borrows of every
    result, renewal reports) and calls refused, by outcome."""
    status, body = http("GET", f"http://127.0.0.1:{admin_port}/stats?filter=tollgate")
    c = {"borrows": 0, "renewals": 0, "borrows_failed": 0, "refused": {}}
    for line in body.decode(errors="replace").splitlines() if status == 200 else []:
        if m := re.match(r".*lease_(borrows|renewals)_total.*: (\d+)$", line):
            c[m.group(1)] += int(m.group(2))
            if "result=.=failed;" in line and m.group(1) == "borrows":
                c["borrows_failed"] += int(m.group(2))
        elif (m := re.match(r".*outcome=\.=(\w+);.*requests_total: (\d+)$", line)) and m.group(1) != "admitted":
            c["refused"][m.group(1)] = c["refused"].get(m.group(1), 0) + int(m.group(2))
    return c


def counters_delta(a, b):
    """What happened between two filter_counters readings (b after a)."""
    refused = {k: v - a["refused"].get(k, 0) for k, v in b["refused"].items() if v - a["refused"].get(k, 0)}
    return {"borrows": b["borrows"] - a["borrows"], "renewals": b["renewals"] - a["renewals"],
            "borrows_failed": b["borrows_failed"] - a["borrows_failed"], "refused": refused}


def parallel(fns):
    """Runs the callables in threads; their results in order."""
    import threading
    results = [None] * len(fns)

    def run(i):
        results[i] = fns[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(fns))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return results


def fleet_steady(envoys, key, small, seconds, conns):
    """wrk on every Envoy at once (one key, limits far above the offered load): lease calls per
    second per Envoy, and every non-2xx answer (all of them false refusals here)."""
    before = [e.counters() for e in envoys]
    runs = parallel([lambda e=e: wrk(e.port, conns, seconds, small, f"key:{key}") for e in envoys])
    after = [e.counters() for e in envoys]
    rows = []
    for e, b, a, r in zip(envoys, before, after, runs):
        d = counters_delta(b, a)
        rows.append({"envoy": e.name, "rps": r["rps"], "requests": r["requests"], "non2xx": r["non2xx"],
                     "errors": r["errors"], "wall": r["wall"], "refused": d["refused"],
                     "borrows_failed": d["borrows_failed"],
                     "borrows_per_s": d["borrows"] / r["wall"], "renewals_per_s": d["renewals"] / r["wall"]})
    return rows


def fleet_exhaust(envoys, key, clients, cap_s):
    """Clients spread over the Envoys send FLEET_CALL_BODY until the key's budget refuses them all
    (or cap_s): each answer's time and status. A 422 answered before the fleet's last admitted
    call is a false refusal: the budget still had room (a later call got it)."""
    import threading
    body = json.dumps(FLEET_CALL_BODY)
    answers = []
    lock = threading.Lock()
    stop_at = time.time() + cap_s
    last_admit = [time.time()]

    def client(c):
        e = envoys[c % len(envoys)]
        conn = HTTPConnection("127.0.0.1", e.port, timeout=30)
        while time.time() < stop_at and time.time() - last_admit[0] < 1.0:
            try:
                status, _ = call(conn, "POST", "/v1/chat/completions", body, f"Bearer {key}")
            except (OSError, HTTPException):
                conn.close()
                conn = HTTPConnection("127.0.0.1", e.port, timeout=30)
                status = None
            now = time.time()
            with lock:
                answers.append((now, c % len(envoys), status))
                if status == 200:
                    last_admit[0] = now
        conn.close()

    mask = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpu_list(LOAD_CPUS))
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for th in threads:
        th.start()
    os.sched_setaffinity(0, mask)
    for th in threads:
        th.join()
    admitted = [t for t, _, s in answers if s == 200]
    last = max(admitted) if admitted else 0
    refused = [t for t, _, s in answers if s == 422]
    return {"admitted": len(admitted), "refused": len(refused),
            "false_refusals": sum(1 for t in refused if t < last),
            "other": sorted({str(s) for _, _, s in answers if s not in (200, 422)}),
            "other_count": sum(1 for _, _, s in answers if s not in (200, 422))}


def fleet_admin_effect(envoys, make_key, change, expect, cap_s=15):
    """Time from an admin change answered by Envoy 0 (so by one replica) until Envoys 1.. enforce
    it: each is polled with calls on its own keep-alive connection until one gets a status in
    `expect` (the change's refusal; other answers, e.g. a false refusal, do not count).
    Returns (seconds, the refusal's status) per Envoy ((None, None) if not within cap_s)."""
    key = make_key()
    body = json.dumps(FLEET_CALL_BODY)
    # Warm: every Envoy has the key's record and its leases before the change.
    for e in envoys:
        st, _ = http("POST", e.base + "/v1/chat/completions", FLEET_CALL_BODY, {"Authorization": f"Bearer {key}"})
        if st != 200:
            raise SystemExit(f"bench: fleet: warm-up call through {e.name} answered {st}")
    import threading
    changed_at = [None]
    ready = threading.Barrier(len(envoys))  # the pollers, plus the thread making the change

    def poll(e):
        conn = HTTPConnection("127.0.0.1", e.port, timeout=30)
        ready.wait()
        while changed_at[0] is None or time.time() < changed_at[0] + cap_s:
            sent = time.time()
            try:
                status, _ = call(conn, "POST", "/v1/chat/completions", body, f"Bearer {key}")
            except (OSError, HTTPException):
                conn.close()
                conn = HTTPConnection("127.0.0.1", e.port, timeout=30)
                continue
            # Only a call sent after the change started counts (one answered meanwhile may have
            # been decided before it).
            if changed_at[0] is not None and sent >= changed_at[0] and status in expect:
                conn.close()
                return time.time() - changed_at[0], status
        conn.close()
        return None, None

    def changer():
        ready.wait()
        time.sleep(0.3)  # the pollers are calling
        changed_at[0] = time.time()  # from the admin call's start: what an operator waits for
        status, resp = change(envoys[0], key)
        if status != 200:
            raise SystemExit(f"bench: fleet: the admin change answered {status}: {resp[:200]!r}")
        return None

    return parallel([lambda e=e: poll(e) for e in envoys[1:]] + [changer])[:-1]


# Keys of the request-path comparison: BENCH_FLEET_KEYS picks them (comma list).
FLEET_KEY_KINDS = {
    "all": ("all limits", KEY_LIMITS),
    "budget": ("budget only", {"max_budget": KEY_LIMITS["max_budget"], "budget_duration": KEY_LIMITS["budget_duration"]}),
    "rpm": ("rpm only", {"rpm_limit": KEY_LIMITS["rpm_limit"]}),
    "tpm": ("tpm only", {"tpm_limit": KEY_LIMITS["tpm_limit"]}),
    "parallel": ("parallel only", {"max_parallel_requests": KEY_LIMITS["max_parallel_requests"]}),
    "limits": ("rpm + tpm + parallel, no budget",
               {k: KEY_LIMITS[k] for k in ("rpm_limit", "tpm_limit", "max_parallel_requests")}),
}
# BENCH_FLEET_MULTI=0: the request-path comparison only (no PostgreSQL, no fleet of Envoys).
FLEET_MULTI = os.environ.get("BENCH_FLEET_MULTI", "1") == "1"
FLEET_MODES = ["off", "on"]  # "off", "on", then one per BENCH_COMPARE_WASM build
FLEET_KEYS = [k.strip() for k in os.environ.get("BENCH_FLEET_KEYS", "all,budget").split(",") if k.strip()]
for k in FLEET_KEYS:
    if k not in FLEET_KEY_KINDS:
        sys.exit(f"bench: BENCH_FLEET_KEYS: unknown key kind {k!r} ({', '.join(FLEET_KEY_KINDS)})")


def fleet_request_path(fake, small):
    """The request path's cost with fleet mode on vs off: two `tollgate up` (one Envoy worker,
    SQLite) on the same config but for `tollgate_fleet`, alternating rounds; one key per kind
    (BENCH_FLEET_KEYS) on each, so the leased rate-limit slices' share shows."""
    setups = {"off": Tollgate(fake, name="fleet mode off"),
              "on": Tollgate(fake, name="fleet mode on", config=fake.fleet_config)}
    # BENCH_COMPARE_WASM: other builds, fleet mode on, in the same rounds (A/B of a change).
    for path in COMPARE_WASM:
        if COMPARE_FLEET_OFF:
            mode = f"off, {os.path.basename(path)}"
            setups[mode] = Tollgate(fake, name=f"fleet mode {mode}", wasm=path)
        mode = f"on, {os.path.basename(path)}"
        setups[mode] = Tollgate(fake, name=f"fleet mode {mode}", wasm=path, config=fake.fleet_config)
    keys = {}
    for mode, tg in setups.items():
        tg.generate_key()  # waits until the filter serves
        for kind in FLEET_KEYS:
            status, resp = tg.admin("POST", "/key/generate", FLEET_KEY_KINDS[kind][1])
            if status != 200:
                raise SystemExit(f"bench: /key/generate answered {status}: {resp[:300]!r}")
            keys[(mode, kind)] = json.loads(resp)["key"]
    runs = {k: [] for k in keys}
    FLEET_MODES[:] = list(setups)
    for rnd in range(ROUNDS):
        for kind in FLEET_KEYS:
            for mode, tg in setups.items():
                # A key idle for longer than the lease TTL (while the others are measured) starts
                # cold again: slices sized from no known demand (the steady part's round 0). Only
                # the warm cost counts here, so each run follows 2 s of the same load.
                wrk(tg.port, CONNS, 2, small, f"key:{keys[(mode, kind)]}")
                before = filter_counters(tg.envoy_admin_port)
                t = wrk(tg.port, CONNS, SCALING_SECONDS, small, f"key:{keys[(mode, kind)]}", tg.all_pids(),
                        tg.side_pids())
                d = counters_delta(before, filter_counters(tg.envoy_admin_port))
                runs[(mode, kind)].append({"rps": t["rps"], "cpu_us": t["cpu"] / max(t["requests"], 1) * 1e6,
                                           "side_us": t["cpu_side"] / max(t["requests"], 1) * 1e6,
                                           "non2xx": t["non2xx"] + t["errors"], "refused": d["refused"],
                                           "borrows_per_s": d["borrows"] / t["wall"],
                                           "renewals_per_s": d["renewals"] / t["wall"]})
                r = runs[(mode, kind)][-1]
                log(f"fleet request path round {rnd + 1} {kind}, fleet {mode}: {t['rps']:.0f} rps, "
                    f"{r['cpu_us']:.0f} CPU µs/req ({r['side_us']:.0f} sidecar), borrows {r['borrows_per_s']:.1f}/s, "
                    f"renewals {r['renewals_per_s']:.1f}/s, non-2xx {r['non2xx']} {r['refused']}")
    for tg in setups.values():
        stop(tg.proc)
    return runs


def fleet_scaling(fake):
    log("fleet: request path on vs off; three Envoys and two replicas on PostgreSQL")
    small = body_file("small.json", SMALL_BODY)
    path = fleet_request_path(fake, small)
    if not FLEET_MULTI:
        fleet_report(path, None, None, None, 0)
        return
    pg = PgServer()
    url = pg.database("bench_fleet")
    replicas = [Serve(fake, url, fake.fleet_config, LOAD_CPUS) for _ in range(FLEET_REPLICAS)]
    envoys = [FleetEnvoy(fake.fleet_config, [r.port for r in replicas], i) for i in range(FLEET_ENVOYS)]
    master = {"Authorization": f"Bearer {MASTER_KEY}"}

    def generate(body):
        status, resp = http("POST", envoys[0].base + "/key/generate", body, master)
        if status != 200:
            raise SystemExit(f"bench: fleet: /key/generate answered {status}: {resp[:300]!r}")
        return json.loads(resp)["key"]

    # Steady load, far from every limit: lease calls per second, false refusals.
    key = generate(dict(KEY_LIMITS))
    for e in envoys:
        wait_until(f"{e.name} serves the key", lambda e=e: http("POST", e.base + "/v1/chat/completions", SMALL_BODY,
                   {"Authorization": f"Bearer {key}"})[0] == 200, timeout=30)
    conns = max(CONNS // FLEET_ENVOYS, 1)
    steady = []
    # Round 0 is the key's cold start: its first slices are sized from no known demand.
    for rnd in range(ROUNDS + 1):
        steady.append(fleet_steady(envoys, key, small, SCALING_SECONDS, conns))
        log(f"fleet steady round {rnd}: " + ", ".join(
            f"{r['envoy']} {r['rps']:.0f} rps {r['borrows_per_s'] + r['renewals_per_s']:.1f} lease calls/s "
            f"{r['non2xx']} non-2xx" for r in steady[-1]))
    # Near exhaustion: a budget of FLEET_BUDGET_CALLS calls spent to the end.
    exhaust = []
    for rnd in range(ROUNDS):
        k = generate({"max_budget": FLEET_BUDGET_CALLS * FLEET_CALL_USD})
        before = [e.counters() for e in envoys]
        t0 = time.time()
        r = fleet_exhaust(envoys, k, 6, 60)
        r["wall"] = time.time() - t0
        deltas = [counters_delta(b, a) for a, b in zip([e.counters() for e in envoys], before)]
        r["lease_calls"] = [d["borrows"] + d["renewals"] for d in deltas]
        exhaust.append(r)
        log(f"fleet exhaustion round {rnd + 1}: {r}")
    # Admin change through Envoy 0 until Envoys 1 and 2 enforce it.
    # A budget the pollers cannot spend meanwhile ($1 000 = 55 555 calls).
    budget_key = lambda: generate({"max_budget": 1000})
    changes = {
        "`/key/block` (then 401)": (lambda e, k: http("POST", e.base + "/key/block", {"key": k}, master), {401}),
        "`/key/update` `max_budget` $1 000 → $0.001 (then 422)":
            (lambda e, k: http("POST", e.base + "/key/update", {"key": k, "max_budget": 0.001}, master), {422}),
    }
    effect = {name: [] for name in changes}
    for trial in range(FLEET_TRIALS):
        for name, (change, expect) in changes.items():
            effect[name].append(fleet_admin_effect(envoys, budget_key, change, expect))
            log(f"fleet admin change trial {trial + 1} {name}: {effect[name][-1]}")
    for e in envoys:
        stop(e.proc)
    for r in replicas:
        stop(r.proc)
    pg.stop()
    fleet_report(path, steady, exhaust, effect, conns)


def fleet_report(path, steady, exhaust, effect, conns):
    def m(rows, field):
        return statistics.median(r[field] for r in rows)

    def span(values, fmt="{:.0f}"):
        values = sorted(values)
        return fmt.format(values[0]) if len(values) == 1 or values[0] == values[-1] else \
            f"{fmt.format(values[0])}–{fmt.format(values[-1])}"

    out("## Fleet mode")
    out()
    out(f"The request path with fleet mode on vs off: `tollgate up` (1 Envoy worker, SQLite), one key, {CONNS} "
        f"connections, median of {ROUNDS} alternating round(s) of {SCALING_SECONDS} s (range in brackets):")
    out()
    out("| key | fleet mode | rps | CPU µs/req (Envoy + sidecar) | of which sidecar | lease calls/s "
        "(borrows + renewals) | non-2xx (outcomes) |")
    out("|---|---|---|---|---|---|---|")
    for kind in FLEET_KEYS:
        label = FLEET_KEY_KINDS[kind][0]
        for mode in FLEET_MODES:
            r = path[(mode, kind)]
            outcomes = {}
            for x in r:
                for o, n in x["refused"].items():
                    outcomes[o] = outcomes.get(o, 0) + n
            out(f"| {label} | {mode} | {m(r, 'rps'):.0f} | {m(r, 'cpu_us'):.0f} ({span([x['cpu_us'] for x in r])}) "
                f"| {m(r, 'side_us'):.0f} | {m(r, 'borrows_per_s'):.1f} + {m(r, 'renewals_per_s'):.1f} "
                f"| {sum(x['non2xx'] for x in r)} {' '.join(f'{o}:{n}' for o, n in sorted(outcomes.items()))} |")
        for mode in FLEET_MODES[1:]:
            # A compared build with fleet mode on against its own fleet-off run, when there is one.
            ref = "off" + mode[2:] if mode.startswith("on, ") and "off" + mode[2:] in FLEET_MODES else "off"
            d = [on["cpu_us"] - off["cpu_us"] for on, off in zip(path[(mode, kind)], path[(ref, kind)])]
            out(f"| {label} | {mode} − {ref} (per round) | | {statistics.median(d):+.0f} ({span(d, '{:+.0f}')}) | | | |")
    out()
    if steady is None:
        RESULTS["fleet"] = {"request_path": {f"{k[1]}, fleet {k[0]}": v for k, v in path.items()}}
        return
    out(f"{FLEET_ENVOYS} Envoys (1 worker each, CPU {ENVOY_CPUS}) and {FLEET_REPLICAS} `tollgate serve` replicas "
        f"on one PostgreSQL (CPU {LOAD_CPUS}), `tollgate_fleet: {{lease_ttl_seconds: 10}}`. Steady load: wrk on "
        f"every Envoy at once, {conns} connections each, {SCALING_SECONDS} s, one key with the main table's limits "
        f"(budget $1 000 000, rpm 10⁹, tpm 10¹², 100 000 parallel): every non-2xx is a false refusal. Round 0 is "
        f"the key's first {SCALING_SECONDS} s under load (cold start: its first slices are sized from no known "
        f"demand); the request-path table above measures warm keys only.")
    out()
    out("| round | Envoy | rps | lease calls/s (borrows + renewals) | false refusals (non-2xx) / requests "
        "| refused by outcome; borrows without a usable answer |")
    out("|---|---|---|---|---|---|")
    for i, rows in enumerate(steady):
        for r in rows:
            out(f"| {i} | {r['envoy']} | {r['rps']:.0f} | {r['borrows_per_s'] + r['renewals_per_s']:.1f} "
                f"({r['borrows_per_s']:.1f} + {r['renewals_per_s']:.1f}) | {r['non2xx'] + r['errors']} / {r['requests']} "
                f"| {' '.join(f'{o}:{n}' for o, n in sorted(r['refused'].items()))}; {r['borrows_failed']} |")
    out()
    out(f"Near exhaustion: a budget of {FLEET_BUDGET_CALLS} calls (${FLEET_BUDGET_CALLS * FLEET_CALL_USD:g}, each "
        f"call ${FLEET_CALL_USD} = its reservation), 6 clients spread over the Envoys until no call was admitted "
        f"for 1 s. A false refusal is a 422 answered before the fleet's last admitted call (the budget still had "
        f"room: a later call got it).")
    out()
    out("| round | admitted | 422 | of which false | other answers | lease calls per Envoy (run) |")
    out("|---|---|---|---|---|---|")
    for i, r in enumerate(exhaust):
        out(f"| {i + 1} | {r['admitted']} | {r['refused']} | {r['false_refusals']} | "
            f"{r['other_count']} {' '.join(r['other'])} | {' / '.join(map(str, r['lease_calls']))} ({r['wall']:.1f} s) |")
    out()
    out(f"An admin change answered by Envoy 0 (so by one replica), until Envoys 1 and 2 refuse the key: each "
        f"polled with calls on one connection; seconds from the admin call's start, {FLEET_TRIALS} trials "
        f"(a fresh key each):")
    out()
    out("| change | min | median | max | not seen within 15 s |")
    out("|---|---|---|---|---|")
    for name, trials in effect.items():
        seen = [s for t in trials for s, _ in t if s is not None]
        missed = sum(1 for t in trials for s, _ in t if s is None)
        if seen:
            out(f"| {name} | {min(seen):.2f} | {statistics.median(seen):.2f} | {max(seen):.2f} | {missed} |")
        else:
            out(f"| {name} | | | | {missed} |")
    out()
    RESULTS["fleet"] = {"request_path": {f"{k[1]}, fleet {k[0]}": v for k, v in path.items()}, "steady": steady,
                        "exhaust": exhaust, "admin_effect": effect}


def seed_keys(data_dir, template_raw, first, last):
    """Insert keys sk-bench-<first..last> into the sidecar's SQLite store, each a copy of the
    template key's document (so every field is what /key/generate writes) with its own token."""
    db = sqlite3.connect(os.path.join(data_dir, "tollgate.db"), timeout=30)
    user_id, team_id, doc = db.execute("SELECT user_id, team_id, doc FROM keys WHERE token = ?",
                                       (hashlib.sha256(template_raw.encode()).hexdigest(),)).fetchone()
    template = json.loads(doc)
    template["key_alias"] = None
    chunk = 50000
    for start in range(first, last + 1, chunk):
        rows = []
        for n in range(start, min(start + chunk, last + 1)):
            raw = f"sk-bench-{n:08d}"
            token = hashlib.sha256(raw.encode()).hexdigest()
            template["token"] = token
            template["key_name"] = "sk-..." + raw[-4:]
            rows.append((token, user_id, team_id, None, json.dumps(template, separators=(",", ":"))))
        with db:
            db.executemany("INSERT OR IGNORE INTO keys (token, user_id, team_id, key_alias, doc) "
                           "VALUES (?, ?, ?, ?, ?)", rows)
    db.close()


def warm_keys(tg, small, first, last):
    """Send one request per key first..last through Envoy so the filter fetches and caches each."""
    done = first - 1
    t0 = time.time()
    while done < last:
        count = last - done
        r = wrk(tg.port, CONNS, max(2, min(10, count // 2000 + 1)), small, f"rotate:{count}:{done}")
        if r["non2xx"] or r["errors"]:
            raise SystemExit(f"bench: warm-up got {r['non2xx']} non-2xx and {r['errors']} errors")
        done += max(r["issued"] - CONNS, 1)  # the last requests in flight at the stop may not have been served
    return time.time() - t0


def keys_scaling(fake):
    log(f"keys scaling: {KEY_COUNTS}")
    small = body_file("small.json", SMALL_BODY)
    tg = Tollgate(fake)
    template = "sk-bench-00000000"
    tg.generate_key(template)
    base_rss = rss_mb(tg.envoy_pids())
    seeded = warmed = 0
    rows = []
    for n in KEY_COUNTS:
        t0 = time.time()
        if n > seeded:
            seed_keys(tg.data_dir, template, seeded + 1, n)
            seeded = n
        seed_s = time.time() - t0
        warm_s = warm_keys(tg, small, warmed + 1, n) if n > warmed else 0.0
        warm_rps = (n - warmed) / warm_s if warm_s else 0
        warmed = n
        rss_warm = rss_mb(tg.envoy_pids())
        tput = wrk(tg.port, CONNS, SCALING_SECONDS, small, f"rotate:{n}:0", tg.all_pids(), tg.side_pids())
        lat = wrk(tg.port, 1, SCALING_SECONDS, small, f"rotate:{n}:0")
        row = {"keys": n, "seed_s": seed_s, "warm_s": warm_s, "warm_rps": warm_rps, "rps": tput["rps"],
               "p50": lat["p50"], "p99": lat["p99"], "envoy_rss_mb": rss_mb(tg.envoy_pids()),
               "rss_after_warm_mb": rss_warm, "sidecar_rss_mb": rss_mb([tg.proc.pid]),
               "cpu_us_per_req": tput["cpu"] / max(tput["requests"], 1) * 1e6,
               "sidecar_cpu_us_per_req": tput["cpu_side"] / max(tput["requests"], 1) * 1e6,
               "errors": tput["non2xx"] + tput["errors"] + lat["non2xx"] + lat["errors"]}
        rows.append(row)
        log(f"{n} keys: seeded in {seed_s:.1f} s, warmed in {warm_s:.1f} s, {row['rps']:.0f} rps, "
            f"p50 {row['p50']:.0f} µs, Envoy RSS {row['envoy_rss_mb']:.1f} MB")
    # Drift on a busy machine can be larger than the effect: once every key is warm, measure the
    # rotations again in alternating rounds, so each round sees the same conditions.
    inter = {n: [] for n in KEY_COUNTS}
    for _ in range(ROUNDS):
        for n in KEY_COUNTS:
            inter[n].append(wrk(tg.port, CONNS, SCALING_SECONDS, small, f"rotate:{n}:0", tg.all_pids(),
                                tg.side_pids()))
    for row in rows:
        runs = inter[row["keys"]]
        row["alt_rps"] = med(runs, "rps")
        row["alt_cpu_us_per_req"] = statistics.median(r["cpu"] / max(r["requests"], 1) * 1e6 for r in runs)
        row["alt_sidecar_cpu_us_per_req"] = statistics.median(
            r["cpu_side"] / max(r["requests"], 1) * 1e6 for r in runs)
        row["errors"] += sum(r["non2xx"] + r["errors"] for r in runs)
    stop(tg.proc)
    first = rows[0]
    out("## Keys known to the filter")
    out()
    out(f"One `tollgate up` (1 Envoy worker), keys seeded into its SQLite store (copies of a key made by "
        f"`/key/generate` with every limit), then warmed: one request per key through Envoy, so the filter "
        f"has fetched each from the sidecar. Then {SCALING_SECONDS} s runs rotating over all the keys, one "
        f"key per request (every row uses the same rotating wrk script). Envoy RSS before any bench key: "
        f"{base_rss:.1f} MB.")
    out()
    out("| keys | seed s | warm s (new keys/s) | rps @32 | vs first row | p50 µs @1 | p99 µs @1 "
        "| CPU µs/req (Envoy + sidecar) | of which sidecar | Envoy RSS MB | Envoy RSS growth per 100 000 keys "
        "| sidecar RSS MB |")
    out("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        growth = ((r["envoy_rss_mb"] - first["envoy_rss_mb"]) / (r["keys"] - first["keys"]) * 100000
                  if r["keys"] > first["keys"] else None)
        r["rss_growth_mb_per_100k"] = growth
        warm = f" ({r['warm_rps']:.0f})" if r["warm_rps"] >= 10 else ""
        out(f"| {r['keys']:,} | {r['seed_s']:.1f} | {r['warm_s']:.1f}{warm} | {r['rps']:.0f} "
            f"| {fmt_ratio(r['rps'], first['rps'])} | {r['p50']:.0f} | {r['p99']:.0f} | {r['cpu_us_per_req']:.0f} "
            f"| {r['sidecar_cpu_us_per_req']:.0f} "
            f"| {r['envoy_rss_mb']:.1f} | {'' if growth is None else f'{growth:.1f} MB'} "
            f"| {r['sidecar_rss_mb']:.1f} |")
    out()
    out(f"Then, with all {KEY_COUNTS[-1]:,} keys warm, the same rotations again in {ROUNDS} alternating rounds "
        f"(median), which is steadier on a busy machine:")
    out()
    out("| rotating over | rps @32 | vs first row | CPU µs/req (Envoy + sidecar) | of which sidecar |")
    out("|---|---|---|---|---|")
    for r in rows:
        out(f"| {r['keys']:,} keys | {r['alt_rps']:.0f} | {fmt_ratio(r['alt_rps'], first['alt_rps'])} "
            f"| {r['alt_cpu_us_per_req']:.0f} | {r['alt_sidecar_cpu_us_per_req']:.0f} |")
    out()
    out("CPU µs/req: CPU time of Envoy and the sidecar together over the requests served in the throughput "
        "run. Warming is one request per new key, each a cold lookup (the filter asks the sidecar). "
        "Non-2xx and socket errors: " + str(sum(r["errors"] for r in rows)) + ".")
    out()
    RESULTS["keys"] = rows


def bodies_scaling(fake):
    log(f"body sizes: {BODY_SIZES}")
    bare, tg = Bare(fake), Tollgate(fake)
    tg.generate_key()
    # The floor filter holds and reads the same bodies: what buffering them costs any filter.
    floor = Floor(fake, "buffer") if FLOOR else None
    setups = [(bare, "bare")] + ([(floor, "floor")] if floor else []) + [(tg, "tollgate")]
    rows = []
    for size in BODY_SIZES:
        path = body_file(f"body-{size}.json", chat_body(size=size))
        row = {"bytes": os.path.getsize(path)}
        for s, tag in setups:
            t = wrk(s.port, CONNS, SCALING_SECONDS, path, s.auth, s.all_pids())
            lat = wrk(s.port, 1, SCALING_SECONDS, path, s.auth)
            row[tag] = {"rps": t["rps"], "p50": lat["p50"], "p99": lat["p99"],
                        "cpu_us": t["cpu"] / max(t["requests"], 1) * 1e6,
                        "errors": t["non2xx"] + t["errors"] + lat["non2xx"] + lat["errors"]}
        rows.append(row)
        log(f"{row['bytes']} B: bare {row['bare']['rps']:.0f} rps, tollgate {row['tollgate']['rps']:.0f} rps")
    for s, _ in setups:
        stop(s.proc)
    out("## Request body size")
    out()
    out(f"Non-streamed chat completions whose message is padded to the size; {SCALING_SECONDS} s per run, "
        f"1 Envoy worker. The fake upstream reads the whole body too.")
    out()
    out("| body bytes | bare rps @32 | tollgate rps @32 | ratio | bare p50 µs @1 | tollgate p50 µs @1 | added p50 µs "
        "| bare CPU µs/req | floor CPU µs/req | tollgate CPU µs/req | errors |")
    out("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        b, t, f = r["bare"], r["tollgate"], r.get("floor")
        errors = b["errors"] + t["errors"] + (f["errors"] if f else 0)
        floor_cpu = f"{f['cpu_us']:.0f}" if f else ""
        out(f"| {r['bytes']:,} | {b['rps']:.0f} | {t['rps']:.0f} | {fmt_ratio(t['rps'], b['rps'])} | {b['p50']:.0f} "
            f"| {t['p50']:.0f} | {t['p50'] - b['p50']:+.0f} | {b['cpu_us']:.0f} | {floor_cpu} "
            f"| {t['cpu_us']:.0f} | {errors} |")
    out()
    RESULTS["bodies"] = rows


def workers_scaling(fake):
    log(f"Envoy workers: {WORKERS}")
    small = body_file("small.json", SMALL_BODY)
    rows = []
    for w in WORKERS:
        bare, tg = Bare(fake, w), Tollgate(fake, w)
        tg.generate_key()
        row = {"workers": w}
        for s, tag in ((bare, "bare"), (tg, "tollgate")):
            t = wrk(s.port, CONNS, SCALING_SECONDS, small, s.auth, s.all_pids())
            lat = wrk(s.port, 1, SCALING_SECONDS, small, s.auth)
            row[tag] = {"rps": t["rps"], "p50": lat["p50"], "rss_mb": rss_mb(s.envoy_pids()),
                        "cpu_us": t["cpu"] / max(t["requests"], 1) * 1e6,
                        "errors": t["non2xx"] + t["errors"] + lat["non2xx"] + lat["errors"]}
        rows.append(row)
        log(f"{w} workers: bare {row['bare']['rps']:.0f} rps, tollgate {row['tollgate']['rps']:.0f} rps")
        stop(bare.proc)
        stop(tg.proc)
    out("## Envoy workers")
    out()
    out(f"Envoy `--concurrency` 1, 2, 4, every worker on CPU(s) {ENVOY_CPUS}; {SCALING_SECONDS} s per run. "
        f"With Envoy on one core this measures what extra workers cost (more VMs, shared data contended "
        f"between threads), not parallel speed-up, which needs more cores than this machine has "
        f"(set BENCH_ENVOY_CPUS / BENCH_LOAD_CPUS on a bigger one).")
    out()
    out("| workers | bare rps @32 | tollgate rps @32 | ratio | bare p50 µs @1 | tollgate p50 µs @1 | bare CPU µs/req "
        "| tollgate CPU µs/req | bare RSS MB | tollgate RSS MB | errors |")
    out("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        b, t = r["bare"], r["tollgate"]
        out(f"| {r['workers']} | {b['rps']:.0f} | {t['rps']:.0f} | {fmt_ratio(t['rps'], b['rps'])} | {b['p50']:.0f} "
            f"| {t['p50']:.0f} | {b['cpu_us']:.0f} | {t['cpu_us']:.0f} | {b['rss_mb']:.1f} | {t['rss_mb']:.1f} "
            f"| {b['errors'] + t['errors']} |")
    out()
    RESULTS["workers"] = rows


def targets():
    out("## Against the targets (issue 6)")
    out()
    out("| target | this run |")
    out("|---|---|")
    m = RESULTS.get("main")
    if m:
        t = m["table"]
        bare, tg = t["bare Envoy"], t["Envoy + tollgate.wasm"]
        ratio = tg["rps"] / bare["rps"]
        out(f"| ≥ 90% of bare Envoy's throughput, every check on | {'met' if ratio >= 0.9 else 'missed'}: "
            f"{ratio:.1%} (streamed {tg['stream_rps'] / bare['stream_rps']:.1%}) |")
        added = tg["p50"] - bare["p50"]
        out(f"| < 100 µs added p50 | {'met' if added < 100 else 'missed'}: {added:+.0f} µs |")
        ll = t.get("LiteLLM proxy (master key only)")
        if ll:
            per_core = tg["rps"] / ll["rps"] if ll["rps"] else float("inf")
            out(f"| ≥ 200× LiteLLM's throughput per core | {'met' if per_core >= 200 else 'missed'}: "
                f"{times(tg['rps'], ll['rps'])} (requests per CPU-second "
                f"{times(tg['req_per_cpu_s'], ll['req_per_cpu_s'])}) |")
        else:
            out("| ≥ 200× LiteLLM's throughput per core | not run (BENCH_LITELLM=1) |")
        out(f"| tollgate.wasm < 1 MB | {'met' if m['wasm_kb'] < 1024 else 'missed'}: {m['wasm_kb']:.0f} KB |")
        out(f"| sidecar < 50 MB RSS | {'met' if m['sidecar_rss_mb'] < 50 else 'missed'}: "
            f"{m['sidecar_rss_mb']:.1f} MB |")
    k = RESULTS.get("keys")
    if k and len(k) > 1:
        last = k[-1]
        out(f"| flat cost from 1 to 1 000 000 keys | {last['keys']:,} keys: {last['alt_rps'] / k[0]['alt_rps']:.1%} of "
            f"the 1-key throughput, CPU per request {last['alt_cpu_us_per_req'] - k[0]['alt_cpu_us_per_req']:+.0f} µs "
            f"(alternating rounds); as keys were added {last['rps'] / k[0]['rps']:.1%}, p50 "
            f"{last['p50'] - k[0]['p50']:+.0f} µs"
            f"{'' if last['keys'] >= 1000000 else ' (BENCH_KEYS=1,10000,1000000 for the full curve)'} |")
        out(f"| Envoy memory per 100 000 keys reported | {last['rss_growth_mb_per_100k']:.1f} MB per 100 000 keys "
            f"(measured up to {last['keys']:,}) |")
        out(f"| sidecar < 50 MB RSS with {last['keys']:,} keys | "
            f"{'met' if last['sidecar_rss_mb'] < 50 else 'missed'}: {last['sidecar_rss_mb']:.1f} MB |")
    out()


def main():
    for tool in ("wrk", "taskset"):
        if subprocess.run(["which", tool], capture_output=True).returncode != 0:
            sys.exit(f"bench: {tool} is needed")
    for f in (BIN, WASM, ENVOY):
        if not os.path.exists(f):
            sys.exit(f"bench: {f} missing (./build.sh build)")
    envoy_version = subprocess.run([ENVOY, "--version"], capture_output=True, text=True).stdout.strip()
    envoy_version = re.search(r"version: \S+/([\d.]+)", envoy_version)
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = re.search(r"model name\s*:\s*(.*)", f.read()).group(1)
    except (OSError, AttributeError):
        pass
    started = time.time()
    out(f"# Tollgate benchmark run")
    out()
    out(f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.machine()}, "
        f"{os.cpu_count()} CPUs ({cpu}), Linux {platform.release()}, Envoy "
        f"{envoy_version.group(1) if envoy_version else '?'}. Knobs: BENCH_SECONDS={SECONDS} BENCH_ROUNDS={ROUNDS} "
        f"BENCH_CONNECTIONS={CONNS} BENCH_SCALING={SCALING} BENCH_SCALING_SECONDS={SCALING_SECONDS} "
        f"BENCH_KEYS={','.join(map(str, KEY_COUNTS))} BENCH_LITELLM={int(LITELLM)} BENCH_ENVOY_CPUS={ENVOY_CPUS} "
        f"BENCH_LOAD_CPUS={LOAD_CPUS}.")
    out()
    fake = Fake()
    timings = {}
    parts = ([("main", main_comparison)] if MAIN else []) + [
        (p, {"keys": keys_scaling, "bodies": bodies_scaling, "workers": workers_scaling,
             "hostcall": hostcall_price, "profile": envoy_profile,
             "store": store_scaling, "fleet": fleet_scaling}[p]) for p in SCALING_PARTS]
    for name, fn in parts:
        t0 = time.time()
        fn(fake)
        timings[name] = time.time() - t0
        log(f"{name} took {timings[name]:.0f} s")
    targets()
    out("Time per part: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
        + f"; total {time.time() - started:.0f} s.")
    RESULTS["timings_s"] = timings
    with open(OUT, "w") as f:
        f.write("\n".join(LINES) + "\n")
    with open(OUT_JSON, "w") as f:
        json.dump(RESULTS, f, indent=1)
    log(f"wrote {OUT} and {OUT_JSON}")


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        main()
    finally:
        stop_all()
        if os.environ.get("BENCH_KEEP_WORK") != "1":
            subprocess.run(["rm", "-rf", WORK])
