//! The runner's EventDB: one JSON file (`*-eventDB.json`) that the runner rewrites whole. It is
//! polled; when its identity, size or time changed it is read again, and only the records whose
//! unique keys were not seen before are new. A file caught half-written does not parse: it is
//! read again at the next poll, and nothing of it is used until it does. A file replaced by
//! another (a new inode) is simply read again.

use super::runner::{parse_eventdb, Record};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// After this many polls in a row that found the file unreadable, say so (once).
const WARN_AFTER: u32 = 10;

pub struct EventDb {
    /// A file, or a folder whose `*-eventDB.json` files are read.
    path: PathBuf,
    /// What each file looked like when it last parsed.
    last: Vec<(PathBuf, u64, u64, Option<SystemTime>)>,
    failures: u32,
}

impl EventDb {
    pub fn new(path: PathBuf) -> Self {
        EventDb {
            path,
            last: Vec::new(),
            failures: 0,
        }
    }

    /// Whether every file parsed at the last poll (or there is none yet): what they hold has
    /// been read to its end.
    pub fn read_through(&self) -> bool {
        self.failures == 0
    }

    fn files(&self) -> Vec<PathBuf> {
        if self.path.is_dir() {
            let mut found: Vec<PathBuf> = super::folder::files_ending(&self.path, "-eventDB.json")
                .into_iter()
                .map(|(path, _)| path)
                .collect();
            found.sort();
            found
        } else {
            vec![self.path.clone()]
        }
    }

    /// Every record of the files, when they changed since they last parsed; `None` when nothing
    /// changed, or a file does not parse yet (it is tried again next time).
    pub fn poll(&mut self) -> Option<Vec<Record>> {
        let mut looks = Vec::new();
        for file in self.files() {
            let Ok(meta) = std::fs::metadata(&file) else {
                continue;
            };
            looks.push((file, meta.ino(), meta.len(), meta.modified().ok()));
        }
        if looks == self.last {
            return None;
        }
        let mut records = Vec::new();
        for (file, ..) in &looks {
            match read(file) {
                Ok(mut r) => records.append(&mut r),
                Err(why) => {
                    self.failures += 1;
                    if self.failures == WARN_AFTER {
                        tracing::warn!(file = %file.display(), %why, "the EventDB has not parsed for {WARN_AFTER} polls; still retrying, nothing of it is used until it does");
                    } else {
                        tracing::debug!(file = %file.display(), %why, "EventDB caught half-written; reading it again next poll");
                    }
                    return None;
                }
            }
        }
        if self.failures >= WARN_AFTER {
            tracing::info!("the EventDB parses again");
        }
        self.failures = 0;
        self.last = looks;
        Some(records)
    }
}

fn read(file: &Path) -> Result<Vec<Record>, String> {
    let bytes = std::fs::read(file).map_err(|e| e.to_string())?;
    parse_eventdb(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_half_written_file_is_retried_and_a_replaced_one_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node-eventDB.json");
        let full = r#"{"records": [{"type": "computed_outcome", "executionId": "e1"}]}"#;
        std::fs::write(&path, &full[..30]).unwrap();
        let mut db = EventDb::new(dir.path().to_path_buf());
        assert_eq!(db.poll(), None, "half-written: nothing used");
        std::fs::write(&path, full).unwrap();
        assert_eq!(db.poll().unwrap().len(), 1);
        assert_eq!(db.poll(), None, "unchanged");
        let tmp = dir.path().join("tmp");
        std::fs::write(
            &tmp,
            r#"{"records": [{"type": "computed_outcome", "executionId": "e1"},
                            {"type": "computed_outcome", "executionId": "e2"}]}"#,
        )
        .unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert_eq!(db.poll().unwrap().len(), 2, "replaced: read again");
    }
}
