//! Config reload without a restart: `config.yaml` is read again when it changes, and a version
//! that loads is applied while requests keep flowing. The sidecar's own settings switch at once;
//! Envoy gets the new plugin configuration and upstream clusters from the files it watches
//! (extension config discovery and CDS from the filesystem, rewritten atomically). The Wasm VM,
//! and with it the shared data holding spend and rate-limit counters, stays.

use super::admin_api::AdminState;
use super::render::{self, RenderOptions};
use super::{apply_to_sidecar, prepare};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How often `config.yaml` is looked at.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How long Envoy gets to take up new clusters before the filter may route to them.
const ENVOY_APPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// The files Envoy watches, and how to render them.
#[derive(Clone)]
pub struct XdsFiles {
    pub dir: PathBuf,
    pub render: RenderOptions,
    /// Envoy's admin port, to confirm each step was taken up (else a fixed pause).
    pub envoy_admin_port: Option<u16>,
}

impl XdsFiles {
    pub fn clusters_path(&self) -> PathBuf {
        self.dir.join(render::XDS_CLUSTERS_FILE)
    }

    pub fn filter_path(&self) -> PathBuf {
        self.dir.join(render::XDS_FILTER_FILE)
    }

    /// Writes both files for a first start (no ordering needed: Envoy is not running yet).
    pub fn write_initial(&self, rendered: &render::Rendered) -> Result<()> {
        create_private_dir(&self.dir)?;
        write_atomic(
            &self.clusters_path(),
            &render::xds_clusters_file(&rendered.upstreams),
        )?;
        write_atomic(
            &self.filter_path(),
            &render::xds_filter_file(&rendered.plugin, &self.render.wasm_path)?,
        )
    }
}

/// Creates `dir` (and parents) readable by the owner only (0700 for `dir` itself).
pub fn create_private_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot restrict {}", dir.display()))?;
    }
    Ok(())
}

/// Writes `contents` next to `path` and renames it over `path`: Envoy's file watch sees one
/// complete file, never a half-written one.
/// Owner-only (0600): these files hold provider keys and the internal token.
pub fn write_atomic(path: &Path, contents: &str) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::io::Write::write_all(&mut file, contents.as_bytes())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    drop(file);
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Watches `config_path` and applies each new version that loads.
pub struct Reloader {
    pub config_path: PathBuf,
    pub state: Arc<AdminState>,
    pub xds: Option<XdsFiles>,
    /// The master key in force: a reload cannot change it (every credential hangs on it).
    pub master_key: String,
    /// The upstream clusters Envoy has now.
    pub clusters: Vec<render::Upstream>,
}

impl Reloader {
    /// Runs until the process ends.
    pub async fn run(mut self) {
        let mut last = std::fs::read(&self.config_path).ok();
        loop {
            tokio::time::sleep(POLL_INTERVAL).await;
            let now = std::fs::read(&self.config_path).ok();
            if now.is_none() || now == last {
                continue;
            }
            last = now;
            match self.reload().await {
                Ok(summary) => eprintln!(
                    "tollgate: reloaded {}: {summary}",
                    self.config_path.display()
                ),
                Err(e) => eprintln!(
                    "tollgate: {} changed but was not applied (the previous version stays in force): {e:#}",
                    self.config_path.display()
                ),
            }
        }
    }

    async fn reload(&mut self) -> Result<String> {
        let mut prepared = prepare(&self.config_path)?;
        if prepared.master_key != self.master_key {
            eprintln!("tollgate: warning: general_settings.master_key changed; a new master key takes a restart, the old one stays in force");
            prepared.master_key = self.master_key.clone();
            prepared.config.general_settings.master_key = Some(self.master_key.clone());
        }
        // Everything is rendered before anything is applied: a config that cannot be rendered
        // changes nothing.
        let rendered = match &self.xds {
            Some(x) => Some(render::plugin_config(&prepared.config, &x.render)?),
            None => None,
        };
        apply_to_sidecar(&self.state, &prepared)?;
        let models = prepared.config.model_list.len();
        let now = super::now_micros();
        if let (Some(xds), Some(rendered)) = (self.xds.clone(), rendered) {
            self.apply_to_envoy(&xds, &rendered).await?;
        }
        // Cached key records carry config-derived state (the proxy budget): refetch them all.
        self.state.store.record_change_all(now)?;
        Ok(format!("{models} model_list entries"))
    }

    /// New clusters first (so the filter never routes to one Envoy lacks), then the filter's
    /// configuration, then the clusters no deployment uses any more are dropped.
    async fn apply_to_envoy(&mut self, xds: &XdsFiles, rendered: &render::Rendered) -> Result<()> {
        let mut union = self.clusters.clone();
        for u in &rendered.upstreams {
            if !union.iter().any(|c| c.cluster == u.cluster) {
                union.push(u.clone());
            }
        }
        if union.len() != self.clusters.len() {
            write_atomic(&xds.clusters_path(), &render::xds_clusters_file(&union))?;
            self.wait_for_clusters(xds, &union).await;
        }
        write_atomic(
            &xds.filter_path(),
            &render::xds_filter_file(&rendered.plugin, &xds.render.wasm_path)?,
        )?;
        if union.len() != rendered.upstreams.len() {
            // Requests already routed to a dropped cluster finish; new ones cannot pick it.
            tokio::time::sleep(Duration::from_secs(2)).await;
            write_atomic(
                &xds.clusters_path(),
                &render::xds_clusters_file(&rendered.upstreams),
            )?;
        }
        self.clusters = rendered.upstreams.clone();
        Ok(())
    }

    /// Until Envoy lists every cluster in `wanted` (or a pause, without an admin port).
    async fn wait_for_clusters(&self, xds: &XdsFiles, wanted: &[render::Upstream]) {
        let Some(port) = xds.envoy_admin_port else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            return;
        };
        let deadline = tokio::time::Instant::now() + ENVOY_APPLY_TIMEOUT;
        while tokio::time::Instant::now() < deadline {
            if let Some(listing) = super::envoy_admin::admin_get(port, "/clusters").await {
                if wanted
                    .iter()
                    .all(|u| listing.contains(&format!("{}::", u.cluster)))
                {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        eprintln!("tollgate: warning: Envoy did not list the new upstream clusters within {ENVOY_APPLY_TIMEOUT:?}; applying the filter configuration anyway");
    }
}
