//! The `search` tree: what `GET /api/v1/recordings` looks recordings up by, so a page is
//! answered from small entries in key order instead of by decoding every row (a row
//! carries its template snapshot; 100,000 of them take seconds to read on a board).
//!
//! One [`SearchEntry`] per listed recording (a capture's HLS recording, each MP4/FLV/AAC
//! file), written in the same transaction as the row it describes ([`sync`]), under keys
//! that all end in the entry's *time key* (start time descending, then id), so every
//! lookup yields newest first and a page's cursor is the last time key it returned:
//! - `t` time key -> JSON entry: every entry (the time scan, `from`/`to`);
//! - `s` stream 0x00 app 0x00 time key -> empty: by stream (and app);
//! - `a` app 0x00 time key -> empty: by app;
//! - `S` state 0x00 time key -> empty: by state (the rare ones: failed, resumable...);
//! - `T` template 0x00 time key, `F` format 0x00 time key -> empty: by either;
//! - `K` task id 0x00 time key -> empty: by recording task;
//! - `n` name 0x00 time key -> empty: by prefix of the stream name or the file name;
//! - `o` time key -> empty: open entries (no end yet), which a `from` bound cannot skip;
//! - `m` -> i64 BE: the longest closed span seen, so a scan bounded by `from` knows
//!   where no older recording can reach into the window.
//!
//! An entry changes only when what it records changes (state, span start, end once
//! closed, upload, file name): the per-segment commit of an open recording writes none.

use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionalTree};

use super::{FileRow, FileState, RecordingRow};
use crate::config::Format;

/// Bytes of a time key before the id.
const TIME_BYTES: usize = 8;
const MAX_SPAN_KEY: &[u8] = b"m";

/// What the search needs of one recording.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchEntry {
    /// The recording id (a capture's for HLS, a file's otherwise).
    pub id: String,
    /// The capture it is made from (its own id for HLS).
    pub capture_id: String,
    pub format: Format,
    pub app: String,
    pub stream: String,
    pub template: String,
    /// A closed file's name with its extension.
    pub file_name: Option<String>,
    pub start_ms: i64,
    /// None while the recording is open (it still grows).
    pub end_ms: Option<i64>,
    /// As the API names it (`recording`, `resumable`, `finished`, `failed`, `skipped`).
    pub state: String,
    pub uploaded: bool,
    /// The recording task it was made for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
}

impl SearchEntry {
    /// The entry of a capture's HLS recording; None when it has none to list.
    pub fn of_capture(row: &RecordingRow) -> Option<SearchEntry> {
        (row.has_hls() && !row.deleting).then(|| SearchEntry {
            id: row.id.clone(),
            capture_id: row.id.clone(),
            format: Format::Hls,
            app: row.app.clone(),
            stream: row.stream.clone(),
            template: row.template_name().to_owned(),
            file_name: None,
            start_ms: row.start_ms,
            end_ms: (!row.state.is_open()).then_some(row.end_ms),
            state: row.state.as_str().to_owned(),
            uploaded: row.uploaded_ms.is_some(),
            task_id: row.task_id.clone(),
        })
    }

    /// The entry of a file recording.
    pub fn of_file(row: &FileRow) -> SearchEntry {
        let closed = row.state != FileState::Recording;
        SearchEntry {
            id: row.id.clone(),
            capture_id: row.capture_id.clone(),
            format: row.format,
            app: row.app.clone(),
            stream: row.stream.clone(),
            template: row.template.clone(),
            file_name: (row.state == FileState::Finished).then(|| row.download_name()),
            start_ms: row.start_ms,
            end_ms: closed.then_some(row.end_ms),
            state: row.state.as_str().to_owned(),
            uploaded: row.uploaded_ms.is_some(),
            task_id: row.task_id.clone(),
        }
    }

    /// Start time descending, then id: the order every lookup yields.
    pub fn time_key(&self) -> Vec<u8> {
        time_key(self.start_ms, &self.id)
    }

