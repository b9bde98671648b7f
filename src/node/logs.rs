//! The runner's debug logs in `--logs DIR`: every `*.log` followed by its identity (device and
//! inode), so that a file renamed by rotation is read to its end and the new one from its start;
//! a file shorter than where it was left was truncated and is read again from its start. Lines
//! are grouped into entries (continuation lines joined); an entry is taken once the next one
//! begins, or once the file stopped growing after it. Every `*.log.gz` not read before is read
//! once, at start, oldest first.
//!
//! Every file is streamed a line at a time, never read whole: a followed log at most
//! [`STEP`] bytes a call (to the end of the entry that crosses it), so that the reader commits
//! what it took between two steps; a `.gz` through its decoder, with a `commit` hook called as
//! the tracker fills. A log that cannot be read for [`GIVE_UP_AFTER`] polls in a row stops the
//! agent, saying why.

use super::runner::{classify, Entries};
use super::state::{Batch, LogPosition};
use super::tracker::Tracker;
use crate::Error;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead as _, Seek as _, SeekFrom};

/// Bytes of a followed log read in one call of [`Logs::poll`].
pub const STEP: u64 = 8 << 20;
/// Polls in a row that a log may fail to be read before the agent gives up on it.
pub const GIVE_UP_AFTER: u32 = 60;
/// Buffer of every read.
const BUFFER: usize = 1 << 16;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

pub struct Logs {
    dir: PathBuf,
    positions: BTreeMap<String, LogPosition>,
    gz_read: HashSet<String>,
    /// The size each file had at the last poll that left an entry pending.
    pending_at: HashMap<String, u64>,
    /// The last poll read every file to its end: no entry pending, no file unreadable.
    read_through: bool,
    /// Polls in a row that each file could not be read.
    failures: HashMap<String, u32>,
}

impl Logs {
    pub fn new(
        dir: PathBuf,
        positions: BTreeMap<String, LogPosition>,
        gz_read: HashSet<String>,
    ) -> Self {
        Logs {
            dir,
            positions,
            gz_read,
            pending_at: HashMap::new(),
            read_through: false,
            failures: HashMap::new(),
        }
    }

    /// Whether the last poll read every followed log to its end.
    pub fn read_through(&self) -> bool {
        self.read_through
    }

    fn files(&self, suffix: &str) -> Vec<(PathBuf, std::fs::Metadata)> {
        let mut found = super::folder::files_ending(&self.dir, suffix);
        found.sort_by_key(|(p, m)| (m.modified().ok(), p.clone()));
        found
    }

    /// Reads every `*.log.gz` not read before, oldest first, each with its own running tasks,
    /// calling `commit` whenever the tracker holds `hold` executions and invoices or more.
    pub fn read_gz_once(
        &mut self,
        tracker: &mut Tracker,
        now: i64,
        batch: &mut Batch,
        hold: usize,
        commit: &mut dyn FnMut(&mut Tracker, &mut Batch) -> Result<(), Error>,
    ) -> Result<(), Error> {
        for (path, _) in self.files(".log.gz") {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if self.gz_read.contains(&name) {
                continue;
            }
            let mut running = Vec::new();
            let mut entries = Entries::default();
            let read = (|| -> std::io::Result<()> {
                let file = std::fs::File::open(&path)?;
                let mut reader = std::io::BufReader::with_capacity(
                    BUFFER,
                    flate2::read::MultiGzDecoder::new(std::io::BufReader::with_capacity(
                        BUFFER, file,
                    )),
                );
                let mut line = Vec::new();
                loop {
                    line.clear();
                    if reader.read_until(b'\n', &mut line)? == 0 {
                        break;
                    }
                    if let Some(e) = entries.push(&String::from_utf8_lossy(&line)) {
                        tracker.log_entry(e.at, &classify(&e), Some(&mut running), now);
                        if tracker.in_hand() >= hold {
                            commit(tracker, batch).map_err(std::io::Error::other)?;
                        }
                    }
                }
                Ok(())
            })();
            if let Err(e) = read {
                if let Some(inner) = e.get_ref().and_then(|i| i.downcast_ref::<Error>()) {
                    return Err(Error::Usage(inner.to_string()));
                }
                tracing::warn!(file = %path.display(), error = %e, "cannot read the rotated log; skipped (what it held up to the damage is taken)");
            }
            if let Some(e) = entries.finish() {
                tracker.log_entry(e.at, &classify(&e), Some(&mut running), now);
            }
            tracing::info!(file = %path.display(), "read the rotated log");
            self.gz_read.insert(name.clone());
            batch.gz_read.push(name);
        }
        Ok(())
    }

