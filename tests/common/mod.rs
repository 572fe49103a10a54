//! Integration-test harness: a real `tollgate up` (sidecar + supervised Envoy running the built
//! `tollgate.wasm`) in front of one `tollgate-fake-llm`, on free ports, with a private data dir.
//!
//! Artifacts come from the environment that `./build.sh test` sets:
//! * `TOLLGATE_BIN`  (else the binary Cargo built for this test run),
//! * `TOLLGATE_WASM` (else `target/wasm32-wasip1/release/tollgate.wasm`),
//! * `ENVOY_BIN`     (else `.venv/bin/envoy`, else `envoy` on `PATH`).
//!
//! A missing artifact FAILS the test with a message saying how to build it; nothing is skipped.
//!
//! The store: SQLite in the stack's data dir, unless `TOLLGATE_TEST_STORE=postgres`: then every
//! stack that names no store itself gets a fresh database on the test binary's PostgreSQL
//! server ([`postgres::shared`]), kept for its data dir (a restart on the same data dir finds
//! the same records). `./build.sh test` runs every suite that goes through the store both ways
//! (`PG_SUITES` in build.sh).
//!
//! Children are started with a piped stdin and `--exit-on-stdin-eof`, so dropping the stdin (in
//! `Drop`, or when the test process dies) stops them, and `tollgate up` then kills its Envoy.
#![allow(dead_code)]

pub mod fleet;
pub mod istio;
pub mod postgres;
pub mod prometheus;
pub mod split;

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Master key written into the default config.
pub const MASTER_KEY: &str = "sk-tollgate-it-master-7f3a9c1e";
/// The key the fake upstream requires (`--require-api-key`); a wrong one answers 401 there.
pub const PROVIDER_KEY: &str = "sk-provider-secret-5d2b8e4f";

/// How long `tollgate up` may take to print its ready line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A config with several deployments on the fake upstream. Placeholders: `@FAKE_PORT@`,
/// `@PROVIDER_KEY@`, `@MASTER_KEY@` (see [`render_template`]).
pub const DEFAULT_CONFIG: &str = r#"
model_list:
  - model_name: gpt-4o-mini
    litellm_params:
      model: openai/gpt-4o-mini-backend
      api_base: http://127.0.0.1:@FAKE_PORT@/v1
      api_key: @PROVIDER_KEY@
  - model_name: gpt-4o
    litellm_params:
      model: openai/gpt-4o
      api_base: http://127.0.0.1:@FAKE_PORT@/v1
      api_key: @PROVIDER_KEY@
    model_info:
      access_groups: ["premium"]
  - model_name: text-embedding-3-small
    litellm_params:
      model: openai/text-embedding-3-small
      api_base: http://127.0.0.1:@FAKE_PORT@/v1
      api_key: @PROVIDER_KEY@
  - model_name: gpt-3.5-turbo-instruct
    litellm_params:
      model: openai/gpt-3.5-turbo-instruct
      api_base: http://127.0.0.1:@FAKE_PORT@/v1
      api_key: @PROVIDER_KEY@
  - model_name: llama-3-70b
    litellm_params:
      model: groq/llama-3-70b-versatile
      api_base: http://127.0.0.1:@FAKE_PORT@/v1
      api_key: @PROVIDER_KEY@
  - model_name: public-chat
    litellm_params:
      model: openai/backend-chat-v2
      api_base: http://127.0.0.1:@FAKE_PORT@/v1
      api_key: @PROVIDER_KEY@
  - model_name: root-base-chat
    litellm_params:
      model: openai/root-backend
      api_base: http://127.0.0.1:@FAKE_PORT@/
      api_key: @PROVIDER_KEY@
general_settings:
  master_key: @MASTER_KEY@
"#;

/// Every model name in [`DEFAULT_CONFIG`], in config order.
pub const DEFAULT_MODELS: [&str; 7] = [
    "gpt-4o-mini",
    "gpt-4o",
    "text-embedding-3-small",
    "gpt-3.5-turbo-instruct",
    "llama-3-70b",
    "public-chat",
    "root-base-chat",
];

