//! Recording tasks: record a stream with a template inside a time window
//! (`POST /api/v1/tasks`). Owns the checks a new task must pass ([`Tasks::create`]), the
//! task rows' life (`scheduled` -> open -> `finished`, or `cancelled`), and the scheduler
//! ([`Tasks::run`]) that opens and closes windows on the live registry
//! ([`Recorders::open_task`], [`Recorders::close_task`]).
//!
//! Time is `clock::now_ms()`, the wall clock, so a window is where the operator put it on
//! the calendar; the scheduler sleeps until the next edge (at most [`MAX_SLEEP`]) and wakes
//! at once when a task is made or cancelled. A task whose window is open at boot waits for
//! its stream to publish. On a stream a rule records, a task's recordings are spans of
//! the rule's capture (`task_files`), and up to [`MAX_OVERLAPPING`] windows may overlap;
//! on a stream no rule records, a task's window owns the recording it makes, and windows
//! must not overlap.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::catalog::Plan;

use super::{lock, Recorders, TaskStart, TaskWant};
use crate::index::{Index, IndexError, SearchQuery, TaskRow, TaskState};

/// A window opens at most this far ahead of now.
pub const MAX_AHEAD_MS: i64 = 6 * 24 * 3600 * 1000;
/// A window lasts at most this long.
pub const MAX_WINDOW_MS: i64 = 24 * 3600 * 1000;
/// Windows open at once on one stream a rule records (each is a span of its capture).
pub const MAX_OVERLAPPING: usize = 8;
/// A clip reaches back at most this far.
pub const MAX_PRE_ROLL_S: u32 = 60;
/// Ended tasks kept for the API; older ones are forgotten (their recordings stay).
const KEEP_ENDED: usize = 1000;
/// The scheduler looks at least this often (the API's `waiting`/`recording` and a
/// template deleted under an open window).
const MAX_SLEEP: Duration = Duration::from_secs(5);

/// A wall time as the API takes it (RFC 3339 or unix seconds, a string or a number) as
/// unix ms; None for an empty string. Read by hand from the JSON value: serde's untagged
/// enums cost the aarch64 binary more than its size budget has left.
fn time_arg(value: &serde_json::Value, what: &str) -> Result<Option<i64>, TaskError> {
    let bad = || TaskError::Invalid(format!("{what}: not RFC 3339 or unix seconds"));
    match value {
        serde_json::Value::Number(n) => n
            .as_f64()
            .and_then(|s| crate::clock::parse_time(&s.to_string()))
            .map(Some)
            .ok_or_else(bad),
        serde_json::Value::String(s) if s.trim().is_empty() => Ok(None),
        serde_json::Value::String(s) => crate::clock::parse_time(s).map(Some).ok_or_else(bad),
        serde_json::Value::Null => Ok(None),
        _ => Err(bad()),
    }
}

/// The body of `POST /api/v1/tasks`.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(test, derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewTask {
    pub app: String,
    pub stream: String,
    pub template: String,
    /// RFC 3339 or unix seconds (a string or a number). Empty or absent: now (a clip
    /// reaches back `pre_roll_s` from now).
    #[serde(default)]
    #[cfg_attr(test, schema(value_type = Option<String>))]
    pub start_time: Option<serde_json::Value>,
    /// RFC 3339 or unix seconds (a string or a number).
    #[cfg_attr(test, schema(value_type = String))]
    pub end_time: serde_json::Value,
    #[serde(default)]
    pub pre_roll_s: Option<u32>,
}

/// Why a task was not made or changed.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// 400: the request is wrong.
    #[error("{0}")]
    Invalid(String),
    /// 409: it conflicts with what exists.
    #[error("{0}")]
    Conflict(String),
    #[error("task {0}")]
    NotFound(String),
    #[error(transparent)]
    Index(#[from] IndexError),
}

