//! `edgerec fsck`: an offline check of the index against the media files, and with
//! `--repair` the fixes. Runs only while the daemon is stopped (sled locks the index).
//!
//! It reports: rows whose file is missing or shorter than recorded, files and folders no
//! row names, leftover `.part` files, rows that fail to decode, stale `open` entries,
//! interrupted deletes and recordings left open. Repair reuses startup recovery for every
//! recording (adopt, mark gaps, close), deletes unnamed folders and drops stale entries.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use super::recovery::{self, RecoveryError, RecoveryReport};
use super::{parse_segment_file_name, Storage};
use crate::index::{Index, RecordingState};

/// One inconsistency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Finding {
    MissingFile {
        recording: String,
        file: String,
    },
    TruncatedFile {
        recording: String,
        file: String,
        expected: u64,
        found: u64,
    },
    UnindexedFile {
        path: PathBuf,
    },
    PartFile {
        path: PathBuf,
    },
    OrphanFolder {
        path: PathBuf,
    },
    CorruptRow {
        error: String,
    },
    StaleOpenEntry {
        stream: String,
        recording: String,
    },
    InterruptedDelete {
        recording: String,
    },
    LeftOpen {
        recording: String,
        state: String,
    },
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Finding::MissingFile { recording, file } => {
                write!(f, "recording {recording}: segment {file} is missing")
            }
            Finding::TruncatedFile {
                recording,
                file,
                expected,
                found,
            } => write!(
                f,
                "recording {recording}: segment {file} has {found} bytes, the index says {expected}"
            ),
            Finding::UnindexedFile { path } => {
                write!(f, "{}: no index row names this file", path.display())
            }
            Finding::PartFile { path } => {
                write!(f, "{}: unfinished segment (.part)", path.display())
            }
            Finding::OrphanFolder { path } => {
                write!(f, "{}: no recording owns this folder", path.display())
            }
            Finding::CorruptRow { error } => write!(f, "corrupt index row: {error}"),
            Finding::StaleOpenEntry { stream, recording } => {
                write!(
                    f,
                    "stream {stream}: open entry names {recording}, which is not open"
                )
            }
            Finding::InterruptedDelete { recording } => {
                write!(f, "recording {recording}: delete was interrupted")
            }
            Finding::LeftOpen { recording, state } => {
                write!(f, "recording {recording}: still {state}, its daemon stopped without closing it (startup recovery will close or resume it)")
            }
        }
    }
}

/// Lists every inconsistency without changing anything.
pub fn check(index: &Index, storage: &Storage) -> Result<Vec<Finding>, RecoveryError> {
    let mut findings = Vec::new();
    let mut owned_dirs = HashSet::new();
    for row in index.recordings() {
        let row = match row {
            Ok(row) => row,
            Err(e) => {
                findings.push(Finding::CorruptRow {
                    error: e.to_string(),
                });
                continue;
            }
        };
        let dir = storage.recording_dir(&row.app, &row.stream, &row.id);
        owned_dirs.insert(dir.clone());
        if row.evicted_ms.is_some() {
            // Uploaded, local files removed on purpose: nothing to check.
            continue;
        }
        if row.deleting {
            findings.push(Finding::InterruptedDelete {
                recording: row.id.clone(),
            });
            continue;
        }
        // `recording` with no daemon running means it crashed mid-recording. `resumable`
        // is what a clean stop leaves inside the resume window: consistent, not a finding.
        if row.state == RecordingState::Recording {
            findings.push(Finding::LeftOpen {
                recording: row.id.clone(),
                state: row.state.as_str().into(),
            });
        }
        let segments = index.segments(&row.id)?;
        let mut named = HashSet::new();
        for seg in &segments {
            named.insert(seg.file.clone());
            if seg.gap {
                continue;
            }
            match std::fs::metadata(dir.join(&seg.file)) {
                Err(_) => findings.push(Finding::MissingFile {
                    recording: row.id.clone(),
                    file: seg.file.clone(),
                }),
                Ok(m) if m.len() < seg.bytes => findings.push(Finding::TruncatedFile {
                    recording: row.id.clone(),
                    file: seg.file.clone(),
                    expected: seg.bytes,
                    found: m.len(),
                }),
                Ok(_) => {}
            }
        }
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                match parse_segment_file_name(&name) {
                    Some((_, true)) => findings.push(Finding::PartFile { path: entry.path() }),
                    Some((_, false)) if !named.contains(&name) => {
                        findings.push(Finding::UnindexedFile { path: entry.path() })
                    }
                    _ => {}
                }
            }
        }
    }
    for (stream, recording) in index.stale_open_entries()? {
        findings.push(Finding::StaleOpenEntry { stream, recording });
    }
    for dir in recording_dirs(storage.media_dir()) {
        if !owned_dirs.contains(&dir) {
            findings.push(Finding::OrphanFolder { path: dir });
        }
    }
    Ok(findings)
}

/// Fixes what [`check`] finds. Open recordings are closed or made resumable as at start-up.
pub fn repair(
    index: &Index,
    storage: &Storage,
    resume_window: Duration,
    now_ms: i64,
) -> Result<RecoveryReport, RecoveryError> {
    let mut report = recovery::recover(index, storage, resume_window, now_ms)?;
    let mut owned_dirs = HashSet::new();
    let rows: Vec<_> = index.recordings().filter_map(Result::ok).collect();
    for row in rows {
        owned_dirs.insert(storage.recording_dir(&row.app, &row.stream, &row.id));
        // Open and failed recordings were reconciled by `recover` above.
        if !row.state.is_open() && row.state != RecordingState::Failed && row.evicted_ms.is_none() {
            report.recordings_checked += 1;
            recovery::reconcile_files(index, storage, &row, &mut report)?;
        }
    }
    for (stream, _) in index.stale_open_entries()? {
        index.remove_open_entry(&stream)?;
    }
    for dir in recording_dirs(storage.media_dir()) {
        if !owned_dirs.contains(&dir) {
            tracing::warn!(folder = %dir.display(), "removing a folder no recording owns");
            std::fs::remove_dir_all(&dir).map_err(|source| RecoveryError::Io {
                path: dir.display().to_string(),
                source,
            })?;
        }
    }
    Ok(report)
}

/// Every `media/<app>/<stream>/<id>` folder.
fn recording_dirs(media: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let subdirs = |p: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(p)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default()
    };
    for app in subdirs(media) {
        for stream in subdirs(&app) {
            out.extend(subdirs(&stream));
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::RecordingRow;

    #[test]
    fn finds_and_repairs_orphans() {
        let data = tempfile::tempdir().unwrap();
        let index = Index::open(&data.path().join("index")).unwrap();
        let storage = Storage::new(data.path().join("media"));
        let mut row = RecordingRow::new("r".into(), "live".into(), "s".into(), 0);
        row.state = crate::index::RecordingState::Finished;
        index.create_recording(&row).unwrap();
        storage.create_recording_dir("live", "s", "r").unwrap();
        storage.create_recording_dir("live", "s", "ghost").unwrap();
        let findings = check(&index, &storage).unwrap();
        assert_eq!(findings.len(), 1, "{findings:?}");
        assert!(matches!(&findings[0], Finding::OrphanFolder { path } if path.ends_with("ghost")));
        repair(&index, &storage, Duration::ZERO, 0).unwrap();
        assert!(check(&index, &storage).unwrap().is_empty());
        assert!(storage.recording_dir("live", "s", "r").exists());
    }
}