pub fn render_template(template: &str, fake_port: u16) -> String {
    template
        .replace("@FAKE_PORT@", &fake_port.to_string())
        .replace("@PROVIDER_KEY@", PROVIDER_KEY)
        .replace("@MASTER_KEY@", MASTER_KEY)
}

// ---------------------------------------------------------------------------------------------
// Artifacts

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `tollgate` binary: `TOLLGATE_BIN`, else the one Cargo built for this test run.
pub fn tollgate_bin() -> PathBuf {
    let path = std::env::var_os("TOLLGATE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_tollgate")));
    assert!(
        path.is_file(),
        "the tollgate binary {} does not exist: run `./build.sh build` (or set TOLLGATE_BIN)",
        path.display()
    );
    path
}

/// The fake upstream: `tollgate-fake-llm` beside [`tollgate_bin`] when `TOLLGATE_BIN` is set, else
/// the one Cargo built for this test run.
pub fn fake_llm_bin() -> PathBuf {
    let path = match std::env::var_os("TOLLGATE_BIN") {
        Some(bin) => PathBuf::from(bin).with_file_name("tollgate-fake-llm"),
        None => PathBuf::from(env!("CARGO_BIN_EXE_tollgate-fake-llm")),
    };
    assert!(
        path.is_file(),
        "the fake upstream {} does not exist: run `./build.sh build`",
        path.display()
    );
    path
}

/// The filter module: `TOLLGATE_WASM`, else the release build in `target/`.
pub fn tollgate_wasm() -> PathBuf {
    let path = std::env::var_os("TOLLGATE_WASM")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest_dir().join("target/wasm32-wasip1/release/tollgate.wasm"));
    assert!(
        path.is_file(),
        "the filter module {} does not exist: run `./build.sh build` \
         (cargo build --release --lib --target wasm32-wasip1) or set TOLLGATE_WASM",
        path.display()
    );
    path
}

/// Envoy: `ENVOY_BIN`, else the project's `.venv`, else `envoy` on `PATH`.
pub fn envoy_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("ENVOY_BIN") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "ENVOY_BIN={} does not exist: run `./build.sh build` (it installs Envoy into .venv)",
            p.display()
        );
        return p;
    }
    let venv = manifest_dir().join(".venv/bin/envoy");
    if venv.is_file() {
        return venv;
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join("envoy");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "Envoy not found (no ENVOY_BIN, no {}, no envoy on PATH): run `./build.sh build`, which \
         installs it; these integration tests need a real Envoy",
        venv.display()
    );
}

// ---------------------------------------------------------------------------------------------
// The store under test

/// The store the suites run on: `TOLLGATE_TEST_STORE` (`sqlite`, the default, or `postgres`).
pub fn test_store_is_postgres() -> bool {
    match std::env::var("TOLLGATE_TEST_STORE").as_deref() {
        Err(_) | Ok("") | Ok("sqlite") => false,
        Ok("postgres") => true,
        Ok(other) => panic!("TOLLGATE_TEST_STORE={other}: expected sqlite or postgres"),
    }
}

/// `--store URL` for a sidecar on `data_dir` when the suites run on PostgreSQL (a database of
/// the test binary's server, made once per data dir and remembered in it), else nothing.
pub fn test_store_args(data_dir: &Path) -> Vec<String> {
    if !test_store_is_postgres() {
        return Vec::new();
    }
    let remembered = data_dir.join("test-store-url");
    let url = match std::fs::read_to_string(&remembered) {
        Ok(url) => url,
        Err(_) => {
            let url = postgres::shared().database("stack");
            std::fs::create_dir_all(data_dir).expect("create the data dir");
            std::fs::write(&remembered, &url).expect("remember the store URL");
            url
        }
    };
    vec!["--store".to_string(), url]
}