/// The tasks: their rows, the checks, and the scheduler. Cheap to clone.
#[derive(Clone)]
pub struct Tasks {
    index: Index,
    recorders: Recorders,
    /// Poked when a task is made or cancelled.
    changed: Arc<tokio::sync::Notify>,
    /// Serialises creates and cancels (the overlap check reads, then writes).
    writing: Arc<Mutex<()>>,
}

impl Tasks {
    pub fn new(recorders: Recorders) -> Tasks {
        Tasks {
            index: recorders.index().clone(),
            recorders,
            changed: Arc::default(),
            writing: Arc::default(),
        }
    }

    /// Checks and stores a new task (blocking: index IO).
    pub fn create(&self, new: &NewTask, now_ms: i64) -> Result<TaskRow, TaskError> {
        let _writing = lock(&self.writing);
        let row = self.check(new, now_ms)?;
        let overlapping: Vec<TaskRow> = self
            .index
            .tasks()?
            .into_iter()
            .filter(|t| {
                !t.state.is_ended()
                    && t.app == row.app
                    && t.stream == row.stream
                    && t.start_ms < row.end_ms
                    && row.start_ms < t.end_ms
            })
            .collect();
        // On a stream a rule records, windows are spans of its capture and may overlap
        // (a few: each is planned on every segment); elsewhere a task's window owns the
        // recording it makes.
        let ruled = matches!(
            self.recorders.catalog().plan(&row.app, &row.stream),
            Ok(Plan::Record(_))
        );
        if ruled && overlapping.len() >= MAX_OVERLAPPING {
            return Err(TaskError::Conflict(format!(
                "{} tasks already record {} at some time in this window (at most {MAX_OVERLAPPING} at once)",
                overlapping.len(),
                row.stream_key()
            )));
        }
        if let Some(other) = overlapping.first().filter(|_| !ruled) {
            return Err(TaskError::Conflict(format!(
                "task {} already records {} from {} to {}; windows on a stream no rule records must not overlap",
                other.id,
                other.stream_key(),
                crate::clock::rfc3339(other.start_ms),
                crate::clock::rfc3339(other.end_ms)
            )));
        }
        self.index.put_task(&row)?;
        tracing::info!(task = %row.id, stream = %row.stream_key(), template = %row.template, start = %crate::clock::rfc3339(row.start_ms), end = %crate::clock::rfc3339(row.end_ms), "task scheduled");
        self.changed.notify_one();
        Ok(row)
    }

    /// The checks of the issue and SPECS.md; the row to store.
    fn check(&self, new: &NewTask, now_ms: i64) -> Result<TaskRow, TaskError> {
        let invalid = |m: String| Err(TaskError::Invalid(m));
        for (what, name) in [("app", &new.app), ("stream", &new.stream)] {
            if let Err(e) = crate::stream_key::validate_name(name) {
                return invalid(format!("{what}: {e}"));
            }
        }
        let catalog = self.recorders.catalog();
        if catalog.template(&new.template).is_none() {
            return invalid(format!("template: no template named {:?}", new.template));
        }
        let pre_roll_s = new.pre_roll_s.unwrap_or(0);
        if pre_roll_s > MAX_PRE_ROLL_S {
            return invalid(format!(
                "pre_roll_s: at most {MAX_PRE_ROLL_S} (got {pre_roll_s})"
            ));
        }
        let end_ms = match time_arg(&new.end_time, "end_time")? {
            Some(end) => end,
            None => return invalid("end_time: required".into()),
        };
        let start = match &new.start_time {
            Some(t) => time_arg(t, "start_time")?,
            None => None,
        };
        if pre_roll_s > 0 && start.is_some() {
            return invalid(
                "pre_roll_s: only for a task that starts now (start_time empty)".into(),
            );
        }
        // A clip's window begins its pre-roll before now.
        let start_ms = start.unwrap_or(now_ms - i64::from(pre_roll_s) * 1000);
        if start_ms > now_ms + MAX_AHEAD_MS {
            return invalid("start_time: at most 6 days ahead".into());
        }
        if end_ms <= now_ms {
            return invalid("end_time: already passed".into());
        }
        if end_ms <= start_ms {
            return invalid("end_time: must be after start_time".into());
        }
        if end_ms - start_ms > MAX_WINDOW_MS {
            return invalid("end_time: the window is longer than 24 hours".into());
        }
        Ok(TaskRow {
            id: TaskRow::new_id(now_ms),
            app: new.app.clone(),
            stream: new.stream.clone(),
            template: new.template.clone(),
            start_ms,
            end_ms,
            pre_roll_s,
            state: TaskState::Scheduled,
            created_ms: now_ms,
            ended_ms: None,
            note: None,
        })
    }

