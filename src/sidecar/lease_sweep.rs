//! Fleet mode's sweep for lost leases (`on_lost_lease`, FLEET.md §4.8): a lease call or spend
//! batch on a budget charges a dead Envoy's lease there, but a budget whose only Envoy died is
//! touched by neither, so every replica also looks for Envoys gone silent on a timer
//! ([`crate::sidecar::store::Store::sweep_lost_leases`]). Replicas sweeping at once charge
//! each lease once (the store's write lock and the lease's `lost_total`).

use super::admin_api::AdminState;
use std::sync::Arc;
use std::time::Duration;

/// How often each replica sweeps: a lost lease is charged at most this long after its grace
/// ends (`lease_ttl_seconds` + 60 s after its Envoy's last lease call).
pub const SWEEP_EVERY: Duration = Duration::from_secs(15);

/// Sweeps every [`SWEEP_EVERY`] while fleet mode is on, until the process ends.
pub async fn run(state: Arc<AdminState>) {
    // The first sweep looks at every Envoy silent by then; each later one at those gone
    // silent since the one before (a failed sweep's Envoys are looked at by the next).
    let mut since = None;
    let mut failing = false;
    loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        if state.settings().plugin.fleet.is_none() {
            continue;
        }
        match state.store.sweep_lost_leases(since, super::now_micros()) {
            Ok(sweep) => {
                since = Some(sweep.until);
                failing = false;
                if sweep.budgets > 0 {
                    eprintln!(
                        "tollgate: lost leases swept (on_lost_lease): {} budget(s) charged {} nano-dollars in all",
                        sweep.budgets, sweep.nanos
                    );
                }
            }
            Err(e) => {
                // Once per outage: a database that is down fails every sweep until it is back.
                if !failing {
                    eprintln!(
                        "tollgate: the sweep for lost leases failed (retried every {} s): {e:#}",
                        SWEEP_EVERY.as_secs()
                    );
                }
                failing = true;
            }
        }
    }
}