    /// The names a prefix search matches: the stream's and the file's.
    fn names(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.stream.as_str())
            .chain(self.file_name.as_deref().filter(|n| *n != self.stream))
    }

    /// What is stored under one of its keys: the entry itself under its time key,
    /// nothing under the others (they only point at the time key).
    fn value_under(&self, key: &[u8]) -> Vec<u8> {
        match key.first() {
            Some(b't') => super::encode(self),
            _ => Vec::new(),
        }
    }

    fn keys(&self) -> Vec<Vec<u8>> {
        let time = self.time_key();
        let mut keys = vec![
            prefixed(b't', &[], &time),
            prefixed(b's', &[self.stream.as_bytes(), self.app.as_bytes()], &time),
            prefixed(b'a', &[self.app.as_bytes()], &time),
            prefixed(b'S', &[self.state.as_bytes()], &time),
            prefixed(b'T', &[self.template.as_bytes()], &time),
            prefixed(b'F', &[self.format.as_str().as_bytes()], &time),
        ];
        keys.extend(self.names().map(|n| prefixed(b'n', &[n.as_bytes()], &time)));
        if let Some(task) = &self.task_id {
            keys.push(prefixed(b'K', &[task.as_bytes()], &time));
        }
        if self.end_ms.is_none() {
            keys.push(prefixed(b'o', &[], &time));
        }
        keys
    }
}

/// The time key of a recording that starts at `start_ms`.
pub fn time_key(start_ms: i64, id: &str) -> Vec<u8> {
    // Order-preserving i64 -> u64, then inverted: newer sorts first.
    let ordered = (start_ms as u64) ^ (1 << 63);
    let mut key = Vec::with_capacity(TIME_BYTES + id.len());
    key.extend_from_slice(&(!ordered).to_be_bytes());
    key.extend_from_slice(id.as_bytes());
    key
}

/// `tag`, each part followed by 0x00, then the time key.
fn prefixed(tag: u8, parts: &[&[u8]], time: &[u8]) -> Vec<u8> {
    let mut key = vec![tag];
    for part in parts {
        key.extend_from_slice(part);
        key.push(0);
    }
    key.extend_from_slice(time);
    key
}

type TxResult = Result<(), ConflictableTransactionError<super::IndexError>>;

/// Replaces `old`'s keys by `new`'s inside a transaction; nothing when they are equal.
pub(super) fn sync(
    tree: &TransactionalTree,
    old: Option<&SearchEntry>,
    new: Option<&SearchEntry>,
) -> TxResult {
    if old == new {
        return Ok(());
    }
    let new_keys = new.map(SearchEntry::keys).unwrap_or_default();
    let old_keys = old.map(SearchEntry::keys).unwrap_or_default();
    for key in &old_keys {
        if !new_keys.contains(key) {
            tree.remove(key.as_slice())?;
        }
    }
    if let Some(new) = new {
        // Keys that stay are not written again; the entry itself is.
        for key in &new_keys {
            if key[0] == b't' || !old_keys.contains(key) {
                tree.insert(key.as_slice(), new.value_under(key))?;
            }
        }
        if let Some(end) = new.end_ms {
            let span = end.saturating_sub(new.start_ms);
            let longest = tree.get(MAX_SPAN_KEY)?.map_or(0, |v| read_i64(&v));
            if span > longest {
                tree.insert(MAX_SPAN_KEY, &span.to_be_bytes())?;
            }
        }
    }
    Ok(())
}

fn read_i64(bytes: &[u8]) -> i64 {
    <[u8; 8]>::try_from(bytes).map_or(0, i64::from_be_bytes)
}

/// A search: absent fields match anything.
#[derive(Debug, Clone, Default)]
pub struct SearchQuery {
    pub app: Option<String>,
    pub stream: Option<String>,
    /// Of the stream name or the file name.
    pub prefix: Option<String>,
    /// The recording's span overlaps `[from_ms, to_ms]`.
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    pub format: Option<Format>,
    pub template: Option<String>,
    pub task_id: Option<String>,
    pub state: Option<String>,
    pub uploaded: Option<bool>,
    /// Only these recording ids (a small set found elsewhere, such as the upload queue's).
    pub ids: Option<Vec<String>>,
    /// The cursor: only entries after this time key.
    pub after: Option<Vec<u8>>,
    pub limit: usize,
}

