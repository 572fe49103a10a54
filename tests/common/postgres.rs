//! A real PostgreSQL server for the tests: `initdb` + `pg_ctl` in a temp dir, run as a non-root
//! user (tests run as root here: PostgreSQL refuses root), on a free 127.0.0.1 port. One shared
//! server per test binary ([`shared`]); each test takes a fresh database ([`Postgres::database`]).
//! A test that stops its server starts a private one ([`Postgres::start`]).
//! Every server has TLS on (`ssl=on`), its certificate signed by a CA made for it
//! ([`Postgres::ca_file`]), valid for `localhost` only (not `127.0.0.1`), so the tests can tell
//! `verify-ca` from `verify-full`; clients that do not ask for TLS are not slowed.
//!
//! The binaries come from `PG_BIN` (a directory), else Debian's `/usr/lib/postgresql/<v>/bin`
//! (the newest), else `initdb` on `PATH`; `./build.sh` installs Debian's `postgresql`. A
//! missing PostgreSQL FAILS the test; nothing is skipped.

use super::*;
use std::sync::OnceLock;

/// The user PostgreSQL runs as when the tests run as root.
const PG_USER: &str = "postgres";

pub struct Postgres {
    pub port: u16,
    bin: PathBuf,
    dir: PathBuf,
    /// Stops the server once the test process is gone (it outlives us on purpose).
    watchdog: Option<Child>,
}

fn pg_bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return bin;
    }
    let which = Command::new("sh")
        .args(["-c", "command -v initdb"])
        .output()
        .expect("run sh");
    let path = String::from_utf8_lossy(&which.stdout).trim().to_string();
    assert!(
        !path.is_empty(),
        "PostgreSQL not found (no PG_BIN, no /usr/lib/postgresql/*/bin, no initdb on PATH): run ./build.sh, which installs Debian's postgresql"
    );
    PathBuf::from(path)
        .parent()
        .expect("initdb's directory")
        .to_path_buf()
}

