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

    pub(super) fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(|p| p.child.id())
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

        let mut command = vec![
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
        ];
        let store_args = test_store_args(&data_dir);
        command.extend(store_args.iter().cloned());
        let mut sidecar = Sidecar {
            proc: None,
            command,
            log_dir: scratch.path().to_path_buf(),
            starts: 0,
        };
        sidecar.start();

        let (port, envoy_proc) = start_envoy(
            &config_path,
            &[sidecar_port],
            Some(&xds_dir),
            scratch.path(),
            "envoy",
            2,
        );
        let stack = Stack {
            port,
            fake_port,
            data_dir,
            agent: agent(),
            up: envoy_proc,
            sidecar: Some(sidecar),
            replicas: Vec::new(),
            fake,
            scratch,
            own_data: Some(data),
        };
        stack.wait_for_envoy();
        assert!(
            store_args.is_empty() || !stack.data_dir.join("tollgate.db").exists(),
            "TOLLGATE_TEST_STORE=postgres, yet the sidecar made a SQLite store"
        );
        stack
    }

    /// fake-llm, `replicas` `tollgate serve` replicas on the PostgreSQL database `store_url`,
    /// and ONE Envoy (2 workers) whose sidecar cluster lists them all (`tollgate render
    /// --sidecar-port A --sidecar-port B ...`, static configuration).
    pub fn start_replicas(config_template: &str, store_url: &str, replicas: usize) -> Stack {
        let scratch = TempDir::new("replicas");
        let (fake, fake_port) = start_fake(scratch.path());
        let config = render_template(config_template, fake_port);
        let config_path = scratch.path().join("config.yaml");
        std::fs::write(&config_path, &config).expect("write config.yaml");
        let started: Vec<postgres::Replica> = (0..replicas)
            .map(|_| postgres::Replica::start(&config, store_url, scratch.path()))
            .collect();
        let ports: Vec<u16> = started.iter().map(|r| r.port).collect();
        let (port, envoy_proc) =
            start_envoy(&config_path, &ports, None, scratch.path(), "envoy", 2);
        let data = TempDir::new("data");
        let stack = Stack {
            port,
            fake_port,
            data_dir: data.path().to_path_buf(),
            agent: agent(),
            up: envoy_proc,
            sidecar: None,
            replicas: started,
            fake,
            scratch,
            own_data: Some(data),
        };
        stack.wait_for_envoy();
        stack
    }

    /// The replicas of a replica stack.
    pub fn replicas(&self) -> &[postgres::Replica] {
        &self.replicas
    }

    fn wait_for_envoy(&self) {
        let envoy_log = self.scratch.path().join("envoy.log");
        poll_until("Envoy answers /health/liveliness", READY_TIMEOUT, || {
            let url = self.url("/health/liveliness");
            match self.agent.get(&url).call() {
                Ok(r) if r.header("server") == Some("envoy") => Ok(()),
                Ok(r) => Err(format!("status {}", r.status())),
                Err(e) => Err(format!("{e}: {}", read_file(&envoy_log))),
            }
        });
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

/// `tollgate render --format envoy` for `sidecar_ports` (with `--xds-dir` if given), and an
/// Envoy with `workers` worker threads started from it, its bootstrap and log in
/// `scratch/<name>.yaml` and `scratch/<name>.log`. Its listener port and process.
pub(super) fn start_envoy(
    config_path: &Path,
    sidecar_ports: &[u16],
    xds_dir: Option<&Path>,
    scratch: &Path,
    name: &str,
    workers: u16,
) -> (u16, Proc) {
    let port = free_port();
    let mut render = Command::new(tollgate_bin());
    render
        .args(["render", "--format", "envoy", "--config"])
        .arg(config_path)
        .args(["--port", &port.to_string()])
        .args(["--envoy-admin-port", &free_port().to_string()])
        .arg("--wasm")
        .arg(tollgate_wasm())
        .env_remove("LITELLM_MASTER_KEY");
    for p in sidecar_ports {
        render.args(["--sidecar-port", &p.to_string()]);
    }
    if let Some(dir) = xds_dir {
        render.arg("--xds-dir").arg(dir);
    }
    let (status, bootstrap, err) =
        run_to_exit("tollgate render", &mut render, Duration::from_secs(30));
    assert!(status.success(), "tollgate render failed: {err}");
    let bootstrap_path = scratch.join(format!("{name}.yaml"));
    std::fs::write(&bootstrap_path, bootstrap).expect("write envoy.yaml");
    let envoy_log = scratch.join(format!("{name}.log"));
    let mut envoy_cmd = Command::new(envoy_bin());
    envoy_cmd
        .arg("-c")
        .arg(&bootstrap_path)
        .args([
            "--concurrency",
            &workers.to_string(),
            "--disable-hot-restart",
        ])
        .args(["--log-level", "warning"])
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(&envoy_log).expect("create envoy log"),
        ));
    (port, Proc::spawn("envoy", &mut envoy_cmd))
}