impl SearchQuery {
    fn matches(&self, e: &SearchEntry) -> bool {
        let eq = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        eq(&self.app, &e.app)
            && eq(&self.stream, &e.stream)
            && eq(&self.template, &e.template)
            && self
                .task_id
                .as_deref()
                .is_none_or(|t| e.task_id.as_deref() == Some(t))
            && eq(&self.state, &e.state)
            && self.format.is_none_or(|f| f == e.format)
            && self.uploaded.is_none_or(|u| u == e.uploaded)
            && self
                .prefix
                .as_deref()
                .is_none_or(|p| e.names().any(|n| n.starts_with(p)))
            && self.to_ms.is_none_or(|to| e.start_ms <= to)
            && self
                .from_ms
                .is_none_or(|from| e.end_ms.is_none_or(|end| end >= from))
    }
}

/// One page of a search: the entries, newest first, and the cursor of the next page if
/// there may be one.
#[derive(Debug)]
pub struct SearchPage {
    pub entries: Vec<SearchEntry>,
    pub next: Option<Vec<u8>>,
}

impl super::Index {
    /// Answers `q` from the `search` tree.
    pub fn search(&self, q: &SearchQuery) -> Result<SearchPage, super::IndexError> {
        let limit = q.limit.max(1);
        let mut entries = Vec::with_capacity(limit.min(1024));
        let mut next = None;
        let mut take = |entry: SearchEntry| -> bool {
            if !q.matches(&entry) {
                return true;
            }
            if entries.len() == limit {
                // One more match exists: the page is full and a next one is due.
                next = entries.last().map(SearchEntry::time_key);
                return false;
            }
            entries.push(entry);
            true
        };
        let after = |key: &[u8]| q.after.as_deref().is_none_or(|a| key > a);
        if let Some(ids) = &q.ids {
            let mut found = Vec::new();
            for id in ids {
                found.extend(self.entry_of(id)?);
            }
            found.sort_by_key(SearchEntry::time_key);
            for entry in found.into_iter().filter(|e| after(&e.time_key())) {
                if !take(entry) {
                    break;
                }
            }
        } else if q.app.is_none() && (q.stream.is_some() || q.prefix.is_some()) {
            // Several streams or names: gather their time keys, then walk them in order.
            let prefix = match (&q.stream, &q.prefix) {
                (Some(stream), _) => prefixed(b's', &[stream.as_bytes()], &[]),
                (None, Some(p)) => [&b"n"[..], p.as_bytes()].concat(),
                (None, None) => unreachable!(),
            };
            let mut times = Vec::new();
            for item in self.search.scan_prefix(&prefix) {
                let (key, _) = item?;
                if let Some(time) = time_part(&key, &prefix) {
                    if after(time) {
                        times.push(time.to_vec());
                    }
                }
            }
            times.sort();
            times.dedup();
            for time in times {
                if let Some(entry) = self.entry_at(&time)? {
                    if !take(entry) {
                        break;
                    }
                }
            }
        } else {
            // One key range already in time order: the narrowest the query names.
            let prefix = match (&q.app, &q.stream, &q.state) {
                _ if q.task_id.is_some() => {
                    prefixed(b'K', &[q.task_id.as_deref().unwrap_or("").as_bytes()], &[])
                }
                (Some(app), Some(stream), _) => {
                    prefixed(b's', &[stream.as_bytes(), app.as_bytes()], &[])
                }
                (_, _, Some(state)) if state != "finished" => {
                    prefixed(b'S', &[state.as_bytes()], &[])
                }
                (Some(app), _, _) => prefixed(b'a', &[app.as_bytes()], &[]),
                _ => match (&q.template, q.format) {
                    (Some(template), _) => prefixed(b'T', &[template.as_bytes()], &[]),
                    (None, Some(format)) => prefixed(b'F', &[format.as_str().as_bytes()], &[]),
                    (None, None) => b"t".to_vec(),
                },
            };
            self.ordered_scan(q, &prefix, &after, &mut take)?;
        }
        Ok(SearchPage { entries, next })
    }

