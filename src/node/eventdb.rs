//! The runner's EventDB: one JSON file (`*-eventDB.json`) that the runner rewrites whole. It is
//! polled; when its identity, size or time changed it is read again, and only the records whose
//! unique keys were not seen before are new. A file caught half-written does not parse: it is
//! read again at the next poll, and nothing of it is used until it does. A file replaced by
//! another (a new inode) is simply read again.

use super::runner::{stream_eventdb, Record};
use crate::Error;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// After this many polls in a row that found the file unreadable, say so (once).
const WARN_AFTER: u32 = 10;
/// After this many, give up: the agent exits, saying why, for its supervisor to restart it (a
/// runner rewrites its EventDB in well under a poll; a file that has not parsed for this long
/// is not being written, it is broken or not an EventDB).
pub const GIVE_UP_AFTER: u32 = 60;

/// Why reading stopped before the end, as the reader's callback says.
#[derive(Debug)]
pub enum Halt {
    /// The outbox is full: the file is read again (from its start, skipping what was taken)
    /// once there is room.
    Full,
    /// The agent cannot go on.
    Failed(Error),
}

pub struct EventDb {
    /// A file, or a folder whose `*-eventDB.json` files are read.
    path: PathBuf,
    /// What each file looked like when it last parsed.
    last: Vec<(PathBuf, u64, u64, Option<SystemTime>)>,
    failures: u32,
    /// The last poll stopped before the end ([`Halt::Full`]).
    halted: bool,
}

impl EventDb {
    pub fn new(path: PathBuf) -> Self {
        EventDb {
            path,
            last: Vec::new(),
            failures: 0,
            halted: false,
        }
    }

    /// Whether every file parsed at the last poll (or there is none yet): what they hold has
    /// been read to its end.
    pub fn read_through(&self) -> bool {
        self.failures == 0 && !self.halted
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

    /// Gives `each` every record of the files, a record at a time, when they changed since they
    /// last parsed. `Ok(true)` when they were read to their end; `Ok(false)` when nothing
    /// changed, a file does not parse yet (read again next time) or `each` said [`Halt::Full`];
    /// `Err` when `each` failed, or a file has not parsed for [`GIVE_UP_AFTER`] polls.
    pub fn poll(&mut self, each: &mut dyn FnMut(Record) -> Result<(), Halt>) -> Result<bool, Halt> {
        let mut looks = Vec::new();
        for file in self.files() {
            let Ok(meta) = std::fs::metadata(&file) else {
                continue;
            };
            looks.push((file, meta.ino(), meta.len(), meta.modified().ok()));
        }
        if looks == self.last {
            return Ok(false);
        }
        for (file, ..) in &looks {
            let mut halted = None;
            let read = read(file, &mut |r| {
                each(r).map_err(|h| {
                    halted = Some(h);
                    "stopped by the reader".to_string()
                })
            });
            match halted {
                Some(Halt::Full) => {
                    self.halted = true;
                    return Ok(false);
                }
                Some(failed) => return Err(failed),
                None => {}
            }
            if let Err(why) = read {
                self.failures += 1;
                if self.failures >= GIVE_UP_AFTER {
                    return Err(Halt::Failed(Error::Usage(format!(
                        "the EventDB {} has not parsed for {GIVE_UP_AFTER} polls in a row ({why}); it must be the runner's JSON object {{\"records\": [...]}}: check --eventdb / EVENTDB",
                        file.display()
                    ))));
                }
                if self.failures == WARN_AFTER {
                    tracing::warn!(file = %file.display(), %why, "the EventDB has not parsed for {WARN_AFTER} polls; still retrying (the agent gives up after {GIVE_UP_AFTER})");
                } else {
                    tracing::debug!(file = %file.display(), %why, "EventDB caught half-written; reading it again next poll");
                }
                return Ok(false);
            }
        }
        if self.failures >= WARN_AFTER {
            tracing::info!("the EventDB parses again");
        }
        self.failures = 0;
        self.halted = false;
        self.last = looks;
        Ok(true)
    }
}

fn read(file: &Path, each: &mut dyn FnMut(Record) -> Result<(), String>) -> Result<(), String> {
    let f = std::fs::File::open(file).map_err(|e| e.to_string())?;
    stream_eventdb(std::io::BufReader::with_capacity(1 << 16, f), each)
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
        let poll = |db: &mut EventDb| {
            let mut got = Vec::new();
            let through = db
                .poll(&mut |r| {
                    got.push(r);
                    Ok(())
                })
                .unwrap();
            through.then_some(got)
        };
        assert_eq!(poll(&mut db), None, "half-written: not read through");
        assert!(!db.read_through());
        std::fs::write(&path, full).unwrap();
        assert_eq!(poll(&mut db).unwrap().len(), 1);
        assert!(db.read_through());
        assert_eq!(poll(&mut db), None, "unchanged");
        let tmp = dir.path().join("tmp");
        std::fs::write(
            &tmp,
            r#"{"records": [{"type": "computed_outcome", "executionId": "e1"},
                            {"type": "computed_outcome", "executionId": "e2"}]}"#,
        )
        .unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert_eq!(poll(&mut db).unwrap().len(), 2, "replaced: read again");
    }

    #[test]
    fn a_file_that_never_parses_is_given_up_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node-eventDB.json");
        let mut db = EventDb::new(path.clone());
        for i in 0..GIVE_UP_AFTER {
            // A new size each time: the runner seems to be rewriting it.
            std::fs::write(&path, "x".repeat(i as usize + 1)).unwrap();
            let polled = db.poll(&mut |_| Ok(()));
            if i + 1 < GIVE_UP_AFTER {
                assert!(matches!(polled, Ok(false)), "{polled:?}");
            } else {
                let Err(Halt::Failed(e)) = polled else {
                    panic!("{polled:?}")
                };
                assert!(e.to_string().contains("has not parsed for"), "{e}");
            }
        }
    }
}