    /// Cancels a task: a running one stops now and keeps what it recorded (blocking).
    pub fn cancel(&self, id: &str, now_ms: i64) -> Result<TaskRow, TaskError> {
        let _writing = lock(&self.writing);
        let mut row = self
            .index
            .get_task(id)?
            .ok_or_else(|| TaskError::NotFound(id.to_owned()))?;
        if row.state.is_ended() {
            return Err(TaskError::Conflict(format!(
                "task {id} is already {}",
                self.state_of(&row)
            )));
        }
        row.state = TaskState::Cancelled;
        row.ended_ms = Some(now_ms);
        self.index.put_task(&row)?;
        tracing::info!(task = %id, "task cancelled");
        self.changed.notify_one();
        Ok(row)
    }

    /// A task that has not ended and records with template `name`, if any.
    pub fn using_template(&self, name: &str) -> Result<Option<String>, IndexError> {
        Ok(self
            .index
            .tasks()?
            .into_iter()
            .find(|t| !t.state.is_ended() && t.template == name)
            .map(|t| t.id))
    }

    pub fn get(&self, id: &str) -> Result<Option<TaskRow>, IndexError> {
        self.index.get_task(id)
    }

    /// Every task, newest first.
    pub fn list(&self) -> Result<Vec<TaskRow>, IndexError> {
        let mut rows = self.index.tasks()?;
        rows.reverse();
        Ok(rows)
    }

