//! The `tollgate` sidecar (host only): loads config.yaml, renders what Envoy and Istio need,
//! serves the admin API and keeps the durable record; `up` also supervises Envoy.

pub mod admin_api;
pub mod cost_map;
mod envoy_admin;
pub mod istio;
pub mod lease_sweep;
pub mod litellm_config;
pub mod metrics;
pub mod oci;
pub mod reload;
pub mod render;
pub mod store;
pub mod timezone;
pub mod ui;
mod up;
/// Also used by the `tollgate-fake-llm` dev binary.
pub use up::stop_requested;
pub mod wasm_module;

use anyhow::{anyhow, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "tollgate",
    version,
    about = "LiteLLM-compatible keys, budgets and limits inside Envoy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Envoy,
    /// The same Envoy without Tollgate, proxying to the first model's upstream (for benchmarks).
    EnvoyBare,
    Istio,
    /// Istio: a patch of the gateway's Deployment (`kubectl patch --patch-file`) so its Envoy
    /// keeps and labels the filter's metrics.
    IstioGateway,
    Plugin,
}

#[derive(Subcommand)]
enum Command {
    /// Sidecar plus a supervised Envoy: LLM and admin API on one port.
    Up {
        #[arg(long)]
        config: PathBuf,
        #[arg(long, default_value_t = 4000)]
        port: u16,
        /// Address Envoy listens on (0.0.0.0 for every interface).
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// Envoy worker threads.
        #[arg(long, default_value_t = 2)]
        concurrency: u16,
        /// Where the SQLite store and rendered files live.
        #[arg(long, default_value = ".tollgate")]
        data_dir: PathBuf,
        /// The store: a `postgresql://` URL (several sidecars on one database). Default:
        /// `general_settings.database_url`, else `DATABASE_URL`, else SQLite in --data-dir.
        #[arg(long)]
        store: Option<String>,
        /// The filter module (default: the one built next to this binary).
        #[arg(long)]
        wasm: Option<PathBuf>,
        /// Envoy's log level.
        #[arg(long, default_value = "warning")]
        envoy_log_level: String,
        /// Envoy's admin port on 127.0.0.1, which serves `/stats/prometheus` (0: any free port).
        #[arg(long, default_value_t = 9901)]
        envoy_admin_port: u16,
        /// Stop when standard input closes (lets a test harness never leak a running stack).
        #[arg(long)]
        exit_on_stdin_eof: bool,
    },
    /// The sidecar alone (admin API and store), e.g. next to an Istio gateway or your own Envoy.
    Serve {
        #[arg(long)]
        config: PathBuf,
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        #[arg(long, default_value_t = 4001)]
        port: u16,
        #[arg(long, default_value = ".tollgate")]
        data_dir: PathBuf,
        /// The store: a `postgresql://` URL (several sidecars on one database). Default:
        /// `general_settings.database_url`, else `DATABASE_URL`, else SQLite in --data-dir.
        #[arg(long)]
        store: Option<String>,
        /// Keep the filter configuration and upstream clusters in this directory for an Envoy
        /// started from `tollgate render --format envoy --xds-dir` with the same directory, and
        /// rewrite them when config.yaml changes.
        #[arg(long)]
        xds_dir: Option<PathBuf>,
        /// The filter module named in the files of --xds-dir, and served at
        /// /tollgate/tollgate.wasm (with its sha256 at /tollgate/tollgate.wasm.sha256).
        #[arg(long)]
        wasm: Option<PathBuf>,
        /// Stop when standard input closes.
        #[arg(long)]
        exit_on_stdin_eof: bool,
    },
    /// Print what would be deployed: Envoy bootstrap, Istio manifests or plugin config.
    Render {
        #[arg(long)]
        config: PathBuf,
        #[arg(long, value_enum)]
        format: Format,
        #[arg(long, default_value_t = 4000)]
        port: u16,
        /// Envoy: the address its listener binds (0.0.0.0 for every interface).
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// A sidecar replica's port on --sidecar-host; repeat it for several replicas
        /// (default 4001 unless --sidecar is given).
        #[arg(long)]
        sidecar_port: Vec<u16>,
        #[arg(long, default_value = "127.0.0.1")]
        sidecar_host: String,
        /// A sidecar replica as HOST:PORT; repeat it for several replicas (they share a
        /// PostgreSQL store). Envoy balances over all of them and skips a dead one.
        #[arg(long)]
        sidecar: Vec<String>,
        #[arg(long, default_value_t = 9901)]
        envoy_admin_port: u16,
        #[arg(long)]
        wasm: Option<PathBuf>,
        /// Istio: where gateways fetch the module (http(s)://…; its sha256 is taken from
        /// --wasm). Default: the sidecar, which serves the module it was built with.
        #[arg(long)]
        wasm_url: Option<String>,
        /// Istio: the sha256 to pin instead of the module's (for an oci://…:tag URL, the
        /// image manifest's, as `tollgate wasm-image` prints it; default: computed from --wasm).
        #[arg(long)]
        wasm_sha256: Option<String>,
        /// Istio: namespace of the sidecar and the routing objects.
        #[arg(long, default_value = "tollgate")]
        namespace: String,
        /// Istio: namespace of the gateway workload.
        #[arg(long, default_value = "istio-system")]
        gateway_namespace: String,
        /// Istio: label of the gateway pods, key=value.
        #[arg(long, default_value = "istio=ingressgateway")]
        gateway_selector: String,
        /// Istio: the gateway's service account (only it may call the internal endpoints).
        #[arg(long, default_value = "istio-ingressgateway-service-account")]
        gateway_service_account: String,
        /// Istio: sidecar pods; more than one needs a PostgreSQL store
        /// (`general_settings.database_url`).
        #[arg(long, default_value_t = 1)]
        replicas: u16,
        /// Istio: the sidecar's container image (see Dockerfile).
        #[arg(long, default_value = concat!("tollgate:", env!("CARGO_PKG_VERSION")))]
        image: String,
        /// Envoy: take the filter configuration and upstream clusters from the files that
        /// `tollgate serve --xds-dir` keeps in this directory (config.yaml edits then apply
        /// without a restart). Default: everything inline.
        #[arg(long)]
        xds_dir: Option<PathBuf>,
    },
    /// Write the filter module as an OCI image layout (Istio's Wasm image: a layer holding
    /// plugin.wasm) for pushing to a registry; prints the manifest's sha256.
    WasmImage {
        /// The layout's directory (created if needed).
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = env!("CARGO_PKG_VERSION"))]
        tag: String,
        #[arg(long)]
        wasm: Option<PathBuf>,
    },
}