/// The PostgreSQL database [`test_store_args`] made for `data_dir`, if any: its name.
pub fn test_store_database(data_dir: &Path) -> Option<String> {
    let url = std::fs::read_to_string(data_dir.join("test-store-url")).ok()?;
    url.rsplit('/').next().map(str::to_string)
}

// ---------------------------------------------------------------------------------------------
// Scratch directories

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A fresh, unique directory under the system temp dir. Removed on drop (kept if the test
/// panicked, for the logs).
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "tollgate-it-{tag}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept {} for inspection", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A port that was free a moment ago, and never one this test process was given before: two
/// ports taken before either is bound (Envoy's listener and admin port) could otherwise be the
/// same, as the kernel picks a `bind(0)` port at random each time.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        if GIVEN.lock().unwrap_or_else(|e| e.into_inner()).insert(port) {
            return port;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Child processes

/// A child that stops when its stdin closes. Drop closes stdin, waits, then kills.
pub struct Proc {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Proc {
    fn spawn(name: &str, cmd: &mut Command) -> Proc {
        cmd.stdin(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        let stdin = child.stdin.take();
        Proc {
            name: name.to_string(),
            child,
            stdin,
        }
    }

    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Closes stdin (asks for a clean stop) and waits up to `grace`, then kills.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        drop(self.stdin.take());
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("{} did not stop within {grace:?}; killing it", self.name);
        let _ = self.child.kill();
        self.child.wait().ok()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(10));
    }
}

/// Forwards each stdout line of `child` to a channel (the thread ends at EOF).
fn line_channel(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    if let Some(out) = child.stdout.take() {
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    // Nobody listens any more; keep draining so the child never blocks.
                    continue;
                }
            }
        });
    }
    rx
}

fn read_file(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Runs a command to completion (stdin held open), failing the test if it takes longer than
/// `timeout`. Returns (status, stdout, stderr).
pub fn run_to_exit(
    name: &str,
    cmd: &mut Command,
    timeout: Duration,
) -> (ExitStatus, String, String) {
    let scratch = TempDir::new("run");
    let out_path = scratch.path().join("stdout");
    let err_path = scratch.path().join("stderr");
    let out = std::fs::File::create(&out_path).expect("create stdout file");
    let err = std::fs::File::create(&err_path).expect("create stderr file");
    cmd.stdout(Stdio::from(out)).stderr(Stdio::from(err));
    let mut proc = Proc::spawn(name, cmd);
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = proc.try_wait() {
            break status;
        }
        if Instant::now() > deadline {
            proc.stop(Duration::from_secs(10));
            panic!(
                "{name} did not exit within {timeout:?} (it hangs).\nstdout:\n{}\nstderr:\n{}",
                read_file(&out_path),
                read_file(&err_path)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, read_file(&out_path), read_file(&err_path))
}

// ---------------------------------------------------------------------------------------------
// HTTP

/// A response of any status.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    /// Lowercase names; repeated headers appear once per value.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}); status {}, body: {}",
                self.status, self.body
            )
        })
    }

    /// Asserts the status, with the body in the failure message.
    pub fn assert_status(&self, status: u16) -> &Resp {
        assert_eq!(
            self.status, status,
            "expected HTTP {status}, got {}; body: {}",
            self.status, self.body
        );
        self
    }

    /// Asserts LiteLLM's error envelope (`{"error":{"message","type","param","code"}}` with
    /// `code` the status as a string) and returns the inner `error` object.
    pub fn assert_error(&self, status: u16, error_type: &str) -> Value {
        self.assert_status(status);
        let v = self.json();
        let err = v
            .get("error")
            .unwrap_or_else(|| panic!("no `error` object in {}", self.body))
            .clone();
        assert_eq!(
            err.get("type").and_then(Value::as_str),
            Some(error_type),
            "error.type; body: {}",
            self.body
        );
        assert_eq!(
            err.get("code"),
            Some(&Value::String(status.to_string())),
            "error.code must be the status as a string; body: {}",
            self.body
        );
        assert!(
            err.get("message").is_some_and(Value::is_string),
            "error.message must be a string; body: {}",
            self.body
        );
        assert!(
            err.get("param").is_some(),
            "error.param must be present (null when unset); body: {}",
            self.body
        );
        err
    }

    /// [`Resp::assert_error`] plus the exact message.
    pub fn assert_error_message(&self, status: u16, error_type: &str, message: &str) -> Value {
        let err = self.assert_error(status, error_type);
        assert_eq!(
            err["message"].as_str(),
            Some(message),
            "error.message; body: {}",
            self.body
        );
        err
    }
}

