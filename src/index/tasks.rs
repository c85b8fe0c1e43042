//! Recording tasks (`POST /api/v1/tasks`): a stream recorded with a template inside a time
//! window. Rows live in the `catalog` tree under `task/<id>` beside the API's templates
//! and rules, so they survive restarts; the scheduler (`record::tasks`) owns what they
//! mean. The id sorts by creation time, so a scan lists tasks oldest first.

use serde::{Deserialize, Serialize};

use super::{decode, encode, Index, IndexError};

const TASK: &str = "task/";

/// Where a task is in its life. `Open` is shown as `waiting` or `recording` by the API,
/// from whether its stream is being recorded for it right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Its window has not opened yet.
    Scheduled,
    /// Its window is open.
    Open,
    /// Its window closed.
    Finished,
    /// Cancelled over the API (a running task keeps what it recorded).
    Cancelled,
}

impl TaskState {
    pub fn is_ended(self) -> bool {
        matches!(self, TaskState::Finished | TaskState::Cancelled)
    }
}

/// One task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRow {
    pub id: String,
    pub app: String,
    pub stream: String,
    /// The template its recordings are made with (looked up when the window opens).
    pub template: String,
    /// The window, unix ms (a clip's start is already moved back by its pre-roll).
    pub start_ms: i64,
    pub end_ms: i64,
    pub pre_roll_s: u32,
    pub state: TaskState,
    pub created_ms: i64,
    /// When it finished or was cancelled.
    pub ended_ms: Option<i64>,
    /// Why it recorded nothing, or how it ended, for a person.
    pub note: Option<String>,
}

impl TaskRow {
    /// A new task id: sortable by creation time, URL- and path-safe.
    pub fn new_id(now_ms: i64) -> String {
        format!(
            "task-{}-{:04x}",
            crate::clock::utc(now_ms, "%Y%m%dT%H%M%S%3fZ"),
            rand::random::<u16>()
        )
    }

    /// `app/stream` of its stream.
    pub fn stream_key(&self) -> String {
        crate::stream_key::StreamKey::new(&self.app, &self.stream).to_string()
    }
}

impl Index {
    /// Every task, oldest first.
    pub fn tasks(&self) -> Result<Vec<TaskRow>, IndexError> {
        self.catalog
            .scan_prefix(TASK)
            .map(|item| {
                let (k, v) = item?;
                decode(&k, &v)
            })
            .collect()
    }

    pub fn get_task(&self, id: &str) -> Result<Option<TaskRow>, IndexError> {
        let key = format!("{TASK}{id}");
        self.catalog
            .get(&key)?
            .map(|v| decode(key.as_bytes(), &v))
            .transpose()
    }

    /// Forgets tasks (their recordings stay).
    pub fn remove_tasks(&self, ids: &[String]) -> Result<(), IndexError> {
        for id in ids {
            self.catalog.remove(format!("{TASK}{id}"))?;
        }
        self.flush()
    }

    /// Writes `row` durably.
    pub fn put_task(&self, row: &TaskRow) -> Result<(), IndexError> {
        self.catalog
            .insert(format!("{TASK}{}", row.id), encode(row))?;
        self.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_are_kept_and_listed_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        let row = |id: &str| TaskRow {
            id: id.into(),
            app: "live".into(),
            stream: "cam".into(),
            template: "default".into(),
            start_ms: 1_000,
            end_ms: 2_000,
            pre_roll_s: 0,
            state: TaskState::Scheduled,
            created_ms: 0,
            ended_ms: None,
            note: None,
        };
        index.put_task(&row("task-2")).unwrap();
        index.put_task(&row("task-1")).unwrap();
        let mut ended = row("task-2");
        ended.state = TaskState::Cancelled;
        index.put_task(&ended).unwrap();
        let ids: Vec<_> = index.tasks().unwrap().into_iter().map(|t| t.id).collect();
        assert_eq!(ids, ["task-1", "task-2"]);
        assert_eq!(index.get_task("task-2").unwrap(), Some(ended));
        assert_eq!(index.get_task("task-3").unwrap(), None);
        // The templates and rules beside them are not read as tasks.
        index
            .put_api_rule("r1", &serde_json::json!({"app": "x"}))
            .unwrap();
        assert_eq!(index.tasks().unwrap().len(), 2);
    }
}
