//! Plain HTTP GETs to Envoy from the sidecar: its admin port (stats, clusters) and the
//! readiness probe through its listener. A module of its own so `up` and `reload` both use it.

use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(2);

/// One GET to 127.0.0.1 (Envoy's admin port): the body of a 200 answer.
pub async fn admin_get(port: u16, path: &str) -> Option<String> {
    get("127.0.0.1", port, path).await
}

/// One GET: the body of a 200 answer, else `None` (refused, timed out, another status).
async fn get(host: &str, port: u16, path: &str) -> Option<String> {
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    let url = format!("http://{host}:{port}{path}");
    tokio::task::spawn_blocking(move || {
        let agent = ureq::AgentBuilder::new().timeout(TIMEOUT).build();
        match agent.get(&url).call() {
            Ok(r) if r.status() == 200 => r.into_string().ok(),
            _ => None,
        }
    })
    .await
    .ok()
    .flatten()
}

/// Whether Envoy reports a refused filter configuration (extension config discovery's
/// `config_fail` counter).
pub async fn filter_config_failed(envoy_admin_port: u16) -> bool {
    let Some(stats) = admin_get(envoy_admin_port, "/stats?filter=extension_config_discovery").await
    else {
        return false;
    };
    stats.lines().any(|line| {
        line.split_once(": ").is_some_and(|(name, value)| {
            name.ends_with(".config_fail") && value.trim().parse::<u64>().is_ok_and(|n| n > 0)
        })
    })
}

/// One GET through Envoy's listener on `host`; true on a 200.
pub async fn probe(host: &str, port: u16, path: &str) -> bool {
    let host = match host {
        "0.0.0.0" => "127.0.0.1",
        "::" | "[::]" => "::1",
        h => h.trim_start_matches('[').trim_end_matches(']'),
    };
    get(host, port, path).await.is_some()
}