    /// Reads what the followed logs gained since the last poll, at most [`STEP`] bytes of each;
    /// true when one has more to read now.
    pub fn poll(
        &mut self,
        tracker: &mut Tracker,
        now: i64,
        batch: &mut Batch,
    ) -> Result<bool, Error> {
        let files = self.files(".log");
        let present: HashSet<String> = files.iter().map(|(_, m)| identity(m)).collect();
        self.positions.retain(|id, _| present.contains(id));
        self.failures.retain(|id, _| present.contains(id));
        let mut through = true;
        let mut more = false;
        for (path, meta) in files {
            let id = identity(&meta);
            let mut pos = self.positions.get(&id).cloned().unwrap_or_default();
            if meta.len() < pos.offset {
                tracing::info!(file = %path.display(), "the log was truncated: reading it from its start");
                pos.offset = 0;
            }
            if meta.len() == pos.offset {
                continue;
            }
            let idle = self.pending_at.get(&id) == Some(&meta.len());
            match read_from(&path, pos.offset, tracker, now, idle) {
                Ok(read) => {
                    self.failures.remove(&id);
                    if read.pending {
                        through = false;
                        self.pending_at.insert(id.clone(), meta.len());
                    } else {
                        self.pending_at.remove(&id);
                    }
                    if read.more {
                        through = false;
                        more = true;
                    }
                    if read.offset != pos.offset {
                        pos.offset = read.offset;
                        batch.logs.insert(id.clone(), pos.clone());
                        self.positions.insert(id, pos);
                    }
                }
                Err(e) => {
                    through = false;
                    let failures = self.failures.entry(id).or_insert(0);
                    *failures += 1;
                    if *failures >= GIVE_UP_AFTER {
                        return Err(Error::Usage(format!(
                            "the log {} could not be read for {GIVE_UP_AFTER} polls in a row: {e}; check its permissions and --logs / RUNNER_LOGS",
                            path.display()
                        )));
                    }
                    tracing::warn!(file = %path.display(), error = %e, "cannot read the log; trying again")
                }
            }
        }
        self.read_through = through;
        Ok(more)
    }
}

/// Device and inode: what stays with a file across a rename.
fn identity(meta: &std::fs::Metadata) -> String {
    format!("{}:{}", meta.dev(), meta.ino())
}

/// What one call of [`read_from`] did.
struct Read {
    /// Where the first entry not taken begins.
    offset: u64,
    /// An entry is left pending (the file may still be writing it).
    pending: bool,
    /// It stopped after [`STEP`] bytes: there is more to read now.
    more: bool,
}

/// Reads complete lines from `offset`, a line at a time; stops at the first entry that begins
/// [`STEP`] bytes or more past `offset`. With `idle`, the file stopped growing: the last entry
/// is taken.
fn read_from(
    path: &Path,
    offset: u64,
    tracker: &mut Tracker,
    now: i64,
    idle: bool,
) -> std::io::Result<Read> {
    let mut file = std::fs::File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut reader = std::io::BufReader::with_capacity(BUFFER, file);
    let mut entries = Entries::default();
    let mut entry_start = offset;
    let mut at = offset;
    let mut line = Vec::new();
    let mut partial = false;
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 {
            break;
        }
        // Only complete lines: a line still being written is read next time.
        if line.last() != Some(&b'\n') {
            partial = true;
            break;
        }
        let text = String::from_utf8_lossy(&line);
        let begins = super::runner::header(&super::runner::clean_line(&text)).is_some();
        if begins && at - offset >= STEP {
            // The entry in hand is complete, for this line begins the next: taken, and the
            // rest is read by the next call.
            if let Some(e) = entries.finish() {
                tracker.log_entry(e.at, &classify(&e), None, now);
            }
            return Ok(Read {
                offset: at,
                pending: false,
                more: true,
            });
        }
        if let Some(e) = entries.push(&text) {
            tracker.log_entry(e.at, &classify(&e), None, now);
        }
        if begins {
            entry_start = at;
        }
        at += n as u64;
    }
    if !entries.pending() {
        return Ok(Read {
            offset: at,
            pending: false,
            more: false,
        });
    }
    if idle && !partial {
        if let Some(e) = entries.finish() {
            tracker.log_entry(e.at, &classify(&e), None, now);
        }
        return Ok(Read {
            offset: at,
            pending: false,
            more: false,
        });
    }
    Ok(Read {
        offset: entry_start,
        pending: true,
        more: false,
    })
}
