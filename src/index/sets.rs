//! Two small id sets derived from the recording rows, kept in step in the transactions
//! that change the fields they depend on, so the readers never scan every row:
//! - `attention`: closed rows start-up recovery must still visit (being deleted, or
//!   failed and not yet reconciled with their files); with `open`, all recovery reads.
//! - `resident`: closed captures whose files are still on flash (finished or failed, not
//!   being deleted, not evicted): all the disk policy reads.
//!
//! An index made before a set existed gets it built from its rows on open.

use sled::transaction::{TransactionalTree, UnabortableTransactionError};

use super::{decode, Index, IndexError, RecordingRow, RecordingState};

/// Whether start-up recovery must visit a closed row.
pub(super) fn needs_attention(row: &RecordingRow) -> bool {
    row.deleting || row.state == RecordingState::Failed
}

/// Whether a capture is closed with its files on flash.
pub(super) fn is_resident(row: &RecordingRow) -> bool {
    row.is_terminal() && !row.deleting && row.evicted_ms.is_none()
}

/// Keeps `row`'s entry in the `resident` tree in step with it (inside a transaction).
pub(super) fn sync_resident(
    resident: &TransactionalTree,
    row: &RecordingRow,
) -> Result<(), UnabortableTransactionError> {
    if is_resident(row) {
        resident.insert(row.id.as_bytes(), &[])?;
    } else {
        resident.remove(row.id.as_bytes())?;
    }
    Ok(())
}

impl Index {
    /// The recordings start-up recovery visits: the open ones and those needing
    /// attention, each once.
    pub fn recovery_ids(&self) -> Result<Vec<String>, IndexError> {
        let mut ids: Vec<String> = self.open_entries()?.into_iter().map(|(_, id)| id).collect();
        for key in self.attention.iter().keys() {
            ids.push(String::from_utf8_lossy(&key?).into_owned());
        }
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    /// Recovery has reconciled a failed recording with its files.
    pub fn settled(&self, id: &str) -> Result<(), IndexError> {
        self.attention.remove(id.as_bytes())?;
        self.flush()
    }

    /// The closed captures whose files are still on flash. A row that does not decode is
    /// left out (and said), not a reason to return none.
    pub fn resident_recordings(&self) -> Result<Vec<RecordingRow>, IndexError> {
        let mut rows = Vec::new();
        for key in self.resident.iter().keys() {
            let key = key?;
            if let Some(bytes) = self.recordings.get(&key)? {
                match decode(&key, &bytes) {
                    Ok(row) => rows.push(row),
                    Err(e) => tracing::warn!(error = %e, "skipping a recording row"),
                }
            }
        }
        Ok(rows)
    }

    /// Marks every row that needs attention (an index made before the tree existed).
    pub(super) fn rebuild_attention(&self) -> Result<(), IndexError> {
        self.mark_rows(&self.attention, needs_attention)
    }

    /// Marks every closed capture with files on flash (an index made before the tree
    /// existed).
    pub(super) fn rebuild_resident(&self) -> Result<(), IndexError> {
        self.mark_rows(&self.resident, is_resident)
    }

    fn mark_rows(
        &self,
        set: &sled::Tree,
        member: fn(&RecordingRow) -> bool,
    ) -> Result<(), IndexError> {
        for row in self.recordings() {
            let row = row?;
            if member(&row) {
                set.insert(row.id.as_bytes(), &[])?;
            }
        }
        Ok(())
    }
}