pub fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .redirects(0)
        .build()
}

/// One request; any status comes back as a [`Resp`], transport errors fail the test.
pub fn send(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Resp {
    let mut req = agent.request(method, url);
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let result = match body {
        Some(b) => req.send_string(b),
        None => req.call(),
    };
    let response = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(ureq::Error::Transport(t)) => panic!("{method} {url}: transport error: {t}"),
    };
    let status = response.status();
    let mut headers = Vec::new();
    for name in response.headers_names() {
        for value in response.all(&name) {
            headers.push((name.to_ascii_lowercase(), value.to_string()));
        }
    }
    let body = response
        .into_string()
        .unwrap_or_else(|e| panic!("{method} {url}: cannot read the body: {e}"));
    Resp {
        status,
        headers,
        body,
    }
}

// ---------------------------------------------------------------------------------------------
// The stack

/// The fake upstream, on a port it picks itself (no race: read from its first line).
fn start_fake(scratch: &Path) -> (Proc, u16) {
    let fake_err = scratch.join("fake-llm.stderr");
    let mut fake_cmd = Command::new(fake_llm_bin());
    fake_cmd
        .args(["--host", "127.0.0.1", "--port", "0"])
        .args(["--require-api-key", PROVIDER_KEY, "--exit-on-stdin-eof"])
        .stdout(Stdio::piped())
        .stderr(Stdio::from(
            std::fs::File::create(&fake_err).expect("create fake-llm stderr file"),
        ));
    let mut fake = Proc::spawn("tollgate-fake-llm", &mut fake_cmd);
    let fake_lines = line_channel(&mut fake.child);
    let fake_port = wait_for_line(
        &mut fake,
        &fake_lines,
        "fake-llm listening on http://",
        Duration::from_secs(15),
        &fake_err,
    )
    .rsplit(':')
    .next()
    .and_then(|p| p.trim().parse::<u16>().ok())
    .expect("fake-llm printed no port");
    (fake, fake_port)
}

/// How to start a [`Stack`].
#[derive(Default)]
pub struct StackOptions {
    /// Config template (placeholders as in [`DEFAULT_CONFIG`]).
    pub config: String,
    /// Reuse this data dir (e.g. to restart on the same store); default: a fresh one.
    pub data_dir: Option<PathBuf>,
    /// Extra environment for `tollgate up` (LITELLM_MASTER_KEY is removed unless set here).
    pub env: Vec<(String, String)>,
    /// Envoy worker threads (`--concurrency`); default 2.
    pub concurrency: Option<u16>,
    /// More arguments for `tollgate up` (e.g. `--store URL`).
    pub args: Vec<String>,
}

/// fake-llm + `tollgate up` (sidecar and Envoy with the filter), stopped on drop.
pub struct Stack {
    /// Envoy's listener: LLM routes and admin API.
    pub port: u16,
    /// The fake upstream, reachable directly.
    pub fake_port: u16,
    pub data_dir: PathBuf,
    pub agent: ureq::Agent,
    // Field order is drop order: `tollgate up` (and its Envoy) first, then the fake, then dirs.
    // In a split stack ([`Stack::start_split`]) `up` is Envoy itself and `sidecar` is
    // `tollgate serve`; in a replica stack ([`Stack::start_replicas`]) `up` is Envoy and
    // `replicas` are the `tollgate serve` replicas of its sidecar cluster.
    up: Proc,
    sidecar: Option<split::Sidecar>,
    replicas: Vec<postgres::Replica>,
    fake: Proc,
    scratch: TempDir,
    own_data: Option<TempDir>,
}