/// glibc gives each thread that allocates under contention its own malloc arena (up to 8 per
/// core) and keeps freed memory in each: under the bench's spend load the sidecar sat at 95 MB
/// RSS with the default, 59 MB with two arenas and 49 MB with one, at the same CPU per event
/// (it is off the request path, and glibc's per-thread caches serve most small allocations
/// without the arena lock). `MALLOC_ARENA_MAX` in the environment still wins.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator tunable; it runs before any other thread starts.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

/// Threads that may run store work at once (see `main`).
const MAX_BLOCKING_THREADS: usize = 16;

pub fn main() -> ExitCode {
    limit_malloc_arenas();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        // Store calls leave the worker with `block_in_place`, which hands the worker's core to a
        // thread from the blocking pool. Tokio's default pool (512 threads) grew to 200+ threads
        // and ~90 MB under a 32-connection admin load; the store serialises writes anyway, so a
        // small pool costs no throughput and bounds memory.
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tollgate: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tollgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Config loaded and checked as LiteLLM does at boot (master key rules included).
pub struct Prepared {
    pub config: litellm_config::LiteLlmConfig,
    pub master_key: String,
}

const WEAK_MASTER_KEYS: [&str; 3] = ["sk-1234", "sk-12345", "1234"];

pub fn prepare(path: &Path) -> Result<Prepared> {
    let loaded = litellm_config::load(path)?;
    for w in &loaded.warnings {
        match w.strip_prefix("WARNING: ") {
            Some(loud) => eprintln!("tollgate: WARNING: {loud}"),
            None => eprintln!("tollgate: warning: {w}"),
        }
    }
    let config = loaded.config;
    for w in render::unpriced_warnings(&config)? {
        eprintln!("tollgate: warning: {w}");
    }
    if let Some(Err(why)) = config
        .litellm_settings
        .timezone
        .as_deref()
        .map(timezone::resolve)
    {
        eprintln!("tollgate: warning: litellm_settings.timezone: {why}; budget resets align to UTC (as LiteLLM does)");
    }
    let master_key = config
        .general_settings
        .master_key
        .clone()
        .unwrap_or_default();
    let permit = config
        .general_settings
        .dangerously_permit_weak_or_unset_master_key
        .unwrap_or(false);
    if master_key.trim().is_empty() && !permit {
        return Err(anyhow!(
            "{}: no master key. Set general_settings.master_key (e.g. `master_key: os.environ/LITELLM_MASTER_KEY`) or the LITELLM_MASTER_KEY environment variable",
            path.display()
        ));
    }
    if WEAK_MASTER_KEYS.contains(&master_key.as_str())
        || (!master_key.is_empty() && master_key.len() < 8)
    {
        eprintln!("tollgate: WARNING: the master key is weak (`{}`); anyone who guesses it controls every key and budget. Use a long random value outside local testing.", crate::key_format::abbreviate(&master_key));
    }
    Ok(Prepared { config, master_key })
}

/// The store's URL: `--store`, else `general_settings.database_url`, else `DATABASE_URL`
/// (LiteLLM's names); none means SQLite in the data dir.
pub fn store_url(prepared: &Prepared, flag: Option<&str>) -> Option<String> {
    flag.map(str::to_string)
        .or_else(|| prepared.config.general_settings.database_url.clone())
        .or_else(|| std::env::var("DATABASE_URL").ok())
        .filter(|u| !u.trim().is_empty())
}

/// Pool size and timeouts of a PostgreSQL store (LiteLLM's setting names).
pub fn pg_options(prepared: &Prepared) -> store::PgOptions {
    let g = &prepared.config.general_settings;
    let defaults = store::PgOptions::default();
    store::PgOptions {
        pool_size: g
            .database_connection_pool_limit
            .map_or(defaults.pool_size, |n| n.max(1) as usize),
        timeout: g
            .database_connection_timeout
            .filter(|t| t.is_finite() && *t > 0.0)
            .map_or(defaults.timeout, std::time::Duration::from_secs_f64),
    }
}

pub fn admin_state(
    prepared: &Prepared,
    data_dir: &Path,
    store_flag: Option<&str>,
) -> Result<Arc<admin_api::AdminState>> {
    let settings = admin_settings(prepared);
    let url = store_url(prepared, store_flag);
    let store = store::Store::open_configured(url.as_deref(), data_dir, &pg_options(prepared))?
        .with_reset_clock(settings.reset_clock())
        .with_default_end_user_budget(settings.default_end_user_budget_id.clone())
        .with_default_end_user_max_budget(settings.default_end_user_max_budget)
        .with_lost_lease_policy(settings.lost_lease_policy());
    // LiteLLM upserts its `litellm-proxy-budget` row at startup with the configured period.
    store.configure_proxy_budget(
        settings.budgets.proxy_budget_duration.as_deref(),
        now_micros(),
    )?;
    Ok(Arc::new(admin_api::AdminState::new(store, settings)))
}

/// A reloaded config.yaml, applied to the sidecar: settings, reset clock, proxy budget period.
pub fn apply_to_sidecar(state: &admin_api::AdminState, prepared: &Prepared) -> Result<()> {
    let settings = admin_settings(prepared);
    let period = settings.budgets.proxy_budget_duration.clone();
    state.replace_settings(settings);
    state
        .store
        .configure_proxy_budget(period.as_deref(), now_micros())?;
    Ok(())
}

/// What the admin API needs from config.yaml.
pub fn admin_settings(prepared: &Prepared) -> admin_api::AdminSettings {
    let ls = &prepared.config.litellm_settings;
    // The model list for `/model/info` (a config that cannot be rendered has none here; `up`
    // and `render` report why).
    let plugin = match render::plugin_config(&prepared.config, &render::RenderOptions::default()) {
        Ok(r) => r.plugin,
        Err(e) => {
            eprintln!("tollgate: warning: /model/info lists no models: {e:#}");
            Default::default()
        }
    };
    let model_info_extra = match cost_map::current() {
        Ok(map) => prepared
            .config
            .model_list
            .iter()
            .enumerate()
            .map(|(i, m)| {
                (
                    render::deployment_id(i, m),
                    render::model_info_passthrough(m, &map),
                )
            })
            .collect(),
        Err(_) => Default::default(),
    };
    let deployment_tpm_rpm = prepared
        .config
        .model_list
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let p = &m.litellm_params;
            (render::deployment_id(i, m), (p.tpm, p.rpm))
        })
        .collect();
    admin_api::AdminSettings {
        model_info_extra,
        deployment_tpm_rpm,
        master_key: prepared.master_key.clone(),
        internal_token: render::internal_token(&prepared.master_key),
        key_header_name: prepared
            .config
            .general_settings
            .litellm_key_header_name
            .clone(),
        max_internal_user_budget: ls.max_internal_user_budget,
        internal_user_budget_duration: ls.internal_user_budget_duration.clone(),
        max_body_bytes: 1024 * 1024,
        max_spend_batch_bytes: admin_api::MAX_SPEND_BATCH_BYTES,
        budgets: render::budget_settings(&prepared.config),
        plugin,
        default_end_user_budget_id: ls.max_end_user_budget_id.clone(),
        default_end_user_max_budget: ls.max_end_user_budget,
        require_auth_for_metrics: ls.require_auth_for_metrics_endpoint != Some(false),
        team_admin_editable_team_fields: prepared
            .config
            .general_settings
            .team_admin_editable_team_fields
            .clone()
            .unwrap_or_default(),
        key_generate_defaults: ls.default_key_generate_params.clone().unwrap_or_default(),
        key_generate_bounds: ls
            .upperbound_key_generate_params
            .clone()
            .unwrap_or_default(),
        team_defaults: ls.default_team_params.clone().unwrap_or_default(),
    }
}