    /// The state as the API names it: `scheduled`, `waiting` (window open, nothing
    /// recorded for it right now), `recording`, `finished`, `cancelled`.
    pub fn state_of(&self, row: &TaskRow) -> &'static str {
        match row.state {
            TaskState::Scheduled => "scheduled",
            TaskState::Open if self.recorders.recording_for_task(&row.id).is_some() => "recording",
            TaskState::Open => "waiting",
            TaskState::Finished => "finished",
            TaskState::Cancelled => "cancelled",
        }
    }

    /// The recordings made for task `id` (HLS recordings and files), newest first.
    pub fn recordings(&self, id: &str) -> Result<Vec<String>, IndexError> {
        let page = self.index.search(&SearchQuery {
            task_id: Some(id.to_owned()),
            limit: 1000,
            ..Default::default()
        })?;
        Ok(page.entries.into_iter().map(|e| e.id).collect())
    }

    /// The scheduler: opens and closes windows until cancelled.
    pub async fn run(self, cancel: CancellationToken) {
        let mut applied = HashSet::new();
        loop {
            let changed = self.changed.notified();
            let next = match self.pass(&mut applied).await {
                Ok(next) => next,
                Err(e) => {
                    tracing::warn!(error = %e, "task scheduler pass failed; trying again");
                    None
                }
            };
            let wait = next.map_or(MAX_SLEEP, |due| {
                let ms = u64::try_from(due - crate::clock::now_ms()).unwrap_or(0);
                Duration::from_millis(ms).min(MAX_SLEEP)
            });
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
                _ = changed => {}
            }
        }
    }

    /// One look at every task: windows that closed are closed first (so a window that
    /// starts where another ends finds the stream free), then due ones opened. Returns
    /// the next edge (unix ms). `applied`: tasks whose window is open on the registry.
    async fn pass(&self, applied: &mut HashSet<String>) -> Result<Option<i64>, IndexError> {
        let index = self.index.clone();
        let rows = match tokio::task::spawn_blocking(move || index.tasks()).await {
            Ok(rows) => rows?,
            Err(e) => {
                tracing::warn!(error = %e, "reading the tasks failed");
                return Ok(None);
            }
        };
        let now = crate::clock::now_ms();
        let mut next: Option<i64> = None;
        let soonest = |next: &mut Option<i64>, t: i64| *next = Some(next.map_or(t, |n| n.min(t)));
        let mut opening = Vec::new();
        for mut row in rows.iter().cloned() {
            let live = matches!(row.state, TaskState::Scheduled | TaskState::Open);
            let closing = live && now >= row.end_ms;
            if closing {
                row.state = TaskState::Finished;
                row.ended_ms = Some(now);
                self.put(&row).await?;
                tracing::info!(task = %row.id, "task window closed");
            }
            if row.state.is_ended() {
                // Also for a window that closed while the daemon was down: a recording of
                // the task left waiting for its publisher is finished now.
                if applied.remove(&row.id) || closing {
                    self.recorders
                        .close_task(&row.stream_key(), &row.id)
                        .await?;
                }
                continue;
            }
            if now < row.start_ms {
                soonest(&mut next, row.start_ms);
                continue;
            }
            soonest(&mut next, row.end_ms);
            if !applied.contains(&row.id) {
                opening.push(row);
            }
        }
        for mut row in opening {
            if row.state == TaskState::Scheduled {
                row.state = TaskState::Open;
                self.put(&row).await?;
            }
            let note = self.open(&row).await;
            let applied_now = note.is_none();
            if applied_now {
                applied.insert(row.id.clone());
            }
            if row.note != note && (note.is_some() || applied_now) {
                row.note = note;
                self.put(&row).await?;
            }
        }
        self.forget_old(&rows).await?;
        Ok(next)
    }

    /// Opens `row`'s window on the registry; Some(reason) when it cannot record now (the
    /// next pass tries again).
    async fn open(&self, row: &TaskRow) -> Option<String> {
        let Some(template) = self.recorders.catalog().template(&row.template) else {
            return Some(format!("template {} no longer exists", row.template));
        };
        let want = TaskWant {
            task_id: row.id.clone(),
            template,
            from_ms: (row.pre_roll_s > 0).then_some(row.start_ms),
            start_ms: row.start_ms,
            end_ms: row.end_ms,
        };
        match self.recorders.open_task(&row.stream_key(), want).await {
            Ok(TaskStart::Recording(_) | TaskStart::Spanning(_) | TaskStart::Waiting) => None,
            Ok(TaskStart::Taken(why)) => {
                tracing::warn!(task = %row.id, reason = %why, "task window open but the stream is recorded by something else");
                Some(why)
            }
            Err(e) => {
                tracing::warn!(task = %row.id, error = %e, "task window open but recording could not start");
                Some(format!("recording could not start: {e}"))
            }
        }
    }

    async fn put(&self, row: &TaskRow) -> Result<(), IndexError> {
        let index = self.index.clone();
        let row = row.clone();
        tokio::task::spawn_blocking(move || index.put_task(&row))
            .await
            .unwrap_or(Ok(()))
    }

    /// Forgets the oldest ended tasks beyond [`KEEP_ENDED`].
    async fn forget_old(&self, rows: &[TaskRow]) -> Result<(), IndexError> {
        let ended: Vec<_> = rows.iter().filter(|r| r.state.is_ended()).collect();
        let Some(excess) = ended.len().checked_sub(KEEP_ENDED).filter(|n| *n > 0) else {
            return Ok(());
        };
        let ids: Vec<String> = ended[..excess].iter().map(|r| r.id.clone()).collect();
        let index = self.index.clone();
        tokio::task::spawn_blocking(move || index.remove_tasks(&ids))
            .await
            .unwrap_or(Ok(()))
    }
}
