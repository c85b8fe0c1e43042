//! systemd integration: `READY=1` once the daemon records, `STATUS=` lines with stream,
//! upload and disk counts, `STOPPING=1` at shutdown, and watchdog pings from a health loop
//! that pings only while the recording pipeline works: the blocking pool and the event
//! loop run, and no recorder thread is stuck in IO. A wedged pipeline therefore gets the
//! daemon restarted by systemd (`WatchdogSec=`), and startup recovery adopts what was on
//! flash. Outside systemd (no `NOTIFY_SOCKET`) every call is a no-op.
//!
//! An index that cannot write (sled latches a failed write, typically a full disk, until
//! it is opened again) is reported in `STATUS=` and `/healthz`; while the disk has no room
//! a restart could not help, so the watchdog is still pinged and playback goes on. Once
//! there is room again ([`ROOM_TO_REOPEN`]) the loop asks the daemon to exit, and systemd
//! (`Restart=always`) starts it with the index reopened.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use crate::index::Index;
use crate::record::Recorders;
use crate::storage::Storage;
use crate::upload::Uploader;

/// Blocking-pool threads of the ingest runtime and of the API's (tokio's default is 512
/// each): with the fixed threads and one writer thread per stream, what `TasksMax` counts.
pub const BLOCKING_THREADS: usize = 32;
pub const API_BLOCKING_THREADS: usize = 8;

/// What a config can make the daemon hold at most, for sizing the unit's `MemoryMax`,
/// `TasksMax` and `LimitNOFILE` (the board profiles' `limits.conf` are checked against it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footprint {
    pub memory_bytes: u64,
    pub tasks: u64,
    pub files: u64,
}

impl Footprint {
    /// Streams: RTMP(S) and RTSP publishers and config cameras. Memory: a base (binary,
    /// sled's 8 MiB cache, upload parts, plans; 96 MiB measured with margin), the writer
    /// budgets (the total, or every stream's own if less), 2 MiB per stream (its writer
    /// thread, demuxer, segment buffer) and a 256 KiB body chunk per API connection.
    /// Tasks: 24 fixed threads (runtimes, sled, signal), both blocking pools, a writer
    /// thread per stream and a camera task's worth of slack. Files: sockets and segment
    /// files per stream, API sockets, upload sockets and 64 for the index and logs.
    pub fn of(config: &crate::config::Config) -> Footprint {
        const MIB: u64 = 1024 * 1024;
        let rtsp = if config.rtsp.listen.trim().is_empty() {
            0
        } else {
            config.rtsp.max_connections as u64
        };
        let streams = config.rtmp.max_connections as u64 + rtsp + config.sources.len() as u64;
        let r = &config.record;
        let budgets =
            (r.writer_budget_total_kb as u64).min(streams * r.writer_budget_kb as u64) * 1024;
        let http = config.http.max_connections as u64;
        Footprint {
            memory_bytes: 96 * MIB + budgets + streams * 2 * MIB + http * MIB / 4,
            tasks: 24 + (BLOCKING_THREADS + API_BLOCKING_THREADS) as u64 + streams + 16,
            files: 64 + streams * 4 + http + config.upload.concurrency as u64 * 2,
        }
    }
}

/// Without a watchdog the loop still refreshes `STATUS=` this often.
const STATUS_EVERY: Duration = Duration::from_secs(10);
/// Free space on the data filesystem that lets a restart reopen an index that could not
/// write.
pub const ROOM_TO_REOPEN: u64 = 16 * 1024 * 1024;

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
    pub storage: Storage,
    pub recorders: Recorders,
    pub uploader: Option<Uploader>,
    /// A recorder thread silent this long is stuck.
    pub stuck_after: Duration,
}

impl Health {
    /// `Ok(status line)` when healthy, the problem otherwise. Blocking.
    fn check(&self) -> Result<String, Unhealthy> {
        if let Err(e) = self.index.probe_write() {
            let room = self.storage.disk_space().map_or(0, |d| d.available_bytes);
            let problem = format!("the index cannot write: {e}");
            return Err(if room >= ROOM_TO_REOPEN {
                Unhealthy::IndexNeedsReopen(problem)
            } else {
                Unhealthy::IndexWaitsForRoom(problem)
            });
        }
        let wedged = self.recorders.wedged(self.stuck_after);
        if !wedged.is_empty() {
            return Err(Unhealthy::Wedged(format!(
                "recorder thread(s) stuck in IO for over {} s: {}",
                self.stuck_after.as_secs(),
                wedged.join(", ")
            )));
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

/// `STATUS=status`, with a watchdog ping when systemd watches.
fn alive(watchdog: bool, status: &str) {
    if watchdog {
        notify(&[NotifyState::Watchdog, NotifyState::Status(status)]);
    } else {
        notify(&[NotifyState::Status(status)]);
    }
}

/// What is wrong, by what the loop does about it.
enum Unhealthy {
    /// Stop pinging the watchdog: systemd restarts the daemon.
    Wedged(String),
    /// Report it and keep pinging: a restart cannot make room on the disk.
    IndexWaitsForRoom(String),
    /// There is room again: exit, to be started with the index reopened.
    IndexNeedsReopen(String),
}

/// Pings the watchdog (at half its period) while [`Health::check`] passes, until `cancel`.
/// Returns `Some(reason)` when the daemon must exit to be restarted (after cancelling
/// `stop`, the daemon's own shutdown).
pub async fn run(
    health: Health,
    cancel: CancellationToken,
    stop: CancellationToken,
) -> Option<String> {
    let watchdog = sd_notify::watchdog_enabled();
    let every = watchdog.map_or(STATUS_EVERY, |w| (w / 2).min(STATUS_EVERY));
    let health = std::sync::Arc::new(health);
    loop {
        let h = health.clone();
        // A check that cannot finish in time counts as wedged too.
        let verdict =
            tokio::time::timeout(every, tokio::task::spawn_blocking(move || h.check())).await;
        match verdict {
            Ok(Ok(Ok(status))) => alive(watchdog.is_some(), &status),
            Ok(Ok(Err(Unhealthy::Wedged(problem)))) => {
                tracing::error!(%problem, "pipeline unhealthy: not pinging the watchdog");
                notify(&[NotifyState::Status(&format!("UNHEALTHY: {problem}"))]);
            }
            Ok(Ok(Err(Unhealthy::IndexWaitsForRoom(problem)))) => {
                tracing::error!(%problem, "the index cannot write (no room on the disk); it is reopened by a restart once there is room");
                let status = format!("UNHEALTHY: {problem}; waiting for disk space");
                alive(watchdog.is_some(), &status);
            }
            Ok(Ok(Err(Unhealthy::IndexNeedsReopen(problem)))) => {
                tracing::error!(%problem, "the disk has room again: exiting so that the service manager restarts edgerec with the index reopened");
                notify(&[NotifyState::Status(&format!("restarting: {problem}"))]);
                stop.cancel();
                return Some(problem);
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
            _ = cancel.cancelled() => return None,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