/// `path` made absolute against the working directory (Envoy resolves relative paths against
/// its own), as text.
fn absolute(path: &Path) -> String {
    std::path::absolute(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}

/// Now, unix microseconds.
pub fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The filter module: `--wasm`, else `TOLLGATE_WASM`, else the build next to this binary.
pub fn default_wasm_path(explicit: Option<PathBuf>) -> PathBuf {
    if let Some(p) = explicit.or_else(|| std::env::var_os("TOLLGATE_WASM").map(PathBuf::from)) {
        return p;
    }
    let beside_binary = std::env::current_exe().ok().and_then(|exe| {
        // target/<profile>/tollgate → target/wasm32-wasip1/release/tollgate.wasm
        let target = exe.parent()?.parent()?;
        Some(target.join("wasm32-wasip1/release/tollgate.wasm"))
    });
    match beside_binary {
        Some(p) if p.exists() => p,
        _ => PathBuf::from("target/wasm32-wasip1/release/tollgate.wasm"),
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Up {
            config,
            port,
            host,
            concurrency,
            data_dir,
            store,
            wasm,
            envoy_log_level,
            envoy_admin_port,
            exit_on_stdin_eof,
        } => {
            up::up(up::UpOptions {
                envoy_admin_port,
                exit_on_stdin_eof,
                config,
                port,
                host,
                concurrency,
                data_dir,
                store,
                wasm: default_wasm_path(wasm),
                envoy_log_level,
            })
            .await
        }
        Command::Serve {
            config,
            host,
            port,
            data_dir,
            store,
            xds_dir,
            wasm,
            exit_on_stdin_eof,
        } => {
            let prepared = prepare(&config)?;
            let state = admin_state(&prepared, &data_dir, store.as_deref())?;
            let wasm_path = default_wasm_path(wasm.clone());
            // An explicit module must be there; the default one is served when it exists.
            let module = match wasm_module::WasmModule::read(&wasm_path) {
                Ok(m) => Some(m),
                Err(e) if wasm.is_some() => return Err(e),
                Err(_) => None,
            };
            let xds = match xds_dir {
                Some(dir) => {
                    let render_opts = render::RenderOptions {
                        sidecars: vec![render::SidecarEndpoint::new(host.clone(), port)],
                        wasm_path: absolute(&wasm_path),
                        xds_dir: Some(absolute(&dir)),
                        ..Default::default()
                    };
                    let rendered = render::plugin_config(&prepared.config, &render_opts)?;
                    let files = reload::XdsFiles {
                        dir,
                        render: render_opts,
                        envoy_admin_port: None,
                    };
                    files.write_initial(&rendered)?;
                    Some((files, rendered.upstreams))
                }
                None => None,
            };
            let listener = tokio::net::TcpListener::bind((host.as_str(), port))
                .await
                .with_context(|| format!("cannot listen on {host}:{port}"))?;
            let (xds, clusters) = xds.map_or((None, Vec::new()), |(f, c)| (Some(f), c));
            let reloading = tokio::spawn(
                reload::Reloader {
                    config_path: config,
                    state: state.clone(),
                    xds,
                    master_key: prepared.master_key.clone(),
                    clusters,
                }
                .run(),
            );
            let sweeping = tokio::spawn(lease_sweep::run(state.clone()));
            println!("tollgate sidecar listening on http://{host}:{port}");
            let mut app = admin_api::router(state);
            if let Some(module) = &module {
                app = module.router().merge(app);
            }
            axum::serve(listener, app)
                .with_graceful_shutdown(up::stop_requested(exit_on_stdin_eof))
                .await?;
            reloading.abort();
            sweeping.abort();
            Ok(())
        }
        Command::Render {
            config,
            format,
            port,
            host,
            sidecar_port,
            sidecar_host,
            sidecar,
            envoy_admin_port,
            wasm,
            wasm_url,
            wasm_sha256,
            namespace,
            gateway_namespace,
            gateway_selector,
            gateway_service_account,
            replicas,
            image,
            xds_dir,
        } => {
            let prepared = prepare(&config)?;
            let opts = render::RenderOptions {
                xds_dir: xds_dir.as_deref().map(absolute),
                listen_address: host,
                listen_port: port,
                sidecars: render_sidecars(&sidecar_host, &sidecar_port, &sidecar)?,
                envoy_admin_port,
                wasm_path: default_wasm_path(wasm.clone()).display().to_string(),
            };
            let rendered = render::plugin_config(&prepared.config, &opts)?;
            let text = match format {
                Format::Envoy => {
                    serde_yaml_ng::to_string(&render::envoy_bootstrap(&rendered, &opts)?)?
                }
                Format::EnvoyBare => {
                    serde_yaml_ng::to_string(&render::envoy_bare_bootstrap(&rendered, &opts)?)?
                }
                Format::Istio => {
                    let module = wasm_module::WasmModule::read(&default_wasm_path(wasm))?;
                    // istio-agent checks the image manifest's digest for oci:// URLs.
                    let oci = wasm_url.as_deref().is_some_and(|u| u.starts_with("oci://"));
                    let pinned = match wasm_sha256 {
                        Some(sha) => sha,
                        None if oci => oci::manifest_sha256(&module.bytes)?,
                        None => module.sha256,
                    };
                    let (key, value) = gateway_selector.split_once('=').ok_or_else(|| {
                        anyhow!("--gateway-selector `{gateway_selector}` is not key=value")
                    })?;
                    if replicas > 1 && prepared.config.general_settings.database_url.is_none() {
                        return Err(anyhow!(
                            "--replicas {replicas} needs a store the replicas share: set general_settings.database_url (PostgreSQL); with SQLite the sidecar is one pod"
                        ));
                    }
                    let istio_opts = istio::IstioOptions {
                        namespace,
                        gateway_namespace,
                        gateway_selector: (key.to_string(), value.to_string()),
                        gateway_service_account,
                        image,
                        wasm_url,
                        wasm_sha256: pinned,
                        config_yaml: std::fs::read_to_string(&config)?,
                        replicas,
                    };
                    istio::manifests(&rendered, &opts, &istio_opts, &prepared.master_key)?
                }
                Format::IstioGateway => istio::gateway_patch()?,
                Format::Plugin => serde_json::to_string_pretty(
                    &crate::provider_keys::without_provider_keys(&rendered.plugin),
                )?,
            };
            println!("{text}");
            Ok(())
        }
        Command::WasmImage { out, tag, wasm } => {
            let module = wasm_module::WasmModule::read(&default_wasm_path(wasm))?;
            let sha = oci::write_layout(&module.bytes, &out, &tag)?;
            println!("{sha}");
            eprintln!(
                "wrote the OCI image layout {} (tag {tag}); push it with e.g. `skopeo copy --preserve-digests oci:{}:{tag} docker://REGISTRY/tollgate-wasm:{tag}` and render with --wasm-url oci://REGISTRY/tollgate-wasm:{tag}",
                out.display(),
                out.display()
            );
            Ok(())
        }
    }
}

/// `render`'s sidecar replicas: each --sidecar-port on --sidecar-host, then each --sidecar
/// HOST:PORT; none given: --sidecar-host:4001.
fn render_sidecars(
    host: &str,
    ports: &[u16],
    endpoints: &[String],
) -> Result<Vec<render::SidecarEndpoint>> {
    let mut sidecars: Vec<render::SidecarEndpoint> = ports
        .iter()
        .map(|port| render::SidecarEndpoint::new(host, *port))
        .collect();
    for text in endpoints {
        sidecars.push(render::SidecarEndpoint::parse(text)?);
    }
    if sidecars.is_empty() {
        sidecars.push(render::SidecarEndpoint::new(host, 4001));
    }
    Ok(sidecars)
}
