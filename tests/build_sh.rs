#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! `./build.sh run` (issue 12, items 7, 8, 10): the demo key only for the demo config, the
//! demo on 127.0.0.1, and nothing left running after Ctrl-C or a kill. build.sh runs the built
//! binaries given in TOLLGATE_BIN / TOLLGATE_WASM, so these tests never rebuild.

mod common;

use common::{envoy_bin, free_port, run_to_exit, tollgate_bin, tollgate_wasm, TempDir};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The demo's fake upstream has a fixed port (envoy/config.yaml): one demo at a time.
static DEMO: Mutex<()> = Mutex::new(());

const FAKE_PORT: u16 = 8089;

fn build_sh() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("build.sh")
}

/// `./build.sh run ARGS` with the built binaries, on `port`, with its store in `data`.
fn build_sh_run(args: &[&str], port: u16, data: &Path) -> Command {
    let mut cmd = Command::new("bash");
    cmd.arg(build_sh())
        .arg("run")
        .args(args)
        .env("TOLLGATE_BIN", tollgate_bin())
        .env("TOLLGATE_WASM", tollgate_wasm())
        .env("ENVOY_BIN", envoy_bin())
        .env("PORT", port.to_string())
        .env("TOLLGATE_DATA_DIR", data)
        .env_remove("HOST")
        .env_remove("LITELLM_MASTER_KEY");
    cmd
}

