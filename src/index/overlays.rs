//! Task windows over another recording's capture (tree `overlays`).
//!
//! A task whose stream a rule already records writes no segments of its own (one copy of
//! every media byte, DESIGN.md): its recordings are spans of the rule's capture, made by
//! the file planner (`record::task_files`) from the segments inside the window. An
//! [`OverlayRow`] says which task wants which capture's segments between which wall
//! times; it goes when every span of it is final (the task's [`super::FileRow`]s carry
//! the rest).
//!
//! Tree `overlays`: `<capture id>/<task id>` -> JSON [`OverlayRow`] (a prefix scan gives
//! a capture's overlays; the tree holds only open windows, so a scan by task is cheap).

use serde::{Deserialize, Serialize};

use super::{decode, encode, Index, IndexError};
use crate::config::Template;

/// One task window over one capture.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OverlayRow {
    pub capture_id: String,
    pub task_id: String,
    /// The task's template when its window opened.
    pub template: Template,
    /// The window in wall time (unix ms). A scheduled window's edges are segment cuts:
    /// its span is the segments that start inside it. A clip (`pre_roll`) starts in the
    /// past: its span starts with the segment that holds `from_ms`.
    pub from_ms: i64,
    pub to_ms: i64,
    pub pre_roll: bool,
    /// No segment before this one can be in the window (where the planner starts looking).
    pub scan_from_seq: u32,
    /// Its `record_start_succeeded` status event is queued (status callbacks on).
    #[serde(default)]
    pub started: bool,
}

impl OverlayRow {
    fn key(capture_id: &str, task_id: &str) -> String {
        format!("{capture_id}/{task_id}")
    }

    /// The session id its status callbacks name: the task's recording of this capture.
    pub fn session_id(&self) -> String {
        format!("{}_{}", self.capture_id, self.task_id)
    }
}

/// A stored row with `f` applied (an unreadable one is left as it is).
fn change(old: &[u8], f: impl FnOnce(&mut OverlayRow)) -> Option<Vec<u8>> {
    match serde_json::from_slice::<OverlayRow>(old) {
        Ok(mut row) => {
            f(&mut row);
            Some(encode(&row))
        }
        Err(_) => Some(old.to_vec()),
    }
}

impl Index {
    /// Adds `row` unless that task already has a window over that capture (a resumed
    /// capture keeps the one it has). Marks the capture for the file planner.
    pub fn add_overlay(&self, row: &OverlayRow) -> Result<bool, IndexError> {
        let key = OverlayRow::key(&row.capture_id, &row.task_id);
        let added = self
            .overlays
            .compare_and_swap(key.as_bytes(), None as Option<&[u8]>, Some(encode(row)))?
            .is_ok();
        self.files_pending.insert(row.capture_id.as_bytes(), &[])?;
        self.flush()?;
        Ok(added)
    }

    /// The task windows over capture `capture_id`.
    pub fn overlays_of(&self, capture_id: &str) -> Result<Vec<OverlayRow>, IndexError> {
        self.overlays
            .scan_prefix(format!("{capture_id}/"))
            .map(|item| {
                let (k, v) = item?;
                decode(&k, &v)
            })
            .collect()
    }

    /// Ends task `task_id`'s windows at `to_ms` if they reach further (a cancel, or a
    /// window closed early); returns the captures they are over. Each row is changed in
    /// place (never brought back if the planner just forgot it).
    pub fn end_overlays(&self, task_id: &str, to_ms: i64) -> Result<Vec<String>, IndexError> {
        let mut captures = Vec::new();
        let keys: Vec<sled::IVec> = self
            .overlays
            .iter()
            .keys()
            .filter(|k| {
                k.as_ref()
                    .map_or(true, |k| k.ends_with(format!("/{task_id}").as_bytes()))
            })
            .collect::<Result<_, _>>()?;
        for key in keys {
            let updated = self.overlays.update_and_fetch(&key, |old| {
                change(old?, |row| {
                    row.to_ms = row.to_ms.min(to_ms.max(row.from_ms))
                })
            })?;
            if let Some(bytes) = updated {
                let row: OverlayRow = decode(&key, &bytes)?;
                self.files_pending.insert(row.capture_id.as_bytes(), &[])?;
                captures.push(row.capture_id);
            }
        }
        self.flush()?;
        Ok(captures)
    }

    /// Queues the task window's status callback (`event_type` 332: `record_start_succeeded`
    /// once its first row is planned, seq 1; `record_ended` when all are final, seq 2) if
    /// status callbacks are on; `rec` is the capture seen as the task's recording. The ids
    /// are fixed, so queueing one twice (a crash before the window's row said so) sends it
    /// once more at most. Marks the window `started` for the first.
    pub fn queue_overlay_status(
        &self,
        overlay: &OverlayRow,
        rec: &super::RecordingRow,
        event: &'static str,
    ) -> Result<(), IndexError> {
        if let Some(config) = self.status_events.get() {
            let seq = if event == "record_start_succeeded" {
                1
            } else {
                2
            };
            let now = crate::clock::now_ms();
            let body = super::callback_body::status_body(rec, config, event, seq, now, None);
            let id = format!("{}.status{seq:04}", rec.id);
            let row = super::CallbackRow::pending(&id, &config.url, body, now);
            self.outbox.insert(id.as_bytes(), encode(&row))?;
        }
        if event == "record_start_succeeded" {
            // In place: a cancel may have moved its end meanwhile.
            let key = OverlayRow::key(&overlay.capture_id, &overlay.task_id);
            self.overlays
                .update_and_fetch(key.as_bytes(), |old| change(old?, |row| row.started = true))?;
        }
        self.flush()
    }

    /// Forgets a window whose spans are all final.
    pub fn remove_overlay(&self, capture_id: &str, task_id: &str) -> Result<(), IndexError> {
        self.overlays
            .remove(OverlayRow::key(capture_id, task_id).as_bytes())?;
        self.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlays_are_added_once_listed_by_capture_and_ended_by_task() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        let row = |capture: &str, task: &str| OverlayRow {
            capture_id: capture.into(),
            task_id: task.into(),
            template: Template::builtin_default(),
            from_ms: 1_000,
            to_ms: 9_000,
            pre_roll: false,
            scan_from_seq: 1,
            started: false,
        };
        assert!(index.add_overlay(&row("c1", "t1")).unwrap());
        let mut again = row("c1", "t1");
        again.from_ms = 5_000;
        assert!(
            !index.add_overlay(&again).unwrap(),
            "a resume keeps its window"
        );
        index.add_overlay(&row("c1", "t2")).unwrap();
        index.add_overlay(&row("c10", "t1")).unwrap();
        assert_eq!(index.overlays_of("c1").unwrap().len(), 2);
        assert_eq!(index.overlays_of("c1").unwrap()[0].from_ms, 1_000);
        assert!(index.files_pending().unwrap().contains(&"c10".to_owned()));
        let mut captures = index.end_overlays("t1", 4_000).unwrap();
        captures.sort();
        assert_eq!(captures, ["c1", "c10"]);
        assert_eq!(index.overlays_of("c10").unwrap()[0].to_ms, 4_000);
        assert_eq!(
            index.overlays_of("c1").unwrap()[1].to_ms,
            9_000,
            "t2 keeps its end"
        );
        index.end_overlays("t1", 6_000).unwrap();
        assert_eq!(
            index.overlays_of("c10").unwrap()[0].to_ms,
            4_000,
            "never later"
        );
        index.remove_overlay("c1", "t1").unwrap();
        assert_eq!(index.overlays_of("c1").unwrap().len(), 1);
    }
}