fn is_root() -> bool {
    let out = Command::new("id").arg("-u").output().expect("run id -u");
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

/// Runs a PostgreSQL program as the non-root user (or as us when we are not root).
fn pg_command(bin: &Path, program: &str) -> Command {
    let program = bin.join(program);
    if is_root() {
        ensure_pg_user();
        let mut c = Command::new("runuser");
        c.args(["-u", PG_USER, "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn ensure_pg_user() {
    let exists = Command::new("id")
        .arg(PG_USER)
        .output()
        .is_ok_and(|o| o.status.success());
    if !exists {
        let status = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                PG_USER,
            ])
            .status()
            .expect("run useradd");
        assert!(status.success(), "useradd {PG_USER} failed");
    }
}

fn run_ok(what: &str, cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what} ({cmd:?}): {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what} failed: {text}");
    text
}

impl Postgres {
    /// A new server in a new temp dir; stopped when the test process exits (even on a crash:
    /// a watchdog shell waits for this process to go away).
    pub fn start() -> Postgres {
        let bin = pg_bin_dir();
        let dir = std::env::temp_dir().join(format!(
            "tollgate-pg-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the PostgreSQL dir");
        if is_root() {
            ensure_pg_user();
            run_ok(
                "chown",
                Command::new("chown").args(["-R", PG_USER]).arg(&dir),
            );
        }
        run_ok(
            "initdb",
            pg_command(&bin, "initdb")
                .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
                .arg(dir.join("data")),
        );
        write_certificates(&dir);
        let mut pg = Postgres {
            port: free_port(),
            bin,
            dir,
            watchdog: None,
        };
        pg.start_again();
        let watchdog = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {stop}; rm -rf '{dir}'",
            pid = std::process::id(),
            stop = pg.ctl_line("stop -m immediate"),
            dir = pg.dir.display()
        );
        pg.watchdog = Some(
            Command::new("sh")
                .args(["-c", &watchdog])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start the PostgreSQL watchdog"),
        );
        pg
    }

    fn ctl_line(&self, action: &str) -> String {
        let ctl = self.bin.join("pg_ctl");
        let data = self.dir.join("data");
        if is_root() {
            format!(
                "runuser -u {PG_USER} -- '{}' -D '{}' -w {action}",
                ctl.display(),
                data.display()
            )
        } else {
            format!("'{}' -D '{}' -w {action}", ctl.display(), data.display())
        }
    }

    /// Starts the server (again) on its port.
    pub fn start_again(&self) {
        run_ok(
            "pg_ctl start",
            pg_command(&self.bin, "pg_ctl")
                .arg("-D")
                .arg(self.dir.join("data"))
                .arg("-l")
                .arg(self.dir.join("server.log"))
                .args(["-w", "-t", "60", "-o"])
                .arg(format!(
                    "-p {} -c listen_addresses=127.0.0.1 -k {} -c max_connections=200 \
                     -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                    self.port,
                    self.dir.display(),
                    self.dir.join("data/server.crt").display(),
                    self.dir.join("data/server.key").display()
                ))
                .arg("start"),
        );
    }

    /// Stops the server at once (no checkpoint), as a crash would.
    pub fn stop_immediate(&self) {
        run_ok(
            "pg_ctl stop",
            pg_command(&self.bin, "pg_ctl")
                .arg("-D")
                .arg(self.dir.join("data"))
                .args(["-w", "-m", "immediate", "stop"]),
        );
    }

    /// Runs SQL with psql on database `db`; what it prints (unaligned, tuples only).
    pub fn psql(&self, db: &str, sql: &str) -> String {
        run_ok(
            "psql",
            Command::new(self.bin.join("psql"))
                .args([
                    "-X",
                    "-q",
                    "-A",
                    "-t",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-h",
                    "127.0.0.1",
                ])
                .args([
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    "postgres",
                    "-d",
                    db,
                    "-c",
                    sql,
                ]),
        )
        .trim()
        .to_string()
    }

    /// Everything database `db` holds, as `pg_dump` writes it (plain SQL).
    pub fn dump(&self, db: &str) -> String {
        run_ok(
            "pg_dump",
            Command::new(self.bin.join("pg_dump"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
                .args(["-U", "postgres", "-d", db]),
        )
    }

    /// The server's log file.
    pub fn server_log(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    /// A fresh database; its `postgresql://` URL.
    pub fn database(&self, tag: &str) -> String {
        let name = format!(
            "t_{}_{}",
            tag.replace(|c: char| !c.is_ascii_alphanumeric(), "_"),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        self.url(&name)
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// The CA (PEM) that signed the server's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// How database `db`'s open sessions are connected: `(sessions, all over TLS)`.
    pub fn tls_sessions(&self, db: &str) -> (u64, bool) {
        let out = self.psql(
            "postgres",
            &format!(
                "SELECT count(*) || ' ' || COALESCE(bool_and(s.ssl), false) \
                 FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.datname = '{db}'"
            ),
        );
        let (count, ssl) = out.split_once(' ').expect("count and ssl");
        (count.parse().expect("a count"), ssl == "true")
    }
}

/// A CA and a server certificate for `localhost` it signed, in `dir` (ca.crt) and the data dir
/// (server.crt, server.key: the key readable by the server's user only, as PostgreSQL demands).
fn write_certificates(dir: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair};
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
    let key = KeyPair::generate().expect("server key");
    let mut server_params =
        CertificateParams::new(vec!["localhost".to_string()]).expect("server params");
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server = server_params
        .signed_by(&key, &ca, &ca_key)
        .expect("server certificate");
    std::fs::write(dir.join("ca.crt"), ca.pem()).expect("write ca.crt");
    let data = dir.join("data");
    std::fs::write(data.join("server.crt"), server.pem()).expect("write server.crt");
    std::fs::write(data.join("server.key"), key.serialize_pem()).expect("write server.key");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            data.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .expect("chmod server.key");
    }
    if is_root() {
        run_ok(
            "chown",
            Command::new("chown")
                .arg(PG_USER)
                .arg(data.join("server.crt"))
                .arg(data.join("server.key")),
        );
    }
}

/// The test binary's shared server.
pub fn shared() -> &'static Postgres {
    static SERVER: OnceLock<Postgres> = OnceLock::new();
    SERVER.get_or_init(Postgres::start)
}

/// `tollgate serve --store URL` on a free port, started and ready.
pub struct Replica {
    pub port: u16,
    sidecar: split::Sidecar,
}

impl Replica {
    pub fn start(config_yaml: &str, store_url: &str, scratch: &Path) -> Replica {
        let port = free_port();
        let dir = scratch.join(format!("replica-{port}"));
        std::fs::create_dir_all(&dir).expect("create replica dir");
        let config_path = dir.join("config.yaml");
        std::fs::write(&config_path, config_yaml).expect("write config.yaml");
        let text = |p: &Path| p.to_string_lossy().into_owned();
        let mut sidecar = split::Sidecar::new(
            vec![
                text(&tollgate_bin()),
                "serve".into(),
                "--config".into(),
                text(&config_path),
                "--port".into(),
                port.to_string(),
                "--data-dir".into(),
                text(&dir.join("data")),
                "--store".into(),
                store_url.to_string(),
                "--exit-on-stdin-eof".into(),
            ],
            dir.clone(),
        );
        sidecar.start();
        Replica { port, sidecar }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        self.sidecar.kill();
    }

    /// `kill -9` while others hold the replica (its process is reaped when it is dropped).
    pub fn kill_by_pid(&self) {
        let pid = self.sidecar.pid().expect("the replica is running");
        let status = Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -9 {pid}");
    }
}