impl Stack {
    /// A stack on `config_template` with a fresh data dir.
    pub fn start(config_template: &str) -> Stack {
        Stack::start_with(StackOptions {
            config: config_template.to_string(),
            ..Default::default()
        })
    }

    /// The default config.
    pub fn default_config() -> Stack {
        Stack::start(DEFAULT_CONFIG)
    }

    /// A stack on an existing data dir (its SQLite store survives between stacks).
    pub fn start_with_data_dir(config_template: &str, data_dir: &Path) -> Stack {
        Stack::start_with(StackOptions {
            config: config_template.to_string(),
            data_dir: Some(data_dir.to_path_buf()),
            ..Default::default()
        })
    }

    pub fn start_with(opts: StackOptions) -> Stack {
        let bin = tollgate_bin();
        let wasm = tollgate_wasm();
        let envoy = envoy_bin();
        let scratch = TempDir::new("stack");

        let (fake, fake_port) = start_fake(scratch.path());

        let config_path = scratch.path().join("config.yaml");
        std::fs::write(&config_path, render_template(&opts.config, fake_port))
            .expect("write config.yaml");

        let (own_data, data_dir) = match &opts.data_dir {
            Some(d) => (None, d.clone()),
            None => {
                let d = TempDir::new("data");
                let p = d.path().to_path_buf();
                (Some(d), p)
            }
        };

        let names_a_store = opts.args.iter().any(|a| a == "--store")
            || opts.env.iter().any(|(k, _)| k == "DATABASE_URL");
        let store_args = if names_a_store {
            Vec::new()
        } else {
            test_store_args(&data_dir)
        };

        // Envoy binds the port itself; if another process took it meanwhile, try another.
        let mut attempt = 0;
        let (up, port) = loop {
            attempt += 1;
            let port = free_port();
            let up_err = scratch.path().join(format!("up-{attempt}.stderr"));
            let mut cmd = Command::new(&bin);
            cmd.arg("up")
                .arg("--config")
                .arg(&config_path)
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .arg("--data-dir")
                .arg(&data_dir)
                .arg("--wasm")
                .arg(&wasm)
                .arg("--concurrency")
                .arg(opts.concurrency.unwrap_or(2).to_string())
                // Stacks run side by side: not the fixed default.
                .args(["--envoy-admin-port", "0"])
                .arg("--exit-on-stdin-eof")
                .args(&store_args)
                .args(&opts.args)
                .env("ENVOY_BIN", &envoy)
                .env_remove("LITELLM_MASTER_KEY")
                .env_remove("TOLLGATE_WASM")
                .stdout(Stdio::piped())
                .stderr(Stdio::from(
                    std::fs::File::create(&up_err).expect("create up stderr file"),
                ));
            for (k, v) in &opts.env {
                cmd.env(k, v);
            }
            let mut up = Proc::spawn("tollgate up", &mut cmd);
            let lines = line_channel(&mut up.child);
            match wait_for_line_result(&mut up, &lines, "tollgate is ready on", READY_TIMEOUT) {
                Ok(_) => break (up, port),
                Err(why) => {
                    drop(up);
                    let stderr = read_file(&up_err);
                    // Taken between `free_port` and Envoy's bind (other processes on this
                    // machine): `tollgate up` says so, or Envoy's listener fails with EADDRINUSE.
                    let port_taken = stderr.contains("is in use; pick another")
                        || stderr.contains("cannot listen() errno=98");
                    if attempt < 3 && port_taken {
                        continue;
                    }
                    panic!(
                        "`tollgate up` did not become ready: {why}\n--- its stderr ---\n{stderr}\n--- end ---"
                    );
                }
            }
        };

        let stack = Stack {
            port,
            fake_port,
            data_dir,
            agent: agent(),
            up,
            sidecar: None,
            replicas: Vec::new(),
            fake,
            scratch,
            own_data,
        };
        assert!(
            store_args.is_empty() || !stack.data_dir.join("tollgate.db").exists(),
            "TOLLGATE_TEST_STORE=postgres, yet the sidecar made a SQLite store"
        );
        // Prove the answers come from Envoy (not some other process on the port).
        let live = stack.get("/health/liveliness", None);
        live.assert_status(200);
        assert_eq!(
            live.header("server"),
            Some("envoy"),
            "health answer did not come through Envoy: {live:?}"
        );
        stack
    }

