//! systemd integration: `READY=1` once the daemon records, `STATUS=` lines with stream,
//! upload and disk counts, `STOPPING=1` at shutdown, and watchdog pings from a health loop
//! that pings only while the recording pipeline works: the index answers, the blocking
//! pool and the event loop run, and no recorder thread is stuck in IO. A wedged pipeline
//! therefore gets the daemon restarted by systemd (`WatchdogSec=`), and startup recovery
//! adopts what was on flash. Outside systemd (no `NOTIFY_SOCKET`) every call is a no-op.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use crate::index::Index;
use crate::record::Recorders;
use crate::upload::Uploader;

/// Without a watchdog the loop still refreshes `STATUS=` this often.
const STATUS_EVERY: Duration = Duration::from_secs(10);

fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "sd_notify");
    }
}

pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn stopping() {
    notify(&[
        NotifyState::Stopping,
        NotifyState::Status("stopping: sealing segments"),
    ]);
}

/// What the health loop watches.
pub struct Health {
    pub index: Index,
    pub recorders: Recorders,
    pub uploader: Option<Uploader>,
    /// A recorder thread silent this long is stuck.
    pub stuck_after: Duration,
}

impl Health {
    /// `Ok(status line)` when healthy, `Err(problem)` otherwise. Blocking.
    fn check(&self) -> Result<String, String> {
        if !self.index.is_healthy() {
            return Err("the index does not answer".into());
        }
        let wedged = self.recorders.wedged(self.stuck_after);
        if !wedged.is_empty() {
            return Err(format!(
                "recorder thread(s) stuck in IO for over {} s: {}",
                self.stuck_after.as_secs(),
                wedged.join(", ")
            ));
        }
        let streams = self.recorders.live().len();
        let uploads = self
            .uploader
            .as_ref()
            .map_or(String::from("uploads off"), |u| {
                format!("{} uploads pending", u.backlog())
            });
        let disk = self.recorders.disk_state().status();
        let refusing = if disk.accepting_new_recordings {
            ""
        } else {
            ", REFUSING new recordings (disk)"
        };
        Ok(format!(
            "recording {streams} stream(s), {uploads}, disk {:.1}% used{refusing}",
            disk.used_percent
        ))
    }
}

/// Pings the watchdog (at half its period) while [`Health::check`] passes, until `cancel`.
pub async fn run(health: Health, cancel: CancellationToken) {
    let watchdog = sd_notify::watchdog_enabled();
    let every = watchdog.map_or(STATUS_EVERY, |w| (w / 2).min(STATUS_EVERY));
    let health = std::sync::Arc::new(health);
    loop {
        let h = health.clone();
        // A check that cannot finish in time counts as wedged too.
        let verdict =
            tokio::time::timeout(every, tokio::task::spawn_blocking(move || h.check())).await;
        match verdict {
            Ok(Ok(Ok(status))) => {
                if watchdog.is_some() {
                    notify(&[NotifyState::Watchdog, NotifyState::Status(&status)]);
                } else {
                    notify(&[NotifyState::Status(&status)]);
                }
            }
            Ok(Ok(Err(problem))) => {
                tracing::error!(%problem, "pipeline unhealthy: not pinging the watchdog");
                notify(&[NotifyState::Status(&format!("UNHEALTHY: {problem}"))]);
            }
            Ok(Err(e)) => tracing::error!(error = %e, "health check task"),
            Err(_) => {
                tracing::error!(
                    limit_s = every.as_secs_f32(),
                    "health check did not finish: not pinging the watchdog"
                );
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