    /// The entries under `prefix` (each key is the prefix and a time key) in time order
    /// from the cursor (or `to`), until `from` rules out older ones; then the open entries
    /// older than that.
    fn ordered_scan(
        &self,
        q: &SearchQuery,
        prefix: &[u8],
        after: &dyn Fn(&[u8]) -> bool,
        take: &mut dyn FnMut(SearchEntry) -> bool,
    ) -> Result<(), super::IndexError> {
        let mut start = prefix.to_vec();
        match (&q.after, q.to_ms) {
            (Some(a), _) => {
                start.extend_from_slice(a);
                start.push(0);
            }
            (None, Some(to)) => start.extend_from_slice(&time_key(to, "")),
            (None, None) => {}
        }
        // Nothing that starts before this can reach `from`, unless it is still open.
        let oldest = match q.from_ms {
            Some(from) => {
                let longest = self.search.get(MAX_SPAN_KEY)?.map_or(0, |v| read_i64(&v));
                Some(time_key(from.saturating_sub(longest), "\u{10ffff}"))
            }
            None => None,
        };
        let mut stopped_at = None;
        for item in self.search.range(start..) {
            let (key, value) = item?;
            if !key.starts_with(prefix) {
                break;
            }
            let time = &key[prefix.len()..];
            if oldest.as_deref().is_some_and(|o| time > o) {
                stopped_at = Some(time.to_vec());
                break;
            }
            let entry = if key[0] == b't' {
                Some(super::decode(&key, &value)?)
            } else {
                self.entry_at(time)?
            };
            if let Some(entry) = entry {
                if !take(entry) {
                    return Ok(());
                }
            }
        }
        if let Some(bound) = stopped_at {
            for item in self.search.range([&b"o"[..], &bound].concat()..) {
                let (key, _) = item?;
                if key.first() != Some(&b'o') {
                    break;
                }
                if !after(&key[1..]) {
                    continue;
                }
                if let Some(entry) = self.entry_at(&key[1..])? {
                    if !take(entry) {
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    fn entry_at(&self, time: &[u8]) -> Result<Option<SearchEntry>, super::IndexError> {
        let key = [&b"t"[..], time].concat();
        match self.search.get(&key)? {
            Some(v) => Ok(Some(super::decode(&key, &v)?)),
            None => Ok(None),
        }
    }

    /// The entry of a recording id as its row describes it now.
    fn entry_of(&self, id: &str) -> Result<Option<SearchEntry>, super::IndexError> {
        if FileRow::capture_of(id).is_some() {
            return Ok(self.get_file(id)?.map(|f| SearchEntry::of_file(&f)));
        }
        Ok(self
            .get_recording(id)?
            .and_then(|r| SearchEntry::of_capture(&r)))
    }

    /// Writes the entries of every row (an index made before the `search` tree, or one
    /// `fsck --repair` rebuilds). Returns how many were written.
    pub fn rebuild_search(&self) -> Result<usize, super::IndexError> {
        self.search.clear()?;
        let mut written = 0;
        let mut batch = sled::Batch::default();
        let mut longest = 0i64;
        let mut add = |entry: SearchEntry, batch: &mut sled::Batch| {
            for key in entry.keys() {
                let value = entry.value_under(&key);
                batch.insert(key, value);
            }
            if let Some(end) = entry.end_ms {
                longest = longest.max(end.saturating_sub(entry.start_ms));
            }
            written += 1;
        };
        for row in self.recordings() {
            let row = row?;
            if let Some(entry) = SearchEntry::of_capture(&row) {
                add(entry, &mut batch);
            }
        }
        for file in self.files() {
            add(SearchEntry::of_file(&file?), &mut batch);
        }
        batch.insert(MAX_SPAN_KEY, &longest.to_be_bytes());
        self.search.apply_batch(batch)?;
        Ok(written)
    }
}

/// The time key at the end of a key found under `prefix` (`s stream 0x00` or `n` and the
/// start of a name): what follows the first 0x00 after the prefix. Names and apps hold no
/// 0x00 (time keys can, so the split cannot count from the end).
fn time_part<'k>(key: &'k [u8], prefix: &[u8]) -> Option<&'k [u8]> {
    let rest = key.get(prefix.len()..)?;
    let zero = rest.iter().position(|b| *b == 0)?;
    let time = &rest[zero + 1..];
    (time.len() > TIME_BYTES).then_some(time)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::{Index, RecordingState, SegmentRow, Update};

    const H: i64 = 3_600_000;

    /// A finished recording of `stream` spanning `[at, at + len]`.
    fn finished(index: &Index, id: &str, app: &str, stream: &str, at: i64, len: i64) {
        let row = RecordingRow::new(id.into(), app.into(), stream.into(), at);
        index.create_recording(&row).unwrap();
        index
            .commit_segment(id, &SegmentRow::plain(1, 4 * 90_000, 100, at))
            .unwrap();
        index
            .update_recording(id, |r| {
                r.end_ms = at + len;
                r.state = RecordingState::Finished;
                Update::Write
            })
            .unwrap();
    }

    fn ids(page: &SearchPage) -> Vec<&str> {
        page.entries.iter().map(|e| e.id.as_str()).collect()
    }

    fn all_pages(index: &Index, q: SearchQuery) -> Vec<String> {
        let mut out = Vec::new();
        let mut q = q;
        loop {
            let page = index.search(&q).unwrap();
            out.extend(page.entries.iter().map(|e| e.id.clone()));
            match page.next {
                Some(next) => q.after = Some(next),
                None => return out,
            }
        }
    }

    #[test]
    fn pages_go_newest_first_without_gaps_or_repeats() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        for i in 0..25 {
            // Two recordings share each start time: the id breaks the tie.
            finished(
                &index,
                &format!("r{i:02}a"),
                "live",
                "cam",
                i / 2 * H,
                60_000,
            );
            finished(
                &index,
                &format!("r{i:02}b"),
                "live",
                "cam",
                i / 2 * H,
                60_000,
            );
        }
        let q = SearchQuery {
            limit: 7,
            ..Default::default()
        };
        let first = index.search(&q).unwrap();
        assert_eq!(ids(&first)[..2], ["r24a", "r24b"]);
        let every = all_pages(&index, q);
        assert_eq!(every.len(), 50);
        let mut sorted = every.clone();
        sorted.sort_by_key(|id| {
            std::cmp::Reverse((
                id[1..3].parse::<i64>().unwrap() / 2,
                std::cmp::Reverse(id.clone()),
            ))
        });
        assert_eq!(every, sorted);
        // The same through the stream's own keys.
        let by_stream = all_pages(
            &index,
            SearchQuery {
                app: Some("live".into()),
                stream: Some("cam".into()),
                limit: 9,
                ..Default::default()
            },
        );
        assert_eq!(by_stream, every);
        // An exact fit leaves no empty next page behind a full one.
        let page = index
            .search(&SearchQuery {
                limit: 50,
                ..Default::default()
            })
            .unwrap();
        assert_eq!((page.entries.len(), page.next), (50, None));
    }

    #[test]
    fn filters_by_stream_prefix_time_window_and_format() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        finished(&index, "a1", "live", "stage-left", 10 * H, H);
        finished(&index, "a2", "live", "stage-right", 20 * H, H);
        finished(&index, "a3", "other", "stage-left", 30 * H, H);
        finished(&index, "a4", "live", "lobby", 40 * H, 10 * H);
        // Open since hour 1: reaches into every window after it.
        let open = RecordingRow::new("a0".into(), "live".into(), "hall".into(), H);
        index.create_recording(&open).unwrap();
        let search = |q: SearchQuery| {
            let q = SearchQuery { limit: 100, ..q };
            index
                .search(&q)
                .unwrap()
                .entries
                .into_iter()
                .map(|e| e.id)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            search(SearchQuery {
                stream: Some("stage-left".into()),
                ..Default::default()
            }),
            ["a3", "a1"]
        );
        assert_eq!(
            search(SearchQuery {
                prefix: Some("stage".into()),
                ..Default::default()
            }),
            ["a3", "a2", "a1"]
        );
        assert_eq!(
            search(SearchQuery {
                prefix: Some("stage-r".into()),
                ..Default::default()
            }),
            ["a2"]
        );
        // Overlap: a4 (40-50 h) reaches 45 h; a3 ended at 31 h; a0 is still open.
        assert_eq!(
            search(SearchQuery {
                from_ms: Some(45 * H),
                ..Default::default()
            }),
            ["a4", "a0"]
        );
        assert_eq!(
            search(SearchQuery {
                from_ms: Some(20 * H + 1),
                to_ms: Some(30 * H),
                ..Default::default()
            }),
            ["a3", "a2", "a0"]
        );
        assert_eq!(
            search(SearchQuery {
                to_ms: Some(19 * H),
                ..Default::default()
            }),
            ["a1", "a0"]
        );
        assert_eq!(
            search(SearchQuery {
                app: Some("live".into()),
                ..Default::default()
            }),
            ["a4", "a2", "a1", "a0"]
        );
        assert_eq!(
            search(SearchQuery {
                app: Some("live".into()),
                from_ms: Some(45 * H),
                ..Default::default()
            }),
            ["a4", "a0"]
        );
        assert_eq!(
            search(SearchQuery {
                app: Some("live".into()),
                prefix: Some("stage".into()),
                ..Default::default()
            }),
            ["a2", "a1"]
        );
        assert_eq!(
            search(SearchQuery {
                state: Some("recording".into()),
                ..Default::default()
            }),
            ["a0"]
        );
        assert!(search(SearchQuery {
            format: Some(Format::Mp4),
            ..Default::default()
        })
        .is_empty());
        // A file over a1: found by its own name, its format, and its stream's.
        let file = FileRow {
            id: FileRow::make_id("a1", Format::Mp4, 1),
            capture_id: "a1".into(),
            app: "live".into(),
            stream: "stage-left".into(),
            format: Format::Mp4,
            template: "t".into(),
            number: 1,
            first_seq: 1,
            last_seq: 1,
            state: FileState::Finished,
            start_ms: 10 * H,
            end_ms: 11 * H,
            duration_ticks: 0,
            segments: 1,
            ts_bytes: 100,
            gaps: 0,
            file_name: Some("gala-night".into()),
            store_key: None,
            storage_time_s: 0,
            record_id: None,
            note: None,
            uploaded_ms: None,
            before: None,
            store_expiry: None,
            task_id: Some("task-1".into()),
            task_template: None,
            start: None,
        };
        index.put_file(&file).unwrap();
        // Found by its task, alone (the task key range), and with other filters.
        let by_task = |stream: Option<&str>| {
            search(SearchQuery {
                task_id: Some("task-1".into()),
                stream: stream.map(Into::into),
                ..Default::default()
            })
        };
        assert_eq!(by_task(None), [file.id.as_str()]);
        assert_eq!(by_task(Some("stage-left")), [file.id.as_str()]);
        assert!(by_task(Some("stage-right")).is_empty());
        assert!(search(SearchQuery {
            task_id: Some("task-2".into()),
            ..Default::default()
        })
        .is_empty());
        assert_eq!(
            search(SearchQuery {
                prefix: Some("gala".into()),
                ..Default::default()
            }),
            [file.id.as_str()]
        );
        assert_eq!(
            search(SearchQuery {
                format: Some(Format::Mp4),
                ..Default::default()
            }),
            [file.id.as_str()]
        );
        assert_eq!(
            search(SearchQuery {
                template: Some("t".into()),
                ..Default::default()
            }),
            [file.id.as_str()]
        );
        // Deleting drops every key; rebuilding from the rows gives the same answers.
        index
            .update_recording("a2", |r| {
                r.deleting = true;
                Update::Write
            })
            .unwrap();
        index.remove_recording("a2").unwrap();
        index.remove_recording("a1").unwrap();
        let before: Vec<_> = index.search.iter().collect::<Result<_, _>>().unwrap();
        assert!(!before
            .iter()
            .any(|(k, _)| k.windows(2).any(|w| w == b"a1" || w == b"a2")));
        assert_eq!(index.rebuild_search().unwrap(), 3);
        let after: Vec<_> = index.search.iter().collect::<Result<_, _>>().unwrap();
        assert_eq!(before, after);
    }
}