    /// Stops everything now (same as dropping).
    pub fn stop(self) {}

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Any method, any headers, optional body.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Resp {
        send(&self.agent, method, &self.url(path), headers, body)
    }

    /// POST with a JSON content type and, if given, `Authorization: Bearer <auth>`.
    pub fn post(&self, path: &str, auth: Option<&str>, body: &str) -> Resp {
        let bearer = auth.map(|a| format!("Bearer {a}"));
        let mut headers = vec![("content-type", "application/json")];
        if let Some(b) = &bearer {
            headers.push(("authorization", b.as_str()));
        }
        self.request("POST", path, &headers, Some(body))
    }

    /// GET with `Authorization: Bearer <auth>` if given.
    pub fn get(&self, path: &str, auth: Option<&str>) -> Resp {
        let bearer = auth.map(|a| format!("Bearer {a}"));
        let mut headers = Vec::new();
        if let Some(b) = &bearer {
            headers.push(("authorization", b.as_str()));
        }
        self.request("GET", path, &headers, None)
    }

    /// POST as the master key.
    pub fn admin_post(&self, path: &str, body: &Value) -> Resp {
        self.post(path, Some(MASTER_KEY), &body.to_string())
    }

    /// `/key/generate` as the master key; asserts 200. Returns (raw key, response).
    pub fn generate_key(&self, body: Value) -> (String, Value) {
        let resp = self.admin_post("/key/generate", &body);
        resp.assert_status(200);
        let v = resp.json();
        let key = v["key"]
            .as_str()
            .unwrap_or_else(|| panic!("no `key` in /key/generate answer: {v}"))
            .to_string();
        (key, v)
    }

    /// `POST /v1/chat/completions` for `model` with a one-message prompt.
    pub fn chat(&self, auth: Option<&str>, model: &str) -> Resp {
        self.post("/v1/chat/completions", auth, &chat_body(model))
    }

    /// Requests the fake upstream received, oldest first.
    pub fn fake_requests(&self) -> Vec<Value> {
        let url = format!("http://127.0.0.1:{}/fake/requests", self.fake_port);
        let resp = send(&self.agent, "GET", &url, &[], None);
        resp.assert_status(200);
        match resp.json() {
            Value::Array(items) => items,
            other => panic!("/fake/requests is not an array: {other}"),
        }
    }

    pub fn clear_fake_requests(&self) {
        let url = format!("http://127.0.0.1:{}/fake/requests", self.fake_port);
        send(&self.agent, "DELETE", &url, &[], None).assert_status(204);
    }

    /// The stack's scratch dir: config.yaml, the stderr files of fake-llm and `tollgate up`.
    pub fn scratch_dir(&self) -> &Path {
        self.scratch.path()
    }

    /// The sidecar's and Envoy's logs so far (for failure messages).
    pub fn logs(&self) -> String {
        format!(
            "--- envoy.log ---\n{}\n--- fake-llm stderr ---\n{}",
            read_file(&self.data_dir.join("envoy.log")),
            read_file(&self.scratch.path().join("fake-llm.stderr"))
        )
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // Stop `tollgate up` first: closing its stdin makes it kill Envoy. Envoy itself (split
        // stack) does not read stdin: stop it outright.
        if self.sidecar.is_some() || !self.replicas.is_empty() {
            let _ = self.up.child.kill();
        }
        self.up.stop(Duration::from_secs(15));
        self.fake.stop(Duration::from_secs(5));
    }
}

