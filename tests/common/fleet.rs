//! A fleet on one machine (FLEET.md §5): one PostgreSQL database, several `tollgate serve`
//! replicas on it, and several Envoy processes rendered with every replica in their
//! `tollgate_sidecar` cluster, all in front of one fake provider. Envoys and replicas can be
//! killed with `SIGKILL`.

use super::postgres::{shared, Postgres, Replica};
use super::*;

/// One Envoy process of the fleet.
pub struct FleetEnvoy {
    pub port: u16,
    proc: Option<Proc>,
    log: PathBuf,
}

/// The fleet, stopped on drop (Envoys first, then replicas, then the fake).
pub struct Fleet {
    pub envoys: Vec<FleetEnvoy>,
    pub replicas: Vec<Replica>,
    pub fake_port: u16,
    /// The PostgreSQL database name (for `Postgres::psql`).
    pub db: String,
    pub agent: ureq::Agent,
    fake: Proc,
    scratch: TempDir,
}

impl Fleet {
    /// `envoys` Envoy processes (one worker each) and `replicas` sidecars on a fresh database
    /// of the test binary's PostgreSQL, on `config_template` (placeholders as in
    /// [`DEFAULT_CONFIG`]).
    pub fn start(tag: &str, config_template: &str, envoys: usize, replicas: usize) -> Fleet {
        Fleet::start_on(shared(), tag, config_template, envoys, replicas)
    }

    /// As [`Fleet::start`], on a database of `pg`.
    pub fn start_on(
        pg: &Postgres,
        tag: &str,
        config_template: &str,
        envoys: usize,
        replicas: usize,
    ) -> Fleet {
        let url = pg.database(tag);
        let db = url.rsplit('/').next().expect("a database name").to_string();
        let scratch = TempDir::new(tag);
        let (fake, fake_port) = start_fake(scratch.path());
        let config = render_template(config_template, fake_port);
        let config_path = scratch.path().join("config.yaml");
        std::fs::write(&config_path, &config).expect("write config.yaml");
        let replicas: Vec<Replica> = (0..replicas)
            .map(|_| Replica::start(&config, &url, scratch.path()))
            .collect();
        let envoys = (0..envoys)
            .map(|i| start_envoy(scratch.path(), &config_path, &replicas, i))
            .collect();
        let fleet = Fleet {
            envoys,
            replicas,
            fake_port,
            db,
            agent: agent(),
            fake,
            scratch,
        };
        for i in 0..fleet.envoys.len() {
            fleet.wait_ready(i);
        }
        fleet
    }

    fn wait_ready(&self, i: usize) {
        let envoy = &self.envoys[i];
        poll_until(
            &format!("Envoy {i} answers /health/liveliness"),
            READY_TIMEOUT,
            || {
                let url = format!("http://127.0.0.1:{}/health/liveliness", envoy.port);
                match self.agent.get(&url).call() {
                    Ok(r) if r.header("server") == Some("envoy") => Ok(()),
                    Ok(r) => Err(format!("status {}", r.status())),
                    Err(e) => Err(format!("{e}: {}", read_file(&envoy.log))),
                }
            },
        );
    }

    /// `path` on Envoy `i`.
    pub fn url(&self, i: usize, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.envoys[i].port)
    }

    /// A POST through Envoy `i`.
    pub fn post(&self, i: usize, path: &str, auth: &str, body: &str) -> Resp {
        send(
            &self.agent,
            "POST",
            &self.url(i, path),
            &[("authorization", auth)],
            Some(body),
        )
    }

    /// A key made through Envoy 0 with the master key.
    pub fn generate_key(&self, body: serde_json::Value) -> String {
        let r = self.post(
            0,
            "/key/generate",
            &format!("Bearer {MASTER_KEY}"),
            &body.to_string(),
        );
        r.assert_status(200);
        r.json()["key"].as_str().expect("a key").to_string()
    }

    /// `kill -9` of Envoy `i`: its unflushed spend events and its leases die with it.
    pub fn kill_envoy(&mut self, i: usize) {
        let mut proc = self.envoys[i].proc.take().expect("Envoy is running");
        proc.child.kill().expect("SIGKILL Envoy");
        proc.child.wait().expect("reap Envoy");
    }

    pub fn envoy_alive(&self, i: usize) -> bool {
        self.envoys[i].proc.is_some()
    }

    /// `kill -9` of sidecar replica `i`.
    pub fn kill_replica(&mut self, i: usize) {
        self.replicas[i].kill();
    }

    /// API requests the fake provider received (what a provider would bill).
    pub fn provider_requests(&self) -> u64 {
        let url = format!("http://127.0.0.1:{}/fake/stats", self.fake_port);
        let r = send(&self.agent, "GET", &url, &[], None);
        r.assert_status(200);
        r.json()["requests"].as_u64().expect("a count")
    }

    pub fn scratch_dir(&self) -> &Path {
        self.scratch.path()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for envoy in &mut self.envoys {
            if let Some(mut proc) = envoy.proc.take() {
                let _ = proc.child.kill();
                let _ = proc.child.wait();
            }
        }
    }
}

/// Envoy `index` of the fleet: rendered with every replica in its sidecar cluster, one worker.
fn start_envoy(
    scratch: &Path,
    config_path: &Path,
    replicas: &[Replica],
    index: usize,
) -> FleetEnvoy {
    let ports: Vec<u16> = replicas.iter().map(|r| r.port).collect();
    let name = format!("envoy-{index}");
    let (port, proc) = super::split::start_envoy(config_path, &ports, None, scratch, &name, 1);
    FleetEnvoy {
        port,
        proc: Some(proc),
        log: scratch.join(format!("{name}.log")),
    }
}
