//! A split stack: `tollgate serve --xds-dir` (the sidecar alone) and a plain Envoy started from
//! `tollgate render --format envoy --xds-dir`, as a user runs them with their own Envoy. The
//! sidecar can be killed (`SIGKILL`) and started again on the same port and data dir while
//! Envoy keeps running.

use super::*;

/// The sidecar of a split stack, and how to start it again.
pub struct Sidecar {
    proc: Option<Proc>,
    command: Vec<String>,
    log_dir: PathBuf,
    starts: usize,
}

impl Sidecar {
    /// A sidecar started by `command` (not yet running), its logs in `log_dir`.
    pub(super) fn new(command: Vec<String>, log_dir: PathBuf) -> Sidecar {
        Sidecar {
            proc: None,
            command,
            log_dir,
            starts: 0,
        }
    }

    /// `kill -9`: no chance to flush or close anything.
    pub(super) fn kill(&mut self) {
        let mut proc = self.proc.take().expect("the sidecar is running");
        proc.child.kill().expect("SIGKILL the sidecar");
        proc.child.wait().expect("reap the sidecar");
        drop(proc);
    }

    pub(super) fn start(&mut self) {
        self.starts += 1;
        let err = self.log_dir.join(format!("serve-{}.stderr", self.starts));
        let mut cmd = Command::new(&self.command[0]);
        cmd.args(&self.command[1..])
            .env_remove("LITELLM_MASTER_KEY")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                std::fs::File::create(&err).expect("create serve stderr file"),
            ));
        let mut proc = Proc::spawn("tollgate serve", &mut cmd);
        let lines = line_channel(&mut proc.child);
        wait_for_line(
            &mut proc,
            &lines,
            "tollgate sidecar listening on",
            READY_TIMEOUT,
            &err,
        );
        self.proc = Some(proc);
    }
}

impl Stack {
    /// fake-llm, `tollgate serve` and Envoy as separate processes (Envoy with 2 workers).
    pub fn start_split(config_template: &str) -> Stack {
        let bin = tollgate_bin();
        let wasm = tollgate_wasm();
        let envoy = envoy_bin();
        let scratch = TempDir::new("split");
        let (fake, fake_port) = start_fake(scratch.path());
        let config_path = scratch.path().join("config.yaml");
        std::fs::write(&config_path, render_template(config_template, fake_port))
            .expect("write config.yaml");
        let data = TempDir::new("data");
        let data_dir = data.path().to_path_buf();
        let xds_dir = data_dir.join("xds");
        let sidecar_port = free_port();
        let text = |p: &Path| p.display().to_string();

        let mut sidecar = Sidecar {
            proc: None,
            command: vec![
                text(&bin),
                "serve".into(),
                "--config".into(),
                text(&config_path),
                "--port".into(),
                sidecar_port.to_string(),
                "--data-dir".into(),
                text(&data_dir),
                "--xds-dir".into(),
                text(&xds_dir),
                "--wasm".into(),
                text(&wasm),
                "--exit-on-stdin-eof".into(),
            ],
            log_dir: scratch.path().to_path_buf(),
            starts: 0,
        };
        sidecar.start();

        let port = free_port();
        let (status, bootstrap, err) = run_to_exit(
            "tollgate render",
            Command::new(&bin)
                .args(["render", "--format", "envoy", "--config"])
                .arg(&config_path)
                .args(["--port", &port.to_string()])
                .args(["--sidecar-port", &sidecar_port.to_string()])
                .args(["--envoy-admin-port", &free_port().to_string()])
                .arg("--wasm")
                .arg(&wasm)
                .arg("--xds-dir")
                .arg(&xds_dir)
                .env_remove("LITELLM_MASTER_KEY"),
            Duration::from_secs(30),
        );
        assert!(status.success(), "tollgate render failed: {err}");
        let bootstrap_path = scratch.path().join("envoy.yaml");
        std::fs::write(&bootstrap_path, bootstrap).expect("write envoy.yaml");
        let envoy_log = scratch.path().join("envoy.log");
        let mut envoy_cmd = Command::new(&envoy);
        envoy_cmd
            .arg("-c")
            .arg(&bootstrap_path)
            .args(["--concurrency", "2", "--disable-hot-restart"])
            .args(["--log-level", "warning"])
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(&envoy_log).expect("create envoy log"),
            ));
        let envoy_proc = Proc::spawn("envoy", &mut envoy_cmd);

        let stack = Stack {
            port,
            fake_port,
            data_dir,
            agent: agent(),
            up: envoy_proc,
            sidecar: Some(sidecar),
            fake,
            scratch,
            own_data: Some(data),
        };
        poll_until("Envoy answers /health/liveliness", READY_TIMEOUT, || {
            let url = stack.url("/health/liveliness");
            match stack.agent.get(&url).call() {
                Ok(r) if r.header("server") == Some("envoy") => Ok(()),
                Ok(r) => Err(format!("status {}", r.status())),
                Err(e) => Err(format!("{e}: {}", read_file(&envoy_log))),
            }
        });
        stack
    }

    /// `kill -9` of the sidecar of a split stack: no chance to flush or close anything.
    pub fn kill_sidecar(&mut self) {
        self.sidecar.as_mut().expect("a split stack").kill();
    }

    /// Starts the sidecar of a split stack again, same port and data dir.
    pub fn restart_sidecar(&mut self) {
        let sidecar = self.sidecar.as_mut().expect("a split stack");
        assert!(sidecar.proc.is_none(), "the sidecar is still running");
        sidecar.start();
    }

    /// The config.yaml the stack runs on (edit it to test reloads).
    pub fn config_path(&self) -> PathBuf {
        self.scratch.path().join("config.yaml")
    }
}