/// `{"model": model, "messages": [{"role":"user","content":"hello there"}]}`.
pub fn chat_body(model: &str) -> String {
    serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": "hello there"}]
    })
    .to_string()
}

fn wait_for_line_result(
    proc: &mut Proc,
    lines: &mpsc::Receiver<String>,
    prefix: &str,
    timeout: Duration,
) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    let mut seen = String::new();
    loop {
        match lines.recv_timeout(Duration::from_millis(50)) {
            Ok(line) => {
                if line.starts_with(prefix) {
                    return Ok(line);
                }
                seen.push_str(&line);
                seen.push('\n');
                continue;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // stdout closed: the process is exiting; collect its status below.
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        if let Some(status) = proc.try_wait() {
            // Drain what it printed before exiting.
            while let Ok(line) = lines.try_recv() {
                if line.starts_with(prefix) {
                    return Ok(line);
                }
                seen.push_str(&line);
                seen.push('\n');
            }
            return Err(format!(
                "{} exited ({status}) before printing `{prefix}`; stdout:\n{seen}",
                proc.name
            ));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{} printed no `{prefix}` line within {timeout:?}; stdout:\n{seen}",
                proc.name
            ));
        }
    }
}

fn wait_for_line(
    proc: &mut Proc,
    lines: &mpsc::Receiver<String>,
    prefix: &str,
    timeout: Duration,
    stderr_path: &Path,
) -> String {
    wait_for_line_result(proc, lines, prefix, timeout).unwrap_or_else(|why| {
        panic!(
            "{why}\n--- its stderr ---\n{}\n--- end ---",
            read_file(stderr_path)
        )
    })
}

/// `sha256(s)` as lowercase hex, computed here (not with the crate's own helper).
pub fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

// ---------------------------------------------------------------------------------------------
// Polling, spend and concurrency helpers (budgets and rate-limit suites)

/// How long a test waits for something that happens on its own soon (the filter's spend flush,
/// every second; a change poll; Envoy's stats flush, every 5 s): far above what it takes on an
/// idle machine, so a loaded CI machine (2 cores, two suites' stacks side by side) never hits
/// it, while something that never happens still fails the test.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `attempt` (given its number, from 1) until it answers `Some`, at most 5 times: a check
/// whose calls must fall inside one short window or period, on a machine too slow for that (a
/// loaded CI box), tries again afresh (`None`) instead of failing; a wrong answer inside the
/// window still fails at once.
pub fn within_attempts<T>(mut attempt: impl FnMut(u32) -> Option<T>) -> T {
    for n in 1..=5 {
        if let Some(done) = attempt(n) {
            return done;
        }
        eprintln!("attempt {n} was too slow for its window; again");
    }
    panic!("the machine was too slow for this test 5 times");
}