fn port_is_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Whether any process of the group is still alive.
fn group_alive(pgid: u32) -> bool {
    Command::new("kill")
        .args(["-0", "--", &format!("-{pgid}")])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn signal_group(pgid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([signal, "--", &format!("-{pgid}")])
        .stderr(Stdio::null())
        .status();
}

/// A `./build.sh run` of the demo in its own process group; killed as a group on drop.
struct Demo {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    port: u16,
    _data: TempDir,
}

impl Demo {
    fn start(tag: &str) -> Demo {
        assert!(
            port_is_free(FAKE_PORT),
            "port {FAKE_PORT} (the demo's fake upstream) is taken before the test"
        );
        let data = TempDir::new(tag);
        let port = free_port();
        let stdout = data.path().join("stdout");
        let stderr = data.path().join("stderr");
        let child = build_sh_run(&[], port, &data.path().join("store"))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .process_group(0)
            .spawn()
            .expect("start ./build.sh run");
        let demo = Demo {
            child,
            stdout,
            stderr,
            port,
            _data: data,
        };
        let deadline = Instant::now() + common::READY_TIMEOUT;
        while !demo.out().contains("tollgate is ready on") {
            assert!(
                Instant::now() < deadline,
                "./build.sh run did not become ready\nstdout:\n{}\nstderr:\n{}",
                demo.out(),
                demo.err()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        demo
    }

    fn out(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    fn err(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn pgid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for build.sh itself to exit, then for every process it started to be gone.
    fn wait_all_gone(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if self.child.try_wait().unwrap().is_some() && !group_alive(self.pgid()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "build.sh or a process it started still runs {within:?} after the signal\nstdout:\n{}\nstderr:\n{}",
                self.out(),
                self.err()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        signal_group(self.pgid(), "-KILL");
        let _ = self.child.wait();
    }
}

/// Item 8: the demo listens on 127.0.0.1 only and works offline with the demo key.
fn assert_serves_on_loopback_only(demo: &Demo) {
    let agent = common::agent();
    let r = agent
        .post(&format!(
            "http://127.0.0.1:{}/v1/chat/completions",
            demo.port
        ))
        .set("authorization", "Bearer sk-1234")
        .set("content-type", "application/json")
        .send_string(r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#);
    assert_eq!(
        r.map(|r| r.status()).ok(),
        Some(200),
        "the demo does not answer"
    );
    // 127.0.0.2 is loopback too: a listener on 0.0.0.0 would accept it.
    let other = std::net::TcpStream::connect_timeout(
        &format!("127.0.0.2:{}", demo.port).parse().unwrap(),
        Duration::from_secs(2),
    );
    assert!(
        other.is_err(),
        "the demo accepts connections on 127.0.0.2: it listens beyond 127.0.0.1"
    );
}

/// Items 8 and 10: Ctrl-C (SIGINT to the whole foreground group) stops build.sh, `tollgate up`
/// with its Envoy, and the fake upstream; both ports are free again.
#[test]
fn ctrl_c_stops_the_demo_and_everything_it_started() {
    let _one = DEMO.lock().unwrap_or_else(|e| e.into_inner());
    let mut demo = Demo::start("demo-int");
    assert_serves_on_loopback_only(&demo);
    signal_group(demo.pgid(), "-INT");
    demo.wait_all_gone(Duration::from_secs(20));
    assert!(!demo.err().contains("unbound variable"), "{}", demo.err());
    assert!(
        port_is_free(FAKE_PORT),
        "the fake upstream still holds {FAKE_PORT}"
    );
    assert!(port_is_free(demo.port), "port {} still taken", demo.port);
}

/// Item 10: a kill of build.sh alone (SIGTERM to its pid, as a supervisor or `timeout` sends)
/// stops what it started too.
#[test]
fn killing_build_sh_stops_everything_it_started() {
    let _one = DEMO.lock().unwrap_or_else(|e| e.into_inner());
    let mut demo = Demo::start("demo-term");
    let _ = Command::new("kill")
        .args(["-TERM", &demo.child.id().to_string()])
        .status();
    demo.wait_all_gone(Duration::from_secs(20));
    assert!(
        port_is_free(FAKE_PORT),
        "the fake upstream still holds {FAKE_PORT}"
    );
    assert!(port_is_free(demo.port), "port {} still taken", demo.port);
}

/// Item 7: a config of one's own that reads LITELLM_MASTER_KEY does not start with the demo key
/// when the variable is unset.
#[test]
fn run_with_a_config_refuses_to_start_without_its_master_key() {
    let dir = TempDir::new("own-config");
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        "model_list:\n  - model_name: m\n    litellm_params: {model: openai/m, api_base: 'http://127.0.0.1:9/v1'}\ngeneral_settings:\n  master_key: os.environ/LITELLM_MASTER_KEY\n",
    )
    .unwrap();
    let port = free_port();
    let (status, out, err) = run_to_exit(
        "./build.sh run CONFIG",
        &mut build_sh_run(&[config.to_str().unwrap()], port, &dir.path().join("store")),
        Duration::from_secs(60),
    );
    assert!(!status.success(), "it started:\n{out}\n{err}");
    assert!(err.contains("no master key"), "{err}");
    assert!(!out.contains("sk-1234") && !out.contains("ready"), "{out}");
    assert!(port_is_free(port));
}

/// Items 9 and 10: when `tollgate up` fails to start (here: the port is taken), build.sh exits
/// non-zero with the reason and stops the fake upstream it had started.
#[test]
fn a_failed_start_stops_the_fake_upstream_too() {
    let _one = DEMO.lock().unwrap_or_else(|e| e.into_inner());
    assert!(
        port_is_free(FAKE_PORT),
        "port {FAKE_PORT} is taken before the test"
    );
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = TempDir::new("failed-start");
    let (status, out, err) = run_to_exit(
        "./build.sh run on a taken port",
        &mut build_sh_run(&[], port, &dir.path().join("store")),
        Duration::from_secs(60),
    );
    assert!(!status.success(), "it started:\n{out}\n{err}");
    assert!(
        err.contains(&format!(
            "port {port} is in use; pick another with --port or PORT="
        )),
        "{err}"
    );
    assert!(!err.contains("unbound variable"), "{err}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !port_is_free(FAKE_PORT) {
        assert!(
            Instant::now() < deadline,
            "the fake upstream still holds {FAKE_PORT} after build.sh exited"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