/// Calls `f` every 50 ms until it returns `Ok`, failing the test after `timeout` with `what`
/// and the last `Err` (a description of what was seen).
pub fn poll_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(v) => return v,
            Err(last) => {
                if Instant::now() > deadline {
                    panic!("{what}: not reached within {timeout:?}; last seen: {last}");
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Stack {
    /// `POST` with a JSON content type, `Authorization: Bearer <auth>` and extra headers, on a
    /// fresh connection of its own (safe to call from many threads at once).
    pub fn post_with(&self, path: &str, auth: &str, extra: &[(&str, &str)], body: &str) -> Resp {
        let bearer = format!("Bearer {auth}");
        let mut headers = vec![
            ("content-type", "application/json"),
            ("authorization", bearer.as_str()),
        ];
        headers.extend_from_slice(extra);
        send(&agent(), "POST", &self.url(path), &headers, Some(body))
    }

    /// `GET /key/info?key=<key>` as the master key; the `info` object.
    pub fn key_info(&self, key: &str) -> Value {
        let resp = self.get(&format!("/key/info?key={key}"), Some(MASTER_KEY));
        resp.assert_status(200);
        resp.json()["info"].clone()
    }

    /// `GET /spend/logs?api_key=<key>` as the master key: the rows.
    pub fn spend_logs(&self, key: &str) -> Vec<Value> {
        let resp = self.get(&format!("/spend/logs?api_key={key}"), Some(MASTER_KEY));
        resp.assert_status(200);
        match resp.json() {
            Value::Array(rows) => rows,
            other => panic!("/spend/logs is not an array: {other}"),
        }
    }

    /// Waits until the sidecar has `count` spend-log rows for `key` (the filter flushes every
    /// second) and returns them.
    pub fn wait_spend_logs(&self, key: &str, count: usize) -> Vec<Value> {
        poll_until(
            &format!("{count} spend-log rows for the key"),
            SETTLE_TIMEOUT,
            || {
                let rows = self.spend_logs(key);
                if rows.len() == count {
                    Ok(rows)
                } else {
                    let brief: Vec<String> = rows
                        .iter()
                        .map(|r| format!("{} {} {}", r["model"], r["status"], r["spend"]))
                        .collect();
                    Err(format!("{} rows: {brief:?}", rows.len()))
                }
            },
        )
    }

    /// Waits until `/key/info` reports exactly `spend` for `key`.
    pub fn wait_key_spend(&self, key: &str, spend: f64) -> Value {
        poll_until(
            &format!("/key/info spend == {spend}"),
            SETTLE_TIMEOUT,
            || {
                let info = self.key_info(key);
                if info["spend"].as_f64() == Some(spend) {
                    Ok(info)
                } else {
                    Err(info["spend"].to_string())
                }
            },
        )
    }

    /// Sends `body` to `path` over a raw HTTP/1.1 connection, waits up to `hold` for an answer
    /// that it does not expect to come (the upstream is slow), then closes the socket: a client
    /// abort mid-request. Returns the bytes that did arrive (normally none).
    pub fn abort_request(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
        hold: Duration,
    ) -> Vec<u8> {
        hang_up(self.open_request(path, headers, body), hold)
    }

    /// Sends `body` to `path` over a raw HTTP/1.1 connection and returns the connection: the
    /// call stays in flight (for as long as the upstream is slow) until the client hangs up
    /// ([`hang_up`], or a drop), whenever the test has seen what it wanted to see meanwhile.
    pub fn open_request(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> std::net::TcpStream {
        use std::io::Write;
        let mut stream =
            std::net::TcpStream::connect(("127.0.0.1", self.port)).expect("connect to Envoy");
        let mut head = format!(
            "POST {path} HTTP/1.1\r\nhost: 127.0.0.1:{}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
            self.port,
            body.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        stream
            .write_all(head.as_bytes())
            .expect("write request head");
        stream
            .write_all(body.as_bytes())
            .expect("write request body");
        stream
    }
}

/// Waits up to `hold` for an answer on a connection from [`Stack::open_request`] that is not
/// expected to come, then closes it: a client abort. Returns the bytes that did arrive.
pub fn hang_up(mut stream: std::net::TcpStream, hold: Duration) -> Vec<u8> {
    use std::io::Read;
    stream
        .set_read_timeout(Some(hold.max(Duration::from_millis(1))))
        .expect("set read timeout");
    let mut got = vec![0u8; 4096];
    let n = stream.read(&mut got).unwrap_or(0);
    got.truncate(n);
    let _ = stream.shutdown(std::net::Shutdown::Both);
    drop(stream);
    got
}

/// Runs `f(i)` for `i in 0..n` on `n` threads at once (released together by a barrier) and
/// returns the answers in order of `i`.
pub fn run_concurrently<F>(n: usize, f: F) -> Vec<Resp>
where
    F: Fn(usize) -> Resp + Sync,
{
    let barrier = std::sync::Barrier::new(n);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let f = &f;
                let barrier = &barrier;
                scope.spawn(move || {
                    barrier.wait();
                    f(i)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("request thread panicked"))
            .collect()
    })
}

/// Seconds since the Unix epoch, as a float, from the system clock (the one Envoy reads).
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
